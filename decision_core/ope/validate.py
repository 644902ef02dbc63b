"""Validate OPE against truth in a simulator: estimates vs simulated values over policies of different quality.

1. Log episodes with the simulator's behaviour policy (its propensities included) -> :class:`DomainArrays`.
2. For each state-only target policy, run every estimator on those logs.
3. Run the same policy in the simulator for many episodes: its true value (mean return, or goal success).
4. Report each estimator's relative error per policy and its Spearman rank correlation across policies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from decision_core.envs.base import BatchDynamics, DomainSimulator, EpisodeBatch, SimPolicy
from decision_core.envs.rollout import rollout
from decision_core.ope import OPEReport, TargetPolicy, evaluate_policy, fit_task_model, reward_task
from decision_core.ope.fqe import FQEConfig
from decision_core.ope.model import ModelConfig
from decision_core.store import DomainArrays


class SimulatedTarget(SimPolicy):
    """A :class:`TargetPolicy` acting in a simulator on observations only (no hidden state)."""

    name = "target"

    def __init__(self, policy: TargetPolicy) -> None:
        self.policy = policy

    def act(
        self,
        dynamics: BatchDynamics,
        observations: np.ndarray,
        goals: np.ndarray | None,
        goal_mask: np.ndarray | None,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        mask = dynamics.action_mask() if self.policy.spec.has_action_masks else None
        return self.policy.sample(np.asarray(observations, np.float32), mask, rng)


def episodes_to_arrays(sim: DomainSimulator, batch: EpisodeBatch) -> DomainArrays:
    """The logged episodes as the store would return them after ingest (states are the observations)."""
    spec = sim.spec()
    lengths = batch.lengths.astype(np.int64)
    b = len(lengths)
    valid = np.arange(batch.actions.shape[1])[None, :] < lengths[:, None]
    states = batch.observations[:, :-1][valid]
    next_states = batch.observations[:, 1:][valid]
    actions = batch.actions[valid].reshape(int(valid.sum()), -1).astype(np.float32)
    terminated = np.zeros_like(valid)
    terminated[np.arange(b), lengths - 1] = batch.terminated
    truncated = np.zeros_like(valid)
    truncated[np.arange(b), lengths - 1] = ~batch.terminated
    masks = None
    if spec.masked:
        masks = np.asarray(batch.extras["action_mask"][:, :-1][valid], np.bool_)
    ends = np.cumsum(lengths)
    arrays = DomainArrays(
        spec=spec,
        states=np.ascontiguousarray(states, np.float32),
        actions=actions,
        next_states=np.ascontiguousarray(next_states, np.float32),
        rewards=batch.rewards[valid].astype(np.float32),
        propensities=batch.propensities[valid].astype(np.float32),
        terminated=terminated[valid],
        truncated=truncated[valid],
        action_masks=masks,
        episode_starts=ends - lengths,
        episode_ends=ends,
    )
    return arrays.with_derived_masks()  # a once-per-episode rule masks as it does when the store loads


def log_behaviour(sim: DomainSimulator, episodes: int, seed: int) -> DomainArrays:
    """``episodes`` episodes of the simulator's behaviour policy, with its propensities."""
    return log_policy(sim, sim.policies()["behaviour"], episodes, np.random.default_rng([seed, 11]))


def log_policy(sim: DomainSimulator, policy: SimPolicy, episodes: int, rng: np.random.Generator) -> DomainArrays:
    """``episodes`` episodes of ``policy`` in the simulator, logged with its propensities as the store holds them
    (a :class:`SimulatedTarget` logs a served target policy)."""
    batch = rollout(sim.dynamics(), policy, batch=episodes, max_steps=sim.max_steps, rng=rng)
    return episodes_to_arrays(sim, batch)


