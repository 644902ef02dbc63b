"""A tiny domain, a tiny model and an app around a temporary DuckDB store (nothing shared between tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient

from decision_core.algos import create_agent
from decision_core.data.dataset import FeatureStats
from decision_core.schema import DiscreteActions, DomainSpec, Feature, OutcomeFeature, steps_schema
from decision_core.store import DecisionStore
from serving.app import create_app
from serving.settings import ServingSettings

KEY = "test-key-1"


def walk_spec() -> DomainSpec:
    """A walk on a line: 'level' moves by the action (-1, 0, +1); goals name a level."""
    return DomainSpec(
        name="walk",
        version="1",
        state=(Feature("level"), Feature("noise"), Feature("time")),
        outcomes=(OutcomeFeature("level", tolerance=0.5),),
        actions=DiscreteActions(labels=("down", "stay", "up")),
        reward="next.level",
        goals={"high": {"level": 4.0}},
    )


def walk_episodes(
    spec: DomainSpec, n_episodes: int, length: int, rng: np.random.Generator, *, action: int | None = None
) -> pl.DataFrame:
    """Logged episodes of a uniformly random behaviour policy (propensity 1/3), or of one that always takes
    ``action`` (propensity 1), in the steps schema."""
    rows: dict[str, list] = {c: [] for c in steps_schema(spec)}
    prefix = "log" if action is None else f"always{action}"
    for e in range(n_episodes):
        level = float(rng.integers(-2, 3))
        for t in range(length):
            a = int(rng.integers(0, 3)) if action is None else action
            state = [level, float(rng.normal()), float(t)]
            level = float(np.clip(level + a - 1, -6, 6))
            nxt = [level, float(rng.normal()), float(t + 1)]
            for col, val in (
                ("episode_id", f"{prefix}-{e}"),
                ("step", t),
                ("state", state),
                ("action", [float(a)]),
                ("action_mask", None),
                ("propensity", 1 / 3 if action is None else 1.0),
                ("reward", None),
                ("next_state", nxt),
                ("terminated", False),
                ("truncated", t == length - 1),
                ("timestamp", None),
                ("source_adapter", "test"),
                ("adapter_version", "1"),
                ("source_file", "walk.csv"),
                ("source_row", e * length + t),
            ):
                rows[col].append(val)
    return pl.DataFrame(rows, schema=steps_schema(spec))


def fill_store(path: Path, spec: DomainSpec, frame: pl.DataFrame) -> None:
    with DecisionStore(path) as store, store.transaction() as con:
        con.register("logged", frame.to_arrow())
        store.insert_steps(spec, "logged", con)
        con.unregister("logged")


@pytest.fixture
def spec() -> DomainSpec:
    return walk_spec()


@pytest.fixture
def agent_dir(tmp_path: Path, spec: DomainSpec) -> Path:
    rng = np.random.default_rng(0)
    frame = walk_episodes(spec, 4, 5, rng)
    states = np.asarray(frame["state"].to_list(), np.float32)
    agent = create_agent("gcbc", spec, FeatureStats.compute(states, spec), {"hidden_dims": [16], "batch_size": 8})
    return agent.save(tmp_path / "agent")


@pytest.fixture
def settings(tmp_path: Path, agent_dir: Path, monkeypatch: pytest.MonkeyPatch) -> ServingSettings:
    for var in [v for v in os.environ if v.startswith("DECISION_CORE_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return ServingSettings(model=str(agent_dir), home=tmp_path / "home", api_keys=KEY, seed=0, epsilon=0.2)


@pytest.fixture
def client(settings: ServingSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def auth() -> dict[str, str]:
    return {"X-API-Key": KEY}


class ServerProcess:
    """``decision-core serve`` in a subprocess on a free port (a real uvicorn server)."""

    def __init__(self, model: Path, home: Path, *, env: dict[str, str] | None = None) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.model, self.home = model, home
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DECISION_CORE_")},
            "DECISION_CORE_HOME": str(home),
            "DECISION_CORE_SERVE_API_KEYS": KEY,
            "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
            "DECISION_CORE_THREADS": "1",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> ServerProcess:
        import httpx

        cmd = [
            sys.executable,
            "-m",
            "decision_core",
            "serve",
            "--model",
            str(self.model),
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]
        self.log = open(self.home / f"server-{self.port}.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {(self.home / f'server-{self.port}.log').read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError("server did not become healthy in time")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        if hasattr(self, "log"):
            self.log.close()


@pytest.fixture
def server_factory(tmp_path: Path, agent_dir: Path) -> Iterator[Callable[..., ServerProcess]]:
    servers: list[ServerProcess] = []

    def make(**env: str) -> ServerProcess:
        (tmp_path / "home").mkdir(exist_ok=True)
        server = ServerProcess(agent_dir, tmp_path / "home", env=env)
        servers.append(server)
        return server

    yield make
    for s in servers:
        s.stop()
