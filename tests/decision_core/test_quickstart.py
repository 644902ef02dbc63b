"""The quickstart refuses a taken port before doing any work."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from decision_core.cli import app
from decision_core.errors import DecisionCoreError
from decision_core.quickstart import check_port_free


@pytest.fixture
def busy_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_taken_port_is_named_with_what_to_do(busy_port: int) -> None:
    with pytest.raises(DecisionCoreError, match=rf"port {busy_port} on 127.0.0.1 is in use .*pass --port N"):
        check_port_free(busy_port)


def test_a_free_port_passes() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    check_port_free(port)


def test_quickstart_stops_before_any_work_when_its_port_is_taken(
    busy_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DECISION_CORE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["quickstart", "--port", str(busy_port), "--exit"])
    assert result.exit_code != 0
    assert f"port {busy_port} on 127.0.0.1 is in use" in result.output
    assert not (tmp_path / "home").exists()  # nothing ingested, trained or tracked
