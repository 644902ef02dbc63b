"""Offline policy evaluation: how well would a policy do, judged only from logs of another one.

:func:`evaluate_policy` runs the estimators of :mod:`decision_core.ope.estimators` (IPS, SNIPS, per-decision
weighted IS, doubly robust, weighted DR, FQE, model-based) on a domain's logged data for one
:class:`TargetPolicy`, each with a bootstrap confidence interval and an effective sample size.

The task being evaluated is either a reward (the domain's reward expression, any expression over its features,
or ``"logged"``) or a goal: for a goal, the return of an episode is 1 if it reaches the goal within the logged
horizon and 0 otherwise (reward 1 on the first step whose next state reaches it; the episode is cut there),
which is exactly the success rate the simulator evaluation measures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from decision_core.ope.estimators import (
    ESTIMATORS,
    NEEDS_DYNAMICS,
    NEEDS_PROPENSITIES,
    NEEDS_Q_MODEL,
    Difference,
    Estimate,
    OPEError,
    OPEInputs,
    compare,
    estimate,
    on_policy_value,
)
from decision_core.ope.fqe import FittedQ, FQEConfig, fit_fqe
from decision_core.ope.model import DynamicsModel, GoalCheck, ModelConfig, fit_model, fit_transitions, model_values
from decision_core.ope.policy import AgentPolicy, MixturePolicy, TargetPolicy, UniformPolicy
from decision_core.store import episodes_with_propensities

__all__ = [
    "ESTIMATORS",
    "AgentPolicy",
    "Difference",
    "DynamicsModel",
    "Estimate",
    "FQEConfig",
    "FittedQ",
    "GoalCheck",
    "MixturePolicy",
    "ModelConfig",
    "OPEError",
    "OPEInputs",
    "OPEReport",
    "OPETask",
    "TargetPolicy",
    "UniformPolicy",
    "compare",
    "compare_policies",
    "default_estimator",
    "estimate",
    "evaluate_policy",
    "evaluate_tasks",
    "fit_task_model",
    "fit_task_models",
    "goal_task",
    "reward_task",
    "supported_estimators",
    "task_models",
    "weighs_by_default",
]


@dataclass
class OPETask:
    """The logged steps and per-step rewards of the task a policy is evaluated on."""

    description: str
    rows: np.ndarray  # (M,) indices of the logged steps used, episodes back to back
    rewards: np.ndarray  # (M,) float64
    episode_starts: np.ndarray  # (E,) into rows
    episode_ends: np.ndarray  # (E,) exclusive
    #: A goal task's (values, mask) over the outcome features: reward 1 on reaching it, the episode cut there.
    goal: tuple[np.ndarray, np.ndarray] | None = None


def reward_task(arrays: Any, reward: str | None = None) -> OPETask:
    """The reward task: ``reward`` (an expression or ``"logged"``), else the spec's reward, else logged rewards."""
    spec = arrays.spec
    source = reward if reward is not None else spec.reward
    if source is None and arrays.has_rewards:
        source = "logged"
    try:
        from decision_core.reward import rewards_for
    except ImportError:  # pragma: no cover - the reward module ships with the package
        if source not in (None, "logged"):
            raise OPEError(f"reward expressions are unavailable; cannot evaluate '{source}'") from None
        rewards = arrays.rewards
    else:
        rewards = rewards_for(arrays, source)
    n = arrays.n_steps
    return OPETask(
        description=f"reward: {source}",
        rows=np.arange(n, dtype=np.int64),
        rewards=np.asarray(rewards, np.float64),
        episode_starts=np.asarray(arrays.episode_starts, np.int64),
        episode_ends=np.asarray(arrays.episode_ends, np.int64),
    )


