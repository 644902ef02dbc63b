"""A tiny synthetic goal-reaching domain (a grid the action moves on) for tests, examples and sanity checks.

State: ``x``, ``y`` (the position, the outcome features, tolerance 0.5) and ``noise`` (an irrelevant feature).
Discrete actions: stay, +x, -x, +y, -y (optionally masked at the walls); continuous: a (dx, dy) move in
[-1, 1]^2. The logs come from a uniformly random behaviour policy, so reaching a chosen cell must be learned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from decision_core.schema import BoxActions, DiscreteActions, DomainSpec, Feature, OutcomeFeature
from decision_core.store import DomainArrays

_MOVES = np.array([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]], np.float32)


def grid_spec(size: int = 5, *, discrete: bool = True, masked: bool = False) -> DomainSpec:
    """The spec of a ``size`` x ``size`` grid domain."""
    actions: DiscreteActions | BoxActions
    if discrete:
        actions = DiscreteActions(labels=("stay", "right", "left", "up", "down"), masked=masked)
    else:
        actions = BoxActions(names=("dx", "dy"), low=(-1.0, -1.0), high=(1.0, 1.0))
    far = float(size - 1)
    return DomainSpec(
        name="grid_discrete" if discrete else "grid_continuous",
        version="1",
        state=(Feature("x"), Feature("y"), Feature("noise")),
        outcomes=(OutcomeFeature("x", 0.5), OutcomeFeature("y", 0.5)),
        actions=actions,
        reward="logged",
        goals={"far_corner": {"x": far, "y": far}, "far_x": {"x": far}},
    )


def grid_available(pos: np.ndarray, size: int) -> np.ndarray:
    """(B, 5) bool: the discrete moves that stay on the grid (stay is always available)."""
    nxt = pos[:, None, :] + _MOVES[None]
    return np.all((nxt >= 0) & (nxt <= size - 1), axis=-1)


def grid_step(pos: np.ndarray, actions: np.ndarray, size: int, *, discrete: bool) -> np.ndarray:
    """Next positions after ``actions`` ((B,) indices or (B, 2) moves), clipped to the grid."""
    move = _MOVES[np.asarray(actions, np.int64)] if discrete else np.clip(actions, -1.0, 1.0)
    return np.clip(pos + move, 0.0, size - 1.0).astype(np.float32)


def grid_reward(pos: np.ndarray, size: int) -> np.ndarray:
    """The reward task: get close to the far corner (0 there, -1 at the origin)."""
    return (-np.abs(pos - (size - 1)).sum(-1) / (2.0 * (size - 1))).astype(np.float32)


def grid_arrays(
    n_episodes: int = 64,
    episode_len: int = 16,
    *,
    size: int = 5,
    discrete: bool = True,
    masked: bool = False,
    seed: int = 0,
) -> DomainArrays:
    """Random-walk logs of the grid domain as :class:`DomainArrays` (as ``DecisionStore.load_arrays`` gives)."""
    rng = np.random.default_rng(seed)
    spec = grid_spec(size, discrete=discrete, masked=masked)
    e, t = n_episodes, episode_len
    pos = rng.integers(0, size, (e, 2)).astype(np.float32)
    if not discrete:
        pos += rng.uniform(-0.3, 0.3, pos.shape).astype(np.float32)
        pos = np.clip(pos, 0, size - 1)
    obs = np.zeros((e, t + 1, 3), np.float32)
    obs[:, 0, :2] = pos
    obs[:, :, 2] = rng.normal(size=(e, t + 1))
    actions = np.zeros((e, t, 1 if discrete else 2), np.float32)
    props = np.zeros((e, t), np.float32)
    masks = np.ones((e, t, 5), np.bool_) if masked else None
    for i in range(t):
        if discrete:
            avail = grid_available(pos, size) if masked else np.ones((e, 5), np.bool_)
            if masks is not None:
                masks[:, i] = avail
            # Uniform over the available moves, vectorised over episodes.
            scores = np.where(avail, rng.random((e, 5)), -1.0)
            a = scores.argmax(1)
            actions[:, i, 0] = a
            props[:, i] = 1.0 / avail.sum(1)
        else:
            a = rng.uniform(-1.0, 1.0, (e, 2)).astype(np.float32)
            actions[:, i] = a
            props[:, i] = 0.25
        pos = grid_step(pos, a, size, discrete=discrete)
        obs[:, i + 1, :2] = pos
    n = e * t
    starts = np.arange(0, n, t, dtype=np.int64)
    truncated = np.zeros((e, t), np.bool_)
    truncated[:, -1] = True
    return DomainArrays(
        spec=spec,
        states=obs[:, :-1].reshape(n, 3).copy(),
        actions=actions.reshape(n, -1),
        next_states=obs[:, 1:].reshape(n, 3).copy(),
        rewards=grid_reward(obs[:, 1:, :2], size).reshape(n),
        propensities=props.reshape(n),
        terminated=np.zeros(n, np.bool_),
        truncated=truncated.reshape(n),
        action_masks=None if masks is None else masks.reshape(n, 5),
        episode_starts=starts,
        episode_ends=starts + t,
    )


def grid_goal_success(
    act,
    *,
    size: int = 5,
    discrete: bool = True,
    masked: bool = False,
    n: int = 200,
    max_steps: int = 12,
    partial: bool = False,
    seed: int = 0,
) -> float:
    """Fraction of ``n`` random (start, goal cell) pairs reached within ``max_steps`` by
    ``act(states, goals, goal_mask, action_mask) -> (B,) or (B, 2) actions``. With ``partial`` only ``x`` is
    specified. Starts at the goal are redrawn away from it so every episode needs at least one move."""
    rng = np.random.default_rng(seed)
    goals = rng.integers(0, size, (n, 2)).astype(np.float32)
    pos = rng.integers(0, size, (n, 2)).astype(np.float32)
    mask = np.ones((n, 2), np.bool_)
    if partial:
        mask[:, 1] = False
    same = np.all((np.abs(pos - goals) <= 0.5) | ~mask, axis=1)
    pos[same, 0] = (goals[same, 0] + rng.integers(1, size, same.sum())) % size
    reached = np.zeros(n, np.bool_)
    for _ in range(max_steps):
        states = np.concatenate([pos, rng.normal(size=(n, 1)).astype(np.float32)], axis=1)
        avail = grid_available(pos, size) if (discrete and masked) else None
        a = act(states, np.where(mask, goals, 0.0), mask, avail)
        pos = grid_step(pos, a, size, discrete=discrete)
        reached |= np.all((np.abs(pos - goals) <= 0.5) | ~mask, axis=1)
    return float(reached.mean())


def far_corner_reward(size: int) -> str:
    """Reward expression of the far-corner task: minus the next position's normalised distance to it."""
    return f"-(abs(next.x - {size - 1}) + abs(next.y - {size - 1})) / {2 * (size - 1)}"


