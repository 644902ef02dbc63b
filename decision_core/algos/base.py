"""The agent contract every algorithm implements, and the behaviour they share.

An algorithm file holds a frozen ``<Name>Config(AgentConfig)`` and a ``<Name>Agent(Agent)`` that builds its
networks (:meth:`Agent.build_networks`), states its policy (:meth:`Agent.policy`) and its update
(:meth:`Agent.update`). Everything else — input normalisation, goal encoding, acting with exploration and
propensities, log-probabilities, saving and loading — lives here once.

Conventions:

- states are raw (B, S) float32; agents normalise with the :class:`~decision_core.data.FeatureStats` stored with them;
- goals are raw outcome values (B, G) over ``spec.outcome_names`` with a (B, G) bool mask (False = unspecified);
  the networks see ``((goal - mean) / std) * mask`` and the mask itself. No goal (``None``) is the empty goal;
- discrete actions are (B,) int64 indices; continuous actions (B, A) float32 inside the Box bounds.
"""

from __future__ import annotations

import json
import os
import types
import typing
from abc import ABC, abstractmethod
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Self, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from decision_core.data.dataset import Batch, FeatureStats, OfflineDataset, TransitionSampler
from decision_core.data.goals import GoalSampler, GoalSamplerConfig
from decision_core.errors import SpecError
from decision_core.schema import BoxActions, DomainSpec

from .nets import (
    EXTRACTIONS,
    MLP,
    Critic,
    EnsembleMLP,
    PolicyDistribution,
    PolicyOutput,
    RewardScale,
    full_precision,
    masked_logits,
    seeded,
    tilted_logits,
)

#: Version of the saved agent layout (agent.json + weights.pt).
AGENT_FORMAT = 1
#: Training precisions (:meth:`Agent.set_precision`): the dtype of the training passes' hidden layers.
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


