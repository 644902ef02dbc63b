"""Run a policy in batched dynamics and record what happened (the source of every simulated log)."""

from __future__ import annotations

import numpy as np

from decision_core.envs.base import BatchDynamics, EpisodeBatch, SimPolicy, goal_reached
from decision_core.schema import DomainSpec


def rollout(
    dynamics: BatchDynamics,
    policy: SimPolicy,
    *,
    batch: int,
    max_steps: int,
    rng: np.random.Generator,
    goals: np.ndarray | None = None,
    goal_mask: np.ndarray | None = None,
    spec: DomainSpec | None = None,
    stop_on_goal: bool = False,
) -> EpisodeBatch:
    """Run ``batch`` worlds for at most ``max_steps`` steps each.

    A world stops at termination, or (with ``stop_on_goal`` and a ``spec``) once its goal is reached, which then
    counts as terminated. Worlds that stopped keep being stepped with the others (one vectorised call per
    step) but nothing after their end is recorded.
    """
    obs = dynamics.reset(rng, batch)
    s = obs.shape[1]
    observations = np.zeros((batch, max_steps + 1, s), np.float32)
    observations[:, 0] = obs
    actions: np.ndarray | None = None
    propensities = np.zeros((batch, max_steps), np.float32)
    rewards = np.zeros((batch, max_steps), np.float32)
    terminated = np.zeros(batch, np.bool_)
    lengths = np.full(batch, max_steps, np.int64)
    alive = np.ones(batch, np.bool_)
    extras: dict[str, np.ndarray] = {}

    def record_extras(t: int) -> None:
        for key, value in dynamics.info().items():
            if key not in extras:
                extras[key] = np.zeros((batch, max_steps + 1, *value.shape[1:]), value.dtype)
            extras[key][:, t] = value

    record_extras(0)
    if stop_on_goal and (spec is None or goals is None or goal_mask is None):
        raise ValueError("stop_on_goal needs spec, goals and goal_mask")
    outcome_index = spec.outcome_index if spec is not None else None
    for t in range(max_steps):
        act, prob = policy.act(dynamics, obs, goals, goal_mask, rng)
        if actions is None:
            shape = (batch, max_steps, *np.shape(act)[1:])
            actions = np.zeros(shape, np.int64 if np.issubdtype(np.asarray(act).dtype, np.integer) else np.float32)
        actions[:, t] = act
        propensities[:, t] = prob
        obs, reward, term = dynamics.step(act, rng)
        observations[:, t + 1] = obs
        rewards[:, t] = np.where(alive, reward, 0.0)
        record_extras(t + 1)
        ended = term.astype(np.bool_)
        if stop_on_goal:
            assert spec is not None and goals is not None and goal_mask is not None and outcome_index is not None
            ended = ended | goal_reached(obs[:, outcome_index], goals, goal_mask, spec.tolerances)
        just_ended = alive & ended
        lengths[just_ended] = t + 1
        terminated |= just_ended
        alive &= ~ended
        if not alive.any():
            break
    assert actions is not None
    used = int(lengths.max())
    return EpisodeBatch(
        observations=observations[:, : used + 1],
        actions=actions[:, :used],
        propensities=propensities[:, :used],
        rewards=rewards[:, :used],
        terminated=terminated,
        lengths=lengths,
        extras={k: v[:, : used + 1] for k, v in extras.items()},
    )