def goal_task(arrays: Any, goal: np.ndarray, goal_mask: np.ndarray, name: str = "goal") -> OPETask:
    """Success at reaching ``goal``: reward 1 on the first step whose next state reaches it; episodes cut there."""
    spec = arrays.spec
    goal = np.asarray(goal, np.float32)
    goal_mask = np.asarray(goal_mask, np.bool_)
    if goal.shape != (len(spec.outcomes),) or goal_mask.shape != goal.shape:
        raise OPEError(f"goal must give one value and mask entry per outcome feature ({', '.join(spec.outcome_names)})")
    outcomes = arrays.next_states[:, spec.outcome_index]
    close = np.abs(outcomes - goal[None, :]) <= spec.tolerances[None, :]
    reached = np.all(close | ~goal_mask[None, :], axis=1)
    n = arrays.n_steps
    starts, ends = np.asarray(arrays.episode_starts), np.asarray(arrays.episode_ends)
    first = np.minimum.reduceat(np.where(reached, np.arange(n), n), starts)
    cut_ends = np.where(first < ends, first + 1, ends)
    lengths = cut_ends - starts
    rows = np.concatenate([np.arange(s, e) for s, e in zip(starts, cut_ends, strict=True)])
    new_ends = np.cumsum(lengths)
    rewards = reached[rows].astype(np.float64)
    targets = ", ".join(f"{f}={v:g}" for f, v, m in zip(spec.outcome_names, goal, goal_mask, strict=True) if m)
    return OPETask(
        description=f"goal {name}: {targets}",
        rows=rows.astype(np.int64),
        rewards=rewards,
        episode_starts=(new_ends - lengths).astype(np.int64),
        episode_ends=new_ends.astype(np.int64),
        goal=(goal, goal_mask),
    )


@dataclass
class OPEReport:
    """Every estimator's estimate of one policy's value on one task."""

    policy: str
    task: str
    estimates: dict[str, Estimate]
    behaviour_value: float
    n_episodes: int
    n_steps: int
    gamma: float
    skipped: dict[str, str] = field(default_factory=dict)
    #: Evaluated episodes with a logged propensity on every step: the ones importance sampling weighs.
    propensity_episodes: int = 0

    def metrics(self, prefix: str = "ope") -> dict[str, float]:
        """Flat metrics for tracking: ``ope/<estimator>``, ``.../ci_low``, ``.../ci_high``, ``.../ess``."""
        out = {f"{prefix}/behaviour": self.behaviour_value}
        for name, e in self.estimates.items():
            out[f"{prefix}/{name}"] = e.value
            out[f"{prefix}/{name}/ci_low"] = e.ci_low
            out[f"{prefix}/{name}/ci_high"] = e.ci_high
            out[f"{prefix}/{name}/ess"] = e.ess
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "task": self.task,
            "behaviour_value": self.behaviour_value,
            "n_episodes": self.n_episodes,
            "n_steps": self.n_steps,
            "gamma": self.gamma,
            "estimates": {k: v.to_dict() for k, v in self.estimates.items()},
            "skipped": dict(self.skipped),
            "propensity_episodes": self.propensity_episodes,
        }


#: Share of the episodes that must carry propensities for training's and select's default estimator to be
#: importance sampling (SNIPS) rather than FQE: on fewer, SNIPS would weigh a small, perhaps unrepresentative part.
WEIGHTED_DEFAULT_SHARE = 0.5


def weighs_by_default(arrays: Any) -> bool:
    """Whether importance sampling is the default estimator for ``arrays``: at least
    :data:`WEIGHTED_DEFAULT_SHARE` of its episodes have a logged propensity on every step."""
    logged = arrays.propensity_episodes
    return bool(logged.size) and float(logged.mean()) >= WEIGHTED_DEFAULT_SHARE


def default_estimator(arrays: Any) -> str:
    """The estimator that judges policies on ``arrays`` when none is named: the domain spec's ``ope_estimator``
    where the logs support it (importance sampling needs propensities on :data:`WEIGHTED_DEFAULT_SHARE` of the
    episodes), else SNIPS where they have them, else FQE."""
    declared = arrays.spec.ope_estimator
    weighs = weighs_by_default(arrays)
    if declared is not None and (declared not in NEEDS_PROPENSITIES or weighs):
        return str(declared)
    return "snips" if weighs else "fqe"


