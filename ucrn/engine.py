"""Training and evaluation in one process: the one loop every other layer reuses.

``fit`` trains with Adam on the train split, scores the validation split after every epoch,
keeps the checkpoint with the best validation score (``TrainConfig.select_metric``), stops
after ``patience`` epochs without improvement, and scores the test split once, on the
selected checkpoint, only when asked. The same seed gives the same numbers on a CPU.

Hooks for the layers above (they never copy this loop): ``on_epoch`` sees each epoch's
result and can take a resumable checkpoint; ``resume`` continues from one; ``rank`` /
``world_size`` / ``wrap_model`` shard the batches and wrap the model for data parallelism.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ucrn.config import Config, config_from_dict, default_modalities
from ucrn.data.batches import (
    drop_modalities,
    epoch_order,
    input_statistics,
    iterate_batches,
    mask_modalities,
)
from ucrn.data.layout import Dataset, Split, load_dataset, read_attrs
from ucrn.errors import UcrnError
from ucrn.files import atomic_write, check_directory, load_tensors
from ucrn.flat import FlatParameters
from ucrn.footprint import activation_bytes, check_room, estimated_parameters, parameter_bytes
from ucrn.graphed import GraphedSteps
from ucrn.losses import task_loss, ucrn_loss
from ucrn.metrics import ROBUST_PREFIX, is_better
from ucrn.model import UCRN
from ucrn.state import FitResult, TrainingState
from ucrn.tasks import get_task, label_columns, metric_names, task_metrics


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else the GPU when there is one, else the CPU; a clear error for a
    device this machine does not have."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        wanted = torch.device(device)
    except (RuntimeError, TypeError):
        raise UcrnError(f"--device {device!r}: not a device; give cpu, cuda or cuda:N") from None
    if wanted.type == "cuda" and not torch.cuda.is_available():
        raise UcrnError(f"--device {device}: this machine has no GPU that torch can use; "
                        "give --device cpu")
    if wanted.type == "cuda" and (wanted.index or 0) >= torch.cuda.device_count():
        raise UcrnError(f"--device {device}: there are {torch.cuda.device_count()} GPUs")
    if wanted.type not in ("cpu", "cuda"):
        raise UcrnError(f"--device {device}: ucrn runs on cpu or cuda")
    return wanted


def select_metric(config: Config) -> str:
    """The validation metric that picks the checkpoint (``auto`` → the task's default)."""
    name = config.train.select_metric
    return get_task(config.model.task).select_metric if name == "auto" else name


def prepare_config(config: Config, dataset: Dataset) -> Config:
    """``config`` fitted to ``dataset``: input sizes from the data, everything checked."""
    config = copy.deepcopy(config).validate()
    missing = [m for m in config.model.modalities if m not in dataset.modalities]
    if missing:
        raise UcrnError(
            f"{dataset.path}: the config uses modality {','.join(missing)}, which the data "
            f"does not carry (it has {','.join(dataset.modalities)}); set modalities to a subset"
        )
    label_columns(dataset, config.model.task)
    config.model.input_dims = {m: dataset.input_dims[m] for m in config.model.modalities}
    if config.train.score_robust and len(config.model.modalities) < 2:
        raise UcrnError(
            "robust_* metrics (score_robust) mask one modality at a time, so they need two or "
            f"more modalities; the model has {','.join(config.model.modalities)}"
        )
    metric, names = select_metric(config), validation_metric_names(config)
    if metric not in names:
        raise UcrnError(f"select_metric={metric!r} is not a validation metric of task "
                        f"{config.model.task!r} here; choose one of {', '.join(names)}")
    return config


def check_memory(config: Config, dataset: Dataset, device: torch.device) -> None:
    """Refuse, before anything is built, a model whose weights (built in this machine's
    memory) and, on the CPU, batches cannot fit its free memory; the data are in memory
    already. (A GPU trial checks its GPU's memory itself.)"""
    need = parameter_bytes(estimated_parameters(config))
    if device.type == "cpu":
        need += activation_bytes(config, dataset)
    check_room(need, "this model", "lower width, the layers or batch_size")


# Settings that change how fast a run goes, not what it computes.
_SPEED_SETTINGS = ("static_shapes", "cuda_graph", "eval_batch_size")


def training_differences(ran: Config, wanted: Config) -> list[str]:
    """The settings in which two configurations train differently, as "key: A → B" (the
    seed included; speed settings and an ``auto`` selection metric resolved aside)."""
    def settings(config: Config) -> dict[str, Any]:
        data = config.to_dict()
        flat = {**data["model"], **data["train"], "select_metric": select_metric(config)}
        return {k: v for k, v in flat.items() if k not in _SPEED_SETTINGS}

    before, after = settings(ran), settings(wanted)
    return [f"{key}: {before.get(key)} → {after.get(key)}"
            for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)]


