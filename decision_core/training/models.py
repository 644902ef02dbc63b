"""Trained agents as MLflow models: logging, registration with aliases, and loading back.

A model's artifacts hold the agent directory at ``artifacts/agent/`` (``agent.json`` + ``weights.pt``) and a
pyfunc wrapper logged as code (MLflow "models from code": no pickled Python objects), so the model also works
with ``mlflow.pyfunc.load_model(uri).predict(frame)``: the frame has one column per state feature, optional
``goal.<outcome>`` columns (NaN = unspecified) and, where decisions are made under an availability mask (logged
masks, or each action once per episode), an optional ``action_mask`` column of lists of booleans; the result has
``action`` and ``action_label`` (or one ``action.<name>`` column per continuous action dimension) and
``propensity``. The model's MLflow signature spells this out per domain (:func:`model_signature`), and MLflow
enforces it: feature columns are floats (an integer column is refused by name; cast it first).

Aliases: ``candidate`` marks the newest trained model, ``champion`` the one serving uses; the first model of a
name becomes champion too, and ``decision-core select`` moves it afterwards.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from decision_core.errors import DecisionCoreError
from decision_core.settings import CoreSettings

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from decision_core.algos.base import Agent

CANDIDATE = "candidate"
CHAMPION = "champion"
MODEL_NAME = "model"
AGENT_ARTIFACT = "agent"

_MODEL_CODE = """\
# Loads a decision-core agent saved under the model's artifacts/agent/ (see decision_core.training.models).
import mlflow

from decision_core.training.models import AgentModel

