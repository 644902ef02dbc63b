"""The ``train``, ``ope`` and ``select`` commands (registered on the main ``decision-core`` app).

Heavy imports (torch, MLflow) happen inside the commands so ``decision-core --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from decision_core.errors import DecisionCoreError

out = Console()

#: ``--refits`` of the ope and select commands.
RefitsOption = Annotated[
    int,
    typer.Option(
        min=0,
        help="Refit fqe's and mb's models on this many bootstrap resamples for intervals that include the models' "
        "own error (one more fit each); 0: episodes resampled under one model.",
    ),
]

#: ``--model-rollouts`` of the ope and select commands (checked against decision_core.ope.model.ROLLOUTS).
ModelRolloutsOption = Annotated[
    str,
    typer.Option(
        help="mb: 'every' rolls each episode out in every ensemble member and takes their disagreement into the "
        "interval; 'one' uses one member per rollout (about three times cheaper; the interval leaves it out).",
    ),
]


def _fail(exc: Exception) -> typer.Exit:
    """The error printed as every command prints one (see :func:`decision_core.cli.fail`)."""
    from decision_core.cli import fail  # the app module imports this one

    return fail(exc)


def _settings(db: Path | None) -> object:
    from decision_core.settings import CoreSettings

    return CoreSettings(db=db) if db else CoreSettings()


def train_cmd(
    domain: Annotated[
        str | None, typer.Option("--domain", help="Domain to train on (see `decision-core show`).")
    ] = None,
    algo: Annotated[
        str | None,
        typer.Option(
            "--algo", help="Algorithm: goal-conditioned gcbc, gciql, crl, hiql, qrl; reward-task iql, cql, bc."
        ),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML or JSON training config.")] = None,
    sets: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: key=value (agent.lr=1e-3).")
    ] = None,
    goal_set: Annotated[str | None, typer.Option("--goal-set", help="Evaluate on this named goal only.")] = None,
    task: Annotated[
        str | None, typer.Option("--task", help="Reward task: an expression over the features, or 'logged'.")
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Gradient steps.")] = None,
    resume: Annotated[str | None, typer.Option("--resume", help="Continue this run from its checkpoint.")] = None,
    db: Annotated[Path | None, typer.Option("--db", help="DuckDB store.")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No live progress bar.")] = False,
) -> None:
    """Train an agent on a domain's logs as an MLflow run and register the model (candidate/champion)."""
    try:
        from decision_core.algos import ALGORITHMS
        from decision_core.settings import CoreSettings
        from decision_core.training.config import build_config
        from decision_core.training.loop import config_of_run, train

        settings = CoreSettings(db=db) if db else CoreSettings()
        if resume is not None:
            base = config_of_run(resume, settings)
            flags = {"steps": steps, "goal_set": goal_set, "task": task}
            cfg = base.with_overrides({k: v for k, v in flags.items() if v is not None})
            if sets:
                cfg = build_config(sets=sets, **cfg.to_dict())
        else:
            cfg = build_config(
                file=config, sets=sets, domain=domain, algo=algo, goal_set=goal_set, task=task, steps=steps
            )
        if cfg.task is not None and ALGORITHMS.get(cfg.algo).goal_conditioned:
            raise DecisionCoreError(
                f"--task is for reward-task algorithms (iql, cql, bc); {cfg.algo} learns to reach goals, which "
                "need no reward: drop --task (and use --goal-set to evaluate on one named goal)"
            )
        result = train(cfg, settings, progress=not no_progress, resume=resume)
    except DecisionCoreError as exc:
        raise _fail(exc) from None
    if result.rank != 0:
        # A worker rank has nothing left to do or report: its shard is trained, the process group is closed
        # and rank 0 logs the run. Leave without the interpreter's teardown, where gloo's threads can abort
        # the process ("terminate called without an active exception"), which torchrun reports as a failure.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    title = f"run {result.run_id}"
    if result.kept_step is not None and result.kept_step != result.steps:
        title += f" · model: weights of step {result.kept_step} ({result.kept_by}), figures under kept/"
    from decision_core.training.select import MIN_ESS

    table = Table("metric", "value", "interval", "", title=title)
    m = result.metrics
    for key in sorted(m):
        if key.startswith(("eval/", "ope/", "kept/eval/", "kept/ope/")) and not key.endswith(("/ess", "_low", "_high")):
            low, high = m.get(f"{key}/ci_low", m.get(f"{key}_low")), m.get(f"{key}/ci_high", m.get(f"{key}_high"))
            interval = f"[{low:.4g}, {high:.4g}]" if low is not None and high is not None else ""
            ess = m.get(f"{key}/ess")
            note = (
                f"[yellow]ESS {ess:.1f} < {MIN_ESS:g}: the interval says little[/]"
                if ess is not None and ess < MIN_ESS
                else ""
            )
            table.add_row(key, f"{m[key]:.4g}", interval, note)
    out.print(table)
    registered = (
        f"registered as {result.registered_name} v{result.registered_version} ({', '.join(result.aliases)})"
        if result.registered_version
        else "not registered"
    )
    out.print(f"[green]model[/] {result.model_uri}: {registered}", soft_wrap=True)


