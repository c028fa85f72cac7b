"""Early stopping that holds every trial to the same rule, wherever it came in the queue."""

from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler

from tuning.halving import FairHalving

STOP, CONTINUE = TrialScheduler.STOP, TrialScheduler.CONTINUE


def _trial(name, config=None):
    # a new trial: no storage, nothing reported yet
    return SimpleNamespace(trial_id=name, config=config or {})


def _report(scheduler, trial, epoch, value, metric="valid_MAE"):
    return scheduler.on_trial_result(None, trial, {"epoch": epoch, metric: value})


def test_rungs_double_from_the_grace_period_below_the_last_epoch():
    assert list(FairHalving("valid_MAE", max_t=8, grace_period=2).rungs) == [2, 4]
    assert list(FairHalving("valid_MAE", max_t=20, grace_period=1).rungs) == [1, 2, 4, 8, 16]
    with pytest.raises(ValueError):
        FairHalving("valid_MAE", max_t=2, grace_period=3)


def test_a_trial_alone_at_a_rung_goes_on_until_it_has_rivals():
    scheduler = FairHalving("valid_MAE", max_t=8, grace_period=2)
    first = _trial("first")
    assert [_report(scheduler, first, epoch, 1.0) for epoch in (1, 2, 3)] == [CONTINUE] * 3


def test_a_later_better_trial_stops_the_first_at_its_next_epoch():
    # ASHA's first-come promotion: the first trial at a rung would go on for ever
    scheduler = FairHalving("valid_MAE", max_t=8, grace_period=2)
    first, second = _trial("first"), _trial("second")
    for epoch in (1, 2, 3):
        assert _report(scheduler, first, epoch, 1.0) == CONTINUE
    assert _report(scheduler, second, 1, 0.9) == CONTINUE
    assert _report(scheduler, second, 2, 0.8) == CONTINUE  # better than the first at rung 2
    assert _report(scheduler, first, 4, 0.7) == STOP  # outside the best half of rung 2


def test_a_later_worse_trial_stops_and_the_first_goes_on():
    scheduler = FairHalving("valid_MAE", max_t=8, grace_period=2)
    first, second = _trial("first"), _trial("second")
    _report(scheduler, first, 2, 0.8)
    assert _report(scheduler, second, 2, 0.9) == STOP
    assert _report(scheduler, first, 3, 0.8) == CONTINUE


def test_the_best_half_of_a_rung_goes_on_rounded_up_and_ties_with_it():
    scheduler = FairHalving("valid_MAE", max_t=8, grace_period=2)
    trials = [_trial(str(k)) for k in range(3)]
    for trial, value in zip(trials, (0.5, 0.6, 0.7), strict=True):
        _report(scheduler, trial, 2, value)
    assert not scheduler.outranked("0") and not scheduler.outranked("1")  # ⌈3/2⌉ = 2 kept
    assert scheduler.outranked("2")
    tied = _trial("tied")
    assert _report(scheduler, tied, 2, 0.5) == CONTINUE  # nobody is better than it


def test_a_metric_to_maximise_keeps_the_highest():
    scheduler = FairHalving("valid_Non0_acc_2", max_t=4, grace_period=1)
    low, high = _trial("low"), _trial("high")
    _report(scheduler, low, 1, 0.6, "valid_Non0_acc_2")
    assert _report(scheduler, high, 1, 0.7, "valid_Non0_acc_2") == CONTINUE
    assert scheduler.outranked("low")


def test_a_trial_without_a_score_is_outranked_by_one_with():
    scheduler = FairHalving("valid_MAE", max_t=4, grace_period=1)
    _report(scheduler, _trial("scored"), 1, 0.8)
    assert _report(scheduler, _trial("nan"), 1, float("nan")) == STOP


def test_a_resumed_trial_brings_back_the_rungs_it_reached(tmp_path):
    # --resume: Tune restores the trials, not the scheduler; their result.json remains
    import json

    import pyarrow.fs

    folder = tmp_path / "trial"
    folder.mkdir()
    lines = [{"epoch": e, "valid_MAE": v} for e, v in ((1, 0.9), (2, 0.6), (3, 0.5))]
    (folder / "result.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    storage = SimpleNamespace(trial_fs_path=str(folder),
                              storage_filesystem=pyarrow.fs.LocalFileSystem())
    scheduler = FairHalving("valid_MAE", max_t=8, grace_period=2)
    scheduler.on_trial_add(None, SimpleNamespace(trial_id="old", storage=storage,
                                                 has_reported_at_least_once=True))
    scheduler.on_trial_add(None, SimpleNamespace(trial_id="new", storage=None,
                                                 has_reported_at_least_once=False))
    assert scheduler.rungs[2] == {"old": 0.6}
    assert _report(scheduler, _trial("late"), 2, 0.7) == STOP  # judged against the old one


def test_the_papers_trial_runs_every_epoch_and_still_counts_at_the_rungs():
    paper = {"lambda_m": 1.0, "urm_layers": 5}
    scheduler = FairHalving("valid_MAE", max_t=8, grace_period=2, yardstick=paper)
    first = _trial("paper", {**paper, "batch_size": 16})
    second, third = _trial("second", {"lambda_m": 0.5}), _trial("third", {"lambda_m": 2.0})
    _report(scheduler, second, 2, 0.8)
    assert _report(scheduler, first, 2, 0.9) == CONTINUE  # outranked, and not stopped
    assert scheduler.outranked("paper")
    assert scheduler.rungs[2]["paper"] == 0.9  # it counts at the rung
    assert _report(scheduler, third, 2, 0.95) == STOP  # behind both others
    assert [_report(scheduler, first, epoch, 1.0) for epoch in range(3, 9)] == [CONTINUE] * 6


def test_a_finalists_rerun_counts_at_no_rung_and_is_never_stopped():
    paper = {"lambda_m": 1.0}
    scheduler = FairHalving("valid_MAE", max_t=8, grace_period=2, yardstick=paper)
    _report(scheduler, _trial("first", {"lambda_m": 0.5}), 2, 0.8)
    rerun = _trial("rerun", {**paper, "rerun": {"trial": "paper", "seeds": [1]}})
    assert [_report(scheduler, rerun, epoch, 2.0) for epoch in range(1, 9)] == [CONTINUE] * 8
    assert set(scheduler.rungs[2]) == {"first"}
    scheduler.on_trial_complete(None, rerun, {"epoch": 4, "valid_MAE": 0.1})
    assert set(scheduler.rungs[4]) == set()
