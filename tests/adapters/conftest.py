"""A small adapter over a made-up 'thermostat' log, used to test the generic ingest rules."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from adapters.base import Adapter, RawColumn
from decision_core.schema import DiscreteActions, DomainSpec, Feature, OutcomeFeature

HEADER = "room,t,temp,setting,p,done,ts\n"


class ThermostatAdapter(Adapter):
    """Raw rows: one per (room, t); state = [temp], action = heater setting 0..2."""

    name = "thermostat"
    version = "1.0"
    columns = {
        "room": RawColumn(pl.String),
        "t": RawColumn(pl.Int32),
        "temp": RawColumn(pl.Float32),
        "setting": RawColumn(pl.Int32),
        "p": RawColumn(pl.Float64, required=False),
        "done": RawColumn(pl.Boolean),
        "ts": RawColumn(pl.Datetime("us"), required=False),
    }

    def spec(self) -> DomainSpec:
        return DomainSpec(
            name="thermostat",
            version="1",
            state=(Feature("temp", unit="C"),),
            outcomes=(OutcomeFeature("temp", tolerance=0.5),),
            actions=DiscreteActions(labels=("off", "low", "high")),
        )

    def transform(self, raw: pl.LazyFrame) -> pl.LazyFrame:
        nxt = pl.col("temp").shift(-1).over("room", order_by="t")
        return raw.sort("room", "t").select(
            pl.col("room").alias("episode_id"),
            pl.col("t").alias("step"),
            pl.concat_arr(pl.col("temp")).alias("state"),
            pl.concat_arr(pl.col("setting").cast(pl.Float32)).alias("action"),
            pl.col("p").alias("propensity")
            if "p" in raw.collect_schema().names()
            else pl.lit(None).alias("propensity"),
            pl.lit(None, pl.Float64).alias("reward"),
            pl.concat_arr(pl.coalesce(nxt, pl.col("temp"))).alias("next_state"),
            pl.col("done").alias("terminated"),
            pl.lit(False).alias("truncated"),
            pl.col("ts").alias("timestamp")
            if "ts" in raw.collect_schema().names()
            else pl.lit(None).alias("timestamp"),
            pl.col("source_row"),
        )


@pytest.fixture
def thermostat() -> ThermostatAdapter:
    return ThermostatAdapter()


@pytest.fixture
def write_csv(tmp_path: Path):
    """Write a raw thermostat CSV from data lines and return its path."""

    def write(name: str, lines: list[str], header: str = HEADER) -> Path:
        path = tmp_path / name
        path.write_text(header + "\n".join(lines) + "\n")
        return path

    return write


GOOD = [
    "r1,0,18.0,2,0.6,false,2026-01-01T00:00:00",
    "r1,1,19.5,1,0.3,false,2026-01-01T00:10:00",
    "r1,2,20.0,0,0.5,true,2026-01-01T00:20:00",
    "r2,0,21.0,0,0.9,false,2026-01-01T00:00:00",
    "r2,1,20.5,0,0.9,false,2026-01-01T00:10:00",
]
