"""Inventory adapter: per-SKU daily replenishment records -> the inventory domain's steps.

One raw row is one SKU-day (see docs/domains/inventory.md for every column). Each SKU's run is one episode;
``period`` is the step. The state is derived from the raw fields with lazy polars over the rows sorted by
(sku, period): the open-order pipeline is rebuilt from the orders logged earlier in the run (runs start with no
open orders) and the lead time, demand features from the demand history, the service streak from the lost
sales, the weekday from the date. Episode boundaries are handled with a within-run position rather than
``over()`` windows, so everything is a handful of column-wise shifts.

Actions: for the ``inventory`` domain the logged ``order_qty`` maps to the nearest order level
(``round(order_qty / LOT)``; a quantity past the last level is rejected as outside the space); for
``inventory_continuous`` it is kept as is. The reward is minus the day's logged costs.
"""

from __future__ import annotations

import math
from typing import ClassVar

import polars as pl

from adapters.base import Adapter, RawColumn, pack_columns, sorted_by
from decision_core.envs.inventory import (
    CONTINUOUS_SPEC,
    DEMAND_WINDOW,
    IN_STOCK_DAYS,
    LOT,
    MAX_LEAD,
    SPEC,
    STREAK_CAP,
)
from decision_core.schema import DomainSpec

_F = pl.Float64()
#: The raw columns the adapter reads. The writer also logs ``on_order``, ``receipts``, ``refused`` and ``sales``
#: (see docs/domains/inventory.md); they are informational and not parsed.
COLUMNS: dict[str, RawColumn] = {
    "sku": RawColumn(pl.String(), description="SKU (one replenishment run = one episode)"),
    "period": RawColumn(pl.Int32(), description="day of the run, 0-based (the step)"),
    "date": RawColumn(pl.Date(), description="calendar date of the day"),
    "decided_at": RawColumn(pl.Datetime("us"), required=False, description="when the order was placed"),
    "lead_time_days": RawColumn(pl.Int32(), description=f"days from order to receipt (1..{MAX_LEAD})"),
    "capacity": RawColumn(_F, description="storage capacity in units"),
    "base_forecast": RawColumn(_F, description="planning system's baseline daily demand"),
    "on_hand": RawColumn(_F, description="stock at decision time, after today's receipt"),
    "order_qty": RawColumn(_F, description="units ordered today (the action)"),
    "demand": RawColumn(_F, description="customer demand today"),
    "lost_sales": RawColumn(_F, description="demand not served today"),
    "closing_stock": RawColumn(_F, description="stock at the end of the day"),
    "holding_cost": RawColumn(_F, description="cost of holding the closing stock"),
    "stockout_cost": RawColumn(_F, description="cost of lost sales"),
    "ordering_cost": RawColumn(_F, description="fixed fee of today's order"),
    "refusal_cost": RawColumn(_F, description="fee for today's refused units"),
    "propensity": RawColumn(_F, required=False, description="probability (density) of the order"),
    "run_closed": RawColumn(pl.Boolean(), required=False, description="the run ended here by design"),
}