def far_corner_score(agent: Any, *, size: int, discrete: bool, n: int = 200, steps: int = 12, seed: int = 5) -> float:
    """Normalised return of ``agent``'s greedy policy on the far-corner task over ``n`` random starts:
    0 = uniformly random actions (the logs' behaviour), 100 = heading straight for the corner."""
    from decision_core.reward import parse_reward

    expression = parse_reward(far_corner_reward(size), agent.spec)

    def run(policy: Callable[[np.ndarray, np.ndarray | None, np.random.Generator], np.ndarray]) -> float:
        rng = np.random.default_rng(seed)
        pos = rng.integers(0, size, (n, 2)).astype(np.float32)
        total = 0.0
        for _ in range(steps):
            states = np.concatenate([pos, rng.normal(size=(n, 1)).astype(np.float32)], axis=1)
            avail = grid_available(pos, size) if discrete else None
            pos = grid_step(pos, policy(states, avail, rng), size, discrete=discrete)
            next_states = np.concatenate([pos, np.zeros((n, 1), np.float32)], axis=1)
            total += float(expression.evaluate(states, next_states).mean())
        return total

    def uniform(states: np.ndarray, avail: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        if avail is not None:
            return np.where(avail, rng.random(avail.shape), -1.0).argmax(1)
        return rng.uniform(-1.0, 1.0, (len(states), 2)).astype(np.float32)

    def straight(states: np.ndarray, avail: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        d = (size - 1) - states[:, :2]
        if discrete:  # right until the column, then up
            return np.where(d[:, 0] > 0.5, 1, np.where(d[:, 1] > 0.5, 3, 0))
        return np.clip(d, -1.0, 1.0)

    def greedy(states: np.ndarray, avail: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        return agent.act(states, None, None, avail, rng=rng).actions

    low, high = run(uniform), run(straight)
    return 100 * (run(greedy) - low) / (high - low)
