"""The figures a run logs: which metrics share a panel."""

from __future__ import annotations

from pathlib import Path

from decision_core.training.plots import learning_curves, panels


def test_success_rates_and_returns_get_panels_of_their_own_the_kept_figures_join_theirs() -> None:
    names = [
        "critic/loss",
        "eval/return",
        "eval/normalised_score",
        "eval/success_rate",
        "eval/success/restock_40",
        "eval/success_rate_low",
        "ope/snips",
        "ope/snips/ci_low",
        "ope/snips/ess",
        "kept/eval/return",
        "kept/eval/success_rate",
        "kept/ope/snips",
    ]
    assert panels(names) == {
        "critic": ["critic/loss"],
        "eval": ["eval/normalised_score"],
        "eval: return": ["eval/return", "kept/eval/return"],
        "eval: success rates": ["eval/success/restock_40", "eval/success_rate", "kept/eval/success_rate"],
        "ope": ["kept/ope/snips", "ope/snips"],
    }


def test_the_learning_curves_figure_is_written(tmp_path: Path) -> None:
    history = {"eval/return": [(0, -10.0), (10, -5.0)], "eval/success_rate": [(0, 0.1), (10, 0.4)]}
    path = learning_curves(history, tmp_path / "curves.png", title="t")
    assert path.stat().st_size > 1000
