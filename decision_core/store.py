"""The decision store: one DuckDB file holding every domain's specs and steps.

Layout (schema version :data:`~decision_core.schema.SCHEMA_VERSION`):

- ``schema_info(key, value)``: ``schema_version`` and the creating library version;
- ``domains(name, version, spec_json, created_at)``: the registered domain specs;
- ``ingests(ingest_id, domain, adapter, adapter_version, source, fingerprint, rows, steps, ingested_at)``: what was
  loaded from where, so a re-ingest of the same source is recognised;
- ``steps_<domain>_rows`` and ``steps_<domain>_next``: one row per step in the common schema without its
  ``next_state``, and the next states that are not the following step's state (an episode's last step, logs whose
  next observation differs); the view ``steps_<domain>`` joins them into the full steps table
  (:func:`~decision_core.schema.store_ddl`).

Reads for training go through :meth:`DecisionStore.load_arrays`, which streams Arrow record batches straight
into preallocated contiguous numpy arrays (one scan of the rows table, no per-row Python), and fills the next
states from the following rows and the few explicit ones.
"""

from __future__ import annotations

import dataclasses
import mmap
import re
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from decision_core.errors import StoreError
from decision_core.schema import (
    DESCRIBED_FIELDS,
    ROW_COLUMNS,
    SCHEMA_VERSION,
    BoxActions,
    DiscreteActions,
    DomainSpec,
    store_ddl,
)

_META_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_info (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)",
    "CREATE TABLE IF NOT EXISTS domains (name VARCHAR PRIMARY KEY, version VARCHAR NOT NULL, "
    "spec_json VARCHAR NOT NULL, created_at TIMESTAMP DEFAULT current_timestamp)",
    "CREATE SEQUENCE IF NOT EXISTS ingest_ids",
    "CREATE TABLE IF NOT EXISTS ingests (ingest_id BIGINT PRIMARY KEY DEFAULT nextval('ingest_ids'), "
    "domain VARCHAR NOT NULL, adapter VARCHAR NOT NULL, adapter_version VARCHAR NOT NULL, "
    "source VARCHAR NOT NULL, fingerprint VARCHAR NOT NULL, rows BIGINT NOT NULL, steps BIGINT NOT NULL, "
    "ingested_at TIMESTAMP DEFAULT current_timestamp)",
)


def fetch_one(con: duckdb.DuckDBPyConnection, query: str, params: list[object] | None = None) -> tuple | None:
    """The first row of ``query`` (or ``None``), with the result fully consumed so the connection is free."""
    rows = con.execute(query, params or []).fetchall()
    return rows[0] if rows else None


#: DuckDB buffer pool size and threads while bulk-reading a domain into arrays (``DecisionStore._bounded_buffers``).
READ_BUFFER_MIB = 64
READ_THREADS = 2


def once_per_episode_masks(arrays: DomainArrays) -> np.ndarray:
    """(N, K) availability under "each action at most once per episode": actions taken at earlier steps of a
    step's episode are False, everything else True. One vectorised pass per step offset (longest episode)."""
    n, k = arrays.n_steps, arrays.spec.n_actions
    masks = np.ones((n, k), np.bool_)
    if n == 0:
        return masks
    taken = arrays.actions[:, 0].astype(np.int64)
    position = np.arange(n, dtype=np.int64) - np.repeat(
        arrays.episode_starts, arrays.episode_ends - arrays.episode_starts
    )
    for offset in range(1, int(position.max()) + 1):
        rows = np.flatnonzero(position >= offset)
        masks[rows, taken[rows - offset]] = False
    return masks


