"""Network building blocks and the math every algorithm shares, defined once.

- :class:`MLP` and :class:`EnsembleMLP` (an ensemble as one stack of batched matmuls: twin critics cost one
  ``baddbmm`` per layer, not one module per member);
- :class:`PolicyNet` and :class:`PolicyDistribution`: a categorical policy over masked logits for discrete actions,
  a tanh-squashed Gaussian mapped into the Box bounds (with the change-of-variables density) for continuous ones;
- :class:`Critic`: Q(s, a) ensembles for both action kinds (discrete: one output per action);
- :func:`expectile_loss`, :func:`polyak_update`, :func:`masked_logits`, :func:`awr_weights` and its exact discrete
  counterpart :func:`tilted_logits`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from decision_core.schema import BoxActions, DomainSpec

#: Logit given to unavailable actions: finite (so a masked row never produces NaN) yet exp() underflows to 0.
MASKED_LOGIT = -1e9
#: How far below the least likely supported action :func:`tilted_logits` puts the most likely unsupported one:
#: exp() of it underflows to 0 at any sampling temperature up to 1000, and it stays far above
#: :data:`MASKED_LOGIT`, so where a caller's mask leaves only unsupported actions the best of them is chosen.
UNSUPPORTED_GAP = 1e6
#: Bounds of the Gaussian's log standard deviation (pre-squash); keeps densities finite.
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0
#: Squashed actions are kept this far inside (-1, 1) before atanh so logged boundary actions keep a finite density.
_SQUASH_EPS = 1e-5


#: Set inside :func:`full_precision`: networks ignore their training precision there.
_FULL_PRECISION: ContextVar[bool] = ContextVar("full_precision", default=False)


@contextmanager
def full_precision() -> Iterator[None]:
    """Run every network in float32 inside the block (or the decorated function), whatever precision it trains
    in: acting, propensities and evaluation do not depend on the training precision."""
    token = _FULL_PRECISION.set(True)
    try:
        yield
    finally:
        _FULL_PRECISION.reset(token)


_Built = TypeVar("_Built")


def seeded(seed: int, build: Callable[[], _Built]) -> _Built:
    """``build()`` (networks whose initialisation draws from torch's default generator) with that generator seeded
    by ``seed``, on a fork of it, so the caller's generator state is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def mixed_precision_forward(net: nn.Sequential, x: Tensor, dtype: torch.dtype | None) -> Tensor:
    """``net(x)`` with the hidden layers' matmuls in ``dtype`` (e.g. bfloat16), the last layer in float32.

    The last layer runs in float32 on float32 features, so values and logits are not rounded to bfloat16's three
    significant digits (a critic's advantages are differences of such values). Training passes (TD targets
    included) use ``dtype``; inside :func:`full_precision` (acting, evaluation) everything stays float32.
    Parameters, gradients and optimiser state stay float32.
    """
    if dtype is None or _FULL_PRECISION.get():
        return net(x)
    *hidden, last = net
    with torch.autocast(x.device.type, dtype=dtype):
        for layer in hidden:
            x = layer(x)
    return last(x.float())


class MLP(nn.Module):
    """Linear layers with ReLU (and optional LayerNorm) between them; no activation after the last layer."""

    #: Precision of the training passes' hidden layers (None: float32); set by :meth:`Agent.set_precision`.
    compute_dtype: torch.dtype | None = None

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, *, layer_norm: bool = False) -> None:
        super().__init__()
        dims = [in_dim, *hidden, out_dim]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            last = i == len(dims) - 2
            if not last:
                if layer_norm:
                    layers.append(nn.LayerNorm(dims[i + 1]))
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        return mixed_precision_forward(self.net, x, self.compute_dtype)


class EnsembleLinear(nn.Module):
    """``n`` independent linear layers applied as one batched matmul: (n, B, in) or (B, in) -> (n, B, out)."""

    def __init__(self, n: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.n = n
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default init, per member
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, out_dim).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.n, -1, -1)
        return torch.baddbmm(self.bias, x, self.weight)


