"""The ``decision-core`` command line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from decision_core.envs.cli import evaluate_cmd, import_minari_cmd, simulate_cmd
from decision_core.errors import DecisionCoreError
from decision_core.settings import CoreSettings
from decision_core.training.cli import register as register_training_commands
from serving.cli import serve_cmd

app = typer.Typer(
    name="decision-core",
    help="Learn goal-reaching decision policies from logs; evaluate, serve and fine-tune them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()

DbOption = Annotated[
    Path | None,
    typer.Option(
        "--db",
        help="DuckDB store (default: $DECISION_CORE_DB, else store.duckdb in $DECISION_CORE_HOME or .decision_core)",
    ),
]


#: Output width where no terminal says one (rich's 80 columns would cut the numbers in tables short).
PIPED_COLUMNS = 160


def report_error(exc: Exception) -> None:
    """Print a user error on stderr (its text as written: a "[rename]" in it is not markup)."""
    console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)


def fail(exc: Exception) -> typer.Exit:
    """Print a user error and return the exit to raise (status 2 for bad input)."""
    report_error(exc)
    return typer.Exit(code=2)


def db_path(db: Path | None) -> Path:
    return db or CoreSettings().db_path


@app.command("adapters")
def adapters_cmd() -> None:
    """List the registered adapters with their domain spec summary, and the plugins that could not be used."""
    from adapters import ADAPTERS

    table = Table("version", "domain", "spec", "origin")
    table.columns.insert(0, Column("adapter", no_wrap=True))
    try:
        rejected = ADAPTERS.rejected()
        names = sorted({*ADAPTERS.names(), *rejected})
        for name in names:
            origin = ADAPTERS.origin(name) if name in ADAPTERS else "-"
            if name in rejected:
                table.add_row(name, "?", "?", f"[red]not usable: {escape(rejected[name])}[/]", origin)
                continue
            try:
                cls = ADAPTERS.get(name)
                spec = cls().spec()
                table.add_row(name, cls.version, spec.name, escape(spec.summary()), origin)
            except Exception as exc:  # a plugin's own bug must not hide the other adapters
                reason = str(exc) if isinstance(exc, DecisionCoreError) else f"{type(exc).__name__}: {exc}"
                table.add_row(name, "?", "?", f"[red]failed to load: {escape(reason)}[/]", origin)
    except DecisionCoreError as exc:
        raise fail(exc) from None
    out.print(table)
    if rejected:
        console.print(
            f"[yellow]note:[/] {len(rejected)} adapter name(s) claimed by a plugin that could not be registered; "
            "see the rows marked 'not usable'",
            highlight=False,
            soft_wrap=True,
        )


@app.command("ingest")
def ingest_cmd(
    adapter: Annotated[str, typer.Argument(help="Adapter name (see `decision-core adapters`).")],
    paths: Annotated[list[Path], typer.Argument(help="Raw log files.")],
    db: DbOption = None,
    mapping: Annotated[
        Path | None, typer.Option("--mapping", help="TOML/JSON column mapping for differently named logs.")
    ] = None,
) -> None:
    """Validate raw logs and write them into the store in one transaction (nothing is written on error)."""
    from adapters import ColumnMapping, get_adapter
    from adapters.ingest import ingest
    from decision_core.store import DecisionStore

    try:
        ad = get_adapter(adapter)
        cmap = ColumnMapping.load(mapping) if mapping else None
        spec = ad.spec()
        with DecisionStore(db_path(db)) as store, console.status("ingesting") as status:
            changes = store.spec_changes(spec)
            report = ingest(ad, paths, store, mapping=cmap, progress=lambda p: status.update(f"ingesting {p}"))
    except DecisionCoreError as exc:
        raise fail(exc) from None
    out.print(
        f"[green]ingested[/] {report.files} file(s) into domain '{report.domain}': {report.rows_read} raw rows -> "
        f"{report.steps_staged} steps, {report.steps_inserted} new, {report.steps_skipped} already stored"
    )
    if changes:
        lines = "".join(f"\n  {escape(str(c))}" for c in changes)
        models = (
            "Models trained before this ingest were built on the old values; retrain them to use the new ones."
            if any(c.affects_models for c in changes)
            else "Trained models are unaffected: only how the domain is described and evaluated changed."
        )
        console.print(
            f"[yellow]note:[/] adapter '{ad.name}' v{ad.version} updated the stored spec of domain '{spec.name}':"
            f"{lines}\n{models} (decision-core show --domain {spec.name} prints the spec now stored.)",
            highlight=False,
            soft_wrap=True,
        )


@app.command("show")
def show_cmd(
    db: DbOption = None,
    domain: Annotated[str | None, typer.Option(help="Show one domain's spec in full.")] = None,
) -> None:
    """Show what the store holds: domains, steps, episodes, propensity and reward coverage."""
    from decision_core.store import DecisionStore

    try:
        with DecisionStore(db_path(db), read_only=True) as store:
            if domain:
                out.print_json(store.spec(domain).to_json())
            table = Table("domain", "steps", "episodes", "with propensity", "with reward", "terminated", "spec")
            for name in store.domains():
                s = store.summary(name)
                table.add_row(
                    name,
                    str(s["steps"]),
                    str(s["episodes"]),
                    str(s["with_propensity"]),
                    str(s["with_reward"]),
                    str(s["terminated"]),
                    store.spec(name).summary(),
                )
    except DecisionCoreError as exc:
        raise fail(exc) from None
    out.print(table)


@app.command("quickstart")
def quickstart_cmd(
    domain: Annotated[str, typer.Option(help="Domain to train and serve.")] = "inventory",
    algo: Annotated[str, typer.Option(help="Algorithm to train.")] = "gciql",
    steps: Annotated[int, typer.Option(help="Training gradient steps.")] = 1500,
    port: Annotated[int, typer.Option(help="Port the server listens on (127.0.0.1).")] = 8000,
    episodes: Annotated[
        int,
        typer.Option(
            min=10, help="Episodes served toward a goal before fine-tuning (the guard judges no fewer than 10)."
        ),
    ] = 24,
    serve_forever: Annotated[
        bool, typer.Option("--serve-forever/--exit", help="Keep serving at the end (default) or stop.")
    ] = True,
) -> None:
    """The main job end to end on the embedded defaults: ingest the sample logs, train, evaluate, serve, act
    toward a goal, log outcomes back, fine-tune under the OPE guard, and keep serving."""
    from decision_core.quickstart import run

    try:
        run(domain=domain, algo=algo, steps=steps, port=port, episodes=episodes, serve_forever=serve_forever)
    except DecisionCoreError as exc:
        raise fail(exc) from None


app.command("simulate")(simulate_cmd)
app.command("evaluate")(evaluate_cmd)
app.command("import-minari")(import_minari_cmd)
app.command("serve")(serve_cmd)
register_training_commands(app)


def main() -> None:
    """The ``decision-core`` console script: the app, with any :class:`DecisionCoreError` a command lets escape
    printed as ``error: ...`` and exit status 2 instead of a traceback."""
    if not any(stream.isatty() for stream in (sys.stdin, sys.stdout, sys.stderr)):
        # A log or a pipe: tables at a width that keeps their numbers whole (rich assumes 80 columns there).
        os.environ.setdefault("COLUMNS", str(PIPED_COLUMNS))
    try:
        app()
    except DecisionCoreError as exc:
        report_error(exc)
        sys.exit(2)
