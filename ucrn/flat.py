"""All of a model's parameters as one tensor, and a training step's views of it.

Clipping is then one norm and Adam one fused step over one tensor, instead of one of each
per parameter (220 of them in the paper's model). Inside ``FlatParameters.step_views`` (the
static step's, for a GPU) the model reads its parameters as views made by one split of the
flat tensor, so that backward gathers every gradient with one concatenation and one
addition, instead of one addition per parameter. Modules whose parameters a stacked
computation takes together (the URMs' layers of one depth, in ``URM.together``) lie side by
side, so that each of their parameters is, for a step that runs them together, one (G, …)
view: nothing is stacked per step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class FlatParameters:
    """``model``'s trainable parameters as one ``flat`` parameter: theirs become views of
    it, gradients included (backward adds into ``flat.grad``). ``stacks``: groups of
    modules of one architecture, each group's parameters laid out side by side;
    ``together(inputs)``: whether a step on ``inputs`` runs each stack's modules together."""

    def __init__(self, model: nn.Module, step_views: bool = True,
                 stacks: Iterable[Sequence[nn.Module]] = (),
                 together: Callable[[Any], bool] = lambda inputs: False):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        name_of = {id(p): n for n, p in named}
        self.stacks: list[list[list[str]]] = []  # per stack: per member, its names
        stacked_ids: set[int] = set()
        for group in stacks:
            members = [[name_of[id(p)] for p in module.parameters() if id(p) in name_of]
                       for module in group]
            shapes = [[p.shape for p in module.parameters() if id(p) in name_of]
                      for module in group]
            if len(group) > 1 and all(s == shapes[0] for s in shapes):
                self.stacks.append(members)
                stacked_ids.update(id(p) for module in group for p in module.parameters())
        order = [name for members in self.stacks for names in members for name in names]
        order += [n for n, p in named if id(p) not in stacked_ids]
        by_name = dict(named)
        parameters = [by_name[n] for n in order]
        self.names = order  # the flat tensor's layout
        self.model_order = [n for n, _ in named]
        self.flat = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in parameters]))
        self.flat.grad = torch.zeros_like(self.flat)
        self.sizes = [p.numel() for p in parameters]
        self.shapes = [p.shape for p in parameters]
        index = {id(p): i for i, p in enumerate(parameters)}
        # Where each parameter lives: (module, attribute, its index in the flat order).
        self.places = [(module, name, index[id(p)])
                       for module in model.modules()
                       for name, p in module._parameters.items() if id(p) in index]
        for parameter, values, grad in zip(parameters, self.flat.detach().split(self.sizes),
                                           self.flat.grad.split(self.sizes), strict=True):
            parameter.data = values.view_as(parameter)
            parameter.grad = grad.view_as(parameter)
        # The split of a step that runs the stacks together: a chunk per stack, then the rest.
        self.stacked_split, at = [], 0
        for members in self.stacks:
            count = len(members) * len(members[0])
            self.stacked_split.append(sum(self.sizes[at:at + count]))
            at += count
        self.stacked_split += self.sizes[at:]
        # Off where a wrapper (data parallelism) watches the parameters' own gradients.
        self.use_step_views, self.together = step_views, together

    @contextmanager
    def step_views(self, inputs: Any):
        """Inside, the model's parameters are views of one split of ``flat`` (the same
        values), whose gradients backward gathers into ``flat.grad`` at once. When a step
        on ``inputs`` runs each stack's modules together, each parameter of a stack's
        member is a slice of one (G, …) view (``stacked_in``: that view, which
        ``ucrn.model.stacked`` takes instead of stacking)."""
        if not self.use_step_views:
            yield
            return
        views = self._stacked_views() if self.stacks and self.together(inputs) else self._views()
        saved = [module._parameters[name] for module, name, _ in self.places]
        for module, name, i in self.places:
            module._parameters[name] = views[i]
        try:
            yield
        finally:
            for (module, name, _), parameter in zip(self.places, saved, strict=True):
                module._parameters[name] = parameter

    def _views(self) -> list[torch.Tensor]:
        return [chunk.view(shape) for chunk, shape in
                zip(self.flat.split(self.sizes), self.shapes, strict=True)]

    def _stacked_views(self) -> list[torch.Tensor]:
        """Each stack as one chunk of (G, member size), split by parameter into (G, …)
        views whose slices the members read; the other parameters as in ``_views``."""
        pieces = self.flat.split(self.stacked_split)
        views: list[torch.Tensor] = []
        position = 0
        for members, chunk in zip(self.stacks, pieces, strict=False):
            width = len(members[0])
            sizes = self.sizes[position:position + width]
            shapes = self.shapes[position:position + width]
            rows = chunk.view(len(members), -1).split(sizes, dim=1)  # (G, size) each
            wholes = [row.view(len(members), *shape) for row, shape in
                      zip(rows, shapes, strict=True)]  # (G, …) per parameter
            for member in range(len(members)):
                for whole in wholes:
                    view = whole[member]
                    view.stacked_in, view.stacked_index = whole, member
                    views.append(view)
            position += len(members) * width
        views += [chunk.view(shape) for chunk, shape in
                  zip(pieces[len(self.stacks):], self.shapes[position:], strict=True)]
        return views

    def optimizer_state(self, state: dict[str, Any], names: list[str] | None
                        ) -> dict[str, Any]:
        """An optimizer state saved over a flat tensor laid out as ``names`` (None: in the
        model's parameter order), laid out as this one."""
        if names == self.names:
            return state
        saved = names or self.model_order
        size = dict(zip(self.names, self.sizes, strict=True))
        offsets, at = {}, 0
        for name in saved:
            offsets[name], at = at, at + size[name]
        pick = torch.cat([torch.arange(offsets[n], offsets[n] + size[n]) for n in self.names])
        moved = {key: {k: (v[pick] if torch.is_tensor(v) and v.dim() == 1 and len(v) == at
                           else v) for k, v in entry.items()}
                 for key, entry in state["state"].items()}
        return {**state, "state": moved}

