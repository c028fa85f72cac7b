"""The checkpoint contract: what a training run saves, resumes from, and selected.

A ``TrainingState`` is the one record of a run, written after every epoch and read by
whoever continues or uses the run: ``ucrn.engine.fit`` (resume), the Ray Train workers
(checkpoints), the search (the best trial's model) and the evaluator (each seed's model).

- where training is: ``epoch``, the current ``weights``, the optimizer, the batch-order
  generator and torch's random states (the CPU's, and every GPU's on CUDA), so that a
  resumed run continues exactly;
- what it selected on the validation split: ``best_epoch``, ``best_score`` and
  ``best_weights``, with every epoch's losses and validation metrics in ``history``.

Weights are model ``state_dict``s, so they carry the input standardisation's train-split
statistics too. ``to_dict`` gives plain tensors, numbers, strings, lists and dicts: what
``torch.load(weights_only=True)`` reads back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ucrn.config import Config, config_from_dict
from ucrn.errors import UcrnError
from ucrn.model import UCRN, count_parameters

VALID = "valid_"


@dataclass
class FitResult:
    """A finished training run: the selected model and its record."""

    config: Config
    model: UCRN  # holding the selected (best-validation) weights
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    valid: dict[str, float]  # validation metrics of the selected checkpoint
    test: dict[str, float] | None  # test metrics of the selected checkpoint, scored once
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def params(self) -> int:
        return count_parameters(self.model)

    def metrics_record(self, select_metric: str) -> dict[str, Any]:
        """What ``metrics.json`` holds."""
        return {
            "valid": self.valid, "test": self.test, "epochs": self.epochs_run,
            "best_epoch": self.best_epoch, "stopped_early": self.stopped_early,
            "select_metric": select_metric, "params": self.params,
            "seconds": round(self.seconds, 3), "history": self.history,
        }


@dataclass
class TrainingState:
    """Where a run is and what it selected (see the module docstring)."""

    config: Config  # fitted to the data: input sizes included
    epoch: int = 0  # epochs completed
    best_epoch: int = 0  # the selected epoch, 1-based; 0 before the first
    best_score: float | None = None  # its validation score on the selection metric
    best_weights: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # per epoch: losses, valid_*
    weights: dict[str, torch.Tensor] | None = None  # the current weights, to resume
    optimizer: dict[str, Any] | None = None
    batch_order: torch.Tensor | None = None  # the batch-order generator's state
    torch_rng: torch.Tensor | None = None
    cuda_rng: list[torch.Tensor] | None = None  # every GPU's random state, on CUDA

    OPTIONAL = ("cuda_rng",)  # absent from states written before it existed

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(), "epoch": self.epoch, "best_epoch": self.best_epoch,
            "best_score": self.best_score, "best_weights": self.best_weights,
            "history": self.history, "weights": self.weights, "optimizer": self.optimizer,
            "batch_order": self.batch_order, "torch_rng": self.torch_rng,
            "cuda_rng": self.cuda_rng,
        }

    @classmethod
    def from_dict(cls, data: Any) -> TrainingState:
        """The state ``to_dict`` wrote; a clear error for anything else."""
        expected = set(cls.__dataclass_fields__) - set(cls.OPTIONAL)
        if not isinstance(data, dict) or not expected <= set(data):
            found = ", ".join(sorted(map(str, data))) if isinstance(data, dict) else \
                type(data).__name__
            raise UcrnError(f"not a ucrn training state (found {found}); was it written by "
                            "this version of ucrn?")
        return cls(**{**data, "config": config_from_dict(data["config"])})

    def best_valid(self) -> dict[str, float]:
        """The validation metrics of the selected epoch (empty before the first epoch)."""
        if not self.best_epoch:
            return {}
        record = self.history[self.best_epoch - 1]
        return {k.removeprefix(VALID): v for k, v in record.items() if k.startswith(VALID)}

    def selected_model(self) -> UCRN:
        """A model holding the weights selected on the validation split."""
        if self.best_weights is None:
            raise UcrnError("the run selected no checkpoint: it trained no epoch")
        model = UCRN(self.config.model)
        model.load_state_dict(self.best_weights)
        return model

    @property
    def stopped_early(self) -> bool:
        return self.epoch < self.config.train.epochs

    def to_fit_result(
        self, test: dict[str, float] | None = None, seconds: float = 0.0,
        model: UCRN | None = None,
    ) -> FitResult:
        """The finished run: its selected model (``model`` when already built), records and
        the ``test`` metrics of that model, when scored."""
        return FitResult(
            self.config, model if model is not None else self.selected_model(),
            self.best_epoch, self.epoch, self.stopped_early, self.best_valid(), test,
            self.history, seconds,
        )