mlflow.models.set_model(AgentModel())
"""


#: Model-version tag the fine-tuning guard sets: "candidate" (accepted) or "rejected"; select leaves rejected ones out.
STATUS_TAG = "decision_core.status"


class ModelError(DecisionCoreError):
    """A model URI cannot be resolved or loaded, or a registry operation failed."""


@dataclass(frozen=True)
class ModelRef:
    """Where a loaded agent came from."""

    uri: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    model_id: str | None = None

    def label(self) -> str:
        if self.name and self.version:
            return f"{self.name} v{self.version}" + (f" (@{self.alias})" if self.alias else "")
        return self.uri


# -- tracking setup -------------------------------------------------------------------------------------------------
def configure_tracking(settings: CoreSettings | None = None) -> str:
    """Point MLflow (tracking and registry) at the settings' URI; returns it."""
    import mlflow

    uri = (settings or CoreSettings()).mlflow_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    elif uri.startswith(("http://", "https://")) and uri not in _REACHED:
        _check_reachable(uri)
        _REACHED.add(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


#: Tracking servers this process has reached (checked once each).
_REACHED: set[str] = set()
#: Seconds to wait for a tracking server's health check: MLflow's own client retries for minutes before it fails.
REACH_TIMEOUT_S = 10.0


def _check_reachable(uri: str) -> None:
    """Raise :class:`ModelError` at once when no MLflow server answers at ``uri``."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=REACH_TIMEOUT_S):
            return
    except urllib.error.HTTPError:
        return  # something answers (a proxy in front of the server, say): MLflow's client reports what it says
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelError(
            f"cannot reach the MLflow tracking server at {uri} ({reason}): start it, fix MLFLOW_TRACKING_URI, or "
            "unset it to use the embedded store under DECISION_CORE_HOME"
        ) from None


def is_embedded(uri: str) -> bool:
    """Whether ``uri`` is the local sqlite/file store (whose artifacts we place in the data directory)."""
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def client(settings: CoreSettings | None = None) -> MlflowClient:
    from mlflow import MlflowClient

    uri = configure_tracking(settings)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(name: str, settings: CoreSettings | None = None) -> str:
    """The id of experiment ``name``, created if needed (with artifacts under the data directory when embedded)."""
    from mlflow.exceptions import MlflowException

    settings = settings or CoreSettings()
    c = client(settings)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if is_embedded(settings.mlflow_uri):
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        location = (settings.artifacts / safe).as_uri()
    try:
        return c.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently by another process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# -- the pyfunc wrapper ----------------------------------------------------------------------------------------------
def _pyfunc_base() -> type:
    from mlflow.pyfunc import PythonModel

    return PythonModel


class AgentModel(_pyfunc_base()):  # type: ignore[misc]
    """MLflow pyfunc model around a saved agent: predict on a frame of named state features (+ goals)."""

    def load_context(self, context: Any) -> None:
        from decision_core.algos import load_agent

        self.agent = load_agent(context.artifacts[AGENT_ARTIFACT])

    # The frame's columns are the domain's: the signature logged with the model (model_signature) describes them.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return predict_frame(self.agent, model_input)


def predict_frame(agent: Agent, frame: pd.DataFrame) -> pd.DataFrame:
    """Greedy actions (and their propensity) for each row of ``frame``; see the module docstring for columns."""
    spec = agent.spec
    missing = [n for n in spec.state_names if n not in frame.columns]
    if missing:
        raise ModelError(
            f"input frame lacks state feature column(s) {missing[:10]}; domain '{spec.name}' needs "
            f"{', '.join(spec.state_names)}"
        )
    states = frame[spec.state_names].to_numpy(dtype=np.float32, copy=True)
    goals = goal_mask = None
    goal_cols = [f"goal.{n}" for n in spec.outcome_names]
    if agent.goal_conditioned and any(c in frame.columns for c in goal_cols):
        goals = np.stack(
            [frame[c].to_numpy(np.float32) if c in frame.columns else np.full(len(frame), np.nan, np.float32)
             for c in goal_cols],
            axis=1,
        )  # fmt: skip
        goal_mask = ~np.isnan(goals)
        goals = np.where(goal_mask, goals, 0.0).astype(np.float32)
    action_mask = None
    if spec.has_action_masks and "action_mask" in frame.columns:
        action_mask = np.stack([np.asarray(m, np.bool_) for m in frame["action_mask"]])
    result = agent.act(states, goals, goal_mask, action_mask, exploration=None, rng=np.random.default_rng(0))
    out: dict[str, Any] = {}
    if spec.discrete:
        labels = spec.actions.labels  # type: ignore[union-attr]
        out["action"] = result.actions.astype(np.int64)
        out["action_label"] = [labels[i] for i in result.actions]
    else:
        for j, name in enumerate(spec.actions.names):  # type: ignore[union-attr]
            out[f"action.{name}"] = result.actions[:, j]
    out["propensity"] = result.propensities
    return pd.DataFrame(out, index=frame.index)


# -- logging and registering ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoggedModel:
    model_uri: str
    model_id: str | None
    name: str | None
    version: str | None


def log_agent_model(agent: Agent, *, registered_name: str | None) -> LoggedModel:
    """Log ``agent`` as a pyfunc model in the active run; register it under ``registered_name`` if given."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="decision-core-model-") as tmp:
        agent_dir = Path(tmp) / AGENT_ARTIFACT
        agent.save(agent_dir)
        optim = agent_dir / "optim.pt"
        if optim.exists():  # serving needs the weights only; checkpoints keep optimiser state
            optim.unlink()
        code = Path(tmp) / "agent_model.py"
        code.write_text(_MODEL_CODE)
        info = _log_model(mlflow, code, agent_dir, agent, registered_name)
    version = info.registered_model_version
    if version is not None and registered_name:
        # What the registry's pages show beside each version: its algorithm, kind and (reward models) task.
        c = mlflow.MlflowClient()
        tags = {"decision_core.algo": agent.name, "decision_core.kind": "goal" if agent.goal_conditioned else "reward"}
        if agent.task is not None:
            tags["decision_core.task"] = agent.task
        for key, value in tags.items():
            c.set_model_version_tag(registered_name, str(version), key, value)
    return LoggedModel(
        model_uri=info.model_uri,
        model_id=getattr(info, "model_id", None),
        name=registered_name,
        version=None if version is None else str(version),
    )


def model_signature(agent: Agent) -> tuple[Any, pd.DataFrame]:
    """The pyfunc model's MLflow signature for ``agent``'s domain, and a one-row input example.

    Inputs: every state feature (a required float column), each ``goal.<outcome>`` for a goal-conditioned agent and
    ``action_mask`` where decisions are made under an availability mask (both optional). Outputs: ``action`` and
    ``action_label``, or ``action.<name>`` per continuous dimension, and ``propensity``.
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema, TensorSpec

    spec = agent.spec
    inputs: list[ColSpec | TensorSpec] = [ColSpec("double", n) for n in spec.state_names]
    example: dict[str, Any] = {n: [0.0] for n in spec.state_names}
    if agent.goal_conditioned:
        inputs += [ColSpec("double", f"goal.{n}", required=False) for n in spec.outcome_names]
    if spec.has_action_masks:
        inputs.append(ColSpec(Array("boolean"), "action_mask", required=False))
    if spec.discrete:
        outputs: list[ColSpec | TensorSpec] = [ColSpec("long", "action"), ColSpec("string", "action_label")]
    else:
        outputs = [ColSpec("double", f"action.{n}") for n in spec.actions.names]  # type: ignore[union-attr]
    outputs.append(ColSpec("double", "propensity"))
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs)), pd.DataFrame(example)


def _log_model(mlflow: Any, code: Path, agent_dir: Path, agent: Agent, registered_name: str | None) -> Any:
    signature, example = model_signature(agent)
    with warnings.catch_warnings():
        # MLflow compares the example's column index with a range when it writes it, which pandas 3 deprecates;
        # the warning is MLflow's own and says nothing about the model.
        warnings.filterwarnings("ignore", message="Operation with range is deprecated", module=r"mlflow\.")
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(code),
            artifacts={AGENT_ARTIFACT: str(agent_dir)},
            pip_requirements=["decision-core", "mlflow", "torch", "numpy", "pandas"],
            registered_model_name=registered_name,
            signature=signature,
            input_example=example,
        )


def alias_version(name: str, alias: str, settings: CoreSettings | None = None) -> str | None:
    """The version ``alias`` points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client(settings).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def set_alias(name: str, alias: str, version: str, settings: CoreSettings | None = None) -> None:
    client(settings).set_registered_model_alias(name, alias, str(version))


def promote_new_version(name: str, version: str, settings: CoreSettings | None = None) -> list[str]:
    """Point ``candidate`` at ``version``, and ``champion`` too when the name has none; returns the aliases set."""
    set_alias(name, CANDIDATE, version, settings)
    aliases = [CANDIDATE]
    if alias_version(name, CHAMPION, settings) is None:
        set_alias(name, CHAMPION, version, settings)
        aliases.append(CHAMPION)
    return aliases


# -- loading ---------------------------------------------------------------------------------------------------
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def resolve(uri: str, settings: CoreSettings | None = None) -> ModelRef:
    """Registry facts of ``uri`` (name, version, run) without downloading anything."""
    from mlflow.exceptions import MlflowException

    m = _MODELS_URI.match(uri)
    if m is None:
        run = re.match(r"^runs:/([^/]+)/", uri)
        return ModelRef(uri=uri, run_id=run.group(1) if run else None)
    name, alias, version = m.group("name"), m.group("alias"), m.group("version")
    c = client(settings)
    try:
        mv = c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, version)
    except MlflowException:
        known = []
        try:
            known = [f"v{v.version}" for v in c.search_model_versions(f"name='{name}'")]
            rm = c.get_registered_model(name)
            known += [f"@{a}" for a in getattr(rm, "aliases", {}) or {}]
        except MlflowException:
            pass
        what = f"alias '{alias}'" if alias else f"version {version}"
        raise ModelError(
            f"registered model '{name}' has no {what} in {(settings or CoreSettings()).mlflow_uri}. "
            f"Known: {', '.join(known) or 'none (train one with decision-core train)'}"
        ) from None
    return ModelRef(
        uri=uri,
        name=name,
        version=str(mv.version),
        alias=alias,
        run_id=mv.run_id,
        model_id=getattr(mv, "model_id", None),
    )


