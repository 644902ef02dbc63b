"""Hook points of the serving loop (pluggy-style): documented signatures, keyword-only calls, isolated failures.

A plugin is any object (a module, a class instance) with functions named after the hook points below. Register
it in code (``HookManager.register``), through ``DECISION_CORE_SERVE_HOOKS`` (dotted paths), or by an entry point
in the group ``decision_core.hooks`` (value ``"package.module:plugin"``), read when an app starts.

Hooks are called with keyword arguments only; an implementation may accept any subset of a hook's parameters
(so new parameters never break old plugins), and is validated when registered. A hook that raises is logged,
counted (``decision_core_hook_errors``) and otherwise ignored. ``on_decision`` and ``on_feedback`` run on a
hook thread of their own, in order, so a slow hook never delays a decision; ``before_promote`` and
``after_promote`` run on the fine-tune supervisor thread.
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

from decision_core.errors import RegistryError
from decision_core.registry import import_dotted

log = logging.getLogger("decision_core.serving.hooks")

ENTRY_POINT_GROUP = "decision_core.hooks"


class HookSpec:
    """The hook points and their signatures (the contract; these bodies are never called)."""

    def on_decision(self, *, domain: str, model: Mapping[str, str], decisions: Sequence[Mapping[str, Any]]) -> None:
        """After decisions were made (one call per model forward pass).

        ``decisions``: dicts with ``decision_id``, ``episode_id``, ``step``, ``request_id``, ``action`` (index or
        vector), ``propensity``; ``model``: ``{"name", "version"}``.
        """

    def on_feedback(
        self,
        *,
        domain: str,
        decision_id: str,
        episode_id: str,
        step: int,
        reward: float | None,
        terminated: bool,
        truncated: bool,
    ) -> None:
        """After a feedback event was committed to the store as step ``step`` of ``episode_id``."""

    def before_promote(
        self, *, domain: str, candidate: Mapping[str, Any], champion: Mapping[str, Any], reason: str
    ) -> bool | None:
        """Before a model becomes champion (fine-tune or manual promotion). Return ``False`` to veto."""

    def after_promote(self, *, domain: str, version: str, previous_version: str | None, reason: str) -> None:
        """After ``version`` became the champion that serves decisions."""


HOOKS: dict[str, inspect.Signature] = {
    name: inspect.signature(getattr(HookSpec, name))
    for name in ("on_decision", "on_feedback", "before_promote", "after_promote")
}
#: Hooks dispatched on the hook thread (never on the request path).
ASYNC_HOOKS = frozenset({"on_decision", "on_feedback"})


class _Impl:
    def __init__(self, plugin: str, func: Callable[..., Any], accepts: frozenset[str] | None) -> None:
        self.plugin = plugin
        self.func = func
        self.accepts = accepts  # None: takes **kwargs

    def __call__(self, kwargs: dict[str, Any]) -> Any:
        if self.accepts is None:
            return self.func(**kwargs)
        return self.func(**{k: v for k, v in kwargs.items() if k in self.accepts})


def _validate(plugin_name: str, hook: str, func: object) -> _Impl:
    if not callable(func):
        raise RegistryError(f"hook plugin '{plugin_name}': '{hook}' must be callable")
    spec_params = set(HOOKS[hook].parameters) - {"self"}
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"hook plugin '{plugin_name}': cannot read the signature of '{hook}': {exc}") from exc
    accepts: set[str] = set()
    var_kw = False
    for p in params:
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL):
            raise RegistryError(
                f"hook plugin '{plugin_name}': '{hook}' parameter '{p.name}' must be passable by keyword "
                f"(hooks are called keyword-only)"
            )
        elif p.name not in spec_params:
            if p.default is p.empty:
                raise RegistryError(
                    f"hook plugin '{plugin_name}': '{hook}' asks for '{p.name}', which the hook does not pass; "
                    f"it passes {', '.join(sorted(spec_params))}"
                )
        else:
            accepts.add(p.name)
    return _Impl(plugin_name, func, None if var_kw else frozenset(accepts))


class HookManager:
    """Registered hook implementations, and the thread that runs the asynchronous ones."""

    def __init__(self, on_error: Callable[[str], None] | None = None) -> None:
        self._impls: dict[str, list[_Impl]] = {name: [] for name in HOOKS}
        self._plugins: dict[str, object] = {}
        self._on_error = on_error
        self._queue: queue.SimpleQueue[tuple[str, dict[str, Any]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- registration -----------------------------------------------------------------------------------------
    def register(self, plugin: object, name: str | None = None) -> str:
        """Register ``plugin``'s hook functions; raises :class:`RegistryError` if one breaks its contract."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if name in self._plugins:
            raise RegistryError(f"a hook plugin named '{name}' is already registered")
        found = {h: _validate(name, h, getattr(plugin, h)) for h in HOOKS if getattr(plugin, h, None) is not None}
        if not found:
            raise RegistryError(
                f"hook plugin '{name}' implements no hook; define any of {', '.join(HOOKS)} (see serving.hooks)"
            )
        with self._lock:
            self._plugins[name] = plugin
            for hook, impl in found.items():
                self._impls[hook] = [*self._impls[hook], impl]
        return name

    def unregister(self, name: str) -> None:
        with self._lock:
            self._plugins.pop(name, None)
            for hook in self._impls:
                self._impls[hook] = [i for i in self._impls[hook] if i.plugin != name]

    def load_entry_points(self) -> list[str]:
        """Register every plugin of the ``decision_core.hooks`` group; a broken one is logged and skipped."""
        loaded = []
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded.append(self.register(ep.load(), name=ep.name))
            except Exception as exc:  # a third party's import error must not stop the service
                log.error("hook plugin '%s' (%s) not loaded: %s", ep.name, ep.value, exc)
                if self._on_error:
                    self._on_error(f"load:{ep.name}")
        return loaded

    def load_paths(self, paths: Sequence[str]) -> list[str]:
        """Register plugins named by dotted path (configured explicitly, so a bad one is an error)."""
        return [self.register(import_dotted(p), name=p) for p in paths]

    @property
    def plugins(self) -> list[str]:
        return sorted(self._plugins)

    def has(self, hook: str) -> bool:
        return bool(self._impls[hook])

    # -- calling ----------------------------------------------------------------------------------------------
    def call(self, hook: str, **kwargs: Any) -> list[Any]:
        """Call every implementation of ``hook`` now; returns the results of those that did not raise."""
        results = []
        for impl in self._impls[hook]:
            try:
                results.append(impl(kwargs))
            except Exception:
                log.exception("hook %s of plugin '%s' failed; continuing", hook, impl.plugin)
                if self._on_error:
                    self._on_error(hook)
        return results

    def dispatch(self, hook: str, **kwargs: Any) -> None:
        """Queue an asynchronous hook call (no-op when nothing implements it)."""
        if not self._impls[hook]:
            return
        if self._thread is None:
            self.start()
        self._queue.put((hook, kwargs))

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="decision-core-hooks", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            hook, kwargs = item
            self.call(hook, **kwargs)

    def stop(self, timeout: float = 5.0) -> None:
        """Run what is queued, then stop the hook thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None
