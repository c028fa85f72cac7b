"""One Tune trial = one ``TorchTrainer`` run of ``tuning.workers.train_worker``.

Ray 2.60's Train V2 is driven from a Tune function trainable: the function builds the
trainer, ``TuneReportCallback`` forwards each epoch's metrics (and the checkpoint's path, as
the ``checkpoint_path`` metric) to Tune. The Train run is named after the trial, so a
restarted trial (after a failure, or after ``--resume``) continues from its last checkpoint.
The search and the evaluator both build their trials here; they differ in how a trial's
config becomes ``ucrn`` overrides.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
import ray.train
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

from tuning.workers import read_checkpoint, train_worker
from ucrn.config import Config, apply_overrides
from ucrn.errors import UcrnError
from ucrn.state import TrainingState

TRIAL_CPU = 0.1  # the trial function only waits on its trainer (0 is refused by Ray)


@dataclass(frozen=True)
class Resources:
    """What each trial's Train workers get."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 2  # worker-group restarts from the last checkpoint

    @property
    def threads(self) -> int:
        return max(1, round(self.cpus_per_worker))


def resources_for(args, session) -> Resources:
    """Per-worker resources from the cluster options and what the cluster has.

    By default the CPUs are shared by the concurrent trials' workers (at most 4 each), and a
    cluster with GPUs gives a single-worker trial a quarter of one (UCRN is small) and each
    worker of a data-parallel trial a whole one (NCCL refuses two ranks on one GPU).
    """
    gpus_per_worker = args.gpus_per_worker
    if gpus_per_worker is None:
        gpus_per_worker = (0.25 if args.workers_per_trial == 1 else 1.0) if session.gpus else 0.0
    if gpus_per_worker > 0 and session.gpus == 0:
        raise UcrnError(f"--gpus-per-worker {gpus_per_worker}: the cluster has no GPU")
    cpus_per_worker = args.cpus_per_worker
    if cpus_per_worker is None:
        free = session.cpus - TRIAL_CPU * args.max_concurrent
        cpus_per_worker = min(4.0, free / (args.max_concurrent * args.workers_per_trial))
        cpus_per_worker = max(0.1, round(cpus_per_worker, 2))
    return Resources(args.workers_per_trial, cpus_per_worker, gpus_per_worker,
                     args.max_failures)


def make_trainable(
    base: Config,
    data_ref: ray.ObjectRef,
    resources: Resources,
    train_storage: str,
    overrides_of: Callable[[dict[str, Any]], dict[str, Any]],
    run_name_of: Callable[[dict[str, Any], str], str] = lambda config, trial: f"train-{trial}",
) -> Callable:
    """The Tune function trainable: trial config → ``ucrn`` overrides → one Train run.

    ``run_name_of(trial_config, trial_id)`` names the Train run; a run started again under
    the same name (and storage) continues from its last checkpoint.
    """
    holder = [data_ref]  # in a list, so that Ray passes the reference, not the data

    def run_trial(trial_config: dict[str, Any]) -> None:
        config = apply_overrides(base, overrides_of(trial_config))
        trial_id = tune.get_context().get_trial_id()
        use_gpu = resources.gpus_per_worker > 0
        per_worker = {"CPU": resources.cpus_per_worker}
        if use_gpu:
            per_worker["GPU"] = resources.gpus_per_worker
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={"config": config.to_dict(), "data": holder,
                               "threads": resources.threads},
            scaling_config=ray.train.ScalingConfig(
                num_workers=resources.workers, use_gpu=use_gpu, resources_per_worker=per_worker,
            ),
            run_config=ray.train.RunConfig(
                name=run_name_of(trial_config, trial_id), storage_path=train_storage,
                callbacks=[TuneReportCallback()],
                failure_config=ray.train.FailureConfig(max_failures=resources.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            ),
        )
        trainer.fit()

    return tune.with_resources(run_trial, {"cpu": TRIAL_CPU})


def best_checkpoint_state(metrics: dict[str, Any]) -> TrainingState:
    """The state of a trial's last checkpoint (it holds the best weights so far)."""
    path = metrics.get(CHECKPOINT_PATH_KEY)
    if not path:
        raise RuntimeError("the trial reported no checkpoint")
    return read_checkpoint(ray.train.Checkpoint(path))
