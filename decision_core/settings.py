"""Settings shared by the CLI, training and the server, read from the environment (prefix ``DECISION_CORE_``).

Embedded defaults keep everything under one data directory (``./.decision_core``): the DuckDB store, the MLflow
sqlite tracking store and its artifacts. Setting ``MLFLOW_TRACKING_URI`` (or ``DECISION_CORE_TRACKING_URI``)
points tracking at a real MLflow server; ``DECISION_CORE_DB`` points at another store.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DECISION_CORE_", extra="ignore")

    home: Path = Field(default=Path(".decision_core"), description="Data directory for the embedded defaults.")
    db: Path | None = Field(default=None, description="DuckDB store; default <home>/store.duckdb.")
    tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; default $MLFLOW_TRACKING_URI or sqlite:///<home>/mlflow.db.",
    )
    artifact_root: Path | None = Field(default=None, description="Artifact folder of the embedded MLflow store.")

    @property
    def db_path(self) -> Path:
        return self.db or self.home / "store.duckdb"

    @property
    def mlflow_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if env:
            return env
        return f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def artifacts(self) -> Path:
        return (self.artifact_root or self.home / "mlartifacts").resolve()
