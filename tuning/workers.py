"""The trial's training loop: ``ucrn.engine.fit`` with checkpoints, alone or data-parallel.

A single-worker trial trains in the Tune trial's own process (``train_in_trial``). A
data-parallel trial runs a Ray Train worker group (``train_worker``): every worker trains
on its shard of each epoch's batches (DDP: gloo on CPU, nccl on GPU), scores the whole
validation split and reports each epoch. Either way rank 0 attaches the resumable
checkpoint, and a restarted trial continues from the last one. A trial of several runs of
one architecture (the evaluator's ``--stack-seeds``) trains them as one stacked computation
in its own process (``train_stack_in_trial``, ``ucrn.stack``).
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import ray.tune
import torch

from ucrn.config import config_from_dict
from ucrn.engine import EpochResult, fit
from ucrn.errors import UcrnError
from ucrn.footprint import training_device_bytes
from ucrn.gpu import check_fits_gpu, check_gpu_usable
from ucrn.model import UCRN, count_parameters
from ucrn.robustness import scored_run
from ucrn.stack import ModelStack, fit_stack
from ucrn.state import TrainingState

CHECKPOINT_FILE = "state.pt"


def epoch_metrics(result: EpochResult) -> dict[str, Any]:
    """What a trial reports each epoch: validation metrics (``valid_*``) and losses."""
    return {
        "epoch": result.epoch, "train_loss": result.train_loss,
        "train_task_loss": result.train_task_loss, "train_js": result.train_js,
        **{f"valid_{key}": value for key, value in result.valid.items()},
        "best_epoch": result.best_epoch, "epoch_seconds": result.seconds,
    }


def read_checkpoint(checkpoint: ray.train.Checkpoint | ray.tune.Checkpoint) -> TrainingState:
    """The engine's resumable state from a checkpoint written by ``run_loop``."""
    with checkpoint.as_directory() as folder:
        saved = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    return TrainingState.from_dict(saved)


@dataclass(frozen=True)
class Reporting:
    """Where a loop reports: Ray Train (a worker of a data-parallel group) or Ray Tune (a
    single-worker trial training in its own process). Their APIs match, their classes not."""

    report: Callable[..., None]
    checkpoint_class: type
    previous: Any  # the checkpoint to resume from, or None


def train_worker(loop_config: dict[str, Any]) -> None:
    """The function every Ray Train worker of a data-parallel trial runs."""
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    config = config_from_dict(loop_config["config"])

    def wrap(model: torch.nn.Module) -> torch.nn.Module:
        # Modality dropout leaves a dropped modality's URM without gradients in that step.
        unused = {"find_unused_parameters": config.train.modality_dropout > 0}
        return ray.train.torch.prepare_model(  # DDP
            model, move_to_device=False, parallel_strategy_kwargs=unused)

    reporting = Reporting(ray.train.report, ray.train.Checkpoint, ray.train.get_checkpoint())
    run_loop(loop_config, reporting, ray.train.torch.get_device(), rank, world_size,
             wrap if world_size > 1 else None)


def train_in_trial(loop_config: dict[str, Any]) -> None:
    """A single-worker trial trains in the Tune trial's own process: no worker group to
    start, no process group, no port opened."""
    device = torch.device("cuda" if loop_config["use_gpu"] else "cpu")
    reporting = Reporting(ray.tune.report, ray.tune.Checkpoint, ray.tune.get_checkpoint())
    run_loop(loop_config, reporting, device)


def check_device(loop_config: dict[str, Any], config, dataset, device: torch.device,
                 where: str) -> None:
    """On a GPU: one line, raised in the trial, when torch cannot use it or when the trials
    packed on it (1 / its GPU share) cannot fit its memory."""
    if device.type != "cuda":
        return
    check_gpu_usable(where)
    need = training_device_bytes(config, dataset, count_parameters(UCRN(config.model)))
    share = loop_config.get("gpu_share") or 1.0
    check_fits_gpu(need, max(1, math.floor(1.0 / share + 1e-9)), where, device)


_DATA: dict[str, Any] = {}  # the data of this process's last trial, by its object's id


def _shared_data(reference: ray.ObjectRef) -> Any:
    """The data behind ``reference``, fetched once by a process that trains one trial after
    another (Tune's reused trial processes): its later trials then also reuse what was
    worked out from the same tensors (``ucrn.data.batches.feature_moments``)."""
    key = reference.hex()
    if key not in _DATA:
        _DATA.clear()  # one data set at a time
        _DATA[key] = ray.get(reference)
    return _DATA[key]


def _set_up(loop_config: dict[str, Any], config, device: torch.device) -> tuple[Any, str]:
    """A trial's threads, its data and its node, with its device checked: (data, node id)."""
    torch.set_num_threads(loop_config["threads"])
    dataset = _shared_data(loop_config["data"][0])
    node_id = ray.get_runtime_context().get_node_id()
    check_device(loop_config, config, dataset, device,
                 f"node {ray.util.get_node_ip_address()} (id {node_id})")
    return dataset, node_id


