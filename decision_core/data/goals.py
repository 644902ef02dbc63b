"""Hindsight goal sampling over a domain's outcome features.

A goal for transition ``i`` (state ``s_i``, action ``a_i``, next state ``s'_i``) is the outcome reached after some
step ``j`` of the logs: ``outcome(s'_j)``. The row ``j`` is drawn from a mixture (OGBench's convention):

- **current** (``p_curgoal``): ``j = i``, the outcome this very transition reached;
- **trajectory** (``p_trajgoal``): ``j`` later in the same episode, ``i + Geometric(1 - discount) - 1`` (capped at
  the episode end) or uniform over ``[i, end)``;
- **random** (``p_randomgoal``): any row of the dataset.

Value and actor goals are drawn from separate mixtures. The goal is *reached* by the transition when
``|outcome(s'_i) - goal| <= tolerance`` on every specified feature (the domain's tolerances); that sets the
success, the reward (``success - 1`` with ``gc_negative``, else ``success``) and the bootstrap mask (0 once the goal
is reached or the episode truly ended). With ``terminal_failure`` an episode that truly ends without reaching the
goal never reaches it: under ``gc_negative`` that transition's reward is the return of never arriving,
``-1 / (1 - discount)`` (without ``gc_negative`` the zero bootstrap already says so); otherwise ending an episode
looks one step from every goal, and a policy that follows the critic greedily ends episodes (says bye, hangs up)
instead of pursuing goals. **Partial goals**: with probability ``p_partial`` only a random subset of
the outcome features is specified (its size uniform in ``[1, G]``, then the features uniformly); masked goal values
are zeroed and the mask travels with the goal, so a caller may state only the outcomes they care about.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from decision_core.data.dataset import Batch, OfflineDataset
from decision_core.errors import SpecError


@dataclass(frozen=True)
class GoalSamplerConfig:
    """The goal mixtures one algorithm trains with; each algorithm file sets its own defaults."""

    #: Value goals: probability of the current transition's own outcome.
    value_p_curgoal: float = 0.2
    #: Value goals: probability of an outcome reached later in the same episode.
    value_p_trajgoal: float = 0.5
    #: Value goals: probability of an outcome from a random step of the logs.
    value_p_randomgoal: float = 0.3
    #: Value goals: trajectory offset geometric with the discount (True) or uniform to the episode end (False).
    value_geom_sample: bool = True
    #: Actor goals: the same mixture for the policy's goals.
    actor_p_curgoal: float = 0.0
    actor_p_trajgoal: float = 1.0
    actor_p_randomgoal: float = 0.0
    actor_geom_sample: bool = False
    #: Probability that a goal is partial (a random subset of outcome features unspecified, at least one kept).
    p_partial: float = 0.5
    #: Probability that an actor goal is empty (nothing specified): the policy then learns to act like the logs,
    #: which is what a goal-conditioned agent does when asked to act with no goal.
    actor_p_empty_goal: float = 0.05
    #: Reward ``success - 1`` (True: -1 per step until reached) instead of ``success``.
    gc_negative: bool = True
    #: An episode that truly ends without reaching the goal counts as never reaching it (reward
    #: ``-1 / (1 - discount)`` under ``gc_negative``) rather than as one more step of ``-1``.
    terminal_failure: bool = False
    #: Steps ahead of the low-level subgoal for hierarchical policies (0: no subgoal fields).
    subgoal_steps: int = 0

    def __post_init__(self) -> None:
        for prefix in ("value", "actor"):
            ps = [getattr(self, f"{prefix}_p_{k}") for k in ("curgoal", "trajgoal", "randomgoal")]
            if any(not (0.0 <= p <= 1.0) for p in ps):
                raise SpecError(f"goal sampling: {prefix}_p_* must each be in [0, 1], got {ps}")
            if abs(sum(ps) - 1.0) > 1e-6:
                raise SpecError(
                    f"goal sampling: {prefix}_p_curgoal + {prefix}_p_trajgoal + {prefix}_p_randomgoal must sum "
                    f"to 1, got {sum(ps):.6g}"
                )
        for name in ("p_partial", "actor_p_empty_goal"):
            if not (0.0 <= getattr(self, name) <= 1.0):
                raise SpecError(f"goal sampling: {name} must be in [0, 1], got {getattr(self, name)}")
        if self.subgoal_steps < 0:
            raise SpecError(f"goal sampling: subgoal_steps must be >= 0, got {self.subgoal_steps}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GoalSampler:
    """Batches of transitions with hindsight-relabelled value and actor goals; seeded, repeats exactly."""

    def __init__(self, dataset: OfflineDataset, config: GoalSamplerConfig, *, discount: float, seed: int = 0) -> None:
        if not (0.0 < discount < 1.0):
            raise SpecError(f"goal sampling: discount must be in (0, 1), got {discount}")
        self.dataset = dataset
        self.config = config
        self.discount = discount
        self.generator = torch.Generator().manual_seed(seed)
        self.n_outcomes = int(dataset.next_outcomes.shape[1])

    # -- pieces ------------------------------------------------------------------------------------------------
    def _rand(self, *shape: int) -> Tensor:
        return torch.rand(shape, generator=self.generator)

    def goal_rows(self, idx: Tensor, ends: Tensor, p_cur: float, p_traj: float, geom: bool) -> Tensor:
        """Rows whose reached outcome is the goal for each transition in ``idx`` (ends: exclusive episode ends)."""
        b = idx.shape[0]
        g = self.generator
        random_rows = torch.randint(0, self.dataset.n, (b,), generator=g)
        if geom:
            offsets = torch.empty(b).geometric_(1.0 - self.discount, generator=g).long()  # in [1, inf)
            traj_rows = torch.minimum(idx + offsets - 1, ends - 1)
        else:
            span = (ends - idx).double()
            traj_rows = idx + (self._rand(b).double() * span).long().clamp_max(ends - idx - 1)
        p_traj_given_not_cur = p_traj / (1.0 - p_cur) if p_cur < 1.0 else 0.0
        rows = torch.where(self._rand(b) < p_traj_given_not_cur, traj_rows, random_rows)
        return torch.where(self._rand(b) < p_cur, idx, rows)

    def goal_masks(self, b: int, p_empty: float = 0.0) -> Tensor:
        """(B, G) bool: all True, or with probability ``p_partial`` a random non-empty subset.

        A partial goal first draws how many features it keeps, uniformly in ``[1, G]``, then which ones. Keeping
        each feature with probability 1/2 instead would make goals of one or two features (what callers state
        most often) vanishingly rare in domains with many outcome features (10 features: 1% of partial goals).
        """
        gdim = self.n_outcomes
        partial = self._rand(b) < self.config.p_partial
        sizes = torch.randint(1, gdim + 1, (b, 1), generator=self.generator)
        # The `sizes` features with the smallest uniform keys: a uniformly random subset of that size.
        ranks = self._rand(b, gdim).argsort(-1).argsort(-1)
        keep = ranks < sizes
        mask = torch.where(partial.unsqueeze(-1), keep, torch.ones_like(keep))
        if p_empty > 0.0:
            mask &= ~(self._rand(b) < p_empty).unsqueeze(-1)
        return mask

    def reached(self, outcomes: Tensor, goals: Tensor, masks: Tensor) -> Tensor:
        """(B,) bool: ``outcomes`` within tolerance of ``goals`` on every specified feature."""
        close = (outcomes - goals).abs() <= self.dataset.tolerances
        return (close | ~masks).all(-1)

    # -- batches -----------------------------------------------------------------------------------------------
    def sample(self, batch_size: int) -> Batch:
        c = self.config
        ds = self.dataset
        idx = torch.randint(0, ds.n, (batch_size,), generator=self.generator)
        ends = ds.episode_ends[idx].long()
        batch = ds.transitions(idx)
        reached_now = ds.next_outcomes[idx]

        v_rows = self.goal_rows(idx, ends, c.value_p_curgoal, c.value_p_trajgoal, c.value_geom_sample)
        v_masks = self.goal_masks(batch_size)
        v_goals = ds.next_outcomes[v_rows] * v_masks
        success = self.reached(reached_now, v_goals, v_masks).float()
        batch.value_goals = v_goals
        batch.value_goal_masks = v_masks
        batch.value_successes = success
        if c.gc_negative:
            batch.value_rewards = success - 1.0
            if c.terminal_failure:
                failed_end = (batch.terminals > 0) & (success < 1)
                never = torch.full_like(success, -1.0 / (1.0 - self.discount))
                batch.value_rewards = torch.where(failed_end, never, batch.value_rewards)
        else:
            batch.value_rewards = success
        batch.value_masks = (1.0 - success) * (1.0 - batch.terminals)

        a_rows = self.goal_rows(idx, ends, c.actor_p_curgoal, c.actor_p_trajgoal, c.actor_geom_sample)
        a_masks = self.goal_masks(batch_size, c.actor_p_empty_goal)
        batch.actor_goals = ds.next_outcomes[a_rows] * a_masks
        batch.actor_goal_masks = a_masks

        if c.subgoal_steps > 0:
            k = c.subgoal_steps
            low_rows = torch.minimum(idx + k - 1, ends - 1)
            batch.low_goals = ds.next_outcomes[low_rows]
            # The high level proposes the outcome k steps ahead, but never past its goal when that goal lies
            # later in the same episode.
            in_traj = (a_rows >= idx) & (a_rows < ends)
            high_rows = torch.where(in_traj, torch.minimum(low_rows, a_rows), low_rows)
            batch.high_targets = ds.next_outcomes[high_rows]
            batch.high_target_states = ds.next_states_at(high_rows)
        return batch
