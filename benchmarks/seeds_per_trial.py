"""Which buys more per minute: finalists trained again over seeds, or every trial on several.

    python benchmarks/seeds_per_trial.py --data F.h5 --table T.json [--pool 16] [--seeds 8]
        [--epochs 8] [--repeats 4000] [--jobs 2]

A search can be sure of its pick in two ways. The search does it one way: each trial trains
one seed, and only the finalists (the paper's trial and the best other) train again. Their
seeds race, and the t test decides (``tuning.finalists``). The other way is to train every
trial from K seeds and take their mean as its objective (``--seeds-per-trial K``). This
script measures both on real runs, at what each costs.

First it trains a table: the paper's configuration, plus ``--pool`` configurations drawn at
random from the search's default space (as Optuna's start-up trials are). Each one trains
from ``--seeds`` seeds for the main job's ``--epochs``, with the search's base config (data,
selection on validation, patience as long as the run). For every run the table keeps the
validation score of each epoch, and the seconds each epoch took. Runs are added to T.json as
they end, so a table cut short goes on where it was.

Then it replays searches on the table, ``--repeats`` times. Each replay draws which
configurations are tried and which seeds are the search's; it holds the other half of the
seeds out as the truth. Each strategy runs on the same draws:

- **one seed**: trials of one seed each, and the best one taken (``--finalists 0``);
- **finalists**: the search's way, with the search's own functions (``next_reruns``, then
  ``choose`` at ``--confidence`` 0.9);
- **K seeds a trial**: the objective is the mean of K seeds; ``choose`` judges the paper's
  trial against the best other on their K seeds.

All of them use successive halving at the search's rungs (synchronous: every trial at a rung
is ranked against all the others there, and the paper's is never stopped). The cost is the
training seconds of every epoch run. The gain is how much better the pick is than the paper's
configuration on the held-out seeds (MAE: the paper's minus the pick's; above 0 is better).
"took other" is how often the pick is not the paper's, and "worse" is how often such a pick
is worse on the held-out seeds. The curse is how much better the search said its pick was
than the held-out seeds show, in seed standard deviations. "best tried" is the gain of the
best configuration each replay tried, judged on the held-out seeds: an oracle's ceiling.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from tuning.finalists import choose, next_reruns, pooled_std
from tuning.space import draw, trial_overrides
from ucrn.files import atomic_write

CONFIDENCE, FINALIST_SEEDS, WINNER_SEEDS = 0.9, 3, 4  # the search's defaults
GRACE, REDUCTION = 2, 2  # the search's rungs: 2, 4, … epochs


# ------------------------------------------------------------------------------- the table

_PLAN = None  # the search's plan, made once in each worker process


def _plan(data: str, epochs: int, storage: str):
    from tuning.search import plan_search

    return plan_search(["--data", data, "--epochs", str(epochs), "--storage", storage,
                        "--name", "table"])


def _start_worker(data: str, epochs: int, storage: str) -> None:
    global _PLAN
    import torch

    torch.set_num_threads(1)
    _PLAN = _plan(data, epochs, storage)


def _train(point: dict, seed: int) -> dict:
    """One run of ``point`` from ``seed``: the validation metric and seconds of each epoch."""
    from ucrn.config import apply_overrides
    from ucrn.engine import fit

    base = _PLAN.base
    config = apply_overrides(base, {**trial_overrides(point, base), "seed": seed})
    seconds: list[float] = []
    result = fit(config, _PLAN.dataset, device="cpu", score_test=False,
                 on_epoch=lambda epoch, _: seconds.append(epoch.seconds))
    return {"valid": [epoch[_PLAN.metric] for epoch in result.history], "seconds": seconds}


def train_table(args) -> dict:
    """The table in ``args.table``, with the runs it lacks trained and added as they end."""
    path = Path(args.table)
    table = json.loads(path.read_text()) if path.exists() else None
    with tempfile.TemporaryDirectory() as storage:
        plan = _plan(args.data, args.epochs, storage)
        if table is None:
            rng = random.Random(args.draw_seed)
            points = [plan.base_point] + [draw(plan.space, rng) for _ in range(args.pool)]
            table = {"data": str(Path(args.data).resolve()), "epochs": args.epochs,
                     "metric": plan.metric, "points": points,
                     "runs": [{} for _ in points]}
        elif table["epochs"] != args.epochs or len(table["points"]) != args.pool + 1:
            sys.exit(f"{path} holds a table of {len(table['points']) - 1} configurations at "
                     f"{table['epochs']} epochs; give those, or another --table")
        todo = [(index, seed) for seed in range(args.seeds)
                for index in range(len(table["points"])) if str(seed) not in table["runs"][index]]
        started, done = time.perf_counter(), 0
        context = get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context, initializer=_start_worker,
                                 initargs=(args.data, args.epochs, storage)) as pool:
            futures = {pool.submit(_train, table["points"][index], seed): (index, seed)
                       for index, seed in todo}
            for future in as_completed(futures):
                index, seed = futures[future]
                run = table["runs"][index][str(seed)] = future.result()
                atomic_write(path, lambda out: Path(out).write_text(json.dumps(table)))
                done += 1
                print(f"table: run {done}/{len(todo)} (configuration {index}, seed {seed}): "
                      f"best {table['metric']} {min(run['valid']):.4f} in "
                      f"{sum(run['seconds']):.1f} s; {time.perf_counter() - started:.0f} s so far",
                      flush=True)
    return table


# ------------------------------------------------------------------------------ the replay

class Runs:
    """The table's runs of one replay: configuration × position of its seed in the draw."""

    def __init__(self, table: dict, seeds: list[str]):
        self.table, self.seeds = table, seeds
        self.cost = 0.0

    def best(self, index: int, position: int, epochs: int, paid: bool = True) -> float:
        """The run's best score in its first ``epochs`` (MAE: the least); paid for unless
        ``paid`` is False (the held-out truth)."""
        run = self.table["runs"][index][self.seeds[position]]
        if paid:
            self.cost += sum(run["seconds"][:epochs])
        return min(run["valid"][:epochs])

    def truth(self, index: int, epochs: int, held_out: range) -> float:
        return statistics.fmean(self.best(index, p, epochs, paid=False) for p in held_out)


