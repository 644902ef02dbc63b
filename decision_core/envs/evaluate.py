"""Judge policies in a domain simulator: goal success, steps to goal, reward-task return, normalised score.

For every policy, each goal of the domain's fixed goal set (or of the ``goals`` asked for) is pursued in
``episodes`` episodes (an episode succeeds when, after some action, the outcome features are within tolerance of
the goal; it stops there), and the reward task is run in ``episodes`` further episodes without a goal. The
**normalised score** is ``100 * (R - R_random) / (R_oracle - R_random)`` on the mean reward-task return ``R``.
Every figure comes with a percentile bootstrap confidence interval over episodes (explicit RNG). The random and
oracle baselines (which anchor the score) and the behaviour baseline are always run beside the evaluated policy.

Returns are the simulator's own reward unless ``reward`` names another task: an expression over the state
features (:mod:`decision_core.reward`), computed on every simulated transition (state, next state) for every
policy alike. The oracle pursues the simulator's reward, not that expression, so it anchors no score under it:
a custom task's report has returns and no normalised score (NaN).

Rollouts are vectorised (one batched dynamics call per step for a whole chunk of episodes), and every policy
meets the same starting worlds: the RNG of a (goal, chunk) depends only on the seed, the goal and the chunk.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.table import Table

from decision_core.envs.base import BatchDynamics, DomainSimulator, Goal, SimPolicy, goal_reached
from decision_core.envs.gym import spec_for
from decision_core.envs.rollout import rollout
from decision_core.errors import SpecError

if TYPE_CHECKING:
    from decision_core.algos.base import Agent, Exploration
    from decision_core.reward import RewardExpression

__all__ = [
    "BASELINES",
    "EvaluationReport",
    "GoalResult",
    "Interval",
    "LearnedPolicy",
    "PolicyResult",
    "evaluate",
    "evaluate_policies",
    "task_reward",
]

BASELINES = ("random", "behaviour", "oracle")
#: ``EvaluationReport.reward`` of returns scored with the simulator's own reward.
SIMULATOR_REWARD = "simulator"


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap confidence interval."""

    mean: float
    low: float
    high: float

    def __str__(self) -> str:
        if math.isnan(self.mean):
            return "n/a"
        return f"{self.mean:.3g} [{self.low:.3g}, {self.high:.3g}]"

    def percent(self) -> str:
        if math.isnan(self.mean):
            return "n/a"
        return f"{100 * self.mean:.1f}% [{100 * self.low:.1f}, {100 * self.high:.1f}]"


@dataclass(frozen=True)
class GoalResult:
    goal: str
    hard: bool
    success_rate: Interval
    #: Mean number of actions taken to reach the goal, over the episodes that reached it (NaN if none did).
    steps_to_goal: float


@dataclass(frozen=True)
class PolicyResult:
    policy: str
    goals: list[GoalResult]
    success_rate: Interval  # mean over the goal set (each goal weighs the same)
    hard_success_rate: Interval  # mean over the hard goals
    steps_to_goal: float  # over all successful goal episodes
    returns: Interval  # reward-task return per episode
    normalised_score: Interval  # 0 = random, 100 = oracle


@dataclass(frozen=True)
class EvaluationReport:
    domain: str
    episodes: int
    seed: int
    confidence: float
    policies: dict[str, PolicyResult] = field(default_factory=dict)
    #: The reward the returns are scored with: :data:`SIMULATOR_REWARD`, or the task's expression (no score then).
    reward: str = SIMULATOR_REWARD

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self, policy: str, prefix: str = "eval/") -> dict[str, float]:
        """Flat metrics of one policy (e.g. for ``mlflow.log_metrics``); NaN ones are left out."""
        r = self.policies[policy]
        m = {
            "success_rate": r.success_rate.mean,
            "success_rate_low": r.success_rate.low,
            "success_rate_high": r.success_rate.high,
            "hard_success_rate": r.hard_success_rate.mean,
            "steps_to_goal": r.steps_to_goal,
            "return": r.returns.mean,
            "return_low": r.returns.low,
            "return_high": r.returns.high,
            "normalised_score": r.normalised_score.mean,
            "normalised_score_low": r.normalised_score.low,
            "normalised_score_high": r.normalised_score.high,
        }
        for g in r.goals:
            m[f"success/{g.goal}"] = g.success_rate.mean
        return {f"{prefix}{k}": float(v) for k, v in m.items() if not math.isnan(v)}

    def table(self) -> Table:
        """One row per policy: success over the goal set and the hard goals, steps, return, score."""
        pct = round(100 * self.confidence)
        scored = "" if self.reward == SIMULATOR_REWARD else f"; returns under reward '{self.reward}', no score"
        t = Table(
            "policy",
            "goal success",
            "hard-goal success",
            "steps to goal",
            "return",
            "normalised score",
            title=f"{self.domain}: {self.episodes} episodes per goal and for the reward task, seed {self.seed} "
            f"({pct}% bootstrap CIs{scored})",
        )
        for name, r in self.policies.items():
            steps = "n/a" if math.isnan(r.steps_to_goal) else f"{r.steps_to_goal:.1f}"
            t.add_row(
                name,
                r.success_rate.percent(),
                r.hard_success_rate.percent(),
                steps,
                str(r.returns),
                str(r.normalised_score),
            )
        return t

    def goal_table(self) -> Table:
        """Success per goal (rows) and policy (columns)."""
        t = Table("goal", *self.policies, title=f"{self.domain}: success per goal")
        first = next(iter(self.policies.values()))
        for i, g in enumerate(first.goals):
            label = f"{g.goal} (hard)" if g.hard else g.goal
            t.add_row(label, *(r.goals[i].success_rate.percent() for r in self.policies.values()))
        return t


