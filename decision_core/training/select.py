"""Model selection by off-policy evaluation: the validation set offline RL otherwise lacks.

Every candidate (a registered model version) is evaluated on the same logged episodes with the same estimator and
bootstrap seed; the winner is the one with the highest **lower confidence bound** (a model that only looks good
because its estimate is noisy does not win), and the ``champion`` alias moves to it. The current champion is always
scored (beside named runs that leave it out), and it is replaced only by a candidate that beats it: one ranked
above it must also be better in a paired comparison (the paired interval of ``winner - champion`` above 0). A
candidate whose estimate rests on fewer than ``min_ess`` effective episodes (importance weights concentrated on a
handful of logged episodes: a policy far from the logs, or hundreds of actions) is not evaluable and cannot win;
when no candidate is, the champion stays where it is and the summary says which estimators do not weight episodes.

Reward models are scored on the reward task they were trained on (``agent.task``), which must then be the same for
every candidate (returns under different tasks do not compare), or all on the one ``task`` named.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from rich.table import Table

from decision_core.errors import DecisionCoreError
from decision_core.settings import CoreSettings
from decision_core.training.config import TrainConfig
from decision_core.training.models import (
    CHAMPION,
    STATUS_TAG,
    ModelError,
    alias_version,
    client,
    load_agent_from_uri,
    set_alias,
)

#: Fewest effective episodes an estimate may rest on for selection to trust it (``select --min-ess``).
MIN_ESS = 10.0


@dataclass
class CandidateScore:
    version: str
    run_id: str | None
    algo: str
    value: float
    ci_low: float
    ci_high: float
    ess: float
    estimator: str
    #: Whether the estimate rests on enough effective episodes (``ess >= min_ess``) to compete.
    evaluable: bool = True


@dataclass
class Selection:
    name: str
    candidates: list[CandidateScore]
    #: The best evaluable candidate; None when no candidate is evaluable (the champion then stays).
    chosen: CandidateScore | None
    previous_champion: str | None
    moved: bool
    confidence: float
    task: str
    notes: list[str] = field(default_factory=list)
    min_ess: float = 0.0

    def table(self) -> Table:
        pct = round(100 * self.confidence)
        t = Table(
            "version", "run", "algo", "estimator", "value", f"{pct}% CI", "ESS", "",
            title=f"{self.name}: candidates by OPE lower bound ({self.task})",
        )  # fmt: skip
        for c in sorted(self.candidates, key=lambda c: (not c.evaluable, -c.ci_low)):
            mark = "[green]champion[/]" if c is self.chosen else ""
            if c.version == self.previous_champion and c is not self.chosen:
                mark = "champion" if self.chosen is None else "previous champion"
            if not c.evaluable:
                mark = " ".join(m for m in (mark, f"[yellow]not evaluable (ESS < {self.min_ess:g})[/]") if m)
            t.add_row(
                c.version, (c.run_id or "")[:12], c.algo, c.estimator, f"{c.value:.4g}",
                f"[{c.ci_low:.4g}, {c.ci_high:.4g}]", f"{c.ess:.1f}", mark,
            )  # fmt: skip
        return t

    def summary(self) -> str:
        if self.chosen is None:
            estimator = self.candidates[0].estimator
            largest = max(c.ess for c in self.candidates)
            stays = f"v{self.previous_champion}" if self.previous_champion else "unset"
            return (
                f"no candidate is evaluable: under {estimator} every estimate rests on fewer than {self.min_ess:g} "
                f"effective episodes (the largest {largest:.1f}), so champion stays {stays}. Rank with an estimator "
                f"that does not weight episodes (--estimator fqe or mb), serve with more exploration, or lower "
                f"--min-ess"
            )
        if not self.moved:
            if self.previous_champion == self.chosen.version:
                return f"champion stays {self.name} v{self.chosen.version}"
            return f"best is {self.name} v{self.chosen.version} (alias not moved: dry run)"
        return (
            f"champion: {self.name} v{self.previous_champion or '-'} -> v{self.chosen.version} "
            f"(lower bound {self.chosen.ci_low:.4g})"
        )


def _versions(name: str, run_ids: list[str] | None, settings: CoreSettings) -> list[Any]:
    c = client(settings)
    versions = list(c.search_model_versions(f"name='{name}'"))
    if not versions:
        raise ModelError(f"no registered model '{name}' in {settings.mlflow_uri}; train one with decision-core train")
    if run_ids is None:
        return sorted(versions, key=lambda v: int(v.version))
    chosen = []
    for run_id in run_ids:
        match = [v for v in versions if v.run_id == run_id]
        if not match:
            known = ", ".join(sorted({str(v.run_id) for v in versions}))
            raise ModelError(f"run {run_id} registered no version of '{name}'. Runs with versions: {known}")
        chosen.append(max(match, key=lambda v: int(v.version)))
    return chosen


def task_of(agent: Any) -> str:
    """The reward task a reward model is judged by: the one it was trained on, or for a model saved before agents
    recorded it, the domain's own reward (its spec's, else the logged rewards)."""
    return agent.task if agent.task is not None else (agent.spec.reward or "logged")


def _paired_difference(
    challenger: Any,
    champion: Any,
    arrays: Any,
    config: TrainConfig,
    *,
    estimator: str,
    sim: Any,
    models: dict[str, Any],
    seed: int,
    confidence: float,
) -> tuple[float, float, float]:
    """``challenger - champion`` by ``estimator`` with its paired interval (value, low, high), on the tasks
    :func:`~decision_core.training.loop.run_ope` scores them on (a goal model's mean over its goals, the bounds
    averaged as run_ope averages them)."""
    from decision_core.ope import FQEConfig, ModelConfig
    from decision_core.training.loop import compare_jobs, evaluation_goals, ope_exploration, ope_jobs

    exploration = ope_exploration(config)
    goals = evaluation_goals(arrays.spec, config.goal_set, sim) if challenger.goal_conditioned else []
    diffs = compare_jobs(
        arrays,
        ope_jobs(challenger, arrays, goals, config.task, exploration),
        ope_jobs(champion, arrays, goals, config.task, exploration),
        [estimator],
        np.random.default_rng(seed),
        model=ModelConfig(steps=config.model_steps, rollouts=config.model_rollouts),
        models=models,
        confidence=confidence,
        fqe=FQEConfig(steps=config.fqe_steps),
        max_episodes=config.ope_episodes,
    )
    mean = np.mean([(d.value, d.ci_low, d.ci_high) for _, d in diffs], axis=0)
    return float(mean[0]), float(mean[1]), float(mean[2])


def select_champion(
    domain: str,
    *,
    run_ids: list[str] | None = None,
    settings: CoreSettings | None = None,
    model_name: str | None = None,
    estimator: str | None = None,
    confidence: float = 0.9,
    max_episodes: int = 5000,
    fqe_steps: int = 2000,
    model_steps: int = 3000,
    model_rollouts: str = "every",
    seed: int = 0,
    move_alias: bool = True,
    arrays: Any | None = None,
    min_ess: float = MIN_ESS,
    refits: int = 0,
    task: str | None = None,
) -> Selection:
    """Score the candidates by OPE on ``domain``'s logs and point ``champion`` at the best lower bound among those
    whose estimate rests on at least ``min_ess`` effective episodes (the smallest over a goal model's goals).
    Reward models are scored on ``task`` (an expression or ``"logged"``), by default the task they were all
    trained on (candidates trained on different ones are refused).
    ``refits`` > 0 takes fqe's and mb's intervals from that many refitted models (see :func:`run_ope`);
    ``fqe_steps``, ``model_steps`` and ``model_rollouts`` configure FQE's Q model and mb's dynamics model as in
    :class:`~decision_core.training.config.TrainConfig`."""
    from decision_core.ope import default_estimator
    from decision_core.training.loop import _simulator, load_domain, run_ope

    settings = settings or CoreSettings()
    name = model_name or domain
    versions = _versions(name, run_ids, settings)
    previous = alias_version(name, CHAMPION, settings)
    notes = []
    if run_ids is None:
        # Every version competes, except those the fine-tuning guard rejected (named runs are scored regardless).
        rejected = [v for v in versions if (v.tags or {}).get(STATUS_TAG) == "rejected"]
        if rejected:
            versions = [v for v in versions if v not in rejected]
            notes.append(
                f"{', '.join(f'v{v.version}' for v in rejected)} were rejected by the fine-tuning guard and do not "
                "compete (name their runs with --runs to score them anyway)"
            )
        if not versions:
            raise DecisionCoreError(
                f"every version of '{name}' was rejected by the fine-tuning guard; nothing to select"
            )
    loaded = []
    for v in versions:
        agent, _ = load_agent_from_uri(f"models:/{name}/{v.version}", settings)
        loaded.append((v, agent))
    champion_kind = next((a.goal_conditioned for v, a in loaded if str(v.version) == previous), None)
    if run_ids is None and champion_kind is not None and len({a.goal_conditioned for _, a in loaded}) > 1:
        # Goal and reward models are not comparable: with every version asked for, the champion's kind competes.
        other = [f"v{v.version}" for v, a in loaded if a.goal_conditioned != champion_kind]
        loaded = [(v, a) for v, a in loaded if a.goal_conditioned == champion_kind]
        kind, other_kind = ("goal-conditioned", "reward") if champion_kind else ("reward", "goal-conditioned")
        notes.append(
            f"the champion v{previous} is a {kind} model: the {other_kind} models ({', '.join(other)}) are not "
            "comparable with it and do not compete (select among them with --runs)"
        )
    if previous is not None and all(str(v.version) != previous for v, _ in loaded):
        # The champion defends its place: named runs that all score below it must not replace it.
        (incumbent,) = [v for v in _versions(name, None, settings) if str(v.version) == previous]
        agent, _ = load_agent_from_uri(f"models:/{name}/{previous}", settings)
        named_tasks = {task_of(a) for _, a in loaded if not a.goal_conditioned}
        if {a.goal_conditioned for _, a in loaded} != {agent.goal_conditioned}:
            notes.append(
                f"the champion v{previous} is a {'goal-conditioned' if agent.goal_conditioned else 'reward'} model, "
                "not comparable with the named runs; it was not scored"
            )
        elif task is None and not agent.goal_conditioned and task_of(agent) not in named_tasks:
            notes.append(
                f"the champion v{previous} was trained on reward task '{task_of(agent)}', not the named runs' "
                f"({', '.join(sorted(named_tasks))}); it was not scored (--task scores every model on one task)"
            )
        else:
            loaded.append((incumbent, agent))
            notes.append(f"the champion v{previous} is scored beside the named runs: a candidate must beat it")
    kinds = {a.goal_conditioned for _, a in loaded}
    if len(kinds) > 1:
        gc = [f"v{v.version}" for v, a in loaded if a.goal_conditioned]
        raise DecisionCoreError(
            f"candidates mix goal-conditioned ({', '.join(gc)}) and reward models, whose OPE values (success "
            f"rate vs return) are not comparable; select among one kind with --runs"
        )
    if kinds == {True} and task is not None:
        raise DecisionCoreError(f"a reward task ('{task}') is for reward models; the candidates are goal-conditioned")
    if kinds == {False} and task is None:
        trained: dict[str, list[str]] = {}
        for v, a in loaded:
            trained.setdefault(task_of(a), []).append(f"v{v.version}")
        if len(trained) > 1:
            raise DecisionCoreError(
                "candidates were trained on different reward tasks, whose returns are not comparable: "
                + "; ".join(f"{', '.join(vs)}: '{t}'" for t, vs in trained.items())
                + ". Select among one task's models with --runs, or score them all on one with --task"
            )
        (task,) = trained
    ope_config = TrainConfig(
        domain=domain,
        algo=loaded[0][1].name,
        task=task,
        ope_episodes=max_episodes,
        fqe_steps=fqe_steps,
        model_steps=model_steps,
        model_rollouts=model_rollouts,
    )
    if arrays is None:
        arrays = load_domain(ope_config, settings)
    if estimator is None:
        # The domain's own judge where its spec names one (docs/ope.md measures each built-in domain's).
        estimator = default_estimator(arrays)
    sim = _simulator(domain)
    scores: list[CandidateScore] = []
    scored_on = ""  # what the table says the values are of
    models: dict[str, Any] = {}  # mb's dynamics do not depend on the candidate: one fit serves them all
    for v, agent in loaded:
        cfg = replace(ope_config, algo=agent.name)
        # The same generator seed for every candidate: they meet the same episodes and bootstrap draws.
        metrics, reports = run_ope(
            agent,
            arrays,
            cfg,
            rng=np.random.default_rng(seed),
            estimators=[estimator],
            sim=sim,
            confidence=confidence,
            refits=refits,
            models=models,
        )
        ess = min(r.estimates[estimator].ess for r in reports)
        scored_on = reports[0].task if len(reports) == 1 else f"mean success over {len(reports)} goals"
        scores.append(
            CandidateScore(
                version=str(v.version),
                run_id=v.run_id,
                algo=agent.name,
                value=metrics[f"ope/{estimator}"],
                ci_low=metrics[f"ope/{estimator}/ci_low"],
                ci_high=metrics[f"ope/{estimator}/ci_high"],
                ess=ess,
                estimator=estimator,
                evaluable=ess >= min_ess,
            )
        )
    evaluable = [s for s in scores if s.evaluable]
    best = max(evaluable, key=lambda s: (s.ci_low, s.value)) if evaluable else None
    incumbent = next((s for s in evaluable if s.version == previous), None)
    if best is not None and incumbent is not None and best is not incumbent:
        # Ranking first does not yet make it better: both estimates rest on the same episodes, and much of a
        # model-based estimator's error is shared between them, which only a paired comparison cancels.
        agents = {str(v.version): a for v, a in loaded}
        cfg = replace(ope_config, algo=agents[best.version].name)
        value, low, high = _paired_difference(
            agents[best.version], agents[incumbent.version], arrays, cfg, estimator=estimator, sim=sim,
            models=models, seed=seed, confidence=confidence,
        )  # fmt: skip
        if low <= 0.0:
            notes.append(
                f"v{best.version} ranks first, but its paired difference from the champion v{incumbent.version} is "
                f"{value:+.4g} [{low:+.4g}, {high:+.4g}]: not shown better, so the champion stays"
            )
            best = incumbent
    moved = False
    if best is not None and move_alias and previous != best.version:
        set_alias(name, CHAMPION, best.version, settings)
        moved = True
    level = reports[0].estimates[estimator].confidence
    return Selection(name, scores, best, previous, moved, level, scored_on, notes=notes, min_ess=min_ess)
