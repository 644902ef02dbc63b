"""PNG figures logged with every run: learning curves and OPE estimates with their intervals (matplotlib Agg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: training runs headless, often in worker processes

import matplotlib.pyplot as plt


def panels(names: Sequence[str]) -> dict[str, list[str]]:
    """The panel each metric is drawn in: its group ("critic", "actor", "eval", "ope", ...), with the group's
    success rates (0 to 1) and returns each in a panel of their own, apart from scores in other units. The kept
    weights' figures (``kept/eval/return``) join the panel of the figure they repeat. Interval bounds and
    effective sample sizes are left out."""
    out: dict[str, list[str]] = {}
    for name in sorted(names):
        base = name.removeprefix("kept/")
        if "/" not in base or name.endswith(("ci_low", "ci_high", "/ess", "_low", "_high")):
            continue
        group, measure = base.split("/", 1)
        if "success" in measure:
            group += ": success rates"
        elif measure == "return":
            group += ": return"
        out.setdefault(group, []).append(name)
    return out


def learning_curves(history: Mapping[str, Sequence[tuple[int, float]]], path: Path, title: str = "") -> Path:
    """One panel per metric group (see :func:`panels`), each metric over steps; the kept weights' figures as stars."""
    groups = panels([name for name in history if history[name]])
    n = max(len(groups), 1)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, (group, names) in zip(axes.flat, groups.items(), strict=False):
        prefix = group.split(":")[0] + "/"
        for name in names:
            steps, values = zip(*history[name], strict=True)
            if name.startswith("kept/"):
                label = "kept: " + name.removeprefix("kept/").removeprefix(prefix)
                ax.plot(steps, values, label=label, marker="*", markersize=12, linestyle="none", color="black")
            else:
                ax.plot(steps, values, label=name.removeprefix(prefix), marker="." if len(steps) < 30 else None)
        ax.set_title(group)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6 if len(names) > 4 else 7, ncol=2 if len(names) > 4 else 1, loc="best")
    for ax in list(axes.flat)[len(groups) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def ope_estimates(reports: Sequence[Any], path: Path, title: str = "") -> Path:
    """Each estimator's value with its interval, per OPE report (e.g. per goal), against the behaviour value."""
    n = max(len(reports), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.4), squeeze=False)
    for ax, report in zip(axes.flat, reports, strict=False):
        names = list(report.estimates)
        values = [report.estimates[k].value for k in names]
        low = [report.estimates[k].value - report.estimates[k].ci_low for k in names]
        high = [report.estimates[k].ci_high - report.estimates[k].value for k in names]
        ax.errorbar(range(len(names)), values, yerr=[low, high], fmt="o", capsize=4)
        ax.axhline(report.behaviour_value, color="grey", linestyle="--", label="logged policy")
        ax.set_xticks(range(len(names)), names)
        ax.set_title(report.task[:48], fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
