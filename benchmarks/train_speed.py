"""Training and evaluation speed of the default trimodal UCRN on MOSI-size synthetic data.

    python benchmarks/train_speed.py [--epochs 5] [--batch-size 32] [--threads 2] [--data F.h5]

Prints samples/s for training and for evaluation, seconds per training epoch (median over
epochs), the time to load the data file into memory, and the peak resident memory. For
comparison, on a 2-thread CPU with the same shapes, MulT's reference code (1,071,211
parameters, batch 24) trained at 43–53 samples/s (24–30 s per epoch) and a MulT-based UCRN
reimplementation (686,611 parameters) at about 88 samples/s (14.7 s per epoch).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ucrn.config import Config, apply_overrides
from ucrn.data.layout import load_dataset
from ucrn.data.synthetic import synthesize
from ucrn.engine import evaluate, fit

MULT_EPOCH_SECONDS = (24.0, 30.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", help="a MOSI-size file (default: made in a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        data = Path(args.data) if args.data else synthesize("mosi", Path(folder) / "mosi.h5")
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

    print(f"UCRN trimodal, {result.params:,} parameters, batch {args.batch_size}, "
          f"{args.threads} threads, {samples} training samples, T = 50, dims 300/5/20")
    print(f"load data into memory: {load_seconds:.2f} s")
    print(f"training:   {samples / epoch_seconds:8.1f} samples/s  "
          f"{epoch_seconds:.2f} s per epoch (median of {len(train_seconds)}: "
          f"{', '.join(f'{s:.2f}' for s in train_seconds)})")
    print(f"evaluation: {eval_rate:8.1f} samples/s")
    print(f"peak memory (RSS): {peak_mib:.0f} MiB")
    low, high = MULT_EPOCH_SECONDS
    print(f"vs MulT's reference code here (24–30 s per epoch): "
          f"{low / epoch_seconds:.1f}–{high / epoch_seconds:.1f}× faster")


if __name__ == "__main__":
    main()
