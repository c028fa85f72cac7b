"""``python tuning/search.py``: Ray Tune + Optuna search over UCRN, trials trained by Ray Train.

Optuna's TPE proposes settings, successive halving (``tuning.halving``) stops weak trials
early, every trial is a Ray Train run of ``ucrn.engine.fit``. The objective and each trial's
checkpoint use the validation split only; after the search, the best trial's best
checkpoint is scored on the test split once.

Results land in ``STORAGE/NAME``: ``trials.csv``, ``best.json`` (a config ``ucrn train
--config`` accepts, with the search record and the valid/test metrics), ``best/`` (a run
directory ``ucrn evaluate --checkpoint`` accepts) and Ray's own experiment files.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import ray
from ray import tune
from rich.console import Console

from tuning.checkpoints import CheckpointsTheSnapshotNames
from tuning.cluster_options import add_cluster_arguments, check_cluster_arguments
from tuning.figures import pareto_plot
from tuning.finalists import (
    BestOfRun,
    FinalistSearch,
    choose,
    decision_line,
    finalists_folder,
    most_reruns,
    most_seeds,
    rerun_overrides,
    rerun_runs,
    rescore,
    stacks_reruns,
    summary,
)
from tuning.halving import FairHalving
from tuning.progress import (
    Interruption,
    InterruptionRecord,
    ProgressWatch,
    TrialUserErrors,
    check_ran_to_end,
)
from tuning.ray_start import sharing_note, start_ray
from tuning.space import (
    at_point,
    base_point,
    is_rerun,
    load_space,
    to_tune,
    trial_overrides,
)
from tuning.study import (
    check_same_objectives,
    check_study_url,
    dashboard_command,
    study_url,
    what_mattered,
)
from tuning.tables import LiveTrialTable, pareto_front, rich_table, trial_rows
from tuning.tables import console as table_console
from tuning.trials import make_trainable, plan_trials, trial_state
from ucrn.config import Config, apply_overrides, config_from_options, parse_set_options
from ucrn.data.layout import Dataset
from ucrn.data.synthetic import data_or_default
from ucrn.display import metrics_table
from ucrn.engine import evaluate, load_training_data, save_run
from ucrn.errors import UcrnError, exit_status
from ucrn.files import check_directory, hold_folder
from ucrn.metrics import ROBUST_PREFIX
from ucrn.metrics import mode as metric_mode
from ucrn.state import FitResult
from ucrn.tasks import metric_names

console = Console(stderr=True, soft_wrap=True)  # a log keeps each line whole


@dataclass
class SearchPlan:
    """Everything checked before Ray starts."""

    args: argparse.Namespace
    dataset: Dataset
    base: Config
    space: dict[str, Any]
    metrics: tuple[str, ...]  # the objectives; the first picks checkpoints and stops trials
    experiment: str  # STORAGE/NAME, a local path or a URI
    study: str | None  # the Optuna study's database URL (None: in memory)
    # The paper's configuration (the base config) as the first trial's values; None when
    # opted out or outside the space (``outside`` says which settings).
    base_point: dict[str, Any] | None = None
    outside: tuple[str, ...] = ()
    # What best.json trains for: the config's own epochs (at least the trials') and patience.
    budget: dict[str, int] | None = None

    @property
    def metric(self) -> str:
        return self.metrics[0]

    @property
    def mode(self) -> str:
        return metric_mode(self.metric)

    @property
    def name(self) -> str:
        """The experiment's name, which its Optuna study takes too."""
        return self.experiment.rsplit("/", 1)[-1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python tuning/search.py",
        description="Search UCRN's hyperparameters with Ray Tune + Optuna; trials run on "
        "Ray Train workers. With no arguments: a small search on the embedded synthetic MOSI.",
    )
    data = parser.add_argument_group("data and model")
    data.add_argument("--data", help="an .h5 data file (default: the embedded synthetic MOSI)")
    data.add_argument("--modalities", help="e.g. l,a,v (default: all the data has)")
    data.add_argument("--config", help="base config JSON; the space is laid over it")
    data.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="fix a setting for every trial (it leaves the space), e.g. "
                      "--set task=binary")
    search = parser.add_argument_group("search")
    search.add_argument("--space", help="JSON/YAML file laid over the default space, or a "
                        "preset: default, paper (the published setting: 5 layers, 3 heads, "
                        "λ around 1, learning rate 1e-3 or 2e-3)")
    search.add_argument("--num-samples", type=int, default=8, help="trials (default 8)")
    search.add_argument("--epochs", type=int, default=8, help="epochs per trial (default 8)")
    search.add_argument("--metric", action="append",
                        help="validation metric to optimise (default valid_MAE; e.g. "
                        "valid_Non0_acc_2). Twice for two objectives, e.g. --metric valid_MAE "
                        "--metric valid_robust_MAE (robust_*: averaged over one modality "
                        "masked at a time, the paper's Table 4): the Pareto front goes to "
                        "pareto.csv; the first metric picks checkpoints, stops trials early and "
                        "chooses best.json")
    search.add_argument("--mode", action="append", choices=("min", "max"),
                        help="optional: each metric's own direction (min for MAE and loss, "
                        "max otherwise); any other is refused")
    search.add_argument("--no-paper-trial", action="store_true",
                        help="leave out the trial that runs the paper's configuration (the "
                        "base config: ucrn's defaults with --config and --set laid over "
                        "them), which is otherwise the first trial, so that best.json is at "
                        "least as good as it on validation")
    search.add_argument("--finalists", type=int, default=1,
                        help="the best trials besides the paper's, trained again with it "
                        "from other seeds before best.json is chosen (default 1; 0: choose "
                        "on the trials' one seed)")
    search.add_argument("--finalist-seeds", type=int, default=3,
                        help="seeds behind each finalist's score at most, its own trial's "
                        "included (default 3); one round of seeds at a time, a finalist the "
                        "seeds so far rule out gets no more")
    search.add_argument("--winner-seeds", type=int, default=4,
                        help="seeds behind best.json's score at least: once the finalists' "
                        "race has ended, its leader is trained again from more seeds "
                        "(default 4; 1: none beyond the race's)")
    search.add_argument("--confidence", type=float, default=0.9,
                        help="how sure the search must be that a finalist beats the paper's "
                        "configuration on the mean over seeds before best.json takes it "
                        "(one-sided t test; default 0.9; 0: the best mean)")
    search.add_argument("--grace-period", type=int, default=2,
                        help="epochs before a trial may be stopped early; the rungs of successive "
                        "halving are this × 2, × 4, … (default 2)")
    search.add_argument("--seed", type=int, default=0, help="Optuna's seed and the trials'")
    search.add_argument("--study-storage", metavar="URL",
                        help="the Optuna study's database (default: sqlite:///EXPERIMENT/"
                        "study.db; e.g. postgresql://user@HEAD/ucrn on a cluster)")
    cluster = add_cluster_arguments(parser)
    cluster.add_argument("--storage", default="ray_results",
                         help="experiment storage: a folder or a URI such as s3://bucket/x")
    cluster.add_argument("--name", help="experiment name (default: search-<time>)")
    cluster.add_argument("--resume", action="store_true",
                         help="continue the experiment --name (default: the latest one)")
    return parser


