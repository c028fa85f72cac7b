"""Whether a Tune experiment is still getting somewhere, and whether it ran to its end.

Tune returns from ``fit()`` in three ways that look alike: every trial ran, the user pressed
Ctrl-C (Tune catches it, saves its state and returns), or the ``ProgressWatch`` below stopped
an experiment whose trials had stopped reporting. Only the first may score the test split
or write a report; ``check_ran_to_end`` tells them apart.
"""

from __future__ import annotations

import time
from typing import ClassVar

from ray.tune import Stopper

from ucrn.errors import UcrnError


class ProgressWatch(Stopper):
    """Stops the experiment when no trial has reported a result for ``minutes``.

    Tune asks ``stop_all`` on every step of its loop (several times a second), results or
    not, so trials that cannot start or have stopped reporting end the experiment instead of
    leaving it waiting for ever. The verdict is kept on the class: the experiment may hold a
    copy of the watch (``--resume`` restores one from the saved experiment).
    """

    stalled_after: ClassVar[float | None] = None  # minutes, once a watch has stopped a run

    def __init__(self, minutes: float, clock=time.monotonic):
        self.minutes, self.clock = minutes, clock
        self.last_progress: float | None = None
        type(self).stalled_after = None  # a new (or restored) experiment has not stalled

    def __getstate__(self) -> dict:
        return {"minutes": self.minutes}  # a restored watch starts its clock afresh

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["minutes"])

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.last_progress = self.clock()
        return False  # a trial is never stopped for reporting

    def stop_all(self) -> bool:
        now = self.clock()
        if self.last_progress is None:
            self.last_progress = now
        if now - self.last_progress > self.minutes * 60:
            type(self).stalled_after = self.minutes
            return True
        return False


def check_ran_to_end(finished: int, expected: int, how_to_continue: str) -> None:
    """Raise unless ``finished`` (trials that ended, done or failed) is ``expected``.

    A stalled experiment fails with one line; otherwise an experiment that ended early was
    interrupted by the user, and ``KeyboardInterrupt`` carries that to the command's exit.
    """
    if ProgressWatch.stalled_after is not None:
        raise UcrnError(
            f"no trial reported for {ProgressWatch.stalled_after:g} minutes, so the experiment "
            f"was stopped with {finished} of {expected} trial(s) ended; see the trial logs "
            f"(--stall-minutes sets the wait), then {how_to_continue}"
        )
    if finished < expected:
        raise KeyboardInterrupt
