"""Guarded online fine-tuning: train on old + new data in a worker process, promote only if OPE says not worse.

A run (after ``finetune_every`` new feedback steps, or on ``POST /v1/finetune``) starts only once
``finetune_needed_episodes`` served episodes have new feedback: ``finetune_min_episodes``, and no fewer than
``finetune_min_ess``, since an OPE estimate rests on at most as many effective episodes as there are episodes (a run
on fewer could only end *not evaluable*; the route answers 409 with the numbers instead). Then:

1. the writer thread snapshots the domain into two small stores in the run's folder: every step (old + new)
   and only the served steps committed since the previous run (the new data); the server keeps serving;
2. a worker **process** (``python -m serving.finetune job.json``, at lower CPU priority) loads the champion,
   continues its training on the full snapshot for ``finetune_steps`` gradient steps (same algorithm, same
   feature statistics), then evaluates the candidate and the champion with off-policy evaluation on the new
   data (``finetune_estimator``, by default the domain spec's own; ``mb`` learns its dynamics from the full
   snapshot and rolls out from the new episodes), under the exploration the deployment serves with: for a
   goal-conditioned model, on the goals most requested in the new traffic (else the domain's named goals); for a
   reward model, on the domain's reward;
3. the candidate is **accepted** unless, on some evaluated task, its estimate rests on fewer than
   ``finetune_min_ess`` effective episodes (not evaluable), or it is worse than the champion with the guard's
   confidence: the upper end of the interval of the difference ``candidate - champion`` is below 0. The interval
   is a paired bootstrap (both policies re-estimated on each resample of the same episodes), which sees a
   difference that the two policies' own intervals hide behind their overlap. A rejected candidate is kept as
   ``rejected`` with the reason;
4. the run is recorded in MLflow (experiment ``<domain>-finetune``: params, losses, OPE estimates, the candidate
   as a registered model version tagged with its status and reason);
5. the server adds the candidate to its catalog and, if accepted (and no ``before_promote`` hook vetoes),
   hot-swaps it in and moves the registry's ``champion`` alias. ``POST /v1/models/rollback`` restores the
   previous champion.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from decision_core.schema import DomainSpec
from decision_core.store import DecisionStore
from serving.errors import Conflict
from serving.feedback import SOURCE_ADAPTER, FeedbackWriter, decisions_table, feedback_table
from serving.settings import AUTO_ESTIMATOR

if TYPE_CHECKING:
    from serving.policy import ModelCatalog
    from serving.settings import ServingSettings

log = logging.getLogger("decision_core.serving.finetune")

#: How many distinct requested goals a goal-conditioned candidate is evaluated on.
MAX_EVAL_GOALS = 3


# -- snapshot (runs on the writer thread) --------------------------------------------------------------------------
def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def export_snapshot(store: DecisionStore, writer: FeedbackWriter, spec: DomainSpec, run_dir: Path) -> dict[str, Any]:
    """Copy the domain's steps (all, and the served ones since the last mark) into two stores under ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    full, new = run_dir / "full.duckdb", run_dir / "new.duckdb"
    for path in (full, new):
        with DecisionStore(path) as snap, snap.transaction() as con:
            snap.ensure_domain(spec, con)
    since, upto = writer.mark_seq, writer.last_seq
    con = store.con
    table = spec.table
    for alias, path, where in (
        ("ft_full", full, ""),
        (
            "ft_new",
            new,
            f" WHERE source_adapter = '{SOURCE_ADAPTER}' AND source_row > {since} AND source_row <= {upto}",
        ),
    ):
        con.execute(f"ATTACH {_quote(path)} AS {alias}")
        try:  # through the steps view, in episode order, so each copy keeps the next states its steps need
            relation = f"(SELECT * FROM {table}{where} ORDER BY episode_id, step)"
            store.insert_steps(spec, relation, con, dedupe=False, ensure=False, into=f"{alias}.")
        finally:
            con.execute(f"DETACH {alias}")
    goals = con.execute(
        f"SELECT d.goal, count(*) AS n FROM {feedback_table(spec)} f JOIN {decisions_table(spec)} d "
        f"ON f.decision_id = d.decision_id WHERE f.seq > ? AND f.seq <= ? GROUP BY d.goal ORDER BY n DESC LIMIT ?",
        [since, upto, MAX_EVAL_GOALS],
    ).fetchall()
    writer.mark(upto)
    return {
        "full_store": str(full),
        "new_store": str(new),
        "since_seq": since,
        "upto_seq": upto,
        "new_feedback": upto - since,
        "goals": [[None if (v is None or np.isnan(v)) else float(v) for v in g] for g, _ in goals],
    }