def halving(trials: list[int], paper: int, epochs: int, score) -> dict[int, int]:
    """The epochs each trial runs under synchronous successive halving on ``score(trial,
    epochs)``: at each rung only the best ⌈n / 2⌉ of the n trials there go on; the paper's
    trial counts at every rung and is never stopped."""
    ran = dict.fromkeys(trials, epochs)
    alive, rung = list(trials), GRACE
    while rung < epochs:
        ranked = sorted(alive, key=lambda trial: score(trial, rung))
        keep = set(ranked[:math.ceil(len(alive) / REDUCTION)]) | {paper}
        for trial in alive:
            if trial not in keep:
                ran[trial] = rung
        alive = [trial for trial in alive if trial in keep]
        rung *= REDUCTION
    return ran


def search_with_seeds(runs: Runs, trials: list[int], paper: int, epochs: int, k: int,
                      finalists: bool) -> tuple[int, float, int]:
    """One replayed search: (its pick, the score it reports, the epochs the pick ran).

    ``k`` seeds a trial (their mean its objective); with ``finalists``, one seed a trial and
    the paper's and best other trial race over more seeds. With neither (k 1), the best
    trial's one seed decides."""
    def score(trial: int, at: int) -> float:
        return statistics.fmean(runs.best(trial, p, at, paid=False) for p in range(k))

    ran = halving(trials, paper, epochs, score)
    scores = {trial: {p: runs.best(trial, p, ran[trial]) for p in range(k)} for trial in trials}
    others = sorted((t for t in trials if t != paper),
                    key=lambda t: statistics.fmean(scores[t].values()))
    if finalists:
        final = {paper: scores[paper], others[0]: scores[others[0]]}
        seeds = list(range(1, max(FINALIST_SEEDS, WINNER_SEEDS)))
        while wanted := next_reruns(final, paper, [others[0]], seeds, "min", CONFIDENCE,
                                    racing=True, raced=FINALIST_SEEDS - 1):
            for trial, position in wanted:
                final[trial][position] = runs.best(trial, position, ran[trial])
        scores = final
    elif k == 1:
        pick = min(trials, key=lambda t: scores[t][0])
        return pick, scores[pick][0], ran[pick]
    else:
        scores = {paper: scores[paper], others[0]: scores[others[0]]}
    pick, _ = choose({t: list(v.values()) for t, v in scores.items()}, paper, "min", CONFIDENCE)
    return pick, statistics.fmean(scores[pick].values()), ran[pick]


