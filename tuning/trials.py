"""One Tune trial: the training loop of ``tuning.workers``, alone or data-parallel.

A single-worker trial (the default) trains in the Tune trial's own process
(``train_in_trial``), reporting and checkpointing through Ray Tune: no worker group to start
and no process group, so no port is opened and a trial costs one process. A trial of
``--workers-per-trial`` ≥ 2 builds a Ray Train V2 ``TorchTrainer`` (driven from the Tune
function trainable, as Ray 2.60 requires) whose workers run ``train_worker`` with DDP;
``TuneReportCallback`` forwards each epoch's metrics and the checkpoint's path (the
``checkpoint_path`` metric) to Tune, and the Train run is named after the trial so that a
restarted trial continues from its last checkpoint. The search and the evaluator both build
their trials here; they differ in how a trial's config becomes ``ucrn`` overrides.
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

from tuning.rendezvous import LoopbackTorchConfig
from tuning.workers import read_checkpoint, train_in_trial, train_worker
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
        waiting = TRIAL_CPU if args.workers_per_trial > 1 else 0.0  # the trial's own process
        free = session.cpus - waiting * args.max_concurrent
        cpus_per_worker = min(4.0, free / (args.max_concurrent * args.workers_per_trial))
        cpus_per_worker = max(0.1, round(cpus_per_worker, 2))
    for kind, per_worker, total in (("cpus", cpus_per_worker, session.cpus),
                                    ("gpus", gpus_per_worker, session.gpus)):
        if per_worker * args.workers_per_trial > total:
            raise UcrnError(
                f"--{kind}-per-worker {per_worker:g} × {args.workers_per_trial} worker(s): the "
                f"cluster has {total:g} {kind.upper()[:-1]}s in all, so no trial could ever "
                "start; ask for less"
            )
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
    data_refs = [data_ref]  # in a list: Ray then passes the reference, not the data

    def run_trial(trial_config: dict[str, Any]) -> None:
        config = apply_overrides(base, overrides_of(trial_config))
        use_gpu = resources.gpus_per_worker > 0
        loop_config = {"config": config.to_dict(), "data": data_refs,
                       "threads": resources.threads, "use_gpu": use_gpu}
        if resources.workers == 1:
            train_in_trial(loop_config)
            return
        trial_id = tune.get_context().get_trial_id()
        per_worker = {"CPU": resources.cpus_per_worker}
        if use_gpu:
            per_worker["GPU"] = resources.gpus_per_worker
        trainer = TorchTrainer(
            train_worker,
            train_loop_config=loop_config,
            torch_config=LoopbackTorchConfig(),
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

    if resources.workers == 1:  # the trial is the worker
        return tune.with_resources(run_trial, {"cpu": resources.cpus_per_worker,
                                               "gpu": resources.gpus_per_worker})
    return tune.with_resources(run_trial, {"cpu": TRIAL_CPU})


def trial_state(metrics: dict[str, Any], checkpoint: Any) -> TrainingState:
    """The state in a trial's last checkpoint (it holds the best weights so far): Tune's own
    (a single-worker trial), or the one its Train run reported as ``checkpoint_path``."""
    if checkpoint is not None:
        return read_checkpoint(checkpoint)
    path = metrics.get(CHECKPOINT_PATH_KEY)
    if not path:
        raise RuntimeError("the trial reported no checkpoint")
    return read_checkpoint(ray.train.Checkpoint(path))
