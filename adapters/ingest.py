"""Ingest: raw files -> validated steps -> the store, in one transaction.

Each file is scanned lazily, mapped, type-checked and transformed by its adapter, then validated against the
domain's steps schema and staged; only when every file has passed do the staged rows go into the steps table,
in the same transaction. On any error nothing is written, and the error names the file, row, column and rule.
Rows whose (episode_id, step) are already stored, or given by an earlier file of the same ingest, are skipped, so
re-ingesting a source adds nothing and one ingest of several files adds what several ingests would.
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
from decision_core.errors import DecisionCoreError, IngestError
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
    if path.is_dir():
        raise IngestError(
            file=str(path), rule="a directory, not a log file", hint=f"pass its files, e.g. {path / '*.csv'}"
        )
    if mapping is not None:
        mapping.check(adapter)  # entries the adapter would drop, before any file is read
    try:
        lf = adapter.scan(path)
        present = lf.collect_schema().names()
        if mapping is not None:
            lf = mapping.apply(lf, present, file=path)
            present = lf.collect_schema().names()
    except pl.exceptions.PolarsError as exc:
        raise _read_error(adapter, path, exc) from None
    missing = [c for c, col in adapter.columns.items() if col.required and c not in present]
    if missing:
        separator = next((c for c in ";\t|" if len(present) == 1 and c in present[0]), None)
        hint = (
            f"the header reads as one column, '{present[0][:60]}': the file seems to separate its fields with "
            f"{separator!r}, and ingest reads commas; export it with commas, or have the adapter's scan() read it"
            if separator is not None
            else f"the file has {', '.join(present[:20])}; rename columns with --mapping FILE"
        )
        raise IngestError(
            file=str(path),
            column=missing[0],
            rule=f"missing column (adapter '{adapter.name}' requires {', '.join(missing)})",
            hint=hint,
        )
    try:
        typed_scan = _typed_csv_scan(adapter, path, mapping, present)
    except pl.exceptions.PolarsError as exc:
        raise _read_error(adapter, path, exc) from None
    keys = [c for c in adapter.episode_columns if c in present]
    parts = max(1, -(-path.stat().st_size // partition_bytes)) if keys else 1
    spec = adapter.spec()
    for part in range(parts):
        try:
            raw = _parse_types(adapter, path, _partition(lf, keys, part, parts), present, typed_scan, keys, part, parts)
        except pl.exceptions.PolarsError as exc:
            raise _read_error(adapter, path, exc) from None
        try:
            steps = adapter.transform(raw.lazy()).collect()
        except IngestError as exc:
            raise exc.in_file(str(path)) from None
        except (DecisionCoreError, MemoryError):
            raise
        except Exception as exc:  # the adapter's own bug: named as such, with the file it failed on
            raise IngestError(
                file=str(path),
                rule=f"the adapter '{adapter.name}' failed on this file: {_polars_message(exc)}",
                hint="fix the adapter (its transform); the file passed the column and type checks",
            ) from exc
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


def _polars_message(exc: Exception) -> str:
    """The first paragraph of an exception's message (polars appends the query plan and generic advice), with
    the exception's class name, on one line."""
    text = str(exc).strip().split("\n\n")[0]
    text = " ".join(text.split())
    if len(text) > 300:
        text = text[:300] + "…"
    return f"{type(exc).__name__}: {text}"


def _read_error(adapter: Adapter, path: Path, exc: pl.exceptions.PolarsError) -> IngestError:
    """A polars error raised while reading ``path``, as an :class:`IngestError` naming the file (and the row
    where it can be found)."""
    kind = path.suffix.lower().lstrip(".").upper() or "raw"
    if isinstance(exc, pl.exceptions.NoDataError):
        return IngestError(
            file=str(path),
            rule=f"the file is empty (no header row): {_polars_message(exc)}",
            hint="export it again with its header row; a file with only the header ingests as no rows",
        )
    if "more fields" in str(exc) and kind == "CSV" and type(adapter).scan is Adapter.scan:
        row, width = _ragged_row(path)
        return IngestError(
            file=str(path),
            row=row,
            rule=f"{'the' if row is not None else 'a'} row has more fields than the header's {width} columns",
            hint="quote values that contain a comma, or remove the extra field (a trailing comma makes one)",
        )
    if isinstance(exc, pl.exceptions.DuplicateError):
        return IngestError(
            file=str(path),
            rule=f"a column name occurs twice: {_polars_message(exc)}",
            hint="rename one of them in the file, or with --mapping FILE",
        )
    return IngestError(
        file=str(path),
        rule=f"cannot read the file as {kind}: {_polars_message(exc)}",
        hint=f"check that it is a complete, valid {kind} file (export it again if it was cut short)",
    )


