"""Training and evaluation speed of the default trimodal UCRN on MOSI-size data.

    python benchmarks/train_speed.py [--epochs 5] [--batch-size 16] [--threads 2]
                                     [--unaligned] [--data F.h5] [--mult DIR]

Prints samples/s for training and for evaluation, seconds per training epoch (median over
epochs), the time to load the data file into memory, and the peak resident memory; with
``--unaligned``, on random features of unaligned MOSI's shapes (language 50, audio 375,
vision 500 steps).

MulT (Tsai et al., 2019) is the field's reference. Its code is not a dependency: with
``--mult DIR``, a checkout of https://github.com/yaohungt/Multimodal-Transformer, its model
is trained side by side on the same tensors and threads (its defaults: batch 24, 5 layers,
5 heads, Adam, L1 loss, clipping) and both are timed in this one run. Without it, MulT's
figures measured on this kind of machine before 2026-11-28 are printed: 24.2–26.3 s per
aligned epoch, about 618 s per unaligned one (extrapolated from 6 batches).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ucrn.config import Config, apply_overrides
from ucrn.data.layout import Split, load_dataset, write_dataset
from ucrn.data.synthetic import synthesize
from ucrn.engine import EpochResult, evaluate, fit

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


def mult_model(checkout: Path, train: Split) -> torch.nn.Module:
    """MulT's model from a checkout of its repository, with the defaults of its main.py."""
    if not (checkout / "src" / "models.py").is_file():
        sys.exit(f"--mult {checkout}: not a checkout of yaohungt/Multimodal-Transformer "
                 f"(no src/models.py); git clone that repository and give its folder")
    sys.path.insert(0, str(checkout))  # MulT imports its own `modules` and `src` packages
    from modules import multihead_attention, position_embedding
    from src.models import MULTModel

    # MulT was written for PyTorch 1.0. Two things it relied on changed since, each put back
    # at no cost: clone() made a tensor contiguous (MulT then views its positions as one
    # row), and chunk()'s parts could be scaled in place (as MulT scales its queries).
    make_positions = position_embedding.make_positions
    position_embedding.make_positions = lambda *args: make_positions(*args).contiguous()
    multihead_attention.MultiheadAttention.in_proj_qkv = (
        lambda self, query: self._in_proj(query).unsafe_chunk(3, dim=-1))

    dims = {m: train.features[m].shape[2] for m in ("l", "a", "v")}
    return MULTModel(SimpleNamespace(
        orig_d_l=dims["l"], orig_d_a=dims["a"], orig_d_v=dims["v"],
        lonly=True, aonly=True, vonly=True, num_heads=5, layers=5, attn_mask=True,
        attn_dropout=0.1, attn_dropout_a=0.0, attn_dropout_v=0.0, relu_dropout=0.1,
        res_dropout=0.1, out_dropout=0.0, embed_dropout=0.25, output_dim=1,
    ))


def mult_epoch(model: torch.nn.Module, train: Split, batch_size: int,
               batches: int | None) -> Callable[[], float]:
    """A function that trains MulT's model one epoch, its step as in its train.py, and returns
    the seconds it took; with ``batches``, extrapolated from that many batches."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = torch.nn.L1Loss()
    features = [train.features[m] for m in ("l", "a", "v")]
    targets = train.labels[:, :1]  # (N, 1) as MulT's

    def run() -> float:
        model.train()
        order = torch.randperm(len(targets)).split(batch_size)
        timed = order[:batches] if batches else order
        started = time.perf_counter()
        for rows in timed:
            model.zero_grad()
            prediction, _ = model(*(x[rows] for x in features))
            loss = criterion(prediction, targets[rows])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.8)
            optimizer.step()
        return (time.perf_counter() - started) * len(order) / len(timed)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16, help="the paper's MOSI batch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", help="a MOSI-size file (default: made in a temporary folder)")
    parser.add_argument("--unaligned", action="store_true",
                        help="MOSI's unaligned shapes: audio 375 and vision 500 steps")
    parser.add_argument("--mult", type=Path, metavar="DIR",
                        help="a checkout of yaohungt/Multimodal-Transformer: time its model "
                             "side by side")
    parser.add_argument("--mult-batch-size", type=int, default=24, help="MulT's default")
    parser.add_argument("--mult-batches", type=int, metavar="N",
                        help="time N batches of each MulT epoch and extrapolate (its unaligned "
                             "epoch takes about ten minutes here)")
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
    train = dataset.split("train")
    mult = mult_model(args.mult, train) if args.mult else None
    run_mult_epoch = (mult_epoch(mult, train, args.mult_batch_size, args.mult_batches)
                      if mult else None)
    train_seconds: list[float] = []
    mult_seconds: list[float] = []

    def after_epoch(epoch: EpochResult, _: object) -> None:
        train_seconds.append(epoch.train_seconds)
        if run_mult_epoch:  # alternated with UCRN's: this machine's speed drifts by the minute
            mult_seconds.append(run_mult_epoch())

    result = fit(config, dataset, device="cpu", score_test=False, on_epoch=after_epoch)
    samples = len(train)
    epoch_seconds = statistics.median(train_seconds)

    test = dataset.split("test")
    evaluate(result.model, test, dataset, result.config, device="cpu")  # warm-up
    started = time.perf_counter()
    repeats = 3
    for _ in range(repeats):
        evaluate(result.model, test, dataset, result.config, device="cpu")
    eval_rate = repeats * len(test) / (time.perf_counter() - started)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    steps = "/".join(str(train.features[m].shape[1])
                     for m in result.config.model.modalities)
    print(f"UCRN trimodal, {result.params:,} parameters, batch {args.batch_size}, "
          f"{args.threads} threads, {samples} training samples, T = {steps}, dims 300/5/20")
    print(f"load data into memory: {load_seconds:.2f} s")
    print(f"training:   {samples / epoch_seconds:8.1f} samples/s  "
          f"{epoch_seconds:.2f} s per epoch (median of {len(train_seconds)}: "
          f"{', '.join(f'{s:.2f}' for s in train_seconds)})")
    print(f"evaluation: {eval_rate:8.1f} samples/s")
    print(f"peak memory (RSS): {peak_mib:.0f} MiB")
    if mult:
        median = statistics.median(mult_seconds)
        extrapolated = f", each from {args.mult_batches} batches" if args.mult_batches else ""
        print(f"MulT ({args.mult}), {sum(p.numel() for p in mult.parameters()):,} parameters, "
              f"batch {args.mult_batch_size}, its epochs alternated with UCRN's: {median:.2f} s "
              f"per epoch (median of {len(mult_seconds)}{extrapolated}: "
              f"{', '.join(f'{s:.2f}' for s in mult_seconds)}) → UCRN "
              f"{median / epoch_seconds:.1f}× faster")
        return
    longest = max(train.features[m].shape[1] for m in result.config.model.modalities)
    kind = "unaligned" if longest > 50 else "aligned"
    low, high = MULT_EPOCH_SECONDS[kind]
    span = f"{low:g}" if low == high else f"{low:g}–{high:g}"
    faster = (f"{low / epoch_seconds:.1f}" if low == high
              else f"{low / epoch_seconds:.1f}–{high / epoch_seconds:.1f}")
    print(f"vs MulT's reference code, {kind}, measured before 2026-11-28 ({span} s per "
          f"epoch): {faster}× faster (time it side by side with --mult DIR)")


if __name__ == "__main__":
    main()
