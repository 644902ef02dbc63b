"""Hindsight goal sampling: mixtures, tolerance-based success, partial goals, subgoals, seeded repeats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from decision_core.data import GoalSampler, GoalSamplerConfig, OfflineDataset
from decision_core.data.synthetic import grid_arrays
from decision_core.envs.base import goal_reached
from decision_core.errors import SpecError


@pytest.fixture(scope="module")
def ds() -> OfflineDataset:
    arrays = grid_arrays(60, 20, discrete=False, seed=0)
    arrays.terminated[arrays.episode_ends[::3] - 1] = True  # some episodes end by the task itself
    return OfflineDataset(arrays)


def _config(**kw) -> GoalSamplerConfig:
    return GoalSamplerConfig(**kw)


def _rows_of(ds: OfflineDataset, goals: torch.Tensor, masks: torch.Tensor) -> list[set[int]]:
    """For each goal, the dataset rows whose reached outcome equals it on the specified features."""
    eq = (ds.next_outcomes[None] == goals[:, None]) | ~masks[:, None]
    return [set(np.flatnonzero(r).tolist()) for r in eq.all(-1).numpy()]


def test_same_seed_same_batches_other_seed_other_batches(ds: OfflineDataset) -> None:
    cfg = _config(subgoal_steps=3)
    a = GoalSampler(ds, cfg, discount=0.9, seed=7)
    b = GoalSampler(ds, cfg, discount=0.9, seed=7)
    c = GoalSampler(ds, cfg, discount=0.9, seed=8)
    for _ in range(3):
        x, y, z = a.sample(128), b.sample(128), c.sample(128)
        for field in ("indices", "value_goals", "value_goal_masks", "actor_goals", "actor_goal_masks", "low_goals"):
            assert torch.equal(getattr(x, field), getattr(y, field)), field
        assert not torch.equal(x.value_goals, z.value_goals)


def test_success_reward_and_mask_follow_the_domain_tolerances(ds: OfflineDataset) -> None:
    batch = GoalSampler(ds, _config(), discount=0.9, seed=0).sample(2048)
    reached_now = ds.next_outcomes[batch.indices].numpy()
    expected = goal_reached(reached_now, batch.value_goals.numpy(), batch.value_goal_masks.numpy(), ds.spec.tolerances)
    np.testing.assert_array_equal(batch.value_successes.numpy() == 1.0, expected)
    assert 0.1 < expected.mean() < 0.9
    np.testing.assert_array_equal(batch.value_rewards.numpy(), expected.astype(np.float32) - 1.0)
    terminal = batch.terminals.numpy() == 1.0
    assert terminal.any()
    np.testing.assert_array_equal(batch.value_masks.numpy() == 0.0, expected | terminal)
    positive = GoalSampler(ds, _config(gc_negative=False), discount=0.9, seed=0).sample(64)
    assert torch.equal(positive.value_rewards, positive.value_successes)


def test_current_goals_are_always_reached(ds: OfflineDataset) -> None:
    cfg = _config(value_p_curgoal=1.0, value_p_trajgoal=0.0, value_p_randomgoal=0.0)
    batch = GoalSampler(ds, cfg, discount=0.9, seed=1).sample(512)
    assert bool((batch.value_successes == 1.0).all())


@pytest.mark.parametrize("geom", [True, False])
def test_trajectory_goals_lie_ahead_in_the_same_episode(ds: OfflineDataset, geom: bool) -> None:
    cfg = _config(value_p_curgoal=0.0, value_p_trajgoal=1.0, value_p_randomgoal=0.0, value_geom_sample=geom)
    sampler = GoalSampler(ds, cfg, discount=0.8, seed=2)
    idx = torch.randint(0, ds.n, (4000,), generator=torch.Generator().manual_seed(0))
    ends = ds.episode_ends[idx].long()
    rows = sampler.goal_rows(idx, ends, 0.0, 1.0, geom)
    assert bool(((rows >= idx) & (rows < ends)).all())
    offsets = (rows - idx).float()
    if geom:
        # Geometric(1 - 0.8) - 1 has mean 4; capping at the episode end only lowers it.
        assert 3.0 < float(offsets.mean()) < 4.3
    else:
        # Uniform over [i, end): the mean offset is about half the remaining length.
        remaining = (ends - idx).float()
        assert float(offsets.mean()) == pytest.approx(float(((remaining - 1) / 2).mean()), rel=0.1)
        assert bool((rows == ends - 1).any()) and bool((rows == idx).any())


def test_random_goals_come_from_anywhere(ds: OfflineDataset) -> None:
    sampler = GoalSampler(ds, _config(), discount=0.9, seed=3)
    idx = torch.zeros(4000, dtype=torch.long)
    rows = sampler.goal_rows(idx, ds.episode_ends[idx].long(), 0.0, 0.0, True)
    assert len(torch.unique(ds.episode_ends[rows])) > 50  # rows spread over (nearly) all 60 episodes


def test_partial_goals_keep_at_least_one_feature_and_zero_the_rest(ds: OfflineDataset) -> None:
    batch = GoalSampler(ds, _config(p_partial=1.0, actor_p_empty_goal=0.0), discount=0.9, seed=4).sample(2000)
    for goals, masks in ((batch.value_goals, batch.value_goal_masks), (batch.actor_goals, batch.actor_goal_masks)):
        kept = masks.sum(-1)
        assert int(kept.min()) >= 1 and bool((kept < 2).any())
        assert bool((goals[~masks] == 0.0).all())
        # Each outcome feature is left out sometimes.
        assert bool((~masks).any(0).all())
    # Unmasked values are outcomes the logs reached.
    rows = _rows_of(ds, batch.value_goals[:50], batch.value_goal_masks[:50])
    assert all(rows)
    full = GoalSampler(ds, _config(p_partial=0.0, actor_p_empty_goal=0.0), discount=0.9, seed=4).sample(500)
    assert bool(full.value_goal_masks.all()) and bool(full.actor_goal_masks.all())
    empty = GoalSampler(ds, _config(actor_p_empty_goal=1.0), discount=0.9, seed=4).sample(100)
    assert not bool(empty.actor_goal_masks.any()) and bool(empty.value_goal_masks.any(-1).all())


def test_subgoals_are_k_steps_ahead_and_never_past_the_actor_goal(ds: OfflineDataset) -> None:
    k = 4
    cfg = _config(subgoal_steps=k, actor_p_empty_goal=0.0, p_partial=0.0)
    batch = GoalSampler(ds, cfg, discount=0.9, seed=5).sample(1000)
    idx = batch.indices
    ends = ds.episode_ends[idx].long()
    expected = ds.next_outcomes[torch.minimum(idx + k - 1, ends - 1)]
    assert torch.equal(batch.low_goals, expected)
    # The high-level target is reached between the transition and its (in-episode) actor goal.
    actor_rows = _rows_of(ds, batch.actor_goals, batch.actor_goal_masks)
    target_rows = _rows_of(ds, batch.high_targets, torch.ones_like(batch.actor_goal_masks))
    for i in range(200):
        lo, hi = int(idx[i]), int(ends[i])
        goal_row = min(r for r in actor_rows[i] if lo <= r < hi)
        assert any(lo <= r <= min(lo + k - 1, goal_row) for r in target_rows[i])
    assert torch.equal(batch.high_target_states[:, ds.spec.outcome_index], batch.high_targets), (
        "the target state is where the target outcome was reached"
    )


def test_mixture_probabilities_must_sum_to_one() -> None:
    with pytest.raises(SpecError, match="must sum to 1"):
        GoalSamplerConfig(value_p_curgoal=0.5, value_p_trajgoal=0.5, value_p_randomgoal=0.5)
    with pytest.raises(ValueError, match="p_partial"):
        GoalSamplerConfig(p_partial=1.5)
    with pytest.raises(ValueError, match="discount"):
        GoalSampler(OfflineDataset(grid_arrays(2, 3)), GoalSamplerConfig(), discount=1.0)
