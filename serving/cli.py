"""``decision-core serve``: run the service with uvicorn."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)


def _api_key_file(home: Path) -> Path:
    return (home / "serving" / "api_key").resolve()


def ensure_api_key(home: Path) -> tuple[str, Path]:
    """The deployment's generated API key (made once, readable by the owner only) when none is configured."""
    path = _api_key_file(home)
    if path.exists():
        return path.read_text().strip(), path
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key, path


def serve_cmd(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="Saved agent directory, models:/name@alias, models:/name/version, runs:/... or name@alias "
            "(default $DECISION_CORE_SERVE_MODEL).",
        ),
    ] = "",
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    db: Annotated[
        Path | None, typer.Option("--db", help="DuckDB store decisions and feedback go to (default: the core store).")
    ] = None,
    finetune_every: Annotated[
        int | None, typer.Option(help="Fine-tune after this many new feedback steps (0: only on request).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve decisions over HTTP; log decisions and feedback into the store; fine-tune under an OPE guard.

    Without configured API keys (DECISION_CORE_SERVE_API_KEYS) a key is generated once and written to
    <home>/serving/api_key; guarded routes (feedback, models, fine-tune) need it in the X-API-Key header.
    """
    import uvicorn

    from decision_core.errors import DecisionCoreError
    from decision_core.store import DecisionStore
    from serving.app import create_app, load_served_model
    from serving.settings import ServingSettings

    overrides: dict[str, object] = {}
    if model:
        overrides["model"] = model
    if db is not None:
        overrides["db"] = db
    if finetune_every is not None:
        overrides["finetune_every"] = finetune_every
    settings = ServingSettings(**overrides)  # type: ignore[arg-type]
    from decision_core.cli import fail  # the app module imports this one

    if not settings.model:
        raise fail(DecisionCoreError("pass --model (or set DECISION_CORE_SERVE_MODEL)"))
    try:  # before uvicorn starts: what cannot be served is said in one line, as the other commands say it
        champion = load_served_model(settings)
        DecisionStore(settings.core.db_path).close()  # the app opens it again in its lifespan
    except DecisionCoreError as exc:
        raise fail(exc) from None
    if not settings.keys and not settings.auth_disabled:
        key, path = ensure_api_key(settings.core.home)
        settings = settings.model_copy(update={"api_keys": key})
        console.print(f"API key for guarded routes (X-API-Key): read it from {path}")
    console.print(f"serving {settings.uri} on http://{host}:{port} (store {settings.core.db_path})")
    app = create_app(settings, champion=champion)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
