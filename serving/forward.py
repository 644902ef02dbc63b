"""A numpy copy of a served agent's policy, for small forward passes without torch's per-operation overhead.

A one-row decision through ``Agent.act`` costs about 100 µs, nearly all of it torch dispatching some thirty small
operations; the same arithmetic in numpy costs a fraction of that, which lets the service run small micro-batches
on the event loop instead of paying a thread hop per batch (see :class:`serving.policy.DecisionBatcher`).

:func:`export_policy` copies the weights of agents whose policy is one MLP head over the normalised inputs
(GCBC, BC, GCIQL, CRL, IQL, and CQL with continuous actions) and re-implements :meth:`Agent.act` exactly: the same
input encoding, masked logits, exploration mixture, random draws in the same order from the same generator, and
the same propensities (continuous actions: the greedy policy only, see :meth:`NumpyPolicy.handles`). The copy is
checked against the agent on probe inputs when it is made; an agent it does not recognise, or one whose copy
disagrees, is served through torch as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from torch import nn

from decision_core.algos import Agent, Exploration
from decision_core.algos.base import ActResult
from decision_core.algos.nets import LOG_STD_MAX, LOG_STD_MIN, MASKED_LOGIT, PolicyNet
from decision_core.schema import BoxActions

log = logging.getLogger("decision_core.serving")

#: Algorithms whose policy is ``nets["actor"](agent.inputs(states, goals, masks))``.
_ACTOR_ON_INPUTS = frozenset({"gcbc", "bc", "gciql", "crl", "iql"})
#: Largest disagreement with torch tolerated by the check made at export (logits, means, propensities).
TOLERANCE = 1e-5


@dataclass(frozen=True)
class _Layer:
    weight_t: np.ndarray | None = None  # (in, out) float32, for x @ weight_t + bias
    bias: np.ndarray | None = None
    norm: tuple[np.ndarray, np.ndarray, float] | None = None  # LayerNorm weight, bias, eps
    relu: bool = False


def _layers(mlp: nn.Sequential) -> list[_Layer] | None:
    out: list[_Layer] = []
    for m in mlp:
        if isinstance(m, nn.Linear):
            w = m.weight.detach().numpy().astype(np.float32)
            b = m.bias.detach().numpy().astype(np.float32) if m.bias is not None else np.zeros(w.shape[0], np.float32)
            out.append(_Layer(weight_t=np.ascontiguousarray(w.T), bias=b))
        elif isinstance(m, nn.ReLU):
            out.append(_Layer(relu=True))
        elif isinstance(m, nn.LayerNorm) and m.weight is not None and m.bias is not None:
            out.append(
                _Layer(norm=(m.weight.detach().numpy().astype(np.float32), m.bias.detach().numpy(), float(m.eps)))
            )
        else:
            return None  # an operation this copy does not know
    return out


class NumpyPolicy:
    """``Agent.act`` for one MLP policy head, in numpy (see the module docstring)."""

    def __init__(self, agent: Agent, layers: list[_Layer]) -> None:
        spec = agent.spec
        self.spec = spec
        self.discrete = spec.discrete
        self.goal_conditioned = agent.goal_conditioned
        self.n_actions = spec.n_actions
        self.action_dim = spec.action_dim
        self.layers = layers
        st = agent.stats
        self.state_mean = np.asarray(st.state_mean, np.float32)
        self.state_std = np.asarray(st.state_std, np.float32)
        self.outcome_mean = np.asarray(st.outcome_mean, np.float32)
        self.outcome_std = np.asarray(st.outcome_std, np.float32)
        if isinstance(spec.actions, BoxActions):
            low = np.asarray(spec.actions.low, np.float32)
            high = np.asarray(spec.actions.high, np.float32)
            self.center, self.half_range = (high + low) / 2, (high - low) / 2

    # -- the network ------------------------------------------------------------------------------------------
    def inputs(self, states: np.ndarray, goals: np.ndarray | None, goal_mask: np.ndarray | None) -> np.ndarray:
        x = (states - self.state_mean) / self.state_std
        if not self.goal_conditioned:
            return x
        b, g = states.shape[0], self.outcome_mean.shape[0]
        if goals is None or goal_mask is None:
            return np.concatenate([x, np.zeros((b, 2 * g), np.float32)], axis=1)
        m = goal_mask.astype(np.float32)
        gv = np.where(goal_mask, goals, np.float32(0.0))
        return np.concatenate([x, (gv - self.outcome_mean) / self.outcome_std * m, m], axis=1)

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            if layer.weight_t is not None:
                x = x @ layer.weight_t
                x += layer.bias
            elif layer.relu:
                np.maximum(x, 0.0, out=x)
            else:
                w, b, eps = layer.norm  # type: ignore[misc]
                mu = x.mean(-1, keepdims=True)
                var = ((x - mu) ** 2).mean(-1, keepdims=True)
                x = (x - mu) / np.sqrt(var + eps) * w + b
        return x

    def head(
        self, states: np.ndarray, goals: np.ndarray | None, goal_mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits (discrete), or the pre-squash mean and clamped log-std (continuous)."""
        out = self.forward(self.inputs(states, goals, goal_mask))
        if self.discrete:
            return out, None
        a = self.action_dim
        return out[:, :a], np.clip(out[:, a:], LOG_STD_MIN, LOG_STD_MAX)

    # -- acting (mirrors Agent.act) ---------------------------------------------------------------------------
    def handles(self, exploration: Exploration | None) -> bool:
        """Whether :meth:`act` serves this exploration (discrete: every one; continuous: greedy only)."""
        return self.discrete or exploration is None

    def act(
        self,
        states: np.ndarray,
        goals: np.ndarray | None = None,
        goal_mask: np.ndarray | None = None,
        action_mask: np.ndarray | None = None,
        *,
        exploration: Exploration | None = None,
        rng: np.random.Generator,
    ) -> ActResult:
        """As :meth:`Agent.act` for finite, well-shaped inputs (the service has validated them)."""
        s = np.asarray(states, np.float32)
        g = m = None
        if goals is not None and self.goal_conditioned:
            g = np.asarray(goals, np.float32)
            m = ~np.isnan(g) if goal_mask is None else np.asarray(goal_mask, np.bool_)
        main, _ = self.head(s, g, m)
        b = s.shape[0]
        if self.discrete:
            am = None if action_mask is None else np.asarray(action_mask, np.bool_)
            masked = main if am is None else np.where(am, main, np.float32(MASKED_LOGIT))
            greedy = masked.argmax(-1)
            if exploration is None:
                return ActResult(greedy.astype(np.int64), np.ones(b, np.float32))
            k = self.n_actions
            eps = exploration.epsilon
            if exploration.temperature is None and am is None:
                # The general mixture below with every action allowed, in fewer operations (same values).
                probs = np.full((b, k), eps / k)
                probs[np.arange(b), greedy] = (1.0 - eps) + eps / k
                return _sample(probs, rng)
            allowed = am.astype(np.float64) if am is not None else np.ones((b, k), np.float64)
            if exploration.temperature is None:
                base = np.zeros((b, k), np.float64)
                base[np.arange(b), greedy] = 1.0
            else:
                z = main.astype(np.float64) / exploration.temperature
                if am is not None:
                    z = np.where(am, z, MASKED_LOGIT)
                z = np.exp(z - z.max(-1, keepdims=True))
                base = z / z.sum(-1, keepdims=True)
            probs = (1.0 - eps) * base + eps * allowed / allowed.sum(-1, keepdims=True)
            return _sample(probs, rng)
        # Continuous: the greedy action only. Sampled actions' densities go through atanh of a value near +-1,
        # where float32 rounding differences between libraries exceed the tolerance: those stay with torch.
        if exploration is not None:
            raise ValueError("NumpyPolicy.act: exploring continuous policies are served through torch")
        return ActResult((np.tanh(main) * self.half_range + self.center).astype(np.float32), np.ones(b, np.float32))