@dataclass
class DomainArrays:
    """A whole domain as contiguous arrays, episodes stored back to back.

    Episode ``e`` spans rows ``episode_starts[e]:episode_ends[e]``; ``rewards`` and ``propensities`` hold NaN
    where the logs had none; ``action_masks`` is ``None`` unless the spec declares masked actions (logged, or
    derived under ``once_per_episode``).
    """

    spec: DomainSpec
    states: np.ndarray  # (N, S) float32
    actions: np.ndarray  # (N, A) float32; discrete: the action index as a float
    next_states: np.ndarray  # (N, S) float32
    rewards: np.ndarray  # (N,) float32, NaN = not logged
    propensities: np.ndarray  # (N,) float32, NaN = not logged
    terminated: np.ndarray  # (N,) bool
    truncated: np.ndarray  # (N,) bool
    action_masks: np.ndarray | None  # (N, K) bool
    episode_starts: np.ndarray  # (E,) int64
    episode_ends: np.ndarray  # (E,) int64, exclusive

    @property
    def n_steps(self) -> int:
        return int(self.states.shape[0])

    @property
    def n_episodes(self) -> int:
        return int(self.episode_starts.shape[0])

    @property
    def nbytes(self) -> int:
        arrays = [
            self.states,
            self.actions,
            self.next_states,
            self.rewards,
            self.propensities,
            self.terminated,
            self.truncated,
            self.episode_starts,
            self.episode_ends,
        ]
        if self.action_masks is not None:
            arrays.append(self.action_masks)
        return sum(a.nbytes for a in arrays)

    @property
    def episode_index(self) -> np.ndarray:
        """(N,) episode number of every step."""
        lengths = self.episode_ends - self.episode_starts
        return np.repeat(np.arange(self.n_episodes, dtype=np.int64), lengths)

    @property
    def has_propensities(self) -> bool:
        """Whether every step has a logged propensity (see :attr:`propensity_episodes` for logs that mix)."""
        return bool(self.n_steps) and not bool(np.isnan(self.propensities).any())

    @property
    def propensity_episodes(self) -> np.ndarray:
        """(E,) bool: the episodes with a logged propensity on every step, which importance sampling can weigh
        (a store can mix logs with propensities and logs without, e.g. impressions and ratings)."""
        return episodes_with_propensities(self.propensities, self.episode_starts)

    @property
    def has_rewards(self) -> bool:
        return bool(self.n_steps) and not bool(np.isnan(self.rewards).any())

    def with_derived_masks(self) -> DomainArrays:
        """These arrays with the spec's ``once_per_episode`` rule applied to ``action_masks`` (itself otherwise)."""
        if not self.spec.once_per_episode:
            return self
        derived = once_per_episode_masks(self)
        masks = derived if self.action_masks is None else derived & self.action_masks
        return dataclasses.replace(self, action_masks=masks)

    @classmethod
    def concat(cls, parts: Sequence[DomainArrays]) -> DomainArrays:
        """The episodes of ``parts`` back to back, in order (e.g. the logs and the traffic served since)."""
        if not parts:
            raise ValueError("concat needs at least one DomainArrays")
        spec = parts[0].spec
        if any(not p.spec.same_data(spec) for p in parts[1:]):
            raise ValueError("concat needs arrays of one domain spec")
        masks = [p.action_masks for p in parts]
        if any(m is None for m in masks) and any(m is not None for m in masks):
            raise ValueError("concat needs action masks on all parts or on none")
        offsets = np.cumsum([0] + [p.n_steps for p in parts[:-1]])
        return cls(
            spec=spec,
            states=np.concatenate([p.states for p in parts]),
            actions=np.concatenate([p.actions for p in parts]),
            next_states=np.concatenate([p.next_states for p in parts]),
            rewards=np.concatenate([p.rewards for p in parts]),
            propensities=np.concatenate([p.propensities for p in parts]),
            terminated=np.concatenate([p.terminated for p in parts]),
            truncated=np.concatenate([p.truncated for p in parts]),
            action_masks=None if masks[0] is None else np.concatenate(masks),  # type: ignore[arg-type]
            episode_starts=np.concatenate([p.episode_starts + o for p, o in zip(parts, offsets, strict=True)]),
            episode_ends=np.concatenate([p.episode_ends + o for p, o in zip(parts, offsets, strict=True)]),
        )

    def select_episodes(self, episodes: np.ndarray) -> DomainArrays:
        """A copy holding only the given episode numbers (used to shard data by episode)."""
        episodes = np.asarray(episodes, dtype=np.int64)
        rows = np.concatenate(
            [np.arange(self.episode_starts[e], self.episode_ends[e]) for e in episodes] or [np.zeros(0, dtype=np.int64)]
        )
        lengths = self.episode_ends[episodes] - self.episode_starts[episodes]
        ends = np.cumsum(lengths)
        return DomainArrays(
            spec=self.spec,
            states=self.states[rows],
            actions=self.actions[rows],
            next_states=self.next_states[rows],
            rewards=self.rewards[rows],
            propensities=self.propensities[rows],
            terminated=self.terminated[rows],
            truncated=self.truncated[rows],
            action_masks=None if self.action_masks is None else self.action_masks[rows],
            episode_starts=ends - lengths,
            episode_ends=ends,
        )


