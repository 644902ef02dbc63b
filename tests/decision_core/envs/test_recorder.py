"""Recording gymnasium envs (CartPole, FrozenLake, Pendulum) into the decision store."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

from decision_core.envs.recorder import DecisionRecorder, spec_from_spaces
from decision_core.errors import IngestError, SpecError
from decision_core.store import DecisionStore, fetch_one


class ReportsPropensity(gymnasium.Wrapper):
    """An env whose info carries the propensity of the action the (uniform) policy took."""

    def step(self, action):
        obs, r, term, trunc, info = self.env.step(action)
        return obs, r, term, trunc, {**info, "propensity": 1.0 / self.action_space.n}


def _play(env: gymnasium.Env, episodes: int, seed: int, propensity: float | None = None) -> list[list[np.ndarray]]:
    """Run a uniform random policy; returns the observations of each episode."""
    rng = np.random.default_rng(seed)
    seen = []
    for e in range(episodes):
        obs, _ = env.reset(seed=seed + e)
        trajectory = [np.asarray(obs, np.float32).reshape(-1)]
        done = False
        while not done:
            action = int(rng.integers(env.action_space.n))
            kwargs = {} if propensity is None else {"propensity": propensity}
            obs, _, term, trunc, _ = env.step(action, **kwargs)
            trajectory.append(np.asarray(obs, np.float32).reshape(-1))
            done = term or trunc
        seen.append(trajectory)
    return seen


def test_cartpole_episodes_land_in_the_store_exactly(tmp_path) -> None:
    with DecisionStore(tmp_path / "s.duckdb") as store:
        env = DecisionRecorder(gymnasium.make("CartPole-v1"), store, "cartpole", episode_prefix="cp-")
        played = _play(env, 6, seed=0, propensity=0.5)
        env.close()
        spec = store.spec("cartpole")
        arrays = store.load_arrays("cartpole")
        source = fetch_one(store.con, "SELECT adapter, source FROM ingests WHERE domain = 'cartpole'")
    assert spec.state_names == ["obs_0", "obs_1", "obs_2", "obs_3"] and spec.outcome_names == spec.state_names
    assert spec.n_actions == 2 and spec.reward == "logged"
    assert source == ("gym-recorder", "gym:CartPole-v1")
    assert arrays.n_episodes == 6 and arrays.n_steps == sum(len(t) - 1 for t in played)
    assert np.all(arrays.propensities == 0.5) and np.all(arrays.rewards == 1.0)
    for e, trajectory in enumerate(played):
        lo, hi = arrays.episode_starts[e], arrays.episode_ends[e]
        assert np.array_equal(arrays.states[lo:hi], np.stack(trajectory[:-1]))
        assert np.array_equal(arrays.next_states[lo:hi], np.stack(trajectory[1:]))
        # CartPole under a random policy falls over (terminated) long before its 500-step limit.
        assert arrays.terminated[hi - 1] and not arrays.terminated[lo : hi - 1].any()


def test_flushes_in_transactions_and_takes_propensities_from_info(tmp_path) -> None:
    with DecisionStore(tmp_path / "s.duckdb") as store:
        env = DecisionRecorder(
            ReportsPropensity(gymnasium.make("CartPole-v1")),
            store,
            "cartpole",
            outcomes={"obs_0": 0.1, "obs_2": 0.02},
            flush_every=40,
        )
        _play(env, 5, seed=1)
        written_before_close = store.count_steps("cartpole")
        env.reset(seed=99)
        env.step(0)
        env.step(1)  # an episode cut short by close() is kept, marked truncated
        env.close()
        arrays = store.load_arrays("cartpole")
        spec = store.spec("cartpole")
        flushes = fetch_one(store.con, "SELECT count(*) FROM ingests")[0]
    assert written_before_close >= 40 and flushes >= 2
    assert [(o.name, o.tolerance) for o in spec.outcomes] == [("obs_0", 0.1), ("obs_2", pytest.approx(0.02))]
    assert arrays.n_episodes == 6 and np.all(arrays.propensities == 0.5)
    last = np.flatnonzero(arrays.episode_ends - arrays.episode_starts == 2)
    assert len(last) == 1 and arrays.truncated[arrays.episode_ends[last[0]] - 1]


def test_discrete_observations_and_continuous_actions(tmp_path) -> None:
    with DecisionStore(tmp_path / "s.duckdb") as store:
        lake = DecisionRecorder(gymnasium.make("FrozenLake-v1"), store, "lake", tolerance=0.0)
        played = _play(lake, 3, seed=0)
        lake.close()
        pend = DecisionRecorder(gymnasium.make("Pendulum-v1", max_episode_steps=20), store, "pendulum")
        pend.reset(seed=0)
        rng = np.random.default_rng(0)
        for _ in range(20):
            pend.step(rng.uniform(-2, 2, size=1).astype(np.float32))
        pend.close()
        lake_arrays, pend_arrays = store.load_arrays("lake"), store.load_arrays("pendulum")
        pend_spec = store.spec("pendulum")
    assert lake_arrays.states.shape[1] == 1 and set(np.unique(lake_arrays.states)) <= set(range(16))
    assert lake_arrays.states[0, 0] == played[0][0][0] == 0.0
    assert np.isnan(lake_arrays.propensities).all()  # none was given
    assert pend_spec.actions.low == (-2.0,) and pend_spec.actions.high == (2.0,)
    assert pend_arrays.n_steps == 20 and pend_arrays.truncated[-1] and not pend_arrays.terminated.any()
    assert np.all(np.abs(pend_arrays.actions) <= 2.0)


def test_spaces_the_schema_cannot_hold_are_refused_with_the_reason() -> None:
    box = gymnasium.spaces.Box(-1, 1, (3,))
    with pytest.raises(SpecError, match="infinite bounds"):
        spec_from_spaces("x", box, gymnasium.spaces.Box(-np.inf, np.inf, (1,)))
    with pytest.raises(SpecError, match="not observation features"):
        spec_from_spaces("x", box, gymnasium.spaces.Discrete(2), outcomes=["obs_7"])
    flat = spec_from_spaces(
        "x",
        gymnasium.spaces.Dict({"a": gymnasium.spaces.Discrete(3), "b": box}),
        gymnasium.spaces.Discrete(2, start=1),
    )
    assert flat.state_dim == 6 and flat.actions.labels == ("a_1", "a_2")


def test_a_propensity_outside_0_1_is_refused_and_nothing_is_written(tmp_path) -> None:
    with DecisionStore(tmp_path / "s.duckdb") as store:
        env = DecisionRecorder(gymnasium.make("CartPole-v1"), store, "cartpole")
        env.reset(seed=0)
        done = False
        while not done:
            *_, term, trunc, _ = env.step(0, propensity=1.5)
            done = term or trunc
        with pytest.raises(IngestError, match="propensity outside"):
            env.flush()
        assert "cartpole" not in store.domains()