def configure_torch_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads: ``n``, or ``$DECISION_CORE_THREADS``, or half the cores (1 to 4).

    Small MLPs gain little from more threads, and a busy machine loses a lot from oversubscription: torch's
    workers wait for each other at every operation, so with other work on the cores two threads on a 2-core
    machine trained GCIQL at 3 steps/s against 107 with one.
    """
    if n is None:
        env = os.environ.get("DECISION_CORE_THREADS")
        n = int(env) if env else max(1, min((os.cpu_count() or 1) // 2, 4))
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()


# -- configs -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentConfig:
    """Fields every algorithm has; each algorithm's config adds its own and may change these defaults."""

    #: Transitions per gradient step.
    batch_size: int = 256
    #: Adam learning rate of every network.
    lr: float = 3e-4
    #: Hidden layer widths of every MLP.
    hidden_dims: tuple[int, ...] = (256, 256)
    #: Discount of future rewards; also sets the geometric goal offsets of goal-conditioned sampling.
    discount: float = 0.99

    #: Values of fields added after agents were first saved, for a saved config that lacks them: what those
    #: agents were trained with (a new default applies to new agents only, and the saved weights fit the old).
    saved_before: ClassVar[dict[str, Any]] = {}

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`SpecError` (a ``ValueError``) naming the field and the rule it breaks."""
        self.require(self.batch_size >= 2, "batch_size", "must be >= 2")
        self.require(self.lr > 0, "lr", "must be > 0")
        self.require(
            len(self.hidden_dims) >= 1 and all(int(h) >= 1 for h in self.hidden_dims),
            "hidden_dims",
            "must be a non-empty list of positive widths",
        )
        self.require(0.0 < self.discount < 1.0, "discount", "must be in (0, 1)")

    def require(self, ok: bool, name: str, rule: str) -> None:
        if not ok:
            raise SpecError(f"{type(self).__name__}.{name} {rule} (got {getattr(self, name)!r})")

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Rebuild from :meth:`to_dict` output (or a user's partial dict: missing fields take defaults)."""
        return _from_dict(cls, data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Self:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> Self:
        return replace(self, **changes)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    if not isinstance(data, dict):
        raise SpecError(f"{cls.__name__} must be given as a mapping of field names to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(f"{cls.__name__}: unknown fields {unknown}; known fields: {', '.join(sorted(known))}")
    defaults = {f.name: f.default_factory for f in fields(cls) if f.default_factory is not MISSING}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kind = hints[name]
        if isinstance(kind, type) and is_dataclass(kind) and isinstance(value, dict):
            # A partial nested dict changes those fields of this class's own default (an algorithm's goal
            # mixture), not of the nested class's generic defaults.
            base = defaults[name]() if name in defaults else None
            if base is not None and is_dataclass(base) and not isinstance(base, type):
                value = {**asdict(base), **value}
            value = _from_dict(kind, value)
        elif typing.get_origin(kind) is tuple and isinstance(value, list | tuple):
            value = tuple(value)
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not _is_a(value, kind):
            raise SpecError(f"{cls.__name__}.{name} must be {_describe(kind)}, got {value!r}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise SpecError(f"{cls.__name__}: {exc}") from exc


def _is_a(value: Any, kind: Any) -> bool:
    """Whether a config value (after the conversions above) has the field's annotated type."""
    if kind is float:
        return isinstance(value, float)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in (bool, str):
        return isinstance(value, kind)
    if isinstance(kind, types.UnionType):
        return any(_is_a(value, k) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if typing.get_origin(kind) is tuple:
        (item, _) = typing.get_args(kind)
        return isinstance(value, tuple) and all(_is_a(v, item) for v in value)
    return True  # nested configs are checked field by field


def _describe(kind: Any) -> str:
    if isinstance(kind, types.UnionType):
        return " or ".join(_describe(k) for k in typing.get_args(kind))
    if typing.get_origin(kind) is tuple:
        return "a list of " + {float: "numbers", int: "integers"}.get(typing.get_args(kind)[0], "values")
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string", type(None): "null"}.get(
        kind, str(kind)
    )


@dataclass(frozen=True)
class GoalConditionedConfig(AgentConfig):
    """Config of a goal-conditioned algorithm: adds the hindsight goal mixture it trains with."""

    #: Goal mixture (see :class:`~decision_core.data.GoalSamplerConfig`); each algorithm sets its defaults.
    goals: GoalSamplerConfig = field(default_factory=GoalSamplerConfig)


# -- acting ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exploration:
    """How the served policy explores. ``None`` in :meth:`Agent.act` is the deterministic greedy policy.

    Discrete: with probability ``epsilon`` a uniformly random available action, otherwise the greedy action
    (``temperature=None``) or a sample from ``softmax(logits / temperature)``. Continuous: a sample from the
    policy with its standard deviation scaled by ``temperature`` (1 when ``None``), replaced with probability
    ``epsilon`` by a uniform draw over the Box.
    """

    epsilon: float = 0.0
    temperature: float | None = None

    def __post_init__(self) -> None:
        if not (0.0 <= self.epsilon <= 1.0):
            raise SpecError(f"exploration epsilon must be in [0, 1], got {self.epsilon}")
        if self.temperature is not None and not (self.temperature > 0.0):
            raise SpecError(f"exploration temperature must be > 0 (or None for greedy), got {self.temperature}")


@dataclass(frozen=True)
class ActResult:
    """Chosen actions and the probability (discrete) or density (continuous) the served policy gave them.

    The deterministic greedy policy reports propensity 1.0.
    """

    actions: np.ndarray  # (B,) int64 or (B, A) float32
    propensities: np.ndarray  # (B,) float32


# -- the agent ---------------------------------------------------------------------------------------------------


class Agent(ABC):
    """Base class of every algorithm; see the module docstring for conventions."""

    name: ClassVar[str]
    goal_conditioned: ClassVar[bool]
    config_class: ClassVar[type[AgentConfig]]

    def __init__(
        self,
        spec: DomainSpec,
        stats: FeatureStats | None = None,
        config: AgentConfig | None = None,
        *,
        seed: int = 0,
    ) -> None:
        if config is None:
            config = self.config_class()
        if not isinstance(config, self.config_class):
            raise SpecError(
                f"algorithm '{self.name}' needs a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.spec = spec
        self.stats = stats or FeatureStats.identity(spec)
        self.stats.check(spec)
        self.config = config
        self.seed = int(seed)
        self.n_updates = 0
        #: Source of training-time randomness (policy samples, random actions); explicit, seeded.
        self.generator = torch.Generator().manual_seed(self.seed)
        self.dist = PolicyDistribution(spec)
        self.state_mean = torch.tensor(self.stats.state_mean, dtype=torch.float32)
        self.state_std = torch.tensor(self.stats.state_std, dtype=torch.float32)
        self.outcome_mean = torch.tensor(self.stats.outcome_mean, dtype=torch.float32)
        self.outcome_std = torch.tensor(self.stats.outcome_std, dtype=torch.float32)
        self.n_outcomes = len(spec.outcomes)
        #: Where the networks live and compute (:meth:`to`); the arguments and results of :meth:`act` stay numpy.
        self.device = torch.device("cpu")
        #: Precision of the training passes (:meth:`set_precision`); acting is always float32.
        self.precision = "fp32"
        #: Per optimiser key, the ``DistributedDataParallel`` module that averages its parameters' gradients
        #: across processes (set by :func:`decision_core.training.distributed.data_parallel`; empty otherwise).
        self.data_parallel: dict[str, nn.Module] = {}
        self.nets = seeded(self.seed, lambda: nn.ModuleDict(self.build_networks()))
        for key, module in self.nets.items():
            if key.startswith("target"):
                module.requires_grad_(False)
        self.optimizers: dict[str, torch.optim.Optimizer] = self.build_optimizers()

    # -- what an algorithm provides --------------------------------------------------------------------------
    @abstractmethod
    def build_networks(self) -> dict[str, nn.Module]:
        """The algorithm's networks; keys starting with ``target`` are target copies (no gradients)."""

    def build_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One Adam over all trainable networks; algorithms with separate steps override this."""
        return {"all": self.adam(*[m for k, m in self.nets.items() if not k.startswith("target")])}

    @abstractmethod
    def policy(self, states: Tensor, goals: Tensor | None, goal_masks: Tensor | None) -> PolicyOutput:
        """The policy's output for raw ``states`` and raw goals (None for agents that ignore goals)."""

    @abstractmethod
    def update(self, batch: Batch) -> dict[str, float]:
        """One gradient step on ``batch``; returns namespaced metrics ("critic/loss", "actor/loss", ...)."""

    # -- shared training helpers -----------------------------------------------------------------------------
    def to(self, device: str | torch.device) -> Self:
        """Move the networks and normalisation statistics to ``device`` (e.g. ``"cuda:0"``), in place.

        Parameters keep their identity, so optimisers built before the move step the moved tensors. The training
        generator stays on the CPU (its draws are moved), so saved training state loads on any device.
        """
        device = torch.device(device)
        self.nets.to(device)
        self.dist.to(device)
        for name in ("state_mean", "state_std", "outcome_mean", "outcome_std"):
            setattr(self, name, getattr(self, name).to(device))
        self.device = device
        return self

    def set_precision(self, precision: str) -> Self:
        """Train in ``precision``: "fp32", or "bf16" mixed precision (hidden layers of the training passes in bfloat16).

        bf16 keeps float32 parameters, optimiser state, losses and last layers, and acts in float32; on CPUs with
        AVX-512 BF16 an update ran 1.6-1.9x as fast (``benchmarks/bench_algos_speed.py --precision``); where bfloat16
        is emulated it is slower. Call after :meth:`to`.
        """
        if precision not in PRECISIONS:
            raise SpecError(f"precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
        if precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise SpecError(f"precision 'bf16' needs a GPU with bfloat16 support; {self.device} has none: use fp32")
        for module in self.nets.modules():
            if isinstance(module, MLP | EnsembleMLP):
                module.compute_dtype = PRECISIONS[precision]
        self.precision = precision
        return self

    @property
    def input_dim(self) -> int:
        """Width of :meth:`inputs`: normalised state, plus goal values and mask for goal-conditioned agents."""
        return self.spec.state_dim + (2 * self.n_outcomes if self.goal_conditioned else 0)

    def adam(self, *modules: nn.Module, lr: float | None = None) -> torch.optim.Optimizer:
        """Adam over the trainable parameters of ``modules`` (at ``lr``, default the config's), as one fused kernel
        per step rather than an op per parameter tensor."""
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.config.lr if lr is None else lr, fused=True)

    def norm_states(self, states: Tensor) -> Tensor:
        return (states - self.state_mean) / self.state_std

    def encode_goals(self, goals: Tensor, masks: Tensor) -> Tensor:
        """(B, 2G): normalised goal values zeroed where unspecified, then the mask."""
        m = masks.float()
        return torch.cat([(goals - self.outcome_mean) / self.outcome_std * m, m], dim=-1)

    def inputs(self, states: Tensor, goals: Tensor | None = None, goal_masks: Tensor | None = None) -> Tensor:
        """Network input: normalised states, with the encoded goal appended for goal-conditioned agents."""
        s = self.norm_states(states)
        if not self.goal_conditioned:
            return s
        if goals is None or goal_masks is None:
            goals = torch.zeros(states.shape[0], self.n_outcomes, device=states.device)
            goal_masks = torch.zeros(states.shape[0], self.n_outcomes, dtype=torch.bool, device=states.device)
        return torch.cat([s, self.encode_goals(goals, goal_masks)], dim=-1)

    def step(self, key: str, loss: Tensor) -> None:
        """Back-propagate ``loss`` into the parameters of optimiser ``key`` only, then step it.

        Under data-parallel training the loss first passes through that optimiser's ``DistributedDataParallel``
        module, whose reducer then all-reduces and averages the gradients bucket by bucket while backward runs.
        """
        optimizer = self.optimizers[key]
        optimizer.zero_grad(set_to_none=True)
        parallel = self.data_parallel.get(key)
        if parallel is not None:
            loss = parallel(loss)
        loss.backward(inputs=[p for group in optimizer.param_groups for p in group["params"]])
        optimizer.step()

    def noise(self, *shape: int, uniform: bool = False) -> Tensor:
        """Training-time standard normal (or uniform [0, 1)) draws from the agent's generator, on its device."""
        draw = torch.rand if uniform else torch.randn
        return draw(*shape, generator=self.generator).to(self.device, non_blocking=True)

    def finish_update(self, info: dict[str, Tensor]) -> dict[str, float]:
        """Count the update and turn scalar tensors into floats with one synchronising call."""
        self.n_updates += 1
        keys = list(info)
        values = torch.stack([info[k].detach().float().reshape(()) for k in keys]).tolist()
        return dict(zip(keys, values, strict=True))

    def require_goals(self, batch: Batch) -> None:
        if batch.value_goals is None or batch.actor_goals is None:
            raise SpecError(
                f"algorithm '{self.name}' trains on hindsight goals: sample batches with agent.sampler(dataset)"
            )

    def sampler(self, dataset: OfflineDataset, *, seed: int = 0) -> GoalSampler | TransitionSampler:
        """The batch sampler this algorithm trains with (``.sample(batch_size) -> Batch``); a reward scale among the
        networks that is not set yet is fitted to the dataset's rewards here."""
        sampler: GoalSampler | TransitionSampler
        if self.goal_conditioned:
            goals = getattr(self.config, "goals", GoalSamplerConfig())
            sampler = GoalSampler(dataset, goals, discount=self.config.discount, seed=seed)
        else:
            sampler = TransitionSampler(dataset, seed=seed, require_rewards=self.needs_rewards)
        self.fit_reward_scale(dataset.rewards)
        return sampler

    def fit_reward_scale(self, rewards: Tensor | np.ndarray) -> None:
        """Fit a reward scale among the networks that is not set yet to ``rewards`` (every training step's
        reward; under data-parallel training the whole dataset's, not one process's shard)."""
        for module in self.nets.values():
            if isinstance(module, RewardScale) and not module.is_set:
                module.fit(torch.as_tensor(rewards, dtype=torch.float32))
        self._record_reward_scale()

    def _record_reward_scale(self) -> None:
        """Write the factor a fitted reward scale holds into the config's unset ``reward_scale``, so the config that
        is logged and saved states the factor the agent learned with (the networks keep it too)."""
        if getattr(self.config, "reward_scale", False) is not None:
            return  # no such field, or a factor the config fixed
        for module in self.nets.values():
            if isinstance(module, RewardScale) and module.is_set:
                self.config = self.config.replace(reward_scale=float(module.scale))
                return

    @property
    def task(self) -> str | None:
        """The reward task a reward agent was trained on and is judged by: an expression over the features or
        ``"logged"``, as its config's ``reward`` records it. None for goal-conditioned agents and for agents
        saved before training recorded it, which learned the domain's own reward (``spec.reward``, else the
        logged rewards)."""
        if self.goal_conditioned:
            return None
        reward = getattr(self.config, "reward", None)
        return reward if isinstance(reward, str) else None

    #: Whether training needs a reward on every step (reward-task agents); BC does not.
    needs_rewards: ClassVar[bool] = True

    # -- serving ---------------------------------------------------------------------------------------------
    def _as_tensors(
        self,
        states: np.ndarray,
        goals: np.ndarray | None,
        goal_mask: np.ndarray | None,
        action_mask: np.ndarray | None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        s = np.require(states, np.float32, "W")  # torch wraps arrays it may write; read-only input is copied
        if s.ndim != 2 or s.shape[1] != self.spec.state_dim:
            raise SpecError(
                f"states must be (batch, {self.spec.state_dim}) for domain '{self.spec.name}' "
                f"({', '.join(self.spec.state_names[:8])}{'…' if self.spec.state_dim > 8 else ''}), "
                f"got shape {s.shape}"
            )
        if not np.all(np.isfinite(s)):
            raise SpecError("states contain NaN or infinite values")
        b = s.shape[0]
        g_t = m_t = None
        if goals is not None and self.goal_conditioned:
            g = np.asarray(goals, dtype=np.float32)
            if g.shape != (b, self.n_outcomes):
                raise SpecError(
                    f"goals must be (batch, {self.n_outcomes}) over the outcome features "
                    f"{self.spec.outcome_names}, got shape {g.shape}"
                )
            m = ~np.isnan(g) if goal_mask is None else np.asarray(goal_mask, dtype=np.bool_)
            if m.shape != g.shape:
                raise SpecError(f"goal_mask must have the goals' shape {g.shape}, got {m.shape}")
            if not np.all(np.isfinite(g[m])):
                raise SpecError("goal values of specified outcome features must be finite")
            g_t = torch.from_numpy(np.where(m, g, 0.0).astype(np.float32))
            m_t = torch.from_numpy(m)
        a_t = None
        if action_mask is not None and self.spec.discrete:
            am = np.asarray(action_mask, dtype=np.bool_)
            if am.shape != (b, self.spec.n_actions):
                raise SpecError(f"action_mask must be (batch, {self.spec.n_actions}), got shape {am.shape}")
            empty = np.flatnonzero(~am.any(axis=1))
            if len(empty):
                raise SpecError(f"action_mask row {int(empty[0])} allows no action; allow at least one")
            a_t = torch.from_numpy(am)
        if self.device.type != "cpu":
            g_t, m_t, a_t = (None if t is None else t.to(self.device) for t in (g_t, m_t, a_t))
        return torch.from_numpy(s).to(self.device), g_t, m_t, a_t

    @torch.no_grad()
    @full_precision()
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
        """Actions for a batch of raw states (and goals), with their propensities under the served policy.

        ``goals`` may hold NaN for unspecified features when ``goal_mask`` is None.
        """
        s, g, m, am = self._as_tensors(states, goals, goal_mask, action_mask)
        out = self.policy(s, g, m)
        b = s.shape[0]
        if self.spec.discrete:
            greedy = self.dist.greedy(out, am)
            if exploration is None:
                return ActResult(greedy.cpu().numpy().astype(np.int64), np.ones(b, np.float32))
            k = self.spec.n_actions
            allowed = am.double() if am is not None else torch.ones(b, k, dtype=torch.float64, device=self.device)
            if exploration.temperature is None:
                base = F.one_hot(greedy, k).double()
            else:
                assert out.logits is not None
                base = torch.softmax(masked_logits(out.logits.double() / exploration.temperature, am), -1)
            eps = exploration.epsilon
            probs = ((1.0 - eps) * base + eps * allowed / allowed.sum(-1, keepdim=True)).cpu().numpy()
            cdf = np.cumsum(probs, axis=1)
            u = rng.random((b, 1)) * cdf[:, -1:]
            actions = np.minimum((u >= cdf).sum(axis=1), k - 1).astype(np.int64)
            props = probs[np.arange(b), actions].astype(np.float32)
            return ActResult(actions, props)
        acts = self.spec.actions
        assert isinstance(acts, BoxActions)
        if exploration is None:
            return ActResult(self.dist.greedy(out).cpu().numpy().astype(np.float32), np.ones(b, np.float32))
        temp = exploration.temperature or 1.0
        noise = torch.from_numpy(rng.standard_normal((b, self.spec.action_dim)).astype(np.float32)).to(self.device)
        sampled, _ = self.dist.rsample(out, noise, temp)
        eps = exploration.epsilon
        if eps > 0.0:
            low, high = np.asarray(acts.low, np.float32), np.asarray(acts.high, np.float32)
            uniform = rng.uniform(low, high, size=(b, len(low))).astype(np.float32)
            pick = torch.from_numpy(rng.random(b) < eps).unsqueeze(-1).to(self.device)
            sampled = torch.where(pick, torch.from_numpy(uniform).to(self.device), sampled)
        # The density of the mixture at the returned action (either component may have produced it).
        density = torch.exp(self.dist.log_prob_tempered(out, sampled, temp)).double()
        if eps > 0.0:
            volume = float(np.prod(np.asarray(acts.high) - np.asarray(acts.low)))
            density = (1.0 - eps) * density + eps / volume
        return ActResult(sampled.cpu().numpy().astype(np.float32), density.cpu().numpy().astype(np.float32))

    @torch.no_grad()
    @full_precision()
    def log_prob(
        self,
        states: np.ndarray,
        goals: np.ndarray | None,
        goal_mask: np.ndarray | None,
        actions: np.ndarray,
        action_mask: np.ndarray | None = None,
        *,
        temperature: float = 1.0,
    ) -> np.ndarray:
        """(B,) log-probability (discrete) or log-density (continuous) of ``actions`` under the stochastic
        policy at ``temperature`` (as :class:`Exploration` applies it: logits or standard deviation scaled)."""
        if not temperature > 0.0:
            raise SpecError(f"temperature must be > 0, got {temperature}")
        s, g, m, am = self._as_tensors(states, goals, goal_mask, action_mask)
        out = self.policy(s, g, m)
        if self.spec.discrete:
            a = torch.as_tensor(np.asarray(actions).reshape(-1).astype(np.int64), device=self.device)
            if a.shape[0] != s.shape[0] or bool(((a < 0) | (a >= self.spec.n_actions)).any()):
                raise SpecError(f"actions must be (batch,) indices in [0, {self.spec.n_actions})")
        else:
            a = torch.as_tensor(np.asarray(actions, dtype=np.float32), device=self.device)
            if a.shape != (s.shape[0], self.spec.action_dim):
                raise SpecError(f"actions must be (batch, {self.spec.action_dim}), got {tuple(a.shape)}")
            return self.dist.log_prob_tempered(out, a, temperature).cpu().numpy().astype(np.float32)
        logp = self.dist.log_probs_all(out, am, temperature).gather(-1, a.view(-1, 1)).squeeze(-1)
        return logp.cpu().numpy().astype(np.float32)

    @torch.no_grad()
    @full_precision()
    def action_probs(
        self,
        states: np.ndarray,
        goals: np.ndarray | None = None,
        goal_mask: np.ndarray | None = None,
        action_mask: np.ndarray | None = None,
    ) -> np.ndarray:
        """(B, K) probabilities of every discrete action under the stochastic policy at temperature 1."""
        if not self.spec.discrete:
            raise SpecError(f"action_probs() needs discrete actions; domain '{self.spec.name}' is continuous")
        s, g, m, am = self._as_tensors(states, goals, goal_mask, action_mask)
        return self.dist.log_probs_all(self.policy(s, g, m), am).exp().cpu().numpy().astype(np.float32)

    # -- persistence -----------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``agent.json`` (algorithm, config, spec, stats), ``weights.pt`` (network state_dict) and
        ``optim.pt`` (optimiser state and training generator, for resuming); tensors only, no code."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": AGENT_FORMAT,
            "algo": self.name,
            "config": self.config.to_dict(),
            "spec": self.spec.to_dict(),
            "stats": self.stats.to_dict(),
            "seed": self.seed,
            "n_updates": self.n_updates,
        }
        (path / "agent.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        torch.save(self.nets.state_dict(), path / "weights.pt")
        # Optimiser moments and the training generator, so fine-tuning resumes exactly where training stopped.
        training_state: dict[str, Any] = {"optimizers": {k: o.state_dict() for k, o in self.optimizers.items()}}
        training_state["generator"] = self.generator.get_state()
        torch.save(training_state, path / "optim.pt")
        return path

    @classmethod
    def load(cls, directory: str | Path, meta: dict[str, Any] | None = None) -> Self:
        """Rebuild a saved agent of this class (no code is unpickled)."""
        path = Path(directory)
        meta = meta if meta is not None else read_agent_meta(path)
        if meta.get("algo") != cls.name:
            raise SpecError(f"{path}/agent.json holds algorithm '{meta.get('algo')}', not '{cls.name}'")
        agent = cls(
            DomainSpec.from_dict(meta["spec"]),
            FeatureStats.from_dict(meta["stats"]),
            cls.config_class.from_dict({**cls.config_class.saved_before, **meta["config"]}),
            seed=int(meta.get("seed", 0)),
        )
        try:
            state = torch.load(path / "weights.pt", weights_only=True, map_location="cpu")
            agent.nets.load_state_dict(state)
        except (OSError, RuntimeError) as exc:
            raise SpecError(f"{path}/weights.pt cannot be loaded into a '{cls.name}' agent: {exc}") from exc
        optim_path = path / "optim.pt"
        if optim_path.exists():
            training_state = torch.load(optim_path, weights_only=True, map_location="cpu")
            for k, o in agent.optimizers.items():
                if k in training_state["optimizers"]:
                    o.load_state_dict(training_state["optimizers"][k])
            agent.generator.set_state(training_state["generator"])
        agent.n_updates = int(meta.get("n_updates", 0))
        agent._record_reward_scale()  # saved before configs recorded it: the weights hold the factor
        return agent

    def __repr__(self) -> str:
        return f"{type(self).__name__}(domain={self.spec.name!r}, updates={self.n_updates})"


class ExtractionConfig(typing.Protocol):
    """What :class:`AdvantageExtractionAgent` reads from its config (IQLConfig, GCIQLConfig and QRLConfig have
    these, and the inverse temperature under a name of their own)."""

    #: "closed_form" or "awr".
    extraction: str
    #: Actions below this share of the behaviour's most likely action's probability are excluded (0: none).
    support: float
    #: Cap on the AWR weights.
    max_weight: float


def validate_extraction(config: AgentConfig, temperature_field: str) -> None:
    """The rules of the advantage-extraction fields (the configs of IQL, GCIQL and QRL); ``temperature_field`` names
    the config's inverse temperature (None there means the default)."""
    c = typing.cast(ExtractionConfig, config)
    temperature = getattr(config, temperature_field)
    config.require(
        temperature is None or temperature >= 0.0, temperature_field, "must be >= 0 (or None for the default)"
    )
    config.require(c.extraction in EXTRACTIONS, "extraction", f"must be one of {EXTRACTIONS}")
    config.require(0.0 <= c.support < 1.0, "support", "must be in [0, 1)")
    config.require(c.max_weight > 0.0, "max_weight", "must be > 0")


class AdvantageExtractionAgent(Agent):
    """The policy extraction IQL and GCIQL share, over a ``nets["actor"]`` and a ``nets["critic"]``.

    With ``config.extraction == "closed_form"`` and discrete actions the actor clones the logged actions and the
    policy's logits are ``log pi_b + beta * mean_i Q_i``, restricted to ``config.support``
    (:func:`~decision_core.algos.nets.tilted_logits`); otherwise the policy is the actor, trained by
    advantage-weighted regression with inverse temperature ``beta``.
    """

    #: Name of the config field holding ``beta`` (None there: 20 for the closed form, 3 for AWR).
    beta_field: ClassVar[str]
    #: The closed form tilts only rows that specify a goal feature; a row with none keeps the behaviour prior (QRL,
    #: whose critic's values say nothing there). Copies of the policy, such as serving's numpy one, follow it.
    tilt_needs_goal: ClassVar[bool] = False

    @property
    def extraction_config(self) -> ExtractionConfig:
        return typing.cast(ExtractionConfig, self.config)

    @property
    def closed_form(self) -> bool:
        """Whether the policy is computed exactly from a behaviour-cloned actor and the critic (discrete only)."""
        return self.spec.discrete and self.extraction_config.extraction == "closed_form"

    @property
    def beta(self) -> float:
        b = getattr(self.config, self.beta_field)
        return float(b) if b is not None else (20.0 if self.closed_form else 3.0)

    def extracted_policy(self, x: Tensor) -> PolicyOutput:
        """The policy at network input ``x`` (normalised states, with the goal encoding when goal-conditioned)."""
        out = self.nets["actor"](x)
        if not self.closed_form:
            return out
        assert out.logits is not None
        q = cast(Critic, self.nets["critic"]).all_actions(x).mean(0)
        return PolicyOutput(logits=tilted_logits(out.logits, q, self.beta, self.extraction_config.support))


def read_agent_meta(path: Path) -> dict[str, Any]:
    """The parsed ``agent.json`` of a saved agent directory."""
    file = Path(path) / "agent.json"
    try:
        meta = json.loads(file.read_text())
    except OSError as exc:
        raise SpecError(f"no saved agent at {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise SpecError(f"{file} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != AGENT_FORMAT:
        raise SpecError(
            f"{file} has format {meta.get('format') if isinstance(meta, dict) else '?'}, "
            f"expected {AGENT_FORMAT}; re-save the agent with this version"
        )
    return meta


__all__ = [
    "AGENT_FORMAT",
    "ActResult",
    "AdvantageExtractionAgent",
    "Agent",
    "AgentConfig",
    "Exploration",
    "GoalConditionedConfig",
    "configure_torch_threads",
    "read_agent_meta",
]
