"""How sure the search is: its best trials trained again from other seeds before one is chosen.

A trial's validation score comes from one seed, and on MOSI the seed alone moves a
configuration by about as much as the search's gains: the trial best on one seed is often
the luckiest. So the paper's trial and the ``--finalists`` best of the others (by the first
metric, at each one's best epoch) are trained again with ``--finalist-seeds`` − 1 other
seeds, for as many epochs as the trial ran, selecting each checkpoint on validation as the
trial did. The seeds are the search's seed + 1, + 2, …: the evaluator's next seeds, so
``tuning/evaluate.py`` at the trial's length repeats each of these runs.

``best.json`` keeps the paper's configuration unless the best other finalist (on the mean
over seeds) is better than it with at least ``--confidence`` (a one-sided t test on the
seeds' pooled spread), and records how sure that choice is. The test split is still scored
once, on the chosen trial's own checkpoint. Each rerun is written to
``EXPERIMENT/finalists/`` as it finishes, so an interrupted search resumed with
``--resume`` redoes none of them.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import ray
from ray.tune import Callback

from tuning.space import trial_overrides
from tuning.trials import make_trainable, run_grid, stacked_seeds
from ucrn.files import atomic_write, check_directory
from ucrn.metrics import is_better


def rerun_seeds(seed: int, count: int) -> list[int]:
    """The seeds a finalist is trained again with (its own trial had ``seed``): the next
    ones, which the evaluator's runs of the same seeds repeat."""
    return [seed + k for k in range(1, count)]


def _key(trial: str, seed: int) -> str:
    return f"{trial[:8]}-seed{seed}"


def finished_reruns(folder: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}


def rescore(plan, resources, finalists: list[tuple[str, dict[str, Any], float, int]],
            say) -> dict[str, dict[int, float]]:
    """Each finalist's validation score by seed: its own trial's first, then its reruns'.

    ``finalists`` holds (trial id, trial config, its best score, the epochs it ran) in the
    order to report; each rerun trains as many epochs as its trial ran (early stopping may have
    stopped it), so that its seeds compare at one budget.
    """
    args = plan.args
    folder = check_directory(Path(plan.experiment) / "finalists", "experiment")
    seeds = rerun_seeds(args.seed, args.finalist_seeds)
    done = finished_reruns(folder)
    pending = [{"trial": trial, "seed": seed, "params": config, "epochs": epochs}
               for trial, config, _, epochs in finalists for seed in seeds
               if _key(trial, seed) not in done]
    if pending:
        say(f"finalists: {len(finalists)} trial(s) again with {len(seeds)} other seed(s) each "
            f"({len(pending)} run(s)), to choose on the mean over {len(seeds) + 1} seeds")
        _train(plan, resources, pending, folder)
        done = finished_reruns(folder)
    return {trial: {args.seed: own, **{seed: done[_key(trial, seed)]["value"] for seed in seeds
                                       if _key(trial, seed) in done}}
            for trial, _, own, _ in finalists}


def _train(plan, resources, pending: list[dict], folder: Path) -> None:
    """The reruns as one Tune experiment (no early stopping: each runs the trial's budget);
    on a GPU a finalist's reruns train side by side as one stacked computation
    (``ucrn.stack``: one architecture, their own seeds)."""
    base, metric = plan.base, plan.metric
    trainable = make_trainable(
        base, ray.put(plan.dataset), resources, str(folder / "ray" / "train"),
        overrides_of=lambda trial: {**trial_overrides(trial["rerun"]["params"], base),
                                    "seed": trial["rerun"]["seed"],
                                    "epochs": trial["rerun"]["epochs"],
                                    "patience": trial["rerun"]["epochs"]},
        run_name_of=lambda trial, _: _key(trial["rerun"]["trial"], trial["rerun"]["seed"]),
        stack_of=lambda trial: [{"rerun": {**trial["rerun"], "seed": seed}}
                                for seed in trial["rerun"]["seeds"]],
    )
    pending = stacked_reruns(pending, len(pending) if stacks_reruns(resources) else 1)
    run_grid(trainable, "rerun", pending, name="reruns", storage=str(folder / "ray"),
             resources=resources, args=plan.args,
             callbacks=[BestOfRun(folder, metric)], how_to_continue="continue with --resume")


def stacks_reruns(resources) -> bool:
    """Whether a finalist's reruns train as one stack: on a GPU, one worker per trial (on a
    CPU a stack is hardly faster than its runs, which run side by side there)."""
    return resources.gpus_per_worker > 0 and resources.workers == 1


def stacked_reruns(pending: list[dict], stack: int) -> list[dict]:
    """The pending reruns as trials of up to ``stack`` seeds of one finalist each."""
    return stacked_seeds(pending, "trial", stack)


