"""The watch that stops an experiment whose trials stopped reporting, and the check that
tells a finished experiment from a stopped or interrupted one."""

from __future__ import annotations

import pickle

import pytest

from tuning.progress import ProgressWatch, check_ran_to_end
from ucrn.errors import UcrnError


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def no_verdict():
    ProgressWatch.stalled_after = None
    yield
    ProgressWatch.stalled_after = None


def test_the_watch_stops_only_after_the_stated_minutes_without_a_result():
    clock = Clock()
    watch = ProgressWatch(2.0, clock)
    assert not watch.stop_all()  # starts its clock
    clock.now += 100
    assert not watch("t1", {"epoch": 1}) and not watch.stop_all()
    clock.now += 119  # 119 s since the last result
    assert not watch.stop_all()
    clock.now += 2
    assert watch.stop_all()
    assert ProgressWatch.stalled_after == 2.0


def test_a_restored_watch_starts_afresh():
    clock = Clock()
    watch = ProgressWatch(1.0, clock)
    watch.stop_all()
    clock.now += 3600
    restored = pickle.loads(pickle.dumps(watch))
    assert restored.minutes == 1.0 and not restored.stop_all()


def test_a_finished_experiment_passes():
    check_ran_to_end(8, 8, "continue with --resume")


def test_an_experiment_that_ended_early_was_interrupted():
    with pytest.raises(KeyboardInterrupt):
        check_ran_to_end(3, 8, "continue with --resume")


def test_a_stalled_experiment_fails_with_one_line():
    clock = Clock()
    watch = ProgressWatch(0.5, clock)
    watch.stop_all()
    clock.now += 31
    assert watch.stop_all()
    with pytest.raises(UcrnError) as error:
        check_ran_to_end(8, 8, "continue with --resume")  # even with every trial ended
    message = str(error.value)
    assert "no trial reported for 0.5 minutes" in message and "\n" not in message
    assert message.endswith("continue with --resume")
