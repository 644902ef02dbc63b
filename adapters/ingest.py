"""Ingest: raw files -> validated steps -> the store, in one transaction.

Each file is scanned lazily, mapped, type-checked and transformed by its adapter, then validated against the
domain's steps schema and staged; only when every file has passed do the staged rows go into the steps table,
in the same transaction. On any error nothing is written, and the error names the file, row, column and rule.
Rows whose (episode_id, step) are already stored are skipped, so re-ingesting a source adds nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from adapters.base import Adapter, ColumnMapping
from decision_core.errors import IngestError
from decision_core.schema import STEP_COLUMNS, DiscreteActions, DomainSpec, steps_ddl, steps_schema
from decision_core.store import DecisionStore, fetch_one

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
    """Read, check and transform one raw file; yields validated steps frames and their raw row counts.

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
    lf = lf.with_row_index("source_row")
    keys = [c for c in adapter.episode_columns if c in present]
    parts = max(1, -(-path.stat().st_size // partition_bytes)) if keys else 1
    spec = adapter.spec()
    for part in range(parts):
        sliced = lf
        if parts > 1:
            key = pl.concat_str([pl.col(c).cast(pl.String) for c in keys], separator="\x1f", ignore_nulls=True)
            sliced = lf.filter(key.hash(seed=0) % parts == part)
        raw = _parse_types(adapter, path, sliced, present)
        steps = adapter.transform(raw.lazy()).collect()
        steps = steps.with_columns(
            pl.lit(adapter.name).alias("source_adapter"),
            pl.lit(adapter.version).alias("adapter_version"),
            pl.lit(str(path)).alias("source_file"),
        )
        steps = conform(steps, spec, str(path))
        validate_rows(steps, spec, str(path))
        yield steps, raw.height


def _parse_types(adapter: Adapter, path: Path, lf: pl.LazyFrame, present: list[str]) -> pl.DataFrame:
    used = [c for c in adapter.columns if c in present]
    frame = lf.select("source_row", *used).collect()
    casts = []
    for c in used:
        dtype = adapter.columns[c].dtype
        col = pl.col(c)
        if frame.schema[c] == pl.String and dtype == pl.Boolean:
            lowered = col.str.strip_chars().str.to_lowercase()
            parsed = (
                pl.when(lowered.is_in(["true", "1", "t", "yes"]))
                .then(True)
                .when(lowered.is_in(["false", "0", "f", "no"]))
                .then(False)
                .otherwise(None)
            )
        elif frame.schema[c] == pl.String and isinstance(dtype, pl.Datetime):
            parsed = col.str.strip_chars().str.to_datetime(time_unit=dtype.time_unit or "us", strict=False)
        elif frame.schema[c] == pl.String and dtype == pl.Date:
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


def validate_rows(steps: pl.DataFrame, spec: DomainSpec, file: str) -> None:
    """Row-level rules of the common schema; raises :class:`IngestError` on the first row that breaks one."""
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
    bad = p.is_not_null() & (p.is_nan() | (p <= 0) | (p > 1))
    if bad.any():
        i = int(bad.arg_true()[0])
        raise IngestError(
            file=file,
            row=int(steps["source_row"][i]),
            column="propensity",
            rule="propensity outside (0, 1]",
            value=p[i],
            hint="a propensity is the probability the logging policy gave the action; leave it empty if unknown",
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


def _check_episodes(con: duckdb.DuckDBPyConnection, spec: DomainSpec) -> None:
    """Cross-row rules over everything staged, against what is already stored."""
    dup = fetch_one(
        con,
        "SELECT episode_id, step, any_value(source_file), min(source_row) FROM staging "
        "GROUP BY episode_id, step HAVING count(*) > 1 LIMIT 1",
    )
    if dup:
        raise IngestError(
            file=dup[2],
            row=int(dup[3]),
            column="step",
            rule=f"duplicate step {dup[1]} of episode '{dup[0]}'",
            hint="each (episode, step) may appear once",
        )
    gap = fetch_one(
        con,
        "SELECT episode_id, step, prev, source_file, source_row FROM ("
        "  SELECT episode_id, step, source_file, source_row, "
        "    lag(step) OVER (PARTITION BY episode_id ORDER BY step) AS prev FROM staging"
        ") WHERE prev IS NOT NULL AND step <> prev + 1 LIMIT 1",
    )
    if gap:
        raise IngestError(
            file=gap[3],
            row=int(gap[4]),
            column="step",
            rule=f"step gap in episode '{gap[0]}': step {gap[2]} is followed by step {gap[1]}",
            hint="episodes must be logged without missing steps",
        )
    start = fetch_one(
        con,
        f"SELECT s.episode_id, s.first_step, s.source_file, s.source_row, t.last_step FROM ("
        f"  SELECT episode_id, min(step) AS first_step, arg_min(source_file, step) AS source_file, "
        f"    arg_min(source_row, step) AS source_row FROM staging GROUP BY episode_id"
        f") s LEFT JOIN (SELECT episode_id, max(step) AS last_step FROM {spec.table} GROUP BY episode_id) t "
        f"ON s.episode_id = t.episode_id "
        f"WHERE s.first_step > 0 AND (t.last_step IS NULL OR t.last_step < s.first_step - 1) LIMIT 1",
    )
    if start:
        have = "no earlier steps are stored" if start[4] is None else f"the store has steps up to {start[4]}"
        raise IngestError(
            file=start[2],
            row=int(start[3]),
            column="step",
            rule=f"episode '{start[0]}' starts at step {start[1]} but {have}",
            hint="ingest the episode's earlier steps too",
        )
    early_end = fetch_one(
        con,
        "SELECT s.episode_id, s.step, s.source_file, s.source_row FROM staging s JOIN ("
        "  SELECT episode_id, max(step) AS last FROM staging GROUP BY episode_id) e "
        "ON s.episode_id = e.episode_id WHERE (s.terminated OR s.truncated) AND s.step < e.last LIMIT 1",
    )
    if early_end:
        raise IngestError(
            file=early_end[2],
            row=int(early_end[3]),
            column="terminated",
            rule=f"episode '{early_end[0]}' ends at step {early_end[1]} but has later steps",
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
    """Validate every file, then write all of them in one transaction; on any error nothing is written."""
    spec = adapter.spec()
    files = [Path(p) for p in paths]
    if not files:
        raise IngestError(file="(none)", rule="no input files given", hint="pass one or more raw log files")
    rows_read = staged = 0
    per_file: list[tuple[Path, int, int]] = []
    with store.transaction() as con:
        store.ensure_domain(spec, con)
        con.execute(steps_ddl(spec, "staging", temporary=True))
        con.execute("DELETE FROM staging")
        for path in files:
            if progress:
                progress(str(path))
            file_rows = file_steps = 0
            for frame, n_raw in prepare_parts(adapter, path, mapping, partition_bytes=partition_bytes):
                file_rows += n_raw
                file_steps += frame.height
                con.execute("INSERT INTO staging SELECT * FROM frame")
                del frame
            rows_read += file_rows
            staged += file_steps
            per_file.append((path, file_rows, file_steps))
        _check_episodes(con, spec)
        inserted = store.insert_steps(spec, "staging", con)
        for path, n_raw, n_steps in per_file:
            con.execute(
                "INSERT INTO ingests (domain, adapter, adapter_version, source, fingerprint, rows, steps) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [spec.name, adapter.name, adapter.version, str(path), fingerprint(path), n_raw, n_steps],
            )
        con.execute("DROP TABLE staging")
    return IngestReport(spec.name, len(files), rows_read, staged, int(inserted))
