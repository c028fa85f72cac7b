"""Whether a Tune experiment is still getting somewhere, and whether it ran to its end.

Tune returns from ``fit()`` in three ways that look alike: every trial ran, the user pressed
Ctrl-C (Tune catches it, saves its state and returns), or the ``ProgressWatch`` below stopped
an experiment whose trials had stopped reporting. Only the first may score the test split
or write a report; ``check_ran_to_end`` tells them apart.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import ClassVar

from ray.tune import Callback, Stopper

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
        if TrialUserErrors.message is not None:
            return True
        now = self.clock()
        if self.last_progress is None:
            self.last_progress = now
        if now - self.last_progress > self.minutes * 60:
            type(self).stalled_after = self.minutes
            return True
        return False


class Interruption:
    """Ctrl-C (SIGINT) with one outcome whatever the moment it comes: the command exits 130,
    nothing is scored on test, what ran is on record and ``--resume`` goes on.

    Tune's own SIGINT handler is off (``TUNE_DISABLE_SIGINT_HANDLER``): it let ``fit()``
    return as if the experiment had finished. This handler, installed for the whole command,
    remembers the request; inside the experiment it hands it to Tune's interruption path
    (SIGUSR1, which saves the experiment's state with the running trials resumable), outside
    it raises ``KeyboardInterrupt`` at once. A second Ctrl-C always raises.
    """

    requested: ClassVar[bool] = False
    in_experiment: ClassVar[bool] = False
    running: ClassVar[set[str]] = set()  # the trials running now (``InterruptionRecord``)

    @classmethod
    @contextlib.contextmanager
    def handled(cls):
        """Around a command's whole run (the main thread only)."""
        cls.requested, cls.in_experiment, cls.running = False, False, set()
        previous = signal.signal(signal.SIGINT, cls._on_signal)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    @classmethod
    def _on_signal(cls, signum, frame) -> None:
        again = cls.requested
        cls.requested = True
        if not cls.in_experiment or again:
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGUSR1)  # Tune's interruption: state saved, resumable

    @classmethod
    @contextlib.contextmanager
    def experiment(cls):
        """Around ``Tuner.fit``."""
        if cls.requested:
            raise KeyboardInterrupt
        cls.in_experiment = True
        try:
            yield
        finally:
            cls.in_experiment = False


    @classmethod
    def interrupted(cls, trial_id: str) -> bool:
        """Whether Ctrl-C stopped this trial while it ran."""
        return cls.requested and trial_id in cls.running


class InterruptionRecord(Callback):
    """Keeps ``Interruption.running``: the trials that were running when Ctrl-C came were
    interrupted, whatever status Tune gives them as it stops them."""

    def __getstate__(self) -> dict:
        return {}

    def on_trial_start(self, iteration, trials, trial, **info):
        if not Interruption.requested:
            Interruption.running.add(trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not Interruption.requested:
            Interruption.running.discard(trial.trial_id)

    on_trial_error = on_trial_complete


def check_ran_to_end(finished: int, expected: int, how_to_continue: str) -> None:
    """Raise unless ``finished`` (trials that ended, done or failed) is ``expected``.

    A stalled experiment fails with one line; otherwise an experiment that ended early was
    interrupted by the user, and ``KeyboardInterrupt`` carries that to the command's exit —
    as does a Ctrl-C whatever Tune made of it.
    """
    if Interruption.requested:
        raise KeyboardInterrupt
    if TrialUserErrors.message is not None:
        raise UcrnError(TrialUserErrors.message)
    if ProgressWatch.stalled_after is not None:
        raise UcrnError(
            f"no trial reported for {ProgressWatch.stalled_after:g} minutes, so the experiment "
            f"was stopped with {finished} of {expected} trial(s) ended; see the trial logs "
            f"(--stall-minutes sets the wait), then {how_to_continue}"
        )
    if finished < expected:
        raise KeyboardInterrupt


def user_error_in(error: BaseException | None) -> str | None:
    """The message of the ``UcrnError`` a trial raised, from the error Tune kept for it
    (Ray wraps it in a ``RayTaskError`` whose ``cause`` is the original)."""
    for _ in range(5):
        if error is None:
            return None
        cause = getattr(error, "cause", None)
        if isinstance(cause, BaseException):
            error = cause
            continue
        if isinstance(error, UcrnError):
            return str(error).strip().splitlines()[0] if str(error).strip() else None
        error = error.__cause__
    return None


class TrialUserErrors(Callback):
    """Ends the experiment at the first trial that fails with a ``UcrnError`` — a mistake
    or a node that cannot run trials (a GPU torch cannot use, too little GPU memory): every
    retry and every other trial would fail alike. ``check_ran_to_end`` then raises it as the
    command's one line. The message is kept on the class, as ``ProgressWatch`` keeps its."""

    message: ClassVar[str | None] = None

    def __init__(self):
        type(self).message = None

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        pass  # a copy made while the experiment runs keeps the verdict; a new process has none

    def _seen(self, trial) -> None:
        if type(self).message is None:
            type(self).message = user_error_in(_trial_error(trial))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._seen(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._seen(trial)


def _trial_error(trial) -> BaseException | None:
    """The error a trial just failed with: Tune pickles it into the trial's local folder
    before it calls the callbacks, and copies it to the experiment's storage later."""
    from ray import cloudpickle

    try:
        path = trial.pickled_error_file
        if path and Path(path).is_file():
            with open(path, "rb") as file:
                return cloudpickle.load(file)
        return trial.get_pickled_error()
    except Exception:  # noqa: BLE001 - an error that does not unpickle here
        return None