STRATEGIES = {  # name → (trials, seeds a trial, finalists)
    "one seed, 8 trials": (8, 1, False),
    "finalists, 6 trials": (6, 1, True),
    "finalists, 8 trials (main job)": (8, 1, True),
    "finalists, 12 trials": (12, 1, True),
    "2 seeds a trial, 4 trials": (4, 2, False),
    "2 seeds a trial, 6 trials": (6, 2, False),
    "2 seeds a trial, 8 trials": (8, 2, False),
    "2 seeds a trial, 12 trials": (12, 2, False),
    "3 seeds a trial, 4 trials": (4, 3, False),
    "3 seeds a trial, 8 trials": (8, 3, False),
}


def replay(table: dict, repeats: int, seed: int) -> dict:
    """Every strategy on the same ``repeats`` draws of configurations and seeds."""
    epochs, seeds = table["epochs"], sorted(set.intersection(*(
        set(runs) for runs in table["runs"])), key=int)
    if len(seeds) < 2 * WINNER_SEEDS:
        sys.exit(f"the table has {len(seeds)} seeds of every configuration; a replay needs "
                 f"{2 * WINNER_SEEDS} ({WINNER_SEEDS} to search with, as many held out)")
    pool = list(range(1, len(table["points"])))
    largest = max(trials for trials, _, _ in STRATEGIES.values())
    if largest - 1 > len(pool):
        sys.exit(f"the table has {len(pool)} configurations besides the paper's; the "
                 f"strategies try up to {largest - 1}")
    spread, _ = pooled_std([[min(table["runs"][i][s]["valid"]) for s in seeds]
                            for i in range(len(table["points"]))])
    rng = random.Random(seed)
    found = {name: {"cost": [], "gain": [], "other": [], "worse": [], "curse": [], "best": []}
             for name in STRATEGIES}
    for _ in range(repeats):
        order, drawn = rng.sample(pool, len(pool)), rng.sample(seeds, len(seeds))
        held_out = range(len(drawn) // 2, len(drawn))
        paper = Runs(table, drawn).truth(0, epochs, held_out)
        for name, (count, k, finalists) in STRATEGIES.items():
            runs, trials = Runs(table, drawn), [0, *order[:count - 1]]
            pick, reported, ran = search_with_seeds(runs, trials, 0, epochs, k, finalists)
            truth = runs.truth(pick, ran, held_out)
            record = found[name]
            record["cost"].append(runs.cost)
            record["gain"].append(paper - truth)
            record["other"].append(pick != 0)
            if pick != 0:
                record["worse"].append(truth > paper)
            record["curse"].append((truth - reported) / spread)
            record["best"].append(paper - min(runs.truth(t, epochs, held_out) for t in trials))
    return {"metric": table["metric"], "seed_std": spread, "repeats": repeats,
            "configurations": len(pool), "seeds": len(seeds),
            "strategies": {name: _summary(record) for name, record in found.items()}}


def _summary(record: dict) -> dict:
    return {"seconds": statistics.fmean(record["cost"]),
            "gain": statistics.fmean(record["gain"]),
            "took_other": statistics.fmean(record["other"]),
            "worse_when_other": (statistics.fmean(record["worse"]) if record["worse"]
                                 else None),
            "curse_in_seed_std": statistics.fmean(record["curse"]),
            "best_tried_gain": statistics.fmean(record["best"])}


def print_report(report: dict) -> None:
    print(f"{report['repeats']} replays on {report['configurations']} configurations and the "
          f"paper's, {report['seeds']} seeds each (half held out as the truth); "
          f"{report['metric']} seed std {report['seed_std']:.4f}")
    print(f"{'strategy':32} {'train s':>8} {'gain':>8} {'took other':>10} {'worse':>6} "
          f"{'curse':>6} {'best tried':>10}")
    for name, row in report["strategies"].items():
        worse = "—" if row["worse_when_other"] is None else f"{row['worse_when_other']:.0%}"
        print(f"{name:32} {row['seconds']:8.0f} {row['gain']:+8.4f} {row['took_other']:10.0%} "
              f"{worse:>6} {row['curse_in_seed_std']:+6.2f} {row['best_tried_gain']:+10.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the .h5 data file")
    parser.add_argument("--table", required=True, help="the table's JSON file (kept, resumed)")
    parser.add_argument("--pool", type=int, default=16,
                        help="configurations drawn besides the paper's (default 16)")
    parser.add_argument("--seeds", type=int, default=8, help="seeds of each (default 8)")
    parser.add_argument("--epochs", type=int, default=8, help="the trials' epochs (default 8)")
    parser.add_argument("--draw-seed", type=int, default=0, help="the configurations' draw")
    parser.add_argument("--repeats", type=int, default=4000, help="replays (default 4000)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    report = replay(train_table(args), args.repeats, args.draw_seed)
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