def run_loop(
    loop_config: dict[str, Any], reporting: Reporting, device: torch.device, rank: int = 0,
    world_size: int = 1, wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
) -> None:
    """``ucrn.engine.fit`` on this rank's share, reporting every epoch; rank 0 attaches the
    resumable checkpoint. A restarted run continues from its last checkpoint. With
    ``final_scoring`` (the evaluator's runs), the selected model is then scored on test
    under the robustness conditions here, on the trial's device, and reported once more as
    ``run_record``: the driver only collects it."""
    config = config_from_dict(loop_config["config"])
    dataset, node_id = _set_up(loop_config, config, device)
    resume = read_checkpoint(reporting.previous) if reporting.previous else None
    reported = []

    def report(metrics: dict[str, Any], state: Callable[[], TrainingState]) -> None:
        reported.append(metrics["epoch"])
        if rank != 0:
            reporting.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state().to_dict(), Path(folder) / CHECKPOINT_FILE)
            reporting.report(metrics,
                             checkpoint=reporting.checkpoint_class.from_directory(folder))

    def on_epoch(result: EpochResult, checkpoint: Callable[[], TrainingState]) -> None:
        report({**epoch_metrics(result), "node_id": node_id}, checkpoint)

    result = fit(config, dataset, device=device, score_test=False, on_epoch=on_epoch,
                 resume=resume, rank=rank, world_size=world_size, wrap_model=wrap)
    last = {**result.history[-1], "best_epoch": result.best_epoch, "epoch_seconds": 0.0,
            "node_id": node_id} if result.history else None
    if resume is not None and not reported:
        # Restarted after its last epoch (e.g. a rerun of a finished run): nothing was
        # trained, so report the final state again for whoever waits on it.
        report(last, lambda: resume)
    scoring = loop_config.get("final_scoring")
    if scoring is not None and last is not None:
        record = scored_run(result, dataset, device=device, **scoring) if rank == 0 else None
        reporting.report({**last, "run_record": json.dumps(record) if record else ""})


def train_stack_in_trial(loop_config: dict[str, Any]) -> None:
    """A trial that trains several runs of one architecture as one stacked computation
    (``ucrn.stack``) in its own process, reporting every epoch; at its end each run's
    selected model is scored as ``run_loop`` scores one (``final_scorings``, in order; None:
    its validation scores alone) and the records are reported as ``run_records`` (a JSON
    list; ``{"error": …}`` for a run whose loss turned non-finite). It keeps no
    checkpoint: an interrupted stack trains again whole."""
    configs = [config_from_dict(config) for config in loop_config["configs"]]
    device = torch.device("cuda" if loop_config["use_gpu"] else "cpu")
    dataset, node_id = _set_up(loop_config, configs[0], device)

    means: dict[str, float] = {}  # the last epoch's, which the final report repeats

    def on_epoch(stack: ModelStack) -> None:
        means.update(stack_means(stack))
        ray.tune.report({"epoch": stack.epoch, "models_training": len(stack.active),
                         "node_id": node_id, **means})

    results = fit_stack(configs, dataset, device=device, score_test=False, on_epoch=on_epoch)
    records = [json.dumps(_stacked_record(result, scoring, dataset, device))
               for result, scoring in zip(results, loop_config["final_scorings"], strict=True)]
    epochs = max((r.epochs_run for r in results if not isinstance(r, UcrnError)), default=0)
    ray.tune.report({"epoch": epochs, "models_training": 0, "node_id": node_id,
                     "run_records": json.dumps(records), **means})


def stack_means(stack: ModelStack) -> dict[str, float]:
    """Each validation metric's mean over the stack's runs that trained this epoch: what a
    stacked trial reports each epoch, as a one-run trial reports its own (a search's
    scheduler and searcher expect their metric in every result)."""
    latest = [member.state.history[-1] for member in stack.members
              if member.error is None and member.state.history
              and member.state.history[-1]["epoch"] == stack.epoch]
    names = [key for key in (latest[0] if latest else {}) if key.startswith("valid_")]
    return {name: statistics.fmean(epoch[name] for epoch in latest) for name in names}


def _stacked_record(result, scoring: dict[str, Any] | None, dataset, device) -> dict:
    """What a stacked trial reports of one of its runs."""
    if isinstance(result, UcrnError):
        return {"error": str(result)}
    if scoring is None:  # a search's rerun: the selected epoch's validation scores
        return {"valid": result.valid, "best_epoch": result.best_epoch,
                "epochs": result.epochs_run}
    return scored_run(result, dataset, device=device, **scoring)
