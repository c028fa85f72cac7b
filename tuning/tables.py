"""Tables of trials and metrics: pandas for files, rich for the terminal, live during a search."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.table import Table

from tuning.space import RERUN_KEY
from ucrn.metrics import is_better, mode

SHORT_NAMES = {
    "lambda_m": "λm", "lambda_c": "λc", "urm_layers": "URM", "crm_layers": "CRM", "heads": "H",
    "head_width": "dh", "sqil_layers": "SQIL", "learning_rate": "lr", "batch_size": "batch",
    "dropout": "drop", "weight_decay": "wd", "ffn_multiplier": "ffn",
}


def console(stream=None) -> Console:
    """A rich console that stays wide enough for the trial tables when not on a terminal."""
    stream = stream or sys.stdout
    return Console(file=stream, width=None if stream.isatty() else 160)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:.4g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}"
    return "—" if value is None else str(value)


def rich_table(frame: pd.DataFrame, title: str = "", max_rows: int | None = None) -> Table:
    """A DataFrame as a rich table (numbers right-aligned, 4 significant figures)."""
    table = Table(title=title or None)
    for column in frame.columns:
        label = SHORT_NAMES.get(str(column), str(column))
        numeric = pd.api.types.is_numeric_dtype(frame[column])
        table.add_column(label, justify="right" if numeric else "left")
    rows = frame if max_rows is None else frame.head(max_rows)
    for _, row in rows.iterrows():
        table.add_row(*(_cell(value) for value in row.tolist()))
    return table


def trial_rows(results: list[tuple[str, str, dict, pd.DataFrame | None]],
               metrics: Sequence[str], hyperparameters: list[str]) -> pd.DataFrame:
    """One row per trial: status, epochs, its best epoch by the first of ``metrics`` and
    every metric's value at that epoch (the checkpoint it keeps), settings; best first.

    ``results`` holds (trial_id, status, config, per-epoch metrics) for each trial.
    """
    first = metrics[0]
    direction = mode(first)
    rows = []
    for trial_id, status, config, history in results:
        row: dict[str, Any] = {"trial": trial_id[:8], "status": status}
        if history is not None and first in history and history[first].notna().any():
            scores = history[first]
            best = scores.idxmin() if direction == "min" else scores.idxmax()
            row.update({"epochs": int(history["epoch"].max()),
                        **{m: history[m][best] if m in history else float("nan")
                           for m in metrics},
                        "best epoch": int(history.loc[best, "epoch"])})
        else:
            row.update({"epochs": 0, **{m: float("nan") for m in metrics}, "best epoch": 0})
        row.update({key: (config or {}).get(key) for key in hyperparameters})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values(first, ascending=direction == "min", na_position="last")
    return frame.reset_index(drop=True)


def pareto_front(trials: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """The rows of ``trials`` that no other row dominates on ``metrics`` (each in its own
    direction: at least as good on all and better on one), best first metric first."""
    scored = trials.dropna(subset=list(metrics))
    # as costs: lower is better on every column
    costs = np.column_stack([scored[m].to_numpy(float) * (1 if mode(m) == "min" else -1)
                             for m in metrics])
    dominated = [bool(np.any(np.all(costs <= cost, axis=1) & np.any(costs < cost, axis=1)))
                 for cost in costs]
    front = scored[~np.array(dominated, dtype=bool)]
    return front.sort_values(list(metrics), ascending=[mode(m) == "min" for m in metrics],
                             ignore_index=True)


class LiveTrialTable(Callback):
    """A Tune callback that keeps a rich table of the trials on screen during the search."""

    def __init__(self, metric: str, hyperparameters: list[str], max_epochs: int):
        self.metric, self.hyperparameters, self.max_epochs = metric, hyperparameters, max_epochs
        self.rows: dict[str, dict[str, Any]] = {}
        self._live: Live | None = None

    def __getstate__(self) -> dict:  # the screen is not part of the experiment's state
        return {**self.__dict__, "_live": None}

    def _render(self) -> Table:
        frame = pd.DataFrame(list(self.rows.values()))
        if frame.empty:
            return Table(title="waiting for the first trial")
        return rich_table(frame, title=f"trials: {self.metric}, last epoch and best so far")

    def _show(self) -> None:
        if self._live is None:
            self._live = Live(self._render(), console=console(sys.stderr),
                              refresh_per_second=2, transient=False)
            self._live.start()
        else:
            self._live.update(self._render())

    def _row(self, trial, status: str) -> dict[str, Any]:
        """A trial's row; a finalist's rerun shows under its finalist, with its seeds."""
        rerun = trial.config.get(RERUN_KEY)
        row = self.rows.setdefault(trial.trial_id, {
            "trial": (rerun["trial"] if rerun else trial.trial_id)[:8], "status": status,
            "epoch": 0, "last": float("nan"), "best": float("nan"),
            **{key: trial.config.get(key) for key in self.hyperparameters},
        })
        seeds = f" (rerun, seed {', '.join(map(str, rerun['seeds']))})" if rerun else ""
        row["status"] = status + seeds
        return row

    def on_trial_start(self, iteration, trials, trial, **info):
        self._row(trial, "running")
        self._show()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = self._row(trial, "running")
        value = result.get(self.metric, float("nan"))
        row["epoch"] = f"{result.get('epoch', 0)}/{self.max_epochs}"
        row["last"] = value
        if is_better(self.metric, value, row["best"]):
            row["best"] = value
        self._show()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._row(trial, "done")
        self._show()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._row(trial, "error")
        self._show()

    def on_experiment_end(self, trials, **info):
        if self._live is not None:
            self._live.stop()
            if not self._live.console.is_terminal:
                self._live.console.line()  # its last frame ends without one
            self._live = None


# ------------------------------------------------------------------- evaluator tables


def mean_std(values: pd.Series) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for one seed), NaNs left out."""
    values = values.dropna()
    if values.empty:
        return float("nan"), float("nan")
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def summary_table(per_seed: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Rows: metrics; columns: mean, std, seeds — from one row per seed."""
    rows = []
    for metric in metrics:
        mean, std = mean_std(per_seed[metric])
        rows.append({"metric": metric, "mean": mean, "std": std,
                     "seeds": int(per_seed[metric].notna().sum())})
    return pd.DataFrame(rows)


def condition_table(per_condition: pd.DataFrame, metrics: list[str], drop) -> pd.DataFrame:
    """Rows: conditions; for each metric its mean and std over seeds, and the mean and std of
    the per-seed percentage drop against the unperturbed model (``drop(metric, full, x)``).

    ``per_condition`` has one row per (seed, condition), with a ``full_<metric>`` column
    holding the same seed's unperturbed score.
    """
    rows = []
    for condition, group in per_condition.groupby("condition", sort=False):
        row: dict[str, Any] = {"condition": condition, "seeds": len(group)}
        for metric in metrics:
            row[f"{metric} mean"], row[f"{metric} std"] = mean_std(group[metric])
            drops = pd.Series([drop(metric, f, x) for f, x in
                               zip(group[f"full_{metric}"], group[metric], strict=True)])
            row[f"{metric} drop % mean"], row[f"{metric} drop % std"] = mean_std(drops)
        rows.append(row)
    return pd.DataFrame(rows)


def plus_minus(frame: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """For reading: each ``X mean`` / ``X std`` column pair (or ``mean`` / ``std``) becomes
    one ``X`` column of ``mean ± std`` strings."""
    shown = pd.DataFrame(index=frame.index)
    columns = list(frame.columns)
    for column in columns:
        if column.endswith("std") and column[:-3] + "mean" in columns:
            continue
        if column.endswith("mean") and column[:-4] + "std" in columns:
            std_column = column[:-4] + "std"
            label = column[:-4].strip() or "mean ± std"
            shown[label] = [
                "—" if pd.isna(m) else f"{m:.{digits}f}" if pd.isna(s) else
                f"{m:.{digits}f} ± {s:.{digits}f}"
                for m, s in zip(frame[column], frame[std_column], strict=True)]
        else:
            shown[column] = frame[column]
    return shown


def markdown(frame: pd.DataFrame, digits: int = 4) -> str:
    """A DataFrame as a GitHub Markdown table (no extra dependency)."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "—" if math.isnan(value) else f"{value:.{digits}f}"
        return str(value)

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" if not pd.api.types.is_numeric_dtype(frame[c]) else "---:"
                          for c in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])