def supported_estimators(
    arrays: Any, policy: TargetPolicy | None, *, stochastic: bool = True
) -> tuple[list[str], dict[str, str]]:
    """The estimators the data and policy allow, and why each other one is not. Importance sampling needs one
    episode with a logged propensity on every step; it then weighs only such episodes (see :func:`evaluate_policy`).
    Without a ``policy`` at hand, ``stochastic`` says whether the policy to be evaluated will have one."""
    usable, skipped = [], {}
    has_props = bool(arrays.propensity_episodes.any())
    stochastic = policy.stochastic if policy is not None else stochastic
    for name in ESTIMATORS:
        if name in NEEDS_PROPENSITIES and not has_props:
            skipped[name] = "the logs lack propensities (no episode has one on every step)"
        elif name in NEEDS_PROPENSITIES and not stochastic:
            skipped[name] = "a deterministic continuous policy has no density"
        else:
            usable.append(name)
    return usable, skipped


def evaluate_policy(
    arrays: Any,
    policy: TargetPolicy,
    *,
    rng: np.random.Generator,
    estimators: Sequence[str] | None = None,
    task: OPETask | None = None,
    gamma: float = 1.0,
    n_bootstrap: int = 200,
    confidence: float = 0.9,
    fqe: FQEConfig | None = None,
    max_episodes: int | None = None,
    fqe_refits: int = 0,
    model: ModelConfig | None = None,
    model_refits: int = 0,
    dynamics: DynamicsModel | None = None,
) -> OPEReport:
    """Estimate ``policy``'s value on ``task`` (default: the reward task) from the logged ``arrays``.

    ``estimators=None`` runs every estimator the data supports (listing the others in ``skipped``); naming an
    estimator the data cannot support raises :class:`OPEError` saying why. ``max_episodes`` evaluates on a
    random subset of episodes (for periodic evaluation during training).

    Where only some episodes have a logged propensity on every step (logs that mix, e.g. impressions with
    propensities and ratings without), the importance-sampling estimators weigh those episodes only: their
    estimates' ``n_episodes`` and the report's ``propensity_episodes`` say how many; ``fqe``, ``mb`` and the
    logged policy's value use every episode.

    ``fqe``'s interval by default resamples only the episodes' start values under one fitted model, which
    ignores the model's own uncertainty; ``fqe_refits > 0`` refits the model that many times on bootstrap
    resamples of the episodes and takes the interval from those refits (slower, honest).

    ``mb`` fits a dynamics model on all of the task's steps (``model`` configures it; also when ``max_episodes``
    evaluates a subset) unless ``dynamics`` passes one fitted by
    :func:`fit_task_model` on the same arrays and task: the model does not depend on the policy, so one fit serves
    every policy evaluated on that task. Like ``fqe``'s default, its interval resamples episodes under one model;
    ``model_refits > 0`` takes it from that many models refitted on bootstrap resamples instead.
    """
    names, skipped = _named_estimators(arrays, policy, estimators)
    task = task or reward_task(arrays)
    episodes = _TaskEpisodes.of(task, max_episodes, rng)
    starts, ends, rows, rewards = episodes.starts, episodes.ends, episodes.rows, episodes.rewards
    names, skipped, logged = _weighable(arrays, episodes, names, skipped, explicit=estimators is not None)
    inputs, dynamics = _policy_inputs(
        arrays, policy, episodes, names, task=task, gamma=gamma, fqe=fqe, model=model, dynamics=dynamics, rng=rng
    )
    if dynamics is not None:
        model = dynamics.config  # refits (model_refits) use the settings of the model that was evaluated
    weighed = _weighed_inputs(inputs, names, logged)
    results = {
        name: estimate(
            name,
            weighed if name in NEEDS_PROPENSITIES else inputs,
            rng=rng,
            n_bootstrap=n_bootstrap,
            confidence=confidence,
        )
        for name in names
    }
    if "fqe" in results and fqe_refits > 0:

        def fqe_value(local: np.ndarray, new_starts: np.ndarray, new_ends: np.ndarray) -> float:
            r = rows[local]
            fitted = fit_fqe(
                arrays.spec,
                arrays.states[r],
                arrays.actions[r],
                rewards[local],
                arrays.next_states[r],
                new_starts,
                new_ends,
                policy,
                action_masks=None if arrays.action_masks is None else arrays.action_masks[r],
                config=_with_gamma(fqe, gamma),
                value_range=_value_range(task),
                rng=rng,
            )
            return float(np.mean(fitted.v0))

        results["fqe"] = _refit_interval(results["fqe"], starts, ends, fqe_refits, fqe_value, rng)
    if "mb" in results and model_refits > 0:

        def mb_value(local: np.ndarray, new_starts: np.ndarray, new_ends: np.ndarray) -> float:
            r = rows[local]
            resampled = OPETask(task.description, r, rewards[local], new_starts, new_ends, task.goal)
            refit = fit_task_model(arrays, resampled, config=model, rng=rng)
            values = model_values(
                refit,
                policy,
                arrays.states[r[new_starts]],
                _rollout_horizons(arrays, new_starts, new_ends, r),
                start_masks=None if arrays.action_masks is None else arrays.action_masks[r[new_starts]],
                gamma=gamma,
                rng=rng,
            )
            return float(np.mean(values))

        results["mb"] = _refit_interval(results["mb"], starts, ends, model_refits, mb_value, rng)
    return OPEReport(
        policy=policy.name,
        task=task.description,
        estimates=results,
        behaviour_value=on_policy_value(inputs),
        n_episodes=len(starts),
        n_steps=len(rows),
        gamma=gamma,
        skipped=skipped,
        propensity_episodes=int(logged.sum()),
    )


