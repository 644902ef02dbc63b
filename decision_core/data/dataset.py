"""An in-memory offline dataset built once from :class:`~decision_core.store.DomainArrays`, and batch sampling.

Sampling is index arithmetic on preloaded tensors (``torch.randint`` with an explicit ``torch.Generator``): no
per-sample Python, no SQL per batch.

Memory: ``states`` shares memory with the arrays it was built from (no copy). ``next_states`` is not kept: within
an episode the next state of row ``i`` is ``states[i + 1]``; only rows where that does not hold (the last step
of each episode, or logs whose next observation differs from the following row) keep their next state in a small
``tail_states`` table, found through ``tail_pos``. Drop the ``DomainArrays`` after building to free its
``next_states``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from decision_core.errors import SpecError
from decision_core.schema import DomainSpec
from decision_core.store import DomainArrays

#: Standard deviations below this are treated as 1 (constant features are centred, not blown up).
_MIN_STD = 1e-6
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FeatureStats:
    """Per-feature mean/std of the states (and of the outcome features, a subset), stored with every model."""

    state_mean: tuple[float, ...]
    state_std: tuple[float, ...]
    outcome_mean: tuple[float, ...]
    outcome_std: tuple[float, ...]

    @classmethod
    def compute(cls, states: np.ndarray, spec: DomainSpec) -> FeatureStats:
        """Mean/std over ``states`` (N, S), accumulated in float64 chunks (no full-size temporaries)."""
        if states.ndim != 2 or states.shape[1] != spec.state_dim:
            raise SpecError(f"states must be (N, {spec.state_dim}) for domain '{spec.name}', got {tuple(states.shape)}")
        n = states.shape[0]
        if n == 0:
            raise SpecError(f"cannot compute feature statistics of domain '{spec.name}' from zero steps")
        total = np.zeros(spec.state_dim, np.float64)
        total_sq = np.zeros(spec.state_dim, np.float64)
        for lo in range(0, n, _CHUNK):
            chunk = states[lo : lo + _CHUNK].astype(np.float64)
            total += chunk.sum(0)
            total_sq += np.square(chunk).sum(0)
        mean = total / n
        var = np.maximum(total_sq / n - mean**2, 0.0)
        std = np.sqrt(var)
        std = np.where(std < _MIN_STD, 1.0, std)
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
            bad = [spec.state_names[i] for i in np.flatnonzero(~np.isfinite(mean) | ~np.isfinite(std))]
            raise SpecError(f"domain '{spec.name}': state features {bad} contain NaN or infinite values")
        idx = spec.outcome_index
        return cls(
            state_mean=tuple(float(x) for x in mean),
            state_std=tuple(float(x) for x in std),
            outcome_mean=tuple(float(x) for x in mean[idx]),
            outcome_std=tuple(float(x) for x in std[idx]),
        )

    @classmethod
    def identity(cls, spec: DomainSpec) -> FeatureStats:
        """Zero mean, unit std (for agents built before any data is seen)."""
        s, g = spec.state_dim, len(spec.outcomes)
        return cls((0.0,) * s, (1.0,) * s, (0.0,) * g, (1.0,) * g)

    def to_dict(self) -> dict[str, list[float]]:
        return {f.name: list(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureStats:
        try:
            return cls(**{f.name: tuple(float(x) for x in d[f.name]) for f in fields(cls)})
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"feature statistics are missing or malformed: {exc}") from exc

    def check(self, spec: DomainSpec) -> None:
        if len(self.state_mean) != spec.state_dim or len(self.outcome_mean) != len(spec.outcomes):
            raise SpecError(
                f"feature statistics have {len(self.state_mean)} state / {len(self.outcome_mean)} outcome "
                f"features but domain '{spec.name}' has {spec.state_dim} / {len(spec.outcomes)}"
            )


@dataclass
class Batch:
    """A training batch of tensors: what ``Agent.update()`` receives.

    Transition fields are always present; goal fields are set by the
    :class:`~decision_core.data.goals.GoalSampler` (goal-conditioned agents), subgoal fields only when it is
    configured with ``subgoal_steps`` (HIQL).
    """

    states: Tensor  # (B, S) raw (agents normalise)
    actions: Tensor  # (B,) int64 for discrete, (B, A) float32 for continuous
    next_states: Tensor  # (B, S)
    rewards: Tensor  # (B,) the task reward (NaN where not logged)
    terminals: Tensor  # (B,) float 1.0 where the episode truly ended with this step
    action_masks: Tensor | None = None  # (B, K) bool, available actions at `states`
    next_action_masks: Tensor | None = None  # (B, K) bool at `next_states` (all True past an episode end)
    propensities: Tensor | None = None  # (B,) logged behaviour probability/density (NaN where not logged)
    indices: Tensor | None = None  # (B,) int64 dataset rows of the transitions
    # Goal-conditioned value learning (hindsight goals over the outcome features).
    value_goals: Tensor | None = None  # (B, G) raw outcome values, 0 where masked
    value_goal_masks: Tensor | None = None  # (B, G) bool, False = feature not specified
    value_successes: Tensor | None = None  # (B,) float 1.0 when next_state reaches the value goal
    value_rewards: Tensor | None = None  # (B,) success - 1 (gc_negative) or success
    value_masks: Tensor | None = None  # (B,) float 0.0 when the goal is reached or the episode ended: no bootstrap
    # Goal-conditioned policy learning.
    actor_goals: Tensor | None = None
    actor_goal_masks: Tensor | None = None
    # Hierarchical policies: the outcome reached `subgoal_steps` ahead (low level) and the high level's target.
    low_goals: Tensor | None = None  # (B, G) outcome reached min(subgoal_steps, to episode end) ahead
    high_targets: Tensor | None = None  # (B, G) outcome the high level should propose (not beyond its goal)
    high_target_states: Tensor | None = None  # (B, S) the state where that outcome was reached

    @property
    def size(self) -> int:
        return int(self.states.shape[0])

    def to(self, device: torch.device) -> Batch:
        """This batch on ``device`` (itself when it is already there)."""
        if self.states.device == device:
            return self
        present = ((f.name, getattr(self, f.name)) for f in fields(self))
        return replace(self, **{k: v.to(device, non_blocking=True) for k, v in present if v is not None})


class OfflineDataset:
    """A domain's steps as preloaded tensors with per-step episode boundaries."""

    def __init__(self, arrays: DomainArrays, *, rewards: np.ndarray | None = None) -> None:
        """Build from ``arrays``; ``rewards`` (N,) replaces the logged reward (e.g. a reward expression)."""
        spec = arrays.spec
        n = arrays.n_steps
        if n == 0:
            raise SpecError(f"domain '{spec.name}' has no steps; ingest logs before training")
        self.spec = spec
        self.n = n
        states = np.ascontiguousarray(arrays.states, dtype=np.float32)
        self.states = torch.from_numpy(states)  # shares memory with the arrays
        self.stats = FeatureStats.compute(states, spec)

        idx_dtype = np.int32 if n < np.iinfo(np.int32).max else np.int64
        lengths = arrays.episode_ends - arrays.episode_starts
        if np.any(lengths <= 0):
            raise SpecError(f"domain '{spec.name}' has an empty episode in its boundaries")
        ends = np.repeat(arrays.episode_ends.astype(idx_dtype), lengths)
        self.episode_ends = torch.from_numpy(ends)  # (N,) exclusive end of each step's episode
        self.episode_starts_np = arrays.episode_starts.copy()
        self.episode_ends_np = arrays.episode_ends.copy()

        # Rows whose next state is not simply the following row.
        tail = np.zeros(n, np.bool_)
        tail[arrays.episode_ends - 1] = True
        for lo in range(0, n - 1, _CHUNK):
            hi = min(lo + _CHUNK, n - 1)
            differs = np.any(arrays.next_states[lo:hi] != states[lo + 1 : hi + 1], axis=1)
            tail[lo:hi] |= differs
        tail_rows = np.flatnonzero(tail)
        tail_pos = np.full(n, -1, idx_dtype)
        tail_pos[tail_rows] = np.arange(len(tail_rows), dtype=idx_dtype)
        self.tail_states = torch.from_numpy(np.ascontiguousarray(arrays.next_states[tail_rows]))
        self.tail_pos = torch.from_numpy(tail_pos)

        oidx = spec.outcome_index
        self.outcomes = torch.from_numpy(np.ascontiguousarray(states[:, oidx]))
        self.next_outcomes = torch.from_numpy(np.ascontiguousarray(arrays.next_states[:, oidx]))
        self.tolerances = torch.from_numpy(spec.tolerances.copy())

        if spec.discrete:
            acts = arrays.actions[:, 0]
            k = spec.n_actions
            if np.any((acts < 0) | (acts >= k) | (acts != np.round(acts))):
                bad = int(np.flatnonzero((acts < 0) | (acts >= k) | (acts != np.round(acts)))[0])
                raise SpecError(
                    f"domain '{spec.name}' step {bad}: discrete action {acts[bad]} is not an index in [0, {k})"
                )
            self.actions = torch.from_numpy(acts.astype(np.int32 if k < 2**31 else np.int64))
        else:
            self.actions = torch.from_numpy(np.ascontiguousarray(arrays.actions, dtype=np.float32))

        reward = arrays.rewards if rewards is None else np.asarray(rewards, np.float32)
        if reward.shape != (n,):
            raise SpecError(f"rewards must have shape ({n},), got {reward.shape}")
        self.rewards = torch.from_numpy(np.ascontiguousarray(reward, dtype=np.float32))
        self.terminals = torch.from_numpy(np.ascontiguousarray(arrays.terminated, dtype=np.bool_))
        self.propensities = torch.from_numpy(np.ascontiguousarray(arrays.propensities, dtype=np.float32))
        self.action_masks = None if arrays.action_masks is None else torch.from_numpy(arrays.action_masks)

    # -- properties --------------------------------------------------------------------------------------------
    @property
    def n_episodes(self) -> int:
        return len(self.episode_starts_np)

    @property
    def has_rewards(self) -> bool:
        return not bool(torch.isnan(self.rewards).any())

    @property
    def nbytes(self) -> int:
        """Bytes held by this dataset's own tensors (``states`` included although it is shared)."""
        tensors = [
            self.states,
            self.episode_ends,
            self.tail_states,
            self.tail_pos,
            self.outcomes,
            self.next_outcomes,
            self.actions,
            self.rewards,
            self.terminals,
            self.propensities,
        ]
        if self.action_masks is not None:
            tensors.append(self.action_masks)
        return sum(t.numel() * t.element_size() for t in tensors)

    # -- gathering ---------------------------------------------------------------------------------------------
    def next_states_at(self, idx: Tensor) -> Tensor:
        """(B, S) next states of rows ``idx`` (int64)."""
        shifted = self.states[(idx + 1).clamp_max(self.n - 1)]
        pos = self.tail_pos[idx].long()
        if self.tail_states.shape[0] == 0:
            return shifted
        from_tail = self.tail_states[pos.clamp_min(0)]
        return torch.where((pos >= 0).unsqueeze(-1), from_tail, shifted)

    def actions_at(self, idx: Tensor) -> Tensor:
        a = self.actions[idx]
        return a.long() if self.spec.discrete else a

    def transitions(self, idx: Tensor) -> Batch:
        """The transition fields of rows ``idx`` (int64 tensor)."""
        masks = next_masks = None
        if self.action_masks is not None:
            masks = self.action_masks[idx]
            nxt = idx + 1
            within = nxt < self.episode_ends[idx].long()
            next_masks = self.action_masks[nxt.clamp_max(self.n - 1)] | ~within.unsqueeze(-1)
        return Batch(
            states=self.states[idx],
            actions=self.actions_at(idx),
            next_states=self.next_states_at(idx),
            rewards=self.rewards[idx],
            terminals=self.terminals[idx].float(),
            action_masks=masks,
            next_action_masks=next_masks,
            propensities=self.propensities[idx],
            indices=idx,
        )


class TransitionSampler:
    """Uniform transition batches (reward-task agents); seeded, so a run repeats exactly."""

    def __init__(self, dataset: OfflineDataset, *, seed: int = 0, require_rewards: bool = True) -> None:
        if require_rewards and not dataset.has_rewards:
            missing = int(torch.isnan(dataset.rewards).sum())
            raise SpecError(
                f"domain '{dataset.spec.name}': {missing} of {dataset.n} steps have no reward; set a reward "
                f"expression on the domain (spec.reward) or train a goal-conditioned algorithm"
            )
        self.dataset = dataset
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, batch_size: int) -> Batch:
        idx = torch.randint(0, self.dataset.n, (batch_size,), generator=self.generator)
        return self.dataset.transitions(idx)
