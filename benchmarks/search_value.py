"""What a search is worth: its pick against the paper's defaults, each over several seeds.

    python benchmarks/search_value.py --data F.h5 [--seeds 5]
        [--search-args "--num-samples 32 --epochs 20"] [--evaluate-args "--set ..."]
        [--defaults DIR] [--json]

Runs ``tuning/search.py`` as given, then ``tuning/evaluate.py`` (no ablations), ``--seeds``
seeds each, on three configurations: the search's pick at the length its trial ran (what
the search measured: its score there against the search's own gives the winner's curse),
the pick as ``best.json`` has it (the config's full training budget), and the paper's
defaults (``{}``: 40 epochs, patience 10). Each evaluated seed trains, selects on valid and
is scored on test once. Prints each configuration's validation and test means ± standard
deviations, the winner's curse (how much better the search said its pick was than the
pick's seed mean at the trial's length, in seed standard deviations; the search's finalist
seeds are the evaluator's first ones, which repeat them, so the curse is also given over
the evaluated seeds the search did not run), whether the pick beats the defaults (valid
mean no worse, test Non0_acc_2 mean at most 0.01 below), and the wall times.
A ``--storage`` or ``--name`` in ``--search-args`` keeps the search there (by default it
goes to a temporary folder). ``--defaults DIR`` keeps the paper defaults' evaluation in DIR
and reuses it in a later run of the same data, seeds, evaluation options and code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tuning.finalists import decision_line, summary
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
    """Per-seed valid ``metric`` and test metrics of an evaluation's full-model runs, in the
    order of their seeds (``seed``)."""
    runs = sorted((json.loads(p.read_text()) for p in (out / "runs").glob("full-seed*.json")),
                  key=lambda run: run["seed"])
    scores = {"seed": [r["seed"] for r in runs],
              f"valid {metric}": [r["valid"][metric] for r in runs]}
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
    parser.add_argument("--defaults", metavar="DIR",
                        help="keep the paper defaults' evaluation here, and reuse it")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        search_args = shlex.split(args.search_args)
        search_seconds = run([sys.executable, str(ROOT / "tuning" / "search.py"),
                              "--data", args.data, "--storage", str(folder), "--name", "s",
                              *search_args])
        best_json = str(experiment_folder(folder, search_args) / "best.json")
        best = json.loads(Path(best_json).read_text())
        metric = best["search"]["metric"].removeprefix("valid_")
        length = str(best["search"]["trial_epochs"])
        configurations = {  # the defaults first: the pick may be their configuration
            "paper defaults": [],
            "pick at trial length": ["--config", best_json, "--epochs", length,
                                     "--set", f"patience={length}"],
            "search pick": ["--config", best_json],
        }
        evaluate = [sys.executable, str(ROOT / "tuning" / "evaluate.py")]
        common = ["--data", args.data, "--seeds", str(args.seeds), "--ablations", "none",
                  *shlex.split(args.evaluate_args)]
        seconds, results, outs = {"search": search_seconds}, {}, {}
        for name, config in configurations.items():
            out = folder / name.replace(" ", "-")
            if name == "paper defaults" and args.defaults:
                out = kept_evaluation(Path(args.defaults), [*common, *config])
            if name == "search pick" and trains_alike(outs["paper defaults"], best_json):
                seconds[name], results[name] = 0.0, results["paper defaults"]
                continue  # the same training: the defaults' runs are the pick's
            # the configuration's own options last: the trial's length stands
            seconds[name] = run([*evaluate, *common, *config, "--out", str(out)])
            results[name], outs[name] = seed_scores(out, metric), out
    report = _report(args, best, metric, int(length), results, seconds)
    if args.json:
        print(json.dumps(report))
        return 0
    _print(report, args, metric)
    return 0


def experiment_folder(folder: Path, search_args: list[str]) -> Path:
    """Where the search wrote: ``folder``/s, or where ``--storage`` and ``--name`` among
    its own options put it (the last of each wins, as in the search's parser)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--storage", default=str(folder))
    parser.add_argument("--name", default="s")
    given, _ = parser.parse_known_args(search_args)
    return Path(given.storage) / given.name


def trains_alike(evaluated: Path, config_file: str) -> bool:
    """Whether ``config_file`` trains as the evaluation in ``evaluated`` did (its runs' own
    seeds and input sizes aside)."""
    from ucrn.config import apply_overrides, config_from_dict, load_config
    from ucrn.engine import training_differences

    run = json.loads(next((evaluated / "runs").glob("full-seed*.json")).read_text())
    ran = config_from_dict(run["config"])
    wanted = apply_overrides(load_config(config_file), {"seed": ran.train.seed})
    wanted.model.input_dims = ran.model.input_dims
    return not training_differences(ran, wanted)


def kept_evaluation(folder: Path, options: list[str]) -> Path:
    """DIR for an evaluation kept between runs, under a name made of its options, the data
    file's size and time and this checkout's code: other inputs get another folder."""
    data = Path(options[options.index("--data") + 1])
    code = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                          capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "diff", "HEAD"], capture_output=True,
                           check=False).stdout
    key = json.dumps([options, str(data.resolve()), data.stat().st_size,
                      data.stat().st_mtime_ns, code, hashlib.sha256(dirty).hexdigest()])
    return folder / f"defaults-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _report(args, best: dict, metric: str, length: int, results: dict,
            seconds: dict) -> dict:
    chosen = best["search"]["seeds"].get("chosen")
    reported = chosen["mean"] if chosen else best["metrics"]["valid"][metric]
    searched = set(chosen.get("run_seeds", [])) if chosen else {best["train"]["seed"]}
    at_length = results["pick at trial length"]
    values = at_length[f"valid {metric}"]
    mean, std = mean_std(values)
    fresh = [v for seed, v in zip(at_length["seed"], values, strict=True)
             if seed not in searched]
    report = {
        "metric": metric, "seeds": args.seeds, "trial_epochs": length,
        "epochs": best["train"]["epochs"],
        "configurations": {name: {key: dict(zip(("mean", "std"), mean_std(values),
                                                 strict=True))
                                  for key, values in scores.items() if key != "seed"}
                           for name, scores in results.items()},
        "search_reported_valid": reported,
        "search_reported_seeds": chosen["seeds"] if chosen else 1,
        "search_seeds": sorted(searched),
        "winners_curse_in_seed_std": _curse(mean, reported, std, metric),
        "fresh_seeds": len(fresh),
        "winners_curse_on_fresh_seeds": (_curse(statistics.fmean(fresh), reported, std, metric)
                                         if fresh else None),
        "pick_is_papers": bool(best["search"]["seeds"].get("decision", {}).get("kept_paper")),
        "finalists": best["search"]["seeds"],  # their seed scores and the decision
        "seconds": {name: round(value, 1) for name, value in seconds.items()},
        "per_seed": results,
    }
    report["pick_beats_defaults"] = beats(report["configurations"], metric)
    return report


