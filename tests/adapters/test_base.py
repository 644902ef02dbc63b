"""Helpers of the plugin contract that adapters share."""

from __future__ import annotations

import numpy as np
import polars as pl

from adapters.base import sorted_by


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