def _ragged_row(path: Path) -> tuple[int | None, int]:
    """The first data row of a CSV with more fields than its header, and the header's width. Read again with
    one column more, which only such rows fill; only on the error path. ``None`` when that column stays empty
    (the extra field is empty: a trailing comma)."""
    try:
        header = pl.scan_csv(path, infer_schema=False).collect_schema().names()
        schema = dict.fromkeys(header, pl.String()) | {"\x00extra": pl.String()}
        extra = (
            pl.scan_csv(path, schema=schema, truncate_ragged_lines=True, missing_columns="insert")
            .select(pl.col("\x00extra").is_not_null().arg_true().first())
            .collect()
            .item()
        )
    except pl.exceptions.PolarsError:
        return None, 0
    return (int(extra) if extra is not None else None), len(header)


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
        lf = mapping.apply(lf, lf.collect_schema().names(), file=path)
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


def _converts_like_text(source: pl.DataType, target: pl.DataType) -> bool:
    """Whether a typed value (Parquet, JSONL) of dtype ``source`` may be converted to ``target``: only where its
    text would parse in a CSV. A float is not an integer, not even 3.0 (as "3.0" is not); a boolean is not a
    number; a number is not a time; an integer is a boolean only as 0 or 1 (checked by value)."""
    if source == target or source == pl.Null or target == pl.String:
        return True
    if target.is_integer():
        return source.is_integer()
    if target.is_float():
        return source.is_numeric()
    if target == pl.Boolean:
        return source.is_integer()
    if isinstance(target, pl.Datetime):
        return isinstance(source, (pl.Datetime, pl.Date))
    return target != pl.Date  # a Date only from text; other dtypes (lists, structs) convert as polars casts them


def _refused_type(path: Path, frame: pl.DataFrame, column: str, target: pl.DataType) -> IngestError:
    """The error for a typed column whose dtype does not convert to the declared one, at its first value (for a
    float column declared integer, its first value with a fraction, if any)."""
    source = frame.schema[column]
    values = frame[column]
    bad = values.is_not_null()
    if target.is_integer() and source.is_float():
        fraction = bad & (values.is_nan() | values.is_infinite() | (values.round(0) != values)).fill_null(False)
        bad = fraction if fraction.any() else bad
        hint = (
            f"a float is not read as an integer, not even 3.0 (as the text '3.0' is not in a CSV): write '{column}' "
            f"as an integer column (pandas: df['{column}'].astype('Int64') keeps missing values), or have the "
            f"adapter declare it a float and convert it"
        )
    else:
        hint = f"write '{column}' as {target} values (as a CSV would spell them), or have the adapter declare {source}"
    i = int(bad.arg_true()[0])
    return IngestError(
        file=str(path),
        row=int(frame["source_row"][i]),
        column=column,
        rule=f"wrong type: expected {target}, but the file stores the column as {source}",
        value=values[i],
        hint=hint,
    )


