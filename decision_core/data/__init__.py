"""The offline data path: preloaded datasets, feature statistics, transition and hindsight-goal batches."""

from __future__ import annotations

from decision_core.data.dataset import Batch, FeatureStats, OfflineDataset, TransitionSampler
from decision_core.data.goals import GoalSampler, GoalSamplerConfig

__all__ = ["Batch", "FeatureStats", "GoalSampler", "GoalSamplerConfig", "OfflineDataset", "TransitionSampler"]
