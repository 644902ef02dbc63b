"""Record any gymnasium env's episodes into the common schema, so any env can feed the core.

:func:`spec_from_spaces` derives a :class:`~decision_core.schema.DomainSpec` from the env's spaces: observation
features ``obs_0, obs_1, ...`` (a ``Discrete`` observation is one integer feature; ``Dict``/``Tuple``/
``MultiDiscrete``/``MultiBinary`` ones are flattened the way ``gymnasium.spaces.flatten`` does), outcome features
all of them by default or a given subset with tolerances, and ``Discrete`` or ``Box`` actions.

:class:`DecisionRecorder` wraps the env and writes each finished episode's steps into a
:class:`~decision_core.store.DecisionStore`, validated by the same row rules as any adapter's output, one
transaction per flush. A propensity (probability of the action under the acting policy) is taken from the
``propensity=`` argument of :meth:`DecisionRecorder.step` or, failing that, from ``info["propensity"]``.

The N+1 observations of an N-step episode become N rows, each with ``state`` and ``next_state``.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, SupportsFloat

import gymnasium
import numpy as np
import polars as pl
from gymnasium import spaces

from decision_core.errors import SpecError
from decision_core.schema import BoxActions, DiscreteActions, DomainSpec, Feature, OutcomeFeature, steps_schema
from decision_core.store import DecisionStore

__all__ = [
    "DecisionRecorder",
    "EpisodeWriter",
    "action_vector",
    "observation_vector",
    "spec_from_spaces",
]

RECORDER_VERSION = "1"

Outcomes = Sequence[str] | Mapping[str, float] | None


def _observation_dim(space: spaces.Space) -> tuple[int, str]:
    if isinstance(space, spaces.Discrete):
        return 1, "int"
    if isinstance(space, spaces.Box):
        return int(np.prod(space.shape)), "int" if np.issubdtype(space.dtype, np.integer) else "float"
    try:
        flat = spaces.flatten_space(space)
    except NotImplementedError as exc:
        raise SpecError(f"cannot record observations of space {space}: it has no flat vector form") from exc
    assert flat.shape is not None  # a flattened space is a Box
    if isinstance(space, spaces.MultiBinary):
        return int(np.prod(flat.shape)), "bool"
    return int(np.prod(flat.shape)), "float"


def observation_vector(space: spaces.Space, obs: Any) -> np.ndarray:
    """The float32 state vector of one observation of ``space``."""
    if isinstance(space, spaces.Discrete):
        return np.array([obs], np.float32)
    if isinstance(space, spaces.Box):
        return np.asarray(obs, np.float32).reshape(-1)
    return np.asarray(spaces.flatten(space, obs), np.float32).reshape(-1)


def action_vector(space: spaces.Space, action: Any) -> np.ndarray:
    """The float32 action vector stored for one action: the index for ``Discrete``, the values for ``Box``."""
    if isinstance(space, spaces.Discrete):
        return np.array([int(action) - int(space.start)], np.float32)
    return np.asarray(action, np.float32).reshape(-1)


def spec_from_spaces(
    name: str,
    observation_space: spaces.Space,
    action_space: spaces.Space,
    *,
    outcomes: Outcomes = None,
    tolerance: float = 0.05,
    version: str = "1",
    description: str = "",
) -> DomainSpec:
    """A domain spec for an env with these spaces (see the module docstring for the naming)."""
    dim, dtype = _observation_dim(observation_space)
    state = tuple(Feature(f"obs_{i}", dtype=dtype) for i in range(dim))  # type: ignore[arg-type]
    names = [f.name for f in state]
    if outcomes is None:
        chosen = dict.fromkeys(names, tolerance)
    elif isinstance(outcomes, Mapping):
        chosen = {k: float(v) for k, v in outcomes.items()}
    else:
        chosen = dict.fromkeys(outcomes, tolerance)
    unknown = [k for k in chosen if k not in names]
    if unknown:
        raise SpecError(f"outcome features {unknown} are not observation features of '{name}' (obs_0 .. obs_{dim - 1})")
    if isinstance(action_space, spaces.Discrete):
        if action_space.n < 2:
            raise SpecError(f"'{name}': a Discrete action space needs at least 2 actions, got {action_space.n}")
        labels = tuple(f"a_{int(action_space.start) + i}" for i in range(int(action_space.n)))
        actions: DiscreteActions | BoxActions = DiscreteActions(labels=labels)
    elif isinstance(action_space, spaces.Box):
        low = np.asarray(action_space.low, np.float64).reshape(-1)
        high = np.asarray(action_space.high, np.float64).reshape(-1)
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise SpecError(
                f"'{name}': the Box action space has infinite bounds; the schema needs finite bounds, "
                f"so clip the actions (e.g. gymnasium.wrappers.ClipAction over a bounded space) before recording"
            )
        actions = BoxActions(
            names=tuple(f"act_{i}" for i in range(len(low))),
            low=tuple(float(x) for x in low),
            high=tuple(float(x) for x in high),
        )
    else:
        raise SpecError(f"'{name}': cannot record actions of space {action_space}; use Discrete or Box actions")
    return DomainSpec(
        name=name,
        version=version,
        state=state,
        outcomes=tuple(OutcomeFeature(k, tolerance=v) for k, v in chosen.items()),
        actions=actions,
        reward="logged",
        description=description,
    )


@dataclass
class _Episode:
    episode_id: str
    states: list[np.ndarray] = field(default_factory=list)  # N+1 observations
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    propensities: list[float | None] = field(default_factory=list)
    times: list[datetime] = field(default_factory=list)
    terminated: bool = False


class EpisodeWriter:
    """Collects whole episodes as arrays and writes them into a store in one transaction per :meth:`flush`."""

    def __init__(self, spec: DomainSpec, *, adapter: str, source: str) -> None:
        self.spec = spec
        self.adapter = adapter
        self.source = source
        self._frames: list[pl.DataFrame] = []
        self._rows = 0
        self._next_row = 0

    @property
    def pending_steps(self) -> int:
        return self._rows

    def add(
        self,
        episode_id: str,
        observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray | None,
        *,
        terminated: bool,
        propensities: np.ndarray | None = None,
        timestamps: Sequence[datetime] | None = None,
    ) -> None:
        """Queue one episode: (N+1, S) observations, (N, A) actions, (N,) rewards; the last step ends it
        (terminated, else truncated)."""
        obs = np.asarray(observations, np.float32)
        n = len(obs) - 1
        if n < 1:
            return  # an episode without an action has no step to store
        s, a = self.spec.state_dim, self.spec.action_dim
        acts = np.asarray(actions, np.float32).reshape(n, a)
        end = np.zeros(n, np.bool_)
        end[-1] = True
        null = pl.Series([None] * n, dtype=pl.Float64)
        frame = pl.DataFrame(
            {
                "episode_id": pl.Series([episode_id] * n, dtype=pl.String),
                "step": pl.Series(np.arange(n, dtype=np.int32)),
                "state": pl.Series(obs[:-1].reshape(n, s), dtype=pl.Array(pl.Float32, s)),
                "action": pl.Series(acts, dtype=pl.Array(pl.Float32, a)),
                "propensity": null if propensities is None else pl.Series(np.asarray(propensities, np.float64)),
                "reward": null if rewards is None else pl.Series(np.asarray(rewards, np.float64)),
                "next_state": pl.Series(obs[1:].reshape(n, s), dtype=pl.Array(pl.Float32, s)),
                "terminated": pl.Series(end & terminated),
                "truncated": pl.Series(end & (not terminated)),
                "timestamp": pl.Series(list(timestamps), dtype=pl.Datetime("us"))
                if timestamps is not None
                else pl.Series([None] * n, dtype=pl.Datetime("us")),
                "source_adapter": pl.Series([self.adapter] * n, dtype=pl.String),
                "adapter_version": pl.Series([RECORDER_VERSION] * n, dtype=pl.String),
                "source_file": pl.Series([self.source] * n, dtype=pl.String),
                "source_row": pl.Series(np.arange(self._next_row, self._next_row + n, dtype=np.int64)),
            }
        )
        self._next_row += n
        self._frames.append(frame)
        self._rows += n

    def flush(self, store: DecisionStore) -> int:
        """Validate and write every queued episode in one transaction; returns the steps inserted."""
        from adapters.ingest import conform, validate_rows

        if not self._frames:
            return 0
        steps = conform(pl.concat(self._frames), self.spec, self.source)
        validate_rows(steps, self.spec, self.source)
        assert steps.schema == steps_schema(self.spec)
        digest = hashlib.blake2b(
            "\n".join(steps["episode_id"].unique(maintain_order=True).to_list()).encode(), digest_size=16
        ).hexdigest()
        with store.transaction() as con:
            con.register("recorded_steps", steps)
            try:
                inserted = store.insert_steps(self.spec, "recorded_steps", con)
            finally:
                con.unregister("recorded_steps")
            con.execute(
                "INSERT INTO ingests (domain, adapter, adapter_version, source, fingerprint, rows, steps) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [self.spec.name, self.adapter, RECORDER_VERSION, self.source, digest, steps.height, steps.height],
            )
        self._frames.clear()
        self._rows = 0
        return inserted


class DecisionRecorder(gymnasium.Wrapper):
    """Records the wrapped env's episodes into ``store`` under domain ``domain``.

    Finished episodes are written once ``flush_every`` steps are waiting, and on :meth:`flush` / :meth:`close`;
    an episode cut short by ``reset()`` or ``close()`` is stored as truncated. Episode ids are
    ``<episode_prefix><n>``; the default prefix is unique per recorder, so recorders never collide in a store.
    """

    def __init__(
        self,
        env: gymnasium.Env,
        store: DecisionStore,
        domain: str,
        *,
        outcomes: Outcomes = None,
        tolerance: float = 0.05,
        flush_every: int = 10_000,
        propensity_key: str = "propensity",
        episode_prefix: str | None = None,
    ) -> None:
        super().__init__(env)
        if flush_every < 1:
            raise SpecError(f"flush_every must be >= 1, got {flush_every}")
        env_id = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
        self._domain_spec = spec_from_spaces(
            domain,
            env.observation_space,
            env.action_space,
            outcomes=outcomes,
            tolerance=tolerance,
            description=f"recorded from gymnasium env {env_id}",
        )
        self.store = store
        self.flush_every = flush_every
        self.propensity_key = propensity_key
        self.episode_prefix = episode_prefix if episode_prefix is not None else f"{domain}-{uuid.uuid4().hex[:12]}-"
        self.writer = EpisodeWriter(self._domain_spec, adapter="gym-recorder", source=f"gym:{env_id}")
        self.episodes_recorded = 0
        self._episode: _Episode | None = None
        self._count = 0

    @property
    def domain_spec(self) -> DomainSpec:
        return self._domain_spec

    def _finish(self, *, terminated: bool) -> None:
        ep = self._episode
        self._episode = None
        if ep is None or not ep.actions:
            return
        props = ep.propensities
        known = all(p is not None for p in props)
        self.writer.add(
            ep.episode_id,
            np.stack(ep.states),
            np.stack(ep.actions),
            np.asarray(ep.rewards, np.float64),
            terminated=terminated,
            propensities=np.asarray(props, np.float64) if known else None,
            timestamps=ep.times,
        )
        self.episodes_recorded += 1
        if self.writer.pending_steps >= self.flush_every:
            self.flush()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        self._finish(terminated=False)
        obs, info = self.env.reset(seed=seed, options=options)
        self._episode = _Episode(f"{self.episode_prefix}{self._count:08d}")
        self._count += 1
        self._episode.states.append(observation_vector(self.observation_space, obs))
        return obs, info

    def step(self, action: Any, propensity: float | None = None) -> tuple[Any, SupportsFloat, bool, bool, dict]:
        if self._episode is None:
            raise gymnasium.error.ResetNeeded("call reset() before step() on a recording env")
        obs, reward, terminated, truncated, info = self.env.step(action)
        ep = self._episode
        p = propensity if propensity is not None else info.get(self.propensity_key)
        ep.actions.append(action_vector(self.action_space, action))
        ep.rewards.append(float(reward))
        ep.propensities.append(None if p is None else float(p))
        ep.times.append(datetime.now(UTC).replace(tzinfo=None))
        ep.states.append(observation_vector(self.observation_space, obs))
        if terminated or truncated:
            self._finish(terminated=bool(terminated))
        return obs, reward, terminated, truncated, info

    def flush(self) -> int:
        """Write every finished episode now (one transaction); returns the steps inserted."""
        return self.writer.flush(self.store)

    def close(self) -> None:
        self._finish(terminated=False)
        self.flush()
        super().close()
