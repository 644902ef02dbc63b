"""Built-in domain simulators (gymnasium environments, policies, goal sets and raw-log writers)."""

from __future__ import annotations

from decision_core.envs.base import BatchDynamics, DomainSimulator, EpisodeBatch, Goal, SimPolicy, goal_reached
from decision_core.errors import RegistryError
from decision_core.registry import Registry

__all__ = [
    "SIMULATORS",
    "BatchDynamics",
    "DomainSimulator",
    "EpisodeBatch",
    "Goal",
    "SimPolicy",
    "get_simulator",
    "goal_reached",
]


def _validate(name: str, obj: object) -> type[DomainSimulator]:
    if not (isinstance(obj, type) and issubclass(obj, DomainSimulator)):
        raise RegistryError(f"simulator '{name}' must subclass decision_core.envs.DomainSimulator, got {obj!r}")
    return obj


SIMULATORS: Registry[type[DomainSimulator]] = Registry(
    "simulator", group="decision_core.simulators", validate=_validate
)
SIMULATORS.register("inventory", "decision_core.envs.inventory:InventorySimulator")
SIMULATORS.register("recommender", "decision_core.envs.recommender:RecommenderSimulator")
SIMULATORS.register("dialogue", "decision_core.envs.dialogue:DialogueSimulator")


def get_simulator(name: str) -> DomainSimulator:
    """An instance of the simulator of domain ``name``."""
    return SIMULATORS.get(name)()