def ope_cmd(
    domain: Annotated[str, typer.Option("--domain", help="Domain whose logs the policy is evaluated on.")],
    model: Annotated[str, typer.Option("--model", help="models:/name@alias, models:/name/N, runs:/… or a directory.")],
    estimators: Annotated[
        list[str] | None,
        typer.Option(
            "--estimator", help="Estimator(s): ips, snips, pdwis, dr, wdr, fqe, mb (default: all the data supports)."
        ),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            "--task", help="Reward task: expression or 'logged' (default: the task the model was trained on)."
        ),
    ] = None,
    goal: Annotated[
        list[str] | None, typer.Option("--goal", help="Goal feature=value (goal-conditioned models); repeat.")
    ] = None,
    goal_set: Annotated[str | None, typer.Option("--goal-set", help="A named goal of the domain.")] = None,
    epsilon: Annotated[float, typer.Option(help="Evaluate the epsilon-greedy served policy.")] = 0.0,
    temperature: Annotated[float | None, typer.Option(help="Evaluate the softmax policy at this temperature.")] = None,
    gamma: Annotated[float, typer.Option(help="Discount of the evaluated return.")] = 1.0,
    episodes: Annotated[int, typer.Option(help="Use at most this many logged episodes.")] = 5000,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 500,
    confidence: Annotated[float, typer.Option(help="Confidence level of the intervals.")] = 0.9,
    fqe_steps: Annotated[int, typer.Option(help="Gradient steps of FQE's Q model.")] = 3000,
    model_steps: Annotated[int, typer.Option(help="Gradient steps of the mb estimator's dynamics model.")] = 6000,
    model_rollouts: ModelRolloutsOption = "every",
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap and the models.")] = 0,
    refits: RefitsOption = 0,
    db: Annotated[Path | None, typer.Option("--db", help="DuckDB store.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline",
            help="A second model (e.g. models:/name@champion): estimate model - baseline on the same episodes with a "
            "paired interval instead (default estimator: the domain spec's ope_estimator, else snips where at "
            "least half the episodes have propensities, else fqe).",
        ),
    ] = None,
) -> None:
    """Estimate a model's value from the logs with off-policy estimators (value, CI, effective sample size), or
    its difference from a baseline model (--baseline)."""
    import numpy as np

    try:
        from decision_core.algos import Exploration
        from decision_core.errors import SpecError
        from decision_core.ope import FQEConfig, ModelConfig, evaluate_tasks
        from decision_core.ope.model import ROLLOUTS
        from decision_core.settings import CoreSettings
        from decision_core.training.config import TrainConfig
        from decision_core.training.loop import (
            _simulator,
            compare_jobs,
            evaluation_goals,
            goal_arrays,
            load_domain,
            ope_jobs,
        )
        from decision_core.training.models import load_agent_from_uri

        if model_rollouts not in ROLLOUTS:
            raise SpecError(f"--model-rollouts must be one of {', '.join(ROLLOUTS)}, got '{model_rollouts}'")
        dynamics = ModelConfig(steps=model_steps, rollouts=model_rollouts)
        settings = CoreSettings(db=db) if db else CoreSettings()
        agent, ref = load_agent_from_uri(model, settings)
        if agent.spec.name != domain:
            raise SpecError(
                f"{model} is a model of domain '{agent.spec.name}', not '{domain}'; pass --domain {agent.spec.name} "
                f"or a model of '{domain}'"
            )
        if agent.goal_conditioned and task is not None:
            raise SpecError(f"--task is for reward models; {model} ({agent.name}) is goal-conditioned: use --goal")
        if not agent.goal_conditioned and (goal or goal_set):
            raise SpecError(
                f"--goal and --goal-set are for goal-conditioned models; {model} ({agent.name}) is a reward model: "
                "use --task"
            )
        cfg = TrainConfig(domain=domain, algo=agent.name, goal_set=goal_set, task=task)
        arrays = load_domain(cfg, settings)
        exploration = Exploration(epsilon, temperature) if (epsilon > 0 or temperature is not None) else None
        goals = []
        if agent.goal_conditioned:
            if goal:
                spec = arrays.spec
                targets: dict[str, float] = {}
                for g in goal:
                    name, sep, value = g.partition("=")
                    try:
                        if not sep or name not in spec.outcome_names:
                            raise ValueError(name)
                        targets[name] = float(value)
                    except ValueError:
                        raise SpecError(
                            f"--goal '{g}' must be feature=number over the outcome features "
                            f"{', '.join(spec.outcome_names)}"
                        ) from None
                goals = [("cli", *goal_arrays(spec, targets))]
            else:
                goals = evaluation_goals(arrays.spec, goal_set, _simulator(domain))
            if not goals:
                raise SpecError(f"domain '{domain}' defines no goals; pass --goal feature=value")
        jobs = ope_jobs(agent, arrays, goals, task, exploration)
        rng = np.random.default_rng(seed)
        if baseline is not None:
            if refits:
                raise SpecError(
                    "--refits widens one model's interval; a comparison with --baseline takes a paired interval "
                    "over the episodes instead: drop one of them"
                )
            base_agent, base_ref = load_agent_from_uri(baseline, settings)
            if base_agent.goal_conditioned != agent.goal_conditioned or not base_agent.spec.same_data(agent.spec):
                kind = "goal-conditioned" if agent.goal_conditioned else "reward"
                raise SpecError(
                    f"--baseline {base_ref.label()} must be a {kind} model of domain '{agent.spec.name}' like "
                    f"{ref.label()}, so that both are evaluated on the same tasks"
                )
            base_jobs = ope_jobs(base_agent, arrays, goals, task, exploration)
            compared = compare_jobs(
                arrays, jobs, base_jobs, estimators, rng, gamma=gamma, n_bootstrap=bootstrap, confidence=confidence,
                fqe=FQEConfig(steps=fqe_steps), model=dynamics, max_episodes=episodes,
            )  # fmt: skip
            _print_comparisons(compared, ref.label(), base_ref.label(), confidence, as_json)
            return
        reports = evaluate_tasks(
            arrays,
            jobs,
            rng=rng,
            estimators=estimators or None,
            model=dynamics,
            gamma=gamma,
            n_bootstrap=bootstrap,
            confidence=confidence,
            fqe=FQEConfig(steps=fqe_steps),
            max_episodes=episodes,
            fqe_refits=refits,
            model_refits=refits,
        )
    except DecisionCoreError as exc:
        raise _fail(exc) from None
    if as_json:
        out.print_json(json.dumps({"model": ref.label(), "reports": [r.to_dict() for r in reports]}))
        return
    from decision_core.ope.estimators import NEEDS_PROPENSITIES
    from decision_core.training.select import MIN_ESS

    for r in reports:
        pct = round(100 * confidence)
        table = Table("estimator", "value", f"{pct}% CI", "ESS", "", title=f"{ref.label()} · {r.policy} · {r.task}")
        for e in r.estimates.values():
            # What select would not trust: importance weights resting on a handful of logged episodes.
            note = f"[yellow]ESS < {MIN_ESS:g}: the interval says little[/]" if e.ess < MIN_ESS else ""
            table.add_row(e.estimator, f"{e.value:.4g}", f"[{e.ci_low:.4g}, {e.ci_high:.4g}]", f"{e.ess:.1f}", note)
        out.print(table)
        out.print(f"logged policy: {r.behaviour_value:.4g} over {r.n_episodes} episodes ({r.n_steps} steps)")
        weighted = [e for e in r.estimates if e in NEEDS_PROPENSITIES]
        if weighted and r.propensity_episodes < r.n_episodes:
            out.print(
                f"{', '.join(weighted)} weigh the {r.propensity_episodes} episodes with a logged propensity on every "
                f"step; the others use all {r.n_episodes}"
            )
        for name, why in r.skipped.items():
            out.print(f"[yellow]skipped {name}[/]: {why}")


