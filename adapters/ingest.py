"""Ingest: raw files -> validated steps -> the store, in one transaction.

Each file is scanned lazily, mapped, type-checked and transformed by its adapter, then validated against the
domain's steps schema and staged; only when every file has passed do the staged rows go into the steps table,
in the same transaction. On any error nothing is written, and the error names the file, row, column and rule.
Rows whose (episode_id, step) are already stored are skipped, so re-ingesting a source adds nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import polars as pl

from adapters.base import Adapter, ColumnMapping
from decision_core.errors import IngestError
from decision_core.schema import STEP_COLUMNS, DiscreteActions, DomainSpec, steps_schema
from decision_core.store import DecisionStore, fetch_one, next_state_needed

if TYPE_CHECKING:
    from polars._typing import TimeUnit

_PROVENANCE = ("source_adapter", "adapter_version", "source_file")


@dataclass(frozen=True)
class IngestReport:
    domain: str
    files: int
    rows_read: int
    steps_staged: int
    steps_inserted: int

    @property
    def steps_skipped(self) -> int:
        return self.steps_staged - self.steps_inserted


#: Raw files larger than this are ingested in several passes, each holding a hash-partition of the episodes.
PARTITION_BYTES = 256 * 2**20


def prepare_parts(
    adapter: Adapter,
    path: Path,
    mapping: ColumnMapping | None = None,
    *,
    partition_bytes: int = PARTITION_BYTES,
) -> Iterator[tuple[pl.DataFrame, int]]:
    """Read, check and transform one raw file; yields validated steps frames, sorted by (episode_id, step), and
    their raw row counts.

    A file larger than ``partition_bytes`` is processed in ``ceil(size / partition_bytes)`` passes when the
    adapter declares ``episode_columns``: each pass keeps the episodes whose key hashes to it, so per-episode
    window functions still see whole episodes while memory holds only one slice of the file.
    """
    if not path.exists():
        raise IngestError(file=str(path), rule="file not found", hint="check the path")
    lf = adapter.scan(path)
    present = lf.collect_schema().names()
    if mapping is not None:
        lf = mapping.apply(lf, present)
        present = lf.collect_schema().names()
    missing = [c for c, col in adapter.columns.items() if col.required and c not in present]
    if missing:
        raise IngestError(
            file=str(path),
            column=missing[0],
            rule=f"missing column (adapter '{adapter.name}' requires {', '.join(missing)})",
            hint=f"the file has {', '.join(present[:20])}; rename columns with --mapping FILE",
        )
    typed_scan = _typed_csv_scan(adapter, path, mapping, present)
    keys = [c for c in adapter.episode_columns if c in present]
    parts = max(1, -(-path.stat().st_size // partition_bytes)) if keys else 1
    spec = adapter.spec()
    for part in range(parts):
        raw = _parse_types(adapter, path, _partition(lf, keys, part, parts), present, typed_scan, keys, part, parts)
        try:
            steps = adapter.transform(raw.lazy()).collect()
        except IngestError as exc:
            raise exc.in_file(str(path)) from None
        steps = steps.with_columns(
            pl.lit(adapter.name).alias("source_adapter"),
            pl.lit(adapter.version).alias("adapter_version"),
            pl.lit(str(path)).alias("source_file"),
        )
        steps = conform(steps, spec, str(path))
        if not _in_episode_order(steps):
            steps = steps.sort("episode_id", "step", maintain_order=True)
        validate_rows(steps, spec, str(path), episodes_sorted=True)
        check_episode_rows(steps, str(path))
        yield steps, raw.height


def _partition(lf: pl.LazyFrame, keys: list[str], part: int, parts: int) -> pl.LazyFrame:
    lf = lf.with_row_index("source_row")
    if parts == 1:
        return lf
    key = pl.concat_str([pl.col(c).cast(pl.String) for c in keys], separator="\x1f", ignore_nulls=True)
    return lf.filter(key.hash(seed=0) % parts == part)


def _typed_csv_scan(
    adapter: Adapter, path: Path, mapping: ColumnMapping | None, present: list[str]
) -> pl.LazyFrame | None:
    """A scan that parses the declared columns natively while reading the CSV (the fast path), or ``None``
    when the adapter reads its files itself or a mapping fills in defaults."""
    if path.suffix.lower() != ".csv" or type(adapter).scan is not Adapter.scan:
        return None
    if mapping is not None and mapping.defaults:
        return None
    source_name = {dst: src for src, dst in (mapping.rename if mapping else {}).items()}
    # Booleans stay text here (the CSV reader takes only true/false; logs also write 1/0, yes/no), and so do
    # timestamps (str.to_datetime on the text is cheaper than the reader's own parsing).
    dtypes = {
        source_name.get(c, c): col.dtype
        for c, col in adapter.columns.items()
        if c in present and col.dtype != pl.Boolean and not isinstance(col.dtype, (pl.Datetime, pl.Date))
    }
    lf = pl.scan_csv(path, infer_schema=False, schema_overrides=dtypes)
    if mapping is not None:
        lf = mapping.apply(lf, lf.collect_schema().names())
    return lf


def _parse_types(
    adapter: Adapter,
    path: Path,
    lf: pl.LazyFrame,
    present: list[str],
    typed_scan: pl.LazyFrame | None,
    keys: list[str],
    part: int,
    parts: int,
) -> pl.DataFrame:
    """The declared columns, typed, with ``source_row``; a value that does not parse is reported by row."""
    used = [c for c in adapter.columns if c in present]
    typed = None
    if typed_scan is not None:
        try:
            typed = _partition(typed_scan, keys, part, parts).select("source_row", *used).collect()
        except pl.exceptions.PolarsError:
            typed = None  # some value does not parse: the slow path below finds and names it
    # The fast path leaves only booleans as text; the slow path parses every column and names a bad value.
    typed = _parse_text(adapter, path, typed if typed is not None else lf.select("source_row", *used).collect(), used)
    for c, col in adapter.columns.items():
        if col.required and typed[c].null_count():
            i = int(typed[c].is_null().arg_true()[0])
            raise IngestError(
                file=str(path),
                row=int(typed["source_row"][i]),
                column=c,
                rule="missing value in a required column",
                hint="fill it in or drop the row",
            )
    return typed


_BOOLEAN_TEXT = {"true": True, "false": False, "1": True, "0": False, "True": True, "False": False}


#: ISO 8601 date and time separators tried before polars infers a timestamp's layout.
_DATETIME_SEPARATORS = ("T", " ")
_FRACTION_DIGITS: dict[str, int] = {"ms": 3, "us": 6, "ns": 9}
_DURATION_UNIT = {"ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}


def _iso_seconds(column: str, separator: str, unit: TimeUnit) -> pl.Expr:
    """``YYYY-mm-dd<separator>HH:MM:SS`` with an optional fraction of 1-9 digits, or null for any other shape.

    polars parses a fixed layout without a fraction on a fast path (0.04 s per 1M values on 2 cores) and one with
    ``%.f`` on a slow one (0.20 s): the first 19 characters go through the fast path and the fraction is added as
    an integer count of ``unit`` (truncated to it, as ``%.f`` does), 0.11 s in all."""
    text = pl.col(column)
    length = text.str.len_bytes()
    head = text.str.slice(0, 19).str.to_datetime(f"%Y-%m-%d{separator}%H:%M:%S", time_unit=unit, strict=False)
    fraction = text.str.slice(20)
    digits = _FRACTION_DIGITS[unit]
    shaped = (length == 19) | (
        (length >= 21)
        & (length <= 29)
        & (text.str.slice(19, 1) == ".")
        & ~fraction.str.starts_with("+")  # an unsigned cast reads "+5" as 5; every other non-digit fails it
        & fraction.cast(pl.UInt64, strict=False).is_not_null()
    )
    ticks = fraction.str.slice(0, digits).str.pad_end(digits, "0").cast(pl.Int64, strict=False)
    return pl.when(shaped).then(head + pl.duration(**{_DURATION_UNIT[unit]: ticks}, time_unit=unit))


def _parse_datetimes(frame: pl.DataFrame, column: str, unit: TimeUnit) -> pl.Series | None:
    """``frame[column]`` parsed as ISO 8601 (``T`` or a space between date and time, seconds with or without a
    fraction) when every value is, or ``None`` (then the caller infers the layout, and reports a value that does
    not parse). The separator is the first value's. Parsed through frame expressions, which polars runs on several
    threads, not Series methods, which run on one."""
    text = frame[column]
    first = text.drop_nulls().head(1).to_list()
    if not first or len(first[0]) < 19 or first[0][10] not in _DATETIME_SEPARATORS:
        return None
    separator = first[0][10]
    candidates = [_iso_seconds(column, separator, unit)]
    if len(first[0]) == 19:  # whole seconds: try the fast layout on the whole column first
        layout = f"%Y-%m-%d{separator}%H:%M:%S"
        candidates.insert(0, pl.col(column).str.to_datetime(layout, time_unit=unit, strict=False))
    for parse in candidates:
        parsed = frame.select(parse.alias(column)).to_series()
        if parsed.null_count() == text.null_count():
            return parsed
    return None


def _parse_dates(frame: pl.DataFrame, column: str) -> pl.Series | None:
    """``frame[column]`` parsed as ``YYYY-mm-dd`` when every value is (0.03 s per 1M values, against 0.17 s for
    an inferred layout), or ``None``."""
    parsed = frame.select(pl.col(column).str.to_date("%Y-%m-%d", strict=False)).to_series()
    return parsed if parsed.null_count() == frame[column].null_count() else None


def _parse_text(adapter: Adapter, path: Path, frame: pl.DataFrame, used: list[str]) -> pl.DataFrame:
    casts = []
    for c in used:
        dtype = adapter.columns[c].dtype
        col = pl.col(c)
        if frame.schema[c] == pl.String and dtype == pl.Boolean:
            exact = frame[c].replace_strict(_BOOLEAN_TEXT, default=None, return_dtype=pl.Boolean)
            if exact.null_count() == frame[c].null_count():  # every value is a plain spelling: done
                casts.append(pl.lit(exact).alias(c))
                continue
            lowered = col.str.strip_chars().str.to_lowercase()
            parsed = (
                pl.when(lowered.is_in(["true", "1", "t", "yes"]))
                .then(True)
                .when(lowered.is_in(["false", "0", "f", "no"]))
                .then(False)
                .otherwise(None)
            )
        elif frame.schema[c] == pl.String and isinstance(dtype, pl.Datetime):
            unit: TimeUnit = dtype.time_unit or "us"
            known = _parse_datetimes(frame, c, unit)
            if known is not None:
                casts.append(pl.lit(known).alias(c))
                continue
            text = col.str.strip_chars()
            parsed = pl.coalesce(
                text.str.to_datetime(time_unit=unit, strict=False),
                # With a UTC offset ("Z", "+02:00"): converted to UTC, stored without the zone.
                text.str.to_datetime("%+", time_unit=unit, time_zone="UTC", strict=False).dt.replace_time_zone(None),
            )
        elif frame.schema[c] == pl.String and dtype == pl.Date:
            known = _parse_dates(frame, c)
            if known is not None:
                casts.append(pl.lit(known).alias(c))
                continue
            parsed = col.str.strip_chars().str.to_date(strict=False)
        elif frame.schema[c] == pl.String and dtype != pl.String:
            parsed = col.str.strip_chars().cast(dtype, strict=False)
        else:
            parsed = col.cast(dtype, strict=False)
        casts.append(parsed.alias(c))
    typed = frame.with_columns(casts)
    for c in used:
        if frame.schema[c] == typed.schema[c] and frame.schema[c] != pl.String:
            continue
        bad = frame[c].is_not_null() & (frame[c].cast(pl.String) != "") & typed[c].is_null()
        if bad.any():
            i = int(bad.arg_true()[0])
            raise IngestError(
                file=str(path),
                row=int(frame["source_row"][i]),
                column=c,
                rule=f"wrong type: expected {adapter.columns[c].dtype}",
                value=frame[c][i],
                hint="fix the value or drop the row",
            )
    return typed


def _in_episode_order(steps: pl.DataFrame) -> bool:
    """Whether rows already run episode by episode (ids ascending) with rising steps: adapters usually emit
    them so, and one pass over adjacent rows is much cheaper than a sort."""
    if steps.height < 2:
        return True
    ep, step = steps["episode_id"], steps["step"]
    later = ep.tail(-1) > ep.head(-1)
    rising = (ep.tail(-1) == ep.head(-1)) & (step.tail(-1) > step.head(-1))
    return bool((later | rising).all())


def check_episode_rows(steps: pl.DataFrame, file: str) -> None:
    """Step rules within one frame sorted by (episode_id, step): no duplicate or missing steps, and an episode
    ends (terminated/truncated) only on its last step."""
    if steps.height < 2:
        return
    same = steps["episode_id"].head(-1) == steps["episode_id"].tail(-1)  # row i and i+1 share the episode
    step = steps["step"]
    gap = step.tail(-1) - step.head(-1)
    ended = steps["terminated"].head(-1) | steps["truncated"].head(-1)
    rows = steps["source_row"]
    for bad, rule, column in (
        (same & (gap == 0), "duplicate step {step} of episode '{episode}'", "step"),
        (same & (gap != 1), "step gap in episode '{episode}': step {prev} is followed by step {step}", "step"),
        (same & ended, "episode '{episode}' ends at step {prev} but has later steps", "terminated"),
    ):
        if bad.any():
            i = int(bad.arg_true()[0])
            # a duplicate is named at its first occurrence in the file, a gap at the step after it
            row = min(rows[i], rows[i + 1]) if gap[i] == 0 else rows[i + 1] if column == "step" else rows[i]
            raise IngestError(
                file=file,
                row=int(row),
                column=column,
                rule=rule.format(episode=steps["episode_id"][i], step=int(step[i + 1]), prev=int(step[i])),
                hint="each episode's steps must be logged once each, without gaps",
            )


def conform(steps: pl.DataFrame, spec: DomainSpec, file: str) -> pl.DataFrame:
    """Select the steps columns in order and cast them to the schema; a column that is absent or cannot be
    cast is an adapter bug, reported as such."""
    schema = steps_schema(spec)
    missing = [c for c in STEP_COLUMNS if c not in steps.columns and c not in ("action_mask",)]
    if missing:
        raise IngestError(file=file, rule=f"adapter output lacks columns {missing}", hint="fix the adapter")
    if "action_mask" not in steps.columns:
        steps = steps.with_columns(pl.lit(None, dtype=schema["action_mask"]).alias("action_mask"))
    try:
        return steps.select([pl.col(c).cast(schema[c]) for c in STEP_COLUMNS])
    except pl.exceptions.PolarsError as exc:
        raise IngestError(file=file, rule=f"adapter output does not fit the steps schema: {exc}") from exc


def _first(frame: pl.DataFrame, bad: pl.Series) -> int:
    return int(frame["source_row"][int(bad.arg_true()[0])])


def _distinct_in_runs(steps: pl.DataFrame, actions: np.ndarray, n_actions: int) -> bool:
    """Whether no action repeats within a run of rows of one episode: a bitmap over (run, action), a few times
    cheaper than hashing (episode_id, action) pairs. ``False`` also when the bitmap would be large (then the
    caller's exact check decides)."""
    runs = steps.select(pl.col("episode_id").rle_id()).to_series().to_numpy()
    size = (int(runs[-1]) + 1) * n_actions
    if size > 16 * len(runs) + (1 << 20):
        return False
    seen = np.zeros(size, np.bool_)
    seen[runs.astype(np.int64) * n_actions + actions.astype(np.int64)] = True
    return int(np.count_nonzero(seen)) == len(runs)


def validate_rows(steps: pl.DataFrame, spec: DomainSpec, file: str, *, episodes_sorted: bool = False) -> None:
    """Row-level rules of the common schema; raises :class:`IngestError` on the first row that breaks one.
    ``episodes_sorted``: each episode's rows are adjacent (a faster once-per-episode check)."""
    for c in STEP_COLUMNS:
        if c in ("action_mask", "propensity", "reward", "timestamp"):
            continue
        if steps[c].null_count():
            bad = steps[c].is_null()
            raise IngestError(file=file, row=_first(steps, bad), column=c, rule="missing value (null)")
    n = steps.height
    if n == 0:
        return
    names = spec.state_names
    for col in ("state", "next_state"):
        values = steps[col].to_numpy().reshape(n, spec.state_dim)
        finite = np.isfinite(values)
        if not finite.all():
            r, f = np.argwhere(~finite)[0]
            raise IngestError(
                file=file,
                row=int(steps["source_row"][int(r)]),
                column=f"{col}.{names[f]}",
                rule="NaN or infinite value in a state feature",
                value=float(values[r, f]),
                hint="impute or drop the row before ingesting",
            )
    actions = steps["action"].to_numpy().reshape(n, spec.action_dim)
    acts = spec.actions
    if isinstance(acts, DiscreteActions):
        a = actions[:, 0]
        bad_np = ~np.isfinite(a) | (a != np.round(a)) | (a < 0) | (a >= acts.n)
        if bad_np.any():
            r = int(np.flatnonzero(bad_np)[0])
            raise IngestError(
                file=file,
                row=int(steps["source_row"][r]),
                column="action",
                rule=f"action outside the space: expected an index in 0..{acts.n - 1}",
                value=float(a[r]),
            )
        if acts.once_per_episode and not (episodes_sorted and _distinct_in_runs(steps, a, acts.n)):
            repeated = ~steps.select(
                pl.struct(pl.col("episode_id"), pl.col("action").arr.first()).is_first_distinct()
            ).to_series()
            if repeated.any():
                r = int(repeated.arg_true()[0])
                raise IngestError(
                    file=file,
                    row=int(steps["source_row"][r]),
                    column="action",
                    rule=f"action {int(a[r])} repeats within episode '{steps['episode_id'][r]}', but domain "
                    f"'{spec.name}' allows each action once per episode",
                    value=int(a[r]),
                    hint="drop the repeated decision, or declare the domain without once_per_episode",
                )
        if acts.masked:
            masks = steps["action_mask"]
            if masks.null_count():
                raise IngestError(
                    file=file,
                    row=_first(steps, masks.is_null()),
                    column="action_mask",
                    rule="missing action mask (the domain declares masked actions)",
                )
            m = masks.to_numpy().reshape(n, acts.n)
            unavailable = ~m[np.arange(n), a.astype(np.int64)]
            if unavailable.any():
                r = int(np.flatnonzero(unavailable)[0])
                raise IngestError(
                    file=file,
                    row=int(steps["source_row"][r]),
                    column="action",
                    rule="action was not available under the logged action mask",
                    value=int(a[r]),
                )
    else:
        low, high = np.asarray(acts.low, np.float32), np.asarray(acts.high, np.float32)
        bad_np = ~np.isfinite(actions) | (actions < low) | (actions > high)
        if bad_np.any():
            r, d = np.argwhere(bad_np)[0]
            raise IngestError(
                file=file,
                row=int(steps["source_row"][int(r)]),
                column=f"action.{acts.names[d]}",
                rule=f"action outside the space: expected {acts.low[d]} <= value <= {acts.high[d]}",
                value=float(actions[r, d]),
            )
    p = steps["propensity"]
    # A discrete action's propensity is a probability; a Box action's is a density, which may exceed 1.
    if spec.discrete:
        bad = p.is_not_null() & (p.is_nan() | (p <= 0) | (p > 1))
        rule, meaning = "propensity outside (0, 1]", "probability"
    else:
        bad = p.is_not_null() & (~p.is_finite() | (p <= 0))
        rule, meaning = "propensity must be a positive, finite density", "probability density"
    if bad.any():
        i = int(bad.arg_true()[0])
        raise IngestError(
            file=file,
            row=int(steps["source_row"][i]),
            column="propensity",
            rule=rule,
            value=p[i],
            hint=f"a propensity is the {meaning} the logging policy gave the action; leave it empty if unknown",
        )
    r_ = steps["reward"]
    bad = r_.is_not_null() & ~r_.is_finite()
    if bad.any():
        raise IngestError(file=file, row=_first(steps, bad), column="reward", rule="reward is NaN or infinite")
    both = steps["terminated"] & steps["truncated"]
    if both.any():
        raise IngestError(
            file=file,
            row=_first(steps, both),
            column="truncated",
            rule="a step cannot be both terminated and truncated",
        )


_SUMMARY_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS ingest_episodes (episode_id VARCHAR, first_step INTEGER, last_step INTEGER, "
    "ended BOOLEAN, source_file VARCHAR, first_row BIGINT, last_row BIGINT)"
)


def _summarise(steps: pl.DataFrame) -> pl.DataFrame:
    """One row per episode of a sorted frame: the step range it covers and whether it ends there."""
    return steps.group_by("episode_id", maintain_order=True).agg(
        pl.col("step").first().alias("first_step"),
        pl.col("step").last().alias("last_step"),
        (pl.col("terminated").last() | pl.col("truncated").last()).alias("ended"),
        pl.col("source_file").first(),
        pl.col("source_row").first().alias("first_row"),
        pl.col("source_row").last().alias("last_row"),
    )


def _check_across_frames(con: duckdb.DuckDBPyConnection, spec: DomainSpec) -> None:
    """Episode rules that span files or partitions, checked on the per-episode summary (one row per episode
    and frame), against what was stored before this ingest."""
    split = fetch_one(
        con,
        "SELECT episode_id, first_step, prev_last, source_file, first_row, prev_ended FROM ("
        "  SELECT *, lag(last_step) OVER w AS prev_last, lag(ended) OVER w AS prev_ended FROM ingest_episodes"
        "  WINDOW w AS (PARTITION BY episode_id ORDER BY first_step)"
        ") WHERE prev_last IS NOT NULL AND (first_step <> prev_last + 1 OR prev_ended) LIMIT 1",
    )
    if split:
        episode, first, prev_last, file, row, prev_ended = split
        if prev_ended:
            rule = f"episode '{episode}' ended at step {prev_last} but has later steps in another file"
        elif first <= prev_last:
            rule = f"duplicate step {first} of episode '{episode}' (also in another file)"
        else:
            rule = f"step gap in episode '{episode}': step {prev_last} is followed by step {first} in another file"
        raise IngestError(file=file, row=int(row), column="step", rule=rule)
    start = fetch_one(
        con,
        f"SELECT e.episode_id, e.first_step, e.source_file, e.first_row FROM ("
        f"  SELECT episode_id, arg_min(first_step, first_step) AS first_step, arg_min(source_file, first_step) "
        f"  AS source_file, arg_min(first_row, first_step) AS first_row FROM ingest_episodes GROUP BY episode_id"
        f") e WHERE e.first_step > 0 AND NOT EXISTS ("
        f"  SELECT 1 FROM {spec.rows_table} t WHERE t.episode_id = e.episode_id AND t.step = e.first_step - 1"
        f") LIMIT 1",
    )
    if start:
        raise IngestError(
            file=start[2],
            row=int(start[3]),
            column="step",
            rule=f"episode '{start[0]}' starts at step {start[1]} but its earlier steps are not stored",
            hint="ingest the episode's earlier steps too",
        )


def fingerprint(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "blake2b").hexdigest()[:32]


def ingest(
    adapter: Adapter,
    paths: Sequence[str | Path],
    store: DecisionStore,
    *,
    mapping: ColumnMapping | None = None,
    progress: Callable[[str], None] | None = None,
    partition_bytes: int = PARTITION_BYTES,
) -> IngestReport:
    """Validate every file and write all of them in one transaction; on any error nothing is written.

    Each frame (a file, or a partition of a large one) is checked row by row and episode by episode in polars,
    then inserted straight into the steps table, skipping (episode, step) pairs already stored; rules that span
    frames are checked on a per-episode summary before the commit.
    """
    spec = adapter.spec()
    files = [Path(p) for p in paths]
    if not files:
        raise IngestError(file="(none)", rule="no input files given", hint="pass one or more raw log files")
    rows_read = staged = inserted = 0
    per_file: list[tuple[Path, int, int]] = []
    # The files' fingerprints are hashed on a second thread (hashing releases the GIL) while they are parsed.
    with ThreadPoolExecutor(1, thread_name_prefix="fingerprint") as hasher, store.transaction() as con:
        digests = {path: hasher.submit(fingerprint, path) for path in files if path.exists()}
        store.ensure_domain(spec, con)
        con.execute(_SUMMARY_DDL)
        con.execute("DELETE FROM ingest_episodes")
        for path in files:
            if progress:
                progress(str(path))
            file_rows = file_steps = 0
            for frame, n_raw in prepare_parts(adapter, path, mapping, partition_bytes=partition_bytes):
                file_rows += n_raw
                file_steps += frame.height
                # Which next states the store must keep (the rest are the following rows' states), marked here in
                # one vectorised pass rather than by a window over the frame in DuckDB.
                frame = frame.with_columns(next_state_needed(frame).alias("_keep_next"))
                con.register("ingest_summary", _summarise(frame))
                # The provenance is one value per file: bound as constants, not read as a million strings each.
                provenance = {c: frame[c][0] for c in _PROVENANCE} if frame.height else None
                con.register("ingest_frame", frame.drop(_PROVENANCE) if provenance else frame)
                # Episodes neither stored nor seen earlier in this ingest go in without the dedupe anti-join.
                known = fetch_one(
                    con,
                    f"SELECT count(*) FROM ingest_summary s WHERE EXISTS (SELECT 1 FROM {spec.rows_table} t "
                    f"WHERE t.episode_id = s.episode_id) OR EXISTS (SELECT 1 FROM ingest_episodes e "
                    f"WHERE e.episode_id = s.episode_id)",
                )[0]  # type: ignore[index]
                con.execute("INSERT INTO ingest_episodes SELECT * FROM ingest_summary")
                inserted += store.insert_steps(
                    spec, "ingest_frame", con, dedupe=bool(known), keep_next="_keep_next", constants=provenance
                )
                con.unregister("ingest_frame")
                con.unregister("ingest_summary")
                del frame
            rows_read += file_rows
            staged += file_steps
            per_file.append((path, file_rows, file_steps))
        _check_across_frames(con, spec)
        for path, n_raw, n_steps in per_file:
            con.execute(
                "INSERT INTO ingests (domain, adapter, adapter_version, source, fingerprint, rows, steps) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [spec.name, adapter.name, adapter.version, str(path), digests[path].result(), n_raw, n_steps],
            )
        con.execute("DROP TABLE ingest_episodes")
    return IngestReport(spec.name, len(files), rows_read, staged, inserted)
