"""Training and evaluation speed of the default trimodal UCRN on MOSI-size data.

    python benchmarks/train_speed.py [--epochs 5] [--batch-size 16] [--threads 2]
                                     [--unaligned] [--data F.h5]

Prints samples/s for training and for evaluation, seconds per training epoch (median over
epochs), the time to load the data file into memory, and the peak resident memory; with
``--unaligned``, on random features of unaligned MOSI's shapes (language 50, audio 375,
vision 500 steps). MulT's reference code is not a dependency, so it is not timed here; its
figures on this kind of machine (2 threads, same shapes, batch 24), measured side by side
with UCRN before 2026-11-28 and printed for comparison: 24.2–26.3 s per aligned epoch, about
618 s per unaligned one (extrapolated from 6 batches).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ucrn.config import Config, apply_overrides
from ucrn.data.layout import load_dataset, write_dataset
from ucrn.data.synthetic import synthesize
from ucrn.engine import evaluate, fit

MULT_EPOCH_SECONDS = {"aligned": (24.2, 26.3), "unaligned": (618.0, 618.0)}


UNALIGNED_STEPS = {"l": 50, "a": 375, "v": 500}  # MulT's unaligned MOSI


def unaligned_mosi(path: Path) -> Path:
    """Random features of unaligned MOSI's shapes and sizes (for timing only), each sample's
    lengths drawn up to each modality's steps."""
    rng = np.random.default_rng(0)
    dims = {"l": 300, "a": 5, "v": 20}
    splits = {}
    for split, count in zip(("train", "valid", "test"), (1284, 229, 686), strict=True):
        arrays = {"labels": rng.uniform(-3, 3, count).astype(np.float32),
                  "ids": np.array([f"{split}_{i}" for i in range(count)], dtype=object)}
        for modality, steps in UNALIGNED_STEPS.items():
            arrays[modality] = rng.normal(size=(count, steps, dims[modality])).astype(np.float32)
            arrays[f"{modality}_len"] = rng.integers(steps // 5, steps + 1, count).astype(
                np.int32)
        splits[split] = arrays
    return write_dataset(path, splits, name="unaligned-mosi-random")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16, help="the paper's MOSI batch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", help="a MOSI-size file (default: made in a temporary folder)")
    parser.add_argument("--unaligned", action="store_true",
                        help="MOSI's unaligned shapes: audio 375 and vision 500 steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        if args.data:
            data = Path(args.data)
        elif args.unaligned:
            data = unaligned_mosi(Path(folder) / "unaligned.h5")
        else:
            data = synthesize("mosi", Path(folder) / "mosi.h5")
        started = time.perf_counter()
        dataset = load_dataset(data)
        load_seconds = time.perf_counter() - started

    config = apply_overrides(Config(), {
        "batch_size": args.batch_size, "epochs": args.epochs, "patience": args.epochs,
    })
    train_seconds: list[float] = []
    result = fit(config, dataset, device="cpu", score_test=False,
                 on_epoch=lambda epoch, _: train_seconds.append(epoch.train_seconds))
    samples = len(dataset.split("train"))
    epoch_seconds = statistics.median(train_seconds)

    test = dataset.split("test")
    evaluate(result.model, test, dataset, result.config, device="cpu")  # warm-up
    started = time.perf_counter()
    repeats = 3
    for _ in range(repeats):
        evaluate(result.model, test, dataset, result.config, device="cpu")
    eval_rate = repeats * len(test) / (time.perf_counter() - started)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    steps = "/".join(str(dataset.split("train").features[m].shape[1])
                     for m in result.config.model.modalities)
    print(f"UCRN trimodal, {result.params:,} parameters, batch {args.batch_size}, "
          f"{args.threads} threads, {samples} training samples, T = {steps}, dims 300/5/20")
    print(f"load data into memory: {load_seconds:.2f} s")
    print(f"training:   {samples / epoch_seconds:8.1f} samples/s  "
          f"{epoch_seconds:.2f} s per epoch (median of {len(train_seconds)}: "
          f"{', '.join(f'{s:.2f}' for s in train_seconds)})")
    print(f"evaluation: {eval_rate:8.1f} samples/s")
    print(f"peak memory (RSS): {peak_mib:.0f} MiB")
    kind = "unaligned" if max(int(t) for t in steps.split("/")) > 50 else "aligned"
    low, high = MULT_EPOCH_SECONDS[kind]
    span = f"{low:g}" if low == high else f"{low:g}–{high:g}"
    faster = (f"{low / epoch_seconds:.1f}" if low == high
              else f"{low / epoch_seconds:.1f}–{high / epoch_seconds:.1f}")
    print(f"vs MulT's reference code, {kind}, measured before 2026-11-28 ({span} s per "
          f"epoch): {faster}× faster")


if __name__ == "__main__":
    main()