def _parse_text(adapter: Adapter, path: Path, frame: pl.DataFrame, used: list[str]) -> pl.DataFrame:
    casts = []
    for c in used:
        dtype = adapter.columns[c].dtype
        col = pl.col(c)
        source = frame.schema[c]
        if source != pl.String and not _converts_like_text(source, dtype):
            if frame[c].null_count() < frame.height:
                raise _refused_type(path, frame, c, dtype)
            parsed = pl.lit(None, dtype)
        elif source == pl.String and dtype == pl.Boolean:
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
        elif source == pl.String and isinstance(dtype, pl.Datetime):
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
        elif source == pl.String and dtype == pl.Date:
            known = _parse_dates(frame, c)
            if known is not None:
                casts.append(pl.lit(known).alias(c))
                continue
            parsed = col.str.strip_chars().str.to_date(strict=False)
        elif source == pl.String and dtype != pl.String:
            parsed = col.str.strip_chars().cast(dtype, strict=False)
        elif dtype == pl.Boolean and source.is_integer():  # 1 and 0, as in a CSV; any other number is refused
            parsed = pl.when(col == 1).then(True).when(col == 0).then(False)
        else:
            parsed = col.cast(dtype, strict=False)  # a wider or narrower number: out of range becomes null
        casts.append(parsed.alias(c))
    typed = frame.with_columns(casts)
    for c in used:
        if frame.schema[c] == typed.schema[c] and frame.schema[c] != pl.String:
            continue
        bad = frame[c].is_not_null() & (frame[c].cast(pl.String) != "") & typed[c].is_null()
        if bad.any():
            i = int(bad.arg_true()[0])
            dtype = adapter.columns[c].dtype
            raise IngestError(
                file=str(path),
                row=int(frame["source_row"][i]),
                column=c,
                rule=f"wrong type: expected {dtype}",
                value=frame[c][i],
                hint=_wrong_type_hint(str(frame[c][i]).strip(), dtype),
            )
    return typed


def _wrong_type_hint(text: str, dtype: pl.DataType) -> str:
    """What to do about a value that does not parse as ``dtype``: for an integer column, whether it is a number
    written with a decimal point or one out of range."""
    if dtype.is_integer():
        digits = text.lstrip("+-")
        if digits.isdigit():
            return f"the number is outside the range of {dtype}; fix the value, or have the adapter declare Int64"
        try:
            float(text)
        except ValueError:
            pass
        else:
            return "write integers without a decimal point (3, not 3.0), or fix the value"
    return "fix the value or drop the row"


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
    duplicate = same & (gap == 0)
    if duplicate.any():
        i = int(duplicate.arg_true()[0])
        first, second = sorted((int(rows[i]), int(rows[i + 1])))
        raise IngestError(
            file=file,
            row=first,
            column="step",
            rule=f"duplicate step {int(step[i])} of episode '{steps['episode_id'][i]}' (rows {first} and {second})",
            hint="each step of an episode must be logged once: drop one of the two rows",
        )
    for bad, rule, column in (
        (same & (gap != 1), "step gap in episode '{episode}': step {prev} is followed by step {step}", "step"),
        (same & ended, "episode '{episode}' ends at step {prev} but has later steps", "terminated"),
    ):
        if bad.any():
            i = int(bad.arg_true()[0])
            # a gap is named at the step after it, an early end at the step that ends
            row = rows[i + 1] if column == "step" else rows[i]
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
        raise IngestError(
            file=file,
            rule=f"adapter output does not fit the steps schema: {_polars_message(exc)}",
            hint="fix the adapter",
        ) from exc


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


#: Rows :func:`_off_dtype` checks at a time: a block's copy of the checked features stays in cache.
_DTYPE_BLOCK_ROWS = 16_384


