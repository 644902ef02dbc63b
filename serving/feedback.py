"""The feedback writer: every decision and every outcome, durable in the decision store, through one thread.

DuckDB allows one writing connection per file, so one :class:`FeedbackWriter` thread owns the server's
:class:`~decision_core.store.DecisionStore` and everything that touches it goes through its queue:

- **decisions** (:class:`DecisionBlock`, one per model forward pass) are queued fire-and-forget and land in
  ``served_decisions_<domain>``; a decision is acknowledged before it is on disk;
- **feedback** (:class:`FeedbackEvent`) is joined with its decision into one row of the common steps schema,
  inserted with :meth:`DecisionStore.insert_steps`, and recorded in ``served_feedback_<domain>``; the caller's
  future resolves only after the commit, so a 2xx answer means the event is on disk. Decisions queued before a
  feedback event are committed in the same or an earlier transaction, so an acknowledged event never points at
  a lost decision;
- **calls** (:meth:`FeedbackWriter.call`) run a function on the writer thread between commits (snapshots for
  fine-tuning, reads for tests and tools).

Writes are group-committed: the thread takes everything queued (up to ``group_max`` items) and commits it in one
transaction, so the commit cost is shared by every request waiting on it.

Episodes of served traffic. A decision belongs to the episode the caller names (``episode_id``), else to an
episode of its own (its decision id). Its feedback becomes step ``k`` of episode ``served/<episode_id>`` in the
steps table, where ``k`` counts the feedback already stored for that episode (0, 1, 2, ... in the order feedback
is committed): episodes are dense and ordered as the caller reported them, whatever step numbers it sent (those
are kept in the decisions table). Rows carry ``source_adapter = 'serving'``, the model version as
``adapter_version``, ``serving:<model name>`` as ``source_file`` and the feedback sequence number as
``source_row``.

The episode rules of ingested logs hold for served ones: an episode whose last stored step is terminated takes
no later step (its next feedback is refused with a :class:`~serving.errors.Conflict`, and the app refuses new
decisions for it, see :meth:`FeedbackWriter.ended`); a truncated step only says the episode was cut there, so a
later step continues the episode and clears the flag (as ``decision-core ingest`` does when a later file continues
an episode). A decision's outcome is stored once: a retry with the same payload is answered ``already_stored``,
one with another payload is refused (a stored outcome is never changed).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from decision_core.schema import DomainSpec
from decision_core.store import DecisionStore, fetch_one
from serving.errors import Conflict, Unavailable, UnknownDecision
from serving.metrics import ServingMetrics

log = logging.getLogger("decision_core.serving.feedback")

T = TypeVar("T")

#: Prefix of served episodes in the steps table (keeps them apart from ingested episode ids).
EPISODE_PREFIX = "served/"
SOURCE_ADAPTER = "serving"
#: How an episode's last stored step ended (``FeedbackWriter._ends``).
TERMINATED, TRUNCATED = "terminated", "truncated"


def decisions_table(spec: DomainSpec) -> str:
    return f"served_decisions_{spec.name}"


def feedback_table(spec: DomainSpec) -> str:
    return f"served_feedback_{spec.name}"


def _mask_width(spec: DomainSpec) -> int:
    return spec.n_actions if spec.masked else 1


def served_ddl(spec: DomainSpec) -> list[str]:
    """DDL of the decisions and feedback tables of ``spec``'s domain."""
    s, g, a, k = spec.state_dim, len(spec.outcomes), spec.action_dim, _mask_width(spec)
    return [
        f"CREATE TABLE IF NOT EXISTS {decisions_table(spec)} (decision_id VARCHAR PRIMARY KEY, "
        f"episode_id VARCHAR NOT NULL, step INTEGER, request_id VARCHAR, state FLOAT[{s}] NOT NULL, "
        f"goal FLOAT[{g}] NOT NULL, task VARCHAR, action FLOAT[{a}] NOT NULL, action_mask BOOLEAN[{k}], "
        f"propensity DOUBLE NOT NULL, epsilon DOUBLE NOT NULL, temperature DOUBLE, model_name VARCHAR NOT NULL, "
        f"model_version VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {feedback_table(spec)} (decision_id VARCHAR PRIMARY KEY, seq BIGINT NOT NULL, "
        f"episode_id VARCHAR NOT NULL, step INTEGER NOT NULL, reward DOUBLE, terminated BOOLEAN NOT NULL, "
        f"truncated BOOLEAN NOT NULL, received_at TIMESTAMP NOT NULL)",
    ]


