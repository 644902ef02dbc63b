"""Fixtures for adapter tests: the documented example adapter (docs/examples/thermostat_adapter) and raw files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "thermostat_adapter"
sys.path.insert(0, str(EXAMPLE))

from thermostat_adapter import ThermostatAdapter  # noqa: E402

HEADER = "room,t,temp,setting,p,done,ts\n"


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