def validation_metric_names(config: Config) -> tuple[str, ...]:
    """The keys of each epoch's validation scores: the task's metrics, and with
    ``score_robust`` the same again as ``robust_*``."""
    names = metric_names(config.model.task)
    if config.train.score_robust:
        names += tuple(ROBUST_PREFIX + name for name in names)
    return names


def load_training_data(
    config: Config, data_path: Path, modalities_chosen: bool
) -> tuple[Config, Dataset]:
    """The data file's splits for the config's modalities, and ``config`` fitted to them.

    Unless someone chose the modalities, the config takes the file's own: a language-only
    file then trains a language-only model instead of failing on the missing audio.
    """
    config = default_modalities(config, read_attrs(data_path)["modalities"], modalities_chosen)
    dataset = load_dataset(data_path, modalities=config.model.modalities)
    return prepare_config(config, dataset), dataset


def check_model_fits(config: Config, dataset: Dataset) -> None:
    """Raise ``UcrnError`` unless a model built for ``config`` can read ``dataset``."""
    for modality in config.model.modalities:
        if modality not in dataset.modalities:
            continue  # a missing modality is allowed: the model takes any subset
        expected, found = config.model.input_dims[modality], dataset.input_dims[modality]
        if expected != found:
            raise UcrnError(
                f"{dataset.path}: modality {modality} has {found} features but the model was "
                f"trained on {expected}; evaluate on data with the same feature extraction"
            )
    label_columns(dataset, config.model.task)


@dataclass
class EpochResult:
    epoch: int  # 1-based
    train_loss: float  # λm·L_M + λc·L_C, mean over batches
    train_task_loss: float  # L_C
    train_js: float  # L_M
    valid: dict[str, float]
    improved: bool
    best_epoch: int
    best_score: float
    train_seconds: float  # the training pass alone
    seconds: float  # training and validation


class _TaskData:
    """A split on the device, with its targets and label columns for one task."""

    def __init__(
        self, split: Split, columns: list[int], task: str, device: torch.device,
        modalities: tuple[str, ...] | None = None,
    ):
        if modalities is not None:
            split = drop_modalities(split, modalities)
        self.split = split.to(device)
        self.labels = self.split.labels[:, columns]
        self.targets = get_task(task).targets(self.labels)


@torch.inference_mode()
def predict(model: UCRN, data: _TaskData, batch_size: int) -> torch.Tensor:
    """Model outputs for every sample of ``data``, in file order."""
    was_training = model.training
    model.eval()
    outputs = [
        model(batch.features, batch.lengths).prediction
        for batch in iterate_batches(data.split, data.targets, data.labels, batch_size)
    ]
    model.train(was_training)
    return torch.cat(outputs)


def _score(model: UCRN, data: _TaskData, config: Config) -> dict[str, float]:
    prediction = predict(model, data, config.train.eval_batch_size)
    metrics = task_metrics(prediction, data.labels, config.model.task)
    metrics["loss"] = float(task_loss(prediction, data.targets, config.model.task))
    return metrics


def evaluate(
    model: UCRN, split: Split, dataset: Dataset, config: Config, device: torch.device | None = None
) -> dict[str, float]:
    """Metrics (and the task loss ``loss``) of ``model`` on ``split``."""
    device = resolve_device(device)
    model.to(device)
    columns = label_columns(dataset, config.model.task)
    return _score(model, _TaskData(split, columns, config.model.task, device), config)