class DecisionStore:
    """A DuckDB-backed store of domain specs and steps.

    One instance owns one connection; DuckDB allows one writing process per file, so a server keeps one store
    and funnels writes through it. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path) if str(path) != ":memory:" else Path(":memory:")
        if str(path) != ":memory:":
            if read_only and not self.path.exists():
                raise StoreError(f"no store at {self.path}; ingest logs first (decision-core ingest ...)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as exc:
            holder = re.search(r"PID (\d+)", str(exc))
            if "lock" in str(exc).lower() and holder is not None:
                raise StoreError(
                    f"store {path} is in use by process {holder[1]} (a running decision-core serve, train or ingest): "
                    "DuckDB lets one process open a store file at a time. Stop that process, or point this command "
                    "at another store with --db or DECISION_CORE_DB"
                ) from exc
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        self.read_only = read_only
        self._lock = threading.RLock()
        self._check_or_init_schema()

    # -- lifecycle ----------------------------------------------------------------------------------------
    def __enter__(self) -> DecisionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()

    def _check_or_init_schema(self) -> None:
        tables = {r[0] for r in self.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if "schema_info" in tables:
            row = fetch_one(self.con, "SELECT value FROM schema_info WHERE key = 'schema_version'")
            found = int(row[0]) if row else None
            if found == 1 and not self.read_only:
                self._migrate_from_v1()
                return
            if found == 1:
                raise StoreError(
                    f"store {self.path} was written with schema version 1 (next states in every row); open it once "
                    f"writable (e.g. decision-core show --db {self.path}) to convert it to version {SCHEMA_VERSION}"
                )
            if found != SCHEMA_VERSION:
                raise StoreError(
                    f"store {self.path} was written with schema version {found}, this library reads version "
                    f"{SCHEMA_VERSION}; re-ingest the logs into a new store (or use the library version that "
                    f"wrote it)"
                )
            return
        if tables and "schema_info" not in tables:
            raise StoreError(f"{self.path} is a DuckDB file but not a decision store (no schema_info table)")
        if self.read_only:
            raise StoreError(f"store {self.path} is empty; ingest logs first")
        with self.transaction() as con:
            for ddl in _META_DDL:
                con.execute(ddl)
            con.execute("INSERT INTO schema_info VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])

    def _migrate_from_v1(self) -> None:
        """Version 1 kept ``next_state`` in every row of ``steps_<domain>``: move each domain to the rows table,
        the explicit next states and the steps view, in one transaction."""
        with self.transaction() as con:
            for (spec_json,) in con.execute("SELECT spec_json FROM domains").fetchall():
                spec = DomainSpec.from_json(spec_json)
                old = f"{spec.table}_v1"
                con.execute(f"ALTER TABLE {spec.table} RENAME TO {old}")
                for ddl in store_ddl(spec):
                    con.execute(ddl)
                self.insert_steps(
                    spec, f"(SELECT * FROM {old} ORDER BY episode_id, step)", con, dedupe=False, ensure=False
                )
                con.execute(f"DROP TABLE {old}")
            con.execute("UPDATE schema_info SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION)])

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Run a block in one transaction: everything it wrote is committed together or not at all."""
        with self._lock:
            self.con.execute("BEGIN TRANSACTION")
            try:
                yield self.con
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            self.con.execute("COMMIT")

    @contextmanager
    def _bounded_buffers(self) -> Iterator[None]:
        """Bound DuckDB's buffer pool and its threads during a bulk read.

        The scanned blocks would otherwise stay cached beside the arrays we copy them into, doubling the read's
        memory; the arrays are the only copy training needs. DuckDB decodes on :data:`READ_THREADS` threads beside
        the thread that copies into the arrays (on 2 cores: 5.2M steps/s against 4.2-4.5M with one).
        """
        saved = {
            name: fetch_one(self.con, f"SELECT current_setting('{name}')")[0]  # type: ignore[index]
            for name in ("memory_limit", "threads")
        }
        self.con.execute(f"SET memory_limit = '{READ_BUFFER_MIB}MB'")
        self.con.execute(f"SET threads = {READ_THREADS}")
        try:
            yield
        finally:
            self.con.execute(f"SET memory_limit = '{saved['memory_limit']}'")
            self.con.execute(f"SET threads = {int(saved['threads'])}")

    # -- domains ------------------------------------------------------------------------------------------
    def ensure_domain(self, spec: DomainSpec, con: duckdb.DuckDBPyConnection | None = None) -> list[SpecChange]:
        """Register ``spec`` and create its steps table.

        A stored spec of another shape (the layout of the stored steps: state and outcome features, action labels
        or dimensions, logged masks) is refused, naming what differs. Any other difference (tolerances, reward,
        bounds, descriptions, version) updates the stored spec, and is returned so the caller can report it: models
        trained before were built on the old values."""
        c = con or self.con
        row = fetch_one(c, "SELECT spec_json FROM domains WHERE name = ?", [spec.name])
        if row is not None:
            changes = self._compare(DomainSpec.from_json(row[0]), spec)
            if changes:
                c.execute(
                    "UPDATE domains SET version = ?, spec_json = ? WHERE name = ?",
                    [spec.version, spec.to_json(), spec.name],
                )
            return changes
        for ddl in store_ddl(spec):
            c.execute(ddl)
        c.execute(
            "INSERT INTO domains (name, version, spec_json) VALUES (?, ?, ?)",
            [spec.name, spec.version, spec.to_json()],
        )
        return []

    def spec_changes(self, spec: DomainSpec) -> list[SpecChange]:
        """What writing ``spec`` would change in the stored spec of its domain (nothing is written); raises
        :class:`StoreError` as :meth:`ensure_domain` does when the shape differs."""
        with self._lock:
            row = fetch_one(self.con, "SELECT spec_json FROM domains WHERE name = ?", [spec.name])
        return [] if row is None else self._compare(DomainSpec.from_json(row[0]), spec)

    def _compare(self, stored: DomainSpec, spec: DomainSpec) -> list[SpecChange]:
        differences = shape_differences(stored, spec)
        if differences:
            raise StoreError(
                f"domain '{spec.name}' is stored in {self.path} with a different shape than the one being written: "
                f"{'; '.join(differences)}. The stored steps cannot be read under the new spec: write to another "
                f"domain name or a new store (--db), or re-ingest every log of the domain into a new store"
            )
        return changed_fields(stored, spec)

    def domains(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self.con.execute("SELECT name FROM domains ORDER BY name").fetchall()]

    def spec(self, domain: str) -> DomainSpec:
        with self._lock:
            row = fetch_one(self.con, "SELECT spec_json FROM domains WHERE name = ?", [domain])
        if row is None:
            known = self.domains()
            raise StoreError(
                f"no domain '{domain}' in store {self.path}. Stored: {', '.join(known) or 'none'}; "
                f"ingest it with: decision-core ingest <adapter> <files>"
            )
        return DomainSpec.from_json(row[0])

    # -- writing ------------------------------------------------------------------------------------------
    def insert_steps(
        self,
        spec: DomainSpec,
        relation: str,
        con: duckdb.DuckDBPyConnection,
        *,
        dedupe: bool = True,
        ensure: bool = True,
        into: str = "",
        keep_next: str | None = None,
        constants: Mapping[str, str] | None = None,
    ) -> int:
        """Insert the validated rows of table/view/frame ``relation`` (every column of the steps table) inside the
        caller's transaction, in the order given (write rows sorted by episode and step so reads stay contiguous).

        With ``dedupe``, rows whose (episode_id, step) are already stored are skipped; ``ensure=False`` skips
        registering the domain, for writers that did so once at start; ``into`` names an attached database
        (``"snapshot."``) to write to instead. A row's ``next_state`` is stored only when the row that follows it
        in ``relation`` is not its episode's next step with that state: a window pass over ``relation`` finds
        those rows, or, without ``dedupe``, ``keep_next`` names a boolean column of ``relation`` that already marks
        them (:func:`next_state_needed`). ``constants`` gives text columns that hold one value for every row (the
        provenance of one file), bound as parameters instead of read from ``relation``, which then may lack them: a
        million copies of a string cost DuckDB more to read than to write the constant. Returns the number of rows
        inserted.
        """
        if ensure:
            self.ensure_domain(spec, con)
        rows, explicit = f"{into}{spec.rows_table}", f"{into}{spec.next_table}"
        source = f"(SELECT *, row_number() OVER () AS _order FROM {relation})"
        if dedupe:  # a hash anti-join does not keep row order: the numbering restores it
            source = (
                f"(SELECT s.* FROM {source} s ANTI JOIN {rows} t ON s.episode_id = t.episode_id AND s.step = t.step)"
            )
        # Next states first: both statements must see the rows table as it was before this insert.
        if keep_next is not None and not dedupe:
            query = f"SELECT episode_id, step, next_state FROM {relation} WHERE {keep_next}"
        else:
            query = (
                f"SELECT episode_id, step, next_state FROM (SELECT episode_id, step, next_state, "
                f"lead(episode_id) OVER w AS e, lead(step) OVER w AS k, lead(state, 1, next_state) OVER w AS following "
                f"FROM {source} WINDOW w AS (ORDER BY _order)) "
                f"WHERE e IS NULL OR e <> episode_id OR k <> step + 1 OR following <> next_state"
            )
        con.execute(f"INSERT INTO {explicit} {query}").fetchall()
        fixed = dict(constants or {})
        cols = ", ".join(f"?::VARCHAR AS {c}" if c in fixed else c for c in ROW_COLUMNS)
        params = [fixed[c] for c in ROW_COLUMNS if c in fixed]
        query = f"SELECT {cols} FROM {source} ORDER BY _order" if dedupe else f"SELECT {cols} FROM {relation}"
        result = con.execute(f"INSERT INTO {rows} {query}", params).fetchall()
        return int(result[0][0]) if result else 0

    # -- reading ------------------------------------------------------------------------------------------
    def count_steps(self, domain: str) -> int:
        spec = self.spec(domain)
        with self._lock:
            return int(fetch_one(self.con, f"SELECT count(*) FROM {spec.rows_table}")[0])  # type: ignore[index]

    def summary(self, domain: str) -> dict[str, object]:
        spec = self.spec(domain)
        with self._lock:
            row = fetch_one(
                self.con,
                f"SELECT count(*), count(DISTINCT episode_id), count(propensity), count(reward), "
                f"sum(terminated::INT), min(timestamp), max(timestamp) FROM {spec.rows_table}",
            )
        assert row is not None
        return {
            "domain": domain,
            "steps": int(row[0]),
            "episodes": int(row[1]),
            "with_propensity": int(row[2]),
            "with_reward": int(row[3]),
            "terminated": int(row[4] or 0),
            "first": row[5],
            "last": row[6],
        }

    def load_arrays(self, domain: str, *, batch_rows: int = 262_144) -> DomainArrays:
        """Read all steps of ``domain`` into contiguous arrays: one scan of its rows, then its explicit next states."""
        spec = self.spec(domain)
        n = self.count_steps(domain)
        if n == 0:
            raise StoreError(f"domain '{domain}' has no steps in {self.path}; ingest logs first")
        arrays = self._read(spec, n, batch_rows, ordered=False)
        if arrays is None:  # stored out of episode order (e.g. appended served traffic): sort in DuckDB
            arrays = self._read(spec, n, batch_rows, ordered=True)
            assert arrays is not None
        return arrays.with_derived_masks()

    def _read(self, spec: DomainSpec, n: int, batch_rows: int, *, ordered: bool) -> DomainArrays | None:
        s, a = spec.state_dim, spec.action_dim
        k = spec.n_actions if spec.masked else 0
        states = _allocate((n, s), np.float32)
        actions = _allocate((n, a), np.float32)
        rewards = np.empty(n, np.float32)
        props = np.empty(n, np.float32)
        term = np.empty(n, np.bool_)
        trunc = np.empty(n, np.bool_)
        keys = np.empty(n, np.uint64)
        steps = np.empty(n, np.int32)
        masks = _allocate((n, k), np.bool_) if k else None
        mask_col = ", action_mask" if k else ""
        order = " ORDER BY episode_id, step" if ordered else ""
        query = (
            f"SELECT state, action, coalesce(reward, 'NaN'::FLOAT)::FLOAT, coalesce(propensity, 'NaN'::FLOAT)::FLOAT, "
            f"terminated, truncated, hash(episode_id), step{mask_col} FROM {spec.rows_table}{order}"
        )
        next_states = _allocate((n, s), np.float32)

        def copy(batch: pa.RecordBatch, i: int) -> None:
            """Copy one record batch into rows ``i:i+m`` (all but the next states)."""
            m = batch.num_rows
            cols = batch.columns
            states[i : i + m] = cols[0].values.to_numpy(zero_copy_only=True).reshape(m, s)
            actions[i : i + m] = cols[1].values.to_numpy(zero_copy_only=True).reshape(m, a)
            rewards[i : i + m] = cols[2].to_numpy()
            props[i : i + m] = cols[3].to_numpy()
            term[i : i + m] = cols[4].to_numpy(zero_copy_only=False)
            trunc[i : i + m] = cols[5].to_numpy(zero_copy_only=False)
            keys[i : i + m] = cols[6].to_numpy()
            steps[i : i + m] = cols[7].to_numpy()
            if masks is not None:
                masks[i : i + m] = cols[8].values.to_numpy(zero_copy_only=False).reshape(m, k)

        i = 0
        # DuckDB decodes the next batch (without the GIL) while a second thread copies the last one into the
        # arrays; most of a copy's time is the kernel handing out the arrays' fresh pages, so this thread copies
        # the batch's states into the next states (those of the rows before) meanwhile. At most two batches are in
        # flight. Under the lock no writer of this process runs between the two queries, and DuckDB lets no
        # other process write a file that is open here, so the rows and their explicit next states agree.
        with self._lock, self._bounded_buffers(), ThreadPoolExecutor(1, thread_name_prefix="load-arrays") as pool:
            pending: deque[Future[None]] = deque()
            for batch in self.con.sql(query).to_arrow_reader(batch_rows):
                if i + batch.num_rows > n:
                    i += batch.num_rows
                    break
                pending.append(pool.submit(copy, batch, i))
                m = batch.num_rows
                batch_states = batch.column(0).values.to_numpy(zero_copy_only=True).reshape(m, s)
                if i:
                    next_states[i - 1 : i + m - 1] = batch_states
                else:
                    next_states[: m - 1] = batch_states[1:]
                i += m
                if len(pending) > 1:
                    pending.popleft().result()
            for future in pending:
                future.result()
            explicit_query = f"SELECT hash(episode_id), step, next_state FROM {spec.next_table}"
            explicit = self.con.sql(explicit_query).to_arrow_table()
        if i != n:
            raise StoreError(f"domain '{spec.name}' changed while it was being read ({i} of {n} rows); retry")
        new_episode = np.empty(n, np.bool_)
        new_episode[0] = True
        np.not_equal(keys[1:], keys[:-1], out=new_episode[1:])
        starts = np.flatnonzero(new_episode)
        # Contiguity check: each episode key forms one run and steps rise by one within it.
        if len(np.unique(keys[starts])) != len(starts):
            return None
        step_diff = np.diff(steps)
        if not np.all(step_diff[~new_episode[1:]] == 1):
            if ordered:
                raise StoreError(f"domain '{spec.name}' has gaps in its step numbering; re-ingest the episode")
            return None
        ends = np.append(starts[1:], n)
        _fill_explicit_next_states(spec, next_states, keys, steps, starts, ends, explicit)
        return DomainArrays(
            spec=spec,
            states=states,
            actions=actions,
            next_states=next_states,
            rewards=rewards,
            propensities=props,
            terminated=term,
            truncated=trunc,
            action_masks=masks,
            episode_starts=starts.astype(np.int64),
            episode_ends=ends.astype(np.int64),
        )