class BestOfRun(Callback):
    """Keeps each rerun's best validation score over its epochs, and writes it when the
    rerun ends."""

    def __init__(self, folder: Path, metric: str):
        self.folder, self.metric = folder, metric
        self.best: dict[str, tuple[float, int]] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        kept = self.best.get(trial.trial_id)
        if value is not None and is_better(self.metric, value, kept[0] if kept else None):
            self.best[trial.trial_id] = (float(value), int(result.get("epoch", 0)))

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not trial.last_result.get("done"):
            return  # stopped before its end (Ctrl-C, a stall): still to do
        rerun = trial.config["rerun"]
        if stacked := trial.last_result.get("run_records"):  # several seeds, one stack
            for seed, text in zip(rerun["seeds"], json.loads(stacked), strict=True):
                record = json.loads(text)
                if "valid" in record:  # not stopped by a non-finite loss
                    name = self.metric.removeprefix("valid_")
                    self._write(rerun["trial"], seed, record["valid"][name],
                                record["best_epoch"])
        elif trial.trial_id in self.best:
            self._write(rerun["trial"], rerun["seeds"][0], *self.best[trial.trial_id])

    def _write(self, trial: str, seed: int, value: float, epoch: int) -> None:
        record = {"trial": trial, "seed": seed, "value": value, "best_epoch": epoch}
        atomic_write(self.folder / f"{_key(trial, seed)}.json",
                     lambda path: Path(path).write_text(json.dumps(record) + "\n"))


def summary(values: list[float]) -> dict[str, float | int]:
    """Mean, sample standard deviation (ddof 1; 0 for one seed) and the number of seeds."""
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "seeds": len(values)}


def choose(scores: dict[str, list[float]], paper: str | None, mode: str,
           confidence: float) -> tuple[str, dict[str, Any]]:
    """The finalist ``best.json`` takes, and how sure that choice is.

    With the paper's trial among the finalists, the best other finalist (on its mean over
    seeds) replaces it only when a one-sided t test on the finalists' pooled seed spread says
    it is better with at least ``confidence``; the seed that made a trial a finalist counts
    in its mean, so the bar also absorbs that luck. Without it, or with ``confidence`` 0,
    the best mean is chosen.
    """
    means = {trial: statistics.fmean(values) for trial, values in scores.items()}
    best = min if mode == "min" else max
    best_mean = best(means, key=means.get)
    if paper not in scores or len(scores) == 1:
        return best_mean, {"rule": "the finalist best on its mean over seeds"}
    challenger = best((trial for trial in means if trial != paper), key=means.get)
    sign = -1 if mode == "min" else 1
    improvement = sign * (means[challenger] - means[paper])  # > 0: the challenger is better
    spread, freedom = pooled_std(scores.values())
    error = spread * math.sqrt(1 / len(scores[challenger]) + 1 / len(scores[paper]))
    sure = student_t_cdf(improvement / error, freedom) if error > 0 else None
    if confidence == 0:  # the best mean, however slight its lead
        chosen = best_mean
    else:
        chosen = challenger if sure is not None and sure >= confidence else paper
    return chosen, {
        "rule": f"the paper's configuration unless another finalist is better with "
                f"confidence ≥ {confidence:g} (one-sided t test, pooled seed spread)",
        "challenger": challenger, "improvement": improvement, "standard_error": error,
        "degrees_of_freedom": freedom, "confidence": sure, "asked": confidence,
        "kept_paper": chosen == paper}


def pooled_std(groups) -> tuple[float, int]:
    """The seeds' standard deviation pooled over the finalists, and its degrees of freedom."""
    groups = [list(values) for values in groups if len(values) > 1]
    freedom = sum(len(values) - 1 for values in groups)
    if not freedom:
        return 0.0, 0
    squares = sum((len(values) - 1) * statistics.variance(values) for values in groups)
    return math.sqrt(squares / freedom), freedom


def student_t_cdf(t: float, freedom: int) -> float:
    """P(T ≤ t) for Student's t with whole degrees of freedom (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan2(t, math.sqrt(freedom))
    cos = math.cos(theta)
    power = freedom % 2  # the series' powers of cos θ: 1, 3, …, ν − 2 (odd ν); 0, 2, … (even)
    term = cos if power else 1.0
    series = 0.0
    while power <= freedom - 2:
        series += term
        term *= cos * cos * (power + 1) / (power + 2)
        power += 2
    if freedom % 2:
        inside = 2 / math.pi * (theta + math.sin(theta) * series)
    else:
        inside = math.sin(theta) * series
    return (1 + inside) / 2


def decision_line(record: dict[str, Any], metric: str) -> str | None:
    """best.json's choice among the finalists in one line, with how sure it is."""
    decision = record.get("decision")
    if not decision:
        return None
    chosen = record["chosen"]
    scored = (f"{metric} {chosen['mean']:.4f} ± {chosen['std']:.4f} over "
              f"{chosen['seeds']} seeds")
    if "challenger" not in decision:
        return f"best.json takes the finalist best on its mean: {scored}"
    other, sure, gain = decision["challenger"][:8], decision["confidence"], decision["improvement"]
    by = f"by {abs(gain):.4f} ± {decision['standard_error']:.4f} on the mean over seeds"
    if sure is None:
        return (f"best.json keeps the paper's configuration ({scored}): the finalists' seeds "
                f"show no spread to judge {other} by")
    if decision["kept_paper"]:
        return (f"best.json keeps the paper's configuration ({scored}): the best other "
                f"finalist, {other}, is {'better' if gain > 0 else 'worse'} {by}, "
                f"{_percent(sure)} sure to be better, short of the {_percent(decision['asked'])} "
                "asked")
    return (f"best.json takes {other} ({scored}): better than the paper's configuration "
            f"{by}, {_percent(sure)} sure (t test, {decision['degrees_of_freedom']} degrees of "
            "freedom)")


def _percent(probability: float) -> str:
    return "over 99 %" if probability > 0.99 else f"{probability:.0%}".replace("%", " %")
