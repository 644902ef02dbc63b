"""The generic ingest rules: every kind of bad input is named precisely, and a failed ingest writes nothing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from thermostat_adapter import ThermostatAdapter
from typer.testing import CliRunner

from adapters.base import ColumnMapping
from adapters.ingest import _distinct_in_runs, _parse_dates, _parse_datetimes, ingest
from decision_core.errors import DecisionCoreError, IngestError, SpecError
from decision_core.schema import DomainSpec, Feature
from decision_core.store import DecisionStore

HEADER = "room,t,temp,setting,p,done,ts\n"
GOOD = [
    "r1,0,18.0,2,0.6,false,2026-01-01T00:00:00",
    "r1,1,19.5,1,0.3,false,2026-01-01T00:10:00",
    "r1,2,20.0,0,0.5,true,2026-01-01T00:20:00",
    "r2,0,21.0,0,0.9,false,2026-01-01T00:00:00",
    "r2,1,20.5,0,0.9,false,2026-01-01T00:10:00",
]


@pytest.fixture
def store(tmp_path: Path):
    with DecisionStore(tmp_path / "store.duckdb") as s:
        yield s


def test_ingest_stores_steps_in_the_common_schema(thermostat, write_csv, store):
    report = ingest(thermostat, [write_csv("a.csv", GOOD)], store)
    assert (report.rows_read, report.steps_staged, report.steps_inserted) == (5, 5, 5)
    arrays = store.load_arrays("thermostat")
    assert arrays.n_episodes == 2
    np.testing.assert_allclose(arrays.states[:, 0], [18.0, 19.5, 20.0, 21.0, 20.5])
    # next state is the following observation; the last step of an episode keeps its own
    np.testing.assert_allclose(arrays.next_states[:, 0], [19.5, 20.0, 20.0, 20.5, 20.5])
    np.testing.assert_allclose(arrays.actions[:, 0], [2, 1, 0, 0, 0])
    np.testing.assert_allclose(arrays.propensities, [0.6, 0.3, 0.5, 0.9, 0.9], rtol=1e-6)
    assert arrays.terminated.tolist() == [False, False, True, False, False]
    assert np.isnan(arrays.rewards).all()


def test_reingesting_the_same_source_adds_nothing(thermostat, write_csv, store):
    path = write_csv("a.csv", GOOD)
    ingest(thermostat, [path], store)
    again = ingest(thermostat, [path], store)
    assert again.steps_inserted == 0 and again.steps_skipped == 5
    assert store.count_steps("thermostat") == 5


def test_logs_without_propensities_still_load(thermostat, write_csv, store):
    path = write_csv("nop.csv", ["r1,0,18.0,2,,false,", "r1,1,19.0,1,,true,"])
    ingest(thermostat, [path], store)
    arrays = store.load_arrays("thermostat")
    assert np.isnan(arrays.propensities).all() and not arrays.has_propensities


@pytest.mark.parametrize(
    ("lines", "row", "column", "rule"),
    [
        (GOOD[:1] + ["r1,1,warm,1,0.3,false,"], 1, "temp", "wrong type"),
        (GOOD[:1] + ["r1,1,nan,1,0.3,false,"], 1, "state.temp", "NaN or infinite"),
        (GOOD[:1] + ["r1,1,inf,1,0.3,false,"], 1, "state.temp", "NaN or infinite"),
        (GOOD[:1] + ["r1,1,19.0,3,0.3,false,"], 1, "action", "action outside the space"),
        (GOOD[:1] + ["r1,1,19.0,1,1.5,false,"], 1, "propensity", "propensity outside (0, 1]"),
        (GOOD[:1] + ["r1,1,19.0,1,0,false,"], 1, "propensity", "propensity outside (0, 1]"),
        (GOOD[:1] + ["r1,2,19.0,1,0.5,false,"], 1, "step", "step gap"),
        (GOOD[:1] + ["r1,0,19.0,1,0.5,false,"], 0, "step", "duplicate step 0 of episode 'r1' (rows 0 and 1)"),
        (["r1,-1,18.0,2,0.6,false,", "r1,0,19.0,1,0.5,false,"], 0, "step", "negative step in episode 'r1'"),
        (GOOD[:1] + ["r1,1,19.0,1.0,0.3,false,"], 1, "setting", "wrong type: expected Int32"),
        (["r1,0,18.0,2,0.6,true,", "r1,1,19.0,1,0.5,false,"], 0, "terminated", "ends at step 0"),
        (["r1,,18.0,2,0.6,false,"], 0, "t", "missing value"),
        (["r9,3,18.0,2,0.6,false,"], 0, "step", "starts at step 3"),
        (GOOD[:1] + ["r1,1,19.0,1,0.3,false,yesterday"], 1, "ts", "wrong type"),
    ],
)
def test_bad_rows_are_named_by_file_row_and_column(thermostat, write_csv, store, lines, row, column, rule):
    path = write_csv("bad.csv", lines)
    with pytest.raises(IngestError) as info:
        ingest(thermostat, [path], store)
    err = info.value
    assert (err.file, err.row, err.column) == (str(path), row, column)
    assert rule in str(err) and str(path) in str(err)


def test_missing_column_names_it_and_suggests_a_mapping(thermostat, write_csv, store):
    path = write_csv("nocol.csv", ["r1,0,18.0,0.6,false,"], header="room,t,temp,p,done,ts\n")
    with pytest.raises(IngestError, match=r"column 'setting': missing column.*--mapping") as info:
        ingest(thermostat, [path], store)
    assert info.value.row is None
    # A file separated by semicolons reads as one column: the advice is about the separator, not a mapping.
    semicolons = write_csv("semi.csv", ["r1;0;18.0;2;0.6;false;"], header="room;t;temp;setting;p;done;ts\n")
    with pytest.raises(IngestError, match=r"missing column.*separate its fields with ';'") as info:
        ingest(thermostat, [semicolons], store)
    assert "--mapping" not in str(info.value)
    with pytest.raises(IngestError, match=r"a directory, not a log file. Pass its files, e.g. .*\*\.csv"):
        ingest(thermostat, [semicolons.parent], store)


def test_a_failed_ingest_of_several_files_writes_nothing(thermostat, write_csv, store):
    good = write_csv("good.csv", GOOD)
    bad = write_csv("bad.csv", ["r3,0,18.0,7,0.6,false,"])
    with pytest.raises(IngestError):
        ingest(thermostat, [good, bad], store)
    assert store.domains() == []
    ingest(thermostat, [good], store)
    with pytest.raises(IngestError):
        ingest(thermostat, [write_csv("more.csv", ["r4,0,18.0,1,0.5,false,"]), bad], store)
    assert store.count_steps("thermostat") == 5


def test_column_mapping_ingests_a_differently_named_log(thermostat, tmp_path, store):
    raw = tmp_path / "other.csv"
    raw.write_text("Room,time,temperature,heater\nr1,0,18.0,2\nr1,1,19.0,0\n")
    mapping = tmp_path / "mapping.toml"
    mapping.write_text(
        '[rename]\nRoom = "room"\ntime = "t"\ntemperature = "temp"\nheater = "setting"\n\n[defaults]\ndone = false\n'
    )
    report = ingest(thermostat, [raw], store, mapping=ColumnMapping.load(mapping))
    assert report.steps_inserted == 2
    np.testing.assert_allclose(store.load_arrays("thermostat").actions[:, 0], [2, 0])
    # A default for a column the adapter does not read would be dropped: ingest refuses it before reading.
    mapping.write_text(mapping.read_text() + "dnoe = true\n")
    with pytest.raises(SpecError, match=r"\[defaults\] dnoe.*Did you mean 'done'"):
        ingest(thermostat, [raw], store, mapping=ColumnMapping.load(mapping))


def test_mapping_file_errors_are_explained(tmp_path):
    bad = tmp_path / "m.toml"
    bad.write_text('[renames]\na = "b"\n')
    with pytest.raises(SpecError, match="unknown sections"):
        ColumnMapping.load(bad)
    broken = tmp_path / "m.json"
    broken.write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        ColumnMapping.load(broken)


def test_episodes_appended_later_are_read_back_in_order(thermostat, write_csv, store):
    a, b = write_csv("a.csv", GOOD[3:] + GOOD[:2]), write_csv("b.csv", GOOD[2:3])
    ingest(thermostat, [a], store)
    ingest(thermostat, [b], store)  # r1 step 2 stored after r2 (its episode is known: the deduplicating insert)
    provenance = store.con.execute(
        "SELECT episode_id, step, source_adapter, adapter_version, source_file, source_row FROM steps_thermostat "
        "ORDER BY episode_id, step"
    ).fetchall()
    assert provenance == [
        ("r1", 0, "thermostat", "1.0", str(a), 2),
        ("r1", 1, "thermostat", "1.0", str(a), 3),
        ("r1", 2, "thermostat", "1.0", str(b), 0),
        ("r2", 0, "thermostat", "1.0", str(a), 0),
        ("r2", 1, "thermostat", "1.0", str(a), 1),
    ]
    arrays = store.load_arrays("thermostat")
    assert arrays.n_episodes == 2
    lengths = sorted((arrays.episode_ends - arrays.episode_starts).tolist())
    assert lengths == [2, 3]
    r1 = int(np.flatnonzero(arrays.episode_ends - arrays.episode_starts == 3)[0])
    rows = slice(arrays.episode_starts[r1], arrays.episode_ends[r1])
    np.testing.assert_allclose(arrays.states[rows, 0], [18.0, 19.5, 20.0])


def test_cli_ingest_exits_non_zero_and_names_the_row(thermostat, write_csv, tmp_path, monkeypatch):
    from adapters import ADAPTERS
    from decision_core.cli import app

    ADAPTERS.register("thermostat", type(thermostat), origin="test")
    try:
        bad = write_csv("bad.csv", GOOD[:1] + ["r1,1,19.0,9,0.3,false,"])
        result = CliRunner().invoke(app, ["ingest", "thermostat", str(bad), "--db", str(tmp_path / "s.duckdb")])
        assert result.exit_code == 2
        assert "row 1" in result.output and "action" in result.output
        good = write_csv("good.csv", GOOD)
        result = CliRunner().invoke(app, ["ingest", "thermostat", str(good), "--db", str(tmp_path / "s.duckdb")])
        assert result.exit_code == 0, result.output
        assert "5 new" in result.output
        result = CliRunner().invoke(app, ["show", "--db", str(tmp_path / "s.duckdb")], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and "thermostat" in result.output
    finally:
        ADAPTERS.unregister("thermostat")


def test_a_large_file_is_ingested_in_episode_partitions_with_the_same_result(thermostat, write_csv, tmp_path):
    lines = [
        f"r{room},{t},{15 + t * 0.5 + room},{t % 3},0.5,{'true' if t == 9 else 'false'},"
        for room in range(40)
        for t in range(10)
    ]
    path = write_csv("big.csv", lines)
    results = []
    for partition_bytes in (10**9, 1024):  # one pass vs ceil(size / 1 KiB) passes
        with DecisionStore(tmp_path / f"s{partition_bytes}.duckdb") as store:
            report = ingest(thermostat, [path], store, partition_bytes=partition_bytes)
            arrays = store.load_arrays("thermostat")
            rows = store.con.execute(
                "SELECT episode_id, step, source_row FROM steps_thermostat ORDER BY ALL"
            ).fetchall()
        results.append((report.rows_read, report.steps_inserted, arrays.n_episodes, rows))
    assert results[0] == results[1]
    assert results[0][:3] == (400, 400, 40)


def test_errors_in_a_partitioned_file_still_name_the_raw_row(thermostat, write_csv, store):
    lines = [f"r{room},{t},20.0,1,0.5,false," for room in range(30) for t in range(5)]
    lines[77] = "r15,2,20.0,1,7.0,false,"  # row 77: room 15, step 2
    with pytest.raises(IngestError) as info:
        ingest(thermostat, [write_csv("big.csv", lines)], store, partition_bytes=512)
    assert (info.value.row, info.value.column) == (77, "propensity")


@pytest.mark.parametrize(
    "stamps",
    [
        ["2026-01-01T00:00:00", "2026-01-01T00:10:00.250000", ""],
        ["2026-01-01 00:00:00", "2026-01-01 00:10:00.25", "2026-01-01 00:20:00"],
        ["2026-01-01T00:00", "2026-01-01T00:10", "2026-01-01T00:20"],  # no seconds: polars infers the layout
        ["2026-01-01", "2026-01-02", "2026-01-03"],
        ["2026-01-01T00:00:00", "2026-01-01 00:10:00", "2026-01-01T00:20:00"],  # mixed: inferred, as before
        ["2026-01-01T00:00:00.1", "2026-01-01T00:10:00.123456789", "2026-01-01T00:20:00"],
    ],
)
def test_timestamps_are_read_in_the_layouts_polars_reads(thermostat, write_csv, store, stamps):
    lines = [f"r1,{i},18.0,1,0.5,{'true' if i == 2 else 'false'},{ts}" for i, ts in enumerate(stamps)]
    ingest(thermostat, [write_csv("ts.csv", lines)], store)
    got = store.con.execute("SELECT timestamp FROM steps_thermostat ORDER BY step").fetchall()
    expected = pl.Series(stamps).str.to_datetime(time_unit="us", strict=False).to_list()
    assert [r[0] for r in got] == expected and got[0][0] is not None


def test_timestamps_with_a_utc_offset_are_stored_in_utc(thermostat, write_csv, store):
    stamps = ["2026-01-01T00:00:00Z", "2026-01-01T02:10:00+02:00", "2026-01-01T00:20:00.5Z"]
    lines = [f"r1,{i},18.0,1,0.5,{'true' if i == 2 else 'false'},{ts}" for i, ts in enumerate(stamps)]
    ingest(thermostat, [write_csv("ts.csv", lines)], store)
    got = store.con.execute("SELECT timestamp::VARCHAR FROM steps_thermostat ORDER BY step").fetchall()
    assert [r[0] for r in got] == ["2026-01-01 00:00:00", "2026-01-01 00:10:00", "2026-01-01 00:20:00.5"]


@pytest.mark.parametrize("unit", ["ms", "us", "ns"])
@pytest.mark.parametrize("separator", ["T", " "])
def test_iso_timestamps_parse_as_polars_own_layout_does(unit, separator) -> None:
    stamps = [
        f"2026-01-01{separator}00:00:00",
        f"2026-02-28{separator}23:59:59.5",
        f"2026-03-01{separator}12:00:00.123",
        f"2026-03-01{separator}12:00:00.123456",
        f"2026-03-01{separator}12:00:00.123456789",
        None,
    ]
    frame = pl.DataFrame({"t": stamps})
    expected = frame["t"].str.to_datetime(f"%Y-%m-%d{separator}%H:%M:%S%.f", time_unit=unit)
    got = _parse_datetimes(frame, "t", unit)
    assert got is not None and got.dtype == pl.Datetime(unit) and got.to_list() == expected.to_list()
    whole = pl.DataFrame({"t": stamps[:1] * 3})  # whole seconds take the plain layout
    assert _parse_datetimes(whole, "t", unit).to_list() == whole["t"].str.to_datetime(time_unit=unit).to_list()


@pytest.mark.parametrize(
    "odd",
    [
        "2026-01-01T00:00:00Z",  # a zone: polars infers the layout instead
        "2026-01-01T00:00:00+02:00",
        "2026-01-01T00:00:00.5Z",
        "2026-01-01T00:00:00.+5",
        "2026-01-01T00:00:00.",
        "2026-01-01T00:00:00.1234567890",
        "2026-01-01T00:00",
        "2026-01-01T24:00:00",
        "2026-13-01T00:00:00",
        "2026-01-01",
    ],
)
def test_timestamps_of_any_other_shape_are_left_to_polars_inference(odd) -> None:
    for first in ("2026-01-01T00:00:00", "2026-01-01T00:00:00.25"):
        assert _parse_datetimes(pl.DataFrame({"t": [first, odd]}), "t", "us") is None


def test_dates_take_the_named_layout_only_when_every_value_has_it() -> None:
    parsed = _parse_dates(pl.DataFrame({"d": ["2026-01-02", None]}), "d")
    assert parsed is not None and [d and d.isoformat() for d in parsed.to_list()] == ["2026-01-02", None]
    assert _parse_dates(pl.DataFrame({"d": ["2026-01-02", "2026/01/03"]}), "d") is None


def test_the_fast_once_per_episode_check_defers_to_the_exact_one_when_unsure() -> None:
    steps = pl.DataFrame({"episode_id": ["a", "a", "b", "b", "c"]})
    assert _distinct_in_runs(steps, np.array([0, 1, 0, 1, 1]), 3)  # the same action in different episodes
    assert not _distinct_in_runs(steps, np.array([0, 1, 2, 2, 1]), 3)  # episode b repeats action 2
    # A bitmap much larger than the rows (huge action space): no answer, the exact check runs instead.
    assert not _distinct_in_runs(steps, np.array([0, 1, 0, 1, 1]), 10_000_000)


def test_a_duplicate_step_far_from_its_first_occurrence_names_both_rows(thermostat, write_csv, store):
    path = write_csv("dup.csv", GOOD + [GOOD[0]])  # data row 5 repeats row 0
    with pytest.raises(IngestError) as info:
        ingest(thermostat, [path], store)
    assert (info.value.row, info.value.column) == (0, "step")
    assert "duplicate step 0 of episode 'r1' (rows 0 and 5)" in str(info.value)


def test_an_integer_written_with_a_decimal_point_is_refused_with_how_to_write_it(thermostat, write_csv, store):
    with pytest.raises(IngestError, match=r"row 1, column 'setting'.*'1\.0'.*without a decimal point \(3, not 3\.0\)"):
        ingest(thermostat, [write_csv("dec.csv", GOOD[:1] + ["r1,1,19.0,1.0,0.3,false,"])], store)


# -- typed files (Parquet, JSONL) are converted only as their CSV text would be --------------------------------


def _typed_log(**overrides: pl.Series) -> pl.DataFrame:
    log = pl.DataFrame(
        {
            "room": ["r1", "r1", "r1"],
            "t": pl.Series([0, 1, 2], dtype=pl.Int64),
            "temp": [18.0, 19.5, 20.0],
            "setting": pl.Series([2, 1, 0], dtype=pl.Int64),
            "p": [0.6, 0.3, 0.5],
            "done": [False, False, True],
        }
    )
    return log.with_columns(**overrides)


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_typed_files_ingest_like_their_csv(thermostat, tmp_path, store, suffix):
    path = tmp_path / f"log{suffix}"
    log = _typed_log(done=pl.Series([0, 0, 1]))  # an integer 0/1 is a boolean, as "0"/"1" is in a CSV
    log.write_parquet(path) if suffix == ".parquet" else log.write_ndjson(path)
    assert ingest(thermostat, [path], store).steps_inserted == 3
    np.testing.assert_allclose(store.load_arrays("thermostat").actions[:, 0], [2, 1, 0])
    assert store.load_arrays("thermostat").terminated.tolist() == [False, False, True]


@pytest.mark.parametrize(
    ("column", "values", "row", "value", "hint"),
    [
        ("setting", [2.0, 1.7, 0.0], 1, 1.7, "astype('Int64')"),  # a fraction is not truncated to 1
        ("setting", [2.0, 1.0, 0.0], 0, 2.0, "not even 3.0"),  # a whole float is refused, as "2.0" is in a CSV
        ("t", [0.0, 1.0, 2.0], 0, 0.0, "write 't' as an integer column"),
        ("done", [0, 7, 1], 1, 7, "Fix the value"),  # an integer other than 0 or 1 is not a boolean
        ("done", [0.0, 0.0, 1.0], 0, 0.0, "Write 'done' as Boolean"),
        ("temp", [True, False, True], 0, True, "Write 'temp' as Float32"),
    ],
)
@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_typed_values_that_would_not_parse_from_csv_text_are_refused(
    thermostat, tmp_path, store, suffix, column, values, row, value, hint
):
    path = tmp_path / f"log{suffix}"
    log = _typed_log(**{column: pl.Series(values)})
    log.write_parquet(path) if suffix == ".parquet" else log.write_ndjson(path)
    with pytest.raises(IngestError) as info:
        ingest(thermostat, [path], store)
    err = info.value
    assert (err.file, err.row, err.column, err.value) == (str(path), row, column, value)
    assert "wrong type: expected" in str(err) and hint in str(err)
    assert store.domains() == []


def test_an_integer_out_of_range_is_refused_by_value(thermostat, tmp_path, store):
    path = tmp_path / "log.parquet"
    _typed_log(setting=pl.Series([2, 3_000_000_000, 0])).write_parquet(path)
    with pytest.raises(IngestError, match=r"row 1, column 'setting': wrong type: expected Int32.*outside the range"):
        ingest(thermostat, [path], store)


# -- state feature dtypes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "lines", "row", "column", "value"),
    [
        ("int", ["r1,0,18.0,2,0.6,false,", "r1,1,4.5,1,0.3,true,"], 1, "state.temp", 4.5),
        ("int", ["r1,0,18.0,2,0.6,false,", "r1,1,19.0,1,0.3,true,"], None, None, None),
        ("bool", ["r1,0,0,2,0.6,false,", "r1,1,7,1,0.3,true,"], 1, "state.temp", 7.0),
        ("bool", ["r1,0,1,2,0.6,false,", "r1,1,0,1,0.3,true,"], None, None, None),
    ],
)
def test_int_and_bool_state_features_hold_whole_numbers_and_flags(
    thermostat, write_csv, store, dtype, lines, row, column, value
):
    class Declared(type(thermostat)):  # type: ignore[misc]
        def spec(self) -> DomainSpec:
            return dataclasses.replace(super().spec(), state=(Feature("temp", dtype=dtype),))

    path = write_csv("typed.csv", lines)
    if row is None:
        assert ingest(Declared(), [path], store).steps_inserted == 2
        return
    with pytest.raises(IngestError) as info:
        ingest(Declared(), [path], store)
    assert (info.value.row, info.value.column, info.value.value) == (row, column, value)
    assert f"state feature 'temp' is declared {dtype}" in str(info.value)


# -- unreadable files and failing adapters are named, never a traceback -------------------------------------


class _UndeclaredColumn(ThermostatAdapter):
    name = "reads_undeclared"

    def transform(self, raw: pl.LazyFrame) -> pl.LazyFrame:
        return super().transform(raw.with_columns(pl.col("humidity")))


class _MixedArray(ThermostatAdapter):
    name = "mixes_dtypes"

    def transform(self, raw: pl.LazyFrame) -> pl.LazyFrame:
        return super().transform(raw).with_columns(pl.concat_arr(pl.col("step"), pl.col("episode_id")).alias("state"))


@pytest.mark.parametrize(
    ("adapter", "name", "content", "row", "message"),
    [
        (ThermostatAdapter, "empty.csv", b"", None, "the file is empty (no header row)"),
        (
            ThermostatAdapter,
            "extra.csv",
            (HEADER + "\n".join(GOOD[:2] + ["r1,2,20.0,0,0.5,true,,EXTRA"] + GOOD[3:]) + "\n").encode(),
            2,
            "the row has more fields than the header's 7 columns",
        ),
        (ThermostatAdapter, "cut.parquet", b"PAR1 not really", None, "cannot read the file as PARQUET"),
        (_UndeclaredColumn, "a.csv", (HEADER + "\n".join(GOOD) + "\n").encode(), None, "ColumnNotFoundError"),
        (_MixedArray, "a.csv", (HEADER + "\n".join(GOOD) + "\n").encode(), None, "SchemaError"),
    ],
)
def test_files_polars_cannot_read_and_adapters_that_fail_exit_2_naming_the_file(
    tmp_path, adapter, name, content, row, message
):
    from adapters import ADAPTERS
    from decision_core.cli import app

    path = tmp_path / name
    path.write_bytes(content)
    with DecisionStore(tmp_path / "direct.duckdb") as store, pytest.raises(IngestError) as info:
        ingest(adapter(), [path], store)
    assert (info.value.file, info.value.row) == (str(path), row)
    if adapter is not ThermostatAdapter:
        assert f"the adapter '{adapter.name}' failed on this file: {message}" in str(info.value)
        assert "Fix the adapter" in str(info.value)
    ADAPTERS.register(adapter.name, adapter, origin="test")
    try:
        result = CliRunner().invoke(app, ["ingest", adapter.name, str(path), "--db", str(tmp_path / "s.duckdb")])
    finally:
        ADAPTERS.unregister(adapter.name)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    output = " ".join(result.output.split())
    assert str(path) in output and message in output and "Traceback" not in output


def test_a_mapping_that_renames_onto_a_column_the_file_has_names_the_file(thermostat, tmp_path, store):
    raw = tmp_path / "other.csv"
    raw.write_text("room,t,temp,temperature,setting,done\nr1,0,18.0,18.5,2,false\n")
    mapping = tmp_path / "mapping.toml"
    mapping.write_text('[rename]\ntemperature = "temp"\n')
    with pytest.raises(DecisionCoreError) as info:
        ingest(thermostat, [raw], store, mapping=ColumnMapping.load(mapping))
    assert str(raw) in str(info.value) and "temp" in str(info.value)
