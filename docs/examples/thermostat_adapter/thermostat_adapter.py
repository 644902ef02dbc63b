"""Example adapter: a building's heater log -> the common state-action-outcome schema.

Raw CSV, one row per room and 10-minute tick::

    room,t,temp,setting,p,done,ts
    r1,0,18.0,2,0.6,false,2026-01-01T00:00:00

``room`` is the episode, ``t`` the step, ``temp`` the state (and the outcome goals are stated over),
``setting`` the action (0 = off, 1 = low, 2 = high), ``p`` the logging controller's probability of that setting
(optional), ``done`` whether the room reached its target and the controller stopped, ``ts`` the time (optional).
"""

from __future__ import annotations

import polars as pl

from adapters import Adapter, RawColumn
from decision_core.schema import DiscreteActions, DomainSpec, Feature, OutcomeFeature


class ThermostatAdapter(Adapter):
    name = "thermostat"
    version = "1.0"
    episode_columns = ("room",)
    columns = {
        "room": RawColumn(pl.String, description="room id; one episode per room"),
        "t": RawColumn(pl.Int32, description="tick within the episode, from 0"),
        "temp": RawColumn(pl.Float32, description="room temperature in C"),
        "setting": RawColumn(pl.Int32, description="heater setting chosen: 0 off, 1 low, 2 high"),
        "p": RawColumn(pl.Float64, required=False, description="probability the controller gave the setting"),
        "done": RawColumn(pl.Boolean, description="the controller stopped: the room reached its target"),
        "ts": RawColumn(pl.Datetime("us"), required=False, description="time of the tick"),
    }

    def spec(self) -> DomainSpec:
        return DomainSpec(
            name="thermostat",
            version="1",
            state=(Feature("temp", unit="C", description="room temperature"),),
            outcomes=(OutcomeFeature("temp", tolerance=0.5),),
            actions=DiscreteActions(labels=("off", "low", "high")),
            reward="-abs(next.temp - 21)",
            goals={"comfortable": {"temp": 21.0}},
        )

    def transform(self, raw: pl.LazyFrame) -> pl.LazyFrame:
        present = raw.collect_schema().names()
        # The next state is the room's following tick; the last tick of a room keeps its own temperature.
        following = pl.col("temp").shift(-1).over("room", order_by="t")
        return raw.select(
            pl.col("room").alias("episode_id"),
            pl.col("t").alias("step"),
            pl.concat_arr(pl.col("temp")).alias("state"),
            pl.concat_arr(pl.col("setting").cast(pl.Float32)).alias("action"),
            (pl.col("p") if "p" in present else pl.lit(None, pl.Float64)).alias("propensity"),
            pl.lit(None, pl.Float64).alias("reward"),
            pl.concat_arr(pl.coalesce(following, pl.col("temp"))).alias("next_state"),
            pl.col("done").alias("terminated"),
            pl.lit(False).alias("truncated"),
            (pl.col("ts") if "ts" in present else pl.lit(None, pl.Datetime("us"))).alias("timestamp"),
            pl.col("source_row"),
        )
