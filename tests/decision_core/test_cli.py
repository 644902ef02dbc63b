"""The ``decision-core`` command line: user errors read as messages (exit status 2), never as tracebacks, and
what ingest changes is said."""

from __future__ import annotations

import dataclasses
import sys
import tomllib
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

import adapters
from decision_core import cli
from decision_core.errors import SpecError
from decision_core.registry import Registry, import_dotted
from decision_core.schema import OutcomeFeature

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "examples" / "thermostat_adapter"
GROUP = "decision_core_tests.cli_adapters"


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables and messages on one line each, whatever the terminal."""
    monkeypatch.setattr(cli, "out", Console(width=1000))
    monkeypatch.setattr(cli, "console", Console(stderr=True, width=1000))


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wide: None) -> Registry:
    """A fresh adapter registry the CLI uses: two built-ins, the documented thermostat adapter, and entry points
    of installed plugins (one that works, one whose name clashes, one named unlike its class, one that crashes)."""
    site = tmp_path / "site"
    site.mkdir()
    for dist, entries in (
        ("good-adapter", {"inventory_continuous": "adapters.inventory:InventoryContinuousAdapter"}),
        ("clash-adapter", {"inventory": "adapters.dialogue:DialogueAdapter"}),
        ("tickets-adapter", {"tickets": "adapters.dialogue:DialogueAdapter"}),
        ("crashing-adapter", {"crashing": "crashing_plugin:Adapter"}),
    ):
        info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = "".join(f"{name} = {target}\n" for name, target in entries.items())
        (info / "entry_points.txt").write_text(f"[{GROUP}]\n{lines}")
    (site / "crashing_plugin.py").write_text("raise RuntimeError('the plugin is broken')\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    reg: Registry = Registry("adapter", group=GROUP, validate=adapters._validate)
    reg.register("recommender", "adapters.recommender:RecommenderAdapter")
    reg.register("inventory", "adapters.inventory:InventoryAdapter")
    reg.register("thermostat", "thermostat_adapter:ThermostatAdapter")
    monkeypatch.setattr(adapters, "ADAPTERS", reg)
    return reg


def test_the_console_script_prints_an_escaping_error_as_a_message(monkeypatch: pytest.MonkeyPatch, capsys, wide):
    script = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["decision-core"]
    assert import_dotted(script) is cli.main
    failing = typer.Typer()

    @failing.command()
    def mapped() -> None:
        raise SpecError("mapping file m.toml: [rename] haeter = 'setting': no column 'haeter'")

    @failing.command()
    def other() -> None:  # a second command, so that typer keeps sub-commands
        pass

    monkeypatch.setattr(cli, "app", failing)
    monkeypatch.setattr(sys, "argv", ["decision-core", "mapped"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: mapping file m.toml: [rename] haeter = 'setting': no column 'haeter'"


def test_adapters_lists_every_usable_adapter_beside_a_plugin_that_clashes(registry: Registry):
    result = CliRunner().invoke(cli.app, ["adapters"])
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("│")}
    assert "box[1]" in rows["inventory_continuous"] and "good-adapter" in rows["inventory_continuous"]
    assert "discrete[3]" in rows["thermostat"] and "discrete" in rows["recommender"]
    assert "not usable" in rows["inventory"] and "pip uninstall clash-adapter" in rows["inventory"]
    assert "failed to load" in rows["tickets"] and "declares the name 'dialogue'" in rows["tickets"]
    assert "failed to load: RuntimeError: the plugin is broken" in rows["crashing"]
    assert "1 adapter name(s) claimed by a plugin that could not be registered" in result.stderr


def test_ingest_of_a_clashing_name_names_the_distribution(registry: Registry, tmp_path: Path):
    raw = tmp_path / "stock.csv"
    raw.write_text("sku\n")
    result = CliRunner().invoke(cli.app, ["ingest", "inventory", str(raw), "--db", str(tmp_path / "s.duckdb")])
    assert result.exit_code == 2
    assert "adapter 'inventory' cannot be used" in result.stderr and "pip uninstall clash-adapter" in result.stderr


def test_ingest_refuses_a_mapping_entry_the_adapter_would_drop(registry: Registry, tmp_path: Path):
    raw = tmp_path / "rooms.csv"
    raw.write_text("Room,time,temperature,heater,probability,done\nr1,0,18.0,2,0.6,false\nr1,1,19.0,0,0.5,true\n")
    mapping = tmp_path / "m.toml"
    mapping.write_text(
        '[rename]\nRoom = "room"\ntime = "t"\ntemperature = "temp"\nheater = "setting"\nprobability = "pp"\n'
    )
    db = tmp_path / "s.duckdb"
    result = CliRunner().invoke(cli.app, ["ingest", "thermostat", str(raw), "--db", str(db), "--mapping", str(mapping)])
    assert result.exit_code == 2
    assert (
        f"error: mapping file {mapping}: [rename] probability = 'pp': 'pp' is not a column of adapter" in result.stderr
    )
    assert "Did you mean 'p'?" in result.stderr
    mapping.write_text(mapping.read_text().replace('"pp"', '"p"'))
    result = CliRunner().invoke(cli.app, ["ingest", "thermostat", str(raw), "--db", str(db), "--mapping", str(mapping)])
    assert result.exit_code == 0, result.stderr
    assert "2 new" in result.stdout


def test_ingest_says_which_spec_fields_it_changed(registry: Registry, tmp_path: Path, monkeypatch):
    raw = tmp_path / "rooms.csv"
    raw.write_text("room,t,temp,setting,p,done\nr1,0,18.0,2,0.6,false\nr1,1,19.0,0,0.5,true\n")
    args = ["ingest", "thermostat", str(raw), "--db", str(tmp_path / "s.duckdb")]
    first = CliRunner().invoke(cli.app, args)
    assert first.exit_code == 0 and "note" not in first.stderr
    thermostat = registry.get("thermostat")
    original = thermostat.spec

    def retuned(self) -> object:
        return dataclasses.replace(original(self), outcomes=(OutcomeFeature("temp", tolerance=1.0),))

    monkeypatch.setattr(thermostat, "spec", retuned)
    again = CliRunner().invoke(cli.app, args)
    assert again.exit_code == 0, again.stderr
    assert "0 new, 2 already stored" in again.stdout
    assert "updated the stored spec of domain 'thermostat':\n  outcomes.temp.tolerance: 0.5 -> 1.0\n" in again.stderr
    assert "retrain them" in again.stderr


def test_every_command_line_the_docs_show_parses() -> None:
    """Each ``decision-core ...`` line in the README and docs names a command and options that exist, with values
    of the right kind (parsed as the shell and the command line would, without running anything)."""
    import re
    import shlex

    group = typer.main.get_command(cli.app)
    shown = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", doc.read_text(), re.S)
        for line in "".join(blocks).replace("\\\n", " ").splitlines():  # continued lines joined
            text = line.strip()
            if text.startswith("decision-core "):
                shown.append((doc.name, shlex.split(text, comments=True)[1:]))
            elif text.startswith("torchrun ") and " -m decision_core " in text:
                shown.append((doc.name, shlex.split(text.split(" -m decision_core ", 1)[1], comments=True)))
    assert len(shown) > 20
    for doc, args in shown:
        name, *rest = args
        command = group.get_command(typer.Context(group), name)  # type: ignore[attr-defined]
        assert command is not None, f"{doc}: no command '{name}'"
        try:
            command.make_context(name, rest)
        except Exception as exc:  # the command line's usage errors (typer's own click)
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            raise AssertionError(f"{doc}: decision-core {' '.join(args)}: {message}") from None


def test_tables_printed_to_a_log_keep_their_width() -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    result = subprocess.run(
        [sys.executable, "-m", "decision_core", "adapters"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) > 80
    assert "…" not in result.stdout