class InventoryAdapter(Adapter):
    """Per-SKU daily records -> ``inventory`` steps (discrete order levels)."""

    name: ClassVar[str] = "inventory"
    version: ClassVar[str] = "1.1"
    columns: ClassVar[dict[str, RawColumn]] = COLUMNS
    episode_columns: ClassVar[tuple[str, ...]] = ("sku",)
    continuous: ClassVar[bool] = False

    def spec(self) -> DomainSpec:
        return CONTINUOUS_SPEC if self.continuous else SPEC

    def transform(self, raw: pl.LazyFrame) -> pl.LazyFrame:
        names = raw.collect_schema().names()
        i = pl.int_range(pl.len(), dtype=pl.Int64)
        run = pl.col("sku").rle_id()
        # Records are usually exported SKU by SKU in period order; sorting is only done when they are not.
        keys = raw.select("sku", "period").collect()
        ordered = raw if sorted_by(keys, ["sku", "period"]) else raw.sort("sku", "period", nulls_last=True)
        lf = ordered.with_columns(_i=i, _first=(run != run.shift(1)).fill_null(True))
        lf = lf.with_columns(_pos=pl.col("_i") - pl.when("_first").then("_i").forward_fill())
        pos, lead = pl.col("_pos"), pl.col("lead_time_days")

        def lag(name: str, j: int) -> pl.Expr:
            """Value ``j`` rows back in the same run (null before the run's first row)."""
            return pl.when(pos >= j).then(pl.col(name).shift(j)) if j else pl.col(name)

        lf = lf.with_columns(
            [lag("order_qty", j).fill_null(0.0).alias(f"_q{j}") for j in range(1, MAX_LEAD)]
            + [lag("demand", j).fill_null(0.0).alias(f"_d{j}") for j in range(1, DEMAND_WINDOW)]
        ).with_columns(_q0=pl.col("order_qty"), _d0=pl.col("demand"))

        def order_placed(back: pl.Expr, earliest: int = 0) -> pl.Expr:
            """The order placed ``back`` (earliest..MAX_LEAD-1) days before this row, else 0 (also before the
            run began: runs start with no open orders)."""
            out = pl.lit(0.0)
            for j in reversed(range(earliest, MAX_LEAD)):
                out = pl.when(back == j).then(pl.col(f"_q{j}")).otherwise(out)
            return out

        stockout = pl.col("lost_sales") > 0
        last_out = pl.when(stockout).then("_i").when(pos == 0).then(pl.col("_i") - 1).forward_fill()
        nxt_same = (pl.col("_pos").shift(-1) == pos + 1).fill_null(False)
        # Open orders due in k days: placed lead - k days ago (before today's order: at least 1 day ago),
        # lead - 1 - k days ago (after it: today's order included).
        slots = range(1, MAX_LEAD)
        lf = lf.with_columns(
            [order_placed(lead - k, earliest=1).alias(f"_pre{k}") for k in slots]
            + [order_placed(lead - 1 - k).alias(f"_post{k}") for k in slots],
            _avg=pl.sum_horizontal([f"_d{j}" for j in range(DEMAND_WINDOW)])
            / pl.min_horizontal(pos + 1, DEMAND_WINDOW),
            _streak=pl.min_horizontal(pl.col("_i") - last_out, STREAK_CAP).cast(_F),
            _out=stockout.cast(_F),
            _next_on_hand=pl.when(nxt_same)
            .then(pl.col("on_hand").shift(-1))
            .otherwise(pl.min_horizontal(pl.col("closing_stock") + order_placed(lead - 1), "capacity")),
            _angle=(pl.col("date").dt.weekday().cast(_F) - 1.0) * (2 * math.pi / 7),
            _next_angle=(pl.col("date").dt.weekday() % 7).cast(_F) * (2 * math.pi / 7),
            _last=~nxt_same,
        )
        forecast = pl.col("base_forecast")
        lead_f = pl.when((lead >= 1) & (lead <= MAX_LEAD)).then(lead.cast(_F)).otherwise(float("nan"))

        def prev(name: str, initial: pl.Expr | float) -> pl.Expr:
            return pl.coalesce(lag(name, 1), initial)

        def features(pre: bool) -> list[pl.Expr]:
            """The state before (``pre``) or after this row's day, in the spec's feature order."""
            on_hand = pl.col("on_hand" if pre else "_next_on_hand")
            pipe = [pl.col(f"_pre{k}" if pre else f"_post{k}") for k in slots]
            streak = prev("_streak", 0.0) if pre else pl.col("_streak")
            # The next day's angle from its own weekday (not this angle + 2*pi/7), so a row's next state equals the
            # following row's state bit for bit and the store keeps only the episode's last next state.
            angle = pl.col("_angle") if pre else pl.col("_next_angle")
            return [
                on_hand,
                *pipe,
                on_hand + pl.sum_horizontal(pipe),
                lead_f,
                pl.col("capacity"),
                forecast,
                prev("_avg", forecast) if pre else pl.col("_avg"),
                prev("demand", forecast) if pre else pl.col("demand"),
                angle.sin(),
                angle.cos(),
                prev("_out", 0.0) if pre else pl.col("_out"),
                streak,
                (streak >= IN_STOCK_DAYS).cast(_F),
            ]

        qty = pl.col("order_qty")
        closed = pl.col("run_closed").fill_null(False) if "run_closed" in names else pl.lit(False)
        timestamp = pl.col("date").cast(pl.Datetime("us"))
        if "decided_at" in names:
            timestamp = pl.coalesce("decided_at", timestamp)
        cost = pl.sum_horizontal("holding_cost", "stockout_cost", "ordering_cost", "refusal_cost")
        n_state = len(SPEC.state)
        flat = lf.select(
            pl.col("sku").alias("episode_id"),
            pl.col("period").alias("step"),
            *[f.cast(pl.Float32).alias(f"_s{j}") for j, f in enumerate(features(pre=True))],
            *[f.cast(pl.Float32).alias(f"_n{j}") for j, f in enumerate(features(pre=False))],
            (qty if self.continuous else _level(qty)).cast(pl.Float32).alias("_a"),
            (pl.col("propensity") if "propensity" in names else pl.lit(None, _F)).alias("propensity"),
            (-cost).alias("reward"),
            (closed & pl.col("_last")).alias("terminated"),
            (~closed & pl.col("_last")).alias("truncated"),
            timestamp.alias("timestamp"),
            pl.col("source_row"),
        ).collect()
        # Packing the feature columns into fixed-size arrays is a strided copy in numpy; much faster than
        # concatenating them expression by expression.
        return flat.select(
            "episode_id",
            "step",
            pl.Series("state", pack_columns(flat, [f"_s{j}" for j in range(n_state)])),
            pl.Series("action", pack_columns(flat, ["_a"])),
            "propensity",
            "reward",
            pl.Series("next_state", pack_columns(flat, [f"_n{j}" for j in range(n_state)])),
            "terminated",
            "truncated",
            "timestamp",
            "source_row",
        ).lazy()


def _level(qty: pl.Expr) -> pl.Expr:
    """Nearest order level; a negative quantity maps to -1 so that ingest rejects it as outside the space."""
    return pl.when(qty < 0).then(-1.0).otherwise((qty / LOT).round(0))


class InventoryContinuousAdapter(InventoryAdapter):
    """The same records -> ``inventory_continuous`` steps (order quantity kept in units)."""

    name: ClassVar[str] = "inventory_continuous"
    continuous: ClassVar[bool] = True
