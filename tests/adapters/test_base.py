"""Helpers of the plugin contract that adapters share."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import adapters.base
from adapters.base import pack_columns, sorted_by


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