def episodes_with_propensities(propensities: np.ndarray, episode_starts: np.ndarray) -> np.ndarray:
    """(E,) bool: which episodes (steps back to back, each non-empty, starting at ``episode_starts``) have a finite
    propensity on every step."""
    if len(episode_starts) == 0:
        return np.zeros(0, np.bool_)
    return np.logical_and.reduceat(np.isfinite(propensities), np.asarray(episode_starts, np.int64))


def next_state_needed(steps: pl.DataFrame) -> pl.Series:
    """Which rows of a steps frame need their ``next_state`` stored: those not followed, in the frame, by their
    episode's next step whose ``state`` is that next state (what :meth:`DecisionStore.insert_steps` keeps)."""
    n = steps.height
    if n == 0:
        return pl.Series("keep_next", [], pl.Boolean)
    states = steps["state"].to_numpy()
    next_states = steps["next_state"].to_numpy()
    differs = np.ones(n, np.bool_)
    np.any(next_states[:-1] != states[1:], axis=1, out=differs[:-1])
    same_episode = (steps["episode_id"] == steps["episode_id"].shift(-1)).fill_null(False)
    successor = (steps["step"] + 1 == steps["step"].shift(-1)).fill_null(False)
    return pl.Series("keep_next", differs) | ~(same_episode & successor)


