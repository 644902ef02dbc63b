"""Adapter for recommendation impression logs, and for plain ratings logs through a column mapping.

A row is one item shown to one user (see docs/domains/recommender.md for every column). An episode is one
session, ``<user_id>/<session_id>``; logs without sessions are split into sessions at gaps of more than
:data:`SESSION_GAP` between a user's events. Steps are ``session_seq`` when logged, else the order of the events
in time (then slot, then file order).

The state before each impression is computed from the session's earlier rows only, with the same definitions the
simulator uses (``decision_core/envs/recommender.py``, which holds the spec and the item catalogue): counts,
rolling windows over the last :data:`~decision_core.envs.recommender.WINDOW` impressions and capped per-category
engagement. Everything is vectorised over the whole file in session order (sorted only when the file is not
already in that order): in-session cumulative sums are global cumulative sums minus their value where the session
began, and windows subtract the sum ``WINDOW`` rows back (or the session's base), so no per-session group-by,
window pass or Python loop runs. Features stay scalar columns until numpy packs them into the state arrays.

Ratings logs (user, item, rating, time) need no code: rename their columns with a mapping (see
``sample_data/recommender/ratings_mapping.toml``); a rating of at least :data:`LIKED_RATING` counts as a click and
the rating itself, scaled to [0, 1], as the engagement.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl

from adapters.base import Adapter, RawColumn, pack_columns, sorted_by
from decision_core.envs.recommender import (
    CATEGORIES,
    ENGAGED_CLICKS,
    FULL_DWELL_SECONDS,
    N_ITEMS,
    PRIOR_ENGAGEMENT,
    SINCE_CLICK_CAP,
    WINDOW,
    catalogue,
    recommender_spec,
)
from decision_core.errors import IngestError
from decision_core.schema import DomainSpec

#: A user's events further apart than this start a new session (when the log has no session_id).
SESSION_GAP = timedelta(minutes=30)
#: Ratings at or above this count as a click (ratings logs have no clicks).
LIKED_RATING = 4.0
#: Rating scale of ratings logs: engagement = (rating - low) / (high - low), clipped to [0, 1].
RATING_LOW, RATING_HIGH = 1.0, 5.0
#: The per-category window counts share one cumulative sum: category k adds _DIGIT**k, so the count of category k
#: over any run of rows is its base-_DIGIT digit. A window holds at most WINDOW < _DIGIT rows, so digits never
#: carry, and the sum stays far from overflowing Int64 (eight 3-bit digits for WINDOW = 5).
_DIGIT = 2 ** WINDOW.bit_length()
_DIGIT_VALUES = [_DIGIT**k for k in range(len(CATEGORIES))]


class RecommenderAdapter(Adapter):
    """Impression/interaction logs of a recommendation widget -> the ``recommender`` domain."""

    name = "recommender"
    version = "1.0"
    #: Partitioning by user keeps every session whole, including sessions found by time gaps.
    episode_columns = ("user_id",)
    columns = {
        "user_id": RawColumn(pl.String(), description="user identifier"),
        "item_id": RawColumn(pl.Int64(), description=f"item shown: catalogue index 0..{N_ITEMS - 1} (the action)"),
        "session_id": RawColumn(pl.String(), required=False, description="session identifier (unique per user)"),
        "session_seq": RawColumn(
            pl.Int64(), required=False, description="0-based index of the impression in the session"
        ),
        "timestamp": RawColumn(pl.Datetime("us"), required=False, description="time of the impression (ISO 8601)"),
        "unix_time": RawColumn(pl.Int64(), required=False, description="time of the impression, seconds since 1970"),
        "device": RawColumn(pl.String(), required=False, description="mobile, desktop or tablet"),
        "slot": RawColumn(pl.Int64(), required=False, description="position of the item in the widget (orders ties)"),
        "propensity": RawColumn(pl.Float64(), required=False, description="probability the logging policy showed it"),
        "click": RawColumn(pl.Boolean(), required=False, description="the user clicked the item"),
        "purchase": RawColumn(pl.Boolean(), required=False, description="the user bought the item"),
        "dwell_seconds": RawColumn(pl.Float64(), required=False, description="time on the item's page after a click"),
        "rating": RawColumn(
            pl.Float64(), required=False, description=f"explicit rating {RATING_LOW:g}..{RATING_HIGH:g}"
        ),
        "left": RawColumn(pl.Boolean(), required=False, description="the user left after this impression"),
    }

    def spec(self) -> DomainSpec:
        return recommender_spec()

    def transform(self, raw: pl.LazyFrame) -> pl.LazyFrame:
        present = set(raw.collect_schema().names())
        if "click" not in present and "rating" not in present:
            raise IngestError(
                file="",
                column="click",
                rule="missing column: the log needs 'click' (impression logs) or 'rating' (ratings logs)",
                hint="rename the feedback column with --mapping FILE",
            )
        lf = raw.with_columns(self._normalised(present)).drop(
            c for c in ("click", "purchase", "dwell_seconds", "rating", "left") if c in present
        )
        frame = self._episodes(lf, present)
        # _start: the row where the row's session begins (the frame is sorted by session, step order).
        lf = (
            frame.lazy()
            .with_columns(
                _row=pl.int_range(pl.len(), dtype=pl.Int64),
                _first=(pl.col("episode_id") != pl.col("episode_id").shift(1)).fill_null(True),
                _last=(pl.col("episode_id") != pl.col("episode_id").shift(-1)).fill_null(True),
            )
            .with_columns(_start=pl.when("_first").then("_row").forward_fill())
        )
        return self._steps(lf.with_columns(_pos=pl.col("_row") - pl.col("_start")), present)

    # -- stages ---------------------------------------------------------------------------------------------
    @staticmethod
    def _normalised(present: set[str]) -> list[pl.Expr]:
        """Feedback, time and device columns with the fallbacks of ratings logs and missing values."""

        def col(name: str, default: object) -> pl.Expr:
            return pl.col(name) if name in present else pl.lit(default)

        rating = col("rating", None).cast(pl.Float64)
        dwell = col("dwell_seconds", 0.0).cast(pl.Float64).fill_null(0.0)
        liked = (rating >= LIKED_RATING).fill_null(False)
        click = pl.col("click").fill_null(False) if "click" in present else liked
        scaled = ((rating - RATING_LOW) / (RATING_HIGH - RATING_LOW)).clip(0.0, 1.0)
        clean_dwell = pl.when(dwell.is_finite()).then(dwell).otherwise(0.0)
        engagement = pl.coalesce(
            pl.when(rating.is_finite()).then(scaled),
            click.cast(pl.Float64) * (clean_dwell / FULL_DWELL_SECONDS).clip(upper_bound=1.0),
        )
        unix = col("unix_time", None).cast(pl.Int64) * 1_000_000
        return [
            click.cast(pl.Int64).alias("_click"),
            col("purchase", False).fill_null(False).cast(pl.Int64).alias("_buy"),
            clean_dwell.alias("_dwell"),
            # A non-finite dwell or rating poisons this row's next state, so validation names this raw row.
            (~dwell.is_finite() | (rating.is_not_null() & ~rating.is_finite())).alias("_bad"),
            engagement.alias("_engagement"),
            pl.coalesce(col("timestamp", None).cast(pl.Datetime("us")), unix.cast(pl.Datetime("us"))).alias("_time"),
            (col("device", "").str.to_lowercase() == "mobile").fill_null(False).alias("_mobile"),
            col("left", None).cast(pl.Boolean).alias("_left"),
            pl.lit(pl.Series(catalogue().category)).gather(pl.col("item_id").clip(0, N_ITEMS - 1)).alias("_cat"),
        ]

    @staticmethod
    def _episodes(lf: pl.LazyFrame, present: set[str]) -> pl.DataFrame:
        """Add ``episode_id`` and order the frame by episode, then by step order (sorting only when the file is
        not already in that order)."""
        if "session_id" in present:
            frame = lf.with_columns(episode_id=pl.col("user_id") + "/" + pl.col("session_id")).collect()
        else:
            # Sessionise: a new session starts at a user's first event and after every gap > SESSION_GAP.
            frame = lf.collect()
            by = ["user_id", "_time", "source_row"]
            if not sorted_by(frame, by):
                frame = frame.sort(by, nulls_last=True)
            new = (pl.col("user_id") != pl.col("user_id").shift(1)).fill_null(True) | (
                (pl.col("_time") - pl.col("_time").shift(1)) > SESSION_GAP
            ).fill_null(False)
            started = pl.when(new).then(pl.col("_time").dt.strftime("%Y%m%dT%H%M%S").fill_null("0")).forward_fill()
            frame = frame.with_columns(episode_id=pl.col("user_id") + "/" + started)
        order = ["session_seq"] if "session_seq" in present else ["_time"] + (["slot"] if "slot" in present else [])
        by = ["episode_id", *order, "source_row"]
        return frame if sorted_by(frame, by) else frame.sort(by, nulls_last=True)

    @staticmethod
    def _steps(lf: pl.LazyFrame, present: set[str]) -> pl.LazyFrame:
        """State before / after each impression from the session's rows so far; the steps columns.

        Each counted column gets one global cumulative sum and one gather of its value before the session began;
        in-session sums and windows are differences of the two (or of the sum WINDOW rows back). The eight
        per-category window counts share one cumulative sum, each category a base-_DIGIT digit of it.
        """
        click, first, pos = pl.col("_click"), pl.col("_first"), pl.col("_pos")
        counted: dict[str, pl.Expr] = {
            "click": click,
            "dwell": pl.col("_dwell") / 60.0,
            "buy": pl.col("_buy"),
            "engagement": pl.col("_engagement"),
            **{f"engaged_{k}": click * (pl.col("_cat") == k).cast(pl.Int64) for k in range(len(CATEGORIES))},
            "shown": pl.lit(pl.Series(_DIGIT_VALUES)).gather(pl.col("_cat")),
        }
        totals = lf.with_columns(x.cum_sum().alias(f"_{n}_total") for n, x in counted.items()).with_columns(
            (pl.col(f"_{n}_total") - x).gather(pl.col("_start")).alias(f"_{n}_base") for n, x in counted.items()
        )

        def session(n: str) -> pl.Expr:
            return pl.col(f"_{n}_total") - pl.col(f"_{n}_base")

        def window(n: str) -> pl.Expr:
            total = pl.col(f"_{n}_total")
            return total - pl.when(pos >= WINDOW).then(total.shift(WINDOW)).otherwise(f"_{n}_base")

        shown = window("shown")
        pad = (WINDOW - pl.min_horizontal(pos + 1, WINDOW)).cast(pl.Float64)
        last_click = pl.when(click == 1).then("_row").when(first).then(pl.col("_row") - 1).forward_fill()
        # Features after this impression (the next state).
        after: dict[str, pl.Expr] = {
            "mobile": pl.col("_mobile").gather(pl.col("_start")),  # the session's first row counts
            "impressions": pos + 1,
            "clicks": session("click"),
            "recent_clicks": window("click"),
            "since_click": pl.min_horizontal(pl.col("_row") - last_click, SINCE_CLICK_CAP),
            "dwell_minutes": session("dwell"),
            "satisfaction": (window("engagement") + PRIOR_ENGAGEMENT * pad) / WINDOW,
            "converted": session("buy") > 0,
            **{
                f"engaged_{c}": session(f"engaged_{k}").clip(upper_bound=ENGAGED_CLICKS)
                for k, c in enumerate(CATEGORIES)
            },
            **{f"recent_{c}": shown // _DIGIT**k % _DIGIT for k, c in enumerate(CATEGORIES)},
        }
        names = list(after)  # the spec's state features, in order (the round-trip test checks)
        if "left" in present:
            left = pl.col("_left").fill_null(False)
            terminated, truncated = left, pl.col("_last") & ~left
        else:  # a session ends when the user leaves
            terminated, truncated = pl.col("_last"), pl.lit(False)
        flat = totals.select(
            pl.col("episode_id"),
            (pl.col("session_seq") if "session_seq" in present else pos).cast(pl.Int32).alias("step"),
            pl.col("item_id").cast(pl.Float32).alias("_action"),
            (pl.col("propensity") if "propensity" in present else pl.lit(None, pl.Float64)).alias("propensity"),
            (click + pl.col("_dwell") / 60.0).alias("reward"),
            terminated.alias("terminated"),
            truncated.alias("truncated"),
            pl.col("_time").alias("timestamp"),
            pl.col("source_row"),
            first.alias("_first"),
            pl.col("_bad"),
            *(e.cast(pl.Float32).alias(f"_f{j}") for j, e in enumerate(after.values())),
        ).collect()
        # The state arrays are packed in numpy (pack_columns). The next state is the features after the impression;
        # the state is the previous row's, and at a session's first row nothing counted, satisfaction at its prior
        # and the session's device (feature 0, the same on every row of the session).
        after_values = pack_columns(flat, [f"_f{j}" for j in range(len(names))])
        state = np.empty_like(after_values)
        state[1:] = after_values[:-1]
        starts = flat["_first"].to_numpy()
        initial = np.zeros(len(names), np.float32)
        initial[names.index("satisfaction")] = PRIOR_ENGAGEMENT
        state[starts] = initial
        state[starts, names.index("mobile")] = after_values[starts, names.index("mobile")]
        # A row whose dwell or rating is not finite gets NaN in the features derived from them, so validation
        # rejects it and names this raw row (the state of later rows, built from cleaned values, stays finite).
        bad = flat["_bad"].to_numpy()
        for feature in ("dwell_minutes", "satisfaction"):
            after_values[bad, names.index(feature)] = np.nan
        return flat.select(
            "episode_id",
            "step",
            pl.Series("state", state),
            pl.col("_action").reshape((-1, 1)).alias("action"),
            "propensity",
            "reward",
            pl.Series("next_state", after_values),
            "terminated",
            "truncated",
            "timestamp",
            "source_row",
        ).lazy()
