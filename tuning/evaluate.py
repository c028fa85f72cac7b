"""``python tuning/evaluate.py``: rerun a configuration over seeds on Ray, write the paper's tables.

Every (variant, seed) run is one trial of one Ray Tune experiment, trained by Ray Train
workers with the search's worker loop: it trains on train, selects its checkpoint on valid
and is scored on test once — under every robustness condition for the full model. Each
run's results are written to ``OUT/runs/<variant>-seed<k>.json`` as soon as it finishes; a
rerun with the same ``--out`` skips finished runs and continues unfinished ones from their
last checkpoint. Then ``OUT`` receives the tables (CSV), figures (PNG) and ``REPORT.md``:

- main: mean ± std over seeds of every test metric (paper App. A);
- missing modality (Table 4): masked and dropped modalities, metric and % drop;
- noise (Table 5): Bernoulli noise p on each modality and on all, metric and % drop;
- ablation (Table 6): without URM, SQIL, MJS (λm = 0), CRM;
- parameters (Table 7), standard deviations (Table 8), RPI against baselines (Table 9).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import ray
from ray.tune import Callback
from rich.console import Console

from tuning.cluster_options import add_cluster_arguments, check_cluster_arguments
from tuning.figures import robustness_bars, seed_strip_plot
from tuning.progress import Interruption
from tuning.ray_start import sharing_note, start_ray
from tuning.tables import (
    condition_table,
    markdown,
    mean_std,
    plus_minus,
    rich_table,
    summary_table,
)
from tuning.tables import console as table_console
from tuning.trials import make_trainable, plan_trials, run_grid, stacked_seeds
from ucrn.config import (
    ABLATIONS,
    Config,
    apply_overrides,
    config_from_dict,
    config_from_options,
)
from ucrn.data.layout import Dataset, fingerprint
from ucrn.data.synthetic import data_or_default
from ucrn.engine import load_training_data, training_differences
from ucrn.errors import UcrnError, exit_status
from ucrn.files import atomic_write, check_directory, hold_folder
from ucrn.metrics import is_better
from ucrn.model import UCRN, count_parameters
from ucrn.robustness import drop_percent
from ucrn.tasks import TASKS, get_task, metric_names

console = Console(stderr=True, soft_wrap=True)  # a log keeps each line whole
FULL = "full"
DEFAULT_BASELINES = Path(__file__).resolve().parent / "baselines" / "paper.csv"
PAPER_PARAMETERS = {"trimodal": 422_401, "bimodal": 211_681}


@dataclass
class EvaluationPlan:
    args: argparse.Namespace
    dataset: Dataset
    base: Config
    variants: list[str]
    seeds: list[int]
    out: Path
    baselines: pd.DataFrame
    dataset_name: str


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python tuning/evaluate.py",
        description="Rerun a UCRN configuration over seeds (and ablations) on Ray and write "
        "the paper's tables: mean ± std, missing modality, noise, ablation, parameters, "
        "standard deviations, RPI.",
    )
    parser.add_argument("--config", help="best.json of a search, or any config ucrn train "
                        "takes (default: the paper's defaults)")
    parser.add_argument("--data", help="an .h5 data file (default: the embedded synthetic "
                        "MOSI)")
    parser.add_argument("--modalities", help="e.g. l,a (default: the config's, else all the "
                        "data has)")
    parser.add_argument("--seeds", type=int, default=10, help="runs per variant (default 10)")
    parser.add_argument("--stack-seeds", type=int, metavar="K",
                        help="train up to K seeds of a variant as one stacked computation in "
                        "one trial (default: all of them on a GPU; 1 on a CPU, where ten "
                        "stacked measured 1.1× as fast as one after another, less than trials "
                        "side by side give)")
    parser.add_argument("--ablations", default=",".join(ABLATIONS),
                        help=f"comma list of {', '.join(ABLATIONS)}, or none (default: all)")
    parser.add_argument("--epochs", type=int, help="override the config's epochs")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a setting for every run")
    parser.add_argument("--noise", type=float, default=0.5,
                        help="Bernoulli noise probability for Table 5 (default 0.5)")
    parser.add_argument("--baselines", default=str(DEFAULT_BASELINES),
                        help="CSV of method,dataset,metric,value[,source] (default: the "
                        "paper's Tables 1–3)")
    parser.add_argument("--dataset", help="which baselines to compare with: mosi, mosei, "
                        "tbje-mosei (default: from the data file's name)")
    parser.add_argument("--out", help="output folder (default: evaluations/<config name>)")
    add_cluster_arguments(parser)
    return parser


def _read_baselines(path: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise UcrnError(f"--baselines {path} does not exist")
    try:
        frame = pd.read_csv(path)
    except Exception as error:  # noqa: BLE001 - pandas raises many kinds
        raise UcrnError(f"--baselines {path} cannot be read as CSV: {error}") from None
    missing = {"method", "dataset", "metric", "value"} - set(frame.columns)
    if missing:
        raise UcrnError(f"--baselines {path} lacks the column(s) {', '.join(sorted(missing))}")
    known = {name for other in TASKS.values() for name in other.metric_names}
    unknown = sorted(set(frame["metric"]) - known)
    if unknown:
        raise UcrnError(f"--baselines {path}: unknown metric(s) {', '.join(unknown)}; use the "
                        "names of ucrn's metrics, e.g. Non0_acc_2, Acc_7, MAE, mean_acc")
    if not pd.api.types.is_numeric_dtype(frame["value"]):
        raise UcrnError(f"--baselines {path}: column 'value' must hold numbers")
    return frame


def _check_feature_sizes(config_path: Path, dataset: Dataset) -> None:
    """A config that names its feature sizes (as a search's best.json does) must match."""
    recorded = json.loads(config_path.read_text()).get("model", {}).get("input_dims") or {}
    for modality, size in recorded.items():
        found = dataset.input_dims.get(modality)
        if found is not None and found != size:
            raise UcrnError(
                f"{config_path} was made for {size} {modality} features but {dataset.path} "
                f"has {found}; evaluate on data of the same features, or delete input_dims "
                "from the config to train on these"
            )


def plan_evaluation(argv: Sequence[str] | None = None) -> EvaluationPlan:
    """Parse and check every input; nothing here starts Ray."""
    args = build_parser().parse_args(argv)
    if args.seeds < 1:
        raise UcrnError(f"--seeds {args.seeds}: give at least 1")
    if args.stack_seeds is not None and args.stack_seeds < 1:
        raise UcrnError(f"--stack-seeds {args.stack_seeds}: give at least 1")
    check_cluster_arguments(args)
    if not 0.0 <= args.noise <= 1.0:
        raise UcrnError(f"--noise {args.noise}: a probability in [0, 1]")
    variants = [FULL]
    if args.ablations.strip().lower() != "none":
        for name in filter(None, (a.strip() for a in args.ablations.split(","))):
            if name not in ABLATIONS:
                raise UcrnError(f"--ablations: unknown {name!r}; choose from "
                                f"{', '.join(ABLATIONS)} or none")
            variants.append(name)
    base, modalities_chosen = config_from_options(
        args.config, args.set, modalities=args.modalities, epochs=args.epochs)
    base, dataset = load_training_data(base, data_or_default(args.data), modalities_chosen)
    if args.config:
        _check_feature_sizes(Path(args.config), dataset)
    baselines = _read_baselines(args.baselines)
    dataset_name = args.dataset or next(
        (name for name in ("tbje-mosei", "mosei", "mosi") if name in dataset.name.lower()),
        dataset.name)
    name = Path(args.config).stem if args.config else "defaults"
    out = Path(args.out or f"evaluations/{name}").resolve()
    return EvaluationPlan(args, dataset, base, variants, list(range(args.seeds)), out, baselines,
                dataset_name)


# ---------------------------------------------------------------------------------- runs


def run_key(variant: str, seed: int) -> str:
    return f"{variant}-seed{seed}"


def run_overrides(variant: str, seed: int) -> dict[str, Any]:
    """What a (variant, seed) run changes in the base config."""
    return {"seed": seed, **ABLATIONS.get(variant, {})}


def finished_runs(out: Path) -> dict[str, dict]:
    """The per-run records already written to ``out/runs``."""
    records = {}
    for path in sorted((out / "runs").glob("*.json")):
        record = json.loads(path.read_text())
        records[run_key(record["variant"], record["seed"])] = record
    return records


def check_finished_runs(plan: EvaluationPlan, records: dict[str, dict]) -> None:
    """Refuse an ``--out`` whose runs trained another configuration or on other data than
    this evaluation's (a second search's best.json lands in the same evaluations/best)."""
    data = fingerprint(plan.dataset)
    for key, record in records.items():
        wanted = apply_overrides(plan.base, run_overrides(record["variant"], record["seed"]))
        changes = training_differences(config_from_dict(record["config"]), wanted)
        ran_on = record.get("data", {}).get("fingerprint", data)  # older runs did not say
        if ran_on != data:
            changes.append(f"data: {record['data']['name']} → {plan.dataset.name}")
        if changes:
            raise UcrnError(
                f"--out {plan.out} holds runs of another evaluation ({key} differs in "
                f"{'; '.join(changes[:4])}{'; …' if len(changes) > 4 else ''}): give "
                "another --out, or remove that folder to start again")


def record_run(plan: EvaluationPlan, variant: str, seed: int, scored: dict) -> dict:
    """Save a finished run's record: what its trial scored (``ucrn.robustness.scored_run``:
    test once per condition, on the trial's device), under its variant and seed."""
    record = {"variant": variant, "seed": seed, **scored}
    runs = check_directory(plan.out / "runs", "--out")
    atomic_write(runs / f"{run_key(variant, seed)}.json",
                 lambda path: Path(path).write_text(json.dumps(record, indent=1) + "\n"))
    return record


def final_scoring(variant: str, seed: int, noise: float) -> dict[str, Any]:
    """How a run's trial scores its selected model at its end: every robustness condition
    for the full model (Bernoulli ``noise`` seeded by the run's seed), test alone for an
    ablation."""
    return {"perturb": variant == FULL, "noise": noise, "noise_seed": seed}


class RecordRuns(Callback):
    """Records each run as soon as its trial ends; the trial scored it, the driver writes."""

    def __init__(self, plan: EvaluationPlan):
        self.plan = plan
        self.failed: list[str] = []

    def __getstate__(self) -> dict:  # the data stay out of Tune's experiment state
        return {"plan": None, "failed": self.failed}

    def on_trial_complete(self, iteration, trials, trial, **info):
        variant, seeds = trial.config["run"]["variant"], trial.config["run"]["seeds"]
        if not trial.last_result.get("done"):
            return  # stopped before its last epoch (the run stalled, or Ctrl-C): still pending
        stacked = trial.last_result.get("run_records")  # a trial of several seeds
        records = json.loads(stacked) if stacked else [trial.last_result.get("run_record")]
        for seed, scored in itertools.zip_longest(seeds, records[:len(seeds)]):
            try:
                if not scored:
                    raise RuntimeError("its trial reported no scores")
                record = json.loads(scored)
                if "error" in record:  # its model alone stopped, in a stack
                    raise RuntimeError(record["error"])
                record_run(self.plan, variant, seed, record)
                console.print(f"  finished {run_key(variant, seed)}")
            except Exception as error:  # noqa: BLE001 - noted; the other runs go on
                self.failed.append(f"{run_key(variant, seed)}: {error}")

    def on_trial_error(self, iteration, trials, trial, **info):
        run = trial.config["run"]
        self.failed.extend(f"{run_key(run['variant'], seed)}: training failed"
                           for seed in run["seeds"])


def stacked_runs(pending: list[tuple[str, int]], stack: int) -> list[dict[str, Any]]:
    """The pending (variant, seed) runs as trials: each of up to ``stack`` seeds of one
    variant (one architecture), in the order the runs come."""
    return stacked_seeds([{"variant": v, "seed": s} for v, s in pending], "variant", stack)


def run_pending(plan: EvaluationPlan, pending: list[tuple[str, int]]) -> None:
    """Train the pending runs as one Tune experiment; record each as soon as it ends."""
    session = start_ray(plan.args.address)
    resources, waits = plan_trials(plan.args, session, plan.base, plan.dataset, console.print)
    console.print(f"{len(pending)} runs, {resources.concurrent} at once, each with "
                  f"{resources.cpus_per_worker:g} CPU and {resources.gpus_per_worker:g} GPU per "
                  "worker")
    if note := sharing_note(session):
        console.print(note)
    stack = plan.args.stack_seeds or (len(plan.seeds) if resources.gpus_per_worker else 1)
    if stack > 1 and resources.workers > 1:
        raise UcrnError("--stack-seeds trains seeds side by side in one process: it does not "
                        "take --workers-per-trial; give --stack-seeds 1")
    trials = stacked_runs(pending, stack)
    if stack > 1:
        console.print(f"{len(pending)} runs as {len(trials)} trials of up to {stack} seeds, "
                      "each trial one stacked computation")
    base, noise = plan.base, plan.args.noise  # the trainable must not capture the plan's data
    trainable = make_trainable(
        base, ray.put(plan.dataset), resources, str(plan.out / "ray" / "train"),
        overrides_of=lambda trial: run_overrides(trial["run"]["variant"], trial["run"]["seed"]),
        run_name_of=lambda trial, _: run_key(trial["run"]["variant"], trial["run"]["seed"]),
        final_scoring_of=lambda trial: final_scoring(trial["run"]["variant"],
                                                     trial["run"]["seed"], noise),
        stack_of=lambda trial: [{"run": {"variant": trial["run"]["variant"], "seed": seed}}
                                for seed in trial["run"]["seeds"]],
    )
    recorder = RecordRuns(plan)
    run_grid(trainable, "run", trials,
             name=time.strftime("evaluate-%Y%m%d-%H%M%S"), storage=str(plan.out / "ray"),
             resources=resources, args=plan.args, callbacks=[recorder, *waits],
             how_to_continue="rerun the same command to continue")
    if recorder.failed:
        raise UcrnError(f"{len(recorder.failed)} run(s) did not finish "
                        f"({'; '.join(recorder.failed)}); rerun the same command to retry them")


# -------------------------------------------------------------------------------- tables


def build_tables(plan: EvaluationPlan, records: dict[str, dict]) -> dict[str, pd.DataFrame]:
    """Every table of the report, from the per-run records."""
    task = plan.base.model.task
    metrics = [m for m in metric_names(task) if m != "loss"]
    headline = list(get_task(task).headline)
    full_runs = [r for r in records.values() if r["variant"] == FULL]
    per_seed = pd.DataFrame([{"variant": r["variant"], "seed": r["seed"], **r["test"]}
                             for r in sorted(records.values(),
                                             key=lambda r: (r["variant"], r["seed"]))])
    tables: dict[str, pd.DataFrame] = {"per_seed": per_seed}
    tables["main"] = summary_table(per_seed[per_seed["variant"] == FULL], metrics)

    rows = []
    for record in full_runs:
        full = record["conditions"]["full"]
        for condition, scores in record["conditions"].items():
            if condition == "full":
                continue
            rows.append({"condition": condition, "seed": record["seed"], **scores,
                         **{f"full_{m}": full[m] for m in headline}})
    per_condition = pd.DataFrame(rows)
    for name, kinds in (("missing_modality", ("masked", "dropped")), ("noise", ("noise",))):
        of_kind = per_condition[per_condition["condition"].str.split(" ").str[0].isin(kinds)] \
            if not per_condition.empty else per_condition
        tables[name] = condition_table(of_kind, headline, drop_percent) if not of_kind.empty \
            else pd.DataFrame()

    ablation_rows = []
    for variant in plan.variants:
        group = per_seed[per_seed["variant"] == variant]
        row: dict[str, Any] = {"model": "UCRN" if variant == FULL else
                               f"UCRN w/o {variant.removeprefix('no_').upper()}",
                               "seeds": len(group)}
        for metric in headline:
            row[f"{metric} mean"], row[f"{metric} std"] = mean_std(group[metric])
        ablation_rows.append(row)
    tables["ablation"] = pd.DataFrame(ablation_rows)
    tables["parameters"] = parameter_table(plan)
    tables["std"] = std_table(tables, headline)
    tables["rpi"] = rpi_table(plan, tables["main"])
    return tables


def parameter_table(plan: EvaluationPlan) -> pd.DataFrame:
    """Table 7: our counts for the evaluated config, trimodal and every bimodal pair."""
    dims = plan.dataset.input_dims
    rows = []
    modalities = plan.base.model.modalities
    subsets = [modalities] + [tuple(m for m in modalities if m != left) for left in modalities
                              if len(modalities) == 3]
    for subset in subsets:
        config = apply_overrides(plan.base, {"modalities": ",".join(subset),
                                             "input_dims": json.dumps(dims)})
        kind = {3: "trimodal", 2: "bimodal", 1: "unimodal"}[len(subset)]
        rows.append({"model": f"UCRN {kind} {'+'.join(m.upper() for m in subset)}",
                     "parameters": count_parameters(UCRN(config.model)),
                     "paper (Table 7)": PAPER_PARAMETERS.get(kind, float("nan"))})
    return pd.DataFrame(rows)


def std_table(tables: dict[str, pd.DataFrame], headline: list[str]) -> pd.DataFrame:
    """Table 8: the standard deviation over seeds of each headline metric, per table row."""
    rows = [{"table": "main", "row": "UCRN", **{
        m: tables["main"].set_index("metric").loc[m, "std"] for m in headline}}]
    for name in ("missing_modality", "noise"):
        for _, row in tables[name].iterrows():
            rows.append({"table": name, "row": row["condition"],
                         **{m: row[f"{m} std"] for m in headline}})
    for _, row in tables["ablation"].iterrows():
        if row["model"] != "UCRN":
            rows.append({"table": "ablation", "row": row["model"],
                         **{m: row[f"{m} std"] for m in headline}})
    return pd.DataFrame(rows)


def rpi_table(plan: EvaluationPlan, main: pd.DataFrame) -> pd.DataFrame:
    """Table 9: |our mean − baseline| / our std, for the baselines of this dataset."""
    ours = main.set_index("metric")
    rows = []
    for _, baseline in plan.baselines[plan.baselines["dataset"] == plan.dataset_name].iterrows():
        metric = baseline["metric"]
        if metric not in ours.index:
            continue
        mean, std = ours.loc[metric, "mean"], ours.loc[metric, "std"]
        better = is_better(metric, mean, float(baseline["value"]))
        rows.append({"baseline": baseline["method"], "metric": metric,
                     "baseline value": float(baseline["value"]), "our mean": mean,
                     "our std": std, "RPI": abs(mean - baseline["value"]) / std if std else
                     float("nan"), "ours better": "yes" if better else "no",
                     "source": baseline.get("source", "")})
    return pd.DataFrame(rows)


# -------------------------------------------------------------------------------- report


def write_report(plan: EvaluationPlan, tables: dict[str, pd.DataFrame], seconds: float,
                 runs_made: int) -> Path:
    """CSV files, figures and REPORT.md in ``plan.out``; ``seconds`` is this invocation's
    wall time, in which it made ``runs_made`` of the runs."""

    out = plan.out
    for name, frame in tables.items():
        frame.to_csv(out / f"{name}.csv", index=False)
    headline = list(get_task(plan.base.model.task).headline)
    seed_strip_plot(tables["per_seed"], headline, out / "per_seed.png")
    robustness_bars(tables, headline[0], out / "robustness.png")
    report = out / "REPORT.md"
    report.write_text(report_markdown(plan, tables, seconds, runs_made))
    return report


def report_markdown(plan: EvaluationPlan, tables: dict[str, pd.DataFrame], seconds: float,
                    runs_made: int) -> str:
    """REPORT.md: every table, the figures, and what the numbers are."""
    seeds = int(tables["main"]["seeds"].max()) if not tables["main"].empty else 0
    source = plan.dataset.source or "unknown"
    lines = [
        f"# UCRN evaluation: {plan.dataset.name}",
        "",
        f"Data: `{plan.dataset.path}` (source: {source}); config: "
        f"`{plan.args.config or 'paper defaults'}`; {seeds} seeds per variant; variants: "
        f"{', '.join(plan.variants)}; {seconds:.0f} s of wall time for the {runs_made} "
        f"run{'' if runs_made == 1 else 's'} this invocation made (runs finished earlier are "
        "reused). Every run trained on train, chose its checkpoint on valid and was scored "
        "on test once per condition. Means ± sample "
        "standard deviations (ddof 1) over seeds.",
        "",
        "## Main: test metrics of the full model",
        "", markdown(plus_minus(tables["main"])), "",
        "![per-seed test metrics](per_seed.png)",
        "",
        "## Missing modality (paper Table 4)",
        "",
        "`masked X` keeps X and zeroes the others' features; `dropped X` keeps X and removes "
        "the others. Drop % = (full − condition) / full × 100 per seed (for MAE, "
        "(condition − full) / full), so a positive drop is always worse.",
        "", markdown(plus_minus(tables["missing_modality"])), "",
        "![robustness drops](robustness.png)",
        "",
        f"## Noise (paper Table 5), Bernoulli p = {plan.args.noise:g}",
        "",
        "Each feature value of the named modalities, at every valid time step, gets Gaussian "
        "noise of that feature's standard deviation with probability p.",
        "", markdown(plus_minus(tables["noise"])), "",
        "## Ablation (paper Table 6)",
        "", markdown(plus_minus(tables["ablation"])), "",
        "## Parameters (paper Table 7)",
        "", markdown(tables["parameters"], digits=0), "",
        "## Standard deviations over seeds (paper Table 8)",
        "", markdown(tables["std"]), "",
        f"## Relative performance improvement (paper Table 9), dataset `{plan.dataset_name}`",
        "",
        "RPI = |our mean − baseline| / our std. Baselines from "
        f"`{Path(plan.args.baselines).name}`; the paper's 2-class accuracy and F1 are read "
        "as `Non0_acc_2` and `Non0_F1` (MulT's convention).",
        "",
        markdown(tables["rpi"]) if not tables["rpi"].empty else
        "No baseline for this dataset and task.",
        "",
    ]
    if source == "synthetic":
        lines[1:1] = ["", "**These data are synthetic**: the numbers test the machinery, not "
                      "the paper's claims, and the RPI against published baselines means "
                      "nothing here."]
    return "\n".join(lines)


def run_evaluation(plan: EvaluationPlan) -> Path:
    """Every pending run, then the tables; ``--out`` is this evaluation's alone while it
    runs (a second one is refused)."""
    with hold_folder(plan.out, "--out"):
        return _run_evaluation(plan)


def _run_evaluation(plan: EvaluationPlan) -> Path:
    started = time.perf_counter()
    done = finished_runs(plan.out)
    check_finished_runs(plan, done)
    # Seed by seed, so that a stopped evaluation leaves whole seeds (every variant) done.
    wanted = [(variant, seed) for seed in plan.seeds for variant in plan.variants]
    pending = [(v, s) for v, s in wanted if run_key(v, s) not in done]
    console.print(f"evaluation {plan.out}: {len(wanted)} runs ({len(plan.variants)} variants "
                  f"× {len(plan.seeds)} seeds), {len(wanted) - len(pending)} already done")
    if pending:
        run_pending(plan, pending)
    done = finished_runs(plan.out)
    records = {key: done[key] for key in (run_key(v, s) for v, s in wanted) if key in done}
    tables = build_tables(plan, records)
    report = write_report(plan, tables, time.perf_counter() - started, len(pending))
    out = table_console()
    out.print(rich_table(plus_minus(tables["main"]), title="test metrics of the full model"))
    for name in ("missing_modality", "noise", "ablation", "parameters", "rpi"):
        if not tables[name].empty:
            shown = plus_minus(tables[name])
            if name in ("missing_modality", "noise"):  # the terminal shows drops only
                shown = shown[["condition", *[c for c in shown.columns if "drop" in c]]]
            out.print(rich_table(shown, title=name.replace("_", " ")))
    out.print(f"wrote {report} and its tables and figures")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    with Interruption.handled():
        return exit_status(lambda: run_evaluation(plan_evaluation(argv)), "evaluate",
                           "finished runs are kept; rerun the same command to continue")


if __name__ == "__main__":
    # Run from the imported module, so that Ray pickles this file's functions and classes
    # by reference (by value, they would drag this script's globals along).
    from tuning.evaluate import main as module_main

    sys.exit(module_main())
