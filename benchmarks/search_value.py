"""What a search is worth: its pick against the paper's defaults, each over several seeds.

    python benchmarks/search_value.py --data F.h5 [--seeds 5]
        [--search-args "--num-samples 32 --epochs 20"] [--evaluate-args "--set ..."] [--json]

Runs ``tuning/search.py`` as given, then ``tuning/evaluate.py`` (no ablations), ``--seeds``
seeds each, on three configurations: the search's pick at the length its trial ran (what
the search measured: its score there against the search's own gives the winner's curse),
the pick as ``best.json`` has it (the config's full training budget), and the paper's
defaults (``{}``: 40 epochs, patience 10). Each evaluated seed trains, selects on valid and
is scored on test once. Prints each configuration's validation and test means ± standard
deviations, the winner's curse (how much better the search said its pick was than the
pick's seed mean at the trial's length, in seed standard deviations), whether the pick
beats the defaults (valid mean no worse, test Non0_acc_2 mean at most 0.01 below), and the
wall times.
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
    parser.add_argument("--search-args", default="", help="options for tuning/search.py")
    parser.add_argument("--evaluate-args", default="",
                        help="options for every evaluation, e.g. '--set urm_layers=1' (an "
                        "--epochs here leaves the trial-length evaluation at its length)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        search_seconds = run([sys.executable, str(ROOT / "tuning" / "search.py"),
                              "--data", args.data, "--storage", str(folder), "--name", "s",
                              *shlex.split(args.search_args)])
        best_json = str(folder / "s" / "best.json")
        best = json.loads(Path(best_json).read_text())
        metric = best["search"]["metric"].removeprefix("valid_")
        length = str(best["search"]["trial_epochs"])
        configurations = {
            "pick at trial length": ["--config", best_json, "--epochs", length,
                                     "--set", f"patience={length}"],
            "search pick": ["--config", best_json],
            "paper defaults": [],
        }
        evaluate = [sys.executable, str(ROOT / "tuning" / "evaluate.py")]
        common = ["--data", args.data, "--seeds", str(args.seeds), "--ablations", "none"]
        seconds, results = {"search": search_seconds}, {}
        for name, config in configurations.items():
            out = folder / name.replace(" ", "-")
            # the configuration's own options last: the trial's length stands
            seconds[name] = run([*evaluate, *common, *shlex.split(args.evaluate_args),
                                 *config, "--out", str(out)])
            results[name] = seed_scores(out, metric)
    chosen = best["search"]["seeds"].get("chosen")
    reported = chosen["mean"] if chosen else best["metrics"]["valid"][metric]
    mean, std = mean_std(results["pick at trial length"][f"valid {metric}"])
    # how much better the search said its pick was than its seeds show (positive: optimistic)
    optimism = (mean - reported) if mode(metric) == "min" else (reported - mean)
    report = {
        "metric": metric, "seeds": args.seeds, "trial_epochs": int(length),
        "epochs": best["train"]["epochs"],
        "configurations": {name: {key: dict(zip(("mean", "std"), mean_std(values),
                                                 strict=True))
                                  for key, values in scores.items()}
                           for name, scores in results.items()},
        "search_reported_valid": reported,
        "search_reported_seeds": chosen["seeds"] if chosen else 1,
        "winners_curse_in_seed_std": optimism / std if std else None,
        "seconds": {name: round(value, 1) for name, value in seconds.items()},
    }
    report["pick_beats_defaults"] = beats(report["configurations"], metric)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{args.seeds} seeds each, data {args.data}; the pick's trial ran {length} epochs, "
          f"best.json trains {report['epochs']}")
    for name, scores in report["configurations"].items():
        cells = ", ".join(f"{key} {value['mean']:.4f} ± {value['std']:.4f}"
                          for key, value in scores.items())
        print(f"{name}: {cells}")
    curse = report["winners_curse_in_seed_std"]
    print(f"the search reported valid {metric} {reported:.4f} over "
          f"{report['search_reported_seeds']} seed(s); its pick's {args.seeds}-seed mean at "
          f"the trial's length is {mean:.4f}: winner's curse "
          f"{'—' if curse is None else f'{curse:+.2f}'} seed std (positive: optimistic)")
    print(f"the pick beats the paper's defaults (valid mean no worse, test Non0_acc_2 mean "
          f"at most 0.01 below): {'yes' if report['pick_beats_defaults'] else 'no'}")
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items()))
    return 0


def beats(configurations: dict[str, dict], metric: str) -> bool:
    """Whether the pick (at best.json's budget) is no worse than the paper's defaults on the
    validation mean and at most 0.01 below them on the test Non0_acc_2 mean."""
    pick, paper = configurations["search pick"], configurations["paper defaults"]
    valid_pick, valid_paper = pick[f"valid {metric}"]["mean"], paper[f"valid {metric}"]["mean"]
    no_worse = valid_pick <= valid_paper if mode(metric) == "min" else valid_pick >= valid_paper
    return no_worse and (pick["test Non0_acc_2"]["mean"]
                         >= paper["test Non0_acc_2"]["mean"] - 0.01)


if __name__ == "__main__":
    sys.exit(main())
