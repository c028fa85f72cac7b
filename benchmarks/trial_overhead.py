"""What a Ray Tune trial costs on top of the same training in-process.

    python benchmarks/trial_overhead.py [--epochs 3] [--scale 0.1] [--repeats 2] [--workers 1]

Trains the same configuration (default UCRN, synthetic MOSI at ``--scale``) for ``--epochs``
epochs twice: with ``ucrn.engine.fit`` in this process, as ``ucrn train`` does, and as one
Tune trial, as ``tuning/search.py`` runs it: in the trial's own process for one worker, as a
Ray Train worker group with DDP for ``--workers`` ≥ 2. Ray is started (and the data put in
its object store) before the clock starts. Prints both times, their difference, and where
the trial's time went as seen from inside it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import tuning  # noqa: F401  (sets Ray's environment before Ray is imported)
from ucrn.config import Config, apply_overrides
from ucrn.data.layout import load_dataset
from ucrn.data.synthetic import synthesize
from ucrn.engine import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    import ray
    from ray import tune

    from tuning.ray_start import start_ray
    from tuning.trials import Resources, make_trainable

    with tempfile.TemporaryDirectory() as folder:
        dataset = load_dataset(synthesize("mosi", Path(folder) / "mosi.h5", scale=args.scale))
        config = apply_overrides(Config(), {"epochs": args.epochs, "patience": args.epochs})

        in_process = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            fit(config, dataset, device="cpu", score_test=False)
            in_process.append(time.perf_counter() - started)

        session = start_ray(num_cpus=2)
        data_ref = ray.put(dataset)
        resources = Resources(workers=args.workers, cpus_per_worker=1.9 / args.workers)
        trainable = make_trainable(config, data_ref, resources, f"{folder}/train",
                                   overrides_of=lambda trial: {})
        as_trial, inside = [], []
        for repeat in range(args.repeats):
            tuner = tune.Tuner(trainable, param_space={}, run_config=tune.RunConfig(
                name=f"overhead-{repeat}", storage_path=folder, verbose=0))
            started = time.perf_counter()
            grid = tuner.fit()
            as_trial.append(time.perf_counter() - started)
            history = grid[0].metrics_dataframe
            inside.append(float(history["epoch_seconds"].sum()))
        ray.shutdown()

    plain, trial = statistics.median(in_process), statistics.median(as_trial)
    training_inside = statistics.median(inside)
    print(f"{len(dataset.split('train'))} training samples, {args.epochs} epochs, default "
          f"UCRN, {session.cpus:g} CPUs; median of {args.repeats}")
    print(f"in-process fit (ucrn train):     {plain:6.1f} s  "
          f"({', '.join(f'{s:.1f}' for s in in_process)})")
    kind = "one worker" if args.workers == 1 else f"{args.workers} Train workers"
    print(f"one Tune trial ({kind}):       {trial:6.1f} s  "
          f"({', '.join(f'{s:.1f}' for s in as_trial)})")
    print(f"overhead per trial:              {trial - plain:6.1f} s")
    print(f"  of which the trial's epochs:   {training_inside:6.1f} s (training + validation "
          "inside the worker)")
    print(f"  start-up, reporting, teardown: {trial - training_inside:6.1f} s")


if __name__ == "__main__":
    main()
