"""The worked example of docs/adapters.md: installed as a real package, found through its entry point."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "thermostat_adapter"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip-install the example into its own target folder (a copy, so the build leaves the docs clean)."""
    src = tmp_path_factory.mktemp("src") / "thermostat_adapter"
    shutil.copytree(EXAMPLE, src)
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    return target


def cli(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "decision_core", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_installed_adapter_is_listed_with_its_spec(site: Path):
    result = cli(site, "adapters")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if "thermostat" in line)
    assert "thermostat-adapter" in line  # origin: the distribution's entry point
    assert "discrete[3]" in line and "temp" in line


def test_installed_adapter_ingests_through_the_cli(site: Path, tmp_path: Path):
    raw = tmp_path / "heaters.csv"
    raw.write_text("room,t,temp,setting,p,done,ts\nr1,0,18.0,2,0.6,false,\nr1,1,19.5,1,0.3,true,\n")
    db = tmp_path / "store.duckdb"
    result = cli(site, "ingest", "thermostat", str(raw), "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert "2 new" in result.stdout
    shown = cli(site, "show", "--db", str(db))
    assert "thermostat" in shown.stdout and shown.returncode == 0
    # The log docs/adapters.md shows and ships beside the package ingests as the docs say.
    shipped = EXAMPLE / "heaters.csv"
    assert shipped.read_text() in (EXAMPLE.parents[1] / "adapters.md").read_text()
    result = cli(site, "ingest", "thermostat", str(shipped), "--db", str(tmp_path / "docs.duckdb"))
    assert result.returncode == 0 and "4 new" in result.stdout, result.stderr


def test_unknown_adapter_suggests_the_closest_name(site: Path, tmp_path: Path):
    result = cli(site, "ingest", "thermostta", str(tmp_path / "x.csv"), "--db", str(tmp_path / "s.duckdb"))
    assert result.returncode == 2
    assert "Did you mean 'thermostat'?" in result.stderr
