"""The search's tables: one row per trial at its kept checkpoint, and the Pareto front."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tuning.tables import pareto_front, trial_rows


def test_each_trial_is_shown_at_the_epoch_its_first_metric_keeps():
    history = pd.DataFrame({"epoch": [1, 2, 3], "valid_MAE": [1.2, 0.9, 1.0],
                            "valid_robust_MAE": [1.3, 1.25, 1.1]})
    rows = trial_rows([("a" * 12, "done", {"lambda_m": 0.5}, history),
                       ("b" * 12, "error", {"lambda_m": 2.0}, None)],
                      ["valid_MAE", "valid_robust_MAE"], ["lambda_m"])
    first, failed = rows.to_dict("records")
    assert first == {"trial": "aaaaaaaa", "status": "done", "epochs": 3, "valid_MAE": 0.9,
                     "valid_robust_MAE": 1.25, "best epoch": 2, "lambda_m": 0.5}
    assert failed["epochs"] == 0 and math.isnan(failed["valid_robust_MAE"])


def test_the_pareto_front_keeps_the_trials_no_other_beats_on_both():
    trials = pd.DataFrame({
        "trial": ["a", "b", "c", "d", "e", "f"],
        "valid_MAE": [0.90, 0.95, 1.00, 0.96, 0.90, float("nan")],  # lower is better
        "valid_robust_Non0_acc_2": [0.60, 0.70, 0.75, 0.69, 0.59, 0.9],  # higher is better
    })
    front = pareto_front(trials, ["valid_MAE", "valid_robust_Non0_acc_2"])
    # d is beaten by b on both, e by a (same MAE, worse robustness); f was never scored.
    assert list(front["trial"]) == ["a", "b", "c"]
    assert pareto_front(trials.iloc[:0], ["valid_MAE", "valid_robust_Non0_acc_2"]).empty


def test_equal_trials_are_both_on_the_front():
    trials = pd.DataFrame({"trial": ["a", "b"], "valid_MAE": [1.0, 1.0],
                           "valid_Corr": [0.5, 0.5]})
    assert list(pareto_front(trials, ["valid_MAE", "valid_Corr"])["trial"]) == ["a", "b"]


@pytest.mark.parametrize("metrics", [["valid_MAE"], ["valid_Corr"]])
def test_one_metric_has_a_front_of_its_best(metrics):
    trials = pd.DataFrame({"trial": ["a", "b"], "valid_MAE": [1.0, 0.8],
                           "valid_Corr": [0.4, 0.6]})
    assert list(pareto_front(trials, metrics)["trial"]) == ["b"]
