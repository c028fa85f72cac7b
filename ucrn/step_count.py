"""What a training step dispatches: ATen operations, those that launch kernels, host syncs.

On a GPU a step of this small model is bound by launching kernels, and a host sync drains
the queue; both can be counted on the CPU, with a ``TorchDispatchMode`` around the step.
``benchmarks/step_ops.py`` and ``benchmarks/gpu_acceptance.py`` report these counts; the
tests hold the static step (``static_shapes``) to zero syncs with them.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ucrn.config import Config
from ucrn.data.layout import Dataset, Split
from ucrn.engine import _train_epoch, _Training, prepare_config
from ucrn.stack import ModelStack

ALIGNED = {"l": (50, 300), "a": (50, 5), "v": (50, 20)}  # MOSI: steps, features
UNALIGNED = {"l": (50, 300), "a": (375, 5), "v": (500, 20)}

SYNCING = ("aten._local_scalar_dense",)  # .item(), float(), int(), bool() of a tensor
# Operations that launch no kernel though their schema does not say they alias: a view
# made without the alias mark, and allocations (memory that nothing fills yet).
NO_KERNEL = ("aten._unsafe_view", "aten.empty", "aten.empty_like", "aten.empty_strided",
             "aten.new_empty", "aten.new_empty_strided")


class DispatchCounter(TorchDispatchMode):
    """Counts the ATen operations dispatched inside it: all of them, views and allocations
    (which launch no kernel), and host syncs (a scalar read, or a copy from a device to the
    host)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()
        self.views = 0
        self.no_kernel = 0
        self.device_to_host = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops[str(func.overloadpacket)] += 1
        self.views += bool(getattr(func, "is_view", False))
        self.no_kernel += str(func.overloadpacket) in NO_KERNEL
        self.device_to_host += _copies_to_host(str(func.overloadpacket), args, kwargs)
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def kernel_ops(self) -> int:
        """Operations other than views and allocations: each launches (at least) one kernel
        on a GPU."""
        return self.total - self.views - self.no_kernel

    @property
    def syncs(self) -> int:
        return sum(self.ops[name] for name in SYNCING) + self.device_to_host


def _copies_to_host(name: str, args: tuple, kwargs: dict) -> int:
    """1 for a copy from a device tensor into host memory, else 0."""
    if name == "aten.copy_" and len(args) >= 2:
        destination, source = args[0], args[1]
        return int(_on_host(destination) and not _on_host(source))
    if name == "aten._to_copy" and args:
        target = kwargs.get("device")
        return int(target is not None and torch.device(target).type == "cpu"
                   and not _on_host(args[0]))
    return 0


def _on_host(tensor) -> bool:
    return isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu"


def random_dataset(shapes: dict[str, tuple[int, int]], counts: tuple[int, int, int],
                   seed: int = 0, lengths: bool = True) -> Dataset:
    """Random features of the given shapes and random lengths (for timing and counting),
    built in memory."""
    generator = torch.Generator().manual_seed(seed)
    splits = {}
    for name, count in zip(("train", "valid", "test"), counts, strict=True):
        features = {m: torch.randn(count, steps, dims, generator=generator)
                    for m, (steps, dims) in shapes.items()}
        lens = {m: (torch.randint(max(1, steps // 5), steps + 1, (count,), generator=generator)
                    if lengths else None) for m, (steps, _) in shapes.items()}
        labels = torch.rand(count, 1, generator=generator) * 6 - 3
        splits[name] = Split(features, lens, labels, [f"{name}{i}" for i in range(count)])
    return Dataset("random", "regression", tuple(shapes), ("sentiment",), splits,
                   source="random")


def training_for(config: Config, dataset: Dataset, device: str | torch.device) -> _Training:
    """One run's model, optimizer and data on ``device``, ready to step."""
    return _Training(prepare_config(config, dataset), dataset, torch.device(device), None, None)


def train_steps(training: _Training, count: int, epoch: int = 1) -> None:
    """``count`` training steps (batches) of ``training``, as an epoch takes them."""
    batch = training.config.train.batch_size
    order = torch.randperm(len(training.train.split))[:count * batch]
    _train_epoch(training.wrapped, training.parameters, training.optimizer, training.train,
                 order, training.config, training.batch_order, epoch, training.graphs)


def stack_steps(stack: ModelStack, count: int) -> None:
    """``count`` training steps of every model in ``stack``, each on its own batches."""
    batch = stack.batch_size
    orders = torch.stack([torch.randperm(len(stack.train.split))[:count * batch]
                          for _ in stack.active])
    stack.train_batches(orders)


def count_step(training: _Training, count: int = 2) -> dict[str, float]:
    """Operations, kernel-launching operations and host syncs per training step.

    The epoch's own reads (its losses, once per epoch) are left out: ``count`` steps are
    counted against ``2 × count``, and the difference is what the extra steps add."""
    counts = []
    for steps in (count, 2 * count):
        with DispatchCounter() as counter:
            train_steps(training, steps)
        counts.append(counter)
    short, long = counts
    return {"ops": (long.total - short.total) / count,
            "kernel_ops": (long.kernel_ops - short.kernel_ops) / count,
            "syncs": (long.syncs - short.syncs) / count}


def step_benchmark_arguments(description: str, quick: str) -> argparse.ArgumentParser:
    """The options of the step benchmarks (``benchmarks/``): ``--device``, ``--quick`` (what
    it makes smaller) and ``--json``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser
