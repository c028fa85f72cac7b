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

The reruns are trials of the search's own Tune experiment (``FinalistSearch`` hands them out
once Optuna's trials are all proposed): the paper's as soon as its trial has ended, the
others' when every trial has, so they fill the slots the search's last trials leave idle
and train in the processes the search already has; a slot the race would leave idle trains
the leader's next seed ahead of need. Any rerun still missing afterwards (an
experiment of another version, say) trains in an experiment of its own (``rescore``).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import ray
from ray.tune import Callback
from ray.tune.search import Searcher

from tuning.space import RERUN_KEY, at_point, is_rerun, trial_overrides
from tuning.study import StudySearch
from tuning.trials import make_trainable, run_grid, stacked_seeds
from ucrn.files import atomic_write, check_directory
from ucrn.metrics import is_better
from ucrn.metrics import mode as metric_mode


def rerun_seeds(seed: int, count: int) -> list[int]:
    """The seeds a finalist is trained again with (its own trial had ``seed``): the next
    ones, which the evaluator's runs of the same seeds repeat."""
    return [seed + k for k in range(1, count)]


def most_seeds(finalist_seeds: int, winner_seeds: int) -> int:
    """The seeds behind a finalist's score at most: the race's, or the leader's beyond them."""
    return max(finalist_seeds, winner_seeds)


def most_reruns(finalists: int, finalist_seeds: int, winner_seeds: int = 1) -> int:
    """The reruns a search may add to its trials: the paper's and the ``finalists`` others'."""
    return (most_seeds(finalist_seeds, winner_seeds) - 1) * (finalists + 1) if finalists else 0


def next_reruns(scores: dict[str, dict[int, float | None]], paper: str | None,
                challengers: list[str], seeds: list[int], mode: str, confidence: float,
                racing: bool, raced: int | None = None) -> list[tuple[str, int]]:
    """The (finalist, seed) reruns still to train: those not in ``scores``, which holds each
    finalist's scores by seed so far, its own trial's included (None: a rerun that ended
    without one). The first ``raced`` of ``seeds`` (all by default) are the race's below;
    once it has ended, the finalist ``choose`` takes on the scores so far (the leader) is
    trained from the rest too, so that best.json's score rests on every seed
    (``--winner-seeds``); a leader those seeds overtake is followed by the new one.
    """
    race = seeds if raced is None else seeds[:raced]
    extra = set(seeds) - set(race)
    in_race = {trial: {seed: value for seed, value in values.items() if seed not in extra}
               for trial, values in scores.items()}
    wanted = _race(in_race, paper, challengers, race, mode, confidence, racing)
    if wanted or not extra:
        return wanted
    if (chosen := leader(scores, paper, challengers, mode, confidence)) is None:
        return []
    return [(chosen, seed) for seed in seeds if seed not in scores.get(chosen, {})]


def leader(scores: dict[str, dict[int, float | None]], paper: str | None,
           challengers: list[str], mode: str, confidence: float) -> str | None:
    """The finalist ``choose`` takes on every score so far (``next_reruns``' ``scores``);
    None while none has one."""
    finalists = ([paper] if paper is not None else []) + list(challengers)
    known = {trial: values for trial in finalists if (values := [
        value for value in scores.get(trial, {}).values() if value is not None])}
    if not known:
        return None
    return choose(known, paper if paper in known else None, mode, confidence)[0]


def _race(scores: dict[str, dict[int, float | None]], paper: str | None,
          challengers: list[str], seeds: list[int], mode: str, confidence: float,
          racing: bool) -> list[tuple[str, int]]:
    """The race's reruns still to train (``next_reruns``' ``scores``, ``seeds`` its own).

    Without racing, every rerun seed of every finalist. Racing (the paper's trial among the
    finalists, a ``confidence`` asked): one round of seeds at a time, and after each round a
    challenger drops out once the t test says it is at most 1 − ``confidence`` likely to be
    better than the paper's configuration on the mean over its seeds so far (for it to be
    chosen, that chance must reach ``confidence``); with none left, the paper's configuration
    needs no more seeds either. A round's reruns are returned until each has ended, so the
    next round waits for them.
    """
    def missing(trials: list[str], wanted: list[int]) -> list[tuple[str, int]]:
        return [(trial, seed) for trial in trials for seed in wanted
                if seed not in scores.get(trial, {})]

    if not (racing and paper is not None and challengers and confidence > 0):
        return missing(([paper] if paper is not None else []) + list(challengers), seeds)
    live = list(challengers)
    for rounds, seed in enumerate(seeds):
        if rounds:  # the rounds so far have all ended
            later = set(seeds[rounds:])
            known = {trial: [value for ran, value in scores[trial].items()
                             if value is not None and ran not in later]
                     for trial in [paper, *live]}
            live = [trial for trial in live
                    if not _ruled_out(known, paper, trial, mode, confidence)]
            if not live:
                return []
        if wanted := missing([paper, *live], [seed]):
            return wanted
    return []


def _ruled_out(known: dict[str, list[float]], paper: str, challenger: str, mode: str,
               confidence: float) -> bool:
    """Whether the t test gives ``challenger`` at most 1 − ``confidence`` to be better."""
    if not known[paper] or not known[challenger]:
        return False
    sure = chance_better(known, paper, challenger, mode)[3]
    return sure is not None and sure <= 1 - confidence


def _key(trial: str, seed: int) -> str:
    return f"{trial[:8]}-seed{seed}"


def finalists_folder(experiment: str) -> Path:
    """Where each rerun's best validation score is written as it ends."""
    return Path(experiment) / "finalists"


def finished_reruns(folder: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}


def _finished(done: dict[str, dict], trial: str, seed: int, epochs: int) -> bool:
    """Whether the rerun of ``trial`` from ``seed`` ran, as long as the trial did."""
    record = done.get(_key(trial, seed))
    return record is not None and record.get("epochs") == epochs


def rescore(plan, resources, finalists: list[tuple[str, dict[str, Any], float, int]],
            paper: str | None, say) -> dict[str, dict[int, float]]:
    """Each finalist's validation score by seed: its own trial's first, then its reruns'.

    ``finalists`` holds (trial id, trial config, its best score, the epochs it ran) in the
    order to report, ``paper`` the paper's among them; each rerun trains as many epochs as its
    trial ran (early stopping may have stopped it), so that its seeds compare at one budget.
    Reruns the search's experiment has not trained (``FinalistSearch``) train here, round by
    round as ``next_reruns`` asks for them.
    """
    args = plan.args
    folder = check_directory(finalists_folder(plan.experiment), "experiment")
    seeds = rerun_seeds(args.seed, most_seeds(args.finalist_seeds, args.winner_seeds))
    by_trial = {trial: (config, own, epochs) for trial, config, own, epochs in finalists}
    tried: set[tuple[str, int]] = set()

    def scores() -> dict[str, dict[int, float]]:
        done = finished_reruns(folder)
        return {trial: {args.seed: own, **{seed: done[_key(trial, seed)]["value"]
                                           for seed in seeds
                                           if _finished(done, trial, seed, epochs)}}
                for trial, (_, own, epochs) in by_trial.items()}

    while True:
        so_far = scores()
        for trial, seed in tried:  # trained without a score: not asked for again
            so_far[trial].setdefault(seed, None)
        wanted = next_reruns(so_far, paper, [t for t in by_trial if t != paper], seeds,
                             plan.mode, args.confidence, racing=not stacks_reruns(resources),
                             raced=args.finalist_seeds - 1)
        if not wanted:
            return {trial: {seed: value for seed, value in values.items() if value is not None}
                    for trial, values in so_far.items()}
        say(f"finalists: {len(wanted)} more run(s) of {len({t for t, _ in wanted})} trial(s) "
            f"from other seeds, to choose on the mean over up to {len(seeds) + 1} seeds")
        tried |= set(wanted)
        _train(plan, resources, [{"trial": trial, "seed": seed, "params": by_trial[trial][0],
                                  "epochs": by_trial[trial][2]} for trial, seed in wanted],
               folder)


def rerun_overrides(trial: dict[str, Any], base) -> dict[str, Any]:
    """A rerun's ``ucrn`` overrides: its finalist's settings and its own seed, for as many
    epochs as the finalist's trial ran (patience as long: it selects on validation alone)."""
    rerun = trial[RERUN_KEY]
    return {**trial_overrides(rerun["params"], base), "seed": rerun["seed"],
            "epochs": rerun["epochs"], "patience": rerun["epochs"]}


def rerun_runs(trial: dict[str, Any]) -> list[dict[str, Any]]:
    """A rerun trial's runs, one a seed (several train as one stack)."""
    rerun = trial[RERUN_KEY]
    return [{RERUN_KEY: {**rerun, "seed": seed}} for seed in rerun["seeds"]]


def _train(plan, resources, pending: list[dict], folder: Path) -> None:
    """The reruns as one Tune experiment (no early stopping: each runs the trial's budget);
    on a GPU a finalist's reruns train side by side as one stacked computation
    (``ucrn.stack``: one architecture, their own seeds)."""
    base, metric = plan.base, plan.metric
    trainable = make_trainable(
        base, ray.put(plan.dataset), resources, str(folder / "ray" / "train"),
        overrides_of=lambda trial: rerun_overrides(trial, base),
        run_name_of=lambda trial, _: _key(trial[RERUN_KEY]["trial"], trial[RERUN_KEY]["seed"]),
        stack_of=rerun_runs,
    )
    pending = stacked_reruns(pending, len(pending) if stacks_reruns(resources) else 1)
    run_grid(trainable, RERUN_KEY, pending, name="reruns", storage=str(folder / "ray"),
             resources=resources, args=plan.args,
             callbacks=[BestOfRun(folder, metric)], how_to_continue="continue with --resume")


def stacks_reruns(resources) -> bool:
    """Whether a finalist's reruns train as one stack: on a GPU, one worker per trial (on a
    CPU a stack is hardly faster than its runs, which run side by side there)."""
    return resources.gpus_per_worker > 0 and resources.workers == 1


def stacked_reruns(pending: list[dict], stack: int) -> list[dict]:
    """The pending reruns as trials of up to ``stack`` seeds of one finalist each."""
    return stacked_seeds(pending, "trial", stack)


class FinalistSearch(StudySearch):
    """The search's searcher: Optuna's ``trials`` (``StudySearch``), then the finalists'
    reruns as trials of the same experiment, then ``Searcher.FINISHED``.

    The paper's first reruns are handed out once its trial has ended (it is never stopped
    early), the ``finalists`` best others' once every trial has, ranked as trials.csv ranks
    them (the best score at the best epoch; trials that failed or scored nothing left out);
    each trains as many epochs as its trial ran. One seed at a time, the finalists race
    (``next_reruns``): a challenger that the seeds so far rule out gets no more, and nor does
    the paper's configuration once none is left; a slot that waits for a round to end trains
    the leader's next seed meanwhile (``_ahead_of_need``). Stacked reruns (a GPU) take all
    their seeds at once. Reruns tell the study nothing. All of it is part of the searcher's
    saved state, so ``--resume`` goes on where the search was.
    """

    def __init__(self, *, finalists: int, finalist_seeds: int, confidence: float, stack: bool,
                 paper: dict[str, Any] | None, fixed: dict[str, Any], trials: int, seed: int,
                 winner_seeds: int = 1, **kwargs: Any):
        super().__init__(trials=trials, seed=seed, **kwargs)
        self._trials, self._finalists, self._stack = trials, finalists, stack
        self._own_seed, self._confidence = seed, confidence
        self._seeds = (rerun_seeds(seed, most_seeds(finalist_seeds, winner_seeds))
                       if finalists else [])
        self._raced = finalist_seeds - 1  # the race's seeds; the leader's are all of them
        self._paper, self._fixed = paper, fixed  # the paper's point; the space's constants
        self._proposed: dict[str, dict[str, Any]] = {}  # trial → the settings proposed
        self._epochs_ran: dict[str, int] = {}
        self._ended: dict[str, tuple[float, int] | None] = {}  # → (best score, epochs) or None
        self._challengers: list[str] | None = None  # known once every trial has ended
        self._queue: list[dict[str, Any]] = []
        self._handed: set[tuple[str, int]] = set()  # (finalist, seed) reruns handed out
        self._rerun_scores: dict[str, dict[int, float | None]] = {}  # finalist → seed → score
        self._rerun_best: dict[str, tuple[float, int]] = {}  # rerun trial → best so far
        self.reruns: dict[str, dict[str, Any]] = {}  # rerun trial → its rerun

    def suggest(self, trial_id: str) -> dict | str | None:
        if len(self._proposed) < self._trials:
            config = super().suggest(trial_id)
            if isinstance(config, dict):
                self._proposed[trial_id] = config
            return config
        wanted = [pair for pair in self._wanted() if pair not in self._handed]
        if not wanted and not self._queue:
            wanted = self._ahead_of_need()
        self._handed |= set(wanted)
        pending = [{"trial": trial, "seed": seed, "epochs": self._ended[trial][1],
                    "params": {**self._fixed, **self._proposed[trial]}} for trial, seed in wanted]
        self._queue += stacked_reruns(pending, len(self._seeds) if self._stack else 1)
        if self._queue:
            rerun = self.reruns[trial_id] = self._queue.pop(0)
            return {**rerun["params"], RERUN_KEY: rerun}
        return Searcher.FINISHED if self._all_handed_out() else None

    def _paper_trial(self) -> str | None:
        """The paper's trial once it has ended with a score, else None."""
        paper = next((trial for trial, config in self._proposed.items()
                      if at_point(config, self._paper)), None)
        return paper if paper is not None and self._ended.get(paper) else None

    def _wanted(self) -> list[tuple[str, int]]:
        racing = not self._stack
        paper = self._paper_trial()
        if self._challengers is None and len(self._ended) >= self._trials:
            sign = 1 if metric_mode(self._metrics[0]) == "min" else -1
            scored = [trial for trial, ended in self._ended.items() if ended is not None
                      and not at_point(self._proposed[trial], self._paper)]
            scored.sort(key=lambda trial: sign * self._ended[trial][0])
            self._challengers = scored[:self._finalists]
        if self._challengers is None:  # trials still running: the paper's first seeds
            race = self._seeds[:self._raced]
            return [] if paper is None else [(paper, seed) for seed in
                                             (race[:1] if racing else race)]
        return next_reruns(self._scores(paper), paper, self._challengers, self._seeds,
                           metric_mode(self._metrics[0]), self._confidence, racing, self._raced)

    def _scores(self, paper: str | None) -> dict[str, dict[int, float | None]]:
        """The finalists' scores by seed so far, their own trials' included."""
        return {trial: {self._own_seed: self._ended[trial][0],
                        **self._rerun_scores.get(trial, {})}
                for trial in ([paper] if paper else []) + (self._challengers or [])}

    def _ahead_of_need(self) -> list[tuple[str, int]]:
        """A slot the race would leave idle while other runs go on trains the leader's next
        seed (the paper's configuration's until the others are known): its seeds are what
        the race asks of it while it goes on, and what best.json's score rests on if it
        stays ahead (``--winner-seeds``). Not when reruns train as stacks."""
        paper, running = self._paper_trial(), self._running()
        if self._stack or paper is None or not running or running >= self._slots:
            return []
        chosen = leader(self._scores(paper), paper, self._challengers or [],
                        metric_mode(self._metrics[0]), self._confidence)
        ahead = [(chosen, seed) for seed in self._seeds if (chosen, seed) not in self._handed]
        return ahead[:1]

    def _running(self) -> int:
        """The trials and reruns handed out that have not ended."""
        trials = sum(trial not in self._ended for trial in self._proposed)
        reruns = sum(any(seed not in self._rerun_scores.get(rerun["trial"], {})
                         for seed in rerun["seeds"]) for rerun in self.reruns.values())
        return trials + reruns

    def _all_handed_out(self) -> bool:
        """Whether no more reruns can be asked for: every trial has ended, and the reruns
        handed out have all ended too (racing: what they score decides the next round)."""
        if self._challengers is None:
            return False
        ended = {(trial, seed) for trial, seeds in self._rerun_scores.items() for seed in seeds}
        stacked_at_once = self._stack and self._raced >= len(self._seeds)  # no leader's seeds
        return stacked_at_once or self._handed <= ended

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.reruns:
            keep_best(self._rerun_best, trial_id, self._metrics[0], result)
            return
        if "epoch" in result:
            self._epochs_ran[trial_id] = int(result["epoch"])
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self.reruns:
            rerun = self.reruns[trial_id]
            if not error and result and trial_id not in self._rerun_best:
                self.on_trial_result(trial_id, result)
            scored = {} if error or not result else rerun_scores(
                rerun, result, self._rerun_best.get(trial_id), self._metrics[0])
            for seed in rerun["seeds"]:
                value = scored.get(seed)
                self._rerun_scores.setdefault(rerun["trial"], {})[seed] = (
                    value[0] if value else None)
            return
        super().on_trial_complete(trial_id, result, error)  # its last epoch seen, if unseen
        best = (self._best.get(trial_id) or {}).get(self._metrics[0])
        scored = not error and best is not None and math.isfinite(best)
        self._ended[trial_id] = (float(best), self._epochs_ran.get(trial_id, 0)) if scored else None


def keep_best(best: dict[str, tuple[float, int]], trial_id: str, metric: str,
              result: dict) -> None:
    """Keeps in ``best`` a rerun trial's best ``metric`` so far and the epoch it came at."""
    value, kept = result.get(metric), best.get(trial_id)
    if value is not None and is_better(metric, value, kept[0] if kept else None):
        best[trial_id] = (float(value), int(result.get("epoch", 0)))


def rerun_scores(rerun: dict[str, Any], result: dict, best: tuple[float, int] | None,
                 metric: str) -> dict[int, tuple[float, int]]:
    """A finished rerun trial's best validation score and its epoch, by seed: one seed's
    from ``best`` (kept over its epochs), a stack's from the runs' records in ``result``
    (a run stopped by a non-finite loss has none)."""
    if stacked := result.get("run_records"):
        records = [json.loads(text) for text in json.loads(stacked)]
        name = metric.removeprefix("valid_")
        return {seed: (record["valid"][name], record["best_epoch"])
                for seed, record in zip(rerun["seeds"], records, strict=True)
                if "valid" in record}
    return {rerun["seeds"][0]: best} if best is not None else {}


class BestOfRun(Callback):
    """Keeps each rerun's best validation score over its epochs, and writes it when the
    rerun ends (other trials of the experiment are not its business)."""

    def __init__(self, folder: Path, metric: str):
        self.folder, self.metric = folder, metric
        self.best: dict[str, tuple[float, int]] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not is_rerun(trial.config):
            return
        keep_best(self.best, trial.trial_id, self.metric, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not is_rerun(trial.config) or not trial.last_result.get("done"):
            return  # not a rerun; or stopped before its end (Ctrl-C, a stall): still to do
        rerun = trial.config[RERUN_KEY]
        scored = rerun_scores(rerun, trial.last_result, self.best.get(trial.trial_id),
                              self.metric)
        for seed, (value, epoch) in scored.items():
            self._write(rerun, seed, value, epoch)

    def _write(self, rerun: dict[str, Any], seed: int, value: float, epoch: int) -> None:
        record = {"trial": rerun["trial"], "seed": seed, "value": value, "best_epoch": epoch,
                  "epochs": rerun["epochs"]}
        atomic_write(self.folder / f"{_key(rerun['trial'], seed)}.json",
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
    improvement, error, freedom, sure = chance_better(scores, paper, challenger, mode)
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


def chance_better(scores: dict[str, list[float]], paper: str, challenger: str,
                  mode: str) -> tuple[float, float, int, float | None]:
    """How much better ``challenger`` is than ``paper`` on the mean over seeds (> 0:
    better), its standard error on the seed spread pooled over all of ``scores``, the
    degrees of freedom, and how sure a one-sided t test is that it is better (None: no
    spread to judge by)."""
    sign = -1 if mode == "min" else 1
    improvement = sign * (statistics.fmean(scores[challenger]) - statistics.fmean(scores[paper]))
    spread, freedom = pooled_std(scores.values())
    error = spread * math.sqrt(1 / len(scores[challenger]) + 1 / len(scores[paper]))
    sure = student_t_cdf(improvement / error, freedom) if error > 0 else None
    return improvement, error, freedom, sure


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
