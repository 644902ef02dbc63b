"""The recommender simulator: observations are the spec's state, runs reproduce, and policies are far apart."""

from __future__ import annotations

import numpy as np
import pytest

from decision_core.envs import get_simulator, goal_reached
from decision_core.envs.recommender import (
    I_IMPRESSIONS,
    I_SATISFACTION,
    N_ITEMS,
    PRIOR_ENGAGEMENT,
    BehaviourPolicy,
    RecommenderSimulator,
    catalogue,
)
from decision_core.envs.rollout import rollout


@pytest.fixture(scope="module")
def sim() -> RecommenderSimulator:
    return RecommenderSimulator()


def _run(sim: RecommenderSimulator, policy: str, n: int, seed: int, **kw):
    return rollout(
        sim.dynamics(), sim.policies()[policy], batch=n, max_steps=sim.max_steps, rng=np.random.default_rng(seed), **kw
    )


def test_observations_are_the_spec_state(sim: RecommenderSimulator) -> None:
    spec = sim.spec()
    obs = sim.dynamics().reset(np.random.default_rng(0), 7)
    assert obs.shape == (7, spec.state_dim) and obs.dtype == np.float32
    assert (obs[:, I_IMPRESSIONS] == 0).all() and (obs[:, I_SATISFACTION] == PRIOR_ENGAGEMENT).all()
    assert get_simulator("recommender").spec() == spec
    assert spec.n_actions == N_ITEMS >= 200 and len(set(catalogue().category)) == 8


def test_seeded_runs_reproduce_and_differ_across_seeds(sim: RecommenderSimulator) -> None:
    a, b, c = _run(sim, "behaviour", 16, 3), _run(sim, "behaviour", 16, 3), _run(sim, "behaviour", 16, 4)
    for x, y in ((a.observations, b.observations), (a.actions, b.actions), (a.propensities, b.propensities)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.actions, c.actions)


def test_sessions_end_when_users_leave(sim: RecommenderSimulator) -> None:
    episodes = _run(sim, "behaviour", 200, 1)
    assert episodes.terminated.mean() > 0.8  # most users leave before the time limit
    assert 3 < episodes.lengths.mean() < sim.max_steps


def test_behaviour_propensities_are_its_probabilities(sim: RecommenderSimulator) -> None:
    dynamics = sim.dynamics()
    rng = np.random.default_rng(2)
    obs = dynamics.reset(rng, 64)
    policy = sim.policies()["behaviour"]
    assert isinstance(policy, BehaviourPolicy)
    probs = policy.probabilities(dynamics)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    items, props = policy.act(dynamics, obs, None, None, rng)
    np.testing.assert_allclose(props, probs[np.arange(64), items], rtol=1e-6)
    assert (props > 0).all() and (props < 1).all() and len(np.unique(items)) > 5  # it explores


def test_invalid_actions_are_refused(sim: RecommenderSimulator) -> None:
    dynamics = sim.dynamics()
    dynamics.reset(np.random.default_rng(0), 2)
    with pytest.raises(ValueError, match="item indices"):
        dynamics.step(np.array([0, N_ITEMS]), np.random.default_rng(0))


def test_reset_worlds_restarts_only_the_masked_worlds(sim: RecommenderSimulator) -> None:
    dynamics = sim.dynamics()
    rng = np.random.default_rng(0)
    dynamics.reset(rng, 3)
    for _ in range(3):
        obs, _, _ = dynamics.step(np.array([1, 2, 3]), rng)
    fresh = dynamics.reset_worlds(np.array([False, True, False]), rng)
    assert fresh[1, I_IMPRESSIONS] == 0 and (fresh[[0, 2], I_IMPRESSIONS] == 3).all()
    np.testing.assert_array_equal(fresh[[0, 2]], obs[[0, 2]])


def test_goal_set_has_hard_goals_and_matches_the_spec(sim: RecommenderSimulator) -> None:
    goals = sim.goal_set()
    assert 3 <= len(goals) <= 6 and sum(g.hard for g in goals) >= 2
    assert sim.spec().goals == {g.name: g.targets for g in goals}


def test_oracle_beats_behaviour_beats_random_on_the_reward_task(sim: RecommenderSimulator) -> None:
    returns = {p: float(_run(sim, p, 300, 11).rewards.sum(1).mean()) for p in ("random", "behaviour", "oracle")}
    normalised = 100 * (returns["behaviour"] - returns["random"]) / (returns["oracle"] - returns["random"])
    assert returns["random"] < returns["behaviour"] < returns["oracle"]
    assert normalised <= 70, returns


