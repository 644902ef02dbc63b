"""Fitted Q evaluation: learn the target policy's Q function from logged transitions.

``Q(s, t, a)`` is regressed on ``r + gamma * E_{a'~pi} Q_target(s', t+1, a')`` with a Polyak-averaged target
network. The normalised time step ``t / H`` is an input because logged episodes end at a time limit the state
does not show: with it, the last logged step of an episode is a true end (no bootstrapping) and the learned
values are those of the finite-horizon return the other estimators and the simulator measure.

The target policy's action distribution at every next state is computed once before training (probabilities for
discrete actions, ``n_action_samples`` samples for continuous ones), so training never calls the policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from decision_core.algos.nets import seeded
from decision_core.ope.estimators import OPEError
from decision_core.ope.policy import TargetPolicy
from decision_core.schema import DomainSpec


@dataclass(frozen=True)
class FQEConfig:
    """Hyperparameters of fitted Q evaluation."""

    #: Hidden layer widths of the Q network.
    hidden: tuple[int, ...] = (128, 128)
    #: Gradient steps.
    steps: int = 3000
    batch_size: int = 256
    learning_rate: float = 1e-3
    #: Polyak factor of the target network update (fraction of the online weights mixed in per step).
    tau: float = 0.05
    #: Next-state action samples per transition for continuous actions.
    n_action_samples: int = 8
    #: Discount; must match the estimators'.
    gamma: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"fqe steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"fqe tau must be in (0, 1], got {self.tau}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"fqe gamma must be in (0, 1], got {self.gamma}")
        if self.n_action_samples < 1:
            raise ValueError(f"fqe n_action_samples must be >= 1, got {self.n_action_samples}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ValueError(f"fqe hidden widths must be positive, got {self.hidden}")


@dataclass
class FittedQ:
    """A fitted Q model's values on the logged data it was fitted on."""

    q_sa: np.ndarray  # (N,) Q(s_t, a_t) of the logged actions
    v_s: np.ndarray  # (N,) E_{a~pi} Q(s_t, a)
    v0: np.ndarray  # (E,) value of each episode's first state
    final_loss: float


def _mlp(inp: int, hidden: tuple[int, ...], out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(inp, h), nn.ReLU()]
        inp = h
    layers.append(nn.Linear(inp, out))
    return nn.Sequential(*layers)


def _seeded_mlp(seed: int, inp: int, hidden: tuple[int, ...], out: int) -> nn.Sequential:
    return seeded(seed, lambda: _mlp(inp, hidden, out))


