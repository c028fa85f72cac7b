"""Sentiment and emotion metrics, with the conventions of the field's reference code.

Sentiment regression follows MMSA's ``MetricsTop`` (v2.2.1): ``Has0`` counts zero labels as
positive, ``Non0`` drops them, F1 is scikit-learn's weighted F1 with (truth, prediction) in
that order, ``Acc_7`` / ``Acc_5`` clip to ±3 / ±2 and round half to even. ``Acc_7_sdk`` bins
as the CMU-MultimodalSDK does. Emotion weighted accuracy is MulT's ``eval_metrics.py``:
``(TP·N/P + TN) / (2N)``. Pure numpy: no scikit-learn at run time.
"""

from __future__ import annotations

import math

import numpy as np

EMOTIONS = ("happy", "sad", "anger", "surprise", "disgust", "fear")
SENTIMENT_METRICS = (
    "Has0_acc_2", "Has0_F1", "Non0_acc_2", "Non0_F1", "Acc_5", "Acc_7", "Acc_7_sdk", "MAE", "Corr",
)

# Metrics where lower is better; every other metric is maximised (see ``mode``).
LOWER_IS_BETTER = frozenset({"MAE", "loss"})
SPLIT_PREFIXES = ("valid_", "test_")
# A metric averaged over the missing-modality conditions of Table 4 (one modality masked at a
# time), e.g. robust_MAE; see ``ucrn.engine.robust_scores``.
ROBUST_PREFIX = "robust_"


def mode(metric: str) -> str:
    """``"min"`` where lower is better (MAE, loss), ``"max"`` otherwise: the one definition
    of "better" that checkpoint selection, the search, the tables and the reports share.
    A ``valid_`` or ``test_`` prefix, and then ``robust_``, are ignored."""
    for prefix in SPLIT_PREFIXES:
        metric = metric.removeprefix(prefix)
    metric = metric.removeprefix(ROBUST_PREFIX)
    return "min" if metric in LOWER_IS_BETTER else "max"


def weighted_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    """scikit-learn's ``f1_score(truth, pred, average="weighted")`` for discrete labels."""
    truth = np.asarray(truth).ravel()
    pred = np.asarray(pred).ravel()
    if truth.size == 0:
        return float("nan")
    total = 0.0
    for label in np.union1d(truth, pred):
        is_true = truth == label
        is_pred = pred == label
        true_positive = float(np.sum(is_true & is_pred))
        support = float(np.sum(is_true))
        denominator = support + float(np.sum(is_pred))  # 2TP + FP + FN
        f1 = 2.0 * true_positive / denominator if denominator > 0 else 0.0
        total += f1 * support
    return total / truth.size


def _accuracy(truth: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(truth == pred)) if truth.size else float("nan")


def sdk_seven_class_bins(scores: np.ndarray) -> np.ndarray:
    """CMU-SDK 7-class binning: < -2 → -3, [-2, -1) → -2, [-1, 0) → -1, 0 → 0,
    (0, 1] → 1, (1, 2] → 2, > 2 → 3."""
    scores = np.asarray(scores, dtype=np.float64)
    bins = np.where(scores < 0, np.floor(scores), np.ceil(scores))
    return np.clip(bins, -3, 3)


def sentiment_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Metrics of sentiment scores in [-3, 3]: 1-D predictions against 1-D labels."""
    pred = np.asarray(pred, dtype=np.float64).ravel()
    truth = np.asarray(truth, dtype=np.float64).ravel()
    if pred.shape != truth.shape:
        raise ValueError(f"pred has {pred.size} values, truth {truth.size}")

    non_zero = truth != 0
    has0_truth, has0_pred = truth >= 0, pred >= 0
    non0_truth, non0_pred = truth[non_zero] > 0, pred[non_zero] > 0
    return {
        "Has0_acc_2": _accuracy(has0_truth, has0_pred),
        "Has0_F1": weighted_f1(has0_truth, has0_pred),
        "Non0_acc_2": _accuracy(non0_truth, non0_pred),
        "Non0_F1": weighted_f1(non0_truth, non0_pred),
        "Acc_5": _accuracy(np.round(np.clip(truth, -2, 2)), np.round(np.clip(pred, -2, 2))),
        "Acc_7": _accuracy(np.round(np.clip(truth, -3, 3)), np.round(np.clip(pred, -3, 3))),
        "Acc_7_sdk": _accuracy(sdk_seven_class_bins(truth), sdk_seven_class_bins(pred)),
        "MAE": float(np.mean(np.abs(pred - truth))) if pred.size else float("nan"),
        "Corr": _pearson(pred, truth),
    }


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def class_metrics(pred_class: np.ndarray, true_class: np.ndarray) -> dict[str, float]:
    """Accuracy and weighted F1 of class ids (the 2- and 7-class sentiment tasks)."""
    pred_class = np.asarray(pred_class).ravel()
    true_class = np.asarray(true_class).ravel()
    return {"Acc": _accuracy(true_class, pred_class), "F1": weighted_f1(true_class, pred_class)}


def weighted_accuracy(truth_present: np.ndarray, pred_present: np.ndarray) -> float:
    """MulT's weighted accuracy ``(TP·N/P + TN) / (2N)``; NaN when a class is absent."""
    positives = float(np.sum(truth_present))
    negatives = float(np.sum(~truth_present))
    if positives == 0 or negatives == 0:
        return float("nan")
    true_positive = float(np.sum(truth_present & pred_present))
    true_negative = float(np.sum(~truth_present & ~pred_present))
    return (true_positive * negatives / positives + true_negative) / (2.0 * negatives)


def emotion_metrics(
    logits: np.ndarray, truth: np.ndarray, names: tuple[str, ...] = EMOTIONS
) -> dict:
    """Per-emotion ``acc``, ``f1`` (weighted) and ``wa`` and their means over emotions.

    An emotion is present when its truth is > 0 and predicted present when its logit is > 0.
    """
    logits = np.asarray(logits, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if logits.shape != truth.shape or logits.ndim != 2 or logits.shape[1] != len(names):
        raise ValueError(
            f"logits {logits.shape} and truth {truth.shape} must both be (N, {len(names)})"
        )
    per_emotion = {}
    for column, name in enumerate(names):
        present, predicted = truth[:, column] > 0, logits[:, column] > 0
        per_emotion[name] = {
            "acc": _accuracy(present, predicted),
            "f1": weighted_f1(present, predicted),
            "wa": weighted_accuracy(present, predicted),
        }
    mean = {
        key: float(np.mean([scores[key] for scores in per_emotion.values()]))
        for key in ("acc", "f1", "wa")
    }
    return {"per_emotion": per_emotion, "mean": mean}


def flatten_emotion_metrics(metrics: dict) -> dict[str, float]:
    """``emotion_metrics`` as one flat dict: ``mean_acc``, ``happy_f1``, ..."""
    flat = {f"mean_{key}": value for key, value in metrics["mean"].items()}
    for name, scores in metrics["per_emotion"].items():
        flat.update({f"{name}_{key}": value for key, value in scores.items()})
    return flat


def is_better(metric: str, candidate: float, incumbent: float | None) -> bool:
    """Whether ``candidate`` improves on ``incumbent`` for ``metric`` (NaN never does)."""
    if candidate is None or math.isnan(candidate):
        return False
    if incumbent is None or math.isnan(incumbent):
        return True
    return candidate < incumbent if mode(metric) == "min" else candidate > incumbent
