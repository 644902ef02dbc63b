"""The contract every built-in domain simulator follows.

A domain simulator brings, for one domain (same name as its adapter and its :class:`DomainSpec`):

- **batched dynamics** (:class:`BatchDynamics`): numpy over ``B`` parallel worlds, written once; the gymnasium
  ``Env`` is the batch of one and the vectorised env is the batch of ``n``, so both run the same code;
- **observations equal to the spec's state vector** (same features, same order), so a policy learned from
  ingested logs acts directly on the simulator, and the adapter, fed the simulator's raw logs, reproduces the
  observations exactly (each domain's tests check this round trip);
- **policies** (:class:`SimPolicy`): ``behaviour`` (how such systems are run today, stochastic, with
  propensities), ``oracle`` (uses hidden state; goal-aware), ``random``;
- a fixed **goal set** (:class:`Goal`), some marked hard, and a **reward task** (the env's reward);
- a **raw-log writer** producing exactly the raw format the domain's adapter reads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from decision_core.schema import DomainSpec


@dataclass(frozen=True)
class Goal:
    """A goal over a subset of the outcome features: reached when every named feature is within tolerance."""

    name: str
    targets: dict[str, float]
    #: Hard goals are the ones the behaviour policy rarely reaches; the quality bars are stated on them.
    hard: bool = False
    description: str = ""

    def vector(self, spec: DomainSpec) -> tuple[np.ndarray, np.ndarray]:
        """(goal values, mask) over ``spec.outcome_names``; unspecified features are 0 with mask False."""
        values = np.zeros(len(spec.outcomes), np.float32)
        mask = np.zeros(len(spec.outcomes), np.bool_)
        for i, name in enumerate(spec.outcome_names):
            if name in self.targets:
                values[i] = self.targets[name]
                mask[i] = True
        return values, mask


def goal_reached(outcomes: np.ndarray, goals: np.ndarray, mask: np.ndarray, tolerances: np.ndarray) -> np.ndarray:
    """(B,) whether each row's outcomes are within tolerance of its goal on every masked feature."""
    close = np.abs(outcomes - goals) <= tolerances
    return np.all(close | ~mask, axis=-1)


@dataclass
class EpisodeBatch:
    """Everything logged while running ``B`` worlds for up to ``T`` steps (padded; ``lengths`` says how long)."""

    observations: np.ndarray  # (B, T+1, S) float32: N+1 observations per N actions
    actions: np.ndarray  # (B, T) int64 for discrete, (B, T, A) float32 for continuous
    propensities: np.ndarray  # (B, T) float32: probability (or density) the acting policy gave the action
    rewards: np.ndarray  # (B, T) float32: the reward task's reward
    terminated: np.ndarray  # (B,) bool: the episode ended by the task itself (not by a time limit)
    lengths: np.ndarray  # (B,) int64
    #: Domain-specific extra per-step fields the raw-log writer needs (e.g. demand, dialogue acts, slot values).
    extras: dict[str, np.ndarray] = field(default_factory=dict)


class BatchDynamics(ABC):
    """Numpy dynamics of ``B`` parallel worlds; hidden state lives here, observations are spec states."""

    @abstractmethod
    def reset(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        """Start ``batch`` new worlds; returns (B, S) observations."""

    @abstractmethod
    def step(self, actions: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Apply (B,) or (B, A) actions; returns (observations, rewards, terminated), each batched."""

    def info(self) -> dict[str, np.ndarray]:
        """Per-world extra fields of the last step (or of the reset) that the raw-log writer needs; each (B, ...).

        Recorded by :func:`~decision_core.envs.rollout.rollout` into ``EpisodeBatch.extras`` as (B, T+1, ...):
        index 0 after ``reset``, index t+1 after the t-th ``step``.
        """
        return {}

    def action_mask(self) -> np.ndarray | None:
        """(B, K) actions available now in each world (None: all of them). Dynamics with a rule override this;
        by default it is the ``action_mask`` field of :meth:`info`, when the dynamics record one."""
        mask = self.info().get("action_mask")
        return None if mask is None else np.asarray(mask, np.bool_)


class SimPolicy(ABC):
    """A policy that may look at the simulator's hidden state (behaviour, oracle) or not (random, learned)."""

    name: ClassVar[str]

    @abstractmethod
    def act(
        self,
        dynamics: BatchDynamics,
        observations: np.ndarray,
        goals: np.ndarray | None,
        goal_mask: np.ndarray | None,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(B,) or (B, A) actions and the (B,) probability (discrete) or density (continuous) of each."""


class DomainSimulator(ABC):
    """One built-in domain: dynamics, policies, goals, reward task and raw-log writer."""

    domain: ClassVar[str]
    env_id: ClassVar[str]
    #: Episode length limit (truncation) used for logging and evaluation.
    max_steps: ClassVar[int]

    @abstractmethod
    def spec(self) -> DomainSpec:
        """The domain spec (identical to the adapter's)."""

    @abstractmethod
    def dynamics(self, **options: object) -> BatchDynamics:
        """A fresh batched dynamics object (``options`` select variants, e.g. continuous actions)."""

    @abstractmethod
    def policies(self) -> dict[str, SimPolicy]:
        """At least ``behaviour``, ``oracle`` and ``random``."""

    @abstractmethod
    def goal_set(self) -> Sequence[Goal]:
        """The fixed goals evaluation uses; at least one is hard."""

    @abstractmethod
    def write_logs(self, episodes: EpisodeBatch, out_dir: Path, *, seed: int, start_episode: int = 0) -> list[Path]:
        """Write ``episodes`` in the raw format the domain's adapter reads; returns the files written."""
