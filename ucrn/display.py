"""Tables for the terminal that the ``ucrn`` command and the tuning layer both print."""

from __future__ import annotations

import math

from rich.table import Table


def _format(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.4f}"


def metrics_table(title: str, columns: dict[str, dict[str, float]]) -> Table:
    """A table with one row per metric and one column per split (or condition)."""
    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    keys = list(dict.fromkeys(k for metrics in columns.values() for k in metrics))
    for key in keys:
        table.add_row(key, *(_format(metrics.get(key)) for metrics in columns.values()))
    return table
