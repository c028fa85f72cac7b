"""Figures of the evaluation report (per-seed test metrics, robustness drops) and of a
search with two objectives (its Pareto front), as PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ucrn.files import atomic_write  # noqa: E402


def seed_strip_plot(per_seed: pd.DataFrame, metrics: list[str], path: Path) -> Path:
    """One panel per metric: a box of the per-seed test scores per variant, seeds as dots."""
    variants = list(dict.fromkeys(per_seed["variant"]))
    columns = min(3, len(metrics))
    rows = -(-len(metrics) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 3.2 * rows),
                                squeeze=False)
    for axis in axes.flat[len(metrics):]:
        axis.set_visible(False)
    jitter = np.random.default_rng(0)
    for axis, metric in zip(axes.flat, metrics, strict=False):
        groups = [per_seed.loc[per_seed["variant"] == v, metric].dropna().to_numpy()
                  for v in variants]
        axis.boxplot(groups, widths=0.5, showfliers=False)
        for position, values in enumerate(groups, start=1):
            axis.scatter(position + jitter.uniform(-0.12, 0.12, len(values)), values, s=12,
                         alpha=0.8, zorder=3)
        axis.set_xticks(range(1, len(variants) + 1), variants, rotation=45, ha="right",
                        fontsize=8)
        axis.set_title(metric, fontsize=10)
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle("test metrics per seed", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def robustness_bars(tables: dict[str, pd.DataFrame], metric: str, path: Path) -> Path:
    """Mean percentage drop of ``metric`` per condition, with the std over seeds as bars."""
    frames = [tables[name] for name in ("missing_modality", "noise") if not tables[name].empty]
    figure, axis = plt.subplots(figsize=(8, 3.6))
    if frames:
        rows = pd.concat(frames, ignore_index=True)
        mean, std = rows[f"{metric} drop % mean"], rows[f"{metric} drop % std"].fillna(0.0)
        colours = ["tab:blue" if c.startswith("masked") else "tab:orange"
                   if c.startswith("dropped") else "tab:red" for c in rows["condition"]]
        axis.bar(range(len(rows)), mean, yerr=std, color=colours, capsize=3)
        axis.set_xticks(range(len(rows)), rows["condition"], rotation=45, ha="right",
                        fontsize=8)
        axis.axhline(0, color="black", linewidth=0.8)
    axis.set_ylabel(f"{metric} drop (%)")
    axis.set_title(f"robustness: drop of {metric} against the full model "
                   "(blue masked, orange dropped, red noise)", fontsize=10)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def pareto_plot(trials: pd.DataFrame, front: pd.DataFrame, metrics: list[str],
                chosen: str, path: Path) -> Path:
    """Every trial on the first two ``metrics``, the Pareto front joined up, the ``chosen``
    trial (best.json's) ringed."""
    x, y = metrics[:2]
    figure, axis = plt.subplots(figsize=(6, 4.5))
    axis.scatter(trials[x], trials[y], s=18, color="0.7", label="trials", zorder=2)
    ordered = front.sort_values(x)
    axis.plot(ordered[x], ordered[y], "o-", color="tab:blue", markersize=5,
              label="Pareto front", zorder=3)
    best = front[front["trial"] == chosen]
    axis.scatter(best[x], best[y], s=140, facecolors="none", edgecolors="tab:red",
                 linewidths=1.5, label=f"best.json ({chosen})", zorder=4)
    axis.set_xlabel(x)
    axis.set_ylabel(y)
    axis.set_title("validation scores of each trial's kept checkpoint", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    atomic_write(path, lambda target: figure.savefig(target, dpi=120, format="png"))
    plt.close(figure)
    return path
