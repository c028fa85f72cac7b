"""Trials per hour of ``tuning/search.py`` with one trial at a time and with two.

    python benchmarks/search_throughput.py [--trials 16] [--epochs 3] [--scale 0.1]

Runs the same search twice (same seed, same space, same data) with ``--max-concurrent 1``
and ``--max-concurrent 2``, each in its own process with its own local Ray, and prints the
search time (Tune's ``fit``, without Ray's start), trials per hour and their ratio.
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


def run(concurrency: int, data: Path, storage: Path, args: argparse.Namespace) -> float:
    command = [
        sys.executable, str(SEARCH), "--data", str(data), "--num-samples", str(args.trials),
        "--epochs", str(args.epochs), "--grace-period", "1", "--max-concurrent",
        str(concurrency), "--storage", str(storage), "--name", f"c{concurrency}",
    ]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    record = json.loads((storage / f"c{concurrency}" / "best.json").read_text())
    print(f"--max-concurrent {concurrency}: search {record['search']['seconds']:.0f} s "
          f"(process {wall:.0f} s), {args.trials} trials")
    return record["search"]["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--scale", type=float, default=0.1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = synthesize("mosi", Path(folder) / "mosi.h5", scale=args.scale)
        one = run(1, data, Path(folder), args)
        two = run(2, data, Path(folder), args)
    per_hour = [args.trials * 3600 / seconds for seconds in (one, two)]
    print(f"trials/hour: {per_hour[0]:.0f} (1 at a time), {per_hour[1]:.0f} (2 at a time); "
          f"ratio {per_hour[1] / per_hour[0]:.2f}")


if __name__ == "__main__":
    main()
