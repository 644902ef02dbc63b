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

from typing import ClassVar

import polars as pl

from adapters.base import Adapter, RawColumn
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
COLUMNS: dict[str, RawColumn] = {
    "sku": RawColumn(pl.String(), description="SKU (one replenishment run = one episode)"),
    "period": RawColumn(pl.Int32(), description="day of the run, 0-based (the step)"),
    "date": RawColumn(pl.Date(), description="calendar date of the day"),
    "decided_at": RawColumn(pl.Datetime("us"), required=False, description="when the order was placed"),
    "lead_time_days": RawColumn(pl.Int32(), description=f"days from order to receipt (1..{MAX_LEAD})"),
    "capacity": RawColumn(_F, description="storage capacity in units"),
    "base_forecast": RawColumn(_F, description="planning system's baseline daily demand"),
    "on_hand": RawColumn(_F, description="stock at decision time, after today's receipt"),
    "on_order": RawColumn(_F, required=False, description="open order quantity (informational)"),
    "receipts": RawColumn(_F, required=False, description="units received today (informational)"),
    "refused": RawColumn(_F, required=False, description="units refused for lack of space (informational)"),
    "order_qty": RawColumn(_F, description="units ordered today (the action)"),
    "demand": RawColumn(_F, description="customer demand today"),
    "sales": RawColumn(_F, required=False, description="units sold today (informational)"),
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
    version: ClassVar[str] = "1.0"
    columns: ClassVar[dict[str, RawColumn]] = COLUMNS
    continuous: ClassVar[bool] = False

    def spec(self) -> DomainSpec:
        return CONTINUOUS_SPEC if self.continuous else SPEC

    def transform(self, raw: pl.LazyFrame) -> pl.LazyFrame:
        names = raw.collect_schema().names()
        i = pl.int_range(pl.len(), dtype=pl.Int64)
        first = pl.col("sku") != pl.col("sku").shift(1)
        lf = raw.sort("sku", "period").with_columns(
            _i=i,
            _start=pl.when(first.fill_null(True)).then(i).forward_fill(),
            _lead=pl.col("lead_time_days"),
        )
        lf = lf.with_columns(_pos=pl.col("_i") - pl.col("_start"))
        pos, lead = pl.col("_pos"), pl.col("_lead")

        def lag(name: str, j: int) -> pl.Expr:
            """Value ``j`` rows back in the same run (null before the run's first row)."""
            return pl.when(pos >= j).then(pl.col(name).shift(j)) if j else pl.col(name)

        def order_placed(back: pl.Expr, earliest: int = 0) -> pl.Expr:
            """The order placed ``back`` (earliest..MAX_LEAD-1) days before this row, else 0 (also before the
            run began: runs start with no open orders)."""
            out = pl.lit(0.0)
            for j in reversed(range(earliest, MAX_LEAD)):
                out = pl.when(back == j).then(lag("order_qty", j).fill_null(0.0)).otherwise(out)
            return out

        # Open orders due in k days: placed lead - k days ago (before today's order: at least 1 day ago),
        # lead - 1 - k days ago (after it: today's order included).
        slots = range(1, MAX_LEAD)
        lf = lf.with_columns(
            [order_placed(lead - k, earliest=1).alias(f"_pre{k}") for k in slots]
            + [order_placed(lead - 1 - k).alias(f"_post{k}") for k in slots]
            + [order_placed(lead - 1).alias("_arrival")]
        )
        demand_sum = pl.sum_horizontal([lag("demand", j).fill_null(0.0) for j in range(DEMAND_WINDOW)])
        stockout = pl.col("lost_sales") > 0
        last_out = pl.when(stockout).then(pl.col("_i")).when(pos == 0).then(pl.col("_i") - 1).forward_fill()
        nxt_same = pl.col("_pos").shift(-1) == pos + 1
        lf = lf.with_columns(
            _avg_post=demand_sum / pl.min_horizontal(pos + 1, DEMAND_WINDOW),
            _streak_post=pl.min_horizontal(pl.col("_i") - last_out, STREAK_CAP).cast(_F),
            _out_post=stockout.cast(_F),
            _onhand_post=pl.when(nxt_same)
            .then(pl.col("on_hand").shift(-1))
            .otherwise(pl.min_horizontal(pl.col("closing_stock") + pl.col("_arrival"), pl.col("capacity"))),
            _wd=pl.col("date").dt.weekday().cast(_F) - 1.0,
        )
        forecast = pl.col("base_forecast")
        valid_lead = (lead >= 1) & (lead <= MAX_LEAD)
        lead_f = pl.when(valid_lead).then(lead.cast(_F)).otherwise(float("nan"))

        def state(pre: bool) -> pl.Expr:
            def prev(name: str, initial: pl.Expr | float) -> pl.Expr:
                return pl.coalesce(lag(name, 1), pl.lit(initial) if isinstance(initial, float) else initial)

            on_hand = pl.col("on_hand") if pre else pl.col("_onhand_post")
            pipe = [pl.col(f"_pre{k}" if pre else f"_post{k}") for k in slots]
            streak = prev("_streak_post", 0.0) if pre else pl.col("_streak_post")
            weekday = pl.col("_wd") if pre else (pl.col("_wd") + 1.0) % 7.0
            angle = weekday * (2 * 3.141592653589793 / 7.0)
            features = [
                on_hand,
                *pipe,
                on_hand + pl.sum_horizontal(pipe),
                lead_f,
                pl.col("capacity"),
                forecast,
                prev("_avg_post", forecast) if pre else pl.col("_avg_post"),
                prev("demand", forecast) if pre else pl.col("demand"),
                angle.sin(),
                angle.cos(),
                prev("_out_post", 0.0) if pre else pl.col("_out_post"),
                streak,
                (streak >= IN_STOCK_DAYS).cast(_F),
            ]
            return pl.concat_arr([f.cast(pl.Float32) for f in features])

        qty = pl.col("order_qty")
        action = qty if self.continuous else (qty / LOT).round(0)
        closed = pl.col("run_closed").fill_null(False) if "run_closed" in names else pl.lit(False)
        last = ~nxt_same.fill_null(False)
        timestamp = (
            pl.coalesce(pl.col("decided_at"), pl.col("date").cast(pl.Datetime("us")))
            if "decided_at" in names
            else pl.col("date").cast(pl.Datetime("us"))
        )
        cost = pl.sum_horizontal("holding_cost", "stockout_cost", "ordering_cost", "refusal_cost")
        return lf.select(
            pl.col("sku").alias("episode_id"),
            pl.col("period").alias("step"),
            state(pre=True).alias("state"),
            pl.concat_arr(action.cast(pl.Float32)).alias("action"),
            (pl.col("propensity") if "propensity" in names else pl.lit(None, _F)).alias("propensity"),
            (-cost).alias("reward"),
            state(pre=False).alias("next_state"),
            (closed & last).alias("terminated"),
            (~closed & last).alias("truncated"),
            timestamp.alias("timestamp"),
            pl.col("source_row"),
        )


class InventoryContinuousAdapter(InventoryAdapter):
    """The same records -> ``inventory_continuous`` steps (order quantity kept in units)."""

    name: ClassVar[str] = "inventory_continuous"
    continuous: ClassVar[bool] = True
