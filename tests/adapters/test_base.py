"""Helpers of the plugin contract that adapters share, and the column mapping that renames a log's columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

import adapters.base
from adapters.base import ColumnMapping, pack_columns, sorted_by
from decision_core.errors import SpecError


def test_sortedness_check_agrees_with_sorting_nulls_last() -> None:
    """The check that lets an ordered log skip the sort says 'sorted' exactly when sorting changes nothing."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(0, 6))
        frame = pl.DataFrame(
            {
                "a": pl.Series([None if v < 0 else f"u{v}" for v in rng.integers(-1, 2, n)], dtype=pl.String),
                "b": pl.Series([None if v < 0 else int(v) for v in rng.integers(-1, 2, n)], dtype=pl.Int64),
            }
        )
        expected = frame.equals(frame.sort(["a", "b"], nulls_last=True, maintain_order=True))
        assert sorted_by(frame, ["a", "b"]) == expected, frame


def test_pack_columns_fills_rows_in_feature_order_across_blocks_and_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapters.base, "PACK_BLOCK_ROWS", 4)  # 10 rows: two full blocks and a tail
    rng = np.random.default_rng(0)
    ints, floats, flags = rng.integers(0, 9, 10), rng.normal(size=10), rng.random(10) < 0.5
    head = pl.DataFrame({"i": ints[:3], "f": floats[:3], "b": flags[:3]})
    tail = pl.DataFrame({"i": ints[3:], "f": floats[3:], "b": flags[3:]})
    frame = pl.concat([head, tail], rechunk=False)  # columns held in two chunks, split inside a block
    assert frame["f"].n_chunks() == 2
    packed = pack_columns(frame, ["f", "b", "i"])
    assert packed.dtype == np.float32 and packed.flags.c_contiguous
    np.testing.assert_array_equal(packed, np.column_stack([floats, flags, ints]).astype(np.float32))
    assert pack_columns(frame.head(0), ["f", "i"]).shape == (0, 2)


# -- column mappings: every entry takes effect, or the ingest stops and says which ----------------------------

REPO = Path(__file__).resolve().parents[2]
THERMOSTAT_LOG = ["Room", "time", "temperature", "heater", "p"]


def mapping_file(tmp_path: Path, text: str) -> ColumnMapping:
    path = tmp_path / "mapping.toml"
    path.write_text(text)
    return ColumnMapping.load(path)


def apply(mapping: ColumnMapping, present: list[str], file: str = "rooms.csv") -> pl.DataFrame:
    raw = pl.LazyFrame({c: ["1"] for c in present})
    return mapping.apply(raw, present, file=file).collect()


def test_a_misspelt_rename_source_names_the_mapping_the_log_and_the_closest_column(tmp_path: Path) -> None:
    mapping = mapping_file(tmp_path, '[rename]\nRoom = "room"\ntime = "t"\ntemperature = "temp"\nhaeter = "setting"\n')
    with pytest.raises(SpecError) as info:
        apply(mapping, THERMOSTAT_LOG)
    message = str(info.value)
    assert str(tmp_path / "mapping.toml") in message and "rooms.csv" in message
    assert "[rename] haeter = 'setting'" in message and "no column 'haeter'" in message
    assert "Did you mean 'heater'?" in message and "Room, time, temperature, heater, p" in message


def test_rename_targets_and_defaults_must_be_columns_the_adapter_reads(thermostat, tmp_path: Path) -> None:
    for text, entry, closest in (
        ('[rename]\nheater = "settng"\n', "[rename] heater = 'settng'", "setting"),
        ("[defaults]\ndoen = false\n", "[defaults] doen", "done"),
    ):
        with pytest.raises(SpecError) as info:
            mapping_file(tmp_path, text).check(thermostat)
        message = str(info.value)
        assert entry in message and "not a column of adapter 'thermostat'" in message, message
        assert f"Did you mean '{closest}'?" in message and "room, t, temp, setting, p, done, ts" in message


def test_a_default_must_be_a_constant_of_the_columns_type(thermostat, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"\[defaults\] setting = 'high': .* as Int32"):
        mapping_file(tmp_path, '[defaults]\nsetting = "high"\n').check(thermostat)
    mapping_file(tmp_path, "[defaults]\nsetting = 2\np = 0.5\ndone = false\n").check(thermostat)


def test_a_default_for_a_column_the_log_has_is_an_error(tmp_path: Path) -> None:
    mapping = mapping_file(tmp_path, '[rename]\nheater = "setting"\n[defaults]\nsetting = 0\n')
    with pytest.raises(SpecError, match=r"\[defaults\] setting: rooms.csv already has column 'setting' \(renamed"):
        apply(mapping, THERMOSTAT_LOG)
    with pytest.raises(SpecError, match=r"\[defaults\] p: rooms.csv already has column 'p', so"):
        apply(ColumnMapping(defaults={"p": 0.5}), THERMOSTAT_LOG)


def test_a_rename_onto_a_column_the_log_has_is_an_error() -> None:
    mapping = ColumnMapping(rename={"temperature": "p"})
    with pytest.raises(SpecError, match=r"two columns named 'p' \(from 'temperature' and its own column\)"):
        apply(mapping, THERMOSTAT_LOG)
    with pytest.raises(SpecError, match=r"two columns named 'temp' \(from 'Room' and 'temperature'\)"):
        apply(ColumnMapping(rename={"Room": "temp", "temperature": "temp"}), THERMOSTAT_LOG)


def test_one_mapping_serves_logs_under_the_users_names_and_under_the_adapters() -> None:
    mapping = ColumnMapping(rename={"Room": "room", "time": "t", "temperature": "temp", "heater": "setting"})
    assert apply(mapping, THERMOSTAT_LOG).columns == ["room", "t", "temp", "setting", "p"]
    # a log already written with the adapter's names needs no renaming; the entries do not apply to it
    assert apply(mapping, ["room", "t", "temp", "setting"]).columns == ["room", "t", "temp", "setting"]
    swapped = ColumnMapping(rename={"Room": "time", "time": "Room"})  # renames are applied together
    assert apply(swapped, THERMOSTAT_LOG).columns == ["time", "Room", "temperature", "heater", "p"]


def test_the_documented_mappings_still_apply(thermostat, tmp_path: Path) -> None:
    from adapters.recommender import RecommenderAdapter

    ratings = ColumnMapping.load(REPO / "sample_data" / "recommender" / "ratings_mapping.toml")
    ratings.check(RecommenderAdapter())
    header = (REPO / "sample_data" / "recommender" / "ratings_sample.csv").read_text().splitlines()[0].split(",")
    assert apply(ratings, header).columns == ["user_id", "item_id", "rating", "unix_time"]
    docs = (REPO / "docs" / "adapters.md").read_text()
    example = docs.split("## Column mapping", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    documented = mapping_file(tmp_path, example)
    documented.check(thermostat)
    assert apply(documented, ["Room", "time", "temperature", "heater"]).columns == [
        "room",
        "t",
        "temp",
        "setting",
        "done",
    ]
