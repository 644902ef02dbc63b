"""Training pipeline: MLflow-tracked runs, registered models, OPE-based selection, distributed training.

Heavy dependencies load lazily: ``from decision_core.training import train`` imports torch and MLflow only when
``train`` is first used.
"""

from __future__ import annotations

from typing import Any

from decision_core.training.config import TrainConfig, build_config

__all__ = ["ModelRef", "TrainConfig", "TrainResult", "build_config", "load_agent_from_uri", "select_champion", "train"]

_LAZY = {
    "train": "decision_core.training.loop",
    "TrainResult": "decision_core.training.loop",
    "ModelRef": "decision_core.training.models",
    "load_agent_from_uri": "decision_core.training.models",
    "select_champion": "decision_core.training.select",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'decision_core.training' has no attribute '{name}'")