def compare_policies(
    arrays: Any,
    policy: TargetPolicy,
    baseline: TargetPolicy,
    *,
    estimator: str,
    rng: np.random.Generator,
    task: OPETask | None = None,
    gamma: float = 1.0,
    n_bootstrap: int = 200,
    confidence: float = 0.9,
    fqe: FQEConfig | None = None,
    max_episodes: int | None = None,
    model: ModelConfig | None = None,
    dynamics: DynamicsModel | None = None,
) -> Difference:
    """``estimator``'s estimate of ``value(policy) - value(baseline)`` on ``task``, with a paired bootstrap interval
    (:func:`~decision_core.ope.estimators.compare`): both policies are evaluated on the same episodes (the same
    random subset when ``max_episodes`` cuts them) and every bootstrap replicate resamples those episodes once for
    both. This is how to ask whether a candidate is worse than the model it would replace; each policy's own
    interval answers a different question, and the two overlap long after the difference is clear.

    ``fqe`` fits one Q model per policy; ``mb`` fits one dynamics model (or uses ``dynamics``) for both. Their
    intervals resample episodes under the fitted models, as :func:`evaluate_policy`'s do by default.
    """
    names, _ = _named_estimators(arrays, policy, [estimator])
    _named_estimators(arrays, baseline, names)  # refuses what it cannot run for the baseline either
    task = task or reward_task(arrays)
    episodes = _TaskEpisodes.of(task, max_episodes, rng)
    names, _, logged = _weighable(arrays, episodes, names, {}, explicit=True)
    sides = []
    for target in (policy, baseline):
        inputs, dynamics = _policy_inputs(
            arrays, target, episodes, names, task=task, gamma=gamma, fqe=fqe, model=model, dynamics=dynamics, rng=rng
        )
        sides.append(_weighed_inputs(inputs, names, logged) if estimator in NEEDS_PROPENSITIES else inputs)
    return compare(estimator, sides[0], sides[1], rng=rng, n_bootstrap=n_bootstrap, confidence=confidence)