class SharedResidualLinear(EnsembleLinear):
    """An :class:`EnsembleLinear` whose outputs share one head: ``weight = shared + residual`` per output column.

    A discrete critic's last layer, with one output per action: :meth:`penalty` (the residuals' squared norm, added
    to the loss) pulls each action's own head toward the shared one as far as the data does not push it away, so
    actions the logs rarely take keep values near the shared estimate instead of their own noisy fit. ``weight``
    and ``bias`` are the effective parameters (what a plain layer would hold), so exporters read it like one.
    """

    def __init__(self, n: int, in_dim: int, out_dim: int) -> None:
        nn.Module.__init__(self)
        self.n = n
        bound = 1.0 / math.sqrt(in_dim)
        self.shared_weight = nn.Parameter(torch.empty(n, in_dim, 1).uniform_(-bound, bound))
        self.shared_bias = nn.Parameter(torch.empty(n, 1, 1).uniform_(-bound, bound))
        self.residual_weight = nn.Parameter(torch.empty(n, in_dim, out_dim).uniform_(-bound, bound))
        self.residual_bias = nn.Parameter(torch.empty(n, 1, out_dim).uniform_(-bound, bound))

    @property
    def weight(self) -> Tensor:  # type: ignore[override]
        return self.shared_weight + self.residual_weight

    @property
    def bias(self) -> Tensor:  # type: ignore[override]
        return self.shared_bias + self.residual_bias

    def penalty(self) -> Tensor:
        return self.residual_weight.pow(2).sum() + self.residual_bias.pow(2).sum()


