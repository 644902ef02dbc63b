"""Adapters: raw domain logs -> the common state-action-outcome schema in DuckDB.

Built-ins are registered here by dotted path (imported on first use); third parties register through the
entry-point group ``decision_core.adapters`` (read lazily, on the first lookup or listing).
"""

from __future__ import annotations

from adapters.base import Adapter, ColumnMapping, RawColumn
from decision_core.errors import RegistryError
from decision_core.registry import Registry

__all__ = ["ADAPTERS", "Adapter", "ColumnMapping", "RawColumn", "get_adapter"]


def _validate(name: str, obj: object) -> type[Adapter]:
    if not (isinstance(obj, type) and issubclass(obj, Adapter)):
        raise RegistryError(f"adapter '{name}' must be a subclass of adapters.Adapter, got {obj!r}")
    missing = [a for a in ("name", "version", "columns") if not hasattr(obj, a)]
    if missing:
        raise RegistryError(f"adapter '{name}' ({obj.__qualname__}) does not define {', '.join(missing)}")
    return obj


ADAPTERS: Registry[type[Adapter]] = Registry("adapter", group="decision_core.adapters", validate=_validate)
ADAPTERS.register("recommender", "adapters.recommender:RecommenderAdapter")
ADAPTERS.register("inventory", "adapters.inventory:InventoryAdapter")
ADAPTERS.register("inventory_continuous", "adapters.inventory:InventoryContinuousAdapter")
ADAPTERS.register("dialogue", "adapters.dialogue:DialogueAdapter")


def get_adapter(name: str) -> Adapter:
    """An instance of the adapter registered under ``name``."""
    return ADAPTERS.get(name)()