@dataclass(frozen=True)
class _TaskEpisodes:
    """The task's steps that an evaluation uses: every episode, or a random subset of ``max_episodes``."""

    rows: np.ndarray  # (M,) logged step indices, episodes back to back
    rewards: np.ndarray  # (M,)
    starts: np.ndarray  # (E,) into rows
    ends: np.ndarray  # (E,) exclusive

    @classmethod
    def of(cls, task: OPETask, max_episodes: int | None, rng: np.random.Generator) -> _TaskEpisodes:
        starts, ends, rows, rewards = task.episode_starts, task.episode_ends, task.rows, task.rewards
        if max_episodes is not None and len(starts) > max_episodes:
            chosen = np.sort(rng.choice(len(starts), size=max_episodes, replace=False))
            lengths = (ends - starts)[chosen]
            local = np.concatenate([np.arange(starts[e], ends[e]) for e in chosen])
            rows, rewards = rows[local], rewards[local]
            ends = np.cumsum(lengths)
            starts = ends - lengths
        return cls(rows, rewards, starts, ends)


def _named_estimators(
    arrays: Any, policy: TargetPolicy, estimators: Sequence[str] | None
) -> tuple[list[str], dict[str, str]]:
    """The estimators to run for ``policy`` and why the others are skipped: every one the data supports when
    ``estimators`` is None, else the named ones, refused with the reason when one cannot run."""
    if estimators is None:
        names, skipped = supported_estimators(arrays, policy)
    else:
        unknown = [e for e in estimators if e not in ESTIMATORS]
        if unknown:
            raise OPEError(f"unknown estimator(s) {unknown}; choose from {', '.join(ESTIMATORS)}")
        names, skipped = list(dict.fromkeys(estimators)), {}
        if any(e in NEEDS_PROPENSITIES for e in names) and not policy.stochastic:
            raise OPEError(
                f"policy '{policy.name}' is deterministic over continuous actions, so importance sampling "
                f"is undefined; evaluate a stochastic policy or use only 'fqe' and 'mb'"
            )
    if not names:
        raise OPEError(f"no estimator can run on this data: {skipped}")
    return names, skipped


def _weighable(
    arrays: Any, episodes: _TaskEpisodes, names: list[str], skipped: dict[str, str], *, explicit: bool
) -> tuple[list[str], dict[str, str], np.ndarray]:
    """Which evaluated episodes carry a propensity on every step, with the importance-sampling estimators dropped
    (or refused, when ``explicit``) where none of the evaluated episodes does although the logs have some."""
    logged = episodes_with_propensities(arrays.propensities[episodes.rows].astype(np.float64), episodes.starts)
    weighted = [e for e in names if e in NEEDS_PROPENSITIES]
    if weighted and not logged.any() and bool(arrays.propensity_episodes.any()):
        # The logs have propensities, but not on the episodes drawn for this evaluation.
        why = (
            f"none of the {len(episodes.starts)} evaluated episodes has a propensity on every step; evaluate more "
            f"episodes (max_episodes) or use 'fqe' or 'mb'"
        )
        if explicit:
            raise OPEError(f"estimator(s) {', '.join(weighted)}: {why}")
        names = [e for e in names if e not in NEEDS_PROPENSITIES]
        skipped = {**skipped, **dict.fromkeys(weighted, why)}
        if not names:
            raise OPEError(f"no estimator can run on this data: {skipped}")
    return names, skipped, logged


