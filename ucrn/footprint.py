"""How much memory one training run keeps on its device, estimated before it starts.

A run moves the train and validation splits to its device whole (as float32, with the
``score_robust`` masked copies of validation), keeps its weights, gradients, Adam's two
moments and the best weights, and needs room for one batch's activations. On a GPU each
process also pays for its CUDA context. The estimate errs high; ``benchmarks/
gpu_acceptance.py`` measures the real peak on a GPU.
"""

from __future__ import annotations

from ucrn.config import Config
from ucrn.data.layout import Dataset, Split
from ucrn.errors import UcrnError

CUDA_CONTEXT_BYTES = 600 * 2**20  # one process's CUDA context and kernels, about 0.3–0.6 GB
WEIGHT_COPIES = 6  # weights, gradients, Adam's two moments, best weights, a checkpoint copy
FLOATS_PER_STEP_AND_WIDTH = 40  # activations per layer, step and unit of width (FFN 4×)
BYTES = 4  # float32


def split_bytes(split: Split, modalities: tuple[str, ...]) -> int:
    """The bytes of ``split`` for ``modalities``: features, lengths and labels."""
    total = split.labels.numel() * BYTES
    for modality in modalities:
        total += split.features[modality].numel() * BYTES
        lengths = split.lengths.get(modality)
        total += 0 if lengths is None else lengths.numel() * 8
    return total


def data_bytes(config: Config, dataset: Dataset) -> int:
    """The splits a run keeps on its device: train, valid, and with ``score_robust`` one
    masked copy of valid per modality."""
    modalities = config.model.modalities
    valid = split_bytes(dataset.split("valid"), modalities)
    copies = 1 + (len(modalities) if config.train.score_robust else 0)
    return split_bytes(dataset.split("train"), modalities) + copies * valid


def activation_bytes(config: Config, dataset: Dataset) -> int:
    """A batch's activations at the data's longest steps: a training batch keeps every URM
    layer's for backward; a validation batch (no gradients) one layer's at a time."""
    model, train = config.model, dataset.split("train")
    steps = sum(int(train.features[m].shape[1]) for m in model.modalities)
    per_step = model.width * FLOATS_PER_STEP_AND_WIDTH * model.ffn_multiplier / 4
    training = config.train.batch_size * model.urm_layers * steps * per_step
    validation = config.train.eval_batch_size * steps * per_step
    return int(max(training, validation) * BYTES)


def parameter_bytes(parameters: int) -> int:
    return parameters * BYTES * WEIGHT_COPIES


def training_device_bytes(config: Config, dataset: Dataset, parameters: int,
                          on_gpu: bool = True) -> int:
    """The estimated bytes one run keeps on its device (a GPU: its CUDA context too)."""
    return (data_bytes(config, dataset) + activation_bytes(config, dataset)
            + parameter_bytes(parameters) + (CUDA_CONTEXT_BYTES if on_gpu else 0))


def gib(count: float) -> str:
    return f"{count / 2**30:.2f} GiB"


def packing_problem(need_bytes: int, runs: int, memory_bytes: int) -> str | None:
    """What is wrong with ``runs`` runs of ``need_bytes`` each on one GPU of
    ``memory_bytes``, and the fix; None when they fit."""
    if need_bytes * runs <= memory_bytes:
        return None
    fitting = memory_bytes // need_bytes
    fix = (f"give --gpus-per-worker {1 / fitting:.4g} or more (fewer trials per GPU)" if fitting
           else "not even one fits: give smaller data or GPUs with more memory")
    return (f"{runs} trial(s) per GPU at about {gib(need_bytes)} each do not fit its "
            f"{gib(memory_bytes)}; {fix}")


def check_room(need_bytes: int, what: str, fix: str, folder=None) -> None:
    """Raise ``UcrnError`` before allocating when ``need_bytes`` cannot fit this machine's
    free memory (or, with ``folder``, the free disk there)."""
    import shutil

    import psutil

    if folder is not None:
        free, where = shutil.disk_usage(folder).free, f"free disk at {folder}"
    else:
        free, where = psutil.virtual_memory().available, "free memory"
    if need_bytes > free:
        raise UcrnError(f"{what} needs about {gib(need_bytes)}, more than the {gib(free)} of "
                        f"{where}; {fix}")


def estimated_parameters(config: Config) -> int:
    """UCRN's parameter count from its config alone, an upper estimate (about 15 % high for
    the defaults), to refuse a model too big for memory before building it."""
    model = config.model
    width, ffn = model.width, model.ffn_multiplier
    per_layer = (4 + 2 * ffn) * width * width + (6 + ffn) * width  # QKV, FC1, FFN, norms
    inputs = sum(model.input_dims.get(m, 0) for m in model.modalities) * width
    layers = len(model.modalities) * model.urm_layers + model.crm_layers
    return inputs + layers * per_layer + (model.sqil_layers + 2) * (width * width + width)
