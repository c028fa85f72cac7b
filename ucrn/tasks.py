"""What a task trains on and how it is scored: one ``Task`` record per task, in ``TASKS``.

- ``regression``: the sentiment score in [-3, 3]; L1 loss; ``sentiment_metrics``.
- ``binary``: sentiment ≥ 0 vs < 0 (MMSA's ``Has0`` convention); cross-entropy; Acc_2, F1.
- ``seven_class``: round(clip(sentiment, ±3)) + 3; cross-entropy; Acc_7, F1, and the
  sentiment metrics of the predicted class read back as a score.
- ``emotions``: the six MOSEI emotions, present when > 0; BCE with logits; MulT's metrics.

A new task is one more entry in ``TASKS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ucrn.data.layout import SENTIMENT, Dataset
from ucrn.errors import UcrnError
from ucrn.metrics import (
    EMOTIONS,
    SENTIMENT_METRICS,
    class_metrics,
    emotion_metrics,
    flatten_emotion_metrics,
    sentiment_metrics,
)


@dataclass(frozen=True)
class Task:
    """Everything that differs between tasks, from the output layer to the report."""

    name: str
    output_size: int  # the output layer's width
    label_names: tuple[str, ...]  # the label columns it reads
    targets: Callable[[torch.Tensor], torch.Tensor]  # (N, k) label columns → targets
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # L_C (eq. 12), batch mean
    metrics: Callable[[np.ndarray, np.ndarray], dict[str, float]]  # outputs, labels → scores
    metric_names: tuple[str, ...]  # what ``metrics`` returns
    select_metric: str  # the default validation metric that picks the checkpoint
    headline: tuple[str, ...]  # the metrics the report's robustness and ablation tables show

    @property
    def scalar_output(self) -> bool:
        """A regression's output is one score per sample, (B,) rather than (B, 1)."""
        return self.name == "regression"

    @property
    def score_names(self) -> tuple[str, ...]:
        """The metric keys of a scored split: the task's metrics and the task ``loss``."""
        return (*self.metric_names, "loss")


def _binary_metrics(prediction: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    scores = class_metrics(prediction.argmax(-1), labels[:, 0] >= 0)
    return {"Acc_2": scores["Acc"], "F1": scores["F1"]}


def _seven_class_metrics(prediction: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    predicted = prediction.argmax(-1)
    truth = np.round(np.clip(labels[:, 0], -3, 3)) + 3
    scores = class_metrics(predicted, truth)
    as_score = sentiment_metrics(predicted - 3.0, labels[:, 0])
    return {**as_score, "Acc_7": scores["Acc"], "F1": scores["F1"]}


TASKS: dict[str, Task] = {task.name: task for task in (
    Task(
        "regression", 1, (SENTIMENT,),
        targets=lambda labels: labels[:, 0].contiguous(),
        loss=F.l1_loss,
        metrics=lambda prediction, labels: sentiment_metrics(prediction, labels[:, 0]),
        metric_names=SENTIMENT_METRICS, select_metric="MAE",
        headline=("Non0_acc_2", "Has0_acc_2", "Non0_F1", "Acc_7", "MAE", "Corr"),
    ),
    Task(
        "binary", 2, (SENTIMENT,),
        targets=lambda labels: (labels[:, 0] >= 0).long(),
        loss=F.cross_entropy, metrics=_binary_metrics, metric_names=("Acc_2", "F1"),
        select_metric="Acc_2", headline=("Acc_2", "F1"),
    ),
    Task(
        "seven_class", 7, (SENTIMENT,),
        targets=lambda labels: (torch.round(labels[:, 0].clamp(-3, 3)) + 3).long(),
        loss=F.cross_entropy, metrics=_seven_class_metrics,
        metric_names=(*SENTIMENT_METRICS, "F1"), select_metric="Acc_7",
        headline=("Acc_7", "F1", "MAE", "Corr"),
    ),
    Task(
        "emotions", len(EMOTIONS), EMOTIONS,
        targets=lambda labels: (labels > 0).float(),
        loss=F.binary_cross_entropy_with_logits,
        metrics=lambda prediction, labels: flatten_emotion_metrics(
            emotion_metrics(prediction, labels)),
        metric_names=tuple(f"{prefix}_{key}" for prefix in ("mean", *EMOTIONS)
                           for key in ("acc", "f1", "wa")),
        select_metric="mean_wa", headline=("mean_acc", "mean_f1", "mean_wa"),
    ),
)}


def get_task(name: str) -> Task:
    """The task called ``name``; a clear error for any other name."""
    if name not in TASKS:
        raise UcrnError(f"task={name!r}: choose one of {', '.join(TASKS)}")
    return TASKS[name]


def label_columns(dataset: Dataset, task: str) -> list[int]:
    """The label columns ``task`` reads; a clear error when the data lacks them."""
    names = list(dataset.label_names)
    missing = [name for name in get_task(task).label_names if name not in names]
    if missing:
        raise UcrnError(
            f"{dataset.path}: task {task!r} needs label columns {', '.join(missing)}, but the "
            f"file has {', '.join(names)}; pick a task its labels support"
        )
    return [names.index(name) for name in get_task(task).label_names]


def task_metrics(prediction: torch.Tensor, labels: torch.Tensor, task: str) -> dict[str, float]:
    """Metrics of model outputs against the task's label columns (both on any device)."""
    return get_task(task).metrics(prediction.detach().double().cpu().numpy(),
                                  labels.detach().double().cpu().numpy())


def metric_names(task: str) -> tuple[str, ...]:
    """The metric keys ``task_metrics`` returns for ``task``, plus the validation ``loss``."""
    return get_task(task).score_names