def _policy_inputs(
    arrays: Any,
    policy: TargetPolicy,
    episodes: _TaskEpisodes,
    names: Sequence[str],
    *,
    task: OPETask,
    gamma: float,
    fqe: FQEConfig | None,
    model: ModelConfig | None,
    dynamics: DynamicsModel | None,
    rng: np.random.Generator,
) -> tuple[OPEInputs, DynamicsModel | None]:
    """What the estimators ``names`` read for ``policy`` on ``episodes``: its log-probabilities of the logged
    actions, FQE's values, ``mb``'s rollout returns (fitting the dynamics model unless ``dynamics`` is given,
    and returning the model used)."""
    starts, ends, rows, rewards = episodes.starts, episodes.ends, episodes.rows, episodes.rewards
    states = arrays.states[rows]
    actions = arrays.actions[rows]
    masks = None if arrays.action_masks is None else arrays.action_masks[rows]
    inputs = OPEInputs(
        rewards=rewards,
        episode_starts=starts,
        episode_ends=ends,
        target_logp=(
            policy.log_prob(states, actions, masks).astype(np.float64)
            if any(e in NEEDS_PROPENSITIES for e in names)
            else None
        ),
        behaviour_p=arrays.propensities[rows].astype(np.float64),
        gamma=gamma,
    )
    if any(e in NEEDS_Q_MODEL for e in names):
        fitted = fit_fqe(
            arrays.spec,
            states,
            actions,
            rewards,
            arrays.next_states[rows],
            starts,
            ends,
            policy,
            action_masks=masks,
            config=_with_gamma(fqe, gamma),
            value_range=_value_range(task),
            rng=rng,
        )
        inputs.q_sa, inputs.v_s, inputs.v0 = fitted.q_sa, fitted.v_s, fitted.v0
    if any(e in NEEDS_DYNAMICS for e in names):
        if dynamics is None:
            dynamics = fit_task_model(arrays, task, config=model, rng=rng)
        elif not dynamics.spec.same_data(arrays.spec):
            raise OPEError(
                f"the dynamics model was fitted on domain '{dynamics.spec.name}' (version {dynamics.spec.version}), "
                f"not on these logs' '{arrays.spec.name}' (version {arrays.spec.version}); fit it with "
                f"fit_task_model on the same arrays and task"
            )
        inputs.model_v0 = model_values(
            dynamics,
            policy,
            states[starts],
            _rollout_horizons(arrays, starts, ends, rows),
            start_masks=None if masks is None else masks[starts],
            gamma=gamma,
            rng=rng,
        )
    return inputs, dynamics


def _weighed_inputs(inputs: OPEInputs, names: Sequence[str], logged: np.ndarray) -> OPEInputs:
    """The inputs importance sampling weighs: only the episodes with a logged propensity on every step, where
    some lack one. (With no episode logged, the full inputs let the estimator say which rows lack propensities.)"""
    partial = any(e in NEEDS_PROPENSITIES for e in names) and logged.any() and not logged.all()
    return _episodes_of(inputs, np.flatnonzero(logged)) if partial else inputs