def _allocate(shape: tuple[int, int], dtype: type) -> np.ndarray:
    """An uninitialised array in an anonymous memory mapping (4 KiB pages, faulted in as it is written).

    numpy asks the kernel for transparent huge pages on large arrays; where the kernel compacts memory to find them
    on first touch (``defrag=madvise``, common in VMs) that costs about a second per GiB, more than the read.
    """
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes == 0:
        return np.empty(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype).reshape(shape)


def _fill_explicit_next_states(
    spec: DomainSpec,
    next_states: np.ndarray,
    keys: np.ndarray,
    steps: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    explicit: pa.Table,
) -> None:
    """Overwrite the next states the store holds explicitly (``next_states`` holds the following rows' states):
    every episode's last step must be among them."""
    n, s = next_states.shape
    x_keys = explicit.column(0).to_numpy()
    x_steps = explicit.column(1).to_numpy()
    x_values = explicit.column(2).combine_chunks().values.to_numpy().reshape(-1, s)
    # Row of each explicit next state: its episode's first row plus its step offset.
    episode_keys = keys[starts]
    by_key = np.argsort(episode_keys)
    pos = np.minimum(np.searchsorted(episode_keys, x_keys, sorter=by_key), len(starts) - 1)
    episode = by_key[pos]
    rows = starts[episode] + (x_steps.astype(np.int64) - steps[starts[episode]])
    stray = (episode_keys[episode] != x_keys) | (rows < starts[episode]) | (rows >= ends[episode])
    if stray.any():
        raise StoreError(
            f"domain '{spec.name}' holds {int(stray.sum())} next state(s) in {spec.next_table} for steps it does "
            f"not have; the store was modified outside this library: re-ingest the domain into a new store"
        )
    next_states[rows] = x_values
    covered = np.zeros(n, np.bool_)
    covered[rows] = True
    missing = ~covered[ends - 1]
    if missing.any():
        raise StoreError(
            f"domain '{spec.name}': {int(missing.sum())} episode(s) have no next state for their last step in "
            f"{spec.next_table}; the store was modified outside this library: re-ingest the domain into a new store"
        )


