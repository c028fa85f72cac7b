"""What one training step dispatches, on the dynamic and the static path.

    python benchmarks/step_ops.py [--device cpu|cuda] [--quick] [--json]

For each path (``static_shapes`` false and true) and MOSI's aligned and unaligned shapes,
batch 16, the paper's model: kernel-launching ATen operations per training step (forward,
``ucrn_loss``, backward, clipping, fused Adam; views left out), host syncs per step (scalar
reads and copies to the host) and ms per step (median of three timed runs). On a GPU a step
of this small model is bound by launching kernels and each sync drains the queue, so the
counts, measured here on any device, say what the GPU would wait for. ``--quick`` takes a
small model and few samples (for CI); ``--json`` prints one object
``{"dynamic"|"static": {"aligned"|"unaligned": {"ops": N, "syncs": N, "ms": x}}}``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from ucrn.config import Config, apply_overrides
from ucrn.step_count import (
    ALIGNED,
    UNALIGNED,
    count_step,
    random_dataset,
    step_benchmark_arguments,
    train_steps,
    training_for,
)

PATHS = {"dynamic": "false", "static": "true"}


def measure(shapes: dict, static_shapes: str, device: torch.device, quick: bool) -> dict:
    samples = 96 if quick else 640
    dataset = random_dataset(shapes, (samples, 32, 32))
    small = {"urm_layers": 1, "crm_layers": 1} if quick else {}
    config = apply_overrides(Config(), {**small, "static_shapes": static_shapes, "epochs": 1})
    training = training_for(config, dataset, device)
    counted = count_step(training)
    steps = 2 if quick else 10
    train_steps(training, 2)  # warm-up
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        train_steps(training, steps)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings.append((time.perf_counter() - started) / steps)
    return {"ops": counted["kernel_ops"], "syncs": counted["syncs"],
            "ms": round(statistics.median(timings) * 1e3, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = step_benchmark_arguments(__doc__.splitlines()[0], "a small model, few samples")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    report = {path: {name: measure(shapes, setting, device, args.quick)
                     for name, shapes in (("aligned", ALIGNED), ("unaligned", UNALIGNED))}
              for path, setting in PATHS.items()}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"one training step, batch 16, on {device}"
          f"{' (--quick: a small model)' if args.quick else ''}")
    print(f"{'path':<8} {'shapes':<10} {'kernel ops':>10} {'host syncs':>10} {'ms':>8}")
    for path, shapes in report.items():
        for name, figures in shapes.items():
            print(f"{path:<8} {name:<10} {figures['ops']:>10g} {figures['syncs']:>10g} "
                  f"{figures['ms']:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
