"""The offline dataset: built once from stored steps, shares memory, reconstructs next states, samples by index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from decision_core.data import FeatureStats, OfflineDataset, TransitionSampler
from decision_core.data.synthetic import grid_arrays
from decision_core.errors import SpecError
from decision_core.schema import BoxActions, DomainSpec, Feature, OutcomeFeature, steps_schema
from decision_core.store import DecisionStore, DomainArrays


def _store_arrays(arrays: DomainArrays, path: Path) -> DomainArrays:
    """Write ``arrays`` into a real DuckDB store and read them back the way training does."""
    spec = arrays.spec
    n = arrays.n_steps
    episode = arrays.episode_index
    step = np.arange(n) - arrays.episode_starts[episode]
    masks = arrays.action_masks if arrays.action_masks is not None else np.ones((n, 1), np.bool_)
    frame = pl.DataFrame(
        {
            "episode_id": [f"ep{e:05d}" for e in episode],
            "step": step.astype(np.int32),
            "state": arrays.states,
            "action": arrays.actions,
            "action_mask": masks,
            "propensity": arrays.propensities.astype(np.float64),
            "reward": arrays.rewards.astype(np.float64),
            "next_state": arrays.next_states,
            "terminated": arrays.terminated,
            "truncated": arrays.truncated,
            "timestamp": [None] * n,
            "source_adapter": ["synthetic"] * n,
            "adapter_version": ["1"] * n,
            "source_file": ["memory"] * n,
            "source_row": np.arange(n, dtype=np.int64),
        },
        schema=steps_schema(spec),
    )
    with DecisionStore(path / "store.duckdb") as store:
        with store.transaction() as con:
            con.register("staged", frame.to_arrow())
            store.insert_steps(spec, "staged", con)
            con.unregister("staged")
        return store.load_arrays(spec.name)


@pytest.mark.parametrize("discrete", [True, False])
def test_dataset_from_the_store_reconstructs_every_transition(discrete: bool, tmp_path: Path) -> None:
    original = grid_arrays(20, 7, discrete=discrete, masked=discrete, seed=1)
    arrays = _store_arrays(original, tmp_path)
    ds = OfflineDataset(arrays)
    assert ds.n == original.n_steps and ds.n_episodes == 20
    assert np.shares_memory(ds.states.numpy(), arrays.states), "states must not be copied"
    idx = torch.arange(ds.n)
    batch = ds.transitions(idx)
    np.testing.assert_array_equal(batch.next_states.numpy(), arrays.next_states)
    np.testing.assert_array_equal(batch.states.numpy(), arrays.states)
    np.testing.assert_array_equal(ds.outcomes.numpy(), arrays.states[:, ds.spec.outcome_index])
    np.testing.assert_array_equal(ds.next_outcomes.numpy(), arrays.next_states[:, ds.spec.outcome_index])
    # Only one next state per episode is kept apart: the rest are the following rows.
    assert ds.tail_states.shape[0] == 20
    if discrete:
        assert batch.actions.dtype == torch.int64
        np.testing.assert_array_equal(batch.actions.numpy(), arrays.actions[:, 0].astype(np.int64))
        # Next-state masks: the next row's mask inside an episode, everything allowed after its end.
        assert arrays.action_masks is not None
        last = np.zeros(ds.n, np.bool_)
        last[arrays.episode_ends - 1] = True
        nm = batch.next_action_masks.numpy()
        assert nm[last].all()
        np.testing.assert_array_equal(nm[~last], arrays.action_masks[1:][~last[:-1]])
    else:
        np.testing.assert_array_equal(batch.actions.numpy(), arrays.actions)


def test_next_state_that_is_not_the_following_row_is_kept() -> None:
    arrays = grid_arrays(4, 5, seed=2)
    arrays.next_states[2] += 10.0  # a log whose next observation differs from the following row's state
    ds = OfflineDataset(arrays)
    assert ds.tail_states.shape[0] == 5
    got = ds.next_states_at(torch.arange(ds.n)).numpy()
    np.testing.assert_array_equal(got, arrays.next_states)


def test_memory_holds_no_second_copy_of_the_states() -> None:
    n, s = 20_000, 32
    spec = DomainSpec(
        name="wide",
        version="1",
        state=tuple(Feature(f"f{i}") for i in range(s)),
        outcomes=(OutcomeFeature("f0", 0.1), OutcomeFeature("f1", 0.1)),
        actions=BoxActions(names=("a", "b"), low=(-1.0, -1.0), high=(1.0, 1.0)),
    )
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n // 50, 51, s)).astype(np.float32)
    starts = np.arange(0, n, 50)
    arrays = DomainArrays(
        spec=spec,
        states=obs[:, :-1].reshape(n, s).copy(),
        actions=rng.uniform(-1, 1, (n, 2)).astype(np.float32),
        next_states=obs[:, 1:].reshape(n, s).copy(),
        rewards=np.zeros(n, np.float32),
        propensities=np.full(n, np.nan, np.float32),
        terminated=np.zeros(n, np.bool_),
        truncated=np.zeros(n, np.bool_),
        action_masks=None,
        episode_starts=starts,
        episode_ends=starts + 50,
    )
    ds = OfflineDataset(arrays)
    states_bytes = n * s * 4
    # Everything besides the shared states (outcomes, actions, boundaries, ...) is a third of a states copy.
    assert ds.nbytes - states_bytes < 0.4 * states_bytes
    assert ds.tail_states.shape[0] == n // 50
    np.testing.assert_array_equal(ds.next_states_at(torch.arange(n)).numpy(), arrays.next_states)


def test_feature_stats_match_numpy_and_round_trip_through_json() -> None:
    arrays = grid_arrays(50, 10, seed=4)
    arrays.states[:, 2] = 3.0  # a constant feature keeps std 1 rather than dividing by ~0
    stats = FeatureStats.compute(arrays.states, arrays.spec)
    np.testing.assert_allclose(stats.state_mean, arrays.states.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats.state_std[:2], arrays.states[:, :2].std(0), rtol=1e-4)
    assert stats.state_std[2] == 1.0
    assert stats.outcome_mean == stats.state_mean[:2]
    assert FeatureStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats
    with pytest.raises(SpecError, match="missing or malformed"):
        FeatureStats.from_dict({"state_mean": [0.0]})


def test_nan_states_are_refused_with_the_feature_named() -> None:
    arrays = grid_arrays(5, 4, seed=0)
    arrays.states[3, 1] = np.nan
    with pytest.raises(SpecError, match=r"\['y'\]"):
        OfflineDataset(arrays)


def test_out_of_range_discrete_action_is_refused_with_its_step() -> None:
    arrays = grid_arrays(5, 4, seed=0)
    arrays.actions[7, 0] = 9.0
    with pytest.raises(SpecError, match="step 7"):
        OfflineDataset(arrays)


def test_transition_sampler_repeats_with_its_seed_and_needs_rewards() -> None:
    arrays = grid_arrays(30, 8, seed=0)
    ds = OfflineDataset(arrays)
    a = TransitionSampler(ds, seed=3).sample(64)
    b = TransitionSampler(ds, seed=3).sample(64)
    c = TransitionSampler(ds, seed=4).sample(64)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.next_states, b.next_states)
    assert not torch.equal(a.indices, c.indices)
    arrays.rewards[5] = np.nan
    with pytest.raises(SpecError, match="1 of 240 steps have no reward"):
        TransitionSampler(OfflineDataset(arrays))
    TransitionSampler(OfflineDataset(arrays), require_rewards=False).sample(8)


def test_custom_rewards_replace_the_logged_ones() -> None:
    arrays = grid_arrays(10, 5, seed=0)
    ds = OfflineDataset(arrays, rewards=np.arange(50, dtype=np.float32))
    batch = ds.transitions(torch.tensor([0, 7, 49]))
    assert batch.rewards.tolist() == [0.0, 7.0, 49.0]
    with pytest.raises(SpecError, match="rewards must have shape"):
        OfflineDataset(arrays, rewards=np.zeros(3))


def test_a_batch_moves_to_a_device_whole_and_stays_put_when_it_is_there() -> None:
    sampler = TransitionSampler(OfflineDataset(grid_arrays(8, 6, discrete=True, masked=True, seed=1)), seed=0)
    batch = sampler.sample(16)
    assert batch.to(torch.device("cpu")) is batch
    moved = batch.to(torch.device("meta"))  # a device without data: only where tensors live changes
    for name, value in vars(batch).items():
        if value is None:
            assert getattr(moved, name) is None
        else:
            assert getattr(moved, name).device.type == "meta" and getattr(moved, name).shape == value.shape
    assert batch.states.device.type == "cpu"
