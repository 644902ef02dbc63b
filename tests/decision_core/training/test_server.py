"""Training against a real `mlflow server` on 127.0.0.1, selected by MLFLOW_TRACKING_URI."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from decision_core.settings import CoreSettings
from decision_core.training import TrainConfig, load_agent_from_uri, train


@pytest.mark.slow
def test_training_against_a_real_server_registers_a_loadable_model(
    settings: CoreSettings, mlflow_server: str, monkeypatch: pytest.MonkeyPatch, tiny: dict
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    assert settings.mlflow_uri == mlflow_server
    result = train(TrainConfig(domain="chain", algo="bc", model_name="chain_server", **tiny), settings, progress=False)
    client = mlflow.MlflowClient(mlflow_server)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["algo"] == "bc"
    # Artifacts went through the server (proxied), not into the local data directory.
    assert not (settings.home / "mlartifacts").exists()
    assert "learning_curves.png" in {a.path for a in client.list_artifacts(result.run_id)}
    assert client.get_model_version_by_alias("chain_server", "champion").version == result.registered_version
    agent, ref = load_agent_from_uri("models:/chain_server@champion", settings)
    assert ref.run_id == result.run_id
    out = agent.act(np.array([[0.0, 0.0], [3.0, 1.0]], np.float32), rng=np.random.default_rng(0))
    assert out.actions.shape == (2,)