class LearnedPolicy(SimPolicy):
    """An agent acting in a simulator: greedy by default, or exploring with ``exploration``.

    Goal-conditioned agents get the episode's goal; in goal-free episodes (the reward task) they get
    ``reward_goal`` when one is given, else an empty goal (every feature masked out). Reward agents get no goal.
    """

    name = "learned"

    def __init__(
        self, agent: Agent, *, exploration: Exploration | None = None, reward_goal: Goal | None = None
    ) -> None:
        self.agent = agent
        self.exploration = exploration
        self.reward_goal = reward_goal

    def act(
        self,
        dynamics: BatchDynamics,
        observations: np.ndarray,
        goals: np.ndarray | None,
        goal_mask: np.ndarray | None,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        b = len(observations)
        spec = self.agent.spec
        if not self.agent.goal_conditioned:
            goals = goal_mask = None
        elif goals is None or goal_mask is None:
            if self.reward_goal is not None:
                values, mask = self.reward_goal.vector(spec)
            else:
                values, mask = np.zeros(len(spec.outcomes), np.float32), np.zeros(len(spec.outcomes), np.bool_)
            goals, goal_mask = np.tile(values, (b, 1)), np.tile(mask, (b, 1))
        result = self.agent.act(
            np.asarray(observations, np.float32),
            goals,
            goal_mask,
            dynamics.action_mask() if spec.has_action_masks else None,
            exploration=self.exploration,
            rng=rng,
        )
        return result.actions, np.asarray(result.propensities, np.float32)


def check_compatible(agent_spec: Any, sim: DomainSimulator, options: Mapping[str, Any] | None = None) -> None:
    """Refuse to evaluate an agent trained on another domain's state or action layout."""
    spec = spec_for(sim, options)
    if list(agent_spec.state_names) != spec.state_names:
        raise SpecError(
            f"the model was trained on domain '{agent_spec.name}' with state features "
            f"{agent_spec.state_names[:6]}…, which do not match simulator '{sim.domain}' ({spec.state_names[:6]}…); "
            f"evaluate it with --domain {agent_spec.name}"
        )
    if (agent_spec.actions.kind, agent_spec.action_dim, agent_spec.n_actions) != (
        spec.actions.kind,
        spec.action_dim,
        spec.n_actions,
    ):
        raise SpecError(
            f"the model's action space ({agent_spec.actions.kind}, dim {agent_spec.action_dim}) does not match "
            f"simulator '{sim.domain}' ({spec.actions.kind}, dim {spec.action_dim})"
        )


def _bootstrap_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot,) means of ``x`` resampled with replacement."""
    if len(x) == 0:
        return np.full(n_boot, np.nan)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    return x[idx].mean(axis=1)


def _interval(point: float, boots: np.ndarray, confidence: float) -> Interval:
    if math.isnan(point) or np.isnan(boots).all():
        return Interval(float(point), float("nan"), float("nan"))
    alpha = (1 - confidence) / 2
    lo, hi = np.nanquantile(boots, [alpha, 1 - alpha])
    return Interval(float(point), float(lo), float(hi))


@dataclass
class _Raw:
    """Per-episode outcomes of one policy."""

    success: list[np.ndarray]  # per goal: (N,) bool
    steps: list[np.ndarray]  # per goal: (N,) float, NaN where not reached
    returns: np.ndarray  # (N,)


def _chunks(episodes: int, batch: int) -> list[tuple[int, int]]:
    return [(c, min(batch, episodes - s)) for c, s in enumerate(range(0, episodes, batch))]


def task_reward(
    sim: DomainSimulator, reward: str | None, options: Mapping[str, Any] | None = None
) -> RewardExpression | None:
    """The expression returns are scored with under ``reward``, or None for the simulator's own reward: ``reward``
    None, ``"logged"`` (the logs' reward column, which the simulator writes from its reward) or the simulator
    spec's own reward (which states it). Any other text is parsed against the spec's features."""
    from decision_core.reward import LOGGED, parse_reward

    spec = spec_for(sim, options)
    if reward is None or reward.strip() in (LOGGED, (spec.reward or "").strip()):
        return None
    return parse_reward(reward, spec)


def _returns(ep: Any, reward: RewardExpression | None) -> np.ndarray:
    """(B,) episode returns: the simulator's rewards, or ``reward`` on each recorded (state, next state)."""
    if reward is None:
        return np.asarray(ep.rewards.astype(np.float64).sum(axis=1))
    b, t, s = ep.observations.shape[0], ep.rewards.shape[1], ep.observations.shape[2]
    states = ep.observations[:, :t].reshape(b * t, s)
    next_states = ep.observations[:, 1 : t + 1].reshape(b * t, s)
    r = reward.evaluate(states, next_states).reshape(b, t).astype(np.float64)
    recorded = np.arange(t)[None, :] < ep.lengths[:, None]  # nothing after an episode's end counts
    return np.asarray(np.where(recorded, r, 0.0).sum(axis=1))


def _run_policy(
    sim: DomainSimulator,
    policy: SimPolicy,
    goals: list[Goal],
    episodes: int,
    seed: int,
    batch: int,
    options: Mapping[str, Any],
    reward: RewardExpression | None = None,
) -> _Raw:
    spec = spec_for(sim, options)
    oi, tol = spec.outcome_index, spec.tolerances
    success, steps = [], []
    # A goal's worlds depend on its place in the simulator's goal set, so it meets the same ones when pursued alone.
    names = [g.name for g in sim.goal_set()]
    for j, goal in enumerate(goals):
        values, mask = goal.vector(spec)
        key = names.index(goal.name) + 1 if goal.name in names else len(names) + j + 1
        ok_parts, step_parts = [], []
        for c, size in _chunks(episodes, batch):
            rng = np.random.default_rng([seed, key, c])
            g, m = np.tile(values, (size, 1)), np.tile(mask, (size, 1))
            ep = rollout(
                sim.dynamics(**options),
                policy,
                batch=size,
                max_steps=sim.max_steps,
                rng=rng,
                goals=g,
                goal_mask=m,
                spec=spec,
                stop_on_goal=True,
            )
            after = ep.observations[:, 1:, :][:, :, oi]  # (B, T, G): observations after each action
            reached = goal_reached(after, g[:, None, :], m[:, None, :], tol)
            reached &= np.arange(after.shape[1])[None, :] < ep.lengths[:, None]
            ok = reached.any(axis=1)
            ok_parts.append(ok)
            step_parts.append(np.where(ok, reached.argmax(axis=1) + 1.0, np.nan))
        success.append(np.concatenate(ok_parts))
        steps.append(np.concatenate(step_parts))
    returns = []
    for c, size in _chunks(episodes, batch):
        rng = np.random.default_rng([seed, 0, c])
        ep = rollout(sim.dynamics(**options), policy, batch=size, max_steps=sim.max_steps, rng=rng)
        returns.append(_returns(ep, reward))
    return _Raw(success, steps, np.concatenate(returns))


def evaluate_policies(
    sim: DomainSimulator,
    policies: Mapping[str, SimPolicy],
    *,
    episodes: int = 200,
    seed: int = 0,
    bootstrap: int = 1000,
    confidence: float = 0.95,
    batch: int = 1024,
    options: Mapping[str, Any] | None = None,
    progress: Any = None,
    goals: Sequence[Goal] | None = None,
    reward: str | None = None,
) -> EvaluationReport:
    """Evaluate ``policies`` (name -> policy) together with the random and oracle baselines.

    ``goals``: the goals pursued (default the simulator's goal set; an empty list runs the reward task only, and
    the success figures are NaN). ``reward``: the task returns are scored under (see :func:`task_reward`; a task
    other than the simulator's own has no normalised score). ``progress`` is an optional
    ``rich.progress.Progress`` to report on. The report lists the baselines first.
    """
    if episodes < 2:
        raise SpecError(f"episodes must be >= 2 for confidence intervals, got {episodes}")
    if not 0 < confidence < 1:
        raise SpecError(f"confidence must be in (0, 1), got {confidence}")
    pursued = list(sim.goal_set() if goals is None else goals)
    if goals is None and not pursued:
        raise SpecError(f"simulator '{sim.domain}' has an empty goal set")
    scored_by = task_reward(sim, reward, options)
    own = sim.policies()
    missing = [b for b in ("random", "oracle") if b not in own]
    if missing:
        raise SpecError(f"simulator '{sim.domain}' lacks the {missing} policy needed to normalise scores")
    everything: dict[str, SimPolicy] = {b: own[b] for b in BASELINES if b in own}
    for name, pol in policies.items():
        if name in everything and everything[name] is not pol:
            raise SpecError(f"policy name '{name}' clashes with a baseline; name it differently")
        everything[name] = pol
    task = progress.add_task(f"evaluating {sim.domain}", total=len(everything)) if progress else None
    raw: dict[str, _Raw] = {}
    for name, pol in everything.items():
        raw[name] = _run_policy(sim, pol, pursued, episodes, seed, batch, options or {}, scored_by)
        if progress:
            progress.advance(task)

    rng = np.random.default_rng([seed, 7919])
    boot_returns = {n: _bootstrap_means(r.returns, bootstrap, rng) for n, r in raw.items()}
    mean_returns = {n: float(r.returns.mean()) for n, r in raw.items()}
    lo_r, hi_r = mean_returns["random"], mean_returns["oracle"]
    hard = [i for i, g in enumerate(pursued) if g.hard]
    nan = Interval(float("nan"), float("nan"), float("nan"))
    results: dict[str, PolicyResult] = {}
    for name, r in raw.items():
        goal_boots = [_bootstrap_means(s.astype(np.float64), bootstrap, rng) for s in r.success]
        goal_results = [
            GoalResult(
                goal=g.name,
                hard=g.hard,
                success_rate=_interval(float(r.success[i].mean()), goal_boots[i], confidence),
                steps_to_goal=float(np.nanmean(r.steps[i])) if r.success[i].any() else float("nan"),
            )
            for i, g in enumerate(pursued)
        ]
        success = nan
        if pursued:
            overall = np.mean(goal_boots, axis=0)
            success = _interval(float(np.mean([s.mean() for s in r.success])), overall, confidence)
        hard_boots = np.mean([goal_boots[i] for i in hard], axis=0) if hard else np.full(bootstrap, np.nan)
        all_steps = np.concatenate(r.steps) if r.steps else np.full(1, np.nan)
        span = hi_r - lo_r
        if span == 0 or scored_by is not None:  # the oracle pursues the simulator's reward, not another task
            score = nan
        else:
            boot_span = boot_returns["oracle"] - boot_returns["random"]
            boots = 100 * (boot_returns[name] - boot_returns["random"]) / np.where(boot_span == 0, np.nan, boot_span)
            score = _interval(100 * (mean_returns[name] - lo_r) / span, boots, confidence)
        results[name] = PolicyResult(
            policy=name,
            goals=goal_results,
            success_rate=success,
            hard_success_rate=_interval(
                float(np.mean([r.success[i].mean() for i in hard])) if hard else float("nan"), hard_boots, confidence
            ),
            steps_to_goal=float(np.nanmean(all_steps)) if np.isfinite(all_steps).any() else float("nan"),
            returns=_interval(mean_returns[name], boot_returns[name], confidence),
            normalised_score=score,
        )
    shown = SIMULATOR_REWARD if scored_by is None else scored_by.text
    return EvaluationReport(sim.domain, episodes, seed, confidence, results, reward=shown)


def evaluate(
    domain: str | DomainSimulator,
    policy: SimPolicy | None = None,
    *,
    name: str = "learned",
    episodes: int = 200,
    seed: int = 0,
    **kwargs: Any,
) -> EvaluationReport:
    """Evaluate one policy (or none: the baselines alone) in a domain's simulator; see :func:`evaluate_policies`."""
    from decision_core.envs import get_simulator

    sim = domain if isinstance(domain, DomainSimulator) else get_simulator(domain)
    if isinstance(policy, LearnedPolicy):
        check_compatible(policy.agent.spec, sim, kwargs.get("options"))
    return evaluate_policies(sim, {name: policy} if policy else {}, episodes=episodes, seed=seed, **kwargs)