def test_session_oracle_reads_no_hidden_user_state(sim: RecommenderSimulator) -> None:
    """Its choices do not change when the user's hidden interests, satisfaction and patience do, and they leave
    that state as it was."""
    policy = sim.policies()["session_oracle"]
    dynamics = sim.dynamics()
    rng = np.random.default_rng(6)
    obs = dynamics.reset(rng, 64)
    for _ in range(3):
        obs, _, _ = dynamics.step(policy.act(dynamics, obs, None, None, rng)[0], rng)
    chosen = policy.act(dynamics, obs, None, None, rng)[0]
    hidden = dynamics.interest.copy(), dynamics.sat.copy(), dynamics.patience.copy()
    dynamics.interest = rng.normal(0.0, 2.0, dynamics.interest.shape)
    dynamics.sat, dynamics.patience = rng.random(64), rng.random(64) * 0.05
    np.testing.assert_array_equal(policy.act(dynamics, obs, None, None, rng)[0], chosen)
    dynamics.interest, dynamics.sat, dynamics.patience = hidden
    policy.act(dynamics, obs, None, None, rng)
    for before, after in zip(hidden, (dynamics.interest, dynamics.sat, dynamics.patience), strict=True):
        np.testing.assert_array_equal(before, after)


def test_session_oracle_is_between_behaviour_and_oracle(sim: RecommenderSimulator) -> None:
    returns = {p: float(_run(sim, p, 300, 11).rewards.sum(1).mean()) for p in ("behaviour", "session_oracle", "oracle")}
    assert returns["behaviour"] < returns["session_oracle"] < returns["oracle"], returns


def test_hard_goals_are_rare_for_behaviour_and_reached_by_the_oracle(sim: RecommenderSimulator) -> None:
    spec = sim.spec()
    n = 200
    for goal in [g for g in sim.goal_set() if g.hard]:
        values, mask = goal.vector(spec)
        rates = {}
        for policy in ("behaviour", "oracle"):
            goals, masks = np.tile(values, (n, 1)), np.tile(mask, (n, 1))
            ep = _run(sim, policy, n, 21, goals=goals, goal_mask=masks, spec=spec, stop_on_goal=True)
            last = ep.observations[np.arange(n), ep.lengths][:, spec.outcome_index]
            rates[policy] = goal_reached(last, goals, masks, spec.tolerances).mean()
        assert rates["behaviour"] < 0.6, (goal.name, rates)
        assert rates["oracle"] > rates["behaviour"] + 0.2, (goal.name, rates)


def test_behaviour_logs_cover_every_goal(sim: RecommenderSimulator) -> None:
    """Hindsight relabeling needs behaviour trajectories that pass through each goal."""
    spec = sim.spec()
    ep = _run(sim, "behaviour", 1000, 31)
    alive = np.arange(ep.observations.shape[1])[None, :] <= ep.lengths[:, None]
    outcomes = ep.observations[..., spec.outcome_index]
    for goal in sim.goal_set():
        values, mask = goal.vector(spec)
        reached = goal_reached(outcomes, values, mask, spec.tolerances) & alive
        assert reached.any(axis=1).sum() >= 5, goal.name


@pytest.mark.parametrize("policy", ["behaviour", "oracle", "random", "session_oracle"])
def test_every_policy_shows_each_item_once_per_session(sim: RecommenderSimulator, policy: str) -> None:
    episodes = rollout(
        sim.dynamics(), sim.policies()[policy], batch=30, max_steps=sim.max_steps, rng=np.random.default_rng(4)
    )
    for e, length in enumerate(episodes.lengths):
        shown = episodes.actions[e, :length]
        assert len(set(shown.tolist())) == length
    assert sim.spec().once_per_episode and not sim.spec().masked


def test_learned_policies_act_under_the_once_per_session_mask(sim: RecommenderSimulator) -> None:
    from decision_core.algos import create_agent
    from decision_core.data import FeatureStats
    from decision_core.envs.evaluate import LearnedPolicy

    spec = sim.spec()
    agent = create_agent("bc", spec, FeatureStats.identity(spec), {"hidden_dims": [8]}, seed=0)
    # An untrained greedy agent picks nearly the same item every step; the mask makes it move on.
    episodes = rollout(sim.dynamics(), LearnedPolicy(agent), batch=8, max_steps=20, rng=np.random.default_rng(1))
    for e, length in enumerate(episodes.lengths):
        assert len(set(episodes.actions[e, :length].tolist())) == length
