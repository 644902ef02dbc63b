"""Adapter for recommendation impression logs, and for plain ratings logs through a column mapping.

A row is one item shown to one user (see docs/domains/recommender.md for every column). An episode is one
session, ``<user_id>/<session_id>``; logs without sessions are split into sessions at gaps of more than
:data:`SESSION_GAP` between a user's events. Steps are ``session_seq`` when logged, else the order of the events
in time (then slot, then file order).

The state before each impression is computed from the session's earlier rows only, with the same definitions the
simulator uses (``decision_core/envs/recommender.py``, which holds the spec and the item catalogue): counts,
rolling windows over the last :data:`~decision_core.envs.recommender.WINDOW` impressions and capped per-category
engagement. Everything is vectorised over the whole file sorted by session: in-session cumulative sums are global
cumulative sums minus their value where the session began, and windows subtract the sum ``WINDOW`` rows back (or
the session's base), so no per-session group-by or Python loop runs.

Ratings logs (user, item, rating, time) need no code: rename their columns with a mapping (see
``sample_data/recommender/ratings_mapping.toml``); a rating of at least :data:`LIKED_RATING` counts as a click and
the rating itself, scaled to [0, 1], as the engagement.
"""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from adapters.base import Adapter, RawColumn
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


def _in_session_cumsum(x: pl.Expr) -> pl.Expr:
    """Cumulative sum of ``x`` within the session (frame sorted by session; needs ``_first``)."""
    total = x.cum_sum()
    return total - pl.when(pl.col("_first")).then(total - x).forward_fill()


def _window_sum(x: pl.Expr) -> pl.Expr:
    """Sum of ``x`` over the session's last WINDOW rows, this one included."""
    total = x.cum_sum()
    base = pl.when(pl.col("_first")).then(total - x).forward_fill()
    return total - pl.when(pl.col("_pos") >= WINDOW).then(total.shift(WINDOW)).otherwise(base)


