"""A tiny chain domain in a real DuckDB store, and settings that keep MLflow inside the test's folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from decision_core.schema import DiscreteActions, DomainSpec, Feature, OutcomeFeature, steps_schema
from decision_core.settings import CoreSettings
from decision_core.store import DecisionStore

SPEC = DomainSpec(
    name="chain",
    version="1",
    state=(Feature("x"), Feature("noise")),
    outcomes=(OutcomeFeature("x", tolerance=0.1),),
    actions=DiscreteActions(labels=("left", "right")),
    reward="logged",
    goals={"end": {"x": 4.0}, "middle": {"x": 2.0}},
)


def chain_steps(episodes: int, seed: int, p_right: float = 0.5, horizon: int = 8) -> pl.DataFrame:
    """Logged episodes of the chain 0..4 under a random policy (right w.p. ``p_right``), with propensities."""
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    for e in range(episodes):
        x = 0
        for t in range(horizon):
            a = int(rng.random() < p_right)
            nx = min(x + 1, 4) if a else max(x - 1, 0)
            done = nx == 4
            noise, next_noise = rng.normal(), rng.normal()
            rows.append(
                {
                    "episode_id": f"e{e:05d}",
                    "step": t,
                    "state": [float(x), noise],
                    "action": [float(a)],
                    "action_mask": None,
                    "propensity": p_right if a else 1 - p_right,
                    "reward": float(done),
                    "next_state": [float(nx), next_noise],
                    "terminated": done,
                    "truncated": (not done) and t == horizon - 1,
                    "timestamp": None,
                    "source_adapter": "test",
                    "adapter_version": "1",
                    "source_file": "chain.csv",
                    "source_row": len(rows),
                }
            )
            x = nx
            if done:
                break
    return pl.DataFrame(rows, schema=steps_schema(SPEC))


def write_store(path: Path, frame: pl.DataFrame) -> Path:
    with DecisionStore(path) as store, store.transaction() as con:
        con.register("staged", frame)
        store.insert_steps(SPEC, "staged", con)
        con.unregister("staged")
    return path


@pytest.fixture(scope="session")
def chain_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding 300 logged chain episodes (read-only use: copy it before writing)."""
    return write_store(tmp_path_factory.mktemp("store") / "store.duckdb", chain_steps(300, seed=0))


@pytest.fixture
def settings(tmp_path: Path, chain_store: Path, monkeypatch: pytest.MonkeyPatch) -> CoreSettings:
    """Embedded defaults under the test's folder: the chain store and a fresh sqlite MLflow store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # Tiny networks on a shared machine: one intra-op thread is far faster than several contending ones.
    monkeypatch.setenv("DECISION_CORE_THREADS", "1")
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory by accident
    return CoreSettings(home=tmp_path / "home", db=chain_store)


#: Small and fast: a few dozen updates of small networks, cheap OPE.
TINY = {
    "steps": 40,
    "log_every": 10,
    "checkpoint_every": 20,
    "fqe_steps": 200,
    "model_steps": 200,
    "ope_episodes": 150,
    "agent": {"batch_size": 32, "hidden_dims": [16, 16]},
}


@pytest.fixture
def tiny() -> dict:
    """Training config fields for a run of a few seconds."""
    return {**TINY, "agent": dict(TINY["agent"])}


@pytest.fixture
def make_store(tmp_path: Path):
    """Write a store of ``episodes`` chain episodes (0 gives a domain with no steps) and return its path."""

    def make(episodes: int, seed: int = 0, name: str = "store.duckdb") -> Path:
        return write_store(tmp_path / name, chain_steps(episodes, seed))

    return make


@pytest.fixture(scope="session")
def inventory_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of 40 simulated inventory episodes (behaviour policy): a domain with a simulator (read-only use)."""
    from adapters import get_adapter
    from adapters.ingest import ingest
    from decision_core.envs import get_simulator
    from decision_core.envs.simulate import simulate_logs

    root = tmp_path_factory.mktemp("inventory")
    files = simulate_logs(get_simulator("inventory"), 40, "behaviour", 0, root / "raw", progress=False)
    with DecisionStore(root / "store.duckdb") as store:
        ingest(get_adapter("inventory"), files, store)
    return root / "store.duckdb"


#: A few seconds of inventory training: tiny networks, 3 simulator episodes, brief OPE models.
INVENTORY_TINY = {
    "steps": 20,
    "log_every": 10,
    "eval_episodes": 3,
    "ope_episodes": 20,
    "fqe_steps": 20,
    "model_steps": 20,
    "agent": {"batch_size": 32, "hidden_dims": [16, 16]},
}
