"""The domain plugin contract.

An adapter turns one raw log file of its domain into rows of the common steps schema, with polars. It declares:

- ``name`` / ``version``: how it is registered and recorded in each row's provenance;
- :meth:`spec`: the :class:`~decision_core.schema.DomainSpec` of the rows it writes;
- ``columns``: the raw columns it reads, each with the polars dtype the raw text must parse as and whether it
  is required; ingest checks presence and types (naming file, row and column) before :meth:`transform` runs;
- :meth:`transform`: a polars ``LazyFrame`` of typed raw rows (plus a ``source_row`` column, the 0-based data
  row in the file) -> a ``LazyFrame`` with the columns :data:`~decision_core.schema.STEP_COLUMNS` except the
  provenance ones (``source_adapter``, ``adapter_version``, ``source_file``), which ingest adds. Each output row
  keeps the ``source_row`` of the raw row it came from, so errors point at the raw file.

Register a third-party adapter under the entry-point group ``decision_core.adapters``; see docs/adapters.md.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl

from decision_core.errors import SpecError
from decision_core.schema import DomainSpec


def sorted_by(frame: pl.DataFrame, by: list[str]) -> bool:
    """Whether ``frame`` is already in ``by`` order (ascending, nulls last): one vectorised pass over adjacent rows,
    several times cheaper than sorting, so a transform can skip the sort for a log written in episode order (as
    simulators and most exports write it): ``frame if sorted_by(frame, by) else frame.sort(by, nulls_last=True)``."""
    if frame.height < 2:
        return True
    in_order = pl.lit(False)  # the row comes strictly after its predecessor on some key
    tied = pl.lit(True)  # the row equals its predecessor on every key so far
    for c in by:
        cur, prev = pl.col(c), pl.col(c).shift(1)
        # nulls last: a value follows a value by comparison; a null follows a value; a value never follows a null
        after = pl.when(cur.is_null()).then(prev.is_not_null()).otherwise(prev.is_not_null() & (cur > prev))
        same = (cur.is_null() & prev.is_null()) | (cur == prev).fill_null(False)
        in_order, tied = in_order | (tied & after), tied & same
    return bool(frame.select((in_order | tied).slice(1).all()).item())


#: Rows :func:`pack_columns` fills at a time: a block of the output (about 6 MiB at 24 features) stays in cache
#: while each column is written into it.
PACK_BLOCK_ROWS = 65_536


def pack_columns(frame: pl.DataFrame, columns: list[str]) -> np.ndarray:
    """Numeric columns -> one C-ordered ``(rows, len(columns))`` float32 array, ready to become an array column
    (``pl.Series(name, values)``). It is filled in blocks of :data:`PACK_BLOCK_ROWS` rows, each column written into
    a block while the block is in cache. On 1M rows of 24 features that takes 0.07 s, against 0.19 s for one
    strided pass over the whole array per column (medians of 7, one or four chunks alike). Polars'
    ``to_numpy(order="c")`` takes 0.05 s but raised the ingest's peak memory by 150-250 MiB. Only the array itself
    is allocated, about 150 MiB less at peak than building the arrays with array expressions."""
    values = np.empty((frame.height, len(columns)), np.float32)
    for start in range(0, frame.height, PACK_BLOCK_ROWS):
        # A slice of the frame is a view; only a column held in several chunks is copied, one block at a time.
        part = frame.slice(start, PACK_BLOCK_ROWS).select(columns)
        block = values[start : start + PACK_BLOCK_ROWS]
        for j, c in enumerate(columns):
            block[:, j] = part[c].to_numpy()
    return values


@dataclass(frozen=True)
class RawColumn:
    """A raw column an adapter reads: the dtype its text must parse as, and whether it must be present."""

    dtype: pl.DataType
    required: bool = True
    description: str = ""


@dataclass(frozen=True)
class ColumnMapping:
    """Lets a log with differently named columns (same meaning) be ingested without code.

    ``rename`` maps a column name in the user's file to the adapter's raw column name; ``defaults`` gives a
    constant for an adapter column the file does not have. Loaded from TOML or JSON::

        [rename]
        userId = "user_id"
        movieId = "item_id"

        [defaults]
        slot = 0

    Every entry must take effect, so a misspelt name is an error rather than a column silently left out:
    :meth:`check` refuses a rename target or a default that is not one of the adapter's columns, and :meth:`apply`
    refuses, per file, a rename whose source the file lacks, a rename onto a column the file already has, and a
    default for a column the file has. One mapping may serve files of two layouts, the user's names and the
    adapter's own: a rename is skipped for a file that lacks its source and has its target column instead. A file
    that lacks a column altogether needs a mapping without that entry.
    """

    rename: dict[str, str] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    #: The file the mapping was loaded from, named in its errors (``None``: built in code).
    path: Path | None = field(default=None, compare=False)

    @classmethod
    def load(cls, path: str | Path) -> ColumnMapping:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise SpecError(f"cannot read mapping file {p}: {exc}") from exc
        try:
            data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise SpecError(
                f"mapping file {p} is not valid {'JSON' if p.suffix == '.json' else 'TOML'}: {exc}"
            ) from exc
        unknown = sorted(set(data) - {"rename", "defaults"})
        if unknown:
            raise SpecError(f"mapping file {p}: unknown sections {unknown}; allowed: 'rename', 'defaults'")
        rename, defaults = data.get("rename", {}), data.get("defaults", {})
        if not isinstance(rename, dict) or not all(isinstance(v, str) for v in rename.values()):
            raise SpecError(f"mapping file {p}: 'rename' must map source column names to adapter column names")
        if not isinstance(defaults, dict):
            raise SpecError(f"mapping file {p}: 'defaults' must map adapter column names to constants")
        return cls(rename=dict(rename), defaults=dict(defaults), path=p)

    def _where(self) -> str:
        return f"mapping file {self.path}" if self.path is not None else "column mapping"

    def check(self, adapter: Adapter) -> None:
        """Raise :class:`SpecError` if a rename target or a default names a column ``adapter`` does not read
        (ingest would drop it without a word)."""
        columns = list(adapter.columns)
        entries = [(f"[rename] {src} = {dst!r}", dst) for src, dst in self.rename.items()]
        entries += [(f"[defaults] {key}", key) for key in self.defaults]
        for entry, name in entries:
            if name not in adapter.columns:
                raise SpecError(
                    f"{self._where()}: {entry}: '{name}' is not a column of adapter '{adapter.name}'."
                    f"{_did_you_mean(name, columns)} The adapter's columns: {', '.join(columns)}"
                )
        for key, value in self.defaults.items():
            # Numbers are checked here, so that a bad constant is blamed on the mapping rather than on row 0 of
            # the log; other types are parsed (and reported) by ingest like the log's own text.
            dtype = adapter.columns[key].dtype
            if dtype.is_numeric() and pl.Series([str(value)]).str.strip_chars().cast(dtype, strict=False)[0] is None:
                raise SpecError(
                    f"{self._where()}: [defaults] {key} = {value!r}: adapter '{adapter.name}' reads column '{key}' "
                    f"as {dtype}; give a constant of that type"
                )

    def apply(self, raw: pl.LazyFrame, present: list[str], *, file: str | Path | None = None) -> pl.LazyFrame:
        """``raw`` (whose columns are ``present``, read from ``file``) with the columns renamed and the defaults
        added; an entry that cannot take effect on this file raises :class:`SpecError`."""
        log = str(file) if file is not None else "the log being ingested"
        has = set(present)
        shown = ", ".join(present[:40]) + (", …" if len(present) > 40 else "")
        renames: dict[str, str] = {}
        for src, dst in self.rename.items():
            if src in has:
                renames[src] = dst
            elif dst not in has:  # neither the user's name nor the adapter's: most likely a misspelt source
                raise SpecError(
                    f"{self._where()}: [rename] {src} = {dst!r}: {log} has no column '{src}' (nor '{dst}')."
                    f"{_did_you_mean(src, present)} Fix the name, or remove the entry if the log lacks the column; "
                    f"its columns: {shown}"
                )
        after = [renames.get(c, c) for c in present]
        for name in dict.fromkeys(c for c in after if after.count(c) > 1):
            claimants = [f"'{c}'" if c != name else "its own column" for c in present if renames.get(c, c) == name]
            raise SpecError(
                f"{self._where()}: [rename] gives {log} two columns named '{name}' (from {' and '.join(claimants)}); "
                f"rename only one column to '{name}'"
            )
        for key in self.defaults:
            if key in after:
                renamed = next((f" (renamed from '{s}')" for s, d in renames.items() if d == key), "")
                raise SpecError(
                    f"{self._where()}: [defaults] {key}: {log} already has column '{key}'{renamed}, so the default "
                    f"would never be used. Remove the default, or ingest the logs that have the column with a mapping "
                    f"without it"
                )
        lf = raw.rename(renames) if renames else raw
        fills = [pl.lit(str(v)).alias(k) for k, v in self.defaults.items()]
        return lf.with_columns(fills) if fills else lf


def _did_you_mean(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


class Adapter(ABC):
    """Base class of all adapters; see the module docstring for the contract."""

    name: ClassVar[str]
    version: ClassVar[str]
    columns: ClassVar[dict[str, RawColumn]]
    #: Raw columns that together identify an episode. Declaring them lets ingest process a file larger than
    #: memory in hash-partitions of whole episodes; leave empty to always read a file in one pass.
    episode_columns: ClassVar[tuple[str, ...]] = ()
    #: File suffixes this adapter can scan (``.csv``, ``.parquet``, ``.jsonl``).
    suffixes: ClassVar[tuple[str, ...]] = (".csv", ".parquet", ".jsonl")

    @abstractmethod
    def spec(self) -> DomainSpec:
        """The domain spec of the rows this adapter writes."""

    @abstractmethod
    def transform(self, raw: pl.LazyFrame) -> pl.LazyFrame:
        """Typed raw rows (with ``source_row``) -> steps rows (without provenance columns)."""

    def scan(self, path: Path) -> pl.LazyFrame:
        """Scan a raw file with every column as text; ingest parses and checks types itself."""
        suffix = path.suffix.lower()
        if suffix == ".csv":
            return pl.scan_csv(path, infer_schema=False)
        if suffix == ".parquet":
            return pl.scan_parquet(path)
        if suffix in (".jsonl", ".ndjson"):
            return pl.scan_ndjson(path, infer_schema_length=None)
        raise SpecError(
            f"{path}: adapter '{self.name}' cannot read '{suffix}' files; use one of {', '.join(self.suffixes)}"
        )

    def describe(self) -> str:
        return f"{self.name} v{self.version}: {self.spec().summary()}"
