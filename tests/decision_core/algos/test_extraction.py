"""Closed-form policy extraction of IQL/GCIQL over discrete actions, and episodes that end without the goal.

The discrete policy is ``pi_b * exp(beta * Q)`` computed exactly from a behaviour-cloned actor and the critic,
restricted to the actions the behaviour supports; a goal critic must not mistake an episode's end for a goal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from decision_core.algos import Exploration, create_agent
from decision_core.algos.gciql import GCIQLConfig
from decision_core.algos.iql import IQLConfig
from decision_core.algos.nets import masked_logits, tilted_logits
from decision_core.algos.qrl import QRLConfig
from decision_core.data import GoalSampler, OfflineDataset
from decision_core.data.synthetic import grid_arrays
from decision_core.errors import SpecError
from decision_core.reward import rewards_for


def test_tilted_policy_is_the_behaviour_reweighted_by_exp_beta_q() -> None:
    gen = torch.Generator().manual_seed(0)
    logits, q = torch.randn(4, 6, generator=gen), torch.randn(4, 6, generator=gen)
    pb = torch.softmax(logits, -1)
    expected = pb * torch.exp(2.5 * q)
    expected /= expected.sum(-1, keepdim=True)
    torch.testing.assert_close(torch.softmax(tilted_logits(logits, q, 2.5), -1), expected)


def test_actions_below_the_support_threshold_are_never_chosen_whatever_their_value() -> None:
    pb = torch.tensor([[0.60, 0.30, 0.05, 0.05]])
    q = torch.tensor([[0.0, 0.1, 0.2, 100.0]])  # the critic's favourite is an action the logs (almost) never took
    assert tilted_logits(pb.log(), q, 20.0).argmax().item() == 3
    kept = tilted_logits(pb.log(), q, 20.0, support=0.1)
    assert kept.argmax().item() == 1  # 0.05 < 0.1 * 0.6: both rare actions excluded
    assert torch.softmax(kept, -1)[0, 2:].sum().item() == 0.0
    # A caller's mask that rules out every supported action leaves the best action it allows, by the same tilt.
    allowed = torch.tensor([[False, False, True, True]])
    assert masked_logits(kept, allowed).argmax().item() == 3
    only_rare = torch.softmax(masked_logits(kept, allowed), -1)
    torch.testing.assert_close(only_rare, torch.softmax(masked_logits(tilted_logits(pb.log(), q, 20.0), allowed), -1))
    assert only_rare[0, :2].sum().item() == 0.0
    # Sampled at any temperature up to 1000, an unsupported action stays out while a supported one is allowed.
    assert torch.softmax(masked_logits(kept / 1000.0, ~allowed | (pb > 0.5)), -1)[0, 2:].sum().item() == 0.0


def _grid_iql(support: float) -> tuple[Any, OfflineDataset]:
    """A discrete IQL agent after a few updates on a small masked grid, and its data."""
    arrays = grid_arrays(16, 8, size=5, discrete=True, masked=True, seed=0)
    dataset = OfflineDataset(arrays, rewards=rewards_for(arrays, "next.x"))
    agent = create_agent("iql", arrays.spec, dataset.stats, config={"hidden_dims": [32, 32], "support": support})
    sampler = agent.sampler(dataset, seed=0)
    for _ in range(5):
        agent.update(sampler.sample(64))
    return agent, dataset


def test_served_actions_respect_the_mask_where_it_allows_only_actions_outside_the_support() -> None:
    agent, dataset = _grid_iql(support=0.5)
    with torch.no_grad():  # a behaviour that prefers the first actions strongly: the last ones are unsupported
        last = [m for m in agent.nets["actor"].modules() if isinstance(m, torch.nn.Linear)][-1]
        last.bias.copy_(torch.linspace(4.0, -4.0, agent.spec.n_actions))
    states = dataset.states[:32].numpy()
    open_probs = agent.action_probs(states, None, None, None)
    # Mask out every action the policy would take: what is left lies outside its support.
    masks = open_probs == 0.0
    assert masks.any(-1).all()
    rng = np.random.default_rng(0)
    for exploration in (None, Exploration(epsilon=0.2), Exploration(temperature=2.0)):
        result = agent.act(states, action_mask=masks, exploration=exploration, rng=rng)
        assert masks[np.arange(len(states)), result.actions].all(), exploration
        assert (result.propensities > 0).all()
    probs = agent.action_probs(states, None, None, masks)
    assert np.all(probs[~masks] == 0.0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    # The policy restricted to the allowed actions ranks them by the tilt: the greedy one is the best allowed.
    with torch.no_grad():
        x = agent.norm_states(dataset.states[:32])
        tilt = torch.log_softmax(agent.nets["actor"](x).logits, -1) + agent.beta * agent.nets["critic"].all_actions(
            x
        ).mean(0)
    best_allowed = np.where(masks, tilt.numpy(), -np.inf).argmax(-1)
    np.testing.assert_array_equal(agent.act(states, action_mask=masks, rng=rng).actions, best_allowed)


def test_discrete_iql_acts_greedily_on_the_critic_within_the_behaviour_support() -> None:
    agent, dataset = _grid_iql(support=0.2)
    states = dataset.states[:32]
    with torch.no_grad():
        x = agent.norm_states(states)
        pb = torch.softmax(agent.nets["actor"](x).logits, -1)
        q = agent.nets["critic"].all_actions(x).mean(0)
    probs = agent.action_probs(states.numpy(), None, None, None)
    supported = (pb >= 0.2 * pb.max(-1, keepdim=True).values).numpy()
    assert np.all(probs[~supported] == 0.0)
    expected = pb.numpy() * np.exp(20.0 * (q - q.max(-1, keepdim=True).values).numpy()) * supported
    np.testing.assert_allclose(probs, expected / expected.sum(-1, keepdims=True), rtol=1e-4, atol=1e-6)


def test_awr_extraction_and_the_defaults_per_action_space() -> None:
    discrete = grid_arrays(2, 2, discrete=True).spec
    continuous = grid_arrays(2, 2, discrete=False).spec
    assert create_agent("iql", discrete).beta == 20.0 and create_agent("iql", continuous).beta == 3.0
    assert create_agent("iql", discrete, config={"extraction": "awr"}).beta == 3.0
    assert create_agent("gciql", discrete).beta == 20.0
    assert create_agent("gciql", continuous).beta == 3.0
    with pytest.raises(SpecError, match=r"GCIQLConfig\.extraction must be one of"):
        GCIQLConfig(extraction="argmax")
    with pytest.raises(SpecError, match=r"GCIQLConfig\.support must be in \[0, 1\)"):
        GCIQLConfig(support=1.0)


def test_an_episode_that_ends_without_the_goal_never_reaches_it() -> None:
    arrays = grid_arrays(60, 20, discrete=True, seed=0)
    arrays.terminated[arrays.episode_ends[::3] - 1] = True  # some episodes end by the task itself
    dataset = OfflineDataset(arrays)
    config = GCIQLConfig().goals
    assert config.terminal_failure
    plain = GoalSampler(dataset, config.__class__(**{**config.to_dict(), "terminal_failure": False}), discount=0.9)
    batch = GoalSampler(dataset, config, discount=0.9).sample(4096)
    ref = plain.sample(4096)
    torch.testing.assert_close(batch.value_goals, ref.value_goals)  # same draws, only the reward differs
    failed_end = (batch.terminals == 1.0) & (batch.value_successes == 0.0)
    assert failed_end.any() and (~failed_end).any()
    np.testing.assert_allclose(batch.value_rewards[failed_end].numpy(), -1.0 / (1.0 - 0.9), rtol=1e-6)
    torch.testing.assert_close(batch.value_rewards[~failed_end], ref.value_rewards[~failed_end])
    torch.testing.assert_close(batch.value_masks, ref.value_masks)


@pytest.mark.parametrize(
    ("config", "temperature"), [(GCIQLConfig, "awr_temperature"), (IQLConfig, "beta"), (QRLConfig, "awr_temperature")]
)
def test_every_extraction_config_refuses_bad_extraction_fields_by_name(config, temperature: str) -> None:
    assert getattr(config(**{temperature: None}), temperature) is None  # None: the default temperature
    for field, value, rule in (
        (temperature, -1.0, "must be >= 0"),
        ("extraction", "softmax", "must be one of"),
        ("support", 1.0, r"must be in \[0, 1\)"),
        ("max_weight", 0.0, "must be > 0"),
    ):
        with pytest.raises(ValueError, match=f"{config.__name__}.{field} {rule}"):
            config(**{field: value})
