"""What a search is worth: its pick against the paper's defaults, each over several seeds.

    python benchmarks/search_value.py --data F.h5 [--seeds 5] [--epochs N]
        [--search-args "--num-samples 32 --epochs 20"] [--evaluate-args "--set ..."] [--json]

Runs ``tuning/search.py`` as given, then ``tuning/evaluate.py`` (no ablations) on the
search's ``best.json`` and on the paper's defaults, ``--seeds`` seeds each and the same
``--epochs`` (default: best.json's, the search's trial budget). Each evaluated seed trains,
selects on valid and is scored on test once. Prints both configurations' validation and
test means ± standard deviations, the winner's curse (how much better the search's own
validation score is than its pick's seed mean, in seed standard deviations) and the wall
times.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tuning.finalists import summary
from ucrn.metrics import mode

ROOT = Path(__file__).resolve().parents[1]
TEST_METRICS = ("Non0_acc_2", "MAE")


def run(command: list[str]) -> float:
    """Run a command; its wall time, or exit with its last lines when it fails."""
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        sys.exit(f"search_value: {' '.join(command[:3])} … failed "
                 f"({finished.returncode}):\n{finished.stderr[-2000:]}")
    return time.perf_counter() - started


def seed_scores(out: Path, metric: str) -> dict[str, list[float]]:
    """Per-seed valid ``metric`` and test metrics of an evaluation's full-model runs."""
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("full-seed*.json"))]
    scores = {f"valid {metric}": [r["valid"][metric] for r in runs]}
    for name in TEST_METRICS:
        scores[f"test {name}"] = [r["test"][name] for r in runs]
    return scores


def mean_std(values: list[float]) -> tuple[float, float]:
    found = summary(values)
    return found["mean"], found["std"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the .h5 data file")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per configuration")
    parser.add_argument("--epochs", type=int, help="both evaluations' epochs (default: "
                        "best.json's)")
    parser.add_argument("--search-args", default="", help="options for tuning/search.py")
    parser.add_argument("--evaluate-args", default="",
                        help="options for both evaluations, e.g. '--set urm_layers=1'")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        search_seconds = run([sys.executable, str(ROOT / "tuning" / "search.py"),
                              "--data", args.data, "--storage", str(folder), "--name", "s",
                              *shlex.split(args.search_args)])
        best = json.loads((folder / "s" / "best.json").read_text())
        metric = best["search"]["metric"].removeprefix("valid_")
        epochs = args.epochs or best["train"]["epochs"]
        common = ["--data", args.data, "--seeds", str(args.seeds), "--ablations", "none",
                  "--epochs", str(epochs), *shlex.split(args.evaluate_args)]
        evaluate = [sys.executable, str(ROOT / "tuning" / "evaluate.py")]
        seconds, results = {"search": search_seconds}, {}
        for name, config in (("search pick", ["--config", str(folder / "s" / "best.json")]),
                             ("paper defaults", [])):
            out = folder / name.replace(" ", "-")
            seconds[name] = run([*evaluate, *config, *common, "--out", str(out)])
            results[name] = seed_scores(out, metric)
    pick = results["search pick"][f"valid {metric}"]
    reported = best["metrics"]["valid"][metric]
    mean, std = mean_std(pick)
    # how much better the search said its pick was than its seeds show (positive: optimistic)
    optimism = (mean - reported) if mode(metric) == "min" else (reported - mean)
    report = {
        "metric": metric, "seeds": args.seeds, "epochs": epochs,
        "configurations": {name: {key: dict(zip(("mean", "std"), mean_std(values),
                                                 strict=True))
                                  for key, values in scores.items()}
                           for name, scores in results.items()},
        "search_reported_valid": reported,
        "winners_curse_in_seed_std": optimism / std if std else None,
        "seconds": {name: round(value, 1) for name, value in seconds.items()},
    }
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{args.seeds} seeds each, {epochs} epochs, data {args.data}")
    for name, scores in report["configurations"].items():
        cells = ", ".join(f"{key} {value['mean']:.4f} ± {value['std']:.4f}"
                          for key, value in scores.items())
        print(f"{name}: {cells}")
    curse = report["winners_curse_in_seed_std"]
    print(f"the search reported valid {metric} {reported:.4f}; its pick's seed mean is "
          f"{mean:.4f}: winner's curse {'—' if curse is None else f'{curse:+.2f}'} seed std "
          "(positive: the search was optimistic)")
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