@dataclass
class DecisionBlock:
    """Decisions of one forward pass, as arrays (row ``i`` is decision ``ids[i]``)."""

    ids: list[str]
    episode_ids: list[str]
    steps: list[int | None]
    request_ids: list[str | None]
    tasks: list[str | None]
    states: np.ndarray  # (B, S) float32
    goals: np.ndarray  # (B, G) float32, NaN = unspecified
    actions: np.ndarray  # (B, A) float32
    action_masks: np.ndarray | None  # (B, K) bool for masked domains
    propensities: np.ndarray  # (B,) float64
    epsilon: float
    temperature: float | None
    model_name: str
    model_version: str
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC).replace(tzinfo=None))

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class FeedbackResult:
    decision_id: str
    status: str  # "stored" | "already_stored"
    episode_id: str
    step: int


@dataclass
class FeedbackEvent:
    """One outcome; ``future`` resolves to a :class:`FeedbackResult` once it is committed."""

    decision_id: str
    next_state: np.ndarray  # (S,) float32
    reward: float | None
    terminated: bool
    truncated: bool
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC).replace(tzinfo=None))
    future: Future[FeedbackResult] = field(default_factory=Future)


def _ending(terminated: bool, truncated: bool) -> str | None:
    return TERMINATED if terminated else TRUNCATED if truncated else None


def _caller_episode(episode_id: str) -> str:
    """The episode id the caller sent (or the decision id), as messages name it."""
    return episode_id.removeprefix(EPISODE_PREFIX)[:64]


def _differences(
    event: FeedbackEvent, next_state: np.ndarray, reward: float | None, terminated: bool, truncated: bool
) -> list[str]:
    """The fields of ``event`` that differ from a stored outcome (in request order)."""
    out = []
    if not np.array_equal(np.asarray(next_state, np.float32), np.asarray(event.next_state, np.float32)):
        out.append("next_state")
    if reward != event.reward:  # None (not sent) differs from any value
        out.append("reward")
    if bool(terminated) != event.terminated:
        out.append("terminated")
    if bool(truncated) != event.truncated:
        out.append("truncated")
    return out


def _changed_outcome(did: str, prior: FeedbackResult, fields: list[str]) -> Conflict:
    return Conflict(
        f"decision_id '{did[:64]}': its outcome is already stored (episode '{_caller_episode(prior.episode_id)}', "
        f"step {prior.step}) and this feedback differs in {', '.join(fields)}; a stored outcome is never changed: "
        "a retry must repeat it (it is then answered already_stored)",
        field=fields[0],
    )


@dataclass
class _Call:
    fn: Callable[[DecisionStore], Any]
    future: Future[Any] = field(default_factory=Future)


@dataclass
class _Served:
    """What a feedback row needs of its decision."""

    episode_id: str  # the steps-table episode id (prefixed)
    state: np.ndarray
    action: np.ndarray
    action_mask: np.ndarray | None
    propensity: float
    model_name: str
    model_version: str


_STOP = object()


@dataclass
class _DecisionRows:
    """The decisions of several blocks as single arrays, made once per group commit (one forward pass of one
    request makes a block of one decision: a commit at one client joins hundreds of them)."""

    blocks: list[DecisionBlock]
    lengths: list[int]
    ids: list[str]
    episode_ids: list[str]
    states: np.ndarray  # (N, S) float32
    goals: np.ndarray  # (N, G) float32
    actions: np.ndarray  # (N, A) float32
    masks: np.ndarray | None  # (N, K) bool for masked domains (all True where a block has none)
    propensities: np.ndarray  # (N,) float64

    @classmethod
    def of(cls, blocks: list[DecisionBlock], mask_width: int | None) -> _DecisionRows:
        """``mask_width``: the number of actions of a masked domain, else None (no masks kept)."""
        chain = itertools.chain.from_iterable
        lengths = [len(bl) for bl in blocks]
        masks = None
        if mask_width is not None:
            masks = np.concatenate(
                [
                    bl.action_masks if bl.action_masks is not None else np.ones((len(bl), mask_width), np.bool_)
                    for bl in blocks
                ]
            )
        return cls(
            blocks=blocks,
            lengths=lengths,
            ids=list(chain(bl.ids for bl in blocks)),
            episode_ids=list(chain(bl.episode_ids for bl in blocks)),
            states=np.concatenate([bl.states for bl in blocks]).astype(np.float32, copy=False),
            goals=np.concatenate([bl.goals for bl in blocks]).astype(np.float32, copy=False),
            actions=np.concatenate([bl.actions for bl in blocks]).astype(np.float32, copy=False),
            masks=masks,
            propensities=np.concatenate([bl.propensities for bl in blocks]).astype(np.float64, copy=False),
        )

    def per_row(self, values: list[Any]) -> list[Any]:
        """A value per block repeated for each of its rows."""
        if len(self.blocks) == len(self.ids):  # blocks of one decision each
            return values
        return [v for v, n in zip(values, self.lengths, strict=True) for _ in range(n)]


