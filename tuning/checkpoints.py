"""Trial checkpoints that a killed search can always resume from.

Tune's own retention (``CheckpointConfig(num_to_keep=1)``) deletes a trial's checkpoint the
moment the trial reports a newer one, while the experiment's saved state, which ``--resume``
reads, names the newer one only from its next snapshot (written every 10 s or more, in the
background). A search killed in between resumed that trial from a checkpoint that was gone,
and the trial ended in error. So the search keeps every checkpoint in Tune
(``num_to_keep=None``) and ``CheckpointsTheSnapshotNames`` deletes a trial's checkpoint only
once the saved state names a later one of that trial.
"""

from __future__ import annotations

import json
import time

import pyarrow.fs
from ray.tune import Callback
from ray.tune.utils.serialization import TuneFunctionDecoder

SNAPSHOT_PREFIX = "experiment_state-"


def latest_snapshot(filesystem: pyarrow.fs.FileSystem, root: str) -> pyarrow.fs.FileInfo | None:
    """The experiment's newest saved state (one file per session that ran it)."""
    try:
        infos = filesystem.get_file_info(pyarrow.fs.FileSelector(root))
    except FileNotFoundError:
        return None
    snapshots = [info for info in infos if info.base_name.startswith(SNAPSHOT_PREFIX)
                 and info.base_name.endswith(".json")]
    return max(snapshots, key=lambda info: info.base_name, default=None)


def checkpoints_named_in(filesystem: pyarrow.fs.FileSystem, path: str) -> dict[str, str] | None:
    """Trial id → the checkpoint path a saved experiment state resumes that trial from;
    None while the file is being rewritten."""
    try:
        with filesystem.open_input_stream(path) as stream:
            state = json.loads(stream.readall())
    except (OSError, json.JSONDecodeError):
        return None
    named = {}
    for trial_state, run_metadata in state.get("trial_data", []):
        # The search's own experiment folder: Tune's pickled checkpoint manager is trusted.
        manager = json.loads(run_metadata, cls=TuneFunctionDecoder,
                             allow_cloudpickle=True).get("checkpoint_manager")
        latest = manager.latest_checkpoint_result if manager is not None else None
        if latest is not None and latest.checkpoint is not None:
            named[json.loads(trial_state)["trial_id"]] = latest.checkpoint.path
    return named


class CheckpointsTheSnapshotNames(Callback):
    """Deletes each trial's checkpoints that come before the one the experiment's saved
    state names: it reads the state when the file changes (looked at every ``every``
    seconds) and once more when the experiment ends, after Tune's last snapshot."""

    def __init__(self, experiment: str, every: float = 2.0, clock=time.monotonic):
        self.experiment, self.every, self.clock = experiment, every, clock
        self._held: dict[str, list] = {}  # trial id → its checkpoints, oldest first
        self._read: tuple[str, object] | None = None  # (path, mtime) of the state last read
        self._next_look = 0.0

    def __getstate__(self) -> dict:
        return {"experiment": self.experiment, "every": self.every}  # a restored one starts afresh

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["experiment"], state["every"])

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
        self._held.setdefault(trial.trial_id, []).append(checkpoint)

    def on_step_end(self, iteration, trials, **info) -> None:
        if self.clock() < self._next_look or not any(len(h) > 1 for h in self._held.values()):
            return
        self._next_look = self.clock() + self.every
        self.delete_superseded()

    def on_experiment_end(self, trials, **info) -> None:
        self.delete_superseded(sweep=True)

    def delete_superseded(self, sweep: bool = False) -> None:
        """Each trial's checkpoints before the one the saved state names: those this
        callback saw reported, and with ``sweep`` every older one in the trial's folder
        (a killed session's)."""
        filesystem, root = pyarrow.fs.FileSystem.from_uri(self.experiment)
        snapshot = latest_snapshot(filesystem, root)
        if snapshot is None or (self._read == (snapshot.path, snapshot.mtime) and not sweep):
            return
        named = checkpoints_named_in(filesystem, snapshot.path)
        if named is None:
            return  # read again on the next look
        self._read = (snapshot.path, snapshot.mtime)
        for trial_id, path in named.items():
            held = self._held.get(trial_id, [])
            paths = [checkpoint.path for checkpoint in held]
            older = paths[:paths.index(path)] if path in paths else []  # else all newer
            self._held[trial_id] = held[len(older):]
            for old in (_older_in_folder(filesystem, path) if sweep else older):
                _delete(filesystem, old)


def _older_in_folder(filesystem: pyarrow.fs.FileSystem, named: str) -> list[str]:
    """The checkpoints in ``named``'s trial folder that come before it (Tune numbers them
    checkpoint_000000, checkpoint_000001, …)."""
    folder, name = named.rsplit("/", 1)
    entries = filesystem.get_file_info(pyarrow.fs.FileSelector(folder))
    return [entry.path for entry in entries if entry.type == pyarrow.fs.FileType.Directory
            and entry.base_name.startswith("checkpoint_") and entry.base_name < name]


def _delete(filesystem: pyarrow.fs.FileSystem, path: str) -> None:
    try:
        filesystem.delete_dir(path)
    except FileNotFoundError:
        pass
