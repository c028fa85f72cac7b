"""A trial's checkpoints are deleted only once the experiment's saved state names a later one."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs
from ray.train import CheckpointConfig
from ray.train._internal.checkpoint_manager import _CheckpointManager
from ray.train._internal.session import _TrainingResult
from ray.tune import Checkpoint
from ray.tune.trainable.metadata import _TrainingRunMetadata

from tuning.checkpoints import CheckpointsTheSnapshotNames, checkpoints_named_in


def _checkpoints(trial_folder: Path, count: int) -> list[Checkpoint]:
    made = []
    for index in range(count):
        folder = trial_folder / f"checkpoint_{index:06d}"
        folder.mkdir(parents=True)
        (folder / "state.pt").write_bytes(b"x")
        made.append(Checkpoint.from_directory(str(folder)))
    return made


def _save_state(experiment: Path, named: dict[str, Checkpoint], stamp: str) -> None:
    """An experiment state as Tune writes it: each trial's run metadata carries its pickled
    checkpoint manager, whose latest checkpoint is the one a resumed trial starts from."""
    trial_data = []
    for trial_id, checkpoint in named.items():
        metadata = _TrainingRunMetadata()
        metadata.checkpoint_manager = _CheckpointManager(CheckpointConfig(num_to_keep=None))
        metadata.checkpoint_manager.register_checkpoint(_TrainingResult(checkpoint, {}))
        trial_data.append([json.dumps({"trial_id": trial_id}), metadata.get_json_state()])
    (experiment / f"experiment_state-{stamp}.json").write_text(
        json.dumps({"trial_data": trial_data}))


def test_checkpoints_the_saved_state_may_resume_from_are_kept(tmp_path):
    a, b = _checkpoints(tmp_path / "trial_a", 3), _checkpoints(tmp_path / "trial_b", 2)
    kept = CheckpointsTheSnapshotNames(str(tmp_path), every=0.0)
    for trial_id, checkpoints in (("a", a), ("b", b)):
        for checkpoint in checkpoints:
            kept.on_checkpoint(0, [], SimpleNamespace(trial_id=trial_id), checkpoint)
    kept.on_step_end(0, [])
    assert all(Path(c.path).exists() for c in a + b)  # no saved state yet: nothing goes

    _save_state(tmp_path, {"a": a[1], "b": b[0]}, "2026-12-03_10-00-00")
    saved = tmp_path / "experiment_state-2026-12-03_10-00-00.json"
    named = checkpoints_named_in(*pyarrow.fs.FileSystem.from_uri(str(saved)))
    assert named == {"a": a[1].path, "b": b[0].path}
    kept.on_step_end(0, [])
    assert [Path(c.path).exists() for c in a] == [False, True, True]
    assert [Path(c.path).exists() for c in b] == [True, True]

    left_by_a_killed_session = _checkpoints(tmp_path / "trial_c", 3)
    _save_state(tmp_path, {"a": a[2], "b": b[1], "c": left_by_a_killed_session[1]},
                "2026-12-03_10-00-30")  # a later session's, the last one Tune saved
    kept.on_experiment_end([])
    assert [Path(c.path).exists() for c in a] == [False, False, True]
    assert [Path(c.path).exists() for c in b] == [False, True]
    assert [Path(c.path).exists() for c in left_by_a_killed_session] == [False, True, True]


def test_a_half_written_state_deletes_nothing_and_a_restored_callback_starts_afresh(tmp_path):
    a = _checkpoints(tmp_path / "trial_a", 2)
    kept = CheckpointsTheSnapshotNames(str(tmp_path), every=0.0)
    for checkpoint in a:
        kept.on_checkpoint(0, [], SimpleNamespace(trial_id="a"), checkpoint)
    (tmp_path / "experiment_state-2026-12-03_10-00-00.json").write_text('{"trial_data": [[')
    kept.on_step_end(0, [])
    assert all(Path(c.path).exists() for c in a)
    _save_state(tmp_path, {"a": a[1]}, "2026-12-03_10-00-00")  # the same file, now whole
    kept.on_step_end(0, [])
    assert [Path(c.path).exists() for c in a] == [False, True]

    restored = pickle.loads(pickle.dumps(kept))
    assert restored.experiment == str(tmp_path) and restored._held == {}
