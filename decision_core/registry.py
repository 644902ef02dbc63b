"""Named, lazily imported plugin registries (adapters, algorithms, environments, hooks).

Built-ins are registered by dotted path and imported on first use; third parties register through an
entry-point group that is read lazily, on the first lookup or listing, never at import. A name clash is an
error, and an unknown name lists the known ones and suggests the closest.

An entry point that cannot be registered (its name clashes with a registered one, or is not a valid name) is set
aside instead of failing the whole registry: every other entry still registers, :meth:`Registry.rejected` lists
it, and looking up its name raises an error that names the distribution to uninstall or fix. An object that
declares its own ``name`` must be registered under that name: records (provenance, checkpoints) use the declared
name, so a second spelling would not lead back to it.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from decision_core.errors import RegistryError

T = TypeVar("T")


def import_dotted(path: str) -> object:
    """Import ``"package.module:attribute"`` (or ``"package.module.attribute"``)."""
    module_name, _, attribute = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attribute:
        raise RegistryError(f"'{path}' is not a dotted path of the form 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryError(f"cannot import module '{module_name}' for '{path}': {exc}") from exc
    try:
        return getattr(module, attribute)
    except AttributeError as exc:
        raise RegistryError(f"module '{module_name}' has no attribute '{attribute}' (from '{path}')") from exc


class Registry(Generic[T]):
    """A name -> object registry whose entries are imported on first use.

    ``kind`` names what is registered, for messages ("adapter", "algorithm"); ``group`` is the entry-point
    group third parties register under; ``validate`` checks an object when it is first loaded and raises
    :class:`RegistryError` with a reason when it does not satisfy the contract.
    """

    def __init__(
        self,
        kind: str,
        group: str | None = None,
        validate: Callable[[str, object], T] | None = None,
    ) -> None:
        self.kind = kind
        self.group = group
        self._validate = validate
        self._targets: dict[str, str | object] = {}
        self._origins: dict[str, str] = {}
        self._loaded: dict[str, T] = {}
        self._rejected: dict[str, list[str]] = {}
        self._entry_points_read = False

    def register(self, name: str, target: str | object, *, origin: str = "built-in") -> None:
        """Register ``target`` (an object or a dotted path) under ``name``; a clash raises."""
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise RegistryError(f"{self.kind} name '{name}' must be alphanumeric with '_' or '-'")
        if name in self._targets:
            raise RegistryError(
                f"{self.kind} '{name}' is already registered (by {self._origins[name]}); "
                f"cannot register it again from {origin}. Choose another name."
            )
        self._targets[name] = target
        self._origins[name] = origin

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests and for plugins that are being reloaded)."""
        self._targets.pop(name, None)
        self._origins.pop(name, None)
        self._loaded.pop(name, None)

    def _read_entry_points(self) -> None:
        if self._entry_points_read or self.group is None:
            return
        self._entry_points_read = True  # first, so that a lookup from inside a plugin's import does not recurse
        for ep in entry_points(group=self.group):
            dist = ep.dist.name if ep.dist else "an unknown distribution"
            origin = f"entry point '{ep.name}' of {dist}"
            if self._targets.get(ep.name) == ep.value and self._origins[ep.name] == origin:
                continue  # the same distribution seen twice on the path
            fix = (
                f"Uninstall {dist} (pip uninstall {dist}) or have it register under another name in the entry-point "
                f"group '{self.group}'."
            )
            if ep.name in self._targets:
                # One bad plugin must not take the others down: it is set aside, and its name reports the clash.
                reason = (
                    f"{origin} claims the name already registered by {self._origins[ep.name]}, so neither is used "
                    f"under it. {fix}"
                )
            else:
                try:
                    self.register(ep.name, ep.value, origin=origin)
                    continue
                except RegistryError as exc:
                    reason = f"{origin} was not registered: {exc} {fix}"
            self._rejected.setdefault(ep.name, []).append(reason)

    def rejected(self) -> dict[str, str]:
        """Names claimed by entry points that could not be registered, with the reason and what to do."""
        self._read_entry_points()
        return {name: " ".join(reasons) for name, reasons in sorted(self._rejected.items())}

    def names(self) -> list[str]:
        """All registered names, sorted, including entry-point plugins."""
        self._read_entry_points()
        return sorted(self._targets)

    def origin(self, name: str) -> str:
        self._read_entry_points()
        return self._origins[name]

    def __contains__(self, name: object) -> bool:
        self._read_entry_points()
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> T:
        """The object registered under ``name``, imported and validated on first use."""
        if name in self._loaded:
            return self._loaded[name]
        self._read_entry_points()
        if name in self._rejected:
            raise RegistryError(f"{self.kind} '{name}' cannot be used: {' '.join(self._rejected[name])}")
        if name not in self._targets:
            known = self.names()
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise RegistryError(f"unknown {self.kind} '{name}'. Known: {', '.join(known) or 'none'}.{hint}")
        target = self._targets[name]
        obj = import_dotted(target) if isinstance(target, str) else target
        loaded: T = self._validate(name, obj) if self._validate else obj  # type: ignore[assignment]
        declared = getattr(loaded, "name", None)
        if isinstance(declared, str) and declared != name:
            origin = self._origins[name]
            fix = (
                f"rename the entry point to '{declared}' in the [project.entry-points.\"{self.group}\"] table of "
                f"the distribution's pyproject.toml and reinstall it"
                if origin.startswith("entry point")
                else f"register it as '{declared}'"
            )
            raise RegistryError(
                f"{self.kind} '{name}' (from {origin}) declares the name '{declared}', which its records would "
                f"carry, so it must be registered under that name: {fix}, or set its name to '{name}'"
            )
        self._loaded[name] = loaded
        return loaded
