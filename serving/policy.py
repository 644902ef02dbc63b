"""The served policy: the model catalog (champion, candidates, hot swap, rollback), request encoding against
the domain spec, and the micro-batching inference worker.

Hot swap: the champion is one immutable :class:`ServedModel` referenced by :class:`ModelCatalog`; each forward
pass reads that reference once, so a swap between passes never drops or splits a request.

Inference: requests queue on the event loop and share one forward pass per loop iteration (per exploration
setting); small passes of a numpy copy of the policy run on the loop, the rest on one inference thread (see
:class:`DecisionBatcher`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from decision_core.algos import Agent, Exploration
from decision_core.schema import DomainSpec
from serving.errors import Conflict, InvalidInput, Unavailable, UnknownModel
from serving.feedback import DecisionBlock, FeedbackWriter
from serving.forward import NumpyPolicy, export_policy
from serving.hooks import HookManager
from serving.metrics import ServingMetrics
from serving.schemas import ActRequest

log = logging.getLogger("decision_core.serving")

REWARD_TASK = "reward"


# -- models ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServedModel:
    """A loaded agent and where it came from."""

    agent: Agent
    name: str
    version: str
    source: str
    agent_dir: Path | None = None
    #: Registered model name in MLflow, when ``version`` is a registry version of it.
    registered_name: str | None = None
    #: The policy copied to numpy when the agent's shape allows it (small forward passes skip torch).
    fast: NumpyPolicy | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fast", export_policy(self.agent))

    @property
    def info(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version}


@dataclass
class CatalogEntry:
    version: str
    status: str  # champion | candidate | rejected | retired
    source: str
    agent_dir: Path | None = None
    registered_name: str | None = None
    reason: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    model: ServedModel | None = None


def _is_registry_version(version: str) -> bool:
    return version.isdigit()


class ModelCatalog:
    """Versions this server knows (champion, candidates, rejected, retired) and the previous champions."""

    def __init__(
        self,
        champion: ServedModel,
        *,
        hooks: HookManager,
        metrics: ServingMetrics,
        set_registry_alias: Callable[[str, str], None] | None = None,
        load_version: Callable[[CatalogEntry], ServedModel] | None = None,
    ) -> None:
        self.hooks = hooks
        self.metrics = metrics
        self._set_alias = set_registry_alias
        self._load_version = load_version
        self._lock = threading.RLock()
        self.champion = champion
        self.entries: dict[str, CatalogEntry] = {
            champion.version: CatalogEntry(
                version=champion.version,
                status="champion",
                source=champion.source,
                agent_dir=champion.agent_dir,
                registered_name=champion.registered_name,
                model=champion,
            )
        }
        self.previous: list[str] = []
        metrics.model_info.labels(champion.name, champion.version).set(1)

    @property
    def spec(self) -> Any:
        return self.champion.agent.spec

    def add_candidate(self, entry: CatalogEntry) -> None:
        with self._lock:
            self.entries[entry.version] = entry

    def list(self) -> list[CatalogEntry]:
        with self._lock:
            return list(self.entries.values())

    def _materialise(self, entry: CatalogEntry) -> ServedModel:
        if entry.model is not None:
            return entry.model
        if self._load_version is None:
            raise UnknownModel(f"model version '{entry.version}' cannot be loaded here", field="version")
        entry.model = self._load_version(entry)
        return entry.model

    def promote(self, version: str, *, reason: str, rollback: bool = False) -> tuple[ServedModel, ServedModel]:
        """Make ``version`` the champion (loading it if needed); returns (new, previous). Blocking: call it off
        the event loop."""
        with self._lock:
            entry = self.entries.get(version)
            if entry is None:
                known = ", ".join(sorted(self.entries)) or "none"
                raise UnknownModel(
                    f"no model version '{version[:64]}' in this server's catalog (known: {known})", field="version"
                )
            current = self.champion
            if version == current.version:
                raise Conflict(f"version '{version}' is already the champion", field="version")
            model = self._materialise(entry)
            if not model.agent.spec.same_data(current.agent.spec):
                raise Conflict(
                    f"version '{version}' was trained for another domain spec than the one served", field="version"
                )
            candidate = {
                "version": version,
                "source": entry.source,
                "status": entry.status,
                "metrics": dict(entry.metrics),
            }
            champion = {"version": current.version, "source": current.source}
            vetoes = self.hooks.call(
                "before_promote", domain=self.spec.name, candidate=candidate, champion=champion, reason=reason
            )
            if any(v is False for v in vetoes):
                entry.reason = f"promotion vetoed by a before_promote hook ({reason})"
                raise Conflict(f"promotion of version '{version}' was vetoed by a before_promote hook")
            self.champion = model  # the swap: one reference assignment, read once per forward pass
            old = self.entries.get(current.version)
            if old is not None:
                old.status = "retired"
            entry.status = "champion"
            if not rollback:
                self.previous.append(current.version)
            self.metrics.model_info.labels(current.name, current.version).set(0)
            self.metrics.model_info.labels(model.name, model.version).set(1)
        if self._set_alias is not None and model.registered_name and _is_registry_version(model.version):
            try:
                self._set_alias(model.registered_name, model.version)
            except Exception:  # the registry is a record; serving has already switched
                log.exception(
                    "could not move the champion alias of %s to version %s", model.registered_name, model.version
                )
        self.hooks.call(
            "after_promote",
            domain=self.spec.name,
            version=model.version,
            previous_version=current.version,
            reason=reason,
        )
        log.info("champion is now %s v%s (%s)", model.name, model.version, reason)
        return model, current

    def rollback(self) -> tuple[ServedModel, ServedModel]:
        """Restore the previous champion."""
        with self._lock:
            if not self.previous:
                raise Conflict("there is no previous champion to roll back to")
            version = self.previous.pop()
            try:
                return self.promote(version, reason="rollback", rollback=True)
            except Exception:
                self.previous.append(version)
                raise


# -- request encoding -------------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """One validated decision request as vectors."""

    state: list[float]
    goal: list[float]  # (G,) NaN = unspecified
    task: str | None
    action_mask: list[bool] | None
    exploration: Exploration | None
    request_id: str | None
    episode_id: str | None
    step: int | None


class Decided(NamedTuple):
    """One decision as served (a named tuple: made once per decision on the request path)."""

    decision_id: str
    episode_id: str
    action: np.ndarray  # (A,) float32 row; discrete: the index as float
    propensity: float
    model: ServedModel


def _names(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def _safe(name: str) -> str:
    """A client-sent name made safe to quote in a message (bounded, printable)."""
    return re.sub(r"[^\x20-\x7e]", "?", name[:64])


class _SpecNames:
    """Names of one domain spec as the encoder looks them up on every request (the spec's properties build new
    lists on each call)."""

    def __init__(self, spec: DomainSpec) -> None:
        self.spec = spec
        self.state_names = spec.state_names
        self.outcome_names = spec.outcome_names
        self.outcome_index = {n: i for i, n in enumerate(self.outcome_names)}


class RequestEncoder:
    """Checks decision requests against the domain spec and encodes them (messages name the field)."""

    def __init__(self, default_epsilon: float, default_temperature: float | None) -> None:
        self.default_epsilon = default_epsilon
        self.default_temperature = default_temperature
        self._default = self._exploration(default_epsilon, default_temperature)
        self._names: _SpecNames | None = None

    def _names_of(self, spec: DomainSpec) -> _SpecNames:
        names = self._names
        if names is None or names.spec is not spec:  # a model swap may bring an equal spec in a new object
            names = self._names = _SpecNames(spec)
        return names

    def state_vector(self, agent: Agent, values: dict[str, float], where: str) -> list[float]:
        spec = agent.spec
        names = self._names_of(spec).state_names
        try:
            vec = [values[n] for n in names]
        except KeyError:
            missing = [n for n in names if n not in values]
            raise InvalidInput(
                f"{where}: missing state features {_names(missing)} (domain '{spec.name}' needs all of "
                f"{_names(names)})",
                field=f"{where}.{missing[0]}",
            ) from None
        if len(values) != len(names):
            known = set(names)
            unknown = sorted(k for k in values if k not in known)
            raise InvalidInput(
                f"{where}: unknown features {_names([_safe(u) for u in unknown])}; domain '{spec.name}' has "
                f"{_names(names)}",
                field=f"{where}.{_safe(unknown[0])}",
            )
        return vec

    def prepare(self, agent: Agent, req: ActRequest, where: str = "") -> Prepared:
        spec = agent.spec
        p = where
        state = self.state_vector(agent, req.state, f"{p}state")
        spec_names = self._names_of(spec)
        goal = [math.nan] * len(spec_names.outcome_names)
        task = req.task
        if req.goal is not None and task is not None:
            raise InvalidInput(f"{p}goal and {p}task: give one of them, not both", field=f"{p}task")
        if task is not None and task != REWARD_TASK:
            named = spec.goals.get(task)
            if named is None:
                known = [*sorted(spec.goals), REWARD_TASK]
                raise InvalidInput(
                    f"{p}task '{_safe(task)}' is neither a named goal of domain '{spec.name}' nor '{REWARD_TASK}' "
                    f"(known: {_names(known)})",
                    field=f"{p}task",
                )
            goal_values: dict[str, float] | None = named
        else:
            goal_values = req.goal
        if agent.goal_conditioned:
            if task == REWARD_TASK:
                raise InvalidInput(
                    f"{p}task 'reward': the served model '{agent.name}' is goal-conditioned; send a goal over "
                    f"{_names(spec.outcome_names)} instead",
                    field=f"{p}task",
                )
            if goal_values:
                index = spec_names.outcome_index
                for k, v in goal_values.items():
                    i = index.get(k)
                    if i is None:
                        hint = (
                            " (a state feature, but goals may only name outcome features)"
                            if k in spec.state_names
                            else ""
                        )
                        raise InvalidInput(
                            f"{p}goal.{_safe(k)} is not an outcome feature of domain '{spec.name}'{hint}; goals may "
                            f"name {_names(spec.outcome_names)}",
                            field=f"{p}goal.{_safe(k)}",
                        )
                    goal[i] = float(v)
        elif goal_values:
            sent = f"{p}goal" if req.goal is not None else f"{p}task"
            raise InvalidInput(
                f"{sent}: the served model '{agent.name}' optimises the domain's reward and takes no goal; omit "
                f"{sent} (or send task '{REWARD_TASK}', or serve a goal-conditioned model)",
                field=sent,
            )
        mask = req.action_mask
        if mask is not None:
            if not spec.discrete:
                raise InvalidInput(
                    f"{p}action_mask: domain '{spec.name}' has continuous actions; omit it", field=f"{p}action_mask"
                )
            if len(mask) != spec.n_actions:
                raise InvalidInput(
                    f"{p}action_mask must have one flag per action ({spec.n_actions}: "
                    f"{_names(list(spec.actions.labels))}), got {len(mask)}",  # type: ignore[union-attr]
                    field=f"{p}action_mask",
                )
            if not any(mask):
                raise InvalidInput(f"{p}action_mask allows no action; allow at least one", field=f"{p}action_mask")
        return Prepared(
            state=state,
            goal=goal,
            task=task,
            action_mask=mask,
            exploration=self.exploration(req),
            request_id=req.request_id,
            episode_id=req.episode_id,
            step=req.step,
        )

    def exploration(self, req: ActRequest) -> Exploration | None:
        e = req.exploration
        if e is None:
            return self._default
        if e.greedy:
            return None
        eps = self.default_epsilon if e.epsilon is None else e.epsilon
        temp = self.default_temperature if e.temperature is None else e.temperature
        return self._exploration(eps, temp)

    @staticmethod
    def _exploration(epsilon: float, temperature: float | None) -> Exploration | None:
        if epsilon == 0.0 and temperature is None:
            return None
        return Exploration(epsilon=epsilon, temperature=temperature)


# -- episodes --------------------------------------------------------------------------------------------------------
def check_one_step_per_episode(items: Sequence[Prepared]) -> None:
    """Refuse a request whose items name one episode twice: both decisions would be made at the same state,
    while an episode's decisions follow one another (each at the state the previous one led to)."""
    if len(items) < 2:
        return
    episodes: dict[str, int] = {}
    for j, item in enumerate(items):
        if item.episode_id is None:
            continue
        first = episodes.setdefault(item.episode_id, j)
        if first != j:
            raise InvalidInput(
                f"items[{first}] and items[{j}] both name episode_id '{_safe(item.episode_id)}': both decisions "
                "would be made at the same state, while an episode's decisions are made one step at a time; send "
                "the second after the first is answered (with the state it led to)",
                field=f"items[{j}].episode_id",
            )