def _sample(probs: np.ndarray, rng: np.random.Generator) -> ActResult:
    """One action per row of ``probs`` by inverse CDF, drawing as ``Agent.act`` does."""
    b, k = probs.shape
    if b == 1:  # one decision: the same arithmetic on Python floats is several times cheaper than numpy calls
        row = probs[0].tolist()
        total, cdf_row = 0.0, []
        for p in row:
            total += p  # sequential, as np.cumsum
            cdf_row.append(total)
        u = rng.random() * total  # the same draw as rng.random((1, 1))
        a = min(sum(u >= c for c in cdf_row), k - 1)
        return ActResult(np.array([a], np.int64), np.array([row[a]], np.float32))
    cdf = np.cumsum(probs, axis=1)
    u = rng.random((b, 1)) * cdf[:, -1:]
    actions = np.minimum((u >= cdf).sum(axis=1), k - 1).astype(np.int64)
    return ActResult(actions, probs[np.arange(b), actions].astype(np.float32))


def _actor(agent: Agent) -> PolicyNet | None:
    if agent.name in _ACTOR_ON_INPUTS or (agent.name == "cql" and not agent.spec.discrete):
        actor = dict(agent.nets.items()).get("actor")
        return actor if isinstance(actor, PolicyNet) else None
    return None


def export_policy(agent: Agent, *, probes: int = 64, seed: int = 0) -> NumpyPolicy | None:
    """A numpy copy of ``agent``'s policy, or None when the agent is not of a known shape or the copy does not
    reproduce the agent's policy outputs within :data:`TOLERANCE` on probe inputs."""
    actor = _actor(agent)
    layers = _layers(actor.net.net) if actor is not None else None
    if layers is None:
        return None
    policy = NumpyPolicy(agent, layers)
    rng = np.random.default_rng(seed)
    spec = agent.spec
    states = (policy.state_mean + policy.state_std * rng.standard_normal((probes, spec.state_dim))).astype(np.float32)
    g = len(spec.outcomes)
    goals = (policy.outcome_mean + policy.outcome_std * rng.standard_normal((probes, g))).astype(np.float32)
    mask = rng.random((probes, g)) < 0.7
    goals[~mask] = np.nan
    import torch

    with torch.no_grad():
        s_t, g_t, m_t, _ = agent._as_tensors(states, goals, mask, None)
        out = agent.policy(s_t, g_t, m_t)
    main, log_std = policy.head(states, goals if agent.goal_conditioned else None, mask)
    want = [out.logits] if spec.discrete else [out.mean, out.log_std]
    got = [main] if spec.discrete else [main, log_std]
    for w, h in zip(want, got, strict=True):
        assert w is not None and h is not None
        ref = w.numpy()
        if ref.shape != h.shape or not np.allclose(h, ref, rtol=TOLERANCE, atol=TOLERANCE):
            log.warning("the numpy copy of %s does not reproduce its policy; serving it through torch", agent)
            return None
    return policy
