"""The evaluation harness: baselines, normalised score, confidence intervals, learned policies, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from decision_core.cli import app
from decision_core.envs import SimPolicy
from decision_core.envs.evaluate import LearnedPolicy, evaluate, evaluate_policies
from decision_core.errors import SpecError


class StayPolicy(SimPolicy):
    name = "stay"

    def act(self, dynamics, observations, goals, goal_mask, rng):
        return np.ones(len(observations), np.int64), np.ones(len(observations), np.float32)


def test_baselines_anchor_the_score_and_the_oracle_reaches_every_goal(line_sim) -> None:
    report = evaluate(line_sim, episodes=300, seed=0, bootstrap=500)
    assert list(report.policies) == ["random", "behaviour", "oracle"]
    oracle, random_, behaviour = (report.policies[k] for k in ("oracle", "random", "behaviour"))
    assert oracle.normalised_score.mean == pytest.approx(100.0)
    assert random_.normalised_score.mean == pytest.approx(0.0, abs=1e-9)
    # Home is always reached; on the way to the edge a gust sometimes pushes the walker over it.
    assert oracle.goals[0].success_rate.mean == 1.0 and 0.9 < oracle.hard_success_rate.mean < 1.0
    # The oracle walks straight to the goal: from 2..4 to pos 5 takes 1-3 steps (a gust can only help).
    home = oracle.goals[0]
    assert home.goal == "home" and 1.0 <= home.steps_to_goal <= 3.0
    assert behaviour.returns.mean < oracle.returns.mean
    assert 0 < behaviour.normalised_score.mean < 100
    for r in report.policies.values():
        for iv in (r.returns, r.normalised_score, r.success_rate):
            assert iv.low <= iv.mean <= iv.high
    # The interval is a real uncertainty statement: it straddles the point and narrows with more episodes.
    wide = evaluate(line_sim, episodes=40, seed=0, bootstrap=500).policies["behaviour"].returns
    narrow = behaviour.returns
    assert (wide.high - wide.low) > (narrow.high - narrow.low) > 0


def test_evaluation_is_reproducible_and_policies_meet_the_same_worlds(line_sim) -> None:
    a = evaluate_policies(line_sim, {"stay": StayPolicy()}, episodes=64, seed=3, bootstrap=200)
    b = evaluate_policies(line_sim, {"stay": StayPolicy()}, episodes=64, seed=3, bootstrap=200)
    assert a.to_dict() == b.to_dict()
    c = evaluate_policies(line_sim, {"stay": StayPolicy()}, episodes=64, seed=4, bootstrap=200)
    assert a.to_dict() != c.to_dict()
    stay = a.policies["stay"]
    # Standing still never reaches pos 9 from 2..4, except by rare repeated gusts.
    assert stay.goals[1].success_rate.mean < 0.2
    metrics = a.metrics("stay")
    assert metrics["eval/normalised_score"] == stay.normalised_score.mean
    assert metrics["eval/success/edge"] == stay.goals[1].success_rate.mean
    assert all(math.isfinite(v) for v in metrics.values())


def test_bad_requests_are_refused(line_sim) -> None:
    with pytest.raises(SpecError, match="clashes with a baseline"):
        evaluate_policies(line_sim, {"oracle": StayPolicy()}, episodes=8)
    with pytest.raises(SpecError, match="episodes must be >= 2"):
        evaluate(line_sim, episodes=1)


def test_evaluate_command_prints_the_three_baselines(line_registered, tmp_path) -> None:
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(
        app, ["evaluate", "--domain", "line", "--episodes", "50", "--seed", "2", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    for row in ("random", "behaviour", "oracle", "normalised", "edge"):
        assert row in result.output
    saved = json.loads(out.read_text())
    assert saved["policies"]["oracle"]["normalised_score"]["mean"] == pytest.approx(100.0)


def test_learned_policy_acts_through_the_agent_contract_and_the_cli_loads_it(line_registered, tmp_path) -> None:
    algos = pytest.importorskip("decision_core.algos", reason="the algorithms package is not present yet")
    spec = line_registered.spec()
    agent = algos.create_agent("gcbc", spec, None, seed=0)
    policy = LearnedPolicy(agent)
    dyn = line_registered.dynamics()
    rng = np.random.default_rng(0)
    obs = dyn.reset(rng, 16)
    goals, mask = np.full((16, 1), 9.0, np.float32), np.ones((16, 1), np.bool_)
    actions, props = policy.act(dyn, obs, goals, mask, rng)
    assert actions.shape == (16,) and actions.dtype == np.int64 and np.all((actions >= 0) & (actions < 3))
    assert np.all(props == 1.0)  # greedy
    explore = LearnedPolicy(agent, exploration=algos.Exploration(epsilon=0.5))
    _, props = explore.act(dyn, obs, None, None, rng)  # reward task: a goal-conditioned agent gets no goal
    assert np.all((props > 0) & (props <= 1)) and not np.all(props == 1.0)
    report = evaluate(line_registered, policy, name="gcbc", episodes=20, seed=0, bootstrap=100)
    assert set(report.policies) == {"random", "behaviour", "oracle", "gcbc"}

    agent.save(tmp_path / "agent")
    result = CliRunner().invoke(
        app, ["evaluate", "--domain", "line", "--model", str(tmp_path / "agent"), "--episodes", "20"]
    )
    assert result.exit_code == 0, result.output
    assert "gcbc" in result.output
    result = CliRunner().invoke(app, ["evaluate", "--domain", "line", "--model", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "neither an agent directory" in result.output


def test_a_model_of_another_domain_is_refused(line_sim) -> None:
    algos = pytest.importorskip("decision_core.algos", reason="the algorithms package is not present yet")
    from decision_core.schema import DiscreteActions, DomainSpec, Feature, OutcomeFeature

    other = DomainSpec(
        name="other",
        version="1",
        state=(Feature("x"), Feature("y")),
        outcomes=(OutcomeFeature("x", 0.1),),
        actions=DiscreteActions(("a", "b", "c")),
    )
    with pytest.raises(SpecError, match="do not match simulator 'line'"):
        evaluate(line_sim, LearnedPolicy(algos.create_agent("gcbc", other, None)), episodes=4)


def test_builtin_simulator_baselines(builtin_sim) -> None:
    report = evaluate(builtin_sim, episodes=16, seed=0, bootstrap=100)
    oracle = report.policies["oracle"]
    assert oracle.normalised_score.mean == pytest.approx(100.0)
    assert report.policies["random"].normalised_score.mean == pytest.approx(0.0, abs=1e-9)
    assert len(oracle.goals) == len(builtin_sim.goal_set())
    assert any(g.hard for g in oracle.goals)


def test_returns_under_a_reward_task_and_goals_asked_for(line_sim) -> None:
    stay = {"stay": StayPolicy()}
    own = evaluate_policies(line_sim, stay, episodes=32, seed=1, bootstrap=100)
    # The simulator's reward restated as an expression over the state features: the same returns for every
    # policy, but no normalised score (the oracle pursues the simulator's reward, not an arbitrary task's).
    restated = "where(next.pos >= 10, -5, -0.1 * abs(next.pos - 7))"
    same = evaluate_policies(line_sim, stay, episodes=32, seed=1, bootstrap=100, reward=restated)
    assert (own.reward, same.reward) == ("simulator", restated)
    for name in ("random", "behaviour", "oracle", "stay"):
        assert same.policies[name].returns.mean == pytest.approx(own.policies[name].returns.mean, rel=1e-5)
        assert math.isnan(same.policies[name].normalised_score.mean)
    assert "eval/normalised_score" not in same.metrics("stay") and "eval/return" in same.metrics("stay")
    # "logged" is the simulator's own reward (its logs record it): scored with it, and anchored by the oracle.
    logged = evaluate_policies(line_sim, stay, episodes=32, seed=1, bootstrap=100, reward="logged")
    assert repr(logged) == repr(own)  # (repr: NaN figures never compare equal)
    # One per recorded step: the return counts the steps up to each episode's end, none after it.
    lengths = evaluate_policies(line_sim, {}, episodes=32, seed=1, bootstrap=100, reward="1", goals=[])
    assert lengths.policies["oracle"].returns.mean == line_sim.max_steps  # walks to 7 and stays: never falls
    assert 0 < lengths.policies["random"].returns.mean <= line_sim.max_steps
    # No goals: no goal figures at all; one goal: that goal alone, on the worlds it meets in the full set.
    assert not any(k.startswith(("eval/success", "eval/hard", "eval/steps")) for k in lengths.metrics("random"))
    edge = [g for g in line_sim.goal_set() if g.name == "edge"]
    alone = evaluate_policies(line_sim, stay, episodes=32, seed=1, bootstrap=100, goals=edge)
    assert [g.goal for g in alone.policies["stay"].goals] == ["edge"]
    assert alone.policies["stay"].goals[0].success_rate.mean == own.policies["stay"].goals[1].success_rate.mean
    assert alone.metrics("stay")["eval/success_rate"] == alone.metrics("stay")["eval/success/edge"]


def test_the_evaluate_command_scores_a_reward_model_under_its_task(line_registered, tmp_path) -> None:
    algos = pytest.importorskip("decision_core.algos", reason="the algorithms package is not present yet")
    agent = algos.create_agent("iql", line_registered.spec(), None, {"hidden_dims": [8], "reward": "next.pos"})
    agent.save(tmp_path / "agent")
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(
        app, ["evaluate", "--domain", "line", "--model", str(tmp_path / "agent"), "-n", "4", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "returns under reward 'next.pos', no score" in " ".join(result.output.split())
    assert json.loads(out.read_text())["reward"] == "next.pos"