def _off_dtype(values: np.ndarray, spec: DomainSpec) -> tuple[int, int, str] | None:
    """The first row of (N, S) state ``values`` where an ``int`` feature has a fraction or a ``bool`` feature is
    not 0 or 1, as (row, feature, what was expected); ``None`` when every value keeps its feature's dtype. The spec
    promises these dtypes to what reads the store (a dynamics model treats them as classes and flags). Checked in
    blocks of rows, whose copies of the checked features stay in cache: one copy of the whole columns would cost
    more (fresh pages) than the comparisons."""
    whole = np.array([j for j, f in enumerate(spec.state) if f.dtype == "int"], np.int64)
    flags = np.array([j for j, f in enumerate(spec.state) if f.dtype == "bool"], np.int64)
    if not len(whole) and not len(flags):
        return None
    for start in range(0, values.shape[0], _DTYPE_BLOCK_ROWS):
        block = values[start : start + _DTYPE_BLOCK_ROWS]
        w, f = block[:, whole], block[:, flags]
        bad_w, bad_f = w != np.rint(w), (f != 0) & (f != 1)
        if bad_w.any() or bad_f.any():
            found = [(int(r), int(whole[k]), "a whole number") for r, k in np.argwhere(bad_w)[:1]]
            found += [(int(r), int(flags[k]), "0 or 1") for r, k in np.argwhere(bad_f)[:1]]
            r, j, expected = min(found)
            return start + r, j, expected
    return None


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
    negative = steps["step"] < 0
    if negative.any():
        i = int(negative.arg_true()[0])
        raise IngestError(
            file=file,
            row=int(steps["source_row"][i]),
            column="step",
            rule=f"negative step in episode '{steps['episode_id'][i]}': steps count from 0",
            value=int(steps["step"][i]),
            hint="number each episode's steps 0, 1, 2, ...",
        )
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
        off = _off_dtype(values, spec)
        if off is not None:
            r, f, expected = off
            raise IngestError(
                file=file,
                row=int(steps["source_row"][r]),
                column=f"{col}.{names[f]}",
                rule=f"state feature '{names[f]}' is declared {spec.state[f].dtype}: expected {expected}",
                value=float(values[r, f]),
                hint=f"fix the value, or declare '{names[f]}' a float feature in the domain spec",
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


_CONTINUATIONS_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS ingest_continuations (episode_id VARCHAR, step INTEGER, source_file VARCHAR, "
    "source_row BIGINT, frame INTEGER)"
)


def _episode_firsts(steps: pl.DataFrame) -> pl.DataFrame:
    """The first row of each episode of a frame sorted by (episode_id, step): one vectorised pass."""
    first = (pl.col("episode_id") != pl.col("episode_id").shift(1)).fill_null(True)
    return steps.select("episode_id", "step", "source_row").filter(first)


def _continuations(steps: pl.DataFrame) -> pl.DataFrame:
    """The rows of a frame sorted by (episode_id, step) whose preceding step is not in the frame: the first row of
    each run of consecutive steps, unless it is step 0. That step must be stored, or written by another file of
    the same ingest."""
    ep, step = pl.col("episode_id"), pl.col("step")
    starts = ((ep != ep.shift(1)) | (step != step.shift(1) + 1)).fill_null(True) & (step > 0)
    return steps.select("episode_id", "step", "source_row").filter(starts)


def _unstored(frame: pl.DataFrame, spec: DomainSpec, con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """The rows of ``frame`` whose (episode_id, step) the steps table does not hold: neither stored before this
    ingest nor written by an earlier file of it. Found by a semi-join on the two key columns only."""
    con.register("ingest_keys", frame.select("episode_id", "step").with_row_index("_i"))
    try:
        found = con.execute(
            f"SELECT k._i FROM ingest_keys k SEMI JOIN {spec.rows_table} t "
            f"ON k.episode_id = t.episode_id AND k.step = t.step"
        ).fetchnumpy()["_i"]
    finally:
        con.unregister("ingest_keys")
    if len(found) == 0:
        return frame
    keep = np.ones(frame.height, np.bool_)
    keep[np.asarray(found, np.int64)] = False
    return frame.filter(pl.Series(keep))


def _check_continuations(con: duckdb.DuckDBPyConnection, spec: DomainSpec) -> None:
    """Episode rules that span files and the store, once every file's new rows are in the steps table: each run of
    new steps that starts after step 0 follows a step the table holds, and that step did not terminate the episode.
    A truncated step only says the log stopped there: when a later file continues the episode, the step no longer
    ends it and its flag is cleared (its ``next_state`` stays as logged)."""
    if not fetch_one(con, "SELECT count(*) FROM ingest_continuations")[0]:  # type: ignore[index]
        return
    rows = spec.rows_table
    broken = fetch_one(
        con,
        f"SELECT c.episode_id, c.step, c.source_file, c.source_row, p.step IS NULL FROM ingest_continuations c "
        f"LEFT JOIN {rows} p ON p.episode_id = c.episode_id AND p.step = c.step - 1 "
        f"WHERE p.step IS NULL OR p.terminated ORDER BY c.frame, c.source_row LIMIT 1",
    )
    if broken:
        episode, step, file, row, missing = broken
        before = fetch_one(
            con,
            f"SELECT step, source_file, source_row FROM {rows} WHERE episode_id = ? AND step < ? "
            f"ORDER BY step DESC LIMIT 1",
            [episode, step],
        )
        if before is None:
            rule = f"episode '{episode}' starts at step {step} but its earlier steps are not stored"
            hint = "ingest the episode's earlier steps too (before, or in the same command)"
        elif missing:
            rule = (
                f"step gap in episode '{episode}': step {before[0]} ({before[1]}, row {before[2]}) is followed by "
                f"step {step}"
            )
            hint = "ingest the steps in between too, or fix the step numbering"
        else:
            rule = (
                f"episode '{episode}' ended at step {before[0]} (terminated: {before[1]}, row {before[2]}) but this "
                f"file continues it at step {step}"
            )
            hint = "a terminated episode takes no later steps: give them a new episode id, or drop them"
        raise IngestError(file=file, row=int(row), column="step", rule=rule, hint=hint)
    con.execute(
        f"UPDATE {rows} SET truncated = false FROM ingest_continuations c "
        f"WHERE {rows}.episode_id = c.episode_id AND {rows}.step = c.step - 1 AND {rows}.truncated"
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
    then its new rows are inserted into the steps table: (episode, step) pairs already there, stored before or
    written by an earlier file of this ingest, are skipped, so one command ingests as several would. A file
    named twice is read once. Rules that span files are checked on the runs of new steps before the commit.
    """
    spec = adapter.spec()
    distinct: dict[Path, Path] = {}
    for p in paths:
        distinct.setdefault(Path(p).resolve(), Path(p))
    files = list(distinct.values())
    if not files:
        raise IngestError(file="(none)", rule="no input files given", hint="pass one or more raw log files")
    rows_read = staged = inserted = 0
    per_file: list[tuple[Path, int, int]] = []
    # The files' fingerprints are hashed on a second thread (hashing releases the GIL) while they are parsed.
    with ThreadPoolExecutor(1, thread_name_prefix="fingerprint") as hasher, store.transaction() as con:
        digests = {path: hasher.submit(fingerprint, path) for path in files if path.exists()}
        store.ensure_domain(spec, con)
        con.execute(_CONTINUATIONS_DDL)
        con.execute("DELETE FROM ingest_continuations")
        frames = 0
        for path in files:
            if progress:
                progress(str(path))
            file_rows = file_steps = file_new = 0
            for frame, n_raw in prepare_parts(adapter, path, mapping, partition_bytes=partition_bytes):
                file_rows += n_raw
                file_steps += frame.height
                frames += 1
                firsts = _episode_firsts(frame)
                con.register("ingest_firsts", firsts)
                # Episodes the steps table does not know go in whole, without looking up their steps.
                known = fetch_one(
                    con,
                    f"SELECT count(*) FROM ingest_firsts s WHERE EXISTS (SELECT 1 FROM {spec.rows_table} t "
                    f"WHERE t.episode_id = s.episode_id)",
                )[0]  # type: ignore[index]
                con.unregister("ingest_firsts")
                if known:
                    frame = _unstored(frame, spec, con)
                    firsts = _continuations(frame)
                con.register("ingest_continued", firsts.filter(pl.col("step") > 0))
                con.execute(
                    "INSERT INTO ingest_continuations SELECT episode_id, step, ?, source_row, ? FROM ingest_continued",
                    [str(path), frames],
                )
                con.unregister("ingest_continued")
                if frame.height:
                    # Which next states the store must keep (the rest are the following rows' states), marked here
                    # in one vectorised pass rather than by a window over the frame in DuckDB.
                    frame = frame.with_columns(next_state_needed(frame).alias("_keep_next"))
                    # The provenance is one value per file: bound as constants, not read as a million strings each.
                    provenance = {c: frame[c][0] for c in _PROVENANCE}
                    con.register("ingest_frame", frame.drop(_PROVENANCE))
                    file_new += store.insert_steps(
                        spec, "ingest_frame", con, dedupe=False, keep_next="_keep_next", constants=provenance
                    )
                    con.unregister("ingest_frame")
                del frame
            rows_read += file_rows
            staged += file_steps
            inserted += file_new
            per_file.append((path, file_rows, file_new))
        _check_continuations(con, spec)
        # One row per file read, with the steps it added (a repeat of stored steps adds none).
        for path, n_raw, n_new in per_file:
            con.execute(
                "INSERT INTO ingests (domain, adapter, adapter_version, source, fingerprint, rows, steps) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [spec.name, adapter.name, adapter.version, str(path), digests[path].result(), n_raw, n_new],
            )
        con.execute("DROP TABLE ingest_continuations")
    return IngestReport(spec.name, len(files), rows_read, staged, inserted)
