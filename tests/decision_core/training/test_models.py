"""Trained agents as MLflow pyfunc models: the signature each domain gets, and predicting through it."""

from __future__ import annotations

import warnings
from dataclasses import replace

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from decision_core.algos import create_agent
from decision_core.data import OfflineDataset
from decision_core.data.synthetic import grid_arrays
from decision_core.settings import CoreSettings
from decision_core.training.models import (
    ModelError,
    configure_tracking,
    ensure_experiment,
    log_agent_model,
    model_signature,
)

TINY = {"batch_size": 32, "hidden_dims": [16, 16]}


def _agent(algo: str, *, discrete: bool, masked: bool = False, once_per_episode: bool = False):
    ds = OfflineDataset(grid_arrays(16, 8, discrete=discrete, masked=masked, seed=0))
    spec = ds.spec
    if once_per_episode:  # availability derived from the episode, not logged: the mask is still an input
        spec = replace(spec, actions=replace(spec.actions, once_per_episode=True))
    return create_agent(algo, spec, ds.stats, config=TINY, seed=0)


def test_the_signature_names_every_column_of_the_domain() -> None:
    agent = _agent("gcbc", discrete=True, masked=True)
    signature, example = model_signature(agent)
    inputs = {c.name: c for c in signature.inputs.inputs}
    state = list(agent.spec.state_names)
    goals = [f"goal.{n}" for n in agent.spec.outcome_names]
    assert list(inputs) == [*state, *goals, "action_mask"]
    assert all(inputs[n].required for n in state) and not any(inputs[n].required for n in [*goals, "action_mask"])
    assert signature.outputs.input_names() == ["action", "action_label", "propensity"]
    assert list(example.columns) == state and len(example) == 1

    # A reward-task agent over continuous actions: no goal or mask columns; one output per action dimension.
    agent = _agent("bc", discrete=False)
    signature, _ = model_signature(agent)
    assert signature.inputs.input_names() == list(agent.spec.state_names)
    names = agent.spec.actions.names  # type: ignore[union-attr]
    assert signature.outputs.input_names() == [*(f"action.{n}" for n in names), "propensity"]


@pytest.mark.parametrize("availability", ["masked", "once_per_episode"])
def test_the_pyfunc_model_applies_the_action_mask_and_refuses_columns_outside_its_signature(
    availability: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = CoreSettings(home=tmp_path / "home", db=tmp_path / "store.duckdb")
    configure_tracking(settings)
    agent = _agent("gcbc", discrete=True, **{availability: True})
    with mlflow.start_run(experiment_id=ensure_experiment("models", settings)), warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.Pandas4Warning)  # MLflow's own, about the input example
        logged = log_agent_model(agent, registered_name=None)
    model = mlflow.pyfunc.load_model(logged.model_uri)
    assert model.metadata.signature is not None

    state = {n: [1.0, 2.0, 3.0] for n in agent.spec.state_names}
    only = [3, 0, 4]  # one action available per row: the model must take it
    masks = [[a == k for a in range(agent.spec.n_actions)] for k in only]
    out = model.predict(pd.DataFrame({**state, "goal.x": [4.0, np.nan, 0.0], "action_mask": masks}))
    assert out["action"].tolist() == only
    np.testing.assert_allclose(out["propensity"], 1.0, rtol=1e-5)
    assert out["action_label"].tolist() == [agent.spec.actions.labels[k] for k in only]  # type: ignore[union-attr]

    # Integer features are not silently converted, and a missing feature is named.
    with pytest.raises(MlflowException, match="column x"):
        model.predict(pd.DataFrame({**state, "x": [1, 2, 3]}))
    del state["y"]
    with pytest.raises(MlflowException, match="y"):
        model.predict(pd.DataFrame(state))


def test_an_unreachable_tracking_server_is_reported_at_once(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import time

    from typer.testing import CliRunner

    from decision_core.cli import app

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.perf_counter()
    with pytest.raises(ModelError, match=rf"cannot reach the MLflow tracking server at {uri} .*MLFLOW_TRACKING_URI"):
        configure_tracking(CoreSettings(home=tmp_path / "home"))
    assert time.perf_counter() - start < 5  # MLflow's own client retries for minutes
    r = CliRunner().invoke(
        app, ["select", "--domain", "chain", "--candidates", "all", "--db", str(tmp_path / "s.duckdb")]
    )
    assert r.exit_code == 2 and f"cannot reach the MLflow tracking server at {uri}" in r.output