# -- the supervisor (in the server) --------------------------------------------------------------------------------
@dataclass
class RunRecord:
    run: str
    reason: str
    started_at: float
    status: str = "running"  # running | promoted | rejected | failed
    detail: str = ""


class FineTuner:
    """Starts fine-tune runs (one at a time), supervises the worker process and applies its verdict."""

    def __init__(
        self,
        settings: ServingSettings,
        catalog: ModelCatalog,
        writer: FeedbackWriter,
        *,
        on_result: Any = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.writer = writer
        self.on_result = on_result  # callable(result: str) for metrics
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self.runs: list[RunRecord] = []

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def maybe_start(self) -> None:
        """Start a run when ``finetune_every`` new feedback steps have arrived from enough episodes for the guard
        to judge (called after each commit)."""
        every = self.settings.finetune_every
        if (
            every
            and self.writer.new_feedback >= every
            and self.writer.new_episodes >= self.settings.finetune_needed_episodes
            and not self.running
            and not self._stopping
        ):
            with contextlib.suppress(Conflict):
                self.start(reason=f"{self.writer.new_feedback} new feedback steps")

    def start(self, *, reason: str, steps: int | None = None) -> tuple[str, int]:
        """Start a run in the background; returns (run id, new feedback steps it will see)."""
        with self._lock:
            if self.running:
                raise Conflict("a fine-tune is already running; wait for it (GET /v1/models shows it)")
            if self._stopping:
                raise Conflict("the server is shutting down")
            new = self.writer.new_feedback
            if new <= 0:
                raise Conflict("no new feedback since the last fine-tune; nothing to learn from or evaluate on")
            episodes, needed = self.writer.new_episodes, self.settings.finetune_needed_episodes
            if episodes < needed:
                s = self.settings
                raise Conflict(
                    f"only {episodes} served episode{'' if episodes == 1 else 's'} "
                    f"{'has' if episodes == 1 else 'have'} new feedback since the last fine-tune; the guard judges "
                    f"a candidate on at least {needed} (FINETUNE_MIN_EPISODES {s.finetune_min_episodes}, "
                    f"FINETUNE_MIN_ESS {s.finetune_min_ess:g}: an estimate rests on at most as many effective "
                    f"episodes as there are episodes), so this run could only be rejected; serve and report at "
                    f"least {needed - episodes} more episodes, then ask again"
                )
            run = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}-{len(self.runs)}"
            record = RunRecord(run=run, reason=reason, started_at=time.time())
            self.runs.append(record)
            self._thread = threading.Thread(
                target=self._supervise, args=(record, steps), name="decision-core-finetune", daemon=True
            )
            self._thread.start()
            return run, new

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait(self, timeout: float | None = None) -> RunRecord | None:
        """Block until the current run ends (for tools and tests); returns the last run."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.runs[-1] if self.runs else None

    def _finish(self, record: RunRecord, status: str, detail: str) -> None:
        record.status, record.detail = status, detail
        log.info("fine-tune %s %s: %s", record.run, status, detail)
        if self.on_result is not None:
            self.on_result(status)

    def _supervise(self, record: RunRecord, steps: int | None) -> None:
        try:
            self._supervise_run(record, steps)
        except Exception as exc:
            log.exception("fine-tune %s failed", record.run)
            self._finish(record, "failed", f"{type(exc).__name__}: {exc}")

    def _supervise_run(self, record: RunRecord, steps: int | None) -> None:
        from serving.policy import CatalogEntry

        s = self.settings
        champion = self.catalog.champion
        spec = champion.agent.spec
        run_dir = s.work_dir / spec.name / "finetune" / record.run
        if champion.agent_dir is None:
            raise RuntimeError("the champion has no saved agent directory to fine-tune from")
        snap = self.writer.call(lambda store: export_snapshot(store, self.writer, spec, run_dir)).result(timeout=600)
        core = s.core
        job = {
            "run": record.run,
            "domain": spec.name,
            "champion_dir": str(champion.agent_dir),
            "champion_version": champion.version,
            "registered_name": champion.registered_name or spec.name,
            "out_dir": str(run_dir),
            "steps": steps or s.finetune_steps,
            "seed": int(time.time()) % (2**31),
            "estimator": s.finetune_estimator,
            "model_steps": s.finetune_model_steps,
            "model_rollouts": s.finetune_model_rollouts,
            "confidence": s.finetune_confidence,
            "min_episodes": s.finetune_needed_episodes,
            "min_ess": s.finetune_min_ess,
            "exploration": {"epsilon": s.epsilon, "temperature": s.temperature},
            "home": str(core.home.resolve()),
            "tracking_uri": core.mlflow_uri,
            "reason": record.reason,
            **snap,
        }
        job_path = run_dir / "job.json"
        job_path.write_text(json.dumps(job, indent=2))
        with open(run_dir / "worker.log", "wb") as logf:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "serving.finetune", str(job_path)],
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=os.getcwd(),
            )
            try:
                code = self._proc.wait(timeout=s.finetune_timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
                raise RuntimeError(f"the worker ran past {s.finetune_timeout_s:.0f} s and was stopped") from None
            finally:
                self._proc = None
        result_path = run_dir / "result.json"
        if code != 0 or not result_path.exists():
            tail = (run_dir / "worker.log").read_text(errors="replace")[-600:]
            raise RuntimeError(f"the worker exited with status {code}: {tail}")
        result = json.loads(result_path.read_text())
        entry = CatalogEntry(
            version=result["version"],
            status="candidate" if result["accepted"] else "rejected",
            source=result.get("model_uri") or result["candidate_dir"],
            agent_dir=Path(result["candidate_dir"]),
            registered_name=result.get("registered_name"),
            reason=result["reason"],
            metrics={k: float(v) for k, v in result.get("metrics", {}).items() if _finite(v)},
        )
        self.catalog.add_candidate(entry)
        if not result["accepted"]:
            self._finish(record, "rejected", result["reason"])
            return
        try:
            self.catalog.promote(entry.version, reason=f"fine-tune {record.run}: {result['reason']}")
        except Conflict as exc:
            entry.reason = f"{result['reason']}; not promoted: {exc}"
            self._finish(record, "rejected", entry.reason)
            return
        self._finish(record, "promoted", result["reason"])


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and np.isfinite(v)


# -- the worker process --------------------------------------------------------------------------------------------
def _progress(message: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {message}", flush=True)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune, evaluate and record one candidate; returns (and writes) the verdict."""
    from decision_core.algos import Exploration, configure_torch_threads, load_agent
    from decision_core.data.dataset import OfflineDataset
    from decision_core.ope import ModelConfig
    from decision_core.ope.estimators import NEEDS_DYNAMICS

    configure_torch_threads(1)
    out = Path(job["out_dir"])
    seed = int(job["seed"])
    champion = load_agent(job["champion_dir"])
    agent = load_agent(job["champion_dir"])
    spec = agent.spec
    with DecisionStore(job["full_store"], read_only=True) as store:
        arrays = store.load_arrays(spec.name)
    rewards = None
    if not agent.goal_conditioned and agent.needs_rewards:
        from decision_core.reward import rewards_for

        rewards = rewards_for(arrays, agent.task if agent.task is not None else (spec.reward or "logged"))
    dataset = OfflineDataset(arrays, rewards=rewards)
    del arrays
    sampler = agent.sampler(dataset, seed=seed)
    steps = int(job["steps"])
    losses: dict[str, list[tuple[int, float]]] = {}
    _progress(f"fine-tuning {agent.name} on {dataset.n} steps for {steps} gradient steps")
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        info = agent.update(sampler.sample(agent.config.batch_size))
        if step % max(1, steps // 20) == 0 or step == steps:
            for k, v in info.items():
                losses.setdefault(k, []).append((step, float(v)))
            _progress(f"step {step}/{steps} " + " ".join(f"{k}={v:.4g}" for k, v in info.items()))
    train_s = time.perf_counter() - t0
    candidate_dir = agent.save(out / "agent")

    # -- guard: OPE of candidate vs champion on the new data -------------------------------------------------------
    explore = job["exploration"]
    exploration = None
    if explore["epsilon"] > 0 or explore["temperature"] is not None:
        exploration = Exploration(epsilon=float(explore["epsilon"]), temperature=explore["temperature"])
    metrics: dict[str, float] = {"finetune/train_seconds": train_s, "finetune/new_feedback": job["new_feedback"]}
    for k, points in losses.items():
        metrics[f"finetune/{k}"] = points[-1][1]
    with DecisionStore(job["new_store"], read_only=True) as store:
        new = store.load_arrays(spec.name)
    estimator = guard_estimator(job["estimator"], new)
    history = None
    if estimator in NEEDS_DYNAMICS:  # the dynamics do not depend on the policy: learn them from every step
        with DecisionStore(job["full_store"], read_only=True) as store:
            history = store.load_arrays(spec.name)
    verdict = judge(
        new,
        agent,
        champion,
        goals=job["goals"],
        exploration=exploration,
        estimator=estimator,
        history=history,
        model=ModelConfig(steps=int(job["model_steps"]), rollouts=str(job["model_rollouts"])),
        confidence=float(job["confidence"]),
        min_episodes=int(job["min_episodes"]),
        min_ess=float(job["min_ess"]),
        seed=seed,
    )
    metrics.update(verdict.metrics)
    accepted, reason = verdict.accepted, verdict.reason
    _progress(reason)
    result: dict[str, Any] = {
        "accepted": accepted,
        "reason": reason,
        "candidate_dir": str(candidate_dir),
        "version": f"ft-{job['run']}",
        "registered_name": None,
        "model_uri": None,
        "metrics": metrics,
    }
    result.update(_record_in_mlflow({**job, "estimator": estimator}, agent, metrics, losses, accepted, reason))
    (out / "result.json").write_text(json.dumps(result, indent=2, default=float))
    return result


@dataclass
class Verdict:
    """The guard's decision on a candidate: accepted or not, why, and the OPE figures it rests on."""

    accepted: bool
    reason: str
    metrics: dict[str, float]


def guard_estimator(name: str, new: Any) -> str:
    """The estimator the guard judges with: ``name``, or for ``"auto"`` the domain's own
    (:func:`~decision_core.ope.default_estimator`: the spec's ``ope_estimator`` where the data supports it)."""
    from decision_core.ope import default_estimator

    return default_estimator(new) if name == AUTO_ESTIMATOR else name


def judge(
    new: Any,
    candidate: Any,
    champion: Any,
    *,
    goals: list[list[float | None]],
    exploration: Any,
    estimator: str,
    confidence: float,
    min_episodes: int,
    min_ess: float,
    seed: int,
    history: Any | None = None,
    model: Any | None = None,
) -> Verdict:
    """Judge the ``candidate`` agent against the ``champion`` on the served steps ``new`` (DomainArrays).

    Tasks: for goal-conditioned agents the served ``goals`` (each a value or None per outcome feature), else up to
    :data:`MAX_EVAL_GOALS` of the domain's named goals; otherwise the domain's reward. Both agents act as served
    (``exploration``). On each task :func:`~decision_core.ope.compare_policies` estimates ``candidate - champion``
    with ``estimator`` and a paired bootstrap interval at ``confidence``; the candidate is rejected where the
    interval lies below 0, where its effective sample size is below ``min_ess``, or where OPE cannot run.

    ``history`` (DomainArrays of every stored step, old and new) is what a model-based estimator (``mb``) learns
    the dynamics from (``model``: its :class:`~decision_core.ope.ModelConfig`); the rollouts still start from the
    new episodes' start states. Without it the model learns from the new steps alone, which on a domain with many
    actions cover few of them (``bench_guard``: on the recommender that stopped 14% of worse candidates, against
    66% with the logs in).
    """
    from decision_core.ope import (
        AgentPolicy,
        OPEError,
        compare_policies,
        goal_task,
        reward_task,
        task_models,
    )
    from decision_core.ope.estimators import NEEDS_DYNAMICS

    spec = candidate.spec
    metrics: dict[str, float] = {"finetune/new_episodes": new.n_episodes}
    accepted, reasons = True, []
    try:
        if new.n_episodes < min_episodes:
            raise OPEError(f"only {new.n_episodes} new episodes; at least {min_episodes} are needed")
        tasks: list[tuple[str, Any, np.ndarray | None, np.ndarray | None]] = []
        if candidate.goal_conditioned:
            asked = [g for g in goals if any(v is not None for v in g)]
            if not asked:
                asked = [[named.get(n) for n in spec.outcome_names] for named in spec.goals.values()][:MAX_EVAL_GOALS]
            if not asked:
                raise OPEError("the new traffic asked for no goal and the domain names none; nothing to evaluate")
            for i, g in enumerate(asked):
                mask = np.array([v is not None for v in g])
                values = np.array([0.0 if v is None else v for v in g], np.float32)
                tasks.append((f"goal{i}", goal_task(new, values, mask, name=f"goal{i}"), values, mask))
        else:
            tasks.append(("reward", reward_task(new, candidate.task), None, None))  # the task it was trained on
        rng = np.random.default_rng(seed)
        dynamics: list[Any] = [None] * len(tasks)
        if estimator in NEEDS_DYNAMICS and history is not None:
            learned = [
                reward_task(history, candidate.task) if g is None or m is None else goal_task(history, g, m, name=label)
                for label, _, g, m in tasks
            ]
            dynamics = task_models(history, learned, config=model, rng=rng)
        for (label, task, goal, task_mask), fitted in zip(tasks, dynamics, strict=True):
            cand_policy, champ_policy = (
                AgentPolicy(a, exploration, goal=goal, goal_mask=task_mask, name=who)
                for who, a in (("candidate", candidate), ("champion", champion))
            )
            diff = compare_policies(
                new,
                cand_policy,
                champ_policy,
                estimator=estimator,
                rng=rng,
                task=task,
                confidence=confidence,
                model=model,
                dynamics=fitted,
            )
            cand = diff.policy
            for who, e in (("candidate", diff.policy), ("champion", diff.baseline), ("difference", diff)):
                metrics[f"ope/{label}/{who}/{estimator}"] = e.value
                metrics[f"ope/{label}/{who}/{estimator}/ci_low"] = e.ci_low
                metrics[f"ope/{label}/{who}/{estimator}/ci_high"] = e.ci_high
            metrics[f"ope/{label}/candidate/{estimator}/ess"] = cand.ess
            metrics[f"ope/{label}/difference/{estimator}/share_worse"] = diff.share_worse
            reasons.append(
                f"{task.description}: candidate - champion {diff.value:+.4g} [{diff.ci_low:+.4g}, "
                f"{diff.ci_high:+.4g}] (candidate {cand.value:.4g}, champion {diff.baseline.value:.4g}; {estimator}, "
                f"paired over {cand.n_episodes} episodes, candidate's effective sample size {cand.ess:.3g})"
            )
            verdict = diff.verdict(min_ess)
            if verdict == "not evaluable":
                accepted = False
                reasons[-1] = (
                    f"not evaluable (effective sample size below finetune_min_ess {min_ess:g}; serve more episodes "
                    "or explore more) on " + reasons[-1]
                )
            elif verdict == "worse":
                accepted = False
                reasons[-1] = "worse on " + reasons[-1]
    except OPEError as exc:
        accepted = False
        reasons.append(f"cannot evaluate on the new data: {exc}")
    reason = ("not worse within the interval: " if accepted else "rejected: ") + "; ".join(reasons)
    return Verdict(accepted, reason, metrics)


def _record_in_mlflow(
    job: dict[str, Any],
    agent: Any,
    metrics: dict[str, float],
    history: dict[str, list[tuple[int, float]]],
    accepted: bool,
    reason: str,
) -> dict[str, Any]:
    """Log the run and register the candidate; a tracking failure keeps the local candidate (and says so)."""
    try:
        import mlflow

        from decision_core.settings import CoreSettings
        from decision_core.training.models import (
            STATUS_TAG,
            client,
            configure_tracking,
            ensure_experiment,
            log_agent_model,
        )

        settings = CoreSettings(home=Path(job["home"]), tracking_uri=job["tracking_uri"])
        configure_tracking(settings)
        experiment = ensure_experiment(f"{job['domain']}-finetune", settings)
        with mlflow.start_run(experiment_id=experiment, run_name=f"finetune-{job['run']}") as run:
            mlflow.log_params(
                {
                    "algo": agent.name,
                    "steps": job["steps"],
                    "champion_version": job["champion_version"],
                    "estimator": job["estimator"],
                    "model_steps": job["model_steps"],
                    "model_rollouts": job["model_rollouts"],
                    "confidence": job["confidence"],
                    "epsilon": job["exploration"]["epsilon"],
                    "temperature": job["exploration"]["temperature"],
                    "trigger": job["reason"],
                    "new_feedback": job["new_feedback"],
                }
            )
            for k, points in history.items():
                for step, value in points:
                    mlflow.log_metric(k, value, step=step)
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if _finite(v)})
            mlflow.set_tags({"decision_core.kind": "finetune", "decision_core.accepted": str(accepted)})
            mlflow.set_tag("decision_core.reason", reason[:4900])
            logged = log_agent_model(agent, registered_name=job["registered_name"])
            run_id = run.info.run_id
        if logged.version is not None and logged.name:
            c = client(settings)
            c.set_model_version_tag(logged.name, logged.version, STATUS_TAG, "candidate" if accepted else "rejected")
            c.set_model_version_tag(logged.name, logged.version, "decision_core.reason", reason[:4900])
        return {
            "version": logged.version or f"ft-{job['run']}",
            "registered_name": logged.name,
            "model_uri": logged.model_uri,
            "mlflow_run_id": run_id,
        }
    except Exception as exc:  # tracking is a record, not a gate: keep the candidate locally
        _progress(f"MLflow recording failed: {exc}")
        traceback.print_exc()
        return {"mlflow_error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m serving.finetune JOB.json", file=sys.stderr)
        return 2
    with contextlib.suppress(OSError):
        os.nice(10)  # serving keeps priority over fine-tuning on a shared machine
    job = json.loads(Path(args[0]).read_text())
    run_job(job)
    return 0


if __name__ == "__main__":
    sys.exit(main())
