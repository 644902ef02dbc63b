"""The inventory simulator: its physics, its policies, its goals and the spread between its policies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from decision_core.envs import get_simulator
from decision_core.envs.inventory import (
    CAPACITY_FLOOR,
    HORIZON,
    LOT,
    MAX_ORDER,
    N_LEVELS,
    SPEC,
    BehaviourPolicy,
    InventoryDynamics,
)
from decision_core.envs.rollout import rollout
from decision_core.schema import BoxActions, DiscreteActions

SIM = get_simulator("inventory")
IDX = {name: i for i, name in enumerate(SPEC.state_names)}


def run(policy: str, *, batch: int = 64, seed: int = 0, continuous: bool = False, **goal_kwargs):
    return rollout(
        SIM.dynamics(continuous=continuous),
        SIM.policies()[policy],
        batch=batch,
        max_steps=SIM.max_steps,
        rng=np.random.default_rng(seed),
        **goal_kwargs,
    )


def goal_success(policy: str, goal_name: str, *, batch: int = 200, seed: int = 7) -> float:
    goal = next(g for g in SIM.goal_set() if g.name == goal_name)
    values, mask = goal.vector(SPEC)
    episodes = run(
        policy,
        batch=batch,
        seed=seed,
        goals=np.tile(values, (batch, 1)),
        goal_mask=np.tile(mask, (batch, 1)),
        spec=SPEC,
        stop_on_goal=True,
    )
    return float(episodes.terminated.mean())


def test_observations_are_the_spec_state_vector() -> None:
    episodes = run("behaviour", batch=32)
    obs = episodes.observations
    assert obs.dtype == np.float32
    assert obs.shape == (32, HORIZON + 1, SPEC.state_dim)
    pipeline = obs[..., [IDX["pipeline_1"], IDX["pipeline_2"], IDX["pipeline_3"]]].sum(-1)
    np.testing.assert_allclose(obs[..., IDX["inventory_position"]], obs[..., IDX["on_hand"]] + pipeline, atol=1e-4)
    assert set(np.unique(obs[..., IDX["lead_time"]])) <= {2.0, 3.0, 4.0}
    np.testing.assert_allclose(obs[..., IDX["dow_sin"]] ** 2 + obs[..., IDX["dow_cos"]] ** 2, 1.0, atol=1e-5)
    np.testing.assert_array_equal(obs[..., IDX["in_stock_14"]], obs[..., IDX["days_in_stock"]] >= 14)
    assert (obs[:, 0, [IDX["pipeline_1"], IDX["pipeline_2"], IDX["pipeline_3"]]] == 0).all(), "runs start empty"


def test_seeded_runs_reproduce_and_seeds_differ() -> None:
    a, b, c = run("behaviour", seed=3), run("behaviour", seed=3), run("behaviour", seed=4)
    np.testing.assert_array_equal(a.observations, b.observations)
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.propensities, b.propensities)
    assert not np.array_equal(a.observations, c.observations)


def test_lost_sales_capacity_and_costs_add_up() -> None:
    episodes = run("random", batch=128)
    obs, ex = episodes.observations, episodes.extras
    on_hand = obs[:, :-1, IDX["on_hand"]]
    demand, sales, lost = ex["demand"][:, 1:], ex["sales"][:, 1:], ex["lost_sales"][:, 1:]
    np.testing.assert_allclose(sales, np.minimum(on_hand, demand), atol=1e-4)
    np.testing.assert_allclose(lost, demand - sales)
    np.testing.assert_allclose(ex["closing_stock"][:, 1:], on_hand - sales, atol=1e-4)
    assert (obs[..., IDX["on_hand"]] <= obs[..., IDX["capacity"]] + 1e-4).all()
    assert (obs[..., IDX["capacity"]] >= CAPACITY_FLOOR).all()
    assert ex["refused"].sum() > 0, "random over-ordering must hit the capacity"
    costs = sum(ex[k][:, 1:] for k in ("holding_cost", "stockout_cost", "ordering_cost", "refusal_cost"))
    np.testing.assert_allclose(episodes.rewards, -costs, rtol=1e-5, atol=1e-3)


def test_an_order_arrives_after_the_lead_time() -> None:
    dyn = InventoryDynamics()
    rng = np.random.default_rng(0)
    obs = dyn.reset(rng, 1)
    lead = int(obs[0, IDX["lead_time"]])
    dyn.on_hand[:] = 0.0  # nothing on hand: demand is all lost, so on_hand only moves by receipts
    dyn.capacity[:] = 100.0
    history = [dyn.step(np.array([4]), rng)[0]]  # 4 lots = 20 units
    for _ in range(lead):
        history.append(dyn.step(np.array([0]), rng)[0])
    # The order moves down the pipeline one slot a day and is on hand exactly `lead` days after it was placed.
    for day in range(1, lead):
        assert history[day - 1][0, IDX[f"pipeline_{lead - day}"]] == 20.0
        assert history[day - 1][0, IDX["on_hand"]] == 0.0
    assert history[lead - 1][0, IDX["on_hand"]] == 20.0


def test_behaviour_propensities_are_the_probabilities_it_sampled_from() -> None:
    policy = BehaviourPolicy()
    probs = policy.level_probs(np.array([0.0, 12.0, 37.0, 500.0]))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    # Nothing due: mostly no order, sometimes a top-up of one or two lots, never more.
    assert probs[0, 0] == probs[0].max() and (probs[0, 3:] == 0).all()
    assert probs[3].argmax() == N_LEVELS - 1 and probs[3, 1 : N_LEVELS - 3].sum() == 0  # capped at the top level
    episodes = run("behaviour", batch=256)
    assert ((episodes.propensities > 0) & (episodes.propensities <= 1)).all()
    assert len(np.unique(episodes.propensities)) > 3, "the behaviour policy must be stochastic"
    # Empirical frequencies match the logged probabilities: mean propensity = sum_a p(a)^2 per state.
    dyn = SIM.dynamics()
    obs = dyn.reset(np.random.default_rng(1), 1)
    obs = np.repeat(obs, 20_000, axis=0)
    dyn.batch = len(obs)
    actions, props = policy.act(dyn, obs, None, None, np.random.default_rng(2))
    expected = policy.level_probs(policy.target(obs[:1], policy.COVER_DAYS))[0]
    freq = np.bincount(actions, minlength=N_LEVELS) / len(actions)
    np.testing.assert_allclose(freq, expected, atol=0.015)
    np.testing.assert_allclose(props, expected[actions])


def test_continuous_variant_has_box_actions_and_proper_densities() -> None:
    spec = SIM.spec(continuous=True)
    assert isinstance(spec.actions, BoxActions) and spec.actions.high == (MAX_ORDER,)
    assert isinstance(SIM.spec().actions, DiscreteActions) and SIM.spec().n_actions == N_LEVELS
    assert spec.state_names == SPEC.state_names and spec.goals == SPEC.goals
    episodes = run("behaviour", continuous=True, batch=64)
    assert episodes.actions.shape == (64, HORIZON, 1) and episodes.actions.dtype == np.float32
    assert ((episodes.actions >= 0) & (episodes.actions <= MAX_ORDER)).all()
    assert ((episodes.propensities > 0) & (episodes.propensities <= 1)).all()
    # The logged density integrates to one over the action range for a fixed state.
    policy, dyn = BehaviourPolicy(), SIM.dynamics(continuous=True)
    obs = np.repeat(dyn.reset(np.random.default_rng(5), 1), 200_000, axis=0)
    dyn.batch = len(obs)
    actions, density = policy.act(dyn, obs, None, None, np.random.default_rng(6))
    hist, edges = np.histogram(actions[:, 0], bins=60, range=(0, MAX_ORDER), density=True)
    centres = (edges[:-1] + edges[1:]) / 2
    order = np.argsort(actions[:, 0])
    at_centres = density[order[np.searchsorted(actions[order, 0], centres).clip(0, len(order) - 1)]]
    assert np.abs(hist - at_centres).max() < 0.01
    with pytest.raises(ValueError, match="unknown options"):
        SIM.dynamics(colour="red")
    with pytest.raises(ValueError, match="true or false"):
        SIM.dynamics(continuous="false")


def test_goals_are_declared_in_the_spec_and_some_are_hard() -> None:
    goals = SIM.goal_set()
    assert 3 <= len(goals) <= 6
    assert sum(g.hard for g in goals) >= 2
    assert SPEC.goals == {g.name: g.targets for g in goals}


def test_reward_task_separates_oracle_behaviour_and_random() -> None:
    returns = {name: run(name, batch=200, seed=11).rewards.sum(axis=1).mean() for name in SIM.policies()}
    score = 100 * (returns["behaviour"] - returns["random"]) / (returns["oracle"] - returns["random"])
    assert returns["oracle"] > returns["behaviour"] > returns["random"]
    assert score <= 70, f"behaviour scores {score:.1f} normalised: too close to the oracle"


@pytest.mark.parametrize("goal", [g.name for g in SIM.goal_set() if g.hard])
def test_hard_goals_are_rare_for_behaviour_but_covered_and_reachable(goal: str) -> None:
    behaviour, oracle = goal_success("behaviour", goal), goal_success("oracle", goal)
    assert 0.0 < behaviour < 0.6, f"behaviour reaches '{goal}' in {behaviour:.0%} of episodes"
    assert oracle >= behaviour + 0.3 and oracle >= 0.9


def test_behaviour_logs_cover_every_goal() -> None:
    episodes = run("behaviour", batch=200, seed=21)
    outcomes = episodes.observations[:, 1:, SPEC.outcome_index]
    for goal in SIM.goal_set():
        values, mask = goal.vector(SPEC)
        reached = (np.abs(outcomes - values) <= SPEC.tolerances) | ~mask
        episodes_reaching = reached.all(axis=-1).any(axis=1).sum()
        assert episodes_reaching >= 5, f"only {episodes_reaching} behaviour episodes reach '{goal.name}'"


def test_a_batch_of_one_runs_the_same_dynamics() -> None:
    one = run("oracle", batch=1, seed=2)
    assert one.observations.shape == (1, HORIZON + 1, SPEC.state_dim)
    assert np.isfinite(one.rewards).all() and one.lengths[0] == HORIZON


def test_write_logs_writes_raw_daily_records(tmp_path: Path) -> None:
    episodes = run("behaviour", batch=3)
    (path,) = SIM.write_logs(episodes, tmp_path, seed=9, start_episode=10)
    frame = pl.read_csv(path)
    assert frame.height == 3 * HORIZON
    assert frame["sku"].unique().sort().to_list() == ["S9-0000010", "S9-0000011", "S9-0000012"]
    assert {"date", "decided_at", "on_hand", "order_qty", "demand", "lost_sales", "propensity"} <= set(frame.columns)
    assert not any(c.startswith(("state", "pipeline_", "dow_")) for c in frame.columns)
    assert (frame["order_qty"] % LOT == 0).all()
    np.testing.assert_allclose(frame["sales"] + frame["lost_sales"], frame["demand"])
