"""Gymnasium environments over any domain simulator: one world (:class:`SimulatorEnv`) or ``n``
(:class:`SimulatorVectorEnv`), both running the simulator's :class:`~decision_core.envs.base.BatchDynamics`.

Observations are the domain spec's state vector (float32, one entry per state feature). Actions are
``Discrete(n)`` for discrete specs and ``Box(low, high)`` for continuous ones. The reward is the domain's reward
task; with ``task="goal"`` it is 1 on the step a goal is reached (and the episode terminates there), else 0.
A goal is passed at reset, ``env.reset(options={"goal": "<goal name>" | {feature: target}})``; without one the
goal task draws one of the domain's goals. ``info`` always carries ``goal``, ``goal_mask`` and ``is_success``.

Every registered simulator gets a gymnasium id, ``decision_core/<Domain>-v0``, registered from dotted-path
strings so that importing this module imports no domain. ``gymnasium.make_vec(id, num_envs=n,
vectorization_mode="vector_entry_point")`` returns the vectorised env.

Per-world autoreset of the vectorised env needs the dynamics to restart some worlds while the others go on: a
dynamics that defines ``reset_worlds(mask, rng) -> (B, S) observations`` (see :class:`PartialReset`) gets
gymnasium's next-step autoreset; one that does not is run with autoreset disabled, where every world restarts
together on ``reset()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol, runtime_checkable

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from decision_core.envs.base import BatchDynamics, DomainSimulator, Goal, goal_reached
from decision_core.errors import SpecError
from decision_core.schema import BoxActions, DomainSpec

__all__ = [
    "PartialReset",
    "SimulatorEnv",
    "SimulatorVectorEnv",
    "action_space_of",
    "gym_id",
    "observation_space_of",
    "register_envs",
    "resolve_goal",
    "spec_for",
]

Task = Literal["reward", "goal"]

#: Continuous variants registered beside the default ids: (domain, id suffix, dynamics options).
VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (("inventory", "Continuous", {"continuous": True}),)


@runtime_checkable
class PartialReset(Protocol):
    """Dynamics that can restart a subset of their worlds (enables per-world autoreset)."""

    def reset_worlds(self, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Restart the worlds where ``mask`` is True; returns the (B, S) observations of all worlds."""
        ...


def gym_id(domain: str, variant: str = "") -> str:
    """The gymnasium id of a domain's env, e.g. ``decision_core/Inventory-v0``."""
    camel = "".join(part.capitalize() for part in domain.replace("-", "_").split("_"))
    return f"decision_core/{camel}{variant}-v0"


def observation_space_of(spec: DomainSpec) -> spaces.Box:
    """Box over the spec's state features; the spec states no bounds, so they are unbounded."""
    return spaces.Box(-np.inf, np.inf, shape=(spec.state_dim,), dtype=np.float32)


def action_space_of(spec: DomainSpec) -> spaces.Discrete | spaces.Box:
    """``Discrete(n)`` for discrete actions, ``Box(low, high)`` for continuous ones."""
    acts = spec.actions
    if isinstance(acts, BoxActions):
        return spaces.Box(np.asarray(acts.low, np.float32), np.asarray(acts.high, np.float32), dtype=np.float32)
    return spaces.Discrete(acts.n)


def resolve_goal(
    spec: DomainSpec, goals: list[Goal], goal: str | Mapping[str, float] | Goal
) -> tuple[np.ndarray, np.ndarray]:
    """(values, mask) over the outcome features for a goal given by name, as a mapping, or as a Goal."""
    if isinstance(goal, str):
        by_name = {g.name: g for g in goals}
        if goal not in by_name:
            raise SpecError(f"domain '{spec.name}' has no goal '{goal}'; its goals are {', '.join(by_name) or 'none'}")
        return by_name[goal].vector(spec)
    if isinstance(goal, Goal):
        return goal.vector(spec)
    unknown = sorted(set(goal) - set(spec.outcome_names))
    if unknown:
        raise SpecError(
            f"goal names {unknown}, which are not outcome features of domain '{spec.name}' "
            f"({', '.join(spec.outcome_names)})"
        )
    return Goal("custom", {k: float(v) for k, v in goal.items()}).vector(spec)


def _simulator(domain: str | DomainSimulator) -> DomainSimulator:
    if isinstance(domain, DomainSimulator):
        return domain
    from decision_core.envs import get_simulator

    return get_simulator(domain)


def spec_for(sim: DomainSimulator, options: Mapping[str, Any] | None = None) -> DomainSpec:
    """The spec of the dynamics variant ``options`` select: ``sim.variant_spec(**options)`` when the simulator
    has it, else ``sim.spec(**options)`` (a simulator whose ``spec`` takes the variant options)."""
    if not options:
        return sim.spec()
    variant_spec = getattr(sim, "variant_spec", None)
    if callable(variant_spec):
        return variant_spec(**options)
    try:
        return sim.spec(**options)  # type: ignore[call-arg]
    except TypeError as exc:
        raise SpecError(
            f"simulator '{sim.domain}' has no variants (its spec() takes no options {sorted(options)}): {exc}"
        ) from exc


