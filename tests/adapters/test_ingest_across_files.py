"""Episodes across files and ingests: one command ingests as several would, a terminated episode takes no later
steps, a truncated one may be continued, and the ingests table records what each file added."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from adapters.ingest import ingest
from decision_core.errors import IngestError
from decision_core.store import DecisionStore, fetch_one

R1 = [
    "r1,0,18.0,2,0.6,false,2026-01-01T00:00:00",
    "r1,1,19.5,1,0.3,false,2026-01-01T00:10:00",
    "r1,2,20.0,0,0.5,true,2026-01-01T00:20:00",
]
R1_LATER = ["r1,3,20.5,0,0.5,false,2026-01-01T00:30:00", "r1,4,21.0,0,0.5,true,2026-01-01T00:40:00"]
R2 = ["r2,0,21.0,0,0.9,false,", "r2,1,20.5,0,0.9,false,"]


@pytest.fixture
def store(tmp_path: Path):
    with DecisionStore(tmp_path / "store.duckdb") as s:
        yield s


@pytest.fixture
def cut_thermostat(thermostat):
    """The example adapter reading ``done`` as "the log was cut here" (truncated) rather than "the task ended"."""

    class CutThermostat(type(thermostat)):  # type: ignore[misc]
        def transform(self, raw: pl.LazyFrame) -> pl.LazyFrame:
            steps = super().transform(raw)
            return steps.with_columns(pl.col("terminated").alias("truncated"), pl.lit(False).alias("terminated"))

    return CutThermostat()


def _ingest_in(store, adapter, paths: list[Path], commands: str):
    """Ingest ``paths`` in one command or one command per file; the last report."""
    if commands == "one":
        return ingest(adapter, paths, store)
    for path in paths:
        report = ingest(adapter, [path], store)
    return report


def _stored(store) -> list[tuple]:
    return store.con.execute(
        "SELECT episode_id, step, terminated, truncated, source_file, source_row FROM steps_thermostat ORDER BY ALL"
    ).fetchall()


@pytest.mark.parametrize("commands", ["one", "several"])
def test_a_terminated_episode_takes_no_later_steps_in_any_file_or_ingest(thermostat, write_csv, store, commands):
    done, later = write_csv("done.csv", R1), write_csv("later.csv", R1_LATER)
    with pytest.raises(IngestError) as info:
        _ingest_in(store, thermostat, [done, later], commands)
    err = info.value
    assert (err.file, err.row, err.column) == (str(later), 0, "step")
    # the episode, the step that ended it and where that step came from are named
    assert f"episode 'r1' ended at step 2 (terminated: {done}, row 2) but this file continues it at step 3" in str(err)
    assert "new episode id" in str(err)
    # nothing of the failed command is written
    assert (store.count_steps("thermostat") if store.domains() else 0) == (3 if commands == "several" else 0)


@pytest.mark.parametrize(("commands", "later_first"), [("one", False), ("one", True), ("several", False)])
def test_a_truncated_episode_is_continued_by_a_later_file_and_no_longer_ends_there(
    cut_thermostat, write_csv, store, commands, later_first
):
    cut, later = write_csv("cut.csv", R1), write_csv("later.csv", R1_LATER)
    _ingest_in(store, cut_thermostat, [later, cut] if later_first else [cut, later], commands)
    assert [(r[1], r[3]) for r in _stored(store)] == [(0, False), (1, False), (2, False), (3, False), (4, True)]
    arrays = store.load_arrays("thermostat")
    assert arrays.n_episodes == 1 and arrays.truncated.tolist() == [False, False, False, False, True]
    # Step 2's next state stays as logged (its file ended there: the adapter repeated the state), not step 3's.
    np.testing.assert_allclose(arrays.next_states[:, 0], [19.5, 20.0, 20.0, 21.0, 21.0])


def test_clearing_a_truncated_flag_is_undone_with_a_failed_ingest(cut_thermostat, write_csv, store):
    ingest(cut_thermostat, [write_csv("cut.csv", R1)], store)
    bad = write_csv("bad.csv", ["r9,0,18.0,7,0.6,false,"])
    with pytest.raises(IngestError):
        ingest(cut_thermostat, [write_csv("later.csv", R1_LATER), bad], store)
    assert [(r[1], r[3]) for r in _stored(store)] == [(0, False), (1, False), (2, True)]


@pytest.mark.parametrize("commands", ["one", "several"])
def test_overlapping_exports_ingest_alike_in_one_command_or_several(thermostat, write_csv, store, commands):
    monday = write_csv("monday.csv", R1[:2] + R2[:1])
    tuesday = write_csv("tuesday.csv", R1 + R2)  # repeats Monday's rows and goes on
    report = _ingest_in(store, thermostat, [monday, tuesday], commands)
    if commands == "one":
        assert (report.files, report.rows_read, report.steps_staged) == (2, 8, 8)
        assert (report.steps_inserted, report.steps_skipped) == (5, 3)
    else:
        assert (report.steps_inserted, report.steps_skipped) == (2, 3)
    # Monday's rows stay Monday's; Tuesday adds only what Monday lacked.
    assert [(r[0], r[1], Path(r[4]).name) for r in _stored(store)] == [
        ("r1", 0, "monday.csv"),
        ("r1", 1, "monday.csv"),
        ("r1", 2, "tuesday.csv"),
        ("r2", 0, "monday.csv"),
        ("r2", 1, "tuesday.csv"),
    ]
    assert store.load_arrays("thermostat").n_episodes == 2


def test_a_copy_of_a_file_in_the_same_command_adds_nothing(thermostat, write_csv, store, tmp_path):
    original = write_csv("export.csv", R1 + R2)
    copy = tmp_path / "export_copy.csv"
    copy.write_bytes(original.read_bytes())
    report = ingest(thermostat, [copy, original], store)
    assert (report.files, report.steps_staged, report.steps_inserted, report.steps_skipped) == (2, 10, 5, 5)
    assert {Path(r[4]).name for r in _stored(store)} == {"export_copy.csv"}


def test_a_file_named_twice_is_read_once(thermostat, write_csv, store, tmp_path, monkeypatch):
    path = write_csv("export.csv", R1 + R2)
    monkeypatch.chdir(tmp_path)
    report = ingest(thermostat, [path, "export.csv", path], store)
    assert (report.files, report.rows_read, report.steps_inserted, report.steps_skipped) == (1, 5, 5, 0)
    assert fetch_one(store.con, "SELECT count(*) FROM ingests")[0] == 1


@pytest.mark.parametrize("commands", ["one", "several"])
def test_a_repeated_row_that_ends_differently_is_judged_by_the_stored_one(thermostat, write_csv, store, commands):
    """The later export no longer ends r1 at step 2 and goes on, but the stored (first) copy of step 2 did end it:
    the same error whether the exports come in one command or two."""
    first = write_csv("first.csv", R1)
    second = write_csv("second.csv", [R1[0], R1[1], R1[2].replace("true", "false"), *R1_LATER])
    with pytest.raises(IngestError) as info:
        _ingest_in(store, thermostat, [first, second], commands)
    assert (info.value.file, info.value.row) == (str(second), 3)
    assert f"ended at step 2 (terminated: {first}, row 2)" in str(info.value)


def test_a_step_gap_between_files_names_both_sides(thermostat, write_csv, store):
    head, tail = write_csv("head.csv", R1[:2]), write_csv("tail.csv", R1_LATER)
    with pytest.raises(IngestError) as info:
        ingest(thermostat, [head, tail], store)
    assert (info.value.file, info.value.row, info.value.column) == (str(tail), 0, "step")
    assert f"step gap in episode 'r1': step 1 ({head}, row 1) is followed by step 3" in str(info.value)


def test_the_ingests_table_records_the_steps_each_file_added(thermostat, write_csv, store):
    first, second = write_csv("first.csv", R1), write_csv("second.csv", R1 + R2)
    ingest(thermostat, [first], store)
    ingest(thermostat, [first, second], store)
    recorded = store.con.execute("SELECT source, rows, steps FROM ingests ORDER BY ingest_id").fetchall()
    assert [(Path(s).name, r, n) for s, r, n in recorded] == [
        ("first.csv", 3, 3),
        ("first.csv", 3, 0),
        ("second.csv", 5, 2),
    ]
