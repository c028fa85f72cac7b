"""What a task trains on and how it is scored: labels → targets, predictions → metrics.

- ``regression``: the sentiment score in [-3, 3]; L1 loss; ``sentiment_metrics``.
- ``binary``: sentiment ≥ 0 vs < 0 (MMSA's ``Has0`` convention); cross-entropy; Acc_2, F1.
- ``seven_class``: round(clip(sentiment, ±3)) + 3; cross-entropy; Acc_7, F1, and the
  sentiment metrics of the predicted class read back as a score.
- ``emotions``: the six MOSEI emotions, present when > 0; BCE with logits; MulT's metrics.
"""

from __future__ import annotations

import numpy as np
import torch

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

DEFAULT_SELECT_METRIC = {
    "regression": "MAE", "binary": "Acc_2", "seven_class": "Acc_7", "emotions": "mean_wa",
}


def label_columns(dataset: Dataset, task: str) -> list[int]:
    """The label columns ``task`` reads; a clear error when the data lacks them."""
    names = list(dataset.label_names)
    wanted = list(EMOTIONS) if task == "emotions" else [SENTIMENT]
    missing = [name for name in wanted if name not in names]
    if missing:
        raise UcrnError(
            f"{dataset.path}: task {task!r} needs label columns {', '.join(missing)}, but the "
            f"file has {', '.join(names)}; pick a task its labels support"
        )
    return [names.index(name) for name in wanted]


def make_targets(labels: torch.Tensor, columns: list[int], task: str) -> torch.Tensor:
    """Training targets from label columns: (N,) floats, (N,) class ids or (N, 6) 0/1."""
    chosen = labels[:, columns]
    if task == "regression":
        return chosen[:, 0].contiguous()
    if task == "binary":
        return (chosen[:, 0] >= 0).long()
    if task == "seven_class":
        return (torch.round(chosen[:, 0].clamp(-3, 3)) + 3).long()
    if task == "emotions":
        return (chosen > 0).float()
    raise ValueError(f"unknown task {task!r}")


def task_metrics(prediction: torch.Tensor, labels: torch.Tensor, task: str) -> dict[str, float]:
    """Metrics of model outputs against the task's label columns (both on any device)."""
    prediction = prediction.detach().double().cpu().numpy()
    labels = labels.detach().double().cpu().numpy()
    if task == "regression":
        return sentiment_metrics(prediction, labels[:, 0])
    if task == "binary":
        scores = class_metrics(prediction.argmax(-1), labels[:, 0] >= 0)
        return {"Acc_2": scores["Acc"], "F1": scores["F1"]}
    if task == "seven_class":
        predicted = prediction.argmax(-1)
        truth = np.round(np.clip(labels[:, 0], -3, 3)) + 3
        scores = class_metrics(predicted, truth)
        as_score = sentiment_metrics(predicted - 3.0, labels[:, 0])
        return {**as_score, "Acc_7": scores["Acc"], "F1": scores["F1"]}
    if task == "emotions":
        return flatten_emotion_metrics(emotion_metrics(prediction, labels))
    raise ValueError(f"unknown task {task!r}")


def metric_names(task: str) -> tuple[str, ...]:
    """The metric keys ``task_metrics`` returns for ``task``, plus the validation ``loss``."""
    if task == "regression":
        names = SENTIMENT_METRICS
    elif task == "binary":
        names = ("Acc_2", "F1")
    elif task == "seven_class":
        names = (*SENTIMENT_METRICS, "F1")
    elif task == "emotions":
        names = tuple(
            f"{prefix}_{key}" for prefix in ("mean", *EMOTIONS) for key in ("acc", "f1", "wa")
        )
    else:
        raise ValueError(f"unknown task {task!r}")
    return (*names, "loss")