def _episodes_of(inputs: OPEInputs, episodes: np.ndarray) -> OPEInputs:
    """``inputs`` restricted to the given episode numbers (steps back to back; per-episode values kept)."""
    starts, ends = inputs.episode_starts[episodes], inputs.episode_ends[episodes]
    local = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)])
    new_ends = np.cumsum(ends - starts)

    def steps(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[local]

    def firsts(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[episodes]

    return OPEInputs(
        rewards=inputs.rewards[local],
        episode_starts=new_ends - (ends - starts),
        episode_ends=new_ends,
        target_logp=steps(inputs.target_logp),
        behaviour_p=steps(inputs.behaviour_p),
        gamma=inputs.gamma,
        q_sa=steps(inputs.q_sa),
        v_s=steps(inputs.v_s),
        v0=firsts(inputs.v0),
        model_v0=firsts(inputs.model_v0),
    )


def _refit_interval(
    point: Estimate,
    starts: np.ndarray,
    ends: np.ndarray,
    refits: int,
    value_of: Callable[[np.ndarray, np.ndarray, np.ndarray], float],
    rng: np.random.Generator,
) -> Estimate:
    """A model-based estimator's interval from models refitted on bootstrap resamples of the episodes.

    ``value_of(local, starts, ends)`` refits on the steps ``local`` (indices into the evaluated steps, episodes
    back to back with the given boundaries) and returns the refitted model's estimate.
    """
    replicates = []
    for _ in range(refits):
        chosen = rng.integers(0, len(starts), size=len(starts))
        lengths = (ends - starts)[chosen]
        local = np.concatenate([np.arange(starts[e], ends[e]) for e in chosen])
        new_ends = np.cumsum(lengths)
        replicates.append(value_of(local, new_ends - lengths, new_ends))
    alpha = (1.0 - point.confidence) / 2.0
    low, high = np.quantile(np.asarray(replicates + [point.value]), [alpha, 1.0 - alpha])
    return Estimate(
        estimator=point.estimator,
        value=point.value,
        ci_low=float(min(low, point.value)),
        ci_high=float(max(high, point.value)),
        ess=point.ess,
        n_episodes=point.n_episodes,
        confidence=point.confidence,
    )


def fit_task_model(
    arrays: Any, task: OPETask, *, config: ModelConfig | None = None, rng: np.random.Generator
) -> DynamicsModel:
    """The dynamics, reward and end model of ``task``'s logged steps, for the ``mb`` estimator.

    An episode's last step ends it where the logs say it terminated there, or where the task cut the episode
    (the step that reached a goal); any other last step is where the logs stop, not where the episode ended. A
    goal task's model learns the dynamics and the logged terminations only: reaching the goal is read off each
    rolled-out state (:class:`~decision_core.ope.model.GoalCheck`).
    """
    rows, ends = task.rows, task.episode_ends
    if task.goal is not None:
        return fit_task_models(arrays, [task], config=config, rng=rng)[0]
    return fit_model(
        arrays.spec,
        arrays.states[rows],
        arrays.actions[rows],
        task.rewards,
        arrays.next_states[rows],
        ends,
        _ended(arrays, rows, ends),
        config=config,
        rng=rng,
    )


def fit_task_models(
    arrays: Any, tasks: Sequence[OPETask], *, config: ModelConfig | None = None, rng: np.random.Generator
) -> list[DynamicsModel]:
    """Models for several goal tasks in one fit: goal tasks need no reward or end of their own (a rollout succeeds
    where its state reaches the goal), so they share the dynamics and the logged ends, learned from every step any
    of them covers. Each returned model serves its task as :func:`fit_task_model`'s would."""
    if not tasks:
        return []
    if any(t.goal is None for t in tasks):
        raise OPEError("fit_task_models shares one fit among goal tasks; fit other tasks with fit_task_model")
    rows = np.unique(np.concatenate([t.rows for t in tasks]))
    shared = _fit_goal_dynamics(arrays, rows, config=config, rng=rng)
    return [dataclasses.replace(shared, goal=_goal_check(arrays.spec, t.goal)) for t in tasks if t.goal is not None]


def task_models(
    arrays: Any,
    tasks: Sequence[OPETask],
    *,
    config: ModelConfig | None = None,
    rng: np.random.Generator,
    models: dict[str, DynamicsModel] | None = None,
) -> list[DynamicsModel]:
    """``mb``'s model of each task: the goal tasks share one fit (:func:`fit_task_models`), any other task gets its
    own (:func:`fit_task_model`). ``models`` keeps them by task description across calls on the same ``arrays``: a
    task found there is not fitted again, and the models fitted are added. One seed for the fits is drawn from
    ``rng`` whether or not anything is fitted, so equally seeded generators stay in step after the call."""
    models = {} if models is None else models
    fit_rng = np.random.default_rng(rng.integers(2**63))
    unfitted = list({t.description: t for t in tasks if t.goal is not None and t.description not in models}.values())
    fitted = fit_task_models(arrays, unfitted, config=config, rng=fit_rng)
    models.update(zip([t.description for t in unfitted], fitted, strict=True))
    for t in tasks:
        if t.description not in models:
            models[t.description] = fit_task_model(arrays, t, config=config, rng=fit_rng)
    return [models[t.description] for t in tasks]


def evaluate_tasks(
    arrays: Any,
    jobs: Sequence[tuple[TargetPolicy, OPETask]],
    *,
    rng: np.random.Generator,
    estimators: Sequence[str] | None = None,
    model: ModelConfig | None = None,
    models: dict[str, DynamicsModel] | None = None,
    **kwargs: Any,
) -> list[OPEReport]:
    """:func:`evaluate_policy` for each ``(policy, task)`` (``kwargs`` passed on), with the goal tasks sharing one
    fit of ``mb``'s model (:func:`fit_task_models`) instead of one each.

    ``models`` keeps ``mb``'s fitted models by task description across calls on the same ``arrays``
    (:func:`task_models`): the model does not depend on the policy, so the candidates that ``select`` scores share
    one fit, and calls with equally seeded generators still meet the same episodes and bootstrap draws."""
    tasks = [task for _, task in jobs]
    dynamics: list[DynamicsModel | None] = [None] * len(jobs)
    if any(e in NEEDS_DYNAMICS for e in estimators or ESTIMATORS):
        dynamics = list(task_models(arrays, tasks, config=model, rng=rng, models=models))
    return [
        evaluate_policy(
            arrays, policy, rng=rng, estimators=estimators, task=task, model=model, dynamics=fitted, **kwargs
        )
        for (policy, task), fitted in zip(jobs, dynamics, strict=True)
    ]


def _fit_goal_dynamics(
    arrays: Any, rows: np.ndarray, *, config: ModelConfig | None, rng: np.random.Generator
) -> DynamicsModel:
    """The dynamics and the logged terminations of ``rows`` (the end output; the reward output is unused)."""
    return fit_transitions(
        arrays.spec,
        arrays.states[rows],
        arrays.actions[rows],
        np.zeros(len(rows)),
        arrays.next_states[rows],
        np.asarray(arrays.terminated, np.bool_)[rows],
        config=config,
        rng=rng,
    )


def _goal_check(spec: Any, goal: tuple[np.ndarray, np.ndarray]) -> GoalCheck:
    values, mask = goal
    return GoalCheck(
        index=np.asarray(spec.outcome_index),
        values=np.asarray(values, np.float64),
        mask=np.asarray(mask, np.bool_),
        tolerances=np.asarray(spec.tolerances, np.float64),
    )


def _ended(arrays: Any, rows: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """(E,) whether each task episode's last step ended it: a logged termination, or a cut by the task."""
    starts, stops = np.asarray(arrays.episode_starts), np.asarray(arrays.episode_ends)
    stop_of_row = np.repeat(stops, stops - starts)
    last = rows[ends - 1]
    return np.asarray(arrays.terminated, np.bool_)[last] | (last + 1 < stop_of_row[last])


def _rollout_horizons(arrays: Any, starts: np.ndarray, ends: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Steps to roll each episode out for: its logged length where the logs just stop, else the longest logged
    episode (where it ended, the model's end probability decides when a rollout stops)."""
    longest = int(np.max(np.asarray(arrays.episode_ends) - np.asarray(arrays.episode_starts)))
    return np.where(_ended(arrays, rows, ends), longest, ends - starts).astype(np.int64)


def _value_range(task: OPETask) -> tuple[float, float] | None:
    """The range every return of ``task`` lies in, where it is known: a goal task's success is 0 or 1."""
    return (0.0, 1.0) if task.goal is not None else None


def _with_gamma(config: FQEConfig | None, gamma: float) -> FQEConfig:
    from dataclasses import replace

    return replace(config or FQEConfig(), gamma=gamma)