def _is_uri(path: str) -> bool:
    return "://" in path


def _experiment_path(args: argparse.Namespace) -> str:
    if args.name is not None and (args.name in ("", ".", "..") or "/" in args.name
                                  or "\\" in args.name or args.name.startswith("~")):
        raise UcrnError(f"--name {args.name!r}: give one folder name (no '/', '..' or '~'); "
                        "--storage says where it goes")
    if not _is_uri(args.storage):
        check_directory(args.storage, "--storage")
    storage = args.storage if _is_uri(args.storage) else str(Path(args.storage).resolve())
    if args.name:
        return f"{storage.rstrip('/')}/{args.name}"
    if not args.resume:
        return f"{storage.rstrip('/')}/{time.strftime('search-%Y%m%d-%H%M%S')}"
    if _is_uri(storage):
        raise UcrnError("--resume with a URI storage needs --name")
    candidates = sorted(Path(storage).glob("*/tuner.pkl"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise UcrnError(f"--resume: no experiment to resume in {storage}")
    return str(candidates[-1].parent)


def plan_search(argv: Sequence[str] | None = None) -> SearchPlan:
    """Parse and check every input; nothing here starts Ray."""
    args = build_parser().parse_args(argv)
    for name in ("num_samples", "epochs", "grace_period"):
        if getattr(args, name) < 1:
            raise UcrnError(f"--{name.replace('_', '-')} must be at least 1")
    if args.finalists < 0 or args.finalist_seeds < 1 or args.winner_seeds < 1:
        raise UcrnError("--finalists must be 0 or more, and --finalist-seeds and "
                        "--winner-seeds at least 1")
    if not 0 <= args.confidence < 1:
        raise UcrnError(f"--confidence {args.confidence:g}: give a probability from 0 "
                        "(the best mean) to below 1, e.g. 0.9")
    check_cluster_arguments(args)
    experiment = _experiment_path(args)
    if args.study_storage:
        check_study_url(args.study_storage)
    if args.grace_period > args.epochs:
        raise UcrnError(f"--grace-period {args.grace_period} exceeds --epochs {args.epochs}")
    chosen, modalities_chosen = config_from_options(
        args.config, args.set, modalities=args.modalities, seed=args.seed)
    budget = {"epochs": max(chosen.train.epochs, args.epochs),
              "patience": chosen.train.patience}
    base = apply_overrides(chosen, {"epochs": args.epochs, "patience": args.epochs})
    space = load_space(args.space, base, parse_set_options(args.set or []))

    metrics = _objectives(args.metric or ["valid_MAE"], args.mode or [], base.model.task)
    base = apply_overrides(base, {
        "select_metric": metrics[0].removeprefix("valid_"),
        "score_robust": any(m.startswith("valid_" + ROBUST_PREFIX) for m in metrics)})

    base, dataset = load_training_data(base, data_or_default(args.data), modalities_chosen)

    if not _is_uri(experiment):
        exists = (Path(experiment) / "tuner.pkl").exists()
        if args.resume and not exists:
            raise UcrnError(f"--resume: {experiment} holds no experiment to resume")
        if args.resume and (Path(experiment) / "best.json").exists():
            raise UcrnError(f"--resume: {experiment} is finished (its best.json holds the test "
                            "score, taken once); nothing was changed — start a new --name")
        if not args.resume and Path(experiment).exists():
            raise UcrnError(f"{experiment} exists; pass --resume to continue it, or another "
                            "--name")
    point, outside = base_point(space, base)
    plan = SearchPlan(args, dataset, base, space, metrics, experiment,
                      study_url(experiment, args.study_storage),
                      None if args.no_paper_trial else point, tuple(outside), budget)
    if args.resume and plan.study is not None:
        check_same_objectives(plan.study, plan.name, metrics)
    return plan


def _objectives(metrics: list[str], modes: list[str], task: str) -> tuple[str, ...]:
    """The ``--metric`` options checked: one or two validation metrics of ``task`` (each
    may be ``valid_robust_*``), and any ``--mode`` the same as each metric's direction."""
    if len(metrics) > 2:
        raise UcrnError(f"--metric given {len(metrics)} times; a search has one or two "
                        "objectives")
    if len(set(metrics)) < len(metrics):
        raise UcrnError(f"--metric {metrics[0]} given twice; give two different metrics")
    names = metric_names(task)
    for metric in metrics:
        if not metric.startswith("valid_"):
            raise UcrnError(
                f"--metric {metric}: the search optimises a validation metric (valid_*); "
                "the test split is scored once, after the search"
            )
        if metric.removeprefix("valid_").removeprefix(ROBUST_PREFIX) not in names:
            raise UcrnError(
                f"--metric {metric} is not a metric of task {task!r}; choose one of "
                f"{', '.join('valid_' + n for n in names)}, or valid_robust_ followed by one"
            )
    if modes and len(modes) != len(metrics):
        raise UcrnError(f"--mode given {len(modes)} time(s) for {len(metrics)} --metric; "
                        "leave --mode out (the direction follows the metric)")
    for metric, wanted in zip(metrics, modes, strict=False):
        if wanted != metric_mode(metric):
            raise UcrnError(
                f"--mode {wanted} contradicts {metric}, for which {metric_mode(metric)} is "
                "better; leave --mode out (the direction follows the metric)"
            )
    return tuple(metrics)


def _write_text(experiment: str, name: str, text: str) -> None:
    if _is_uri(experiment):
        import pyarrow.fs

        filesystem, root = pyarrow.fs.FileSystem.from_uri(experiment)
        with filesystem.open_output_stream(f"{root}/{name}") as stream:
            stream.write(text.encode())
    else:
        Path(experiment, name).write_text(text)


def _save_best_run(experiment: str, result: FitResult) -> None:
    if not _is_uri(experiment):
        save_run(Path(experiment) / "best", result)
        return
    import pyarrow.fs

    with tempfile.TemporaryDirectory() as folder:
        save_run(folder, result)
        pyarrow.fs.copy_files(folder, f"{experiment}/best")


def run_search(plan: SearchPlan) -> dict[str, Any]:
    """Start or join Ray, run the search, score the best checkpoint on test once; the
    experiment folder is this search's alone while it runs (a second one is refused)."""
    if _is_uri(plan.experiment):
        return _run_search(plan)
    with hold_folder(plan.experiment, "experiment"):
        return _run_search(plan)


def _run_search(plan: SearchPlan) -> dict[str, Any]:
    args = plan.args
    session = start_ray(args.address)
    resources, waits = plan_trials(args, session, plan.base, plan.dataset, console.print)
    if note := sharing_note(session):
        console.print(note)
    console.print(
        f"{'resuming' if args.resume else 'search'} {plan.experiment}: {args.num_samples} "
        f"trials × {args.epochs} epochs, {resources.concurrent} at once, {resources.workers} "
        f"worker(s) per trial with {resources.cpus_per_worker:g} CPU and "
        f"{resources.gpus_per_worker:g} GPU each · "
        + " and ".join(f"{m} ({metric_mode(m)})" for m in plan.metrics)
        + (f" · trials stopped early on {plan.metric}" if len(plan.metrics) > 1 else "")
    )
    searched = [key for key, entry in plan.space.items() if isinstance(entry, dict)]
    if plan.outside and not args.no_paper_trial:
        console.print(f"note: the paper's configuration lies outside the space "
                      f"({', '.join(plan.outside)}), so it is not one of the trials")
    started = time.perf_counter()
    with Interruption.experiment():
        grid = _tuner(plan, resources, searched, waits).fit()
    return _record_search(plan, grid, searched, resources, started)


def _tuner(plan: SearchPlan, resources, searched: list[str], waits: list):
    """The Tune experiment: a new one, or the interrupted one restored (``--resume``)."""

    args, base = plan.args, plan.base
    trainable = make_trainable(
        base, ray.put(plan.dataset), resources, f"{plan.experiment}/train",
        overrides_of=lambda trial: (rerun_overrides(trial, base) if is_rerun(trial)
                                    else trial_overrides(trial, base)),
        stack_of=lambda trial: rerun_runs(trial) if is_rerun(trial) else [trial])
    if args.resume:
        return tune.Tuner.restore(plan.experiment, trainable=trainable,
                                  resume_unfinished=True, resume_errored=True)
    storage = plan.experiment.rsplit("/", 1)[0]
    if plan.study is not None and not args.study_storage:
        Path(plan.experiment).mkdir(parents=True, exist_ok=True)  # study.db goes in it
    finalists = check_directory(finalists_folder(plan.experiment), "experiment")
    searcher = FinalistSearch(
        url=plan.study, study_name=plan.name, metrics=list(plan.metrics), epochs=args.epochs,
        seed=args.seed, concurrent=resources.concurrent, trials=args.num_samples,
        points_to_evaluate=[plan.base_point] if plan.base_point else None,
        finalists=args.finalists, finalist_seeds=args.finalist_seeds,
        winner_seeds=args.winner_seeds,
        confidence=args.confidence,
        stack=stacks_reruns(resources), paper=plan.base_point,
        fixed={key: entry for key, entry in plan.space.items() if not isinstance(entry, dict)})
    return tune.Tuner(
        trainable,
        param_space=to_tune(plan.space),
        # The searcher and the scheduler are each told their metrics (Optuna may have two;
        # the scheduler stops trials on the first), so the Tune config names none.
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=FairHalving(plan.metric, max_t=args.epochs,
                                  grace_period=args.grace_period, yardstick=plan.base_point),
            num_samples=args.num_samples + most_reruns(
                args.finalists, args.finalist_seeds, args.winner_seeds),
            max_concurrent_trials=resources.concurrent,
            reuse_actors=resources.reuse_processes,
        ),
        run_config=tune.RunConfig(
            name=plan.name, storage_path=storage, verbose=0, stop=ProgressWatch(args.stall_minutes),
            callbacks=[LiveTrialTable(plan.metric, searched, args.epochs), TrialUserErrors(),
                       InterruptionRecord(), BestOfRun(finalists, plan.metric),
                       CheckpointsTheSnapshotNames(plan.experiment), *waits],
            failure_config=tune.FailureConfig(max_failures=args.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # see tuning.checkpoints
        ),
    )


def _record_search(plan: SearchPlan, grid, searched: list[str], resources,
                   started: float) -> dict[str, Any]:
    """trials.csv; the finalists again over seeds; the chosen trial's selected checkpoint
    scored on test once; best.json and best/; the summary on the terminal."""

    searched_trials = [(trial, r) for trial, r in zip(grid._experiment_analysis.trials, grid,
                                                      strict=True) if not is_rerun(r.config)]
    results = [(trial.trial_id, _status(trial, r), r.config, r.metrics_dataframe)
               for trial, r in searched_trials]
    table = trial_rows(results, plan.metrics, searched)
    paper = _paper_trial(results, plan.base_point)
    table.insert(2, "paper", table["trial"] == (paper or "")[:8])
    _write_text(plan.experiment, "trials.csv", table.to_csv(index=False))
    check_ran_to_end(sum(trial.status in ("TERMINATED", "ERROR") for trial, _ in searched_trials),
                     plan.args.num_samples, "continue with --resume")
    if not any(r.metrics and plan.metric in r.metrics for _, r in searched_trials):
        raise UcrnError(f"no trial reported {plan.metric}; see the trial logs in "
                        f"{plan.experiment}")
    by_seed = _finalist_scores(plan, grid, table, results, resources)
    _write_text(plan.experiment, "trials.csv", table.to_csv(index=False))
    best, decision = _chosen(plan, grid, by_seed, paper)
    seconds = time.perf_counter() - started
    state = trial_state(best.metrics, best.checkpoint)
    model = state.selected_model()
    test = evaluate(model, plan.dataset.split("test"), plan.dataset, state.config)  # once
    result = state.to_fit_result(test, seconds, model)
    _save_best_run(plan.experiment, result)
    trial_epochs = int(_row(table, _trial_id(best))["epochs"])
    config = state.config.to_dict()
    config["train"].update(plan.budget)
    record = {
        **config,
        "search": {"experiment": plan.experiment, "trial": _trial_id(best),
                   "metric": plan.metric, "mode": plan.mode, "best_epoch": state.best_epoch,
                   "trial_epochs": trial_epochs,
                   "trials": len(results), "seconds": seconds, **_objectives_record(plan),
                   "paper_trial": _paper_record(table, paper, plan.metric),
                   "seeds": _seeds_record(by_seed, _trial_id(best), plan.metric, decision)},
        "metrics": {"valid": result.valid, "test": test},
    }
    _write_text(plan.experiment, "best.json", json.dumps(record, indent=2) + "\n")
    _show_search(plan, table, best, searched, record)
    return record


def _show_search(plan: SearchPlan, table, best, searched: list[str],
                 record: dict[str, Any]) -> None:
    """The search's summary on the terminal: its trials, its choice and what mattered."""
    found = record["search"]
    seconds, trial_epochs, best_epoch = found["seconds"], found["trial_epochs"], found["best_epoch"]
    stdout = table_console()
    stdout.print(rich_table(table, title=f"{len(table)} trials, best {plan.metric} first",
                            max_rows=20))
    best_settings = {key: best.config[key] for key in searched if key in best.config}
    stdout.print(f"best trial {_trial_id(best)}: {json.dumps(best_settings)}")
    if (paper_record := found["paper_trial"]) is not None:
        stdout.print(f"the paper's configuration ran as trial {paper_record['trial']}: "
                     f"{plan.metric} {paper_record[plan.metric]:.4f} at its best epoch")
    if line := decision_line(found["seeds"], plan.metric):
        stdout.print(line)
    stdout.print(metrics_table(
        f"best checkpoint (epoch {best_epoch}) · selected on {plan.metric}",
        {"valid": record["metrics"]["valid"], "test (scored once)": record["metrics"]["test"]},
    ))
    stdout.print(f"wrote {plan.experiment}/trials.csv, best.json, best/ ({seconds:.0f} s of "
                 "search)")
    stdout.print(f"best.json trains for {plan.budget['epochs']} epochs (patience "
                 f"{plan.budget['patience']}), the config's budget; its trial ran "
                 f"{trial_epochs}, which `--set epochs={trial_epochs} --set "
                 f"patience={trial_epochs}` repeats")
    if len(plan.metrics) > 1:
        _write_pareto_front(plan, table, _trial_id(best)[:8], stdout)
    _show_what_mattered(plan, stdout)


def _finalist_scores(plan: SearchPlan, grid, table, results,
                     resources) -> dict[str, dict[int, float]]:
    """The scores by seed (``tuning.finalists``) of the paper's trial and the ``--finalists``
    best others, also as columns of ``table``: mean, standard deviation and seeds behind each
    trial's score."""
    metric = plan.metric
    args = plan.args
    count = args.finalists if most_seeds(args.finalist_seeds, args.winner_seeds) > 1 else 0
    scored = [row for _, row in table.iterrows()
              if row["status"] == "done" and pd.notna(row[metric])]  # best first
    others = [row["trial"] for row in scored if not row["paper"]][:count]
    ranked = [row for row in scored if row["paper"] or row["trial"] in others] if count else []
    by_short = {trial_id[:8]: (trial_id, config) for trial_id, _, config, _ in results}
    finalists = [(by_short[row["trial"]][0],
                  {k: v for k, v in by_short[row["trial"]][1].items() if k in plan.space},
                  float(row[metric]), int(row["epochs"])) for row in ranked]
    paper = next((by_short[row["trial"]][0] for row in ranked if row["paper"]), None)
    by_seed = rescore(plan, resources, finalists, paper, console.print) if finalists else {}
    summaries = {trial[:8]: summary(list(values.values())) for trial, values in by_seed.items()}
    one_seed = {t: summary([v]) for t, v in zip(table["trial"], table[metric], strict=True)}
    rows = [summaries.get(t, one_seed[t]) for t in table["trial"]]
    position = list(table.columns).index(metric) + 1
    for offset, (column, field) in enumerate(((f"{metric} mean", "mean"),
                                              (f"{metric} std", "std"), ("seeds", "seeds"))):
        table.insert(position + offset, column, [row[field] for row in rows])
    return by_seed


def _chosen(plan: SearchPlan, grid, by_seed: dict[str, dict[int, float]], paper: str | None):
    """The trial best.json takes (``tuning.finalists.choose``) and how sure that is; without
    finalists, the trial best on its one seed."""
    if not by_seed:
        return grid.get_best_result(plan.metric, plan.mode, scope="all"), None
    scores = {trial: list(values.values()) for trial, values in by_seed.items()}
    best_trial, decision = choose(scores, paper, plan.mode, plan.args.confidence)
    return next(r for r in grid if _trial_id(r) == best_trial), decision


def _seeds_record(by_seed: dict[str, dict[int, float]], chosen: str, metric: str,
                  decision: dict[str, Any] | None) -> dict[str, Any]:
    """best.json's account of how sure the choice is: each finalist's scores, the seeds
    they came from (``run_seeds``, the evaluator's seeds of the same numbers) and the
    decision."""
    if not by_seed:
        return {"finalists": 0, "note": f"chosen on one seed's {metric}"}

    def scored(values: dict[int, float]) -> dict[str, Any]:
        return {**summary(list(values.values())), "values": list(values.values()),
                "run_seeds": list(values)}

    return {"metric": metric, "chosen": scored(by_seed[chosen]),
            "finalists": {trial: scored(values) for trial, values in by_seed.items()},
            "decision": decision}


def _paper_trial(results: list, point: dict[str, Any] | None) -> str | None:
    """The trial that ran the paper's configuration (its values are the enqueued point's)."""
    return next((trial_id for trial_id, _, config, _ in results if at_point(config, point)),
                None)


def _row(table, trial: str):
    """The row of ``trial`` in trials.csv's table (which shows ids by their first 8 letters)."""
    return table[table["trial"] == trial[:8]].iloc[0]


def _paper_record(table, paper: str | None, metric: str) -> dict[str, Any] | None:
    """The paper trial's id and validation score at its best epoch, for best.json."""
    if paper is None:
        return None
    row = _row(table, paper)
    return {"trial": paper, metric: float(row[metric]), "epochs": int(row["epochs"])}


def _objectives_record(plan: SearchPlan) -> dict[str, Any]:
    """With two objectives: both, and the rule that chose best.json's trial."""
    if len(plan.metrics) == 1:
        return {}
    return {"objectives": list(plan.metrics),
            "rule": f"the trial best on {plan.metric} (it is on the Pareto front of "
                    f"{' and '.join(plan.metrics)}; pareto.csv lists the others)"}


def _write_pareto_front(plan: SearchPlan, table, chosen: str, stdout) -> None:
    """The trials no other beats on both objectives, as pareto.csv and pareto.png."""
    front = pareto_front(table, plan.metrics)
    _write_text(plan.experiment, "pareto.csv", front.to_csv(index=False))
    stdout.print(rich_table(front, title=f"Pareto front of {' and '.join(plan.metrics)}: "
                            f"{len(front)} of {len(table)} trials (validation, each at its "
                            f"best {plan.metric} epoch)"))
    written = "pareto.csv"
    if not _is_uri(plan.experiment):
        pareto_plot(table, front, list(plan.metrics), chosen,
                    Path(plan.experiment) / "pareto.png")
        written += ", pareto.png"
    stdout.print(f"wrote {plan.experiment}/{written}; best.json holds {chosen}, the front's "
                 f"best on {plan.metric}")


def _show_what_mattered(plan: SearchPlan, stdout) -> None:
    """Parameter importances and the history, from the stored study; how to open it."""
    url = plan.study
    if url is None:
        return
    if not _is_uri(plan.experiment):
        importances, over = what_mattered(url, plan.name, Path(plan.experiment))
        if importances.empty:
            stdout.print("parameter importances need two trials that reported; see "
                         "history.png")
        else:
            stdout.print(rich_table(importances, title="what mattered: Optuna's parameter "
                                    f"importances (PED-ANOVA) over {over}"))
            stdout.print(f"wrote {plan.experiment}/importance.png, history.png")
    stdout.print(f"the study, live or later: {dashboard_command(url)}")


TRIAL_STATUS = {"TERMINATED": "done", "ERROR": "error", "PENDING": "not started"}


def _status(trial, result) -> str:
    """done (all epochs, or stopped early), error, not started or interrupted."""
    if result.error:
        return "error"
    if Interruption.interrupted(trial.trial_id):
        return "interrupted"
    return TRIAL_STATUS.get(trial.status, "interrupted")


def _trial_id(result) -> str:
    return str(result.metrics.get("trial_id") or Path(result.path).name)


def main(argv: Sequence[str] | None = None) -> int:
    with Interruption.handled():
        return exit_status(lambda: run_search(plan_search(argv)), "search",
                           "continue with --resume")


if __name__ == "__main__":
    # Run from the imported module, so that Ray pickles this file's functions and classes
    # by reference (by value, they would drag this script's globals along).
    from tuning.search import main as module_main

    sys.exit(module_main())
