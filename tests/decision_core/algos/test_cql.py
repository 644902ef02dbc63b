"""CQL on reward tasks: better than the behaviour from suboptimal logs, conservative about actions never logged.

The logs come from the synthetic grid (``decision_core.data.synthetic``): a uniformly random behaviour policy; the
reward is an expression over the features, resolved once into the dataset's rewards.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from decision_core.algos import create_agent, load_agent
from decision_core.algos.cql import CQLAgent, CQLConfig
from decision_core.data import OfflineDataset
from decision_core.data.synthetic import far_corner_reward, far_corner_score, grid_arrays, grid_available
from decision_core.errors import SpecError
from decision_core.reward import RewardExpressionError, rewards_for
from decision_core.store import DomainArrays

SIZE = 5
TO_FAR_CORNER = far_corner_reward(SIZE)
FAST: dict[str, Any] = {"batch_size": 128, "hidden_dims": [64, 64], "discount": 0.9, "lr": 1e-3}
#: Continuous: a cooler start and faster actor/temperature so a few hundred steps suffice.
FAST_CONTINUOUS: dict[str, Any] = {
    **FAST,
    "conservative_weight": 1.0,
    "n_action_samples": 4,
    "initial_temperature": 0.05,
    "actor_lr": 1e-3,
    "temperature_lr": 1e-3,
}


def _train(arrays: DomainArrays, config: dict[str, Any], updates: int, seed: int = 0) -> CQLAgent:
    cfg = CQLConfig.from_dict({**config, "reward": TO_FAR_CORNER})
    dataset = OfflineDataset(arrays, rewards=rewards_for(arrays, cfg.reward))
    agent = create_agent("cql", arrays.spec, dataset.stats, config=cfg, seed=seed)
    sampler = agent.sampler(dataset, seed=seed)
    for _ in range(updates):
        agent.update(sampler.sample(cfg.batch_size))
    assert isinstance(agent, CQLAgent)
    return agent


def test_discrete_learns_a_policy_better_than_the_behaviour() -> None:
    agent = _train(grid_arrays(64, 16, discrete=True, masked=True, seed=0), FAST, updates=700)
    score = far_corner_score(agent, size=SIZE, discrete=True)
    assert score >= 50, f"normalised score {score:.0f} (behaviour 0, oracle 100)"


def test_continuous_learns_a_policy_better_than_the_behaviour() -> None:
    agent = _train(grid_arrays(64, 16, discrete=False, seed=0), FAST_CONTINUOUS, updates=700)
    score = far_corner_score(agent, size=SIZE, discrete=False)
    assert score >= 50, f"normalised score {score:.0f} (behaviour 0, oracle 100)"


def _without_action(arrays: DomainArrays, action: int) -> DomainArrays:
    """The logs minus every step that took ``action``, each remaining step a one-step episode."""
    keep = np.flatnonzero(arrays.actions[:, 0] != action)
    n = len(keep)
    starts = np.arange(n, dtype=np.int64)
    return DomainArrays(
        spec=arrays.spec,
        states=arrays.states[keep],
        actions=arrays.actions[keep],
        next_states=arrays.next_states[keep],
        rewards=arrays.rewards[keep],
        propensities=arrays.propensities[keep],
        terminated=np.zeros(n, np.bool_),
        truncated=np.ones(n, np.bool_),
        action_masks=None if arrays.action_masks is None else arrays.action_masks[keep],
        episode_starts=starts,
        episode_ends=starts + 1,
    )


@pytest.mark.parametrize("extraction", ["q", "closed_form"])
def test_actions_the_logs_never_took_are_never_picked(extraction: str) -> None:
    """'stay' (action 0) never appears in the logs: the Q policy's conservative term pushes its value down (the
    closed form's behaviour prior gives it no probability, its small conservative weight need not); neither picks it."""
    arrays = _without_action(grid_arrays(64, 16, discrete=True, seed=2), action=0)
    agent = _train(arrays, {**FAST, "extraction": extraction}, updates=400)
    states = torch.from_numpy(arrays.states[:500])
    if extraction == "q":
        with torch.no_grad():
            q = agent.nets["critic"].all_actions(agent.norm_states(states)).mean(0)
        assert float(q[:, 0].mean()) < float(q[:, 1:].mean()) - 0.5
    rng = np.random.default_rng(0)
    chosen = agent.act(arrays.states[:500], None, None, rng=rng).actions
    assert not np.any(chosen == 0)


def test_discrete_closed_form_policy_is_the_behaviour_tilted_by_the_critics_within_its_support() -> None:
    agent = _train(grid_arrays(16, 8, discrete=True, masked=True, seed=1), {**FAST, "support": 0.3}, updates=30)
    assert agent.closed_form and "actor" in agent.nets
    states = np.array([[0.0, 0.0, 0.2], [4.0, 2.0, -1.0], [2.0, 2.0, 0.0], [1.0, 3.0, 0.5]], np.float32)
    with torch.no_grad():
        x = agent.norm_states(torch.from_numpy(states))
        pb = torch.softmax(agent.nets["actor"](x).logits, -1).numpy()
        q = agent.nets["critic"].all_actions(x).mean(0).numpy()
    supported = pb >= 0.3 * pb.max(-1, keepdims=True)
    assert not supported.all()  # the threshold excludes something here, or the test shows nothing
    expected = pb * np.exp(agent.beta * (q - q.max(-1, keepdims=True))) * supported
    probs = agent.action_probs(states, None, None, None)
    np.testing.assert_allclose(probs, expected / expected.sum(-1, keepdims=True), rtol=1e-4, atol=1e-6)
    assert np.all(probs[~supported] == 0.0)
    greedy = agent.act(states, None, None, rng=np.random.default_rng(0)).actions
    assert np.all(supported[np.arange(len(states)), greedy])


