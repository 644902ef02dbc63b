"""QRL: its quasimetrics are quasimetrics, its learned distance counts steps, and it reaches goals on the grid."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch

from decision_core.algos import create_agent
from decision_core.algos.qrl import IntervalQuasimetric, MetricResidual, QRLAgent
from decision_core.data import OfflineDataset
from decision_core.data.synthetic import grid_arrays, grid_goal_success


@pytest.mark.parametrize("metric", [IntervalQuasimetric(4), MetricResidual()], ids=["iqe", "mrn"])
def test_distances_are_quasimetrics(metric: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    x, y, z = (torch.randn(500, 16, generator=gen) for _ in range(3))
    with torch.no_grad():
        xy, yz, xz, yx = metric(x, y), metric(y, z), metric(x, z), metric(y, x)
        assert torch.all(metric(x, x).abs() < 1e-3)
    assert torch.all(xy >= 0)
    assert torch.all(xz <= xy + yz + 1e-4), "triangle inequality"
    assert not torch.allclose(xy, yx), "a quasimetric need not be symmetric, and these are not"


def test_iqe_is_the_length_of_the_union_of_intervals() -> None:
    metric = IntervalQuasimetric(1)
    x = torch.tensor([[0.0, 1.0, 5.0]])
    # Intervals [0, 2], [1, 3] overlap (union 3); [5, 4] is empty (y < x): the distance is 3 with one component.
    y = torch.tensor([[2.0, 3.0, 4.0]])
    assert metric(x, y).item() == pytest.approx(3.0)
    # Disjoint intervals add up: [0, 1] and [5, 7].
    assert metric(x, torch.tensor([[1.0, 0.0, 7.0]])).item() == pytest.approx(3.0)


@pytest.fixture(scope="module")
def grid_agent() -> tuple[QRLAgent, OfflineDataset]:
    arrays = grid_arrays(200, 16, discrete=True, masked=True, seed=0)
    ds = OfflineDataset(arrays)
    agent = create_agent("qrl", ds.spec, ds.stats, config={"hidden_dims": [64, 64]}, seed=0)
    sampler = agent.sampler(ds, seed=0)
    for _ in range(800):
        agent.update(sampler.sample(256))
    return agent, ds  # type: ignore[return-value]


def test_learned_distance_grows_with_the_steps_to_the_goal(grid_agent) -> None:
    agent, _ = grid_agent
    cells = np.array([(x, y) for x in range(5) for y in range(5)], np.float32)
    starts = np.repeat(cells, len(cells), axis=0)
    goals = np.tile(cells, (len(cells), 1))
    steps = np.abs(starts - goals).sum(1)  # the fewest moves on the grid
    states = torch.from_numpy(np.concatenate([starts, np.zeros((len(starts), 1), np.float32)], axis=1))
    with torch.no_grad():
        d = agent.distance(
            agent.encode_states(states),
            agent.encode_goal(torch.from_numpy(goals), torch.ones(len(goals), 2, dtype=torch.bool)),
        ).numpy()
    means = [float(d[steps == k].mean()) for k in range(int(steps.max()) + 1)]
    assert all(a < b for a, b in pairwise(means)), means
    assert np.corrcoef(d, steps)[0, 1] > 0.8


def test_reaches_full_and_partial_goals_far_more_often_than_random(grid_agent) -> None:
    agent, _ = grid_agent
    rng = np.random.default_rng(1)

    def random_policy(states, goals, goal_mask, action_mask):
        return np.where(action_mask, rng.random((len(states), 5)), -1.0).argmax(1)

    def greedy(states, goals, goal_mask, action_mask):
        return agent.act(states, goals, goal_mask, action_mask, rng=np.random.default_rng(0)).actions

    kw = {"discrete": True, "masked": True, "n": 200, "max_steps": 12}
    full, partial = grid_goal_success(greedy, **kw), grid_goal_success(greedy, partial=True, **kw)
    assert full >= 0.75 and full >= grid_goal_success(random_policy, **kw) + 0.4, full
    # Only x specified: random moves already get there about 60% of the time.
    assert partial >= 0.8 and partial >= grid_goal_success(random_policy, partial=True, **kw) + 0.2, partial


def test_no_goal_acts_like_the_behaviour_prior(grid_agent) -> None:
    agent, ds = grid_agent
    states = ds.states[:32]
    empty = torch.zeros(32, 2)
    with torch.no_grad():
        prior = agent.nets["actor"](agent.inputs(states, empty, torch.zeros(32, 2, dtype=torch.bool))).logits
        policy = agent.policy(states, empty, torch.zeros(32, 2, dtype=torch.bool)).logits
    assert prior is not None and policy is not None
    torch.testing.assert_close(policy, prior)
