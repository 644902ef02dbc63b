"""Offline RL algorithms behind one agent contract (see ``decision_core.algos.base``).

Goal-conditioned: ``gcbc``, ``gciql``, ``crl``, ``hiql``, ``qrl``. Reward task: ``iql``, ``cql``, and ``bc`` (behaviour
cloning, the non-goal baseline). Third parties register agents under the entry-point group
``decision_core.algorithms`` (value: ``"package.module:AgentClass"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from decision_core.algos.base import (
    ActResult,
    Agent,
    AgentConfig,
    Exploration,
    GoalConditionedConfig,
    configure_torch_threads,
    read_agent_meta,
)
from decision_core.data.dataset import FeatureStats
from decision_core.errors import RegistryError, SpecError
from decision_core.registry import Registry
from decision_core.schema import DomainSpec

__all__ = [
    "ALGORITHMS",
    "ActResult",
    "Agent",
    "AgentConfig",
    "Exploration",
    "GoalConditionedConfig",
    "configure_torch_threads",
    "create_agent",
    "load_agent",
]


def _validate(name: str, obj: object) -> type[Agent]:
    if not (isinstance(obj, type) and issubclass(obj, Agent)):
        raise RegistryError(f"algorithm '{name}' must subclass decision_core.algos.Agent, got {obj!r}")
    for attr in ("name", "goal_conditioned", "config_class"):
        if not hasattr(obj, attr):
            raise RegistryError(f"algorithm '{name}' ({obj.__name__}) does not define the class attribute '{attr}'")
    if obj.name != name:
        raise RegistryError(f"algorithm registered as '{name}' declares name '{obj.name}'; they must match")
    return obj


ALGORITHMS: Registry[type[Agent]] = Registry("algorithm", group="decision_core.algorithms", validate=_validate)
ALGORITHMS.register("bc", "decision_core.algos.bc:BCAgent")
ALGORITHMS.register("gcbc", "decision_core.algos.gcbc:GCBCAgent")
ALGORITHMS.register("gciql", "decision_core.algos.gciql:GCIQLAgent")
ALGORITHMS.register("crl", "decision_core.algos.crl:CRLAgent")
ALGORITHMS.register("hiql", "decision_core.algos.hiql:HIQLAgent")
ALGORITHMS.register("qrl", "decision_core.algos.qrl:QRLAgent")
ALGORITHMS.register("iql", "decision_core.algos.iql:IQLAgent")
ALGORITHMS.register("cql", "decision_core.algos.cql:CQLAgent")


def create_agent(
    name: str,
    spec: DomainSpec,
    stats: FeatureStats | None = None,
    config: AgentConfig | dict[str, Any] | None = None,
    seed: int = 0,
) -> Agent:
    """A fresh agent of algorithm ``name``; ``config`` may be a config object, a (partial) dict or None."""
    cls = ALGORITHMS.get(name)
    if isinstance(config, dict):
        config = cls.config_class.from_dict(config)
    return cls(spec, stats, config, seed=seed)


def load_agent(path: str | Path) -> Agent:
    """Rebuild an agent saved with ``Agent.save(path)`` (weights + JSON; no pickled code)."""
    meta = read_agent_meta(Path(path))
    algo = meta.get("algo")
    if not isinstance(algo, str):
        raise SpecError(f"{path}/agent.json does not name its algorithm ('algo')")
    return ALGORITHMS.get(algo).load(path, meta)