class _DecisionCache:
    """The most recent ``capacity`` decisions as a ring of arrays, for joining feedback without a query.

    Plain arrays and a ``dict[str, int]`` of slots: nothing here is tracked by the garbage collector, so a full
    cache does not lengthen collections (a dict of per-decision objects would, by seconds at a million).
    """

    def __init__(self, spec: DomainSpec, capacity: int) -> None:
        self.capacity = c = capacity
        self.slots: dict[str, int] = {}
        self.ids: list[str | None] = [None] * c
        self.episodes: list[str] = [""] * c
        self.states = np.zeros((c, spec.state_dim), np.float32)  # untouched pages cost no memory
        self.actions = np.zeros((c, spec.action_dim), np.float32)
        self.masks = np.zeros((c, spec.n_actions), np.bool_) if spec.masked else None
        self.propensities = np.zeros(c, np.float64)
        self.models = np.zeros(c, np.int32)
        self.model_names: list[tuple[str, str]] = []
        self.next = 0

    def model_index(self, name: str, version: str) -> int:
        key = (name, version)
        if key not in self.model_names:
            self.model_names.append(key)
        return self.model_names.index(key)

    def add_rows(self, rows: _DecisionRows) -> list[str]:
        """Store ``rows`` (of any number of blocks) over the oldest slots; returns the ids it evicted."""
        evicted: list[str] = []
        models = np.repeat(
            [self.model_index(bl.model_name, bl.model_version) for bl in rows.blocks], rows.lengths
        ).astype(np.int32)
        n, start = len(rows.ids), 0
        if n > self.capacity:
            start = n - self.capacity
        while start < n:
            at = self.next % self.capacity
            m = min(n - start, self.capacity - at)
            for old in self.ids[at : at + m]:
                if old is not None and self.slots.get(old) is not None:
                    del self.slots[old]
                    evicted.append(old)
            ids = rows.ids[start : start + m]
            self.ids[at : at + m] = ids
            self.episodes[at : at + m] = rows.episode_ids[start : start + m]
            self.slots.update(zip(ids, range(at, at + m), strict=True))
            self.states[at : at + m] = rows.states[start : start + m]
            self.actions[at : at + m] = rows.actions[start : start + m]
            if self.masks is not None:
                self.masks[at : at + m] = rows.masks[start : start + m]  # type: ignore[index]
            self.propensities[at : at + m] = rows.propensities[start : start + m]
            self.models[at : at + m] = models[start : start + m]
            self.next += m
            start += m
        return evicted

    def served(self, slot: int) -> _Served:
        name, version = self.model_names[self.models[slot]]
        return _Served(
            episode_id=EPISODE_PREFIX + self.episodes[slot],
            state=self.states[slot].copy(),
            action=self.actions[slot].copy(),
            action_mask=None if self.masks is None else self.masks[slot].copy(),
            propensity=float(self.propensities[slot]),
            model_name=name,
            model_version=version,
        )


def _resolve(future: Future[Any], value: Any = None, error: BaseException | None = None) -> None:
    """Settle ``future`` unless its waiter already gave up (a cancelled future must not stop the writer)."""
    if future.done():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except InvalidStateError:
        pass


def _fixed(arr: np.ndarray, width: int, kind: pa.DataType) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(arr).reshape(-1), type=kind), width)


