"""PNG figures logged with every run: learning curves and OPE estimates with their intervals (matplotlib Agg)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: training runs headless, often in worker processes

import matplotlib.pyplot as plt


def learning_curves(history: Mapping[str, Sequence[tuple[int, float]]], path: Path, title: str = "") -> Path:
    """One panel per metric group ("critic", "actor", "eval", "ope", ...), each metric over steps."""
    groups: dict[str, list[str]] = {}
    for name in sorted(history):
        if history[name] and "/" in name and not name.endswith(("ci_low", "ci_high", "/ess")):
            groups.setdefault(name.split("/")[0], []).append(name)
    n = max(len(groups), 1)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, (group, names) in zip(axes.flat, groups.items(), strict=False):
        for name in names:
            steps, values = zip(*history[name], strict=True)
            ax.plot(steps, values, label=name.split("/", 1)[1], marker="." if len(steps) < 30 else None)
        ax.set_title(group)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
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