class EnsembleMLP(nn.Module):
    """An ensemble of ``n`` MLPs with identical shapes; output (n, B, out_dim)."""

    #: Precision of the training passes' hidden layers (None: float32); set by :meth:`Agent.set_precision`.
    compute_dtype: torch.dtype | None = None

    def __init__(self, n: int, in_dim: int, hidden: Sequence[int], out_dim: int, *, layer_norm: bool = False) -> None:
        super().__init__()
        dims = [in_dim, *hidden, out_dim]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(EnsembleLinear(n, dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                if layer_norm:
                    # No affine parameters: they would be shared across members.
                    layers.append(nn.LayerNorm(dims[i + 1], elementwise_affine=False))
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        self.n = n
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        return mixed_precision_forward(self.net, x, self.compute_dtype)


class Critic(nn.Module):
    """An ensemble of Q(x, a): discrete spaces output one value per action, continuous ones take the action.

    ``x`` is whatever the algorithm conditions on (normalised state, plus the goal encoding for goal-conditioned
    critics). Continuous actions are rescaled from the Box to [-1, 1] before entering the network.
    """

    def __init__(
        self,
        spec: DomainSpec,
        in_dim: int,
        hidden: Sequence[int],
        *,
        n: int = 2,
        layer_norm: bool = True,
        shared_action_head: bool = False,
    ) -> None:
        super().__init__()
        self.discrete = spec.discrete
        self.action_scaler = ActionScaler(spec)
        extra = 0 if self.discrete else spec.action_dim
        out = spec.n_actions if self.discrete else 1
        self.net = EnsembleMLP(n, in_dim + extra, hidden, out, layer_norm=layer_norm)
        if shared_action_head and self.discrete:
            # One head shared by every action plus a residual per action (see SharedResidualLinear.penalty).
            last = len(self.net.net) - 1
            self.net.net[last] = SharedResidualLinear(n, ([in_dim, *hidden])[-1], out)

    def penalty(self) -> Tensor | None:
        """The squared norm of the per-action residual heads (None without a shared head)."""
        last = self.net.net[len(self.net.net) - 1]
        return last.penalty() if isinstance(last, SharedResidualLinear) else None

    def with_penalty(self, loss: Tensor, weight: float) -> Tensor:
        """``loss`` plus ``weight`` times :meth:`penalty` (``loss`` itself without a shared head)."""
        penalty = self.penalty()
        return loss if penalty is None else loss + weight * penalty

    def forward(self, x: Tensor, actions: Tensor) -> Tensor:
        """(n, B) Q-values of ``actions`` ((B,) long for discrete, (B, A) for continuous)."""
        if self.discrete:
            q = self.net(x)
            return q.gather(-1, actions.view(1, -1, 1).expand(q.shape[0], -1, 1)).squeeze(-1)
        return self.net(torch.cat([x, self.action_scaler.to_unit(actions)], dim=-1)).squeeze(-1)

    def all_actions(self, x: Tensor) -> Tensor:
        """(n, B, K) Q-values of every discrete action."""
        if not self.discrete:
            raise ValueError("all_actions() is only defined for discrete action spaces")
        return self.net(x)


class ActionScaler(nn.Module):
    """Maps Box actions to [-1, 1] and back (identity for discrete spaces)."""

    center: Tensor
    half_range: Tensor

    def __init__(self, spec: DomainSpec) -> None:
        super().__init__()
        acts = spec.actions
        if isinstance(acts, BoxActions):
            low = torch.tensor(acts.low, dtype=torch.float32)
            high = torch.tensor(acts.high, dtype=torch.float32)
        else:
            low = torch.zeros(1)
            high = torch.ones(1)
        # Buffers that are not saved: the bounds come from the spec stored with the model.
        self.register_buffer("center", (high + low) / 2, persistent=False)
        self.register_buffer("half_range", (high - low) / 2, persistent=False)

    def to_unit(self, actions: Tensor) -> Tensor:
        return (actions - self.center) / self.half_range

    def from_unit(self, unit: Tensor) -> Tensor:
        return unit * self.half_range + self.center


@dataclass
class PolicyOutput:
    """What a policy network emits: logits (discrete) or pre-squash Gaussian parameters (continuous)."""

    logits: Tensor | None = None
    mean: Tensor | None = None
    log_std: Tensor | None = None


class PolicyNet(nn.Module):
    """MLP trunk with a categorical head (discrete) or a state-dependent Gaussian head (continuous)."""

    def __init__(self, spec: DomainSpec, in_dim: int, hidden: Sequence[int], *, layer_norm: bool = False) -> None:
        super().__init__()
        self.discrete = spec.discrete
        out = spec.n_actions if self.discrete else 2 * spec.action_dim
        self.net = MLP(in_dim, hidden, out, layer_norm=layer_norm)

    def forward(self, x: Tensor) -> PolicyOutput:
        out = self.net(x)
        if self.discrete:
            return PolicyOutput(logits=out)
        mean, log_std = out.chunk(2, dim=-1)
        return PolicyOutput(mean=mean, log_std=log_std.clamp(LOG_STD_MIN, LOG_STD_MAX))


def masked_logits(logits: Tensor, action_mask: Tensor | None) -> Tensor:
    """Logits with unavailable actions pushed to :data:`MASKED_LOGIT` (applied before any softmax)."""
    if action_mask is None:
        return logits
    return logits.masked_fill(~action_mask, MASKED_LOGIT)


class PolicyDistribution(nn.Module):
    """Densities, sampling and greedy actions for a :class:`PolicyOutput` in the domain's action space.

    Continuous actions are ``a = center + half_range * tanh(u)``, ``u ~ N(mean, std)``; the density of ``a`` is
    ``N(u) / prod(half_range * (1 - tanh(u)^2))``. Discrete actions: softmax over masked logits.
    """

    def __init__(self, spec: DomainSpec) -> None:
        super().__init__()
        self.discrete = spec.discrete
        self.n_actions = spec.n_actions
        self.scaler = ActionScaler(spec)

    # -- discrete ---------------------------------------------------------------------------------------------
    def log_probs_all(self, out: PolicyOutput, action_mask: Tensor | None = None, temperature=1.0) -> Tensor:
        """(B, K) log-probabilities of every discrete action."""
        assert out.logits is not None
        return F.log_softmax(masked_logits(out.logits / temperature, action_mask), dim=-1)

    # -- both ---------------------------------------------------------------------------------------------------
    def log_prob(self, out: PolicyOutput, actions: Tensor, action_mask: Tensor | None = None) -> Tensor:
        """(B,) log-probability (discrete) or log-density (continuous) of ``actions``."""
        if self.discrete:
            return self.log_probs_all(out, action_mask).gather(-1, actions.view(-1, 1)).squeeze(-1)
        assert out.mean is not None and out.log_std is not None
        unit = self.scaler.to_unit(actions).clamp(-1 + _SQUASH_EPS, 1 - _SQUASH_EPS)
        return self._squashed_log_prob(out.mean, out.log_std, torch.atanh(unit))

    def _squashed_log_prob(self, mean: Tensor, log_std: Tensor, pre: Tensor) -> Tensor:
        # log(1 - tanh(u)^2) as 2 * (log 2 - u - softplus(-2u)): exact, and finite where 1 - tanh(u)^2 underflows
        # in float32 (|u| > ~9), which actors that favour boundary actions reach; -inf there turns losses NaN.
        log_jacobian = 2.0 * (math.log(2.0) - pre - F.softplus(-2.0 * pre)) + torch.log(self.scaler.half_range)
        return gaussian_log_prob(mean, log_std, pre) - log_jacobian.sum(-1)

    def greedy(self, out: PolicyOutput, action_mask: Tensor | None = None) -> Tensor:
        """The mode: argmax over available actions, or the squashed Gaussian mean."""
        if self.discrete:
            assert out.logits is not None
            return masked_logits(out.logits, action_mask).argmax(-1)
        assert out.mean is not None
        return self.scaler.from_unit(torch.tanh(out.mean))

    def rsample(self, out: PolicyOutput, noise: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        """Continuous only: a reparameterised sample from standard-normal ``noise`` and its log-density."""
        assert out.mean is not None and out.log_std is not None
        log_std = out.log_std + math.log(temperature)
        pre = out.mean + log_std.exp() * noise
        return self.scaler.from_unit(torch.tanh(pre)), self._squashed_log_prob(out.mean, log_std, pre)

    def log_prob_tempered(self, out: PolicyOutput, actions: Tensor, temperature: float) -> Tensor:
        """Continuous only: log-density of ``actions`` with the standard deviation scaled by ``temperature``."""
        assert out.mean is not None and out.log_std is not None
        t = PolicyOutput(mean=out.mean, log_std=out.log_std + math.log(temperature))
        return self.log_prob(t, actions)


def expectile_loss(adv: Tensor, diff: Tensor, expectile: float) -> Tensor:
    """Asymmetric squared loss ``|tau - 1(adv < 0)| * diff^2`` (IQL's expectile regression), elementwise."""
    weight = torch.where(adv >= 0, expectile, 1.0 - expectile)
    return weight * diff.pow(2)


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """``target <- (1 - tau) * target + tau * source`` over all parameters, in one fused call."""
    t_params: list[Tensor] = list(target.parameters())
    s_params: list[Tensor] = list(source.parameters())
    torch._foreach_lerp_(t_params, s_params, tau)


def awr_weights(adv: Tensor, temperature: float, max_weight: float = 100.0) -> Tensor:
    """Advantage-weighted regression weights ``min(exp(temperature * adv), max_weight)``, no gradient."""
    return torch.exp(adv.detach() * temperature).clamp(max=max_weight)


#: How a discrete policy is extracted from a critic: exactly (:func:`tilted_logits`) or by AWR (:func:`awr_weights`).
EXTRACTIONS = ("closed_form", "awr")


def tilted_logits(behaviour_logits: Tensor, q: Tensor, beta: float, support: float = 0.0) -> Tensor:
    """(B, K) logits of ``pi(a | s) ∝ pi_b(a | s) * exp(beta * Q(s, a))``, computed exactly over discrete actions.

    This is the policy AWR regresses towards (the maximiser of ``E_pi[A] - KL(pi || pi_b) / beta``; Peng et al.,
    2019; Nair et al., 2020): ``pi_b`` is a behaviour-cloned policy and ``Q - V`` equals ``Q`` up to a per-row
    constant, which softmax ignores. Actions the logs rarely take at ``s`` keep a low ``log pi_b``; those below
    ``support`` times the most likely action's probability are excluded outright (discrete BCQ's threshold,
    Fujimoto et al., 2019), since the critic's values there are extrapolation: the greedy action is the best one
    the data supports, not the critic's argmax over actions it never saw at ``s``.

    Excluded actions keep their order, :data:`UNSUPPORTED_GAP` below the supported ones rather than at
    :data:`MASKED_LOGIT`: an action mask applied afterwards that rules out every supported action leaves the best
    of the actions it allows, not an arbitrary one.
    """
    log_pb = F.log_softmax(behaviour_logits, dim=-1)
    logits = log_pb + beta * q
    if support > 0.0:
        unsupported = log_pb < log_pb.max(-1, keepdim=True).values + math.log(support)
        lowest_supported = logits.masked_fill(unsupported, math.inf).amin(-1, keepdim=True)
        highest_unsupported = logits.masked_fill(~unsupported, -math.inf).amax(-1, keepdim=True)
        shift = (highest_unsupported - lowest_supported + UNSUPPORTED_GAP).clamp_min(0.0)  # 0: none unsupported
        logits = torch.where(unsupported, logits - shift, logits)
    return logits


def normalize_rep(x: Tensor) -> Tensor:
    """Scale each row to length sqrt(dim) (OGBench's goal-representation normalisation)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6) * math.sqrt(x.shape[-1])


def gaussian_log_prob(mean: Tensor, log_std: Tensor, x: Tensor) -> Tensor:
    """(B,) log-density of ``x`` under a diagonal Gaussian (no squashing)."""
    return (-0.5 * ((x - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


class RewardScale(nn.Module):
    """The factor reward-task agents multiply rewards by, kept with the weights (a buffer, no parameters).

    NaN until set: :meth:`fit` sets it to ``1 / std`` of the rewards it is given (the whole dataset when the agent
    builds its sampler), so one temperature or conservative weight means the same on domains whose rewards
    differ in scale by orders of magnitude. A fixed factor from the config is stored the same way.
    """

    scale: Tensor

    def __init__(self, fixed: float | None = None) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(float("nan") if fixed is None else float(fixed)))

    @property
    def is_set(self) -> bool:
        return not bool(torch.isnan(self.scale))

    @torch.no_grad()
    def fit(self, rewards: Tensor) -> None:
        """Set the factor to 1 / std of the finite ``rewards`` (1 when they are constant or absent)."""
        r = rewards[torch.isfinite(rewards)].double()
        std = float(r.std()) if r.numel() > 1 else 0.0
        self.scale.fill_(1.0 / std if std > 1e-6 else 1.0)

    def forward(self, rewards: Tensor) -> Tensor:
        if not self.is_set:
            self.fit(rewards)
        return rewards * self.scale
