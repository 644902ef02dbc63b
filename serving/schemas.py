"""Request and response bodies of the HTTP API (separate models for input and output).

Request models forbid unknown fields and non-finite numbers, and are strict: a number or boolean sent as a string
(``"12"``, ``"yes"``), a boolean where a number belongs or a number where a boolean belongs is refused (422 naming
the field), never coerced, since it is a client bug. Checks that need the domain spec (which features exist, which
are outcomes, whether a reward is needed) happen in :mod:`serving.policy` and :mod:`serving.app` and name the field
at fault.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Name = Annotated[str, Field(min_length=1, max_length=128)]
Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:/@+-]+$")]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Features = Annotated[dict[Name, FiniteFloat], Field(max_length=4096)]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class ExplorationIn(_Input):
    """Exploration of this decision; omitted fields take the deployment's defaults."""

    epsilon: float | None = Field(default=None, ge=0.0, le=1.0, description="Epsilon-greedy probability.")
    temperature: float | None = Field(
        default=None, gt=0.0, le=1e6, description="Softmax temperature (discrete) or std scale (continuous)."
    )
    greedy: bool = Field(default=False, description="Serve the deterministic greedy action (ignores the rest).")


class ActRequest(_Input):
    """One decision: the state as named features and what to aim for."""

    state: Features = Field(description="Every state feature of the domain, by name.")
    goal: Features | None = Field(
        default=None,
        description="Target values of any subset of the domain's outcome features. Without goal and task (or with "
        "an empty goal) a goal-conditioned model acts as the logged behaviour did: its policy for no goal.",
    )
    task: Name | None = Field(
        default=None,
        description="A named goal of the domain (its spec's goals), or 'reward' for a reward-task model.",
    )
    action_mask: Annotated[list[bool], Field(max_length=4096)] | None = Field(
        default=None, description="Available actions (discrete, one flag per action label); default all."
    )
    exploration: ExplorationIn | None = None
    request_id: Identifier | None = Field(default=None, description="Caller's id, stored with the decision.")
    episode_id: Identifier | None = Field(
        default=None,
        description="Groups consecutive decisions into one episode of the steps table; default: the decision is "
        "an episode of its own.",
    )
    step: int | None = Field(default=None, ge=0, le=2**31 - 1, description="Caller's step number (stored).")


class ActBatchRequest(_Input):
    items: Annotated[list[ActRequest], Field(min_length=1, max_length=100_000)]


class ModelInfo(BaseModel):
    name: str
    version: str


class ActionOut(BaseModel):
    index: int | None = Field(default=None, description="Discrete: the action's index.")
    label: str | None = Field(default=None, description="Discrete: the action's label.")
    values: dict[str, float] | None = Field(default=None, description="Continuous: the action vector by name.")


class Decision(BaseModel):
    decision_id: str
    request_id: str | None = None
    episode_id: str
    step: int | None = None
    action: ActionOut
    propensity: float = Field(
        description="Probability (discrete) or density (continuous) of this action under the served, exploring policy."
    )
    model: ModelInfo


class ActBatchResponse(BaseModel):
    decisions: list[Decision]


class FeedbackRequest(_Input):
    """What happened after a decision: the observed next state, and whether the episode ended."""

    decision_id: Identifier
    next_state: Features = Field(description="Every state feature observed after the action, by name.")
    reward: FiniteFloat | None = Field(
        default=None,
        description="The reward observed for this step. Required where the domain's spec reward is 'logged' (training "
        "reads it); elsewhere optional (the spec's reward expression is computed from the states).",
    )
    terminated: bool = Field(
        default=False,
        description="The task truly ended (no value beyond this step): the episode takes no later decisions.",
    )
    truncated: bool = Field(
        default=False,
        description="The episode was cut (time limit, session end); a later decision of the same episode continues it.",
    )


class FeedbackResponse(BaseModel):
    decision_id: str
    status: Literal["stored", "already_stored"]
    episode_id: str = Field(description="Episode id of the stored step in the steps table.")
    step: int = Field(description="Step number of the stored row within its episode.")


class CandidateOut(BaseModel):
    version: str
    status: Literal["champion", "candidate", "rejected", "retired"]
    source: str
    reason: str | None = None
    created_at: str
    metrics: dict[str, float] = Field(default_factory=dict)


class ModelsResponse(BaseModel):
    domain: str
    champion: ModelInfo
    algorithm: str
    goal_conditioned: bool
    models: list[CandidateOut]
    finetune_running: bool


class PromoteResponse(BaseModel):
    champion: ModelInfo
    previous: ModelInfo | None


class FinetuneRequest(_Input):
    steps: int | None = Field(default=None, ge=1, le=1_000_000, description="Gradient steps (default: settings).")


class FinetuneResponse(BaseModel):
    run: str
    status: Literal["started"]
    new_feedback: int


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    model: ModelInfo
    writer_alive: bool
    pending_writes: int