def _print_comparisons(
    compared: list[tuple[str, Any]], model: str, baseline: str, confidence: float, as_json: bool
) -> None:
    if as_json:
        rows = [{"task": task, **d.to_dict()} for task, d in compared]
        out.print_json(json.dumps({"model": model, "baseline": baseline, "comparisons": rows}))
        return
    from decision_core.training.select import MIN_ESS

    pct = round(100 * confidence)
    table = Table(
        "task", "estimator", "difference", f"{pct}% CI", "worse in", "model", "baseline", "model ESS", "",
        title=f"{model} - {baseline} (paired over the same episodes)",
    )  # fmt: skip
    shown = {
        "not evaluable": f"[yellow]not evaluable (ESS < {MIN_ESS:g})[/]",
        "worse": "[red]worse[/]",
        "better": "[green]better[/]",
        "no clear difference": "no clear difference",
    }
    for task, d in compared:
        # As select and the fine-tuning guard: an estimate resting on a handful of episodes is not a verdict.
        verdict = shown[d.verdict(MIN_ESS)]
        table.add_row(
            task, d.estimator, f"{d.value:+.4g}", f"[{d.ci_low:+.4g}, {d.ci_high:+.4g}]", f"{100 * d.share_worse:.0f}%",
            f"{d.policy.value:.4g}", f"{d.baseline.value:.4g}", f"{d.policy.ess:.1f}", verdict,
        )  # fmt: skip
    out.print(table)
    out.print("'worse in': share of the bootstrap resamples in which the model's value is below the baseline's")


