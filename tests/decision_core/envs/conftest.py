"""A tiny 'line walk' domain for testing the simulator infrastructure independently of the built-in domains.

A walker on a line at position ``pos`` (start 2..4) moves left/stay/right; a hidden gust sometimes pushes it one
extra step right. Falling off at ``pos >= 10`` terminates with a penalty. The reward task pays for being near 7.
The continuous variant (``continuous=True``) takes a velocity in [-1, 1]. ``partial=True`` gives dynamics that
can restart single worlds (per-world autoreset in the vectorised env).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from decision_core.envs import SIMULATORS, BatchDynamics, DomainSimulator, EpisodeBatch, Goal, SimPolicy
from decision_core.errors import RegistryError
from decision_core.schema import BoxActions, DiscreteActions, DomainSpec, Feature, OutcomeFeature

TARGET = 7.0


class LineDynamics(BatchDynamics):
    def __init__(self, continuous: bool = False) -> None:
        self.continuous = continuous
        self.pos = np.zeros(0, np.float32)
        self.gust = np.zeros(0, np.float32)

    def _obs(self) -> np.ndarray:
        return np.stack([self.pos, self.gust], axis=1).astype(np.float32)

    def reset(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        self.pos = rng.integers(2, 5, batch).astype(np.float32)
        self.gust = np.zeros(batch, np.float32)
        return self._obs()

    def step(self, actions: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.continuous:
            move = np.clip(np.asarray(actions, np.float32).reshape(-1), -1, 1)
        else:
            move = np.asarray(actions, np.int64).reshape(-1) - 1
        self.gust = (rng.random(len(self.pos)) < 0.1).astype(np.float32)
        self.pos = np.maximum(self.pos + move + self.gust, 0).astype(np.float32)
        fell = self.pos >= 10
        reward = np.where(fell, -5.0, -0.1 * np.abs(self.pos - TARGET)).astype(np.float32)
        return self._obs(), reward, fell

    def info(self) -> dict[str, np.ndarray]:
        return {"gust": self.gust.copy()}


class PartialLineDynamics(LineDynamics):
    def reset_worlds(self, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        self.pos = np.where(mask, rng.integers(2, 5, len(mask)), self.pos).astype(np.float32)
        self.gust = np.where(mask, 0.0, self.gust).astype(np.float32)
        return self._obs()


def _towards(pos: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.sign(target - pos).astype(np.int64) + 1


class OraclePolicy(SimPolicy):
    name = "oracle"

    def act(self, dynamics, observations, goals, goal_mask, rng):
        target = np.full(len(observations), TARGET, np.float32)
        if goals is not None and goal_mask is not None:
            target = np.where(goal_mask[:, 0], goals[:, 0], target)
        if dynamics.continuous:
            return np.clip(target - dynamics.pos, -1, 1)[:, None].astype(np.float32), np.ones(len(target), np.float32)
        return _towards(dynamics.pos, target), np.ones(len(target), np.float32)


class BehaviourPolicy(SimPolicy):
    """Mostly right, sometimes idle or left; stochastic with known probabilities."""

    name = "behaviour"
    probs = np.array([0.25, 0.35, 0.4])

    def act(self, dynamics, observations, goals, goal_mask, rng):
        a = rng.choice(3, size=len(observations), p=self.probs)
        if dynamics.continuous:
            return (a - 1.0)[:, None].astype(np.float32), self.probs[a].astype(np.float32)
        return a.astype(np.int64), self.probs[a].astype(np.float32)


class RandomPolicy(SimPolicy):
    name = "random"

    def act(self, dynamics, observations, goals, goal_mask, rng):
        b = len(observations)
        if dynamics.continuous:
            return rng.uniform(-1, 1, (b, 1)).astype(np.float32), np.full(b, 0.5, np.float32)
        return rng.integers(0, 3, b), np.full(b, 1 / 3, np.float32)


class LineSimulator(DomainSimulator):
    domain = "line"
    env_id = "decision_core/Line-v0"
    max_steps = 20

    def spec(self) -> DomainSpec:
        return DomainSpec(
            name="line",
            version="1",
            state=(Feature("pos"), Feature("gust", dtype="bool")),
            outcomes=(OutcomeFeature("pos", tolerance=0.5),),
            actions=DiscreteActions(labels=("left", "stay", "right")),
            reward="logged",
        )

    def variant_spec(self, continuous: bool = False, partial: bool = False) -> DomainSpec:
        spec = self.spec()
        if not continuous:
            return spec
        return DomainSpec(
            name=spec.name,
            version=spec.version,
            state=spec.state,
            outcomes=spec.outcomes,
            actions=BoxActions(names=("velocity",), low=(-1.0,), high=(1.0,)),
            reward=spec.reward,
        )

    def dynamics(self, continuous: bool = False, partial: bool = False) -> BatchDynamics:
        return PartialLineDynamics(continuous) if partial else LineDynamics(continuous)

    def policies(self) -> dict[str, SimPolicy]:
        return {"behaviour": BehaviourPolicy(), "oracle": OraclePolicy(), "random": RandomPolicy()}

    def goal_set(self) -> Sequence[Goal]:
        return [Goal("home", {"pos": 5.0}), Goal("edge", {"pos": 9.0}, hard=True)]

    def write_logs(self, episodes: EpisodeBatch, out_dir: Path, *, seed: int, start_episode: int = 0) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for b in range(len(episodes.lengths)):
            for t in range(int(episodes.lengths[b])):
                rows.append(
                    {
                        "episode": f"e{start_episode + b}",
                        "t": t,
                        "pos": float(episodes.observations[b, t, 0]),
                        "action": float(np.ravel(episodes.actions[b, t])[0]),
                        "propensity": float(episodes.propensities[b, t]),
                        "reward": float(episodes.rewards[b, t]),
                        "gust": float(episodes.extras["gust"][b, t + 1]),
                    }
                )
        path = out_dir / f"line_{start_episode:06d}.csv"
        pl.DataFrame(rows).write_csv(path)
        return [path]


@pytest.fixture
def line_sim() -> LineSimulator:
    return LineSimulator()


@pytest.fixture
def line_registered():
    """Register the line domain in SIMULATORS for the test (names resolve through the registry)."""
    SIMULATORS.register("line", LineSimulator, origin="tests")
    try:
        yield LineSimulator()
    finally:
        SIMULATORS.unregister("line")


@pytest.fixture(params=SIMULATORS.names())
def builtin_sim(request: pytest.FixtureRequest) -> DomainSimulator:
    """Each registered simulator in turn; skipped only while its module is not in the checkout yet."""
    name = request.param
    try:
        cls = SIMULATORS.get(name)
    except RegistryError as exc:
        missing = exc.__cause__
        if isinstance(missing, ModuleNotFoundError) and (missing.name or "").startswith("decision_core.envs."):
            pytest.skip(f"simulator '{name}': module {missing.name} is not present yet")
        raise
    return cls()
