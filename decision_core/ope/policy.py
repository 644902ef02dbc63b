"""Target policies as off-policy evaluation sees them: probabilities of logged actions, and samples.

An agent serves either its greedy policy or an exploring one (:class:`~decision_core.algos.base.Exploration`:
epsilon-greedy or a softmax temperature). OPE must evaluate exactly the served policy, so
:class:`AgentPolicy` derives the served action distribution from the agent's own (temperature 1)
``action_probs`` and greedy ``act``:

- greedy: all mass on the agent's greedy action;
- ``epsilon``: ``(1 - eps)`` on the greedy action plus ``eps`` spread uniformly over the available actions;
- ``temperature`` T: ``p(a|s)^(1/T)`` renormalised over the available actions.

For continuous actions only the stochastic policy has a density; a deterministic continuous target cannot be
evaluated by importance sampling (use ``fqe``).
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Sequence
from typing import Any

import numpy as np

from decision_core.ope.estimators import OPEError
from decision_core.schema import BoxActions, DomainSpec

_TINY = 1e-12


class TargetPolicy(ABC):
    """A state-only policy over a domain's action space (goals, if any, are fixed when it is built)."""

    name: str
    spec: DomainSpec

    def probs(self, states: np.ndarray, action_mask: np.ndarray | None = None) -> np.ndarray:
        """(N, K) action probabilities (discrete spaces only)."""
        raise OPEError(f"policy '{self.name}' has no action probabilities (continuous action space)")

    def log_prob(self, states: np.ndarray, actions: np.ndarray, action_mask: np.ndarray | None = None) -> np.ndarray:
        """(N,) log-probability (discrete) or log-density (continuous) of ``actions``."""
        p = self.probs(states, action_mask)
        idx = np.asarray(actions).reshape(len(p), -1)[:, 0].astype(np.int64)
        return np.log(np.maximum(p[np.arange(len(p)), idx], _TINY)).astype(np.float32)

    def sample(
        self, states: np.ndarray, action_mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Actions ((N,) int64 or (N, A) float32) and their probability/density under this policy."""
        p = self.probs(states, action_mask)
        u = rng.random((len(p), 1))
        idx = np.minimum((np.cumsum(p, axis=1) < u).sum(axis=1), p.shape[1] - 1)
        return idx.astype(np.int64), p[np.arange(len(p)), idx].astype(np.float32)

    @property
    def stochastic(self) -> bool:
        """Whether the policy has a density over a continuous space (importance sampling is defined)."""
        return True


def _uniform(k: int, n: int, action_mask: np.ndarray | None) -> np.ndarray:
    valid = np.ones((n, k), np.float64) if action_mask is None else action_mask.astype(np.float64)
    count = valid.sum(axis=1, keepdims=True)
    return np.divide(valid, count, out=np.full_like(valid, 1.0 / k), where=count > 0)


class UniformPolicy(TargetPolicy):
    """Uniform over the available actions (or the action box)."""

    def __init__(self, spec: DomainSpec, name: str = "uniform") -> None:
        self.spec = spec
        self.name = name

    def probs(self, states: np.ndarray, action_mask: np.ndarray | None = None) -> np.ndarray:
        if not self.spec.discrete:
            return super().probs(states, action_mask)
        return _uniform(self.spec.n_actions, len(states), action_mask)

    def log_prob(self, states: np.ndarray, actions: np.ndarray, action_mask: np.ndarray | None = None) -> np.ndarray:
        if self.spec.discrete:
            return super().log_prob(states, actions, action_mask)
        box = self.spec.actions
        assert isinstance(box, BoxActions)
        log_volume = float(np.sum(np.log(np.asarray(box.high) - np.asarray(box.low))))
        return np.full(len(states), -log_volume, np.float32)

    def sample(
        self, states: np.ndarray, action_mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.spec.discrete:
            return super().sample(states, action_mask, rng)
        box = self.spec.actions
        assert isinstance(box, BoxActions)
        low, high = np.asarray(box.low, np.float32), np.asarray(box.high, np.float32)
        actions = rng.uniform(low, high, size=(len(states), len(low))).astype(np.float32)
        return actions, np.exp(self.log_prob(states, actions)).astype(np.float32)


class AgentPolicy(TargetPolicy):
    """The policy an agent serves (greedy or exploring), for a fixed goal when the agent is goal-conditioned."""

    def __init__(
        self,
        agent: Any,
        exploration: Any | None = None,
        *,
        goal: np.ndarray | None = None,
        goal_mask: np.ndarray | None = None,
        name: str | None = None,
    ) -> None:
        self.agent = agent
        self.spec = agent.spec
        self.exploration = exploration
        if agent.goal_conditioned and (goal is None or goal_mask is None):
            raise OPEError(
                f"agent '{agent.name}' is goal-conditioned: evaluate it for a goal (goal values and mask over "
                f"the outcome features {', '.join(self.spec.outcome_names)})"
            )
        self.goal = None if goal is None else np.asarray(goal, np.float32)
        self.goal_mask = None if goal_mask is None else np.asarray(goal_mask, np.bool_)
        eps = getattr(exploration, "epsilon", 0.0) if exploration is not None else 0.0
        temp = getattr(exploration, "temperature", None) if exploration is not None else None
        self.epsilon = float(eps or 0.0)
        self.temperature = None if temp is None else float(temp)
        if not 0.0 <= self.epsilon <= 1.0:
            raise OPEError(f"exploration epsilon must be in [0, 1], got {self.epsilon}")
        if self.temperature is not None and self.temperature <= 0:
            raise OPEError(f"exploration temperature must be > 0, got {self.temperature}")
        self.name = name or _describe(agent.name, self.epsilon, self.temperature)

    def _goals(self, n: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        if self.goal is None or self.goal_mask is None:
            return None, None
        return np.broadcast_to(self.goal, (n, len(self.goal))).copy(), np.broadcast_to(
            self.goal_mask, (n, len(self.goal_mask))
        ).copy()

    @property
    def greedy(self) -> bool:
        return self.epsilon == 0.0 and self.temperature is None

    @property
    def stochastic(self) -> bool:
        return self.spec.discrete or not self.greedy

    def probs(self, states: np.ndarray, action_mask: np.ndarray | None = None) -> np.ndarray:
        if not self.spec.discrete:
            return super().probs(states, action_mask)
        states = np.asarray(states, np.float32)
        n, k = len(states), self.spec.n_actions
        goals, gmask = self._goals(n)
        if self.temperature == 1.0:  # the agent's own probabilities (masked ones are 0)
            p = np.asarray(self.agent.action_probs(states, goals, gmask, action_mask), np.float64)
            p /= p.sum(axis=1, keepdims=True)
        elif self.temperature is not None:
            base = np.asarray(self.agent.action_probs(states, goals, gmask, action_mask), np.float64)
            logits = np.log(np.maximum(base, _TINY)) / self.temperature
            if action_mask is not None:
                logits = np.where(action_mask, logits, -np.inf)
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
        else:
            greedy = self.agent.act(states, goals, gmask, action_mask, exploration=None, rng=np.random.default_rng(0))
            idx = np.asarray(greedy.actions).reshape(n).astype(np.int64)
            p = np.zeros((n, k), np.float64)
            p[np.arange(n), idx] = 1.0
        if self.epsilon > 0:
            p = (1.0 - self.epsilon) * p + self.epsilon * _uniform(k, n, action_mask)
        return p

    def log_prob(self, states: np.ndarray, actions: np.ndarray, action_mask: np.ndarray | None = None) -> np.ndarray:
        if self.spec.discrete:
            return super().log_prob(states, actions, action_mask)
        if self.greedy:
            raise OPEError(
                f"policy '{self.name}' is deterministic over continuous actions, so it has no density and "
                f"importance sampling is undefined; evaluate its stochastic version (temperature 1) or use 'fqe' "
                f"or 'mb'"
            )
        states = np.asarray(states, np.float32)
        actions = np.asarray(actions, np.float32)
        goals, gmask = self._goals(len(states))
        # The served density: the agent scales its policy's standard deviation by the temperature when exploring.
        logp = self.agent.log_prob(states, goals, gmask, actions, action_mask, temperature=self.temperature or 1.0)
        logp = np.asarray(logp, np.float64)
        if self.epsilon > 0:
            box = self.spec.actions
            assert isinstance(box, BoxActions)
            log_uniform = -float(np.sum(np.log(np.asarray(box.high) - np.asarray(box.low))))
            logp = np.logaddexp(np.log1p(-self.epsilon) + logp, np.log(self.epsilon) + log_uniform)
        return logp.astype(np.float32)

    def sample(
        self, states: np.ndarray, action_mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.spec.discrete:
            return super().sample(states, action_mask, rng)
        states = np.asarray(states, np.float32)
        goals, gmask = self._goals(len(states))
        result = self.agent.act(states, goals, gmask, action_mask, exploration=self.exploration, rng=rng)
        return np.asarray(result.actions, np.float32), np.asarray(result.propensities, np.float32)


class MixturePolicy(TargetPolicy):
    """``sum_j w_j pi_j``: a softened or degraded version of other policies (e.g. half oracle, half random)."""

    def __init__(self, policies: Sequence[TargetPolicy], weights: Sequence[float], name: str | None = None) -> None:
        if len(policies) != len(weights) or not policies:
            raise OPEError("a mixture needs one weight per policy")
        w = np.asarray(weights, np.float64)
        if np.any(w < 0) or w.sum() <= 0:
            raise OPEError(f"mixture weights must be >= 0 with a positive sum, got {list(weights)}")
        self.policies = list(policies)
        self.weights = w / w.sum()
        self.spec = policies[0].spec
        self.name = name or " + ".join(f"{x:.2f}*{p.name}" for p, x in zip(self.policies, self.weights, strict=True))

    @property
    def stochastic(self) -> bool:
        return all(p.stochastic for p in self.policies)

    def probs(self, states: np.ndarray, action_mask: np.ndarray | None = None) -> np.ndarray:
        if not self.spec.discrete:
            return super().probs(states, action_mask)
        return sum(w * p.probs(states, action_mask) for p, w in zip(self.policies, self.weights, strict=True))  # type: ignore[return-value]

    def log_prob(self, states: np.ndarray, actions: np.ndarray, action_mask: np.ndarray | None = None) -> np.ndarray:
        if self.spec.discrete:
            return super().log_prob(states, actions, action_mask)
        logs = np.stack([p.log_prob(states, actions, action_mask) for p in self.policies], axis=1).astype(np.float64)
        logs += np.log(np.maximum(self.weights, _TINY))[None, :]
        top = logs.max(axis=1, keepdims=True)
        return (top[:, 0] + np.log(np.exp(logs - top).sum(axis=1))).astype(np.float32)

    def sample(
        self, states: np.ndarray, action_mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.spec.discrete:
            return super().sample(states, action_mask, rng)
        n = len(states)
        component = rng.choice(len(self.policies), size=n, p=self.weights)
        actions = np.zeros((n, self.spec.action_dim), np.float32)
        for j, policy in enumerate(self.policies):
            rows = np.flatnonzero(component == j)
            if rows.size:
                actions[rows] = policy.sample(states[rows], None if action_mask is None else action_mask[rows], rng)[0]
        return actions, np.exp(self.log_prob(states, actions, action_mask)).astype(np.float32)


def _describe(algo: str, epsilon: float, temperature: float | None) -> str:
    if temperature is not None:
        return f"{algo} (temperature {temperature:g})"
    if epsilon > 0:
        return f"{algo} (epsilon {epsilon:g})"
    return f"{algo} (greedy)"
