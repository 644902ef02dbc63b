"""Choosing the champion among registered candidates by their OPE lower bound."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from decision_core.cli import app
from decision_core.settings import CoreSettings
from decision_core.training import TrainConfig, select_champion, train
from decision_core.training.models import CHAMPION, ModelError, alias_version, set_alias


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


def test_a_candidate_ranked_first_must_also_be_better_than_the_champion_in_a_paired_comparison(
    settings: CoreSettings, tiny: dict, two_candidates: tuple[str, str]
) -> None:
    # v3 is v2 trained again: the same policy, so neither is better than the other, whatever their ranking says.
    base = TrainConfig(domain="chain", algo="iql", **{**tiny, "steps": 150, "log_every": 50, "checkpoint_every": 0})
    train(base, settings, progress=False)
    set_alias("chain", CHAMPION, "3", settings)
    result = select_champion("chain", settings=settings, max_episodes=300)
    by_version = {c.version: c for c in result.candidates}
    assert by_version["2"].ci_low >= by_version["3"].ci_low  # v2 ranks first (first of equals)
    assert result.chosen is by_version["3"] and not result.moved, result.notes
    assert alias_version("chain", CHAMPION, settings) == "3"
    (note,) = [n for n in result.notes if "paired" in n]
    assert note.startswith("v2 ranks first, but its paired difference from the champion v3 is +0 [+0, +0]"), note
    # Against the barely trained v1 the paired interval is clear of 0: v2 replaces it.
    set_alias("chain", CHAMPION, "1", settings)
    assert select_champion("chain", settings=settings, max_episodes=300, run_ids=[two_candidates[1]]).moved


def test_a_candidate_whose_estimate_rests_on_few_episodes_cannot_win(
    settings: CoreSettings, two_candidates: tuple[str, str]
) -> None:
    scored = select_champion("chain", settings=settings, max_episodes=300, move_alias=False, min_ess=0)
    ess = {c.version: c.ess for c in scored.candidates}
    # Greedy policies follow few logged episodes all the way: SNIPS's weights concentrate on them. The one-step
    # model's greedy choices (a critic barely trained) match the random logs less often than the trained one's.
    assert 1 < ess["1"] < ess["2"] < 300
    result = select_champion("chain", settings=settings, max_episodes=300, move_alias=False, min_ess=ess["2"] + 1)
    assert not any(c.evaluable for c in result.candidates) and result.chosen is None
    result = select_champion("chain", settings=settings, max_episodes=300, min_ess=(ess["1"] + ess["2"]) / 2)
    by_version = {c.version: c for c in result.candidates}
    assert not by_version["1"].evaluable and by_version["2"].evaluable
    assert result.chosen is by_version["2"] and result.moved
    assert "not evaluable" in str([*result.table().columns[-1].cells])
    set_alias("chain", CHAMPION, "1", settings)
    # decision-core ope marks such an estimate too.
    ope = ["ope", "--domain", "chain", "--estimator", "snips", "--db", str(settings.db_path), "--model"]
    weak = CliRunner().invoke(app, [*ope, "models:/chain/1"])
    assert weak.exit_code == 0 and "ESS < 10" in weak.output, weak.output
    assert "ESS < 10" not in CliRunner().invoke(app, [*ope, "models:/chain/2"]).output

    # No candidate evaluable: nothing moves, and the summary says what to do.
    none = select_champion("chain", settings=settings, max_episodes=300, min_ess=1e9)
    assert none.chosen is None and not none.moved and alias_version("chain", CHAMPION, settings) == "1"
    assert "no candidate is evaluable" in none.summary() and "--estimator fqe or mb" in none.summary()
    assert "champion stays v1" in none.summary()
    # FQE's estimate is not a weighting of episodes: its ESS is the number of episodes, and the best one wins.
    fqe = select_champion("chain", settings=settings, max_episodes=300, estimator="fqe", fqe_steps=300)
    assert fqe.chosen is not None and fqe.chosen.version == "2" and fqe.moved
    # With refits, the intervals ranked on come from refitted FQE models (same estimates, other intervals).
    refit = select_champion(
        "chain", settings=settings, max_episodes=300, estimator="fqe", fqe_steps=300, refits=2, move_alias=False
    )
    for one, many in zip(fqe.candidates, refit.candidates, strict=True):
        assert many.value == pytest.approx(one.value) and (many.ci_low, many.ci_high) != (one.ci_low, one.ci_high)


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
    r = runner.invoke(app, ["select", "--domain", "chain", "--candidates", "some", *db])
    assert r.exit_code == 2 and "--candidates takes 'all' (got 'some')" in r.output
    with pytest.raises(ModelError, match="no registered model 'other'"):
        select_champion("chain", settings=settings, model_name="other")
    # mb's dynamics model as asked: the same fit (same seed), rolled out in every member or in one each.
    mb = ["select", "--domain", "chain", "--candidates", "all", "--estimator", "mb", "--model-steps", "50", "--dry-run"]
    rollouts = {}
    for how in ("every", "one"):
        result = select_champion(
            "chain", settings=settings, estimator="mb", model_steps=50, model_rollouts=how, move_alias=False
        )
        rollouts[how] = [(c.value, c.ci_low, c.ci_high) for c in result.candidates]
        assert all(low <= value <= high for value, low, high in rollouts[how])
    assert rollouts["every"] != rollouts["one"]
    r = runner.invoke(app, [*mb, "--model-rollouts", "all", *db])
    assert r.exit_code == 2 and "'model_rollouts' must be one of every, one (got 'all')" in r.output, r.output


def test_named_runs_must_beat_the_champion_to_replace_it(
    settings: CoreSettings, two_candidates: tuple[str, str], tiny: dict
) -> None:
    weak, _ = two_candidates
    set_alias("chain", CHAMPION, "2", settings)  # the trained model is champion; the weak one is named alone
    result = select_champion("chain", run_ids=[weak], settings=settings, max_episodes=300)
    assert {c.version for c in result.candidates} == {"1", "2"}
    assert result.chosen is not None and result.chosen.version == "2" and not result.moved
    assert alias_version("chain", CHAMPION, settings) == "2"
    assert result.notes == ["the champion v2 is scored beside the named runs: a candidate must beat it"]
    r = CliRunner().invoke(
        app, ["select", "--domain", "chain", "--runs", weak, "--db", str(settings.db_path), "--estimator", "snips"]
    )
    assert r.exit_code == 0, r.output
    assert "note: the champion v2 is scored beside the named runs" in " ".join(r.output.split())
    assert "champion stays chain v2" in r.output
    # A champion of the other kind (a goal model) cannot be compared with reward models: it is named, not scored.
    goal_model = train(TrainConfig(domain="chain", algo="gcbc", **tiny), settings, progress=False)
    set_alias("chain", CHAMPION, goal_model.registered_version, settings)
    other = select_champion("chain", run_ids=[weak], settings=settings, max_episodes=300, move_alias=False)
    assert {c.version for c in other.candidates} == {"1"}
    assert other.notes == [
        f"the champion v{goal_model.registered_version} is a goal-conditioned model, not comparable with the named "
        "runs; it was not scored"
    ]


def test_the_command_line_floor_is_selections_own() -> None:
    """The command states select's MIN_ESS as a literal (importing select at start-up pulls in MLflow)."""
    import inspect

    from decision_core.training.cli import select_cmd
    from decision_core.training.select import MIN_ESS

    assert inspect.signature(select_cmd).parameters["min_ess"].default == MIN_ESS


def test_every_version_competes_but_those_the_guard_rejected_and_those_of_the_other_kind(
    settings: CoreSettings, tiny: dict, two_candidates: tuple[str, str]
) -> None:
    from decision_core.training.models import client

    client(settings).set_model_version_tag("chain", "2", "decision_core.status", "rejected")
    goal_model = TrainConfig(domain="chain", algo="gcbc", **{**tiny, "steps": 1, "log_every": 1})
    train(goal_model, settings, progress=False)  # v3, of the other kind
    result = select_champion("chain", settings=settings, max_episodes=300, move_alias=False)
    assert [c.version for c in result.candidates] == ["1"]
    assert any(n.startswith("v2 were rejected by the fine-tuning guard") for n in result.notes), result.notes
    assert any("the goal-conditioned models (v3) are not comparable" in n for n in result.notes), result.notes
    # Named, a rejected version is scored all the same.
    named = select_champion("chain", settings=settings, run_ids=[two_candidates[1]], max_episodes=300, move_alias=False)
    assert {c.version for c in named.candidates} == {"1", "2"}