def _agent_dir(root: Path) -> Path | None:
    for candidate in (root, root / "artifacts" / AGENT_ARTIFACT, root / AGENT_ARTIFACT):
        if (candidate / "agent.json").exists():
            return candidate
    return None


def load_agent_from_uri(uri: str, settings: CoreSettings | None = None) -> tuple[Agent, ModelRef]:
    """Load the agent of ``models:/name@alias``, ``models:/name/version``, ``runs:/...`` or a local directory."""
    from decision_core.algos import load_agent

    local = Path(uri)
    if "://" not in uri and local.exists():
        found = _agent_dir(local)
        if found is None:
            raise ModelError(f"{local} holds no saved agent (agent.json) nor an MLflow model with one")
        return load_agent(found), ModelRef(uri=str(local))
    if ":/" not in uri:  # neither a directory here nor a URI: not an MLflow artifact named so either
        raise ModelError(
            f"model '{uri}' is neither an agent directory (with agent.json) nor an MLflow URI "
            f"(models:/<name>@<alias>, models:/<name>/<version>, runs:/<run id>/<path>)"
        )
    ref = resolve(uri, settings)
    import mlflow
    from mlflow.exceptions import MlflowException

    configure_tracking(settings)
    with tempfile.TemporaryDirectory(prefix="decision-core-load-") as tmp:
        try:
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except (MlflowException, OSError) as exc:
            raise ModelError(f"cannot download model {uri}: {exc}") from exc
        found = _agent_dir(path)
        if found is None:
            raise ModelError(f"model {uri} has no agent under artifacts/{AGENT_ARTIFACT}/; was it logged here?")
        agent = load_agent(found)  # weights are read into memory, so the download can go
    return agent, ref


def download_dir(uri: str, dst: str | os.PathLike[str], settings: CoreSettings | None = None) -> Path:
    """Download any artifact URI into ``dst``."""
    import mlflow

    configure_tracking(settings)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