def test_discrete_q_extraction_is_the_boltzmann_policy_of_the_critics() -> None:
    agent = _train(grid_arrays(16, 8, discrete=True, masked=True, seed=1), {**FAST, "extraction": "q"}, updates=30)
    assert not agent.closed_form and "actor" not in agent.nets
    assert agent.goal_conditioned is False
    states = np.array([[0.0, 0.0, 0.2], [4.0, 2.0, -1.0], [2.0, 2.0, 0.0]], np.float32)
    avail = grid_available(states[:, :2], SIZE)
    with torch.no_grad():
        q = agent.nets["critic"].all_actions(agent.norm_states(torch.from_numpy(states))).mean(0)
    expected = torch.softmax(q.masked_fill(~torch.from_numpy(avail), -torch.inf), -1).numpy()
    probs = agent.action_probs(states, None, None, avail)
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-6)
    assert np.all(probs[~avail] == 0.0)
    rng = np.random.default_rng(0)
    greedy = agent.act(states, None, None, avail, rng=rng).actions
    np.testing.assert_array_equal(greedy, np.where(avail, q.numpy(), -np.inf).argmax(1))
    goals = np.array([[4.0, 4.0]] * 3, np.float32)
    np.testing.assert_array_equal(agent.act(states, goals, None, avail, rng=rng).actions, greedy)


def test_continuous_temperature_tracks_the_target_entropy_and_survives_save_load(tmp_path) -> None:
    arrays = grid_arrays(16, 8, discrete=False, seed=1)
    agent = _train(arrays, {**FAST_CONTINUOUS, "initial_temperature": 1.0, "temperature_lr": 1e-2}, updates=40)
    metrics = agent.update(agent.sampler(OfflineDataset(arrays, rewards=rewards_for(arrays, "next.x"))).sample(64))
    # The fresh actor's entropy is far above the target (-2 for 2-D actions): the temperature must fall.
    assert metrics["actor/entropy"] > agent.target_entropy
    assert metrics["actor/temperature"] < 1.0
    loaded = load_agent(agent.save(tmp_path / "cql"))
    assert isinstance(loaded, CQLAgent)
    torch.testing.assert_close(loaded.nets["temperature"](), agent.nets["temperature"]())
    states = arrays.states[:5]
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(
        loaded.act(states, None, None, rng=rng).actions, agent.act(states, None, None, rng=rng).actions
    )


def test_config_defaults_and_validation() -> None:
    discrete = create_agent("cql", grid_arrays(2, 2, discrete=True).spec)
    continuous = create_agent("cql", grid_arrays(2, 2, discrete=False).spec)
    assert discrete.conservative_weight == 0.01 and continuous.conservative_weight == 5.0  # type: ignore[attr-defined]
    assert continuous.target_entropy == -2.0  # type: ignore[attr-defined]
    assert set(discrete.nets) == {"critic", "target_critic", "reward_scale", "actor"}
    assert discrete.beta == 20.0  # type: ignore[attr-defined]
    q_only = create_agent("cql", discrete.spec, config={"extraction": "q"})
    assert set(q_only.nets) == {"critic", "target_critic", "reward_scale"}
    assert q_only.conservative_weight == 1.0  # type: ignore[attr-defined]
    with pytest.raises(SpecError, match=r"CQLConfig\.extraction must be one of"):
        CQLConfig(extraction="awr")
    with pytest.raises(SpecError, match=r"CQLConfig\.support must be in \[0, 1\)"):
        CQLConfig(support=1.0)
    with pytest.raises(SpecError, match=r"CQLConfig\.conservative_weight must be >= 0"):
        CQLConfig(conservative_weight=-1.0)
    with pytest.raises(SpecError, match=r"CQLConfig\.n_action_samples"):
        CQLConfig.from_dict({"n_action_samples": 0})
    with pytest.raises(RewardExpressionError, match="unknown function 'sqrt'"):
        create_agent("cql", discrete.spec, config={"reward": "sqrt(next.x)"})


def test_the_reward_units_do_not_change_what_is_learned() -> None:
    """Rewards are scaled to unit std before learning: costs in cents or in dollars give the same policy."""
    arrays = grid_arrays(16, 8, discrete=True, masked=True, seed=3)
    agents = []
    for expression in (TO_FAR_CORNER, f"1000 * ({TO_FAR_CORNER})"):
        cfg = CQLConfig.from_dict({**FAST, "reward": expression})
        dataset = OfflineDataset(arrays, rewards=rewards_for(arrays, cfg.reward))
        agent = create_agent("cql", arrays.spec, dataset.stats, config=cfg, seed=0)
        sampler = agent.sampler(dataset, seed=0)
        for _ in range(30):
            agent.update(sampler.sample(cfg.batch_size))
        agents.append(agent)
    states = arrays.states[:64]
    avail = grid_available(states[:, :2], SIZE)
    np.testing.assert_allclose(
        agents[0].action_probs(states, None, None, avail), agents[1].action_probs(states, None, None, avail), atol=1e-3
    )