def fit_fqe(
    spec: DomainSpec,
    states: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    next_states: np.ndarray,
    episode_starts: np.ndarray,
    episode_ends: np.ndarray,
    policy: TargetPolicy,
    *,
    action_masks: np.ndarray | None = None,
    next_action_masks: np.ndarray | None = None,
    config: FQEConfig | None = None,
    value_range: tuple[float, float] | None = None,
    rng: np.random.Generator,
) -> FittedQ:
    """Fit Q of ``policy`` on the logged transitions and return its values on them.

    ``value_range`` bounds every return of the task (a goal task's success: ``(0, 1)``): the regression targets
    and the returned values are clipped to it, so extrapolation cannot give a success rate above 1.
    """
    cfg = config or FQEConfig()
    n = len(states)
    if n == 0:
        raise OPEError("fitted Q evaluation needs logged steps; the data has none")
    if value_range is not None and not value_range[0] <= value_range[1]:
        raise OPEError(f"fqe value_range must be (low, high) with low <= high, got {value_range}")
    lengths = (episode_ends - episode_starts).astype(np.int64)
    horizon = float(max(int(lengths.max()), 1))
    t = np.arange(n) - np.repeat(episode_starts, lengths)
    time = (t / horizon).astype(np.float32)[:, None]
    next_time = ((t + 1) / horizon).astype(np.float32)[:, None]
    done = np.zeros(n, np.float32)
    done[episode_ends - 1] = 1.0  # the last logged step of each episode ends it (terminated or at the horizon)

    mean = states.mean(axis=0)
    std = states.std(axis=0) + 1e-6
    reward_scale = float(np.std(rewards)) or 1.0
    torch_gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    init_seed = int(rng.integers(2**31))

    def features(s: np.ndarray, tm: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([(s - mean) / std, tm], axis=1).astype(np.float32))

    x = features(states, time)
    x_next = features(next_states, next_time)
    r = torch.from_numpy((rewards / reward_scale).astype(np.float32))
    not_done = torch.from_numpy(1.0 - done)
    if next_action_masks is None and action_masks is not None:
        # The next state's mask is the next row's mask within an episode (unused at the end: done).
        next_action_masks = np.concatenate([action_masks[1:], action_masks[-1:]], axis=0)

    if spec.discrete:
        k = spec.n_actions
        q_net = _seeded_mlp(init_seed, x.shape[1], cfg.hidden, k)
        a_idx = torch.from_numpy(actions.reshape(n, -1)[:, 0].astype(np.int64))
        pi_next = torch.from_numpy(policy.probs(next_states, next_action_masks).astype(np.float32))
        pi_now = policy.probs(states, action_masks).astype(np.float32)
    else:
        act = torch.from_numpy(np.asarray(actions, np.float32).reshape(n, -1))
        adim = act.shape[1]
        q_net = _seeded_mlp(init_seed, x.shape[1] + adim, cfg.hidden, 1)
        m = cfg.n_action_samples
        samples = np.stack([policy.sample(next_states, None, rng)[0] for _ in range(m)], axis=1)
        next_acts = torch.from_numpy(samples.reshape(n, m, adim).astype(np.float32))
        now_samples = np.stack([policy.sample(states, None, rng)[0] for _ in range(m)], axis=1)
        now_acts = torch.from_numpy(now_samples.reshape(n, m, adim).astype(np.float32))

    in_dim = x.shape[1] + (0 if spec.discrete else act.shape[1])
    target_net = _seeded_mlp(init_seed, in_dim, cfg.hidden, spec.n_actions if spec.discrete else 1)
    target_net.load_state_dict(q_net.state_dict())
    target_net.requires_grad_(False)
    opt = torch.optim.Adam(q_net.parameters(), lr=cfg.learning_rate)

    def q_discrete(net: nn.Module, xs: torch.Tensor) -> torch.Tensor:
        return net(xs)

    def v_continuous(net: nn.Module, xs: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
        b, mm, _ = acts.shape
        inp = torch.cat([xs[:, None, :].expand(b, mm, xs.shape[1]), acts], dim=2).reshape(b * mm, -1)
        return net(inp).reshape(b, mm).mean(dim=1)

    loss_value = float("nan")
    for _ in range(cfg.steps):
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=torch_gen)
        with torch.no_grad():
            if spec.discrete:
                v_next = (q_discrete(target_net, x_next[idx]) * pi_next[idx]).sum(dim=1)
            else:
                v_next = v_continuous(target_net, x_next[idx], next_acts[idx])
            y = r[idx] + cfg.gamma * not_done[idx] * v_next
            if value_range is not None:
                y = y.clamp(value_range[0] / reward_scale, value_range[1] / reward_scale)
        if spec.discrete:
            q = q_discrete(q_net, x[idx]).gather(1, a_idx[idx, None])[:, 0]
        else:
            q = q_net(torch.cat([x[idx], act[idx]], dim=1))[:, 0]
        loss = torch.nn.functional.mse_loss(q, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p, tp in zip(q_net.parameters(), target_net.parameters(), strict=True):
                tp.lerp_(p, cfg.tau)
        loss_value = float(loss.detach())
    if not np.isfinite(loss_value):
        raise OPEError("fitted Q evaluation diverged (non-finite loss); lower fqe learning_rate or steps")

    with torch.no_grad():
        if spec.discrete:
            q_all = q_discrete(q_net, x).numpy().astype(np.float64)
            q_sa = q_all[np.arange(n), a_idx.numpy()]
            v_s = (q_all * pi_now).sum(axis=1)
        else:
            q_sa = q_net(torch.cat([x, act], dim=1))[:, 0].numpy().astype(np.float64)
            v_s = v_continuous(q_net, x, now_acts).numpy().astype(np.float64)
    q_sa *= reward_scale
    v_s *= reward_scale
    if value_range is not None:
        q_sa, v_s = np.clip(q_sa, *value_range), np.clip(v_s, *value_range)
    return FittedQ(q_sa=q_sa, v_s=v_s, v0=v_s[episode_starts], final_loss=loss_value)
