"""Model selection by off-policy evaluation: the validation set offline RL otherwise lacks.

Every candidate (a registered model version) is evaluated on the same logged episodes with the same estimator and
bootstrap seed; the winner is the one with the highest **lower confidence bound** (a model that only looks good
because its estimate is noisy does not win), and the ``champion`` alias moves to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.table import Table

from decision_core.errors import DecisionCoreError
from decision_core.settings import CoreSettings
from decision_core.training.config import TrainConfig
from decision_core.training.models import CHAMPION, ModelError, alias_version, client, load_agent_from_uri, set_alias


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


@dataclass
class Selection:
    name: str
    candidates: list[CandidateScore]
    chosen: CandidateScore
    previous_champion: str | None
    moved: bool
    confidence: float
    task: str
    notes: list[str] = field(default_factory=list)

    def table(self) -> Table:
        pct = round(100 * self.confidence)
        t = Table(
            "version", "run", "algo", "estimator", "value", f"{pct}% CI", "ESS", "",
            title=f"{self.name}: candidates by OPE lower bound ({self.task})",
        )  # fmt: skip
        for c in sorted(self.candidates, key=lambda c: -c.ci_low):
            mark = "[green]champion[/]" if c is self.chosen else ""
            if c.version == self.previous_champion and c is not self.chosen:
                mark = "previous champion"
            t.add_row(
                c.version, (c.run_id or "")[:12], c.algo, c.estimator, f"{c.value:.4g}",
                f"[{c.ci_low:.4g}, {c.ci_high:.4g}]", f"{c.ess:.1f}", mark,
            )  # fmt: skip
        return t

    def summary(self) -> str:
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
    seed: int = 0,
    move_alias: bool = True,
    arrays: Any | None = None,
) -> Selection:
    """Score the candidates by OPE on ``domain``'s logs and point ``champion`` at the best lower bound."""
    from decision_core.training.loop import _simulator, load_domain, run_ope

    settings = settings or CoreSettings()
    name = model_name or domain
    versions = _versions(name, run_ids, settings)
    loaded = []
    for v in versions:
        agent, _ = load_agent_from_uri(f"models:/{name}/{v.version}", settings)
        loaded.append((v, agent))
    kinds = {a.goal_conditioned for _, a in loaded}
    if len(kinds) > 1:
        gc = [f"v{v.version}" for v, a in loaded if a.goal_conditioned]
        raise DecisionCoreError(
            f"candidates mix goal-conditioned ({', '.join(gc)}) and reward models, whose OPE values (success "
            f"rate vs return) are not comparable; select among one kind with --runs"
        )
    if arrays is None:
        arrays = load_domain(TrainConfig(domain=domain, algo=loaded[0][1].name), settings)
    if estimator is None:
        # SNIPS ranks well where actions are few (inventory, dialogue); with hundreds of actions importance weights
        # explode and FQE ranks better (docs/ope.md), so callers pick with --estimator there.
        estimator = "snips" if arrays.has_propensities else "fqe"
    sim = _simulator(domain)
    scores: list[CandidateScore] = []
    task = ""
    for v, agent in loaded:
        cfg = TrainConfig(domain=domain, algo=agent.name, ope_episodes=max_episodes, fqe_steps=fqe_steps)
        # The same generator seed for every candidate: they meet the same episodes and bootstrap draws.
        metrics, reports = run_ope(
            agent, arrays, cfg, rng=np.random.default_rng(seed), estimators=[estimator], sim=sim, confidence=confidence
        )
        e = reports[0].estimates[estimator]
        task = reports[0].task if len(reports) == 1 else f"mean success over {len(reports)} goals"
        scores.append(
            CandidateScore(
                version=str(v.version),
                run_id=v.run_id,
                algo=agent.name,
                value=metrics[f"ope/{estimator}"],
                ci_low=metrics[f"ope/{estimator}/ci_low"],
                ci_high=metrics[f"ope/{estimator}/ci_high"],
                ess=e.ess,
                estimator=estimator,
            )
        )
    best = max(scores, key=lambda s: (s.ci_low, s.value))
    previous = alias_version(name, CHAMPION, settings)
    moved = False
    if move_alias and previous != best.version:
        set_alias(name, CHAMPION, best.version, settings)
        moved = True
    return Selection(name, scores, best, previous, moved, reports[0].estimates[estimator].confidence, task)
