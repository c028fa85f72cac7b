"""Early stopping that judges every trial against the same field: successive halving whose
rungs are looked at again as later trials reach them.

Ray's ASHA decides once, when a trial reaches a rung, against the trials already there: the
first trial to reach a rung has no rival and always goes on, so with two trials at once the
search's first trial gets the most epochs whatever it is worth. Here a trial stays in the
search only while it is among the best ⌈n / reduction factor⌉ of the n trials recorded at
every rung it passed, the later ones included; a trial that a later arrival pushes out of
that share stops at its next epoch. An early trial thus keeps going until it has rivals,
then is held to the same rule as they are; no trial waits (nothing is paused).

One trial may be the yardstick: the paper's, against which ``best.json`` is judged
(``tuning.finalists``). It counts at every rung but is never stopped, so the finalists
compare with it at the search's whole trial length. The finalists' reruns
(``tuning.space.is_rerun``) are not part of the field: they run their whole length and count
at no rung.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tuning.space import at_point, is_rerun
from ucrn.metrics import is_better


class FairHalving(FIFOScheduler):
    """Successive halving on ``metric`` at rungs ``grace_period`` × ``reduction_factor``^k
    epochs (below ``max_t``), every rung judged again as each trial reaches it."""

    def __init__(self, metric: str, max_t: int, grace_period: int, reduction_factor: int = 2,
                 yardstick: dict | None = None):
        super().__init__()
        self.yardstick = yardstick  # the settings of the trial that runs every epoch
        if not 1 <= grace_period <= max_t or reduction_factor < 2:
            raise ValueError("need 1 ≤ grace_period ≤ max_t and reduction_factor ≥ 2")
        self._metric, self.reduction_factor = metric, reduction_factor
        self.rungs: dict[int, dict[str, float]] = {}  # epoch → trial id → value there
        epoch = grace_period
        while epoch < max_t:
            self.rungs[epoch] = {}
            epoch *= reduction_factor

    def on_trial_add(self, tune_controller, trial) -> None:
        """A trial restored by ``--resume`` brings back the rungs it had reached."""
        if is_rerun(getattr(trial, "config", None)):
            return
        for result in _reported(trial):
            self._record(trial.trial_id, result)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        config = getattr(trial, "config", None)
        if is_rerun(config):
            return TrialScheduler.CONTINUE
        self._record(trial.trial_id, result)
        if at_point(config, self.yardstick) or not self.outranked(trial.trial_id):
            return TrialScheduler.CONTINUE
        return TrialScheduler.STOP

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if result and not is_rerun(getattr(trial, "config", None)):
            self._record(trial.trial_id, result)

    def _record(self, trial_id: str, result: dict) -> None:
        epoch, value = result.get("epoch"), result.get(self._metric)
        if epoch in self.rungs and value is not None:
            self.rungs[epoch][trial_id] = float(value)

    def outranked(self, trial_id: str) -> bool:
        """Whether the trial is outside the kept share of some rung it reached."""
        for recorded in self.rungs.values():
            if trial_id not in recorded:
                continue
            mine = recorded[trial_id]
            better = sum(is_better(self._metric, value, mine) for value in recorded.values())
            if better >= math.ceil(len(recorded) / self.reduction_factor):
                return True
        return False

    def debug_string(self) -> str:
        return "FairHalving: " + ", ".join(f"epoch {epoch}: {len(recorded)} trial(s)"
                                           for epoch, recorded in self.rungs.items())


def _reported(trial) -> list[dict]:
    """The results a trial reported before (its ``result.json`` in the experiment's storage);
    none for a new trial."""
    if not getattr(trial, "has_reported_at_least_once", False):
        return []
    storage = trial.storage
    path = Path(storage.trial_fs_path, "result.json").as_posix()
    try:
        with storage.storage_filesystem.open_input_stream(path) as stream:
            text = stream.read().decode()
    except (FileNotFoundError, OSError):
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]