class _Worlds:
    """What the single and vectorised envs share: the dynamics of ``B`` worlds, goals, step counters."""

    def __init__(
        self, sim: DomainSimulator, batch: int, task: Task, max_steps: int | None, options: dict[str, Any]
    ) -> None:
        if task not in ("reward", "goal"):
            raise SpecError(f"task must be 'reward' or 'goal', got '{task}'")
        self.sim = sim
        self.spec = spec_for(sim, options)
        self.dynamics: BatchDynamics = sim.dynamics(**options)
        self.goals = list(sim.goal_set())
        self.batch = batch
        self.task = task
        self.max_steps = int(max_steps if max_steps is not None else sim.max_steps)
        if self.max_steps < 1:
            raise SpecError(f"max_episode_steps must be >= 1, got {self.max_steps}")
        g = len(self.spec.outcomes)
        self.goal = np.zeros((batch, g), np.float32)
        self.goal_mask = np.zeros((batch, g), np.bool_)
        self.t = np.zeros(batch, np.int64)
        self.outcome_index = self.spec.outcome_index
        self.tolerances = self.spec.tolerances

    def set_goals(self, rows: np.ndarray, goal: object, rng: np.random.Generator) -> None:
        """Set the goal of worlds ``rows``: the one given, else (goal task) one drawn from the goal set."""
        if goal is None and self.task == "goal":
            if not self.goals:
                raise SpecError(f"domain '{self.spec.name}' has no goal set to draw goals from")
            for r in np.flatnonzero(rows):
                self.goal[r], self.goal_mask[r] = self.goals[int(rng.integers(len(self.goals)))].vector(self.spec)
        elif goal is None:
            self.goal[rows], self.goal_mask[rows] = 0.0, False
        else:
            self.goal[rows], self.goal_mask[rows] = resolve_goal(self.spec, self.goals, goal)  # type: ignore[arg-type]

    def success(self, obs: np.ndarray) -> np.ndarray:
        reached = goal_reached(obs[:, self.outcome_index], self.goal, self.goal_mask, self.tolerances)
        return reached & self.goal_mask.any(axis=1)

    def step(self, actions: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        obs, reward, term = self.dynamics.step(actions, rng)
        obs = np.asarray(obs, np.float32)
        self.t += 1
        success = self.success(obs)
        terminated = np.asarray(term, np.bool_).copy()
        reward = np.asarray(reward, np.float64)
        if self.task == "goal":
            reward = success.astype(np.float64)
            terminated |= success
        truncated = (self.t >= self.max_steps) & ~terminated
        return obs, reward, terminated, truncated, success

    def actions(self, action: Any) -> np.ndarray:
        if self.spec.discrete:
            return np.asarray(action, np.int64).reshape(self.batch)
        return np.asarray(action, np.float32).reshape(self.batch, self.spec.action_dim)


class SimulatorEnv(gymnasium.Env[np.ndarray, Any]):
    """One world of a domain simulator as a gymnasium env (the batch of one of its dynamics).

    ``domain`` is a registered simulator name or an instance; ``options`` select a dynamics variant (e.g.
    ``continuous=True``); ``max_episode_steps`` defaults to the simulator's ``max_steps``.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        domain: str | DomainSimulator,
        *,
        task: Task = "reward",
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
        **options: Any,
    ) -> None:
        if render_mode is not None:
            raise SpecError(f"SimulatorEnv renders nothing; render_mode must be None, got '{render_mode}'")
        self._worlds = _Worlds(_simulator(domain), 1, task, max_episode_steps, options)
        self.domain_spec = self._worlds.spec
        self.observation_space = observation_space_of(self.domain_spec)
        self.action_space = action_space_of(self.domain_spec)
        self._obs: np.ndarray | None = None

    @property
    def simulator(self) -> DomainSimulator:
        return self._worlds.sim

    @property
    def dynamics(self) -> BatchDynamics:
        return self._worlds.dynamics

    def _info(self, success: bool) -> dict[str, Any]:
        w = self._worlds
        info: dict[str, Any] = {k: np.asarray(v)[0] for k, v in w.dynamics.info().items()}
        info.update(goal=w.goal[0].copy(), goal_mask=w.goal_mask[0].copy(), is_success=bool(success))
        return info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        w = self._worlds
        obs = np.asarray(w.dynamics.reset(self.np_random, 1), np.float32)
        w.t[:] = 0
        w.set_goals(np.ones(1, np.bool_), (options or {}).get("goal"), self.np_random)
        self._obs = obs
        return obs[0].copy(), self._info(bool(w.success(obs)[0]))

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._obs is None:
            raise gymnasium.error.ResetNeeded("call reset() before step()")
        w = self._worlds
        obs, reward, term, trunc, success = w.step(w.actions(action), self.np_random)
        self._obs = obs
        return obs[0].copy(), float(reward[0]), bool(term[0]), bool(trunc[0]), self._info(bool(success[0]))


class SimulatorVectorEnv(VectorEnv):
    """``num_envs`` worlds of a domain simulator stepped by one call of its batched dynamics.

    Autoreset is next-step (gymnasium's default) when the dynamics implements :class:`PartialReset`, and
    disabled otherwise; ``metadata["autoreset_mode"]`` says which. With autoreset disabled, ``reset()`` restarts
    every world; ``reset(options={"reset_mask": mask})`` with a partial mask needs :class:`PartialReset`.
    """

    def __init__(
        self,
        domain: str | DomainSimulator,
        num_envs: int,
        *,
        task: Task = "reward",
        max_episode_steps: int | None = None,
        **options: Any,
    ) -> None:
        if num_envs < 1:
            raise SpecError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs = num_envs
        self._worlds = _Worlds(_simulator(domain), num_envs, task, max_episode_steps, options)
        self.domain_spec = self._worlds.spec
        self.single_observation_space = observation_space_of(self.domain_spec)
        self.single_action_space = action_space_of(self.domain_spec)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        partial = isinstance(self._worlds.dynamics, PartialReset)
        mode = AutoresetMode.NEXT_STEP if partial else AutoresetMode.DISABLED
        self.metadata = {"autoreset_mode": mode}
        self._autoreset = np.zeros(num_envs, np.bool_)
        self._obs: np.ndarray | None = None

    @property
    def dynamics(self) -> BatchDynamics:
        return self._worlds.dynamics

    def _info(self, success: np.ndarray) -> dict[str, Any]:
        w = self._worlds
        info: dict[str, Any] = {k: np.asarray(v).copy() for k, v in w.dynamics.info().items()}
        info.update(goal=w.goal.copy(), goal_mask=w.goal_mask.copy(), is_success=success.copy())
        return info

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None:
            self._np_random, self._np_random_seed = gymnasium.utils.seeding.np_random(seed)
        rng = self.np_random
        w = self._worlds
        options = options or {}
        mask = np.asarray(options.get("reset_mask", np.ones(self.num_envs, np.bool_)), np.bool_)
        if mask.shape != (self.num_envs,):
            raise SpecError(f"reset_mask must have shape ({self.num_envs},), got {mask.shape}")
        if mask.all() or self._obs is None:
            obs = np.asarray(w.dynamics.reset(rng, self.num_envs), np.float32)
            mask = np.ones(self.num_envs, np.bool_)
        elif isinstance(w.dynamics, PartialReset):
            obs = np.asarray(w.dynamics.reset_worlds(mask, rng), np.float32)
        else:
            raise SpecError(
                f"the '{self.domain_spec.name}' dynamics cannot restart some worlds alone (no reset_worlds); "
                f"reset all worlds with reset() instead of a partial reset_mask"
            )
        w.t[mask] = 0
        w.set_goals(mask, options.get("goal"), rng)
        self._autoreset[:] = False
        self._obs = obs
        return obs.copy(), self._info(w.success(obs))

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._obs is None:
            raise gymnasium.error.ResetNeeded("call reset() before step()")
        w = self._worlds
        rng = self.np_random
        restart = self._autoreset
        obs, reward, term, trunc, success = w.step(w.actions(actions), rng)
        if restart.any():
            # Next-step autoreset: worlds that ended last step start a new episode now and ignore the action.
            assert isinstance(w.dynamics, PartialReset)
            fresh = np.asarray(w.dynamics.reset_worlds(restart, rng), np.float32)
            obs = np.where(restart[:, None], fresh, obs)
            w.t[restart] = 0
            w.set_goals(restart, None, rng)
            success = np.where(restart, w.success(obs), success)
            reward = np.where(restart, 0.0, reward)
            term = term & ~restart
            trunc = trunc & ~restart
        if self.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP:
            self._autoreset = term | trunc
        self._obs = obs
        return obs.copy(), reward, term, trunc, self._info(success)


def register_envs() -> list[str]:
    """Register a gymnasium id for every registered simulator (and known variants); returns the ids.

    Entry points are dotted-path strings, so no domain module is imported until an env is made.
    """
    from decision_core.envs import SIMULATORS

    ids = []
    wanted: list[tuple[str, str, dict[str, Any]]] = [(name, "", {}) for name in SIMULATORS.names()]
    wanted += [v for v in VARIANTS if v[0] in SIMULATORS.names()]
    for domain, suffix, options in wanted:
        env_id = gym_id(domain, suffix)
        ids.append(env_id)
        if env_id in gymnasium.registry:
            continue
        gymnasium.register(
            id=env_id,
            entry_point="decision_core.envs.gym:SimulatorEnv",
            vector_entry_point="decision_core.envs.gym:SimulatorVectorEnv",
            kwargs={"domain": domain, **options},
            disable_env_checker=False,
        )
    return ids


GYM_IDS: list[str] = register_envs()
