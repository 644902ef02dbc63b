"""Settings of one serving deployment, read from the environment (prefix ``DECISION_CORE_SERVE_``).

Built inside :func:`serving.app.create_app` (never at import time), so every app — and every test — gets its own.
The data directory, store and MLflow tracking URI come from :class:`~decision_core.settings.CoreSettings`
(``DECISION_CORE_HOME``, ``DECISION_CORE_DB``, ``MLFLOW_TRACKING_URI``) unless set here.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from decision_core.settings import CoreSettings

#: ``finetune_estimator`` value that judges with the domain's own estimator (``serving.finetune.guard_estimator``).
AUTO_ESTIMATOR = "auto"
_NAME_AT_ALIAS = re.compile(r"^[A-Za-z0-9_.-]+@[A-Za-z0-9_-]+$")


def model_uri(model: str) -> str:
    """``name@alias`` -> ``models:/name@alias``; a directory, ``models:/``, ``runs:/`` URI is kept as is."""
    if _NAME_AT_ALIAS.match(model) and not Path(model).exists():
        return f"models:/{model}"
    return model


class ServingSettings(BaseSettings):
    """One deployment: which model, where decisions go, who may call what, how it explores and fine-tunes."""

    model_config = SettingsConfigDict(env_prefix="DECISION_CORE_SERVE_", extra="ignore")

    model: str = Field(
        default="",
        description="Model to serve: a saved agent directory, models:/name@alias, models:/name/version, runs:/... "
        "or name@alias.",
    )
    home: Path | None = Field(default=None, description="Data directory; default $DECISION_CORE_HOME.")
    db: Path | None = Field(default=None, description="DuckDB store; default the core settings' store.")
    tracking_uri: str | None = Field(default=None, description="MLflow tracking URI; default the core settings'.")

    # -- access ---------------------------------------------------------------------------------------------
    api_keys: str = Field(
        default="",
        description="Comma-separated API keys accepted in the X-API-Key header. With none, `decision-core serve` "
        "generates one once into <home>/serving/api_key and accepts it; an app built with create_app and no key "
        "answers 401 on every guarded route. Set auth_disabled to open them on a trusted network.",
    )
    auth_disabled: bool = Field(default=False, description="Open every route without a key (trusted networks only).")
    protect_act: bool = Field(default=False, description="Require a key for /v1/act and /v1/act:batch too.")

    # -- decisions ------------------------------------------------------------------------------------------
    epsilon: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Deployment-wide epsilon-greedy exploration (requests may override). Exploration keeps the "
        "served traffic usable for off-policy evaluation of the next model.",
    )
    temperature: float | None = Field(
        default=None, gt=0.0, description="Softmax temperature of the served policy; None = greedy + epsilon."
    )
    max_batch: int = Field(default=4096, ge=1, description="Most decisions one /v1/act:batch call may ask for.")
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted, in bytes; a larger one is answered 413 without being read (by "
        "its Content-Length, or as soon as a body sent without one passes the limit). The default takes a full "
        "/v1/act:batch of max_batch recommender decisions with action masks (~10 MB).",
    )
    inference_threads: int = Field(default=1, ge=1, description="torch threads of the inference worker.")
    seed: int | None = Field(default=None, description="Seed of exploration draws; None = from the OS.")
    switch_interval_s: float | None = Field(
        default=0.0005,
        gt=0.0,
        le=0.1,
        description="Interpreter thread switch interval (sys.setswitchinterval) while serving; None keeps Python's "
        "5 ms. Shorter hands the GIL back to the event loop sooner when the writer or inference thread holds it "
        "(p99 at one client: ~1.6 ms -> ~1 ms in bench_serving).",
    )
    gc_freeze: bool = Field(
        default=True,
        description="Move everything loaded at startup out of the garbage collector's reach (gc.freeze), so full "
        "collections do not stall requests.",
    )

    # -- feedback writer --------------------------------------------------------------------------------------
    writer_queue_max: int = Field(default=200_000, ge=16, description="Pending writer items before 503s.")
    writer_group_max: int = Field(default=8192, ge=1, description="Most queued items committed in one group.")
    decision_cache: int = Field(
        default=1_000_000, ge=1024, description="Recent decisions kept in memory to join feedback without a query."
    )
    episode_memory: int = Field(
        default=100_000,
        ge=1,
        description="How many recently served episodes the server remembers across restarts: in domains that "
        "allow each action once per episode, their actions (masked out of the episode's later requests); in every "
        "domain, whether they terminated (a later request of a terminated episode is refused).",
    )

    # -- fine-tuning ------------------------------------------------------------------------------------------
    finetune_every: int = Field(
        default=0, ge=0, description="Start a fine-tune after this many new feedback steps (0: only on request)."
    )
    finetune_steps: int = Field(default=500, ge=1, description="Gradient steps of one fine-tune.")
    finetune_estimator: str = Field(
        default=AUTO_ESTIMATOR,
        description="OPE estimator that guards promotion; auto: the domain spec's ope_estimator where the data "
        "supports it, else snips (fqe without propensities).",
    )
    finetune_model_steps: int = Field(
        default=6000, ge=1, description="Gradient steps of the dynamics model when the guard judges with mb."
    )
    finetune_model_rollouts: Literal["every", "one"] = Field(
        default="every",
        description="With mb: every (each served episode rolled out in every ensemble member; the interval takes "
        "in the members' disagreement) or one (one member per rollout: stops more worse candidates where the "
        "members disagree, on an interval that leaves that disagreement out; docs/ope.md).",
    )
    finetune_confidence: float = Field(default=0.9, gt=0.0, lt=1.0, description="Confidence of the OPE interval.")
    finetune_min_episodes: int = Field(
        default=10,
        ge=1,
        description="Served episodes with new feedback needed before a fine-tune starts. A fine-tune also waits for "
        "finetune_min_ess episodes, since an estimate never rests on more effective episodes than there are "
        "episodes (finetune_needed_episodes).",
    )
    finetune_min_ess: float = Field(
        default=10.0,
        ge=0.0,
        description="Smallest effective sample size of the candidate's OPE estimate on the new data for the guard "
        "to judge it; below it the candidate is rejected as not evaluable (as `select --min-ess`; 0: always judge).",
    )
    finetune_timeout_s: float = Field(default=3600.0, gt=0.0, description="A fine-tune running longer is stopped.")
    hooks: str = Field(
        default="", description="Comma-separated dotted paths of hook plugins to register (besides entry points)."
    )

    @field_validator("model")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.strip()

    @model_validator(mode="after")
    def _check_estimator(self) -> ServingSettings:
        from decision_core.schema import OPE_ESTIMATORS

        if self.finetune_estimator != AUTO_ESTIMATOR and self.finetune_estimator not in OPE_ESTIMATORS:
            raise ValueError(
                f"finetune_estimator '{self.finetune_estimator}' is not an OPE estimator; choose auto or one of "
                f"{', '.join(OPE_ESTIMATORS)}"
            )
        return self

    # -- derived --------------------------------------------------------------------------------------------
    @property
    def core(self) -> CoreSettings:
        """The core settings with this deployment's overrides applied."""
        overrides: dict[str, object] = {}
        if self.home is not None:
            overrides["home"] = self.home
        if self.db is not None:
            overrides["db"] = self.db
        if self.tracking_uri is not None:
            overrides["tracking_uri"] = self.tracking_uri
        return CoreSettings(**overrides)  # type: ignore[arg-type]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.api_keys.split(",") if k.strip())

    @property
    def hook_paths(self) -> tuple[str, ...]:
        return tuple(h.strip() for h in self.hooks.split(",") if h.strip())

    @property
    def finetune_needed_episodes(self) -> int:
        """Served episodes with new feedback a fine-tune waits for: ``finetune_min_episodes``, and no fewer than
        ``finetune_min_ess`` (an OPE estimate's effective sample size is at most its number of episodes, exactly
        that for ``mb`` and ``fqe``: with fewer the guard could only call the candidate not evaluable)."""
        return max(self.finetune_min_episodes, math.ceil(self.finetune_min_ess))

    @property
    def uri(self) -> str:
        return model_uri(self.model)

    @property
    def work_dir(self) -> Path:
        """Where fine-tune jobs, snapshots and candidate agents live."""
        return (self.core.home / "serving").resolve()