def select_cmd(
    domain: Annotated[str, typer.Option("--domain", help="Domain (and registered model name) to choose for.")],
    runs: Annotated[list[str] | None, typer.Option("--runs", help="Candidate run id(s); repeat.")] = None,
    candidates: Annotated[
        str | None, typer.Option("--candidates", help="'all': every registered version of the model.")
    ] = None,
    model_name: Annotated[str | None, typer.Option("--model-name", help="Registered name (default: domain).")] = None,
    estimator: Annotated[
        str | None,
        typer.Option(
            help="Estimator to rank by (default: the domain spec's ope_estimator, else snips where at least half "
            "the episodes have propensities, else fqe)."
        ),
    ] = None,
    confidence: Annotated[float, typer.Option(help="Confidence of the lower bound ranked on.")] = 0.9,
    episodes: Annotated[int, typer.Option(help="Use at most this many logged episodes.")] = 5000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap and FQE.")] = 0,
    min_ess: Annotated[
        float, typer.Option(help="A candidate needs at least this effective sample size (episodes) to compete.")
    ] = 10.0,  # select.MIN_ESS (the command module imports nothing heavy at start-up)
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Compare only; do not move the alias.")] = False,
    fqe_steps: Annotated[int, typer.Option(help="Gradient steps of FQE's Q model.")] = 2000,
    model_steps: Annotated[int, typer.Option(help="Gradient steps of the mb estimator's dynamics model.")] = 3000,
    model_rollouts: ModelRolloutsOption = "every",
    refits: RefitsOption = 0,
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            help="Reward task to score reward models on (default: the one they were trained on; candidates "
            "trained on different tasks are refused without it).",
        ),
    ] = None,
    db: Annotated[Path | None, typer.Option("--db", help="DuckDB store.")] = None,
) -> None:
    """Pick the candidate with the best OPE lower confidence bound and point `champion` at it."""
    try:
        from decision_core.settings import CoreSettings
        from decision_core.training.select import select_champion

        settings = CoreSettings(db=db) if db else CoreSettings()
        if candidates not in (None, "all"):
            raise DecisionCoreError(
                f"--candidates takes 'all' (got '{candidates}'); name runs with --runs RUN_ID, once per run"
            )
        if not runs and candidates != "all":
            raise DecisionCoreError("name candidate runs with --runs RUN_ID (once per run) or pass --candidates all")
        result = select_champion(
            domain,
            run_ids=runs or None,
            settings=settings,
            model_name=model_name,
            estimator=estimator,
            confidence=confidence,
            max_episodes=episodes,
            seed=seed,
            move_alias=not dry_run,
            min_ess=min_ess,
            refits=refits,
            fqe_steps=fqe_steps,
            model_steps=model_steps,
            model_rollouts=model_rollouts,
            task=task,
        )
    except DecisionCoreError as exc:
        raise _fail(exc) from None
    out.print(result.table())
    for note in result.notes:
        out.print(f"note: {note}")
    out.print(result.summary())


def register(app: typer.Typer) -> None:
    """Add the training commands to ``app``."""
    app.command("train")(train_cmd)
    app.command("ope")(ope_cmd)
    app.command("select")(select_cmd)
