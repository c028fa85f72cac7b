"""Many models of one architecture trained side by side, as one stacked computation.

Each linear map is one batched product over the models and each attention one call over
models × batch (the layers' ``together`` functions, through ``UCRN.together``), so a step
dispatches about what one model's step does: on a GPU, where a step of this small model is
bound by launching kernels, K models train for little more than the price of one (HFTA,
Wang et al., MLSys 2021, packs jobs the same way).

Each model keeps what makes it its own run: its seed's initialisation and batch order
(its dropout masks come from the stack's random stream, which the seeds fix: the same stack
gives the same numbers, and ten seeds score as ten apart); its λm, λc, learning rate, weight decay
and clipping norm; gradient clipping and Adam of its own (its own bias correction); early
stopping of its own (a stopped model leaves the stack, and nothing moves it any more); and
a loss that turns non-finite stops that model alone. The loss is the sum of the models'
losses, so no model's gradient is scaled by 1/K. Each comes out as if it had trained alone:
the same ``TrainingState`` and ``FitResult`` as ``ucrn.engine.fit`` gives, so that tables,
run files and ``ucrn evaluate`` cannot tell the difference. A stack of one is a plain run.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ucrn.config import Config
from ucrn.data.batches import drop_modalities, epoch_order, input_statistics, mask_modalities
from ucrn.data.layout import Dataset
from ucrn.engine import (
    _score,
    _TaskData,
    check_memory,
    evaluate,
    fit,
    prepare_config,
    resolve_device,
    robust_scores,
    select_metric,
    static_shapes,
)
from ucrn.errors import UcrnError
from ucrn.flat import FlatParameters
from ucrn.losses import multimodal_js
from ucrn.metrics import is_better
from ucrn.model import UCRN
from ucrn.state import FitResult, TrainingState
from ucrn.tasks import get_task, label_columns

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as ucrn.engine trains with
# Settings that may differ between the models of one stack (all others must agree).
OWN_SETTINGS = ("seed", "lambda_m", "lambda_c", "lambda_m_warmup", "learning_rate",
                "weight_decay", "grad_clip", "epochs", "patience", "select_metric")


@dataclasses.dataclass
class _Member:
    """One model of the stack: its config, weights and run record."""

    config: Config
    model: UCRN
    state: TrainingState
    batch_order: torch.Generator
    metric: str
    error: UcrnError | None = None
    seconds: float = 0.0


def fit_stack(
    configs: Sequence[Config], dataset: Dataset, *, device: str | torch.device | None = None,
    score_test: bool = True, on_epoch: Callable[[ModelStack], None] | None = None,
) -> list[FitResult | UcrnError]:
    """Train one model per config as one stacked computation; for each, in order, what
    ``ucrn.engine.fit`` would give for it alone, or the error that stopped it (a loss that
    turned non-finite). ``on_epoch(stack)`` is called after every epoch."""
    if len(configs) == 1:
        return [fit(configs[0], dataset, device=device, score_test=score_test)]
    stack = ModelStack(configs, dataset, resolve_device(device))
    while stack.active:
        stack.run_epoch()
        if on_epoch is not None:
            on_epoch(stack)
    return stack.results(dataset, score_test)


def check_stackable(configs: Sequence[Config]) -> None:
    """Raise ``UcrnError`` unless the configs differ only in ``OWN_SETTINGS``."""
    first = configs[0]
    for config in configs[1:]:
        if config.model != first.model:
            raise UcrnError("models trained as one stack need one architecture: their model "
                            "settings differ")
        train, reference = dataclasses.asdict(config.train), dataclasses.asdict(first.train)
        differ = sorted(k for k in train if k not in OWN_SETTINGS and train[k] != reference[k])
        if differ:
            raise UcrnError(f"models trained as one stack differ in {', '.join(differ)}; "
                            f"only {', '.join(OWN_SETTINGS)} may differ")
    if first.train.modality_dropout:
        raise UcrnError("modality_dropout is not taken by a stack of models: train them apart")


class ModelStack:
    """The models of ``configs`` on ``device``, trained an epoch at a time."""

    def __init__(self, configs: Sequence[Config], dataset: Dataset, device: torch.device):
        configs = [prepare_config(config, dataset) for config in configs]
        check_stackable(configs)
        first = configs[0]
        check_memory(first, dataset, device)
        self.device, self.task = device, first.model.task
        modalities = first.model.modalities
        train_split = drop_modalities(dataset.split("train"), modalities)
        statistics = input_statistics(train_split, first.model.standardise)
        columns = label_columns(dataset, self.task)
        self.train = _TaskData(train_split, columns, self.task, device)
        self.valid = _TaskData(dataset.split("valid"), columns, self.task, device, modalities)
        self.members = []
        for config in configs:
            torch.manual_seed(config.train.seed)
            model = UCRN(config.model).to(device)
            model.static_shapes = static_shapes(config, device)
            model.set_input_statistics(statistics)
            state = TrainingState(config, best_weights=copy.deepcopy(model.state_dict()))
            self.members.append(_Member(config, model, state,
                                        torch.Generator().manual_seed(config.train.seed),
                                        select_metric(config)))
        self.valid_masked = []  # Table 4 on valid, for the robust_* scores
        if first.train.score_robust:
            means = self.members[0].model.input_means()
            self.valid_masked = [_TaskData(mask_modalities(self.valid.split, [m], fill=means),
                                           columns, self.task, device) for m in modalities]
        self.batch_size = first.train.batch_size
        self.epoch, self.started = 0, time.perf_counter()
        self.active: list[_Member] = []
        self._restack(self.members, None)

    # ---------------------------------------------------------------- the stacked step

    def _restack(self, members: list[_Member], keep: torch.Tensor | None) -> None:
        """Lay ``members`` out as one flat tensor, (model, parameter) row by row, with the
        Adam state of the rows ``keep`` of the last stack (None: a new one)."""
        models = [member.model for member in members]
        self.flat = FlatParameters(nn.ModuleList(models), stacks=[models],
                                   together=lambda inputs: True)
        rows = self.flat.flat.detach().view(len(models), -1)
        if keep is None:
            self.exp_avg, self.exp_avg_sq = torch.zeros_like(rows), torch.zeros_like(rows)
            self.steps = torch.zeros(len(models), 1, device=self.device)
        else:
            self.exp_avg, self.exp_avg_sq = self.exp_avg[keep], self.exp_avg_sq[keep]
            self.steps = self.steps[keep]
        self.active = members

        def column(name: str) -> torch.Tensor:  # (K, 1): one setting per model
            return torch.tensor([[float(getattr(m.config.train, name))] for m in members],
                                device=self.device)

        self.learning_rate, self.weight_decay = column("learning_rate"), column("weight_decay")
        self.grad_clip, self.lambda_c = column("grad_clip"), column("lambda_c").squeeze(1)

    def _lambda_m(self) -> torch.Tensor:
        """Each model's λm this epoch, ramped over its ``lambda_m_warmup`` epochs: (K,)."""
        return torch.tensor([m.config.train.lambda_m * min(
            1.0, self.epoch / (m.config.train.lambda_m_warmup + 1)) for m in self.active],
            device=self.device)

    def _losses(self, features, lengths, targets, lambda_m) -> torch.Tensor:
        """(3, K): each model's L (eq. 13), L_C and L_M on its own batch."""
        output = UCRN.together([m.model for m in self.active], features, lengths)
        count = len(self.active)
        elementwise = get_task(self.task).loss(output.prediction.flatten(0, 1),
                                               targets.flatten(0, 1), reduction="none")
        task_term = elementwise.reshape(count, -1).mean(dim=1)  # (K,)
        regulariser = (multimodal_js(output.unimodal) if bool((lambda_m > 0).any())
                       else task_term.new_zeros(count))
        return torch.stack([lambda_m * regulariser + self.lambda_c * task_term, task_term,
                            regulariser])

    def _step(self, features, lengths, targets, lambda_m, totals) -> None:
        """Forward, the summed loss, backward, clipping and Adam, each model on its own."""
        with self.flat.step_views(features):
            losses = self._losses(features, lengths, targets, lambda_m)
        self.flat.flat.grad.zero_()
        losses[0].sum().backward()  # summed: no model's gradient is scaled by 1/K
        count = len(self.active)
        grad = self.flat.flat.grad.view(count, -1)
        weights = self.flat.flat.detach().view(count, -1)
        # clip_grad_norm_ per model (a clipping norm of 0 leaves that model's alone)
        norms = torch.linalg.vector_norm(grad, dim=1, keepdim=True)
        scale = (self.grad_clip / (norms + 1e-6)).clamp(max=1.0)
        grad.mul_(torch.where(self.grad_clip > 0, scale, 1.0))
        # Adam per model: its own learning rate, weight decay and bias correction
        grad = grad + self.weight_decay * weights
        self.steps += 1
        self.exp_avg.lerp_(grad, 1 - BETAS[0])
        self.exp_avg_sq.mul_(BETAS[1]).addcmul_(grad, grad, value=1 - BETAS[1])
        step_size = self.learning_rate / (1 - BETAS[0] ** self.steps)
        denominator = (self.exp_avg_sq.sqrt() / (1 - BETAS[1] ** self.steps).sqrt()).add_(EPS)
        weights.sub_(step_size * self.exp_avg / denominator)
        totals += losses.detach()

    def run_epoch(self) -> None:
        """Train every model in the stack one epoch, each on its own batch order; score
        each on valid, keep its best weights; drop the models that are done."""
        self.epoch += 1
        count, split = len(self.active), self.train.split
        orders = torch.stack([epoch_order(len(split), shuffle=True, generator=m.batch_order)
                              for m in self.active])  # (K, N)
        totals, batches = self.train_batches(orders)
        losses = (totals / max(batches, 1)).T.tolist()  # per model: L, L_C, L_M
        staying = []
        for member, (total, task, regulariser) in zip(self.active, losses, strict=True):
            member.seconds = time.perf_counter() - self.started
            if not math.isfinite(total):
                member.error = UcrnError(
                    f"training diverged at epoch {self.epoch} (loss {total}); lower "
                    f"learning_rate (now {member.config.train.learning_rate:g}) or set "
                    "grad_clip")
                continue
            self._record(member, total, task, regulariser)
            if self._goes_on(member):
                staying.append(member)
        if not staying:
            self.active = []
        elif len(staying) < count:  # the finished models leave: less work for the rest
            keep = torch.tensor([m in staying for m in self.active], device=self.device)
            self._restack(staying, keep)

    def train_batches(self, orders: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Train the models in the stack on their batches of ``orders`` (K, N), in turn:
        their summed L, L_C and L_M (3, K) and the number of batches."""
        count, split = len(self.active), self.train.split
        orders = orders.to(self.device)
        lambda_m = self._lambda_m()
        totals = torch.zeros(3, count, device=self.device)
        for member in self.active:
            member.model.train()
        batches = 0
        for start in range(0, orders.shape[1], self.batch_size):
            index = orders[:, start:start + self.batch_size]  # (K, b)
            rows = index.flatten()

            def gather(x: torch.Tensor, rows=rows, index=index) -> torch.Tensor:
                return x.index_select(0, rows).view(*index.shape, *x.shape[1:])

            features = {m: gather(x) for m, x in split.features.items()}
            lengths = {m: (gather(n) if n is not None else None)
                       for m, n in split.lengths.items()}
            self._step(features, lengths, gather(self.train.targets), lambda_m, totals)
            batches += 1
        return totals, batches

    def _record(self, member: _Member, total: float, task: float, regulariser: float
                ) -> None:
        """Score ``member`` on valid after this epoch, as ``fit`` does."""
        valid = _score(member.model, self.valid, member.config)
        if self.valid_masked:
            valid.update(robust_scores(member.model, self.valid_masked, member.config))
        state = member.state
        if is_better(member.metric, valid[member.metric], state.best_score):
            state.best_epoch, state.best_score = self.epoch, valid[member.metric]
            state.best_weights = copy.deepcopy(member.model.state_dict())
        state.epoch = self.epoch
        state.history.append({
            "epoch": self.epoch, "train_loss": total, "train_task_loss": task,
            "train_js": regulariser, **{f"valid_{k}": v for k, v in valid.items()},
        })

    def _goes_on(self, member: _Member) -> bool:
        """Whether ``member`` trains another epoch (its budget and its patience)."""
        following, state = self.epoch + 1, member.state
        if following > member.config.train.epochs:
            return False
        return not (state.best_epoch and following - state.best_epoch
                    > member.config.train.patience)

    def results(self, dataset: Dataset, score_test: bool) -> list[FitResult | UcrnError]:
        """Each model's run, on its selected weights (test scored once, when asked)."""
        results: list[FitResult | UcrnError] = []
        for member in self.members:
            if member.error is not None:
                results.append(member.error)
                continue
            model = member.model
            model.load_state_dict(member.state.best_weights)
            test = None
            if score_test:
                test_split = drop_modalities(dataset.split("test"),
                                             member.config.model.modalities)
                test = evaluate(model, test_split, dataset, member.config, self.device)
            results.append(member.state.to_fit_result(test, member.seconds, model))
        return results
