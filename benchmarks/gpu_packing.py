"""Trials per hour on one GPU with 1, 2, 4 and 8 trials packed on it (fractional GPUs).

    python benchmarks/gpu_packing.py [--trials 16] [--epochs 3] [--scale 1.0] [--packing 1 2 4 8]
    python benchmarks/gpu_packing.py --dry-run      # the whole path on CPU, in seconds

For each packing k, runs ``tuning/search.py`` on MOSEI-size synthetic data with
``--max-concurrent k --gpus-per-worker 1/k`` (each in its own process with its own local Ray)
and prints the search time (Tune's ``fit``, without Ray's start), trials per hour, the gain
over one trial at a time, and the GPU's name. ``--dry-run`` runs the same commands with tiny
data, one epoch and no GPU (``--gpus-per-worker`` left out), to check the script end to end
where no GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ucrn.data.synthetic import synthesize

SEARCH = Path(__file__).resolve().parents[1] / "tuning" / "search.py"


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"


def run(packing: int, data: Path, storage: Path, args: argparse.Namespace) -> float:
    """One search with ``packing`` trials at once; Tune's seconds for it."""
    command = [
        sys.executable, str(SEARCH), "--data", str(data), "--num-samples", str(args.trials),
        "--epochs", str(args.epochs), "--grace-period", str(args.epochs),
        "--max-concurrent", str(packing), "--storage", str(storage), "--name", f"k{packing}",
        "--set", "task=regression",
    ]
    if not args.dry_run:
        command += ["--gpus-per-worker", f"{1 / packing:.4f}"]
    started = time.perf_counter()
    finished = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    if finished.returncode != 0:
        sys.exit(f"packing {packing}: the search failed:\n{finished.stderr[-2000:]}")
    wall = time.perf_counter() - started
    seconds = json.loads((storage / f"k{packing}" / "best.json").read_text())["search"]["seconds"]
    print(f"{packing} per GPU: search {seconds:.0f} s (process {wall:.0f} s), "
          f"{args.trials * 3600 / seconds:.0f} trials/hour", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="of MOSEI's size")
    parser.add_argument("--packing", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny data, one epoch, no GPU: checks the script end to end")
    args = parser.parse_args()
    if args.dry_run:
        args.trials, args.epochs, args.scale, args.packing = 2, 1, 0.002, [1, 2]
    print(f"GPU: {gpu_name()}; MOSEI-size synthetic data at scale {args.scale:g}, "
          f"{args.trials} trials × {args.epochs} epochs per packing", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        data = synthesize("mosei", Path(folder) / "mosei.h5", scale=args.scale)
        seconds = {k: run(k, data, Path(folder), args) for k in args.packing}
    base = seconds[args.packing[0]]
    for packing, spent in seconds.items():
        print(f"packing {packing}: {base / spent:.2f}× the trials per hour of packing "
              f"{args.packing[0]}")


if __name__ == "__main__":
    main()