def modality_subsets(modalities: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The proper non-empty subsets of ``modalities``, smallest first (what modality dropout
    trains on, and what the robustness tables keep)."""
    return [subset for size in range(1, len(modalities))
            for subset in itertools.combinations(modalities, size)]


def robust_scores(model: UCRN, masked: list[_TaskData], config: Config) -> dict[str, float]:
    """``robust_<metric>``: each metric averaged over the conditions in ``masked``."""
    scores = [_score(model, data, config) for data in masked]
    return {ROBUST_PREFIX + name: sum(s[name] for s in scores) / len(scores)
            for name in scores[0]}


def static_shapes(config: Config, device: torch.device) -> bool:
    """Whether training steps keep fixed shapes and never wait for the device: on CUDA
    unless the config says otherwise (the last short batch is a second fixed shape)."""
    setting = config.train.static_shapes
    return setting == "true" or (setting == "auto" and torch.device(device).type == "cuda")


def train_step(
    wrapped: nn.Module, parameters: FlatParameters, optimizer: torch.optim.Optimizer,
    config: Config, features: dict[str, torch.Tensor],
    lengths: dict[str, torch.Tensor | None], targets: torch.Tensor,
    lambda_m: float | torch.Tensor, totals: torch.Tensor,
) -> None:
    """One step: forward, L = λm·L_M + λc·L_C (eq. 13), backward, clipping, Adam; its L,
    L_C and L_M added to ``totals`` on the device (nothing here reads a value back)."""
    with parameters.step_views(features):
        output = wrapped(features, lengths)
    loss = ucrn_loss(output.prediction, targets, output.unimodal, config.model.task,
                     lambda_m, config.train.lambda_c)
    parameters.flat.grad.zero_()  # the model's gradients are views of it
    loss.total.backward()
    if config.train.grad_clip:
        nn.utils.clip_grad_norm_(parameters.flat, config.train.grad_clip)
    optimizer.step()
    totals += torch.stack([loss.total.detach(), loss.task.detach(), loss.js.detach()])


def _train_epoch(
    wrapped: nn.Module,
    parameters: FlatParameters,
    optimizer: torch.optim.Optimizer,
    data: _TaskData,
    order: torch.Tensor,
    config: Config,
    generator: torch.Generator,
    epoch: int,
    graphs: GraphedSteps | None = None,
) -> tuple[float, float, float]:
    """One pass over ``order``: mean total loss, L_C and L_M over the batches; each step
    replayed from a CUDA graph when ``graphs`` is given."""
    train_config = config.train
    lambda_m = train_config.lambda_m * min(1.0, epoch / (train_config.lambda_m_warmup + 1))
    wrapped.train()
    if graphs is not None:
        totals = graphs.start_epoch(lambda_m)
    else:
        totals = torch.zeros(3, device=data.targets.device)
    batches = 0
    subsets = modality_subsets(config.model.modalities) if train_config.modality_dropout else []
    for batch in iterate_batches(
        data.split, data.targets, data.labels, train_config.batch_size, order
    ):
        features, lengths = batch.features, batch.lengths
        if subsets and float(torch.rand(1, generator=generator)) < train_config.modality_dropout:
            # modality dropout: this batch trains on a random proper subset
            keep = subsets[int(torch.randint(len(subsets), (1,), generator=generator))]
            features = {m: features[m] for m in keep}
            lengths = {m: lengths[m] for m in keep}
        if graphs is not None:
            graphs(features, lengths, batch.targets)
        else:
            train_step(wrapped, parameters, optimizer, config, features, lengths,
                       batch.targets, lambda_m, totals)
        batches += 1
    total, task, regulariser = (totals / max(batches, 1)).tolist()
    return total, task, regulariser


class _Training:
    """One run's moving parts: the model and its optimizer, the data on the device, and the
    ``TrainingState`` that a checkpoint saves."""

    def __init__(
        self, config: Config, dataset: Dataset, device: torch.device,
        resume: TrainingState | None, wrap_model: Callable[[nn.Module], nn.Module] | None,
    ):
        self.config, self.metric, self.device = config, select_metric(config), device
        task, modalities = config.model.task, config.model.modalities
        torch.manual_seed(config.train.seed)
        self.model = UCRN(config.model).to(device)
        self.model.static_shapes = static_shapes(config, device)
        train_split = drop_modalities(dataset.split("train"), modalities)
        self.model.set_input_statistics(input_statistics(train_split, config.model.standardise))
        # The static step reads the parameters through views (fewer launches on a GPU; on
        # the CPU, 5 % slower); a wrapper for data parallelism watches their own gradients.
        self.parameters = FlatParameters(self.model,
                                         step_views=self.model.static_shapes and not wrap_model,
                                         stacks=self.model.parameter_stacks(),
                                         together=self.model.runs_stacks_together)
        self.wrapped = wrap_model(self.model) if wrap_model else self.model
        graphed = (device.type == "cuda" and self.model.static_shapes and config.train.cuda_graph
                   and not config.train.modality_dropout and wrap_model is None)
        self.optimizer = torch.optim.Adam(  # fused: one kernel, 9× faster than a loop
            [self.parameters.flat], lr=config.train.learning_rate,
            weight_decay=config.train.weight_decay, fused=True, capturable=graphed,
        )
        self.graphs = GraphedSteps(self._graph_step, device) if graphed else None
        self.batch_order = torch.Generator().manual_seed(config.train.seed)
        columns = label_columns(dataset, task)
        self.train = _TaskData(train_split, columns, task, device)
        self.valid = _TaskData(dataset.split("valid"), columns, task, device, modalities)
        self.valid_masked = []  # Table 4 on valid, for the robust_* scores
        if config.train.score_robust:  # each modality masked in turn: L+A, L+V, A+V
            means = self.model.input_means()
            self.valid_masked = [
                _TaskData(mask_modalities(self.valid.split, [m], fill=means), columns, task,
                          device)
                for m in modalities
            ]
        self.state = TrainingState(config, best_weights=copy.deepcopy(self.model.state_dict()))
        if resume is not None:
            self.model.load_state_dict(resume.weights)
            saved = dict(resume.optimizer)
            layout = saved.pop("flat_layout", None)  # None: saved before layouts were
            self.optimizer.load_state_dict(self.parameters.optimizer_state(saved, layout))
            for group in self.optimizer.param_groups:  # a state saved without graphs
                group["capturable"] = graphed
            self.batch_order.set_state(resume.batch_order)
            torch.set_rng_state(resume.torch_rng)
            if resume.cuda_rng is not None and device.type == "cuda":
                torch.cuda.set_rng_state_all(resume.cuda_rng)
            self.state = dataclasses.replace(resume, config=config)  # e.g. more epochs

    def _graph_step(self, features, lengths, targets, lambda_m, totals) -> None:
        """The step a CUDA graph captures: λm as its buffer, unless the config has none."""
        train_step(self.wrapped, self.parameters, self.optimizer, self.config, features,
                   lengths, targets, lambda_m if self.config.train.lambda_m else 0.0, totals)

    def checkpoint(self) -> TrainingState:
        """A snapshot that ``fit(resume=…)`` continues from exactly."""
        return copy.deepcopy(dataclasses.replace(
            self.state, weights=self.model.state_dict(),
            optimizer={**self.optimizer.state_dict(), "flat_layout": self.parameters.names},
            batch_order=self.batch_order.get_state(), torch_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
        ))

    def run_epoch(self, epoch: int, rank: int, world_size: int) -> EpochResult:
        """Train one epoch on this rank's share, score valid, keep the best weights."""
        started = time.perf_counter()
        order = epoch_order(len(self.train.split), shuffle=True, generator=self.batch_order,
                            rank=rank, world_size=world_size)
        losses = _train_epoch(self.wrapped, self.parameters, self.optimizer, self.train, order,
                              self.config, self.batch_order, epoch, self.graphs)
        train_seconds = time.perf_counter() - started
        if not math.isfinite(losses[0]):
            raise UcrnError(
                f"training diverged at epoch {epoch} (loss {losses[0]}); lower learning_rate "
                f"(now {self.config.train.learning_rate:g}) or set grad_clip"
            )
        valid = _score(self.model, self.valid, self.config)
        if self.valid_masked:
            valid.update(robust_scores(self.model, self.valid_masked, self.config))
        state = self.state
        improved = is_better(self.metric, valid[self.metric], state.best_score)
        if improved:
            state.best_epoch, state.best_score = epoch, valid[self.metric]
            state.best_weights = copy.deepcopy(self.model.state_dict())
        state.epoch = epoch
        state.history.append({
            "epoch": epoch, "train_loss": losses[0], "train_task_loss": losses[1],
            "train_js": losses[2], **{f"valid_{k}": v for k, v in valid.items()},
        })
        return EpochResult(epoch, *losses, valid, improved, state.best_epoch, state.best_score,
                           train_seconds, time.perf_counter() - started)


def fit(
    config: Config,
    dataset: Dataset,
    *,
    device: str | torch.device | None = None,
    score_test: bool = True,
    on_epoch: Callable[[EpochResult, Callable[[], TrainingState]], None] | None = None,
    resume: TrainingState | None = None,
    rank: int = 0,
    world_size: int = 1,
    wrap_model: Callable[[nn.Module], nn.Module] | None = None,
) -> FitResult:
    """Train UCRN on ``dataset`` (see the module docstring for the hooks).

    ``on_epoch(result, checkpoint)`` is called after every epoch; ``checkpoint()`` returns a
    ``TrainingState`` that ``resume`` continues from exactly.
    """
    started = time.perf_counter()
    config = prepare_config(config, dataset)
    device = resolve_device(device)
    check_memory(config, dataset, device)
    training = _Training(config, dataset, device, resume, wrap_model)
    state, patience = training.state, config.train.patience
    for epoch in range(state.epoch + 1, config.train.epochs + 1):
        if state.best_epoch and epoch - state.best_epoch > patience:
            break
        result = training.run_epoch(epoch, rank, world_size)
        if on_epoch is not None:
            on_epoch(result, training.checkpoint)
    model = training.model
    model.load_state_dict(state.best_weights)
    test = None
    if score_test:
        test_split = drop_modalities(dataset.split("test"), config.model.modalities)
        test = evaluate(model, test_split, dataset, config, device)
    return state.to_fit_result(test, time.perf_counter() - started, model)


# ------------------------------------------------------------------------------- run files

RUN_FILES = ("config.json", "model.pt", "metrics.json")


def save_run(out_dir: str | Path, result: FitResult, extra: dict | None = None) -> Path:
    """Write ``config.json``, ``model.pt`` and ``metrics.json`` (each file atomically)."""
    out_dir = check_directory(out_dir, "run directory")
    record = {**result.metrics_record(select_metric(result.config)), **(extra or {})}
    atomic_write(out_dir / "model.pt", lambda p: torch.save(
        {"config": result.config.to_dict(), "state_dict": result.model.state_dict()}, p))
    atomic_write(out_dir / "config.json", lambda p: result.config.save(p))
    atomic_write(out_dir / "metrics.json",
                  lambda p: Path(p).write_text(json.dumps(record, indent=2) + "\n"))
    return out_dir


def load_run(
    checkpoint: str | Path, device: str | torch.device | None = None
) -> tuple[Config, UCRN]:
    """The config and model saved by ``save_run`` (a run directory or its ``model.pt``)."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise UcrnError(f"checkpoint {path} does not exist; give a directory made by ucrn train")
    saved = load_tensors(path, "checkpoint")  # data only: loading never runs code
    if not isinstance(saved, dict) or not {"config", "state_dict"} <= set(saved):
        raise UcrnError(f"checkpoint {path} holds a {type(saved).__name__}, not the config and "
                        "weights that ucrn train writes")
    try:
        config = config_from_dict(saved["config"])
    except UcrnError as error:
        raise UcrnError(f"checkpoint {path}: {error}") from None
    model = UCRN(config.model)
    _load_weights(model, saved["state_dict"], path)
    return config, model.to(resolve_device(device)).eval()


def _load_weights(model: UCRN, weights: object, path: Path) -> None:
    """``model.load_state_dict(weights)``, with one line saying what does not fit."""
    if not isinstance(weights, dict):
        raise UcrnError(f"checkpoint {path}: its weights are a {type(weights).__name__}")
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    misshapen = [k for k in expected if k in weights and hasattr(weights[k], "shape")
                 and tuple(weights[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or misshapen:
        problems = [f"{len(found)} {what} (e.g. {found[0]})" for what, found in (
            ("missing", missing), ("unexpected", unexpected), ("of another shape", misshapen))
            if found]
        raise UcrnError(f"checkpoint {path} does not fit its config: weights "
                        f"{'; '.join(problems)}; was it written by another version of ucrn?")
    model.load_state_dict(weights)
