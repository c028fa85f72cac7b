"""How sure the search is: its best trials trained again from other seeds before one is chosen.

A trial's validation score comes from one seed, and on MOSI the seed alone moves a
configuration by about as much as the search's gains: the trial best on one seed is often
the luckiest. So the ``--finalists`` best trials (by the first metric, at each one's best
epoch) are trained again with ``--finalist-seeds`` − 1 other seeds, for as many epochs as
the trial ran, selecting each checkpoint on validation as the trial did; ``best.json``'s
configuration is the finalist best on the mean over its seeds. The test split is still
scored once, on the chosen trial's own checkpoint. Each rerun is written to
``EXPERIMENT/finalists/`` as it finishes, so an interrupted search resumed with
``--resume`` redoes none of them.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import ray
from ray.tune import Callback

from tuning.space import trial_overrides
from tuning.trials import make_trainable, run_grid, stacked_seeds
from ucrn.files import atomic_write, check_directory
from ucrn.metrics import is_better

SEED_STEP = 1000  # a rerun's seed: the search's seed + SEED_STEP × k (far from the trials')


def rerun_seeds(seed: int, count: int) -> list[int]:
    """The seeds a finalist is trained again with (its own trial had ``seed``)."""
    return [seed + SEED_STEP * k for k in range(1, count)]


def _key(trial: str, seed: int) -> str:
    return f"{trial[:8]}-seed{seed}"


def finished_reruns(folder: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}


def rescore(plan, resources, finalists: list[tuple[str, dict[str, Any], float, int]],
            say) -> dict[str, list[float]]:
    """Each finalist's validation scores over seeds: its own trial's first, then its reruns'.

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
        say(f"finalists: the best {len(finalists)} trial(s) again with {len(seeds)} other "
            f"seed(s) each ({len(pending)} run(s)), to choose on the mean over "
            f"{len(seeds) + 1} seeds")
        _train(plan, resources, pending, folder)
        done = finished_reruns(folder)
    scores = {}
    for trial, _, own, _ in finalists:
        scores[trial] = [own] + [done[_key(trial, seed)]["value"] for seed in seeds
                                 if _key(trial, seed) in done]
    return scores


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
