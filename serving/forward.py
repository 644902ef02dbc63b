"""A numpy copy of a served agent's policy, for small forward passes without torch's per-operation overhead.

A one-row decision through ``Agent.act`` costs about 100 µs, nearly all of it torch dispatching some thirty small
operations; the same arithmetic in numpy costs a fraction of that, which lets the service run small micro-batches
on the event loop instead of paying a thread hop per batch (see :class:`serving.policy.DecisionBatcher`).

:func:`export_policy` copies the weights of agents whose policy is one MLP head over the normalised inputs
(GCBC, BC, GCIQL, CRL, IQL, CQL, QRL; for closed-form discrete IQL/GCIQL/CQL/QRL also the critic ensemble that
tilts the behaviour prior's logits; discrete CQL with ``extraction="q"``, a policy of the critics alone, stays with
torch) and re-implements :meth:`Agent.act` exactly: the same input encoding, masked logits, exploration mixture, random
draws in the same order from the same generator, and the same propensities (continuous actions: the greedy policy
only, see :meth:`NumpyPolicy.handles`). The copy is checked against the agent on probe inputs when it is made; an
agent it does not recognise, or one whose copy disagrees, is served through torch as before.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from decision_core.algos import Agent, Exploration
from decision_core.algos.base import ActResult, AdvantageExtractionAgent
from decision_core.algos.nets import (
    LOG_STD_MAX,
    LOG_STD_MIN,
    MASKED_LOGIT,
    UNSUPPORTED_GAP,
    Critic,
    EnsembleLinear,
    EnsembleMLP,
    PolicyNet,
)
from decision_core.schema import BoxActions

log = logging.getLogger("decision_core.serving")

#: Algorithms whose policy is ``nets["actor"](agent.inputs(states, goals, masks))``.
_ACTOR_ON_INPUTS = frozenset({"gcbc", "bc", "gciql", "crl", "iql", "qrl"})
#: Largest disagreement with torch tolerated by the check made at export (logits, means, propensities).
TOLERANCE = 1e-5
#: The masked logit as the float32 array path sees it (``np.where(mask, logits, np.float32(MASKED_LOGIT))``).
_MASKED = float(np.float32(MASKED_LOGIT))


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


@dataclass(frozen=True)
class _Tilt:
    """Closed-form discrete IQL/GCIQL: logits ``log_softmax(actor) + beta * mean_i Q_i``, with the actions below the
    support threshold masked (:func:`decision_core.algos.nets.tilted_logits`). ``layers`` is the critic ensemble:
    (weight (n, in, out), bias (n, 1, out)) pairs, ``"relu"``, or a float (LayerNorm without affine, its eps)."""

    layers: list[tuple[np.ndarray, np.ndarray] | str | float]
    beta: float
    log_support: float | None
    #: An agent whose tilt needs a goal (``tilt_needs_goal``): a row with no goal feature specified keeps the actor's
    #: logits (the last ``goal_features`` inputs are the goal mask); 0 for agents that tilt every row.
    goal_features: int = 0

    def logits(self, actor_logits: np.ndarray, x: np.ndarray) -> np.ndarray:
        h = x
        for layer in self.layers:
            if isinstance(layer, tuple):
                h = np.matmul(h, layer[0]) + layer[1]  # (B, in) or (n, B, in) -> (n, B, out)
            elif layer == "relu":
                h = np.maximum(h, 0.0)
            else:
                mu = h.mean(-1, keepdims=True)
                h = (h - mu) / np.sqrt(((h - mu) ** 2).mean(-1, keepdims=True) + np.float32(layer))
        q = h.mean(0)
        z = actor_logits - actor_logits.max(-1, keepdims=True)
        log_pb = z - np.log(np.exp(z).sum(-1, keepdims=True))
        out = log_pb + np.float32(self.beta) * q
        if self.log_support is not None:
            unsupported = log_pb < log_pb.max(-1, keepdims=True) + np.float32(self.log_support)
            lowest_supported = np.where(unsupported, np.inf, out).min(-1, keepdims=True)
            highest_unsupported = np.where(unsupported, out, -np.inf).max(-1, keepdims=True)
            shift = np.maximum(highest_unsupported - lowest_supported + np.float32(UNSUPPORTED_GAP), 0.0)
            out = np.where(unsupported, out - shift, out)
        if self.goal_features:
            has_goal = x[:, -self.goal_features :].any(-1, keepdims=True)
            out = np.where(has_goal, out, actor_logits)
        return out.astype(np.float32)


def _tilt(agent: Agent) -> _Tilt | None:
    """The critic term of a closed-form discrete IQL/GCIQL/CQL agent (None: the agent's policy is its actor alone)."""
    if not (isinstance(agent, AdvantageExtractionAgent) and agent.closed_form):
        return None
    critic = dict(agent.nets.items()).get("critic")
    if not isinstance(critic, Critic) or not isinstance(critic.net, EnsembleMLP):
        return None
    layers: list[tuple[np.ndarray, np.ndarray] | str | float] = []
    for m in critic.net.net:
        if isinstance(m, EnsembleLinear):
            layers.append((m.weight.detach().numpy().astype(np.float32), m.bias.detach().numpy().astype(np.float32)))
        elif isinstance(m, nn.ReLU):
            layers.append("relu")
        elif isinstance(m, nn.LayerNorm) and m.weight is None:
            layers.append(float(m.eps))
        else:
            return None
    support = float(agent.extraction_config.support)
    goal_features = len(agent.spec.outcomes) if agent.tilt_needs_goal else 0
    return _Tilt(layers, agent.beta, math.log(support) if support > 0.0 else None, goal_features)


class NumpyPolicy:
    """``Agent.act`` for one MLP policy head, in numpy (see the module docstring)."""

    def __init__(self, agent: Agent, layers: list[_Layer], tilt: _Tilt | None = None) -> None:
        spec = agent.spec
        self.spec = spec
        self.discrete = spec.discrete
        self.goal_conditioned = agent.goal_conditioned
        self.n_actions = spec.n_actions
        self.action_dim = spec.action_dim
        self.layers = layers
        self.tilt = tilt
        st = agent.stats
        self.state_mean = np.asarray(st.state_mean, np.float32)
        self.state_std = np.asarray(st.state_std, np.float32)
        self.outcome_mean = np.asarray(st.outcome_mean, np.float32)
        self.outcome_std = np.asarray(st.outcome_std, np.float32)
        if isinstance(spec.actions, BoxActions):
            low = np.asarray(spec.actions.low, np.float32)
            high = np.asarray(spec.actions.high, np.float32)
            self.center, self.half_range = (high + low) / 2, (high - low) / 2
        # One decision (act_one) encodes its inputs as ``(raw - shift) / scale`` over [state, goal, goal mask]:
        # an unspecified goal value is sent as its own mean (-> 0) and the mask passes through as (m - 0) / 1,
        # the same float32 values as :meth:`inputs` in two operations instead of eight.
        g = self.outcome_mean.shape[0] if self.goal_conditioned else 0
        self._shift = np.concatenate([self.state_mean, self.outcome_mean[:g], np.zeros(g, np.float32)])[None]
        self._scale = np.concatenate([self.state_std, self.outcome_std[:g], np.ones(g, np.float32)])[None]
        self._unset_goal = self.outcome_mean[:g].tolist()

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
        inputs = x
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
        return x if self.tilt is None else self.tilt.logits(x, inputs)

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
        return self._act_on(main, action_mask, exploration, rng)

    def act_one(
        self,
        state: Sequence[float],
        goal: Sequence[float] | None,
        action_mask: Sequence[bool] | None,
        *,
        exploration: Exploration | None,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, float]:
        """One decision from Python lists (goal: NaN = unspecified), as :meth:`act` on one row: the same action
        and propensity from the same draw, with fewer numpy calls. Returns the (A,) float32 action row (discrete:
        the index) and the propensity as :meth:`act` reports it (float32)."""
        raw = list(state)
        if self.goal_conditioned:
            unset = self._unset_goal
            if goal is None:
                raw += unset
                raw += [0.0] * len(unset)
            else:
                raw += [v if v == v else u for v, u in zip(goal, unset, strict=True)]  # v == v: not NaN
                raw += [1.0 if v == v else 0.0 for v in goal]
        x = np.array([raw], np.float32)
        x -= self._shift
        x /= self._scale
        main = self.forward(x)
        if self.discrete and (exploration is None or exploration.temperature is None):
            logits = main[0].tolist()
            if action_mask is None:
                greedy = max(range(self.n_actions), key=logits.__getitem__)  # first maximum, as argmax
            else:
                masked = [v if ok else _MASKED for v, ok in zip(logits, action_mask, strict=True)]
                greedy = max(range(self.n_actions), key=masked.__getitem__)
            if exploration is None:
                return np.array([greedy], np.float32), 1.0
            if action_mask is None:
                # The epsilon-greedy mixture of _act_on on Python floats (same values, same draw).
                k, eps = self.n_actions, exploration.epsilon
                row = [eps / k] * k
                row[greedy] = (1.0 - eps) + eps / k
                a, p = _draw(row, rng)
                return np.array([a], np.float32), float(np.float32(p))
        am = None if action_mask is None else np.array([action_mask], np.bool_)
        result = self._act_on(main if self.discrete else main[:, : self.action_dim], am, exploration, rng)
        action = np.asarray(result.actions, np.float32).reshape(self.action_dim)
        return action, float(result.propensities[0])

    def _act_on(
        self,
        main: np.ndarray,
        action_mask: np.ndarray | None,
        exploration: Exploration | None,
        rng: np.random.Generator,
    ) -> ActResult:
        """Actions and propensities from the head's output (discrete logits, or continuous means)."""
        b = main.shape[0]
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
        a, p = _draw(row, rng)
        return ActResult(np.array([a], np.int64), np.array([p], np.float32))
    cdf = np.cumsum(probs, axis=1)
    u = rng.random((b, 1)) * cdf[:, -1:]
    actions = np.minimum((u >= cdf).sum(axis=1), k - 1).astype(np.int64)
    return ActResult(actions, probs[np.arange(b), actions].astype(np.float32))


def _draw(row: list[float], rng: np.random.Generator) -> tuple[int, float]:
    """One action from one row of probabilities by inverse CDF on Python floats: the same draw and the same
    arithmetic as the array path of :func:`_sample` (``rng.random((1, 1))``, a sequential cumulative sum)."""
    total, cdf_row = 0.0, []
    for p in row:
        total += p
        cdf_row.append(total)
    u = rng.random() * total
    a = min(sum(u >= c for c in cdf_row), len(row) - 1)
    return a, row[a]


def _actor(agent: Agent) -> PolicyNet | None:
    closed_form = isinstance(agent, AdvantageExtractionAgent) and agent.closed_form
    if agent.name in _ACTOR_ON_INPUTS or (agent.name == "cql" and (closed_form or not agent.spec.discrete)):
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
    tilt = _tilt(agent)
    if isinstance(agent, AdvantageExtractionAgent) and agent.closed_form and tilt is None:
        return None
    policy = NumpyPolicy(agent, layers, tilt)
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