@dataclass(frozen=True)
class SpecChange:
    """One field of a stored domain spec that a write changes: ``field`` is a path into the spec's JSON
    (``outcomes.resolved.tolerance``, ``reward``), ``stored`` and ``new`` its values."""

    field: str
    stored: object
    new: object

    def __str__(self) -> str:
        return f"{self.field}: {_shown(self.stored)} -> {_shown(self.new)}"

    @property
    def affects_models(self) -> bool:
        """Whether models trained under the stored spec are built on the changed value (every field but how the
        domain is described and evaluated, as :meth:`DomainSpec.same_data` tells them apart)."""
        return self.field.split(".")[0] not in DESCRIBED_FIELDS


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"


def _listed(names: Sequence[str]) -> str:
    return f"{len(names)} ({', '.join(names)})"


def shape_differences(stored: DomainSpec, new: DomainSpec) -> list[str]:
    """What makes ``new`` describe stored steps differently from ``stored``, one entry per field (empty: the
    same shape). The shape is what gives the stored arrays their meaning: the state and outcome features in order,
    the action space's kind, its labels (a discrete action is stored as an index into them) or dimension names,
    and whether masks are logged."""
    differences = []
    for what, old, now in (
        ("state features", stored.state_names, new.state_names),
        ("outcome features", stored.outcome_names, new.outcome_names),
    ):
        if old == now:
            continue
        removed = [n for n in old if n not in now]
        added = [n for n in now if n not in old]
        if removed or added:
            change = ", ".join(
                part for part in (f"removed {removed}" if removed else "", f"added {added}" if added else "") if part
            )
        else:
            change = "reordered"
        differences.append(f"{what} {change} (stored {_listed(old)}, new {_listed(now)})")
    a, b = stored.actions, new.actions
    if isinstance(a, DiscreteActions) and isinstance(b, DiscreteActions):
        if a.labels != b.labels:
            meaning = "" if a.n != b.n else "; the stored action indices would name other actions"
            differences.append(f"action labels: stored {_listed(a.labels)}, new {_listed(b.labels)}{meaning}")
        if a.masked != b.masked:
            differences.append(f"logged action masks: stored {a.masked}, new {b.masked}")
    elif isinstance(a, BoxActions) and isinstance(b, BoxActions):
        if a.names != b.names:
            differences.append(f"action dimensions: stored {_listed(a.names)}, new {_listed(b.names)}")
    else:
        differences.append(f"action space: stored {a.kind} ({stored.summary()}), new {b.kind} ({new.summary()})")
    return differences


def changed_fields(stored: DomainSpec, new: DomainSpec) -> list[SpecChange]:
    """Every field in which ``new`` differs from ``stored`` (features and outcomes are matched by name)."""
    changes: list[SpecChange] = []

    def walk(path: str, old: object, now: object) -> None:
        if old == now:
            return
        if isinstance(old, dict) and isinstance(now, dict):
            for key in dict.fromkeys([*old, *now]):
                walk(f"{path}.{key}" if path else str(key), old.get(key), now.get(key))
            return
        if isinstance(old, list | tuple) and isinstance(now, list | tuple):
            items = [*old, *now]
            if all(isinstance(x, dict) and "name" in x for x in items):  # features, outcomes: matched by name
                walk(path, {x["name"]: x for x in old}, {x["name"]: x for x in now})
                return
        changes.append(SpecChange(path, old, now))

    walk("", stored.to_dict(), new.to_dict())
    return changes
