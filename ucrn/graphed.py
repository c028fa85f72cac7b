"""The whole training step as one CUDA graph, replayed per batch (PyTorch's whole-network
capture): a step of this small model is bound by launching its kernels, and a replay
launches them all at once.

Forward, L (eq. 13), backward, clipping and Adam (``capturable``) are captured once per
batch shape — the full batch and the epoch's shorter last one, the same every epoch — after
a few eager warm-up steps on a side stream, with static buffers for the batch, λm and the
epoch's summed losses; each later batch is copied into the buffers and the graph replayed.
Every batch is trained exactly once (warm-up steps are real steps), so the graphed run is
the eager one. Capture needs the static step (``static_shapes``: nothing waits for the
device) and one process; when it fails, one line says so and the steps run eagerly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch

WARMUP_STEPS = 3  # eager steps of a batch shape before it is captured

Step = Callable[[dict, dict, torch.Tensor, torch.Tensor, torch.Tensor], None]


class GraphedSteps:
    """``step(features, lengths, targets, lambda_m, totals)`` as CUDA graphs; with
    ``capture=False`` every step runs eagerly through the same buffers (for the CPU)."""

    def __init__(self, step: Step, device: torch.device, capture: bool = True,
                 say: Callable[[str], None] = print):
        self.step, self.capture, self.say = step, capture, say
        self.lambda_m = torch.zeros((), device=device)  # λm of this epoch (its warm-up)
        self.totals = torch.zeros(3, device=device)  # this epoch's summed L, L_C, L_M
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, tuple]] = {}  # batch size → …
        self.seen: Counter = Counter()
        self.failed = False
        self.pool = None  # the graphs share one memory pool
        self.side = torch.cuda.Stream(device) if capture else None

    def start_epoch(self, lambda_m: float) -> torch.Tensor:
        """Set λm and zero the summed losses (no sync); the totals the steps add into."""
        self.lambda_m.fill_(lambda_m)
        return self.totals.zero_()

    def __call__(self, features: dict, lengths: dict, targets: torch.Tensor) -> None:
        size = len(targets)
        if size in self.graphs:
            graph, buffers = self.graphs[size]
            _copy_into(buffers, (features, lengths, targets))
            graph.replay()
        elif self.failed or not self.capture or self.seen[size] < WARMUP_STEPS:
            self.seen[size] += 1
            self._eager(features, lengths, targets)
        else:
            self._capture(size, features, lengths, targets)

    def _eager(self, features: dict, lengths: dict, targets: torch.Tensor) -> None:
        if self.side is None or self.failed:
            self.step(features, lengths, targets, self.lambda_m, self.totals)
            return
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):  # warm-up away from the capturing stream
            self.step(features, lengths, targets, self.lambda_m, self.totals)
        torch.cuda.current_stream().wait_stream(self.side)

    def _capture(self, size: int, features: dict, lengths: dict, targets: torch.Tensor):
        buffers = _clone((features, lengths, targets))
        graph = torch.cuda.CUDAGraph()
        try:
            torch.cuda.synchronize()
            with torch.cuda.graph(graph, pool=self.pool):
                self.step(*buffers, self.lambda_m, self.totals)
        except Exception as error:  # noqa: BLE001 - any capture failure falls back alike
            self.failed = True
            reason = " ".join(str(error).split())[:200]
            self.say(f"CUDA graph capture failed ({type(error).__name__}: {reason}); the "
                     "training steps run eagerly")
            self._eager(features, lengths, targets)  # the capture ran nothing
            return
        self.pool = graph.pool()
        self.graphs[size] = (graph, buffers)
        graph.replay()  # this batch's step: capturing only recorded it


def _clone(batch: tuple) -> tuple:
    features, lengths, targets = batch
    return ({m: x.clone() for m, x in features.items()},
            {m: (n.clone() if n is not None else None) for m, n in lengths.items()},
            targets.clone())


def _copy_into(buffers: tuple, batch: tuple) -> None:
    (features, lengths, targets), (new_features, new_lengths, new_targets) = buffers, batch
    for modality, buffer in features.items():
        buffer.copy_(new_features[modality], non_blocking=True)
    for modality, buffer in lengths.items():
        if buffer is not None:
            buffer.copy_(new_lengths[modality], non_blocking=True)
    targets.copy_(new_targets, non_blocking=True)