class RecommenderAdapter(Adapter):
    """Impression/interaction logs of a recommendation widget -> the ``recommender`` domain."""

    name = "recommender"
    version = "1.0"
    #: Partitioning by user keeps every session whole, including sessions found by time gaps.
    episode_columns = ("user_id",)
    columns = {
        "user_id": RawColumn(pl.String, description="user identifier"),
        "item_id": RawColumn(pl.Int64, description=f"item shown: catalogue index 0..{N_ITEMS - 1} (the action)"),
        "session_id": RawColumn(pl.String, required=False, description="session identifier (unique per user)"),
        "session_seq": RawColumn(
            pl.Int64, required=False, description="0-based index of the impression in the session"
        ),
        "timestamp": RawColumn(pl.Datetime("us"), required=False, description="time of the impression (ISO 8601)"),
        "unix_time": RawColumn(pl.Int64, required=False, description="time of the impression, seconds since 1970"),
        "device": RawColumn(pl.String, required=False, description="mobile, desktop or tablet"),
        "slot": RawColumn(pl.Int64, required=False, description="position of the item in the widget (orders ties)"),
        "propensity": RawColumn(pl.Float64, required=False, description="probability the logging policy showed it"),
        "click": RawColumn(pl.Boolean, required=False, description="the user clicked the item"),
        "purchase": RawColumn(pl.Boolean, required=False, description="the user bought the item"),
        "dwell_seconds": RawColumn(pl.Float64, required=False, description="time on the item's page after a click"),
        "rating": RawColumn(pl.Float64, required=False, description=f"explicit rating {RATING_LOW:g}..{RATING_HIGH:g}"),
        "left": RawColumn(pl.Boolean, required=False, description="the user left after this impression"),
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
        lf = self._episodes(lf, present)
        lf = lf.with_columns(
            _row=pl.int_range(pl.len(), dtype=pl.Int64),
            _first=(pl.col("episode_id") != pl.col("episode_id").shift(1)).fill_null(True),
            _last=(pl.col("episode_id") != pl.col("episode_id").shift(-1)).fill_null(True),
        ).with_columns(_pos=pl.col("_row") - pl.when("_first").then("_row").forward_fill())
        return self._steps(lf, present)

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
    def _episodes(lf: pl.LazyFrame, present: set[str]) -> pl.LazyFrame:
        """Add ``episode_id`` and sort the frame by episode, then by step order."""
        if "session_id" in present:
            lf = lf.with_columns(episode_id=pl.col("user_id") + "/" + pl.col("session_id"))
        else:
            # Sessionise: a new session starts at a user's first event and after every gap > SESSION_GAP.
            lf = lf.sort("user_id", "_time", "source_row", nulls_last=True)
            new = (pl.col("user_id") != pl.col("user_id").shift(1)).fill_null(True) | (
                (pl.col("_time") - pl.col("_time").shift(1)) > SESSION_GAP
            ).fill_null(False)
            started = pl.when(new).then(pl.col("_time").dt.strftime("%Y%m%dT%H%M%S").fill_null("0")).forward_fill()
            lf = lf.with_columns(episode_id=pl.col("user_id") + "/" + started)
        order = ["session_seq"] if "session_seq" in present else ["_time"] + (["slot"] if "slot" in present else [])
        return lf.sort("episode_id", *order, "source_row", nulls_last=True)

    @staticmethod
    def _steps(lf: pl.LazyFrame, present: set[str]) -> pl.LazyFrame:
        """State before / after each impression from the session's rows so far; the steps columns."""
        click, cat = pl.col("_click"), pl.col("_cat")
        pad = (WINDOW - pl.min_horizontal(pl.col("_pos") + 1, WINDOW)).cast(pl.Float64)
        last_click = pl.when(click == 1).then("_row").when("_first").then(pl.col("_row") - 1).forward_fill()
        # Features after this impression (the next state), with the value each has before a session starts.
        after: list[tuple[str, pl.Expr, float]] = [
            ("mobile", pl.when("_first").then("_mobile").forward_fill().cast(pl.Float64), 0.0),  # per session
            ("impressions", (pl.col("_pos") + 1).cast(pl.Float64), 0.0),
            ("clicks", _in_session_cumsum(click).cast(pl.Float64), 0.0),
            ("recent_clicks", _window_sum(click).cast(pl.Float64), 0.0),
            ("since_click", pl.min_horizontal(pl.col("_row") - last_click, SINCE_CLICK_CAP).cast(pl.Float64), 0.0),
            ("dwell_minutes", _in_session_cumsum(pl.col("_dwell") / 60.0), 0.0),
            ("satisfaction", (_window_sum(pl.col("_engagement")) + PRIOR_ENGAGEMENT * pad) / WINDOW, PRIOR_ENGAGEMENT),
            ("converted", (_in_session_cumsum(pl.col("_buy")) > 0).cast(pl.Float64), 0.0),
            *(
                (
                    f"engaged_{c}",
                    _in_session_cumsum(click * (cat == k).cast(pl.Int64)).clip(upper_bound=ENGAGED_CLICKS),
                    0.0,
                )
                for k, c in enumerate(CATEGORIES)
            ),
            *((f"recent_{c}", _window_sum((cat == k).cast(pl.Int64)), 0.0) for k, c in enumerate(CATEGORIES)),
        ]
        names = [n for n, _, _ in after]  # the spec's state features, in order (the round-trip test checks)
        array = pl.Array(pl.Float32, len(names))
        after_cols = [e.cast(pl.Float32) for _, e, _ in after]
        initial = [after_cols[0] if n == "mobile" else pl.lit(init, pl.Float32) for n, _, init in after]
        # A row whose dwell or rating is not finite gets NaN in the features derived from them, so validation
        # rejects it and names this raw row (the state of later rows, built from cleaned values, stays finite).
        poisoned = pl.Series([[float("nan") if n in ("dwell_minutes", "satisfaction") else 0.0 for n in names]])
        lf = lf.with_columns(pl.concat_arr(after_cols).alias("_after"), pl.concat_arr(initial).alias("_initial"))
        state = pl.when("_first").then("_initial").otherwise(pl.col("_after").shift(1))
        next_state = pl.when("_bad").then(pl.lit(poisoned.cast(array))).otherwise("_after")
        if "left" in present:
            left = pl.col("_left").fill_null(False)
            terminated, truncated = left, pl.col("_last") & ~left
        else:  # a session ends when the user leaves
            terminated, truncated = pl.col("_last"), pl.lit(False)
        return lf.select(
            pl.col("episode_id"),
            (pl.col("session_seq") if "session_seq" in present else pl.col("_pos")).cast(pl.Int32).alias("step"),
            state.cast(array).alias("state"),
            pl.concat_arr(pl.col("item_id").cast(pl.Float32)).alias("action"),
            (pl.col("propensity") if "propensity" in present else pl.lit(None, pl.Float64)).alias("propensity"),
            (pl.col("_click") + pl.col("_dwell") / 60.0).alias("reward"),
            next_state.cast(array).alias("next_state"),
            terminated.alias("terminated"),
            truncated.alias("truncated"),
            pl.col("_time").alias("timestamp"),
            pl.col("source_row"),
        )