def true_value(sim: DomainSimulator, policy: TargetPolicy, episodes: int, seed: int) -> tuple[float, float]:
    """Mean undiscounted return of ``policy`` in the simulator, and its standard error."""
    batch = rollout(
        sim.dynamics(),
        SimulatedTarget(policy),
        batch=episodes,
        max_steps=sim.max_steps,
        rng=np.random.default_rng([seed, 23]),
    )
    returns = batch.rewards.astype(np.float64).sum(axis=1)
    return float(returns.mean()), float(returns.std(ddof=1) / np.sqrt(len(returns)))


@dataclass
class PolicyCheck:
    policy: str
    truth: float
    truth_se: float
    report: OPEReport

    def relative_error(self, estimator: str) -> float:
        return abs(self.report.estimates[estimator].value - self.truth) / max(abs(self.truth), 1e-8)


@dataclass
class ValidationReport:
    domain: str
    checks: list[PolicyCheck]
    logged_episodes: int
    behaviour_value: float
    notes: list[str] = field(default_factory=list)

    @property
    def estimators(self) -> list[str]:
        return list(self.checks[0].report.estimates) if self.checks else []

    def spearman(self, estimator: str) -> float:
        from scipy.stats import spearmanr

        truth = [c.truth for c in self.checks]
        est = [c.report.estimates[estimator].value for c in self.checks]
        rho = spearmanr(truth, est).statistic
        return float(rho) if np.isfinite(rho) else 0.0

    def median_relative_error(self, estimator: str) -> float:
        return float(np.median([c.relative_error(estimator) for c in self.checks]))

    def coverage(self, estimator: str) -> float:
        """Share of policies whose true value lies inside the estimator's interval."""
        inside = [
            c.report.estimates[estimator].ci_low <= c.truth <= c.report.estimates[estimator].ci_high
            for c in self.checks
        ]
        return float(np.mean(inside))

    def best(self) -> str:
        return max(self.estimators, key=lambda e: (self.spearman(e), -self.median_relative_error(e)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "logged_episodes": self.logged_episodes,
            "behaviour_value": self.behaviour_value,
            "policies": [
                {"policy": c.policy, "truth": c.truth, "truth_se": c.truth_se, "ope": c.report.to_dict()}
                for c in self.checks
            ],
            "summary": {
                e: {
                    "spearman": self.spearman(e),
                    "median_relative_error": self.median_relative_error(e),
                    "coverage": self.coverage(e),
                }
                for e in self.estimators
            },
            "best": self.best() if self.checks else None,
        }


def validate(
    sim: DomainSimulator,
    logs: DomainArrays,
    policies: Mapping[str, TargetPolicy] | Sequence[TargetPolicy],
    *,
    truth_episodes: int = 2000,
    seed: int = 0,
    fqe: FQEConfig | None = None,
    model: ModelConfig | None = None,
    n_bootstrap: int = 200,
    progress: Any = None,
) -> ValidationReport:
    """OPE on ``logs`` vs the simulated truth for every policy (one dynamics model serves them all)."""
    named = dict(policies) if isinstance(policies, Mapping) else {p.name: p for p in policies}
    checks = []
    task = reward_task(logs, "logged")
    dynamics = fit_task_model(logs, task, config=model, rng=np.random.default_rng([seed, 7]))
    bar = progress.add_task(f"OPE vs truth: {sim.domain}", total=len(named)) if progress else None
    for name, policy in named.items():
        truth, se = true_value(sim, policy, truth_episodes, seed)
        # The simulator's own reward (logged with each step) is what its returns sum, so OPE uses it too.
        report = evaluate_policy(
            logs,
            policy,
            rng=np.random.default_rng([seed, 5]),
            task=task,
            fqe=fqe,
            dynamics=dynamics,
            n_bootstrap=n_bootstrap,
        )
        checks.append(PolicyCheck(name, truth, se, report))
        if progress:
            progress.advance(bar)
    behaviour = checks[0].report.behaviour_value if checks else float("nan")
    return ValidationReport(sim.domain, checks, logs.n_episodes, behaviour)
