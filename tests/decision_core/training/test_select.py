"""Choosing the champion among registered candidates by their OPE lower bound."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from decision_core.cli import app
from decision_core.settings import CoreSettings
from decision_core.training import TrainConfig, select_champion, train
from decision_core.training.models import CHAMPION, ModelError, alias_version


@pytest.fixture
def two_candidates(settings: CoreSettings, tiny: dict) -> tuple[str, str]:
    """v1: a barely trained model (champion by being first); v2: a trained one (candidate)."""
    base = TrainConfig(domain="chain", algo="iql", **{**tiny, "steps": 1, "log_every": 1})
    weak = train(base, settings, progress=False)
    strong = train(base.replace(steps=150, log_every=50, checkpoint_every=0), settings, progress=False)
    return weak.run_id, strong.run_id


def test_select_moves_champion_to_the_best_lower_bound(settings: CoreSettings, two_candidates: tuple[str, str]) -> None:
    assert alias_version("chain", CHAMPION, settings) == "1"
    result = select_champion("chain", settings=settings, fqe_steps=300, max_episodes=300)
    by_version = {c.version: c for c in result.candidates}
    assert set(by_version) == {"1", "2"}
    assert {c.estimator for c in result.candidates} == {"snips"}  # the default when the logs have propensities
    # The trained policy walks right to the goal; the one-step one does not.
    assert by_version["2"].ci_low > by_version["1"].ci_high
    assert result.chosen is by_version["2"] and result.moved and result.previous_champion == "1"
    assert alias_version("chain", CHAMPION, settings) == "2"
    for c in result.candidates:
        assert c.ci_low <= c.value <= c.ci_high
    # Selecting again keeps the champion where it is.
    again = select_champion("chain", settings=settings, max_episodes=300)
    assert not again.moved and "stays" in again.summary()


def test_select_cli_compares_named_runs_and_reports_unknown_ones(
    settings: CoreSettings, two_candidates: tuple[str, str]
) -> None:
    weak, strong = two_candidates
    runner = CliRunner()
    db = ["--db", str(settings.db_path)]
    r = runner.invoke(
        app, ["select", "--domain", "chain", "--runs", weak, "--runs", strong, "--estimator", "snips", "--dry-run", *db]
    )
    assert r.exit_code == 0, r.output
    assert "candidates by OPE lower bound" in r.output and "snips" in r.output
    assert alias_version("chain", CHAMPION, settings) == "1"  # dry run: nothing moved
    r = runner.invoke(app, ["select", "--domain", "chain", "--runs", "nope", *db])
    assert r.exit_code == 2 and "run nope registered no version of 'chain'" in r.output
    r = runner.invoke(app, ["select", "--domain", "chain", *db])
    assert r.exit_code == 2 and "--candidates all" in r.output
    with pytest.raises(ModelError, match="no registered model 'other'"):
        select_champion("chain", settings=settings, model_name="other")
