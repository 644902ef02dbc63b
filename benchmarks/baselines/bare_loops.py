"""Bare PyTorch training loops: the reference the framework's update steps are measured against.

Each loop does the same network math as the corresponding algorithm in ``decision_core.algos`` (same layer sizes
and normalisation, same losses, same forward/backward passes and optimiser steps), written as straight-line
PyTorch over a batch gathered with ``torch.randint`` from pre-loaded tensors: no configs, agents, samplers,
metric dictionaries or input validation. ``framework steps/s / bare steps/s`` is the framework's overhead.

    step = make_bare_loop("iql", data, discrete=True)
    step()  # one training step, batch sampling included

``data`` holds pre-loaded tensors: ``states`` / ``next_states`` (N, S) float32, ``actions`` (N,) int64 (discrete)
or (N, A) float32 in [-1, 1] (continuous), ``rewards`` (N,) float32, ``terminals`` (N,) float32, for discrete
data ``n_actions`` (an int), and for the goal-conditioned loops ``outcome_index`` (G,) int64 and ``tolerances``
(G,) float32.

Goal-conditioned loops draw goals the cheapest way there is (the outcome reached by a uniformly random step, fully
specified) instead of hindsight relabelling within episodes, so their ratio also charges the framework's goal
sampler (trajectory offsets, partial-goal masks) as overhead.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

Step = Callable[[], None]
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


#: bfloat16 while :func:`make_bare_loop` builds a ``precision="bf16"`` loop: the networks built then run their
#: hidden layers under autocast, the last layer in float32 (the framework's scheme).
_BUILD_DTYPE: torch.dtype | None = None


class _MLP(nn.Sequential):
    def __init__(self, *layers: nn.Module) -> None:
        super().__init__(*layers)
        self.dtype = _BUILD_DTYPE

    def forward(self, x: Tensor) -> Tensor:
        if self.dtype is None:
            return super().forward(x)
        with torch.autocast("cpu", dtype=self.dtype):
            for layer in list(self)[:-1]:
                x = layer(x)
        return self[-1](x.float())


def _mlp(inp: int, out: int, hidden: tuple[int, ...], *, layer_norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers.append(nn.Linear(inp, h))
        if layer_norm:
            layers.append(nn.LayerNorm(h))
        layers.append(nn.ReLU())
        inp = h
    layers.append(nn.Linear(inp, out))
    return _MLP(*layers)


class _Ensemble(nn.Module):
    """``n`` MLPs (LayerNorm without affine, ReLU) as one batched matmul per layer: (B, in) -> (n, B, out)."""

    def __init__(self, n: int, inp: int, out: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        sizes = [inp, *hidden, out]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in itertools.pairwise(sizes):
            bound = 1 / math.sqrt(a)
            self.weights.append(nn.Parameter(torch.empty(n, a, b).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n, 1, b).uniform_(-bound, bound)))
        self.dtype = _BUILD_DTYPE

    def forward(self, x: Tensor) -> Tensor:
        x = x.expand(self.weights[0].shape[0], *x.shape)
        with torch.autocast("cpu", dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None):
            for w, b in zip(self.weights[:-1], self.biases[:-1], strict=True):
                x = torch.baddbmm(b, x, w)
                x = F.relu(F.layer_norm(x, x.shape[-1:]))
        return torch.baddbmm(self.biases[-1], x.float(), self.weights[-1])


def _twin(n: int, inp: int, out: int, hidden: tuple[int, ...]) -> tuple[_Ensemble, _Ensemble]:
    q = _Ensemble(n, inp, out, hidden)
    target = _Ensemble(n, inp, out, hidden)
    target.load_state_dict(q.state_dict())
    target.requires_grad_(False)
    return q, target


def _sampler(data: dict[str, Any], batch: int, seed: int) -> Callable[[], tuple[Tensor, ...]]:
    s, a, r, s2, d = data["states"], data["actions"], data["rewards"], data["next_states"], data["terminals"]
    n = s.shape[0]
    mean, std = s.mean(0), s.std(0).clamp_min(1e-6)
    g = torch.Generator().manual_seed(seed)

    def sample() -> tuple[Tensor, ...]:
        idx = torch.randint(n, (batch,), generator=g)
        return (s[idx] - mean) / std, a[idx], r[idx], (s2[idx] - mean) / std, d[idx]

    return sample


def _polyak(target: nn.Module, source: nn.Module, tau: float) -> None:
    with torch.no_grad():
        torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def _squashed_log_prob(mean: Tensor, log_std: Tensor, pre: Tensor, unit: Tensor) -> Tensor:
    gauss = -0.5 * ((pre - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    return (gauss - torch.log1p(-unit.pow(2) + 1e-12)).sum(-1)


def _gaussian(out: Tensor) -> tuple[Tensor, Tensor]:
    mean, log_std = out.chunk(2, -1)
    return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)


def _log_prob_of(out: Tensor, actions: Tensor) -> Tensor:
    mean, log_std = _gaussian(out)
    unit = actions.clamp(-1 + 1e-5, 1 - 1e-5)
    return _squashed_log_prob(mean, log_std, torch.atanh(unit), unit)


def _rsample(mean: Tensor, log_std: Tensor) -> tuple[Tensor, Tensor]:
    pre = mean + log_std.exp() * torch.randn_like(mean)
    gauss = (-0.5 * ((pre - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    return torch.tanh(pre), gauss - (2.0 * (math.log(2.0) - pre - F.softplus(-2.0 * pre))).sum(-1)


def bare_bc(data: dict[str, Any], *, discrete: bool, batch: int, hidden: tuple[int, ...], seed: int) -> Step:
    """Behaviour cloning: categorical or tanh-squashed Gaussian log-likelihood of the logged action, one Adam step."""
    torch.manual_seed(seed)
    sdim = data["states"].shape[1]
    out = int(data["n_actions"]) if discrete else 2 * data["actions"].shape[1]
    actor = _mlp(sdim, out, hidden)
    opt = torch.optim.Adam(actor.parameters(), lr=3e-4, fused=True)
    sample = _sampler(data, batch, seed)

    def step() -> None:
        s, a, _, _, _ = sample()
        loss = F.cross_entropy(actor(s), a) if discrete else -_log_prob_of(actor(s), a).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bare_iql(data: dict[str, Any], *, discrete: bool, batch: int, hidden: tuple[int, ...], seed: int) -> Step:
    """IQL: expectile V against the target twin Q, TD twin Q against V(s'), advantage-weighted actor; one
    backward and one Adam step over all three, then the Polyak target update."""
    torch.manual_seed(seed)
    sdim = data["states"].shape[1]
    k = int(data["n_actions"]) if discrete else 0
    adim = 0 if discrete else data["actions"].shape[1]
    q, q_target = _twin(2, sdim + adim, k if discrete else 1, hidden)
    v = _mlp(sdim, 1, hidden, layer_norm=True)
    actor = _mlp(sdim, k if discrete else 2 * adim, hidden)
    opt = torch.optim.Adam([*q.parameters(), *v.parameters(), *actor.parameters()], lr=3e-4, fused=True)
    sample = _sampler(data, batch, seed)
    gamma, expectile, beta, tau = 0.99, 0.7, 3.0, 0.005

    def q_of(net: _Ensemble, s: Tensor, a: Tensor) -> Tensor:
        if discrete:
            return net(s).gather(-1, a.view(1, -1, 1).expand(2, -1, 1)).squeeze(-1)
        return net(torch.cat([s, a], -1)).squeeze(-1)

    def step() -> None:
        s, a, r, s2, d = sample()
        with torch.no_grad():
            tq = q_of(q_target, s, a).min(0).values
            target = r + gamma * (1 - d) * v(s2).squeeze(-1)
        value = v(s).squeeze(-1)
        adv = tq - value
        v_loss = (torch.where(adv >= 0, expectile, 1 - expectile) * adv.square()).mean()
        q_loss = (q_of(q, s, a) - target).square().mean(1).sum()
        weight = torch.exp(beta * adv.detach()).clamp(max=100.0)
        out = actor(s)
        log_prob = -F.cross_entropy(out, a, reduction="none") if discrete else _log_prob_of(out, a)
        actor_loss = -(weight * log_prob).mean()
        opt.zero_grad(set_to_none=True)
        (v_loss + q_loss + actor_loss).backward()
        opt.step()
        _polyak(q_target, q, tau)

    return step


def bare_cql(data: dict[str, Any], *, discrete: bool, batch: int, hidden: tuple[int, ...], seed: int) -> Step:
    """CQL. Discrete: twin Q, TD to the target's max plus (logsumexp Q - Q(s, a)), and the behaviour prior its
    closed-form policy tilts (cross-entropy, same backward and Adam step). Continuous: twin Q(s, a) with the
    importance-sampled logsumexp (uniform and policy actions at s and s'), a SAC actor and temperature."""
    torch.manual_seed(seed)
    sdim = data["states"].shape[1]
    sample = _sampler(data, batch, seed)
    gamma, tau = 0.99, 0.005
    if discrete:
        k = int(data["n_actions"])
        q, q_target = _twin(2, sdim, k, hidden)
        prior = _mlp(sdim, k, hidden)
        opt = torch.optim.Adam([*q.parameters(), *prior.parameters()], lr=3e-4, fused=True)

        def discrete_step() -> None:
            s, a, r, s2, d = sample()
            with torch.no_grad():
                target = r + gamma * (1 - d) * q_target(s2).min(0).values.max(-1).values
            qs = q(s)
            q_data = qs.gather(-1, a.view(1, -1, 1).expand(2, -1, 1)).squeeze(-1)
            td = (q_data - target).square().mean(1).sum()
            conservative = (torch.logsumexp(qs, -1) - q_data).mean(1).sum()
            loss = td + 0.01 * conservative + F.cross_entropy(prior(s), a)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _polyak(q_target, q, tau)

        return discrete_step

    adim = data["actions"].shape[1]
    n = 10
    q, q_target = _twin(2, sdim + adim, 1, hidden)
    actor = _mlp(sdim, 2 * adim, hidden)
    log_temp = nn.Parameter(torch.zeros(()))
    critic_opt = torch.optim.Adam(q.parameters(), lr=3e-4, fused=True)
    actor_opt = torch.optim.Adam(actor.parameters(), lr=1e-4, fused=True)
    temp_opt = torch.optim.Adam([log_temp], lr=1e-4)
    target_entropy = -float(adim)
    log_uniform = -adim * math.log(2.0)

    def q_of(net: _Ensemble, s: Tensor, a: Tensor) -> Tensor:
        return net(torch.cat([s, a], -1)).squeeze(-1)

    def continuous_step() -> None:
        s, a, r, s2, d = sample()
        b = s.shape[0]
        temp = log_temp.exp().detach()
        mean, log_std = _gaussian(actor(s))
        with torch.no_grad():
            mean2, log_std2 = _gaussian(actor(s2))
            a2, logp2 = _rsample(mean2, log_std2)
            target = r + gamma * (1 - d) * (q_of(q_target, s2, a2).min(0).values - temp * logp2)
            a_pi, logp_pi = _rsample(mean.detach().repeat_interleave(n, 0), log_std.detach().repeat_interleave(n, 0))
            a_pi2, logp_pi2 = _rsample(mean2.repeat_interleave(n, 0), log_std2.repeat_interleave(n, 0))
            a_rand = torch.rand(b * n, adim) * 2 - 1
            s_rep = s.repeat_interleave(n, 0)
            s3 = torch.cat([s_rep, s_rep, s_rep], 0)
            a3 = torch.cat([a_rand, a_pi, a_pi2], 0)
            logp3 = torch.stack([torch.full_like(logp_pi, log_uniform), logp_pi, logp_pi2], 0).view(1, 3, b, n)
        q_data = q_of(q, s, a)
        td = (q_data - target).square().mean(1).sum()
        q3 = q_of(q, s3, a3).view(2, 3, b, n) - logp3
        lse = torch.logsumexp(q3.permute(0, 2, 1, 3).reshape(2, b, 3 * n), -1)
        critic_loss = td + 5.0 * (lse - q_data).mean(1).sum()
        critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        critic_opt.step()
        new_a, logp = _rsample(mean, log_std)
        actor_loss = (temp * logp - q_of(q, s, new_a).min(0).values).mean()
        actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward(inputs=list(actor.parameters()))
        actor_opt.step()
        temp_loss = -(log_temp * (logp.detach() + target_entropy)).mean()
        temp_opt.zero_grad(set_to_none=True)
        temp_loss.backward()
        temp_opt.step()
        _polyak(q_target, q, tau)

    return continuous_step


def _goal_sampler(data: dict[str, Any], batch: int, seed: int) -> Callable[[], tuple[Tensor, ...]]:
    """Batches with goal-augmented inputs: (x, a, x', x_actor, value reward, bootstrap mask)."""
    s, a, s2 = data["states"], data["actions"], data["next_states"]
    oidx, tol = data["outcome_index"], data["tolerances"]
    n, g = s.shape[0], len(oidx)
    mean, std = s.mean(0), s.std(0).clamp_min(1e-6)
    o_mean, o_std = mean[oidx], std[oidx]
    ones = torch.ones(batch, g)
    gen = torch.Generator().manual_seed(seed)

    def encode(goals: Tensor) -> Tensor:
        return torch.cat([(goals - o_mean) / o_std, ones], -1)

    def sample() -> tuple[Tensor, ...]:
        idx = torch.randint(n, (batch,), generator=gen)
        goals = s2[torch.randint(n, (2 * batch,), generator=gen)][:, oidx]
        value_goals, actor_goals = goals[:batch], goals[batch:]
        nxt = s2[idx]
        success = ((nxt[:, oidx] - value_goals).abs() <= tol).all(-1).float()
        vg = encode(value_goals)
        x, x2 = torch.cat([(s[idx] - mean) / std, vg], -1), torch.cat([(nxt - mean) / std, vg], -1)
        x_actor = torch.cat([(s[idx] - mean) / std, encode(actor_goals)], -1)
        return x, a[idx], x2, x_actor, success - 1.0, 1.0 - success

    return sample


def bare_gcbc(data: dict[str, Any], *, discrete: bool, batch: int, hidden: tuple[int, ...], seed: int) -> Step:
    """Goal-conditioned behaviour cloning: BC on (state, encoded goal) inputs."""
    torch.manual_seed(seed)
    inp = data["states"].shape[1] + 2 * len(data["outcome_index"])
    out = int(data["n_actions"]) if discrete else 2 * data["actions"].shape[1]
    actor = _mlp(inp, out, hidden)
    opt = torch.optim.Adam(actor.parameters(), lr=3e-4, fused=True)
    sample = _goal_sampler(data, batch, seed)

    def step() -> None:
        _, a, _, x_actor, _, _ = sample()
        out = actor(x_actor)
        loss = F.cross_entropy(out, a) if discrete else -_log_prob_of(out, a).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bare_gciql(data: dict[str, Any], *, discrete: bool, batch: int, hidden: tuple[int, ...], seed: int) -> Step:
    """Goal-conditioned IQL: IQL on value-goal inputs for V and Q, the actor weighted on its own goals."""
    torch.manual_seed(seed)
    inp = data["states"].shape[1] + 2 * len(data["outcome_index"])
    k = int(data["n_actions"]) if discrete else 0
    adim = 0 if discrete else data["actions"].shape[1]
    q, q_target = _twin(2, inp + adim, k if discrete else 1, hidden)
    v = _mlp(inp, 1, hidden, layer_norm=True)
    actor = _mlp(inp, k if discrete else 2 * adim, hidden)
    opt = torch.optim.Adam([*q.parameters(), *v.parameters(), *actor.parameters()], lr=3e-4, fused=True)
    sample = _goal_sampler(data, batch, seed)
    gamma, expectile, beta, tau = 0.99, 0.9, 3.0, 0.005

    def q_of(net: _Ensemble, x: Tensor, a: Tensor) -> Tensor:
        if discrete:
            return net(x).gather(-1, a.view(1, -1, 1).expand(2, -1, 1)).squeeze(-1)
        return net(torch.cat([x, a], -1)).squeeze(-1)

    def step() -> None:
        x, a, x2, xa, r, m = sample()
        with torch.no_grad():
            tq = q_of(q_target, x, a).min(0).values
        value = v(x).squeeze(-1)
        adv = tq - value
        v_loss = (torch.where(adv >= 0, expectile, 1 - expectile) * adv.square()).mean()
        target = r + gamma * m * v(x2).squeeze(-1).detach()
        q_loss = (q_of(q, x, a) - target).square().mean(1).sum()
        with torch.no_grad():
            weight = torch.exp(beta * (q_of(q_target, xa, a).min(0).values - v(xa).squeeze(-1))).clamp(max=100.0)
        out = actor(xa)
        log_prob = -F.cross_entropy(out, a, reduction="none") if discrete else _log_prob_of(out, a)
        actor_loss = -(weight * log_prob).mean()
        opt.zero_grad(set_to_none=True)
        (v_loss + q_loss + actor_loss).backward()
        opt.step()
        _polyak(q_target, q, tau)

    return step


BARE_LOOPS: dict[str, Callable[..., Step]] = {
    "bc": bare_bc,
    "iql": bare_iql,
    "cql": bare_cql,
    "gcbc": bare_gcbc,
    "gciql": bare_gciql,
}


def make_bare_loop(
    algo: str,
    data: dict[str, Any],
    *,
    discrete: bool,
    batch: int = 256,
    hidden: tuple[int, ...] = (256, 256),
    seed: int = 0,
    precision: str = "fp32",
) -> Step:
    """One training step of the bare reference loop for ``algo`` (a key of :data:`BARE_LOOPS`).

    ``precision="bf16"``: hidden layers under bfloat16 autocast (TD targets included), last layers in float32, as
    the framework's mixed precision does.
    """
    global _BUILD_DTYPE
    _BUILD_DTYPE = {"fp32": None, "bf16": torch.bfloat16}[precision]
    try:
        return BARE_LOOPS[algo](data, discrete=discrete, batch=batch, hidden=hidden, seed=seed)
    finally:
        _BUILD_DTYPE = None