def _curse(mean: float, reported: float, std: float, metric: str) -> float | None:
    """How much better the search said than the seeds show, in seed std (positive:
    optimistic)."""
    optimism = (mean - reported) if mode(metric) == "min" else (reported - mean)
    return optimism / std if std else None


def _print(report: dict, args, metric: str) -> None:
    print(f"{args.seeds} seeds each, data {args.data}; the pick's trial ran "
          f"{report['trial_epochs']} epochs, best.json trains {report['epochs']}"
          f"{'; the pick is the paper configuration' if report['pick_is_papers'] else ''}")
    for name, scores in report["configurations"].items():
        cells = ", ".join(f"{key} {value['mean']:.4f} ± {value['std']:.4f}"
                          for key, value in scores.items())
        print(f"{name}: {cells}")
    curse, fresh = report["winners_curse_in_seed_std"], report["winners_curse_on_fresh_seeds"]
    at_length = report["configurations"]["pick at trial length"][f"valid {metric}"]["mean"]
    print(f"the search reported valid {metric} {report['search_reported_valid']:.4f} over "
          f"seeds {report['search_seeds']}; its pick's {args.seeds}-seed mean at the trial's "
          f"length is {at_length:.4f}: winner's curse "
          f"{'—' if curse is None else f'{curse:+.2f}'} seed std (positive: optimistic); on "
          f"the {report['fresh_seeds']} seed(s) the search did not run: "
          f"{'—' if fresh is None else f'{fresh:+.2f}'}")
    if line := decision_line(report["finalists"], f"valid_{metric}"):
        print(f"the search: {line}")
    print(f"the pick beats the paper's defaults (valid mean no worse, test Non0_acc_2 mean "
          f"at most 0.01 below): {'yes' if report['pick_beats_defaults'] else 'no'}")
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items()))


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
