"""``decision-core serve``: a model or store it cannot use is a one-line error (exit status 2), before uvicorn."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from decision_core import cli


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in [v for v in os.environ if v.startswith("DECISION_CORE_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("DECISION_CORE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("./nodir", "error: model './nodir' is neither an agent directory (with agent.json) nor an MLflow URI"),
        ("walk@nope", "error: registered model 'walk' has no alias 'nope'"),
        ("models:/walk/3", "error: registered model 'walk' has no version 3"),
    ],
)
def test_serve_reports_a_model_it_cannot_load_in_one_line(home: Path, model: str, message: str) -> None:
    result = CliRunner().invoke(cli.app, ["serve", "--model", model, "--port", "8106"])
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) <= 3, result.stderr
