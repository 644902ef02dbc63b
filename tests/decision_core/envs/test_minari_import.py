"""Importing local Minari datasets (made here with minari itself; nothing is downloaded)."""

from __future__ import annotations

import warnings

import gymnasium
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from decision_core.envs.cli import import_minari_cmd
from decision_core.envs.minari_import import domain_name_for, import_minari
from decision_core.errors import StoreError
from decision_core.store import DecisionStore

minari = pytest.importorskip("minari")
from minari.data_collector import EpisodeBuffer  # noqa: E402


def _make_dataset(dataset_id: str, env_id: str, episodes: int, seed: int, *, propensity: bool, **make_kwargs):
    """Run a random policy and store its episodes as a Minari dataset; returns the raw episodes."""
    env = gymnasium.make(env_id, **make_kwargs)
    env.action_space.seed(seed)
    buffers, raw = [], []
    for e in range(episodes):
        obs, _ = env.reset(seed=seed + e)
        o, a, r, term, trunc = [obs], [], [], [], []
        done = False
        while not done:
            action = env.action_space.sample()
            obs, reward, t, tr, _ = env.step(action)
            o.append(obs), a.append(action), r.append(reward), term.append(t), trunc.append(tr)
            done = t or tr
        infos = {"propensity": np.full((len(o), 1), 0.5)} if propensity else None
        buffers.append(
            EpisodeBuffer(
                id=e,
                observations=np.array(o),
                actions=np.array(a),
                rewards=np.array(r),
                terminations=np.array(term),
                truncations=np.array(trunc),
                infos=infos,
            )
        )
        raw.append((np.array(o, np.float32), np.array(a), np.array(r), term[-1]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # minari asks for author/permalink metadata
        minari.create_dataset_from_buffers(
            dataset_id, buffers, env=env, algorithm_name="random", description="test", data_format="arrow"
        )
    return raw


@pytest.fixture
def minari_home(tmp_path, monkeypatch):
    home = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(home))
    return home


def test_cartpole_dataset_imports_step_for_step_and_only_once(minari_home, tmp_path) -> None:
    raw = _make_dataset("cartpole/random-v0", "CartPole-v1", 5, seed=0, propensity=True)
    with DecisionStore(tmp_path / "s.duckdb") as store:
        report = import_minari("cartpole/random-v0", store, progress=False)
        again = import_minari("cartpole/random-v0", store, progress=False)
        arrays = store.load_arrays("cartpole_random_v0")
    assert report.domain == "cartpole_random_v0" and report.episodes == 5
    assert report.steps == report.steps_inserted == sum(len(r[1]) for r in raw)
    assert again.steps_inserted == 0
    assert np.all(arrays.propensities == 0.5) and arrays.n_episodes == 5
    # Episodes come back in id order; each matches what was collected.
    for e, (obs, actions, rewards, terminated) in enumerate(raw):
        lo, hi = arrays.episode_starts[e], arrays.episode_ends[e]
        assert np.array_equal(arrays.states[lo:hi], obs[:-1]) and np.array_equal(arrays.next_states[lo:hi], obs[1:])
        assert np.array_equal(arrays.actions[lo:hi, 0], actions) and np.allclose(arrays.rewards[lo:hi], rewards)
        assert arrays.terminated[hi - 1] == terminated and arrays.truncated[hi - 1] != terminated


def test_continuous_dataset_by_directory_with_chosen_outcomes(minari_home, tmp_path) -> None:
    _make_dataset("pendulum/random-v0", "Pendulum-v1", 3, seed=1, propensity=False, max_episode_steps=15)
    with DecisionStore(tmp_path / "s.duckdb") as store:
        report = import_minari(
            minari_home / "pendulum" / "random-v0",
            store,
            domain="pendulum",
            outcomes={"obs_0": 0.05, "obs_1": 0.05},
            progress=False,
        )
        spec = store.spec("pendulum")
        arrays = store.load_arrays("pendulum")
    assert report.steps == 45 and spec.outcome_names == ["obs_0", "obs_1"]
    assert spec.actions.low == (-2.0,) and arrays.actions.shape == (45, 1)
    assert arrays.truncated[arrays.episode_ends - 1].all() and np.isnan(arrays.propensities).all()


def test_a_missing_dataset_names_where_it_looked(minari_home, tmp_path) -> None:
    with DecisionStore(tmp_path / "s.duckdb") as store, pytest.raises(StoreError, match="MINARI_DATASETS_PATH"):
        import_minari("nothing/here-v0", store, progress=False)
    assert domain_name_for("D4RL/door/human-v2") == "d4rl_door_human_v2"
    assert domain_name_for("2048/x-v0") == "minari_2048_x_v0"


def test_import_command(minari_home, tmp_path) -> None:
    _make_dataset("cartpole/cli-v0", "CartPole-v1", 2, seed=3, propensity=False)
    cli = typer.Typer()
    cli.command()(import_minari_cmd)
    db = tmp_path / "s.duckdb"
    result = CliRunner().invoke(cli, ["cartpole/cli-v0", "--domain", "cp", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "imported 2 episodes" in result.output
    with DecisionStore(db) as store:
        assert store.summary("cp")["episodes"] == 2
