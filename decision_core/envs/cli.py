"""The ``simulate``, ``evaluate`` and ``import-minari`` commands (registered on the main ``decision-core`` app)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import Progress

from decision_core.errors import DecisionCoreError

if TYPE_CHECKING:
    from decision_core.algos.base import Agent

console = Console(stderr=True)
out = Console()


def _fail(exc: Exception) -> typer.Exit:
    """The error printed as every command prints one (see :func:`decision_core.cli.fail`)."""
    from decision_core.cli import fail  # the app module imports this one

    return fail(exc)


def simulate_cmd(
    domain: Annotated[str, typer.Argument(help="Simulator / domain name (inventory, recommender, dialogue, ...).")],
    episodes: Annotated[int, typer.Option("--episodes", "-n", help="Number of episodes to simulate.")] = 1000,
    policy: Annotated[
        str, typer.Option("--policy", help="behaviour | oracle | random | mixture (60/20/20 per episode).")
    ] = "behaviour",
    seed: Annotated[int, typer.Option("--seed", help="Seed; the same arguments reproduce the same logs.")] = 0,
    out_dir: Annotated[Path, typer.Option("--out", help="Directory the raw logs are written to.")] = Path("logs"),
    batch: Annotated[int, typer.Option("--batch", help="Episodes simulated together (vectorised).")] = 1024,
    option: Annotated[
        list[str] | None, typer.Option("--option", help="Dynamics variant option key=value (e.g. continuous=true).")
    ] = None,
) -> None:
    """Write raw logs of a domain, in the format its adapter reads, by running a policy in its simulator."""
    from decision_core.envs.simulate import MANIFEST, parse_option, simulate_logs

    try:
        options = dict(parse_option(o) for o in option or [])
        files = simulate_logs(domain, episodes, policy, seed, out_dir, batch=batch, options=options)
    except DecisionCoreError as exc:
        raise _fail(exc) from None
    out.print(
        f"[green]simulated[/] {episodes} {domain} episodes ({policy}) -> {len(files)} file(s) in {out_dir}; "
        f"command recorded in {out_dir / MANIFEST}"
    )


def load_model(model: str) -> Agent:
    """An agent from a local agent directory, or from an MLflow URI (models:/name@alias, models:/name/1, runs:/…)."""
    from decision_core.training.models import load_agent_from_uri

    agent, _ref = load_agent_from_uri(model)
    return agent


def evaluate_cmd(
    domain: Annotated[str, typer.Option("--domain", help="Simulator / domain to evaluate in.")],
    model: Annotated[
        str | None, typer.Option("--model", help="Agent directory or MLflow model URI; omit for the baselines.")
    ] = None,
    episodes: Annotated[int, typer.Option("--episodes", "-n", help="Episodes per goal and for the reward task.")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the evaluation worlds and bootstrap.")] = 0,
    explore: Annotated[
        float, typer.Option("--epsilon", help="Epsilon-greedy exploration of the model (0 = greedy).")
    ] = 0.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
    option: Annotated[
        list[str] | None, typer.Option("--option", help="Dynamics variant option key=value (e.g. continuous=true).")
    ] = None,
) -> None:
    """Goal success, steps to goal, reward-task return and normalised score, with random, behaviour and oracle
    baselines (and the model, if given) in one table."""
    from decision_core.envs import get_simulator
    from decision_core.envs.evaluate import LearnedPolicy, evaluate
    from decision_core.envs.simulate import parse_option

    try:
        options = dict(parse_option(o) for o in option or [])
        sim = get_simulator(domain)
        policy = None
        reward = None
        if model is not None:
            agent = load_model(model)
            reward = agent.task  # a reward agent's returns are scored under the task it was trained on
            exploration = None
            if explore > 0:
                from decision_core.algos.base import Exploration

                exploration = Exploration(epsilon=explore)
            policy = LearnedPolicy(agent, exploration=exploration)
        with Progress(console=console, transient=True) as progress:
            report = evaluate(
                sim,
                policy,
                name=agent.name if policy is not None else "learned",
                episodes=episodes,
                seed=seed,
                options=options,
                progress=progress,
                reward=reward,
            )
    except DecisionCoreError as exc:
        raise _fail(exc) from None
    out.print(report.table())
    out.print(report.goal_table())
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_dict(), indent=2) + "\n")


def import_minari_cmd(
    dataset: Annotated[str, typer.Argument(help="Minari dataset id (from $MINARI_DATASETS_PATH) or its directory.")],
    domain: Annotated[str | None, typer.Option("--domain", help="Domain name to store it under.")] = None,
    db: Annotated[Path | None, typer.Option("--db", help="DuckDB store (default: the configured store).")] = None,
    tolerance: Annotated[float, typer.Option("--tolerance", help="Goal tolerance of every outcome feature.")] = 0.05,
) -> None:
    """Import a local Minari dataset's episodes into the store (no download)."""
    from decision_core.envs.minari_import import import_minari
    from decision_core.settings import CoreSettings
    from decision_core.store import DecisionStore

    try:
        with DecisionStore(db or CoreSettings().db_path) as store:
            report = import_minari(dataset, store, domain=domain, tolerance=tolerance)
    except DecisionCoreError as exc:
        raise _fail(exc) from None
    out.print(
        f"[green]imported[/] {report.episodes} episodes ({report.steps_inserted} new steps of {report.steps}) "
        f"into domain '{report.domain}'"
    )
