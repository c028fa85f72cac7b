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

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
import ray.train
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY, TuneReportCallback

from tuning.capacity import Capacity, NodeWait, WaitForNodes, cluster_capacity
from tuning.progress import Interruption, ProgressWatch, TrialUserErrors, check_ran_to_end
from tuning.rendezvous import LoopbackTorchConfig
from tuning.workers import read_checkpoint, train_in_trial, train_stack_in_trial, train_worker
from ucrn.config import Config, apply_overrides
from ucrn.errors import UcrnError
from ucrn.footprint import gib, packing_problem, training_device_bytes
from ucrn.model import UCRN, count_parameters
from ucrn.state import TrainingState

TRIAL_CPU = 0.1  # the trial function only waits on its trainer (0 is refused by Ray)


@dataclass(frozen=True)
class Resources:
    """What each trial's Train workers get, and how many trials run at once."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_failures: int = 2  # worker-group restarts from the last checkpoint
    concurrent: int = 2  # trials at once

    @property
    def threads(self) -> int:
        return max(1, round(self.cpus_per_worker))

    @property
    def reuse_processes(self) -> bool:
        """Whether a trial's process trains the next trial too (Tune's ``reuse_actors``): a
        single-worker trial trains in it, so each later trial skips the start of a process,
        its imports and its first-call costs (about 4 s of CPU time a trial here, more for a
        CUDA context); a data-parallel trial only starts its worker group there."""
        return self.workers == 1

    @property
    def trials_per_gpu(self) -> int:
        """Trials that share one GPU (1 for data-parallel workers, which take whole GPUs)."""
        if self.gpus_per_worker <= 0:
            return 0
        return max(1, math.floor(1.0 / self.gpus_per_worker + 1e-9))


DEFAULT_CONCURRENT_ON_CPUS = 2


def resources_for(args, capacity: Capacity) -> Resources:
    """Per-worker resources and concurrency from the cluster options and what the cluster
    has or its autoscaler can add (``tuning.capacity``).

    With GPUs (up, or reachable through the autoscaler), a single-worker trial gets a
    quarter of one by default (UCRN is small) and each worker of a data-parallel trial a
    whole one (NCCL refuses two ranks on one GPU); as many trials run at once as the GPUs
    reachable hold, and each worker gets its share of its GPU node's CPUs (at most 4).
    Without GPUs, the CPUs up now are shared by the concurrent trials' workers.
    """
    workers = args.workers_per_trial
    reachable = capacity.reachable_gpus()
    gpus_per_worker = args.gpus_per_worker
    if gpus_per_worker is None:
        gpus_per_worker = (0.25 if workers == 1 else 1.0) if reachable else 0.0
    if gpus_per_worker > 0 and reachable == 0:
        raise UcrnError(
            f"--gpus-per-worker {gpus_per_worker:g}: the cluster has no GPU and no autoscaler "
            "node type with GPUs that could add one; leave the option out to train on CPUs, "
            "or join a cluster whose config has GPU nodes (cluster.yaml)")
    if gpus_per_worker * workers > reachable:
        raise UcrnError(
            f"--gpus-per-worker {gpus_per_worker:g} × {workers} worker(s): the cluster can have "
            f"{reachable:g} GPUs at most, so no trial could ever start; ask for less")
    concurrent = args.max_concurrent
    if concurrent is None:
        concurrent = (max(1, math.floor(reachable / (gpus_per_worker * workers) + 1e-9))
                      if gpus_per_worker > 0 else DEFAULT_CONCURRENT_ON_CPUS)
    cpus_per_worker = args.cpus_per_worker
    waiting = TRIAL_CPU if workers > 1 else 0.0  # a data-parallel trial's own process
    if gpus_per_worker > 0:  # workers run on GPU nodes: their CPUs count, not the head's
        hosts = capacity.gpu_hosts() or [(capacity.cpus, reachable)]
        if cpus_per_worker is None:  # the smallest GPU node's CPUs, shared by its workers
            share = min(cpus / max(1, math.floor(gpus / gpus_per_worker + 1e-9))
                        for cpus, gpus in hosts)
            cpus_per_worker = max(0.1, math.floor(min(4.0, share - waiting) * 100) / 100)
        room, where = max(cpus for cpus, _ in hosts), "a GPU node has"
    else:
        if cpus_per_worker is None:
            free = capacity.cpus - waiting * concurrent
            cpus_per_worker = max(0.1, round(min(4.0, free / (concurrent * workers)), 2))
        room, where = capacity.cpus / workers, "the cluster has"
    if cpus_per_worker > room:
        raise UcrnError(
            f"--cpus-per-worker {cpus_per_worker:g} × {workers} worker(s): {where} "
            f"{room * (workers if gpus_per_worker == 0 else 1):g} CPUs, so no trial could "
            "ever start; ask for less")
    return Resources(workers, cpus_per_worker, gpus_per_worker, args.max_failures, concurrent)


def make_trainable(
    base: Config,
    data_ref: ray.ObjectRef,
    resources: Resources,
    train_storage: str,
    overrides_of: Callable[[dict[str, Any]], dict[str, Any]],
    run_name_of: Callable[[dict[str, Any], str], str] = lambda config, trial: f"train-{trial}",
    final_scoring_of: Callable[[dict[str, Any]], dict[str, Any] | None] = lambda config: None,
    stack_of: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
) -> Callable:
    """The Tune function trainable: trial config → ``ucrn`` overrides → one Train run.

    ``run_name_of(trial_config, trial_id)`` names the Train run; a run started again under
    the same name (and storage) continues from its last checkpoint.
    ``final_scoring_of(trial_config)``: how the trial scores its selected model on test at
    its end (``ucrn.robustness.scored_run``'s options), or None.
    ``stack_of(trial_config)``: the runs of a trial that trains several as one stacked
    computation (each a trial config of one run), or one for a plain trial.
    """
    data_refs = [data_ref]  # in a list: Ray then passes the reference, not the data
    where = {"data": data_refs, "threads": resources.threads,
             "use_gpu": resources.gpus_per_worker > 0, "gpu_share": resources.gpus_per_worker}

    def run_trial(trial_config: dict[str, Any]) -> None:
        runs = stack_of(trial_config) if stack_of is not None else [trial_config]
        if len(runs) > 1:
            train_stack_in_trial({
                **where, "final_scorings": [final_scoring_of(run) for run in runs],
                "configs": [apply_overrides(base, overrides_of(run)).to_dict() for run in runs]})
            return
        trial_config = runs[0]
        loop_config = {**where, "final_scoring": final_scoring_of(trial_config),
                       "config": apply_overrides(base, overrides_of(trial_config)).to_dict()}
        if resources.workers == 1:
            train_in_trial(loop_config)
            return
        name = run_name_of(trial_config, tune.get_context().get_trial_id())
        _train_data_parallel(loop_config, resources, name, train_storage)

    if resources.workers == 1:  # the trial is the worker
        return tune.with_resources(run_trial, {"cpu": resources.cpus_per_worker,
                                               "gpu": resources.gpus_per_worker})
    return tune.with_resources(run_trial, {"cpu": TRIAL_CPU})


def _train_data_parallel(loop_config: dict[str, Any], resources: Resources, name: str,
                         storage: str) -> None:
    """A trial's run as a Ray Train worker group (DDP), named ``name`` in ``storage``: a
    run started again under the same name continues from its last checkpoint."""
    per_worker = {"CPU": resources.cpus_per_worker}
    if loop_config["use_gpu"]:
        per_worker["GPU"] = resources.gpus_per_worker
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=loop_config,
        torch_config=LoopbackTorchConfig(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.workers, use_gpu=loop_config["use_gpu"],
            resources_per_worker=per_worker,
        ),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage,
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=resources.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
    )
    trainer.fit()


def trial_state(metrics: dict[str, Any], checkpoint: Any) -> TrainingState:
    """The state in a trial's last checkpoint (it holds the best weights so far): Tune's own
    (a single-worker trial), or the one its Train run reported as ``checkpoint_path``."""
    if checkpoint is not None:
        return read_checkpoint(checkpoint)
    path = metrics.get(CHECKPOINT_PATH_KEY)
    if not path:
        raise RuntimeError("the trial reported no checkpoint")
    return read_checkpoint(ray.train.Checkpoint(path))


def plan_trials(args, session, config: Config, dataset, say: Callable[[str], None]) -> tuple[
        Resources, list]:
    """The trials' resources on the joined cluster, checked and said in one line; and the
    Tune callbacks that watch the cluster while trials wait for GPU nodes to come up.

    Before any trial: the bytes one trial keeps on its GPU (``ucrn.footprint``) times the
    trials packed on a GPU, against the GPU node types' memory where their accelerator is
    known (each trial checks its own GPU again with torch).
    """
    capacity = cluster_capacity(autoscaled=not session.started_here)
    resources = resources_for(args, capacity)
    now = f"Ray: {capacity.cpus:g} CPUs, {capacity.gpus:g} GPUs up"
    if capacity.autoscaling:
        now += f"; the autoscaler can add {capacity.describe_autoscaling()}"
    say(f"{now} · dashboard {session.dashboard_url or '—'}")
    callbacks = []
    if resources.gpus_per_worker > 0:
        need = training_device_bytes(config, dataset, count_parameters(UCRN(config.model)))
        check_packing(need, resources.trials_per_gpu, capacity.gpu_memory_gib())
        say(f"each trial keeps about {gib(need)} on its GPU (data, model, activations, CUDA "
            f"context); {resources.trials_per_gpu} share a GPU")
        wanted = resources.gpus_per_worker * resources.workers
        if capacity.gpus < wanted:
            callbacks.append(WaitForNodes(NodeWait(wanted, say)))
    return resources, callbacks


def check_packing(need_bytes: int, trials_per_gpu: int, gpu_memory_gib: float | None) -> None:
    """Refuse, in one line, ``trials_per_gpu`` trials of ``need_bytes`` each on the cluster's
    GPUs of ``gpu_memory_gib`` (unknown: each trial checks its own GPU when it starts)."""
    if gpu_memory_gib is not None:
        problem = packing_problem(need_bytes, trials_per_gpu, int(gpu_memory_gib * 2**30))
        if problem:
            raise UcrnError(f"the cluster's GPUs: {problem}")


def stacked_seeds(runs: list[dict[str, Any]], by: str, stack: int) -> list[dict[str, Any]]:
    """Runs of one seed each (``"seed"``) as trials of up to ``stack`` seeds (``"seeds"``)
    that agree in ``by`` (one architecture), in the order the runs come."""
    trials: list[dict[str, Any]] = []
    for run in runs:
        same = next((t for t in trials if t[by] == run[by] and len(t["seeds"]) < stack), None)
        if same is None:
            trials.append({**{k: v for k, v in run.items() if k != "seed"},
                           "seeds": [run["seed"]]})
        else:
            same["seeds"].append(run["seed"])
    return trials


def run_grid(trainable: Callable, key: str, runs: list[dict[str, Any]], *, name: str,
             storage: str, resources: Resources, args, callbacks: list,
             how_to_continue: str) -> None:
    """``runs`` as one Tune experiment, a trial each (its config ``{key: run}``), with no
    early stopping; a stall, a user's error in a trial and Ctrl-C end it as everywhere
    (``tuning.progress``). The evaluator's runs and the search's finalist reruns."""
    tuner = tune.Tuner(
        trainable,
        param_space={key: tune.grid_search(runs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=resources.concurrent,
                                    reuse_actors=resources.reuse_processes),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, verbose=0,
            callbacks=[*callbacks, TrialUserErrors()], stop=ProgressWatch(args.stall_minutes),
            failure_config=tune.FailureConfig(max_failures=args.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    with Interruption.experiment():
        grid = tuner.fit()
    check_ran_to_end(grid.num_terminated + grid.num_errors, len(runs), how_to_continue)