class EpisodeActions:
    """The actions served in recent episodes, for domains that allow each action once per episode.

    A request that names its ``episode_id`` gets the episode's earlier actions masked out (on top of its own
    ``action_mask``), so a client need not track them, and served episodes stay valid training data (the store
    derives the same rule when it loads them). Bounded: the ``capacity`` most recently served episodes are kept;
    the app fills it from the logged decisions at start, so a restart does not forget an episode under way.
    Decisions for one episode are made one at a time (:meth:`hold`), so two concurrent requests cannot both be
    given the same action. Used on the event loop only (no lock).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._taken: OrderedDict[str, set[int]] = OrderedDict()
        #: Episodes with a decision in flight, and what completes when it is recorded.
        self._busy: dict[str, asyncio.Future[None]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, items: Sequence[Prepared]) -> AsyncIterator[None]:
        """Waits until no decision is in flight for the episodes ``items`` name, then holds them until the block
        exits. All of them are taken at once (never some while waiting for others), so holders cannot deadlock.
        ``items`` name each episode at most once (:func:`check_one_step_per_episode`).
        """
        episodes = {item.episode_id for item in items if item.episode_id is not None}
        if not episodes:
            yield
            return
        while busy := [self._busy[e] for e in episodes if e in self._busy]:
            await asyncio.wait(busy)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for e in episodes:
            self._busy[e] = done
        try:
            yield
        finally:
            for e in episodes:
                del self._busy[e]
            done.set_result(None)

    def __len__(self) -> int:
        return len(self._taken)

    def restrict(self, items: list[Prepared], spec: DomainSpec) -> list[Prepared]:
        """``items`` with the actions already taken in their episodes masked out."""
        out = items
        for j, item in enumerate(items):
            taken = self._taken.get(item.episode_id) if item.episode_id is not None else None
            if not taken:
                continue
            mask = list(item.action_mask) if item.action_mask is not None else [True] * spec.n_actions
            for a in taken:
                mask[a] = False
            if not any(mask):
                p = f"items[{j}]." if len(items) > 1 else ""
                raise InvalidInput(
                    f"{p}episode_id '{_safe(item.episode_id or '')}': every action still allowed was already taken "
                    f"in this episode, and domain '{spec.name}' allows each action once per episode; "
                    "end the episode or start a new one",
                    field=f"{p}episode_id",
                )
            if out is items:
                out = list(items)
            out[j] = replace(item, action_mask=mask)
        return out

    def record(self, decided: Sequence[Decided], items: Sequence[Prepared]) -> None:
        """Remember the actions of decisions made for requests that named their episode."""
        for d, item in zip(decided, items, strict=True):
            if item.episode_id is not None:
                self.add(d.episode_id, int(d.action[0]))

    def add(self, episode_id: str, action: int) -> None:
        taken = self._taken.get(episode_id)
        if taken is None:
            taken = self._taken[episode_id] = set()
            if len(self._taken) > self.capacity:
                self._taken.popitem(last=False)
        else:
            self._taken.move_to_end(episode_id)
        taken.add(action)


# -- inference --------------------------------------------------------------------------------------------------------
class _Submission:
    __slots__ = ("future", "items")

    def __init__(self, items: list[Prepared], future: asyncio.Future[list[Decided]] | None) -> None:
        self.items = items
        self.future = future


#: Most decisions one forward pass may take on the event loop (numpy policies only). Measured on the default
#: 2x256 MLP with one BLAS thread: ~25 µs for one row, ~140 µs for 64 rows, against ~100 µs of thread hop and
#: GIL hand-over per pass; larger passes (``/v1/act:batch``, heavy concurrency) go to the inference thread.
INLINE_MAX_ROWS = 64


class DecisionBatcher:
    """Runs decision requests through the champion in micro-batches.

    Requests queue on the event loop; one callback per loop iteration takes everything queued so far and makes
    one forward pass per exploration setting. A small pass of a numpy policy (:mod:`serving.forward`) runs right
    there, bounded by :data:`INLINE_MAX_ROWS`; anything larger, and every torch forward, runs on the single
    inference thread so the event loop never waits on it.
    """

    def __init__(
        self,
        catalog: ModelCatalog,
        writer: FeedbackWriter,
        *,
        hooks: HookManager,
        metrics: ServingMetrics,
        seed: int | None = None,
        inline_max: int = INLINE_MAX_ROWS,
        episode_memory: int = 100_000,
    ) -> None:
        self.catalog = catalog
        #: Actions served per episode (used only when the domain allows each action once per episode).
        self.episodes = EpisodeActions(episode_memory)
        self.writer = writer
        self.hooks = hooks
        self.metrics = metrics
        self.inline_max = inline_max
        # One generator per thread that draws (the event loop's inline passes, the inference thread's).
        loop_seed, thread_seed = np.random.SeedSequence(seed).spawn(2)
        self.rng = np.random.default_rng(loop_seed)
        self.thread_rng = np.random.default_rng(thread_seed)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decision-core-inference")
        self._pending: list[_Submission] = []
        self._pending_rows = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False
        self._iteration_busy = False
        # Unique across restarts (random prefix) and cheap to make (a counter).
        self._prefix = secrets.token_hex(6)
        self._counter = itertools.count()
        self._decisions_counters: dict[str, Any] = {}

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        self._loop = None
        self._fail(self._pending, Unavailable("the server is shutting down"))
        self._pending = []
        self._executor.shutdown(wait=True)

    async def decide(self, items: list[Prepared]) -> list[Decided]:
        check_one_step_per_episode(items)
        spec = self.catalog.champion.agent.spec
        if not spec.once_per_episode:
            return await self._decide(items)
        async with self.episodes.hold(items):
            decided = await self._decide(self.episodes.restrict(items, spec))
            self.episodes.record(decided, items)
        return decided

    async def _decide(self, items: list[Prepared]) -> list[Decided]:
        loop = self._loop
        if loop is None:
            raise Unavailable("the decision worker is not running")
        if not self._pending and not self._iteration_busy:
            # The first request of a loop iteration does not wait for company when it can be answered right
            # here: alone (one client) it saves the callback and future round trips; under concurrency the
            # requests behind it in the same iteration still share the next pass.
            model = self.catalog.champion
            if self._runs_inline(model, [items], len(items)):
                self._iteration_busy = True
                loop.call_soon(self._end_iteration)
                try:
                    if len(items) == 1:
                        return [self._infer_one(items[0], model, self.rng)]
                    [result] = self._infer([_Submission(items, None)], model, self.rng)
                except Unavailable:  # the writer cannot log it: not served
                    raise
                except Exception as exc:
                    log.error("inference failed", exc_info=exc)
                    raise Unavailable(f"inference failed: {type(exc).__name__}") from None
                if isinstance(result, BaseException):
                    raise result
                return result
        fut: asyncio.Future[list[Decided]] = loop.create_future()
        self._pending.append(_Submission(items, fut))
        self._pending_rows += len(items)
        if not self._flush_scheduled:
            # Runs after the callbacks already queued in this loop iteration: requests that arrived together
            # reach this point first and share the pass.
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await fut

    # -- on the event loop ------------------------------------------------------------------------------------
    def _end_iteration(self) -> None:
        self._iteration_busy = False

    def _runs_inline(self, model: ServedModel, item_lists: list[list[Prepared]], rows: int) -> bool:
        """Whether a pass over these items may run on the event loop (numpy policy, small, handled)."""
        fast = model.fast
        return (
            fast is not None
            and rows <= self.inline_max
            and (fast.discrete or all(it.exploration is None for items in item_lists for it in items))
        )

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, rows = self._pending, self._pending_rows
        self._pending, self._pending_rows = [], 0
        if not batch or self._loop is None:
            return
        model = self.catalog.champion  # read once: a swap takes effect between passes
        if self._runs_inline(model, [sub.items for sub in batch], rows):
            try:
                results = self._infer(batch, model, self.rng)
            except Exception as exc:
                self._failed(batch, exc)
            else:
                self._answer(batch, results)
            return
        done = self._loop.run_in_executor(self._executor, self._infer, batch, model, self.thread_rng)
        done.add_done_callback(
            lambda f: self._failed(batch, f.exception()) if f.exception() else self._answer(batch, f.result())
        )

    def _answer(self, batch: list[_Submission], results: list[list[Decided] | BaseException]) -> None:
        for sub, res in zip(batch, results, strict=True):
            fut = sub.future
            if fut is None or fut.done():  # the client went away
                continue
            if isinstance(res, BaseException):
                fut.set_exception(res)
            else:
                fut.set_result(res)

    def _failed(self, batch: list[_Submission], exc: BaseException | None) -> None:
        # A bug or a model failure: answer every waiting request, keep serving.
        log.error("inference failed", exc_info=exc)
        self._fail(batch, Unavailable(f"inference failed: {type(exc).__name__}"))

    @staticmethod
    def _fail(batch: list[_Submission], failure: BaseException) -> None:
        for sub in batch:
            if sub.future is not None and not sub.future.done():
                sub.future.set_exception(failure)

    # -- one pass (event loop or inference thread) --------------------------------------------------------------
    def _infer_one(self, item: Prepared, model: ServedModel, rng: np.random.Generator) -> Decided:
        """One decision through the numpy policy (on the event loop): what :meth:`_infer` does for a batch of
        one, without building batch arrays for the forward pass (:meth:`NumpyPolicy.act_one`)."""
        agent = model.agent
        spec = agent.spec
        fast: NumpyPolicy = model.fast  # type: ignore[assignment]
        exploration = item.exploration
        action, propensity = fast.act_one(
            item.state,
            item.goal if agent.goal_conditioned else None,
            item.action_mask,
            exploration=exploration,
            rng=rng,
        )
        masks = None
        if spec.masked:
            masks = (
                np.ones((1, spec.n_actions), np.bool_)
                if item.action_mask is None
                else np.array([item.action_mask], np.bool_)
            )
        [(did, episode)] = self._log_pass(
            model,
            [item],
            np.array([item.state], np.float32),
            np.array([item.goal], np.float32),
            masks,
            action[None],
            np.array([propensity]),
            [propensity],
            exploration,
        )
        return Decided(did, episode, action, propensity, model)

    def _log_pass(
        self,
        model: ServedModel,
        items: list[Prepared],
        states: np.ndarray,
        goals: np.ndarray,
        masks: np.ndarray | None,
        actions: np.ndarray,
        props: np.ndarray,
        prop_list: list[float],
        exploration: Exploration | None,
    ) -> list[tuple[str, str]]:
        """Name the decisions of one pass, hand them to the writer, count them and tell the ``on_decision`` hooks;
        returns (decision id, episode id) per item. Raises :class:`Unavailable` when they cannot be logged (then
        they are not served)."""
        spec = model.agent.spec
        n = len(items)
        prefix = self._prefix
        ids = [f"{prefix}-{c:x}" for c in itertools.islice(self._counter, n)]
        episodes = [it.episode_id or did for it, did in zip(items, ids, strict=True)]
        self.writer.add_decisions(
            DecisionBlock(
                ids=ids,
                episode_ids=episodes,
                steps=[it.step for it in items],
                request_ids=[it.request_id for it in items],
                tasks=[it.task for it in items],
                states=states,
                goals=goals,
                actions=actions,
                action_masks=masks if spec.masked else None,
                propensities=props,
                epsilon=0.0 if exploration is None else exploration.epsilon,
                temperature=None if exploration is None else exploration.temperature,
                model_name=model.name,
                model_version=model.version,
            )
        )
        counter = self._decisions_counters.get(model.version)
        if counter is None:
            counter = self._decisions_counters[model.version] = self.metrics.decisions.labels(model.version)
        counter.inc(n)
        self.metrics.inference_batch.observe(n)
        if self.hooks.has("on_decision"):
            self.hooks.dispatch(
                "on_decision",
                domain=spec.name,
                model=model.info,
                decisions=[
                    {
                        "decision_id": ids[j],
                        "episode_id": episodes[j],
                        "step": items[j].step,
                        "request_id": items[j].request_id,
                        "action": int(actions[j, 0]) if spec.discrete else actions[j].tolist(),
                        "propensity": prop_list[j],
                    }
                    for j in range(n)
                ],
            )
        return list(zip(ids, episodes, strict=True))

    def _infer(
        self, batch: list[_Submission], model: ServedModel, rng: np.random.Generator
    ) -> list[list[Decided] | BaseException]:
        agent = model.agent
        spec = agent.spec
        fast = model.fast
        if len(batch) == 1:
            rows = [(0, ii, item) for ii, item in enumerate(batch[0].items)]
        else:
            rows = [(si, ii, item) for si, sub in enumerate(batch) for ii, item in enumerate(sub.items)]
        groups: dict[tuple[float, float | None] | None, list[tuple[int, int, Prepared]]] = {}
        for r in rows:
            e = r[2].exploration
            groups.setdefault(None if e is None else (e.epsilon, e.temperature), []).append(r)
        out: list[list[Decided | None]] = [[None] * len(sub.items) for sub in batch]
        errors: dict[int, BaseException] = {}
        for group in groups.values():
            items = [r[2] for r in group]
            n = len(items)
            states = np.array([it.state for it in items], np.float32)
            goals = np.array([it.goal for it in items], np.float32).reshape(n, len(spec.outcomes))
            masks = None
            if spec.discrete and any(it.action_mask is not None for it in items):
                masks = np.ones((n, spec.n_actions), np.bool_)
                for j, it in enumerate(items):
                    if it.action_mask is not None:
                        masks[j] = it.action_mask
            exploration = items[0].exploration  # the group's setting (equal in every item)
            goal_conditioned = agent.goal_conditioned
            policy: Any = fast if fast is not None and fast.handles(exploration) else agent
            result = policy.act(
                states,
                goals if goal_conditioned else None,
                ~np.isnan(goals) if goal_conditioned else None,
                masks,
                exploration=exploration,
                rng=rng,
            )
            actions = np.asarray(result.actions, np.float32).reshape(n, spec.action_dim)
            props = np.asarray(result.propensities, np.float64)
            if spec.masked and masks is None:
                masks = np.ones((n, spec.n_actions), np.bool_)
            prop_list = props.tolist()
            try:
                named = self._log_pass(model, items, states, goals, masks, actions, props, prop_list, exploration)
            except Unavailable as exc:
                # A decision that cannot be logged is not served: it could never become training data.
                for si, _, _ in group:
                    errors[si] = exc
                continue
            for j, (si, ii, _) in enumerate(group):
                out[si][ii] = Decided(named[j][0], named[j][1], actions[j], prop_list[j], model)
        return [errors[si] if si in errors else list(out[si]) for si in range(len(batch))]  # type: ignore[misc, arg-type]
