"""How often UCRN fails to train: configurations that never beat the constant predictor.

    python benchmarks/trainability.py [--data F.h5 ...] [--configs 32] [--epochs 8] [--seed 0]
    python benchmarks/trainability.py --paper --seeds 10 --set use_sqil=false --epochs 40

Without ``--paper``: draws ``--configs`` configurations from the search's default space
(seeded, the same draws for every data file), trains each for ``--epochs`` epochs (the default
trial length of ``python tuning/search.py``) and counts the *dead* ones: best validation MAE
within 3 % of the constant predictor's (the training median, which an L1 model that learned
nothing predicts). With ``--paper``: the paper's default configuration over ``--seeds`` seeds
(patience as configured). The default data is the embedded synthetic MOSI. ``--jobs`` runs
that many trainings at once, one thread each.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tuning.space import DEFAULT_SPACE, draw, trial_overrides  # noqa: E402
from ucrn.config import Config, apply_overrides, parse_set_options  # noqa: E402
from ucrn.data.layout import load_dataset  # noqa: E402
from ucrn.data.synthetic import ensure_default_data  # noqa: E402
from ucrn.engine import fit  # noqa: E402

DEAD_WITHIN = 0.03  # a run is dead when its best valid MAE ≥ (1 − 3 %) × the constant's

_dataset = None


def _load(path: str) -> None:
    global _dataset
    torch.set_num_threads(1)
    _dataset = load_dataset(path)


def constant_mae(dataset) -> float:
    """Valid MAE of predicting the training median for every sample."""
    median = float(dataset.split("train").labels[:, 0].median())
    return float((dataset.split("valid").labels[:, 0] - median).abs().mean())


def _train(overrides: dict) -> tuple[float, int, float]:
    config = apply_overrides(Config(), overrides)
    started = time.perf_counter()
    result = fit(config, _dataset, device="cpu", score_test=False)
    return result.valid["MAE"], result.best_epoch, time.perf_counter() - started


def runs_to_make(args: argparse.Namespace) -> list[tuple[str, dict]]:
    fixed = parse_set_options(args.set or [])
    if args.paper:
        return [(f"seed {seed}", {**fixed, "seed": seed, "epochs": args.epochs})
                for seed in range(args.seeds)]
    rng = random.Random(args.seed)
    base = Config()
    runs = []
    for index in range(args.configs):
        drawn = draw(DEFAULT_SPACE, rng)
        overrides = {**trial_overrides(drawn, base), **fixed, "epochs": args.epochs,
                     "patience": args.epochs, "seed": args.seed + index}
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in drawn.items())
        runs.append((shown, overrides))
    return runs


def measure(path: Path, runs: list[tuple[str, dict]], jobs: int) -> int:
    dataset = load_dataset(path)
    constant = constant_mae(dataset)
    modalities = ",".join(dataset.modalities)
    print(f"\n{path} · modalities {modalities} · constant predictor valid MAE {constant:.4f} "
          f"· dead when best valid MAE ≥ {(1 - DEAD_WITHIN) * constant:.4f}", flush=True)
    started = time.perf_counter()
    overrides = [{"modalities": modalities, **o} for _, o in runs]
    with ProcessPoolExecutor(jobs, initializer=_load, initargs=(str(path),)) as pool:
        results = list(pool.map(_train, overrides))
    dead = 0
    for (shown, _), (mae, best_epoch, seconds) in zip(runs, results, strict=True):
        is_dead = mae >= (1 - DEAD_WITHIN) * constant
        dead += is_dead
        print(f"{'DEAD' if is_dead else 'ok  '} valid MAE {mae:.4f} ({mae / constant:.3f} of "
              f"constant) best epoch {best_epoch:2d} {seconds:5.1f} s · {shown}")
    maes = np.array([r[0] for r in results])
    print(f"dead: {dead} of {len(runs)} · valid MAE median {np.median(maes):.4f}, best "
          f"{maes.min():.4f} · {time.perf_counter() - started:.0f} s", flush=True)
    return dead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", help="data files (default: synthetic MOSI)")
    parser.add_argument("--configs", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--paper", action="store_true",
                        help="the paper's default configuration over --seeds seeds")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    runs = runs_to_make(args)
    for path in args.data or [ensure_default_data()]:
        measure(Path(path), runs, args.jobs)


if __name__ == "__main__":
    main()
