"""IQL on reward tasks: learns from suboptimal logs a policy better than the behaviour, for both action kinds.

The logs come from the synthetic grid (``decision_core.data.synthetic``): a uniformly random behaviour policy. The
reward is stated as an expression over the features, resolved once into the dataset's rewards.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from decision_core.algos import create_agent, load_agent
from decision_core.algos.iql import IQLAgent, IQLConfig
from decision_core.data import OfflineDataset
from decision_core.data.synthetic import far_corner_reward, far_corner_score, grid_arrays, grid_available
from decision_core.errors import SpecError
from decision_core.reward import RewardExpressionError, rewards_for

SIZE = 5
TO_FAR_CORNER = far_corner_reward(SIZE)
TO_ORIGIN = "-(abs(next.x) + abs(next.y)) / 8"
FAST = {"batch_size": 128, "hidden_dims": [64, 64], "discount": 0.9, "lr": 1e-3}


def _train(discrete: bool, reward: str, updates: int, seed: int = 0) -> tuple[IQLAgent, OfflineDataset]:
    arrays = grid_arrays(64, 16, size=SIZE, discrete=discrete, masked=discrete, seed=seed)
    agent = create_agent("iql", arrays.spec, config={**FAST, "reward": reward}, seed=seed)
    assert isinstance(agent, IQLAgent)
    dataset = OfflineDataset(arrays, rewards=rewards_for(arrays, agent.config.reward))
    agent = create_agent("iql", arrays.spec, dataset.stats, config=agent.config, seed=seed)
    sampler = agent.sampler(dataset, seed=seed)
    for _ in range(updates):
        agent.update(sampler.sample(agent.config.batch_size))
    return agent, dataset  # type: ignore[return-value]


@pytest.mark.parametrize("discrete", [True, False], ids=["discrete", "continuous"])
def test_learns_a_policy_better_than_the_behaviour(discrete: bool) -> None:
    agent, _ = _train(discrete, TO_FAR_CORNER, updates=900)
    score = far_corner_score(agent, size=SIZE, discrete=discrete)
    assert score >= 50, f"normalised score {score:.0f} (behaviour 0, oracle 100)"


def test_the_reward_expression_decides_what_is_learned() -> None:
    """Same logs, opposite rewards: the greedy policy heads for the corner the reward names."""
    rng = np.random.default_rng(0)
    states = np.array([[2.0, 2.0, 0.0]] * 8, np.float32)
    avail = grid_available(states[:, :2], SIZE)
    far, _ = _train(True, TO_FAR_CORNER, updates=500)
    near, _ = _train(True, TO_ORIGIN, updates=500)
    assert set(far.act(states, None, None, avail, rng=rng).actions.tolist()) <= {1, 3}  # right / up
    assert set(near.act(states, None, None, avail, rng=rng).actions.tolist()) <= {2, 4}  # left / down


def test_goals_are_ignored_and_masks_respected() -> None:
    agent, _ = _train(True, TO_FAR_CORNER, updates=20)
    assert agent.goal_conditioned is False
    rng = np.random.default_rng(0)
    states = np.array([[0.0, 0.0, 0.1], [4.0, 4.0, -0.3], [2.0, 3.0, 0.0]], np.float32)
    avail = grid_available(states[:, :2], SIZE)
    goals = np.array([[4.0, 4.0]] * 3, np.float32)
    with_goal = agent.act(states, goals, np.ones_like(goals, bool), avail, rng=rng).actions
    without = agent.act(states, None, None, avail, rng=rng).actions
    np.testing.assert_array_equal(with_goal, without)
    probs = agent.action_probs(states, None, None, avail)
    assert np.all(probs[~avail] == 0.0)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def test_one_update_trains_value_critic_and_actor_and_moves_the_target_by_tau() -> None:
    arrays = grid_arrays(8, 8, discrete=False, seed=1)
    dataset = OfflineDataset(arrays, rewards=rewards_for(arrays, "next.x"))
    agent = create_agent("iql", arrays.spec, dataset.stats, config={**FAST, "tau": 0.25})
    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in agent.nets.items()}
    metrics = agent.update(agent.sampler(dataset).sample(32))
    assert {"critic/loss", "value/loss", "actor/loss", "actor/weight_mean"} <= set(metrics)
    for key in ("critic", "value", "actor"):
        moved = any(not torch.equal(a, b) for a, b in zip(before[key], agent.nets[key].parameters(), strict=True))
        assert moved, f"{key} was not trained"
    for old_t, new_t, new_c in zip(
        before["target_critic"],
        agent.nets["target_critic"].parameters(),
        agent.nets["critic"].parameters(),
        strict=True,
    ):
        torch.testing.assert_close(new_t, 0.75 * old_t + 0.25 * new_c)


def test_config_is_validated_and_the_reward_travels_with_the_model(tmp_path) -> None:
    with pytest.raises(SpecError, match=r"IQLConfig\.expectile must be in \(0, 1\)"):
        IQLConfig(expectile=1.0)
    with pytest.raises(SpecError, match=r"IQLConfig\.beta"):
        IQLConfig.from_dict({"beta": -1})
    with pytest.raises(SpecError, match="unknown fields"):
        IQLConfig.from_dict({"expectil": 0.9})
    spec = grid_arrays(2, 2, discrete=False).spec
    with pytest.raises(RewardExpressionError, match="did you mean 'next.x'"):
        create_agent("iql", spec, config={"reward": "next.xx - 1"})
    agent, _ = _train(False, TO_FAR_CORNER, updates=30)
    loaded = load_agent(agent.save(tmp_path / "iql"))
    assert isinstance(loaded, IQLAgent) and loaded.config.reward == TO_FAR_CORNER
    states = np.array([[0.5, 1.0, 0.0], [3.0, 2.5, 1.0]], np.float32)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(
        agent.act(states, None, None, rng=rng).actions, loaded.act(states, None, None, rng=rng).actions
    )


@pytest.mark.parametrize("algo", ["iql", "cql", "gciql"])
def test_an_agent_saved_before_the_shared_action_head_loads_as_it_was_trained(algo: str, tmp_path) -> None:
    arrays = grid_arrays(16, 8, size=SIZE, discrete=True, seed=0)
    rewards = None if algo == "gciql" else rewards_for(arrays, TO_FAR_CORNER)
    dataset = OfflineDataset(arrays, rewards=rewards)
    agent = create_agent(algo, arrays.spec, dataset.stats, config={**FAST, "action_shrink": 0.0})
    agent.update(agent.sampler(dataset).sample(32))
    path = agent.save(tmp_path / algo)
    meta = json.loads((path / "agent.json").read_text())
    del meta["config"]["action_shrink"]  # as such agents were written, before the field existed
    (path / "agent.json").write_text(json.dumps(meta))
    loaded = load_agent(path)
    assert loaded.config.action_shrink == 0.0  # type: ignore[attr-defined]
    states = arrays.states[:50]
    np.testing.assert_array_equal(agent.action_probs(states), loaded.action_probs(states))
    # New agents get the shared head, and it survives a save.
    fresh = create_agent(algo, arrays.spec, dataset.stats, config=FAST)
    assert fresh.config.action_shrink > 0  # type: ignore[attr-defined]
    again = load_agent(fresh.save(tmp_path / f"{algo}-new"))
    np.testing.assert_array_equal(fresh.action_probs(states), again.action_probs(states))


@pytest.mark.parametrize("algo", ["iql", "cql"])
def test_the_task_and_fitted_reward_scale_are_in_the_config_and_older_agents_load_without_them(
    algo: str, tmp_path
) -> None:
    arrays = grid_arrays(16, 8, size=SIZE, discrete=True, seed=0)
    dataset = OfflineDataset(arrays, rewards=rewards_for(arrays, TO_ORIGIN))
    agent = create_agent(algo, arrays.spec, dataset.stats, config={**FAST, "reward": TO_ORIGIN})
    assert agent.task == TO_ORIGIN and agent.config.reward_scale is None  # type: ignore[attr-defined]
    agent.sampler(dataset)  # fits the scale to the data's rewards
    scale = float(agent.nets["reward_scale"].scale)
    assert scale > 0 and agent.config.reward_scale == pytest.approx(scale)  # type: ignore[attr-defined]
    assert json.loads(agent.config.to_json())["reward_scale"] == pytest.approx(scale)  # what a run logs
    path = agent.save(tmp_path / algo)
    meta = json.loads((path / "agent.json").read_text())
    meta["config"].update(reward=None, reward_scale=None)  # as agents were saved before they recorded either
    (path / "agent.json").write_text(json.dumps(meta))
    old = load_agent(path)
    assert old.task is None  # judged by the domain's own reward, as before
    assert old.config.reward_scale == pytest.approx(scale)  # type: ignore[attr-defined]  # read from the weights
    states = arrays.states[:50]
    np.testing.assert_array_equal(agent.action_probs(states), old.action_probs(states))
