"""The Ray Train worker loop: ``ucrn.engine.fit`` with data parallelism and checkpoints.

Every worker trains on its shard of each epoch's batches (DDP: gloo on CPU, nccl on GPU),
every worker scores the whole validation split, and all report each epoch; rank 0 attaches
the resumable checkpoint. A restarted worker group continues from the last checkpoint.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch

from ucrn.config import config_from_dict
from ucrn.engine import EpochResult, fit
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


def read_checkpoint(checkpoint: ray.train.Checkpoint) -> TrainingState:
    """The engine's resumable state from a checkpoint written by ``train_worker``."""
    with checkpoint.as_directory() as folder:
        saved = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    return TrainingState.from_dict(saved)


def train_worker(loop_config: dict[str, Any]) -> None:
    """The function every Ray Train worker runs."""
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(loop_config["threads"])
    dataset = ray.get(loop_config["data"][0])
    config = config_from_dict(loop_config["config"])
    device = ray.train.torch.get_device()
    node_id = ray.get_runtime_context().get_node_id()
    previous = ray.train.get_checkpoint()
    resume = read_checkpoint(previous) if previous else None

    def wrap(model: torch.nn.Module) -> torch.nn.Module:
        if world_size == 1:
            return model
        # Modality dropout leaves a dropped modality's URM without gradients in that step.
        unused = {"find_unused_parameters": config.train.modality_dropout > 0}
        return ray.train.torch.prepare_model(  # DDP
            model, move_to_device=False, parallel_strategy_kwargs=unused)

    reported = []

    def report(metrics: dict[str, Any], state: Callable[[], TrainingState]) -> None:
        reported.append(metrics["epoch"])
        if rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state().to_dict(), Path(folder) / CHECKPOINT_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))

    def on_epoch(result: EpochResult, checkpoint: Callable[[], TrainingState]) -> None:
        report({**epoch_metrics(result), "node_id": node_id}, checkpoint)

    fit(config, dataset, device=device, score_test=False, on_epoch=on_epoch, resume=resume,
        rank=rank, world_size=world_size, wrap_model=wrap)
    if resume is not None and not reported:
        # Restarted after its last epoch (e.g. a rerun of a finished run): nothing was
        # trained, so report the final state again for whoever waits on it.
        last = {**resume.history[-1], "best_epoch": resume.best_epoch,
                "epoch_seconds": 0.0, "node_id": node_id}
        report(last, lambda: resume)