class FeedbackWriter:
    """The single writer thread of one domain's served decisions and feedback (see the module docstring)."""

    def __init__(
        self,
        store: DecisionStore,
        spec: DomainSpec,
        *,
        metrics: ServingMetrics | None = None,
        queue_max: int = 200_000,
        group_max: int = 8192,
        cache_max: int = 1_000_000,
        episode_memory: int = 100_000,
        new_episodes_cap: int = 1024,
        decision_linger_s: float = 0.05,
        on_committed: Callable[[list[FeedbackEvent], list[FeedbackResult]], None] | None = None,
    ) -> None:
        """``episode_memory``: how many of the most recently fed episodes are read back at start (their next step
        and whether they ended); ``new_episodes_cap``: up to how many episodes with feedback since the last
        :meth:`mark` are counted (:attr:`new_episodes`)."""
        self.store = store
        self.spec = spec
        self.metrics = metrics
        self.group_max = group_max
        self.cache_max = cache_max
        self.decision_linger_s = decision_linger_s
        self.on_committed = on_committed
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_max)
        # Decisions wait here, not in the queue, until the thread's next wake-up (at most ``decision_linger_s``) or
        # until a feedback event or call is queued behind them: one decision does not wake the thread.
        self._held: list[DecisionBlock] = []
        self._held_rows = 0
        self._held_lock = threading.Lock()
        # Owned by the writer thread only: recent decisions (for joins without a query), which of them have
        # feedback, the next step number of recently seen episodes and how their last stored step ended (only
        # those that ended; read, never written, by other threads: see ended()).
        self._cache = _DecisionCache(spec, cache_max)
        self._fed: dict[str, tuple[str, int]] = {}  # decision id -> (episode id, step) of its stored feedback
        self._next_step: dict[str, int] = {}
        self._ends: dict[str, str] = {}
        # Episodes with feedback since the last mark, counted up to the cap (all a fine-tune asks is "enough?").
        self._new_episodes: set[str] = set()
        self.new_episodes_cap = new_episodes_cap
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        with store.transaction() as con:
            store.ensure_domain(spec, con)
            for ddl in served_ddl(spec):
                con.execute(ddl)
        row = fetch_one(store.con, f"SELECT coalesce(max(seq), 0) FROM {feedback_table(spec)}")
        self.last_seq = int(row[0]) if row else 0  # type: ignore[index]
        #: Feedback committed since :meth:`mark` (what a fine-tune has not seen yet).
        self.mark_seq = self.last_seq
        self.committed_feedback = 0
        recent = store.con.execute(
            f"SELECT episode_id, max(step) + 1, arg_max(terminated, step), arg_max(truncated, step) "
            f"FROM {feedback_table(spec)} GROUP BY episode_id ORDER BY max(seq) DESC LIMIT ?",
            [episode_memory],
        ).fetchall()
        for episode, next_step, terminated, truncated in reversed(recent):
            self._learn_episode(episode, int(next_step), _ending(terminated, truncated))

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> FeedbackWriter:
        self._thread = threading.Thread(target=self._run, name=f"decision-core-writer-{self.spec.name}", daemon=True)
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def pending(self) -> int:
        return self._queue.qsize() + len(self._held)

    def close(self, timeout: float = 30.0) -> None:
        """Commit everything queued, then stop the thread (the store stays open; its owner closes it)."""
        if self._thread is None:
            return
        with self._held_lock:
            self._release_held()
            self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    # -- producers (any thread) -----------------------------------------------------------------------------------
    def _put(self, item: Any) -> None:
        if not self.alive:
            raise Unavailable(f"the decision writer is not running ({self._error or 'stopped'}); retry later")
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            raise Unavailable("the decision writer is overloaded; retry later") from None
        if self.metrics is not None:
            self.metrics.pending_writes.set(self._queue.qsize())

    def _release_held(self) -> None:
        """Move held decisions into the queue, ahead of what comes next (hold ``_held_lock``)."""
        if self._held:
            self._put(self._held)  # may raise (writer stopped, queue full): then nothing has moved
            self._held, self._held_rows = [], 0

    def add_decisions(self, block: DecisionBlock) -> None:
        """Queue decisions for storage (not waited for)."""
        if self._thread is None or self._error is not None:  # cheaper than Thread.is_alive on the hot path
            raise Unavailable(f"the decision writer is not running ({self._error or 'stopped'}); retry later")
        with self._held_lock:
            self._held.append(block)
            self._held_rows += len(block)
            if self._held_rows >= self.group_max:
                try:
                    self._release_held()
                except Unavailable:  # this block's decisions are not served, so they are not stored either
                    self._held.pop()
                    self._held_rows -= len(block)
                    raise

    def add_feedback(self, event: FeedbackEvent) -> Future[FeedbackResult]:
        """Queue a feedback event; the future resolves after its commit (or fails with a ServingError)."""
        with self._held_lock:  # decisions made before it commit with it or earlier
            self._release_held()
            self._put(event)
        return event.future

    def call(self, fn: Callable[[DecisionStore], T]) -> Future[T]:
        """Run ``fn(store)`` on the writer thread after everything queued before it is committed."""
        c = _Call(fn)
        with self._held_lock:
            self._release_held()
            self._put(c)
        return c.future

    def _take_held(self) -> list[DecisionBlock]:
        with self._held_lock:
            held, self._held, self._held_rows = self._held, [], 0
        return held

    def mark(self, seq: int) -> None:
        """Feedback up to ``seq`` has been handed to a fine-tune (call on the writer thread, in a snapshot)."""
        self.mark_seq = seq
        self._new_episodes = set()

    @property
    def new_episodes(self) -> int:
        """Episodes with feedback committed since the last :meth:`mark`, counted up to ``new_episodes_cap``."""
        return len(self._new_episodes)

    def ended(self, episode_id: str) -> bool:
        """Whether the caller's episode ``episode_id`` is known to have terminated (its last stored step is
        terminated), as far as this writer has seen it: episodes fed since the start and the ``episode_memory``
        most recent ones before. Safe to call from any thread (one dict lookup)."""
        return self._ends.get(EPISODE_PREFIX + episode_id) == TERMINATED

    @property
    def new_feedback(self) -> int:
        """Feedback committed since the last :meth:`mark`."""
        return self.last_seq - self.mark_seq

    # -- the thread -----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                # Nobody waits on decisions: they are picked up at each wake-up, and one commit takes all of them.
                items: list[Any] = []
                size = 0
                try:
                    item = self._queue.get(timeout=self.decision_linger_s)
                except queue.Empty:
                    pass
                else:
                    while True:
                        if isinstance(item, list):
                            items.extend(item)
                            size += sum(map(len, item))
                        else:
                            items.append(item)
                            size += 1
                        if size >= self.group_max:
                            break
                        try:
                            item = self._queue.get_nowait()
                        except queue.Empty:
                            break
                # Held decisions are newer than every queued feedback event: committing them first is harmless.
                items[:0] = self._take_held()
                if not items:
                    continue
                stop = self._process(items)
                if self.metrics is not None:
                    self.metrics.pending_writes.set(self._queue.qsize())
                if stop:
                    return
        except BaseException as exc:  # keep the reason for /healthz and for callers' 503s
            self._error = exc
            log.exception("the decision writer stopped")
            self._fail_pending(exc)
            raise

    def _fail_pending(self, exc: BaseException) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, FeedbackEvent | _Call):
                _resolve(item.future, error=Unavailable(f"the decision writer stopped: {exc}"))

    def _process(self, items: list[Any]) -> bool:
        """Commit runs of writes between calls; returns True on the stop sentinel."""
        blocks: list[DecisionBlock] = []
        events: list[FeedbackEvent] = []
        for item in items:
            if isinstance(item, DecisionBlock):
                blocks.append(item)
            elif isinstance(item, FeedbackEvent):
                events.append(item)
            else:
                if blocks or events:
                    self._commit(blocks, events)
                    blocks, events = [], []
                if item is _STOP:
                    return True
                self._run_call(item)
        if blocks or events:
            self._commit(blocks, events)
        return False

    def _run_call(self, call: _Call) -> None:
        if not call.future.set_running_or_notify_cancel():
            return
        try:
            call.future.set_result(call.fn(self.store))
        except BaseException as exc:
            call.future.set_exception(exc)

    # -- one group commit -------------------------------------------------------------------------------------------
    def _remember(self, rows: _DecisionRows) -> None:
        for did in self._cache.add_rows(rows):  # evicted ones are looked up in the store when needed
            self._fed.pop(did, None)

    def _lookup(self, ids: list[str]) -> tuple[dict[str, _Served], dict[str, FeedbackResult]]:
        """Decisions (and any feedback already stored for them) that are not in memory."""
        spec = self.spec
        rows = self.store.con.execute(
            f"SELECT d.decision_id, d.episode_id, d.state, d.action, d.action_mask, d.propensity, d.model_name, "
            f"d.model_version, f.episode_id, f.step FROM {decisions_table(spec)} d "
            f"LEFT JOIN {feedback_table(spec)} f ON d.decision_id = f.decision_id WHERE d.decision_id = ANY(?)",
            [ids],
        ).fetchall()
        found: dict[str, _Served] = {}
        done: dict[str, FeedbackResult] = {}
        for did, ep, state, action, mask, prop, mname, mver, f_ep, f_step in rows:
            found[did] = _Served(
                episode_id=EPISODE_PREFIX + ep,
                state=np.asarray(state, np.float32),
                action=np.asarray(action, np.float32),
                action_mask=None if mask is None else np.asarray(mask, np.bool_),
                propensity=float(prop),
                model_name=mname,
                model_version=mver,
            )
            if f_ep is not None:
                done[did] = FeedbackResult(did, "already_stored", f_ep, int(f_step))
        return found, done

    def _learn_episode(self, episode: str, next_step: int, end: str | None) -> None:
        self._next_step[episode] = next_step
        if end is None:
            self._ends.pop(episode, None)
        else:
            self._ends[episode] = end

    def _episode_steps(self, episodes: list[str], fresh: set[str]) -> tuple[dict[str, int], dict[str, str | None]]:
        """The next step of each episode and how its last stored step ended; ``fresh`` ones (a decision's own
        episode) start at 0 without a query."""
        missing = []
        for e in episodes:
            if e not in self._next_step:
                if e in fresh:
                    self._next_step[e] = 0
                else:
                    missing.append(e)
        if missing:
            rows = self.store.con.execute(
                f"SELECT episode_id, max(step) + 1, arg_max(terminated, step), arg_max(truncated, step) "
                f"FROM {feedback_table(self.spec)} WHERE episode_id = ANY(?) GROUP BY episode_id",
                [missing],
            ).fetchall()
            known = {e: (int(n), _ending(term, trunc)) for e, n, term, trunc in rows}
            for e in missing:
                self._learn_episode(e, *known.get(e, (0, None)))
        return {e: self._next_step[e] for e in episodes}, {e: self._ends.get(e) for e in episodes}

    def _stored_outcomes(self, ids: list[str]) -> dict[str, tuple[np.ndarray, float | None, bool, bool]]:
        """(next state, reward, terminated, truncated) of stored feedback, as the client sent it (retries only)."""
        spec = self.spec
        rows = self.store.con.execute(
            f"SELECT f.decision_id, s.next_state, f.reward, f.terminated, f.truncated FROM {feedback_table(spec)} f "
            f"JOIN {spec.table} s ON s.episode_id = f.episode_id AND s.step = f.step WHERE f.decision_id = ANY(?)",
            [ids],
        ).fetchall()
        return {did: (np.asarray(nxt, np.float32), reward, term, trunc) for did, nxt, reward, term, trunc in rows}

    def _commit(self, blocks: list[DecisionBlock], events: list[FeedbackEvent]) -> None:
        start = time.perf_counter()
        rows = _DecisionRows.of(blocks, _mask_width(self.spec) if self.spec.masked else None) if blocks else None
        if rows is not None:
            self._remember(rows)
        # Resolve every event against its decision: in memory first, then one query for the rest.
        served: dict[str, _Served] = {}
        answered: list[tuple[FeedbackEvent, FeedbackResult | BaseException]] = []
        cache = self._cache
        misses = [e.decision_id for e in events if e.decision_id not in cache.slots]
        stored, done = self._lookup(sorted(set(misses))) if misses else ({}, {})
        candidates: list[FeedbackEvent] = []
        retried: list[tuple[FeedbackEvent, FeedbackResult]] = []  # feedback stored by an earlier commit
        repeats: list[FeedbackEvent] = []  # a second event for a decision first seen in this same group
        first: dict[str, FeedbackEvent] = {}
        fresh: set[str] = set()  # episodes of one decision issued by this process: no stored step before it
        for e in events:
            did = e.decision_id
            fed = self._fed.get(did)
            prior = FeedbackResult(did, "already_stored", *fed) if fed is not None else done.get(did)
            if prior is not None:
                retried.append((e, prior))
                continue
            if did in first:
                repeats.append(e)
                continue
            slot = cache.slots.get(did)
            if slot is not None:
                x = served[did] = cache.served(slot)
                if x.episode_id == EPISODE_PREFIX + did:
                    fresh.add(x.episode_id)
            elif did in stored:
                served[did] = stored[did]
            else:
                answered.append(
                    (
                        e,
                        UnknownDecision(
                            f"decision_id '{did[:64]}' was not issued by this service", field="decision_id"
                        ),
                    )
                )
                continue
            first[did] = e
            candidates.append(e)
        if retried:
            # A retry (its first answer may have been lost) is acknowledged if it repeats what is stored.
            outcomes = self._stored_outcomes(sorted({e.decision_id for e, _ in retried}))
            for e, prior in retried:
                stored_outcome = outcomes.get(e.decision_id)
                changed = _differences(e, *stored_outcome) if stored_outcome is not None else []
                answered.append((e, _changed_outcome(e.decision_id, prior, changed) if changed else prior))
        # Dense step numbers per episode, in commit order; applied to the caches only after the commit succeeds.
        # An episode whose last step terminated takes no more; a continued truncated step is no longer a cut.
        next_steps, ends = self._episode_steps(sorted({served[e.decision_id].episode_id for e in candidates}), fresh)
        accepted: list[FeedbackEvent] = []
        results: list[FeedbackResult] = []
        refused: dict[str, Conflict] = {}
        continued: list[tuple[str, int]] = []  # (episode, step) of truncated steps a later one continues
        for e in candidates:
            ep = served[e.decision_id].episode_id
            step = next_steps[ep]
            if ends[ep] == TERMINATED:
                refused[e.decision_id] = exc = Conflict(
                    f"decision_id '{e.decision_id[:64]}' continues episode '{_caller_episode(ep)}', which ended "
                    f"with a terminated step (step {step - 1}); a terminated episode takes no later steps: start a "
                    "new episode id for the decisions that follow",
                    field="decision_id",
                )
                answered.append((e, exc))
                continue
            if ends[ep] == TRUNCATED:
                continued.append((ep, step - 1))
            accepted.append(e)
            results.append(FeedbackResult(e.decision_id, "stored", ep, step))
            next_steps[ep] = step + 1
            ends[ep] = _ending(e.terminated, e.truncated)
        seq0 = self.last_seq + 1
        try:
            # Stage frames stay registered until the next group replaces them (one statement fewer per frame).
            with self.store.transaction() as con:
                if rows is not None:
                    con.register("served_decisions_stage", self._decisions_frame(rows))
                    con.execute(f"INSERT INTO {decisions_table(self.spec)} SELECT * FROM served_decisions_stage")
                if accepted:
                    steps, fb = self._feedback_frames(accepted, results, served, seq0)
                    con.register("served_steps_stage", steps)
                    con.register("served_feedback_stage", fb)
                    # (episode, step) pairs are unique by construction: dense numbers past the stored ones.
                    self.store.insert_steps(self.spec, "served_steps_stage", con, dedupe=False, ensure=False)
                    con.execute(f"INSERT INTO {feedback_table(self.spec)} SELECT * FROM served_feedback_stage")
                if continued:
                    con.executemany(
                        f"UPDATE {self.spec.rows_table} SET truncated = false WHERE episode_id = ? AND step = ?",
                        continued,
                    )
        except Exception as exc:
            log.exception(
                "group commit of %d decisions and %d feedback events failed", sum(map(len, blocks)), len(accepted)
            )
            if self.metrics is not None:
                self.metrics.write_errors.inc()
            failure = Unavailable("the store could not commit this event; retry later")
            for e in events:
                _resolve(e.future, error=failure)
            if blocks and accepted:
                self._commit(blocks, [])  # keep the decisions if only the feedback was at fault
            del exc
            return
        # Committed: publish.
        self.last_seq += len(accepted)
        self.committed_feedback += len(accepted)
        for r in results:
            self._fed[r.decision_id] = (r.episode_id, r.step)
            if len(self._new_episodes) < self.new_episodes_cap:
                self._new_episodes.add(r.episode_id)
        for ep in {r.episode_id for r in results}:
            self._learn_episode(ep, next_steps[ep], ends[ep])
        if len(self._next_step) > self.cache_max:
            for ep in list(itertools.islice(iter(self._next_step), len(self._next_step) // 2)):
                del self._next_step[ep]
                self._ends.pop(ep, None)
        # Before the answers go out, so hooks are queued by the time a caller sees its acknowledgement.
        if accepted and self.on_committed is not None:
            try:
                self.on_committed(accepted, results)
            except Exception:
                log.exception("post-commit callback failed")
        for e, r in zip(accepted, results, strict=True):
            _resolve(e.future, r)
        stored_now = {r.decision_id: r for r in results}
        for e in repeats:
            did = e.decision_id
            if did in refused:
                answered.append((e, refused[did]))
                continue
            r = stored_now[did]
            prior = FeedbackResult(did, "already_stored", r.episode_id, r.step)
            f = first[did]
            changed = _differences(e, f.next_state, f.reward, f.terminated, f.truncated)
            answered.append((e, _changed_outcome(did, prior, changed) if changed else prior))
        for e, outcome in answered:
            if isinstance(outcome, BaseException):
                _resolve(e.future, error=outcome)
            else:
                _resolve(e.future, outcome)
        if self.metrics is not None:
            self.metrics.write_groups.observe(sum(map(len, blocks)) + len(events))
            self.metrics.commit_seconds.observe(time.perf_counter() - start)

    def _decisions_frame(self, rows: _DecisionRows) -> pa.Table:
        spec = self.spec
        s, g, a, k = spec.state_dim, len(spec.outcomes), spec.action_dim, _mask_width(spec)
        blocks, n = rows.blocks, len(rows.ids)
        chain = itertools.chain.from_iterable
        f32, b = pa.float32(), pa.bool_()
        masks: pa.Array = pa.nulls(n, pa.list_(b, k)) if rows.masks is None else _fixed(rows.masks, k, b)
        return pa.table(
            {
                "decision_id": pa.array(rows.ids, pa.string()),
                "episode_id": pa.array(rows.episode_ids, pa.string()),
                "step": pa.array(list(chain(bl.steps for bl in blocks)), pa.int32()),
                "request_id": pa.array(list(chain(bl.request_ids for bl in blocks)), pa.string()),
                "state": _fixed(rows.states, s, f32),
                "goal": _fixed(rows.goals, g, f32),
                "task": pa.array(list(chain(bl.tasks for bl in blocks)), pa.string()),
                "action": _fixed(rows.actions, a, f32),
                "action_mask": masks,
                "propensity": pa.array(rows.propensities),
                "epsilon": pa.array(rows.per_row([bl.epsilon for bl in blocks]), pa.float64()),
                "temperature": pa.array(rows.per_row([bl.temperature for bl in blocks]), pa.float64()),
                "model_name": pa.array(rows.per_row([bl.model_name for bl in blocks]), pa.string()),
                "model_version": pa.array(rows.per_row([bl.model_version for bl in blocks]), pa.string()),
                "created_at": pa.array(rows.per_row([bl.created_at for bl in blocks]), pa.timestamp("us")),
            }
        )

    def _feedback_frames(
        self,
        events: list[FeedbackEvent],
        results: list[FeedbackResult],
        served: dict[str, _Served],
        seq0: int,
    ) -> tuple[pa.Table, pa.Table]:
        spec = self.spec
        s, a, k = spec.state_dim, spec.action_dim, _mask_width(spec)
        n = len(events)
        f32, b = pa.float32(), pa.bool_()
        d = [served[e.decision_id] for e in events]
        seqs = np.arange(seq0, seq0 + n, dtype=np.int64)
        if spec.masked:
            masks: pa.Array = _fixed(
                np.stack([x.action_mask if x.action_mask is not None else np.ones(k, np.bool_) for x in d]), k, b
            )
        else:
            masks = pa.nulls(n, pa.list_(b, k))
        episode_ids = pa.array([r.episode_id for r in results], pa.string())
        steps_col = pa.array([r.step for r in results], pa.int32())
        rewards = pa.array([e.reward for e in events], pa.float64())
        terminated = pa.array([e.terminated for e in events], b)
        truncated = pa.array([e.truncated for e in events], b)
        received = pa.array([e.received_at for e in events], pa.timestamp("us"))
        steps = pa.table(
            {
                "episode_id": episode_ids,
                "step": steps_col,
                "state": _fixed(np.stack([x.state for x in d]).astype(np.float32), s, f32),
                "action": _fixed(np.stack([x.action for x in d]).astype(np.float32), a, f32),
                "action_mask": masks,
                "propensity": pa.array([x.propensity for x in d], pa.float64()),
                "reward": rewards,
                "next_state": _fixed(np.stack([e.next_state for e in events]).astype(np.float32), s, f32),
                "terminated": terminated,
                "truncated": truncated,
                "timestamp": received,
                "source_adapter": pa.array([SOURCE_ADAPTER] * n, pa.string()),
                "adapter_version": pa.array([x.model_version for x in d], pa.string()),
                "source_file": pa.array([f"serving:{x.model_name}" for x in d], pa.string()),
                "source_row": pa.array(seqs),
            }
        )
        fb = pa.table(
            {
                "decision_id": pa.array([e.decision_id for e in events], pa.string()),
                "seq": pa.array(seqs),
                "episode_id": episode_ids,
                "step": steps_col,
                "reward": rewards,
                "terminated": terminated,
                "truncated": truncated,
                "received_at": received,
            }
        )
        return steps, fb
