"""The metrics reproduce the field's reference code (MMSA MetricsTop, MulT eval_metrics)."""

import json

import numpy as np
import pytest

from ucrn.metrics import (
    emotion_metrics,
    is_better,
    sdk_seven_class_bins,
    sentiment_metrics,
    weighted_accuracy,
    weighted_f1,
)

KEY_IN_VECTORS = {"Acc_7_sdk": "Acc_7_sdk_binning"}


def _vectors(reference_data):
    return json.loads((reference_data / "metric_vectors.json").read_text())


def test_sentiment_metrics_reproduce_every_reference_value(reference_data):
    cases = _vectors(reference_data)["sentiment"]
    assert len(cases) == 3
    for case in cases:
        metrics = sentiment_metrics(np.array(case["pred"]), np.array(case["truth"]))
        assert set(metrics) == {
            "Has0_acc_2", "Has0_F1", "Non0_acc_2", "Non0_F1", "Acc_5", "Acc_7", "Acc_7_sdk",
            "MAE", "Corr",
        }
        for key, value in metrics.items():
            assert value == pytest.approx(case["expected"][KEY_IN_VECTORS.get(key, key)],
                                          abs=1e-9), (case["name"], key)


def test_emotion_metrics_reproduce_every_reference_value(reference_data):
    for case in _vectors(reference_data)["emotion"]:
        metrics = emotion_metrics(
            np.array(case["logits"]), np.array(case["truth"]), tuple(case["emotions"])
        )
        expected = case["expected"]
        for name, scores in expected["per_emotion"].items():
            assert metrics["per_emotion"][name]["acc"] == pytest.approx(scores["acc"], abs=1e-9)
            assert metrics["per_emotion"][name]["f1"] == pytest.approx(
                scores["f1_weighted"], abs=1e-9)
            assert metrics["per_emotion"][name]["wa"] == pytest.approx(scores["wa"], abs=1e-9)
        assert metrics["mean"]["acc"] == pytest.approx(expected["mean"]["acc"], abs=1e-9)
        assert metrics["mean"]["f1"] == pytest.approx(expected["mean"]["f1_weighted"], abs=1e-9)
        assert metrics["mean"]["wa"] == pytest.approx(expected["mean"]["wa"], abs=1e-9)


def test_has0_counts_zero_labels_as_positive_and_non0_drops_them():
    truth = np.array([0.0, 0.0, 1.0, -1.0])
    pred = np.array([0.5, -0.5, 1.0, -1.0])
    metrics = sentiment_metrics(pred, truth)
    assert metrics["Has0_acc_2"] == 0.75  # the zero predicted negative is wrong
    assert metrics["Non0_acc_2"] == 1.0  # both zeros are dropped


def test_acc7_rounds_half_to_even_after_clipping():
    truth = np.array([0.5, 1.5, 2.5, 3.4])
    pred = np.array([0.0, 2.0, 2.0, 9.0])  # np.round: 0.5 → 0, 1.5 → 2, 2.5 → 2; 3.4 → 3
    assert sentiment_metrics(pred, truth)["Acc_7"] == 1.0


def test_sdk_binning_follows_the_sdk_intervals():
    scores = np.array([-2.5, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.01])
    assert sdk_seven_class_bins(scores).tolist() == [-3, -2, -1, -1, 0, 1, 1, 2, 2, 3]


def test_weighted_f1_gives_zero_to_a_class_never_predicted():
    truth = np.array([1, 1, 0, 0])
    pred = np.array([1, 1, 1, 1])
    # class 1: P=0.5 R=1 F1=2/3 (support 2); class 0: F1=0 (support 2) → weighted 1/3
    assert weighted_f1(truth, pred) == pytest.approx(1 / 3)


def test_weighted_accuracy_is_nan_when_a_class_is_absent():
    assert np.isnan(weighted_accuracy(np.array([True, True]), np.array([True, False])))


def test_constant_predictions_have_no_correlation():
    assert np.isnan(sentiment_metrics(np.zeros(4), np.array([1.0, -1, 2, 0]))["Corr"])


def test_is_better_knows_which_way_each_metric_goes():
    assert is_better("MAE", 0.8, 0.9) and not is_better("MAE", 0.9, 0.8)
    assert is_better("Corr", 0.7, 0.6) and not is_better("Corr", 0.6, 0.7)
    assert is_better("MAE", 1.0, None)
    assert not is_better("Corr", float("nan"), 0.1)


def test_one_direction_of_better_for_every_metric_name():
    from ucrn.metrics import is_better, mode

    assert mode("MAE") == mode("valid_MAE") == mode("test_loss") == "min"
    assert mode("Non0_acc_2") == mode("valid_Corr") == mode("mean_wa") == "max"
    assert is_better("valid_MAE", 0.9, 1.0) and not is_better("MAE", 1.1, 1.0)
    assert is_better("Corr", 0.7, 0.6) and not is_better("Corr", float("nan"), 0.6)
