"""The training entry point: one MLflow run from logged data to a registered model.

:func:`train` reads the domain from the store once, builds the agent, runs ``config.steps`` updates with a live
progress bar, evaluates periodically (the domain's simulator when it has one, OPE always), checkpoints (locally
and as run artifacts) and finally logs the model, registers it under the domain's name and sets its aliases.
The same function runs in every process under ``torchrun`` (see :mod:`decision_core.training.distributed`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from decision_core.errors import DecisionCoreError, SpecError
from decision_core.schema import SCHEMA_VERSION
from decision_core.settings import CoreSettings
from decision_core.training import distributed as dist_utils
from decision_core.training.config import TrainConfig

console = Console(stderr=True)

#: Estimators cheap enough to run at every periodic evaluation (FQE fits a network, so it waits for the end).
PERIODIC_ESTIMATORS = ("snips", "pdwis")
#: ``keep = "best:ope"``: keep by the domain's own estimator (:func:`~decision_core.ope.default_estimator`).
KEEP_BY_JUDGE = "ope"


class TrainingError(DecisionCoreError):
    """Training cannot start or continue as asked."""


class TrainingDiverged(TrainingError):
    """A loss became NaN or infinite; the run stopped and its last good checkpoint was kept."""

    def __init__(self, message: str, *, run_id: str | None, step: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.run_id, self.step, self.checkpoint = run_id, step, checkpoint


@dataclass
class TrainResult:
    """What a run produced."""

    run_id: str | None
    model_uri: str | None
    registered_name: str | None
    registered_version: str | None
    aliases: list[str]
    metrics: dict[str, float]
    steps: int
    checkpoint: Path | None
    rank: int = 0
    ope: list[dict[str, Any]] = field(default_factory=list)
    #: With ``keep = "best:<metric>"``: the step whose weights the model holds, and the rule that chose them. When
    #: they are not the last step's, ``metrics`` holds their evaluation under ``kept/`` (as the run logs it) beside
    #: the last weights' under the plain names.
    kept_step: int | None = None
    kept_by: str | None = None


# -- data ---------------------------------------------------------------------------------------------------------
def load_domain(config: TrainConfig, settings: CoreSettings) -> Any:
    """The domain's steps as arrays, read from the store once (read-only, so several processes may share it)."""
    from decision_core.errors import StoreError
    from decision_core.store import DecisionStore

    path = settings.db_path
    if not Path(path).exists():
        raise StoreError(f"no store at {path}; ingest logs first (decision-core ingest <adapter> <files>)")
    with DecisionStore(path, read_only=True) as store:
        return store.load_arrays(config.domain)


def fingerprint(arrays: Any, settings: CoreSettings) -> dict[str, str]:
    """Dataset identity for the run's params: store path, counts, schema version and a content hash."""
    h = hashlib.sha256()
    for a in (arrays.states, arrays.actions, arrays.episode_starts, arrays.rewards, arrays.propensities):
        h.update(np.ascontiguousarray(a).tobytes())
    return {
        "data.store": str(Path(settings.db_path).resolve()),
        "data.domain": arrays.spec.name,
        "data.spec_version": arrays.spec.version,
        "data.schema_version": str(SCHEMA_VERSION),
        "data.steps": str(arrays.n_steps),
        "data.episodes": str(arrays.n_episodes),
        "data.with_propensity": str(int(np.isfinite(arrays.propensities).sum())),
        "data.with_reward": str(int(np.isfinite(arrays.rewards).sum())),
        "data.sha256": h.hexdigest()[:16],
    }


def training_task(agent_cls: Any, config: TrainConfig, arrays: Any) -> str | None:
    """The reward task a reward algorithm trains on, recorded with the agent (its config's ``reward``) and judged
    by: ``config.task``, else ``agent.reward`` of the config, else the domain's reward (``spec.reward``), else the
    logged rewards (``"logged"``). None for goal-conditioned algorithms, and for one that learns no reward (BC)
    on logs that have none."""
    if agent_cls.goal_conditioned:
        return None
    named = config.agent.get("reward")
    if config.task is not None and named is not None and config.task.strip() != str(named).strip():
        raise SpecError(
            f"training config: 'task' ({config.task!r}) and 'agent.reward' ({named!r}) name different reward tasks; "
            f"give the task once, as 'task' (--task)"
        )
    task = config.task if config.task is not None else named
    if task is None:
        task = arrays.spec.reward
    if task is None and (getattr(agent_cls, "needs_rewards", True) or arrays.has_rewards):
        task = "logged"
    return None if task is None else str(task)


def _training_rewards(agent_cls: Any, arrays: Any, task: str | None) -> np.ndarray | None:
    """The reward of every step under ``task`` for algorithms that learn a reward; None for the others."""
    if agent_cls.goal_conditioned or not getattr(agent_cls, "needs_rewards", True):
        return None
    from decision_core.reward import rewards_for

    return rewards_for(arrays, task)


# -- evaluation ----------------------------------------------------------------------------------------------------
def _simulator(domain: str) -> Any | None:
    """The domain's simulator, or None when it has none (imported lazily: simulators are optional)."""
    try:
        from decision_core.envs import SIMULATORS, get_simulator
    except ImportError:
        return None
    if domain not in SIMULATORS:
        return None
    try:
        return get_simulator(domain)
    except DecisionCoreError:
        return None


def evaluation_goals(spec: Any, goal_set: str | None, sim: Any | None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, values, mask) of the goals goal-conditioned evaluation uses."""
    goals: dict[str, dict[str, float]] = dict(spec.goals)
    if not goals and sim is not None:
        goals = {g.name: dict(g.targets) for g in sim.goal_set()}
    if goal_set is not None:
        if goal_set not in goals:
            raise SpecError(
                f"goal set '{goal_set}' is not defined for domain '{spec.name}'. "
                f"Known: {', '.join(sorted(goals)) or 'none'}"
            )
        goals = {goal_set: goals[goal_set]}
    return [(name, *goal_arrays(spec, targets)) for name, targets in goals.items()]


def simulator_goals(sim: Any, spec: Any, goal_set: str | None) -> list[Any]:
    """The goals the simulator evaluation pursues: its own goal set, or only ``goal_set`` (the simulator's goal of
    that name, else the domain spec's, which :func:`evaluation_goals` has checked)."""
    from decision_core.envs.base import Goal

    goals = list(sim.goal_set())
    if goal_set is None:
        return goals
    named = [g for g in goals if g.name == goal_set]
    if named:
        return named
    if goal_set in spec.goals:
        return [Goal(goal_set, dict(spec.goals[goal_set]))]
    raise SpecError(
        f"goal set '{goal_set}' is not defined for domain '{spec.name}'. Known: "
        f"{', '.join(sorted({*spec.goals, *(g.name for g in goals)}))}"
    )


def goal_arrays(spec: Any, targets: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """A goal's (values, mask) over the spec's outcome features from its targets (feature -> value)."""
    values = np.array([targets.get(o, 0.0) for o in spec.outcome_names], np.float32)
    mask = np.array([o in targets for o in spec.outcome_names], np.bool_)
    return values, mask


def ope_jobs(
    agent: Any,
    arrays: Any,
    goals: list[tuple[str, np.ndarray, np.ndarray]],
    task: str | None,
    exploration: Any | None = None,
) -> list[tuple[Any, Any]]:
    """The (policy, task) pairs OPE evaluates for ``agent``: one per goal (name, values, mask) for a
    goal-conditioned agent, else its reward task: ``task`` (an expression or ``"logged"``), by default the one the
    agent was trained on (``agent.task``), else the spec's reward."""
    from decision_core.ope import AgentPolicy, goal_task, reward_task

    if agent.goal_conditioned:
        return [
            (AgentPolicy(agent, exploration, goal=values, goal_mask=mask), goal_task(arrays, values, mask, name=name))
            for name, values, mask in goals
        ]
    return [(AgentPolicy(agent, exploration), reward_task(arrays, task if task is not None else agent.task))]


def compare_jobs(
    arrays: Any,
    jobs: list[tuple[Any, Any]],
    base_jobs: list[tuple[Any, Any]],
    estimators: list[str] | None,
    rng: np.random.Generator,
    *,
    model: Any | None = None,
    models: dict[str, Any] | None = None,
    **kwargs: Any,
) -> list[tuple[str, Any]]:
    """(task description, Difference) for each task and estimator (default: the domain's own): the policy of
    ``jobs`` minus the policy of ``base_jobs`` on the same task, with a paired interval. ``mb``'s models are fitted
    once for all the tasks, or taken from ``models`` (see :func:`~decision_core.ope.task_models`)."""
    from decision_core.ope import compare_policies, default_estimator, task_models
    from decision_core.ope.estimators import NEEDS_DYNAMICS

    names = list(dict.fromkeys(estimators or [default_estimator(arrays)]))
    dynamics: list[Any] = [None] * len(jobs)
    if any(n in NEEDS_DYNAMICS for n in names):
        dynamics = task_models(arrays, [task for _, task in jobs], config=model, rng=rng, models=models)
    out = []
    for (policy, task), (base_policy, _), fitted in zip(jobs, base_jobs, dynamics, strict=True):
        for name in names:
            d = compare_policies(
                arrays, policy, base_policy, estimator=name, rng=rng, task=task, model=model, dynamics=fitted, **kwargs
            )
            out.append((task.description, d))
    return out


def ope_exploration(config: TrainConfig) -> Any | None:
    """The exploration OPE evaluates a model's policy under (``ope_epsilon``, ``ope_temperature``)."""
    from decision_core.algos import Exploration

    if config.ope_epsilon > 0 or config.ope_temperature is not None:
        return Exploration(epsilon=config.ope_epsilon, temperature=config.ope_temperature)
    return None


def run_ope(
    agent: Any,
    arrays: Any,
    config: TrainConfig,
    *,
    rng: np.random.Generator,
    estimators: tuple[str, ...] | list[str] | None,
    sim: Any | None = None,
    confidence: float = 0.9,
    refits: int = 0,
    models: dict[str, Any] | None = None,
) -> tuple[dict[str, float], list[Any]]:
    """OPE of the agent's served policy: on its reward task (``config.task``, by default the one it was trained
    on), or averaged over the evaluation goals. ``refits`` > 0
    takes fqe's and mb's intervals from that many models refitted on bootstrap resamples; ``models`` shares mb's
    fitted models between calls on the same arrays (see :func:`~decision_core.ope.evaluate_tasks`)."""
    from decision_core.ope import FQEConfig, ModelConfig, evaluate_tasks

    exploration = ope_exploration(config)
    fqe = FQEConfig(steps=config.fqe_steps)
    jobs: list[tuple[Any, Any]] = []
    task = config.task if config.task is not None else agent.task
    if agent.goal_conditioned:
        jobs = ope_jobs(agent, arrays, evaluation_goals(arrays.spec, config.goal_set, sim), None, exploration)
    elif task is not None or arrays.spec.reward is not None or arrays.has_rewards:
        jobs = ope_jobs(agent, arrays, [], task, exploration)
    else:  # e.g. behaviour cloning on logs without rewards: there is no task to estimate a value for
        console.print(
            f"[yellow]OPE skipped[/]: domain '{arrays.spec.name}' has no reward (no --task, no spec reward, no "
            f"logged rewards)"
        )
    reports = evaluate_tasks(
        arrays,
        jobs,
        rng=rng,
        estimators=estimators,
        model=ModelConfig(steps=config.model_steps, rollouts=config.model_rollouts),
        gamma=config.ope_gamma,
        fqe=fqe,
        max_episodes=config.ope_episodes,
        confidence=confidence,
        fqe_refits=refits,
        model_refits=refits,
        models=models,
    )
    sums: dict[str, list[float]] = defaultdict(list)
    for report in reports:
        for key, value in report.metrics().items():
            sums[key].append(value)
    # Over several goals the figures are mean success rates (interval bounds averaged too).
    return {k: float(np.mean(v)) for k, v in sums.items()}, reports


def run_simulator_eval(agent: Any, sim: Any, config: TrainConfig) -> dict[str, float]:
    """The agent's greedy policy in the domain's simulator, as ``eval/...`` metrics.

    A goal-conditioned agent pursues the simulator's goals (``config.goal_set``'s only, when named) and runs the
    reward task. A reward agent runs the reward task only (goal success says nothing of a policy that pursues no
    goal), its returns scored under its task (``config.task``, by default the one it was trained on): the
    simulator's own reward, with the normalised score, or an expression computed on the simulated transitions,
    without one (see :func:`decision_core.envs.evaluate.evaluate_policies`)."""
    from decision_core.envs.evaluate import LearnedPolicy, evaluate

    if agent.goal_conditioned:
        goals, reward = simulator_goals(sim, agent.spec, config.goal_set), None
    else:
        goals, reward = [], config.task if config.task is not None else agent.task
    report = evaluate(
        sim,
        LearnedPolicy(agent),
        name="learned",
        episodes=config.eval_episodes,
        seed=config.seed,
        goals=goals,
        reward=reward,
    )
    return report.metrics("learned", prefix="eval/")


def evaluation_metrics(
    config: TrainConfig, arrays: Any, agent_cls: Any, sim: Any | None, task: str | None
) -> tuple[set[str], dict[str, str]]:
    """The metrics a periodic evaluation of this run can log (what ``keep`` may pick by), and why some others
    that look alike cannot be (a name or prefix -> the reason); ``task`` is the run's (:func:`training_task`)."""
    from decision_core.ope import supported_estimators

    def spread(name: str) -> set[str]:
        return {name, f"{name}_low", f"{name}_high"}

    names: set[str] = set()
    why: dict[str, str] = {}
    if sim is None:
        why["eval/"] = f"domain '{config.domain}' has no simulator, so no evaluation logs eval/ figures"
    elif agent_cls.goal_conditioned:
        goals = simulator_goals(sim, arrays.spec, config.goal_set)
        names |= spread("eval/success_rate") | spread("eval/return") | spread("eval/normalised_score")
        names |= {"eval/steps_to_goal", *(f"eval/success/{g.name}" for g in goals)}
        if any(g.hard for g in goals):
            names.add("eval/hard_success_rate")
    else:
        from decision_core.envs.evaluate import task_reward

        names |= spread("eval/return")
        if task_reward(sim, task) is None:
            names |= spread("eval/normalised_score")
        else:
            why["eval/normalised_score"] = (
                f"the reward task '{task}' is not the simulator's own, so the oracle anchors no normalised score"
            )
        why["eval/success"] = f"a reward agent ({config.algo}) pursues no goal: its evaluation logs no goal success"
        why["eval/hard_success_rate"] = why["eval/steps_to_goal"] = why["eval/success"]
    if agent_cls.goal_conditioned:
        scored = bool(evaluation_goals(arrays.spec, config.goal_set, sim))
    else:
        scored = task is not None or arrays.spec.reward is not None or arrays.has_rewards
    if not scored:
        why["ope/"] = f"domain '{config.domain}' has no task to estimate a value for (no reward, no goals)"
        return names, why
    # The served policy has a probability for every action when it is discrete, or continuous with exploration.
    usable, skipped = supported_estimators(
        arrays, None, stochastic=arrays.spec.discrete or ope_exploration(config) is not None
    )
    for name in usable:
        names |= {f"ope/{name}", f"ope/{name}/ci_low", f"ope/{name}/ci_high", f"ope/{name}/ess"}
    why |= {f"ope/{name}": reason for name, reason in skipped.items()}
    why["ope/behaviour"] = "ope/behaviour is the logged policy's value, the same whatever the weights"
    return names, why


def check_keep_metric(
    config: TrainConfig, arrays: Any, agent_cls: Any, sim: Any | None, task: str | None
) -> set[str] | None:
    """Refuse, before training, a ``keep`` metric that no evaluation of this run can log, with the closest one
    that it can; returns the names it can log (None when the run keeps the last weights)."""
    metric = keep_metric(config, arrays)
    if metric is None:
        return None
    known, why = evaluation_metrics(config, arrays, agent_cls, sim, task)
    if metric in known:
        return known
    reason = next((r for prefix, r in sorted(why.items(), key=lambda kv: -len(kv[0])) if metric.startswith(prefix)), "")
    close = difflib.get_close_matches(metric, sorted(known), n=1, cutoff=0.6)
    raise TrainingError(
        f"keep = 'best:{metric}' cannot pick the weights: {reason or f'no evaluation of this run logs {metric!r}'}"
        + (f"; did you mean 'best:{close[0]}'?" if close else ".")
        + f" Its evaluations log: {', '.join(sorted(known)) or 'nothing'}"
    )


# -- checkpoints -----------------------------------------------------------------------------------------------------
CHECKPOINT_ARTIFACT = "checkpoint"
#: The best evaluated weights so far of a run that keeps the best, beside the checkpoint.
KEPT_FILE = "kept.pt"
#: Run tags: the steps the run trains to (its "steps" param, immutable in MLflow, keeps the first target), and the
#: steps it was resumed from, comma-separated.
STEPS_TAG = "decision_core.steps"
RESUMED_TAG = "decision_core.resumed_from_steps"


def _generators(agent: Any, sampler: Any) -> dict[str, torch.Generator]:
    gens = {"agent": agent.generator}
    if isinstance(getattr(sampler, "generator", None), torch.Generator):
        gens["sampler"] = sampler.generator
    return gens


def save_checkpoint(
    directory: Path, agent: Any, sampler: Any, step: int, history: dict[str, list], kept: _BestWeights | None = None
) -> Path:
    """Write agent + optimiser + RNG state + step atomically (a crash mid-write keeps the previous one), and the
    best weights so far when the run keeps the best (so a resumed run still compares with them)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ckpt-", dir=directory.parent))
    agent.save(tmp / "agent")
    torch.save({k: g.get_state() for k, g in _generators(agent, sampler).items()}, tmp / "rng.pt")
    if kept is not None and kept.step is not None:
        torch.save(kept.state_dict(), tmp / KEPT_FILE)
    (tmp / "trainer.json").write_text(json.dumps({"step": step, "history": history}))
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def _restore(
    directory: Path, agent_cls: Any, sampler_factory: Any
) -> tuple[Any, Any, int, dict[str, list], dict[str, Any] | None]:
    agent = agent_cls.load(directory / "agent")
    sampler = sampler_factory(agent)
    state = torch.load(directory / "rng.pt", weights_only=True)
    for k, g in _generators(agent, sampler).items():
        if k in state:
            g.set_state(state[k])
    meta = json.loads((directory / "trainer.json").read_text())
    kept_file = directory / KEPT_FILE
    kept = torch.load(kept_file, weights_only=True, map_location="cpu") if kept_file.exists() else None
    return agent, sampler, int(meta["step"]), meta.get("history", {}), kept


def _fetch_checkpoint(run_id: str, settings: CoreSettings, local: Path) -> Path:
    if (local / "trainer.json").exists():
        return local
    from decision_core.training.models import download_dir

    try:
        dst = Path(tempfile.mkdtemp(prefix="decision-core-resume-"))
        return download_dir(f"runs:/{run_id}/{CHECKPOINT_ARTIFACT}", dst, settings)
    except Exception as exc:
        raise TrainingError(
            f"run {run_id} has no checkpoint to resume from (not at {local} nor in its artifacts): {exc}"
        ) from None


def config_of_run(run_id: str, settings: CoreSettings | None = None) -> TrainConfig:
    """The config a run was started with (its ``config.json`` artifact)."""
    from decision_core.training.models import download_dir

    settings = settings or CoreSettings()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = download_dir(f"runs:/{run_id}/config.json", tmp, settings)
            data = json.loads(Path(path).read_text())
    except Exception as exc:
        raise TrainingError(f"cannot read the config of run {run_id} from {settings.mlflow_uri}: {exc}") from None
    return TrainConfig.from_dict(data, source=f"run {run_id} config.json")


# -- the loop ----------------------------------------------------------------------------------------------------------
@contextmanager
def _progress(enabled: bool, total: int, start: int) -> Iterator[tuple[Progress | None, Any]]:
    if not enabled:
        yield None, None
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[losses]}"),
        console=console,
    )
    with progress:
        task = progress.add_task("training", total=total, completed=start, losses="")
        yield progress, task


def _fmt(metrics: dict[str, float], limit: int = 4) -> str:
    keys = [k for k in metrics if k.endswith("loss")][:limit] or list(metrics)[:limit]
    return "  ".join(f"{k}={metrics[k]:.4g}" for k in keys)


def train(
    config: TrainConfig,
    settings: CoreSettings | None = None,
    *,
    progress: bool = True,
    arrays: Any | None = None,
    resume: str | None = None,
) -> TrainResult:
    """Train ``config.algo`` on ``config.domain`` as one MLflow run; see the module docstring.

    ``arrays`` skips the store read (e.g. a server fine-tuning on data it holds); ``resume`` continues the run
    with that id from its last checkpoint up to ``config.steps``.
    """
    from decision_core.algos import ALGORITHMS, configure_torch_threads, create_agent
    from decision_core.data import FeatureStats, OfflineDataset

    settings = settings or CoreSettings()
    agent_cls = ALGORITHMS.get(config.algo)  # unknown names list the known ones
    agent_cls.config_class.from_dict(config.agent)  # a config error surfaces before any data is read
    ctx = dist_utils.from_env(config.device)
    configure_torch_threads()
    finished = False
    try:
        if arrays is None:
            arrays = load_domain(config, settings)
        if arrays.spec.name != config.domain:
            raise SpecError(f"the data is of domain '{arrays.spec.name}', the config asks for '{config.domain}'")
        sim = _simulator(config.domain)
        if config.goal_set is not None:  # an unknown goal set stops the run here, not at its first evaluation
            evaluation_goals(arrays.spec, config.goal_set, sim)
        task = training_task(agent_cls, config, arrays)
        # As an unknown goal set: a keep metric no evaluation logs stops the run before the first step.
        known_metrics = check_keep_metric(config, arrays, agent_cls, sim, task)
        stats = FeatureStats.compute(arrays.states, arrays.spec)  # from all data, so every rank normalises alike
        shard = arrays
        if ctx.enabled:
            shard = arrays.select_episodes(dist_utils.shard_episodes(arrays.n_episodes, ctx, config.seed))
        dataset = OfflineDataset(shard, rewards=_training_rewards(agent_cls, shard, task))
        if ctx.enabled:
            dataset.stats = stats

        def make_sampler(agent: Any) -> Any:
            return agent.sampler(dataset, seed=config.seed + 7919 * (ctx.rank + 1))

        run_id = resume
        local_ckpt = (settings.home / "checkpoints" / (run_id or "pending") / "latest").resolve()
        start = 0
        history: dict[str, list] = defaultdict(list)
        kept_state = None
        if resume is not None:
            agent, sampler, start, loaded, kept_state = _restore(
                _fetch_checkpoint(resume, settings, local_ckpt), agent_cls, make_sampler
            )
            history.update(loaded)
            if start >= config.steps:
                raise TrainingError(f"run {resume} already trained {start} steps; pass a larger --steps to continue it")
            _resume_task(agent, task, resume)
        else:
            agent_config = dict(config.agent)
            if task is not None and "reward" in {f.name for f in fields(agent_cls.config_class)}:
                agent_config["reward"] = task  # the agent records its task (a third party's may have no field)
            agent = create_agent(config.algo, arrays.spec, stats, agent_config, seed=config.seed)
            if ctx.enabled:  # like the feature statistics, the reward scale comes from all the data
                all_rewards = _training_rewards(agent_cls, arrays, task)
                if all_rewards is not None:
                    agent.fit_reward_scale(all_rewards)
            sampler = make_sampler(agent)
        agent.to(ctx.device).set_precision(config.precision)
        if ctx.enabled:
            dist_utils.data_parallel(agent)
        tracker = _Tracker(config, settings, arrays, ctx, resume, start) if ctx.is_main else None
        run_id = dist_utils.broadcast_object(tracker.run_id if tracker else None, ctx)
        try:
            result = _loop(
                config, settings, ctx, agent, sampler, arrays, tracker, run_id, start, history, progress, kept_state,
                sim if ctx.is_main else None, known_metrics,
            )  # fmt: skip
        except BaseException as exc:
            if tracker is not None:
                tracker.close(failed=True, reason=str(exc)[:500])
            raise
        finished = True
        return result
    finally:
        dist_utils.shutdown(ctx, wait=finished)


def _resume_task(agent: Any, task: str | None, run_id: str) -> None:
    """Refuse to resume an agent on a reward task other than the one it was trained on; record the task on one
    saved before agents recorded it."""
    if agent.goal_conditioned or task is None or not hasattr(agent.config, "reward"):
        return
    if agent.task is None:
        agent.config = agent.config.replace(reward=task)
    elif agent.task.strip() != task.strip():
        raise TrainingError(
            f"run {run_id} trained its agent on reward task '{agent.task}'; resuming it on '{task}' would change "
            f"the objective mid-run. Resume without --task, or train a new run on the new task"
        )


def _loop(
    config: TrainConfig,
    settings: CoreSettings,
    ctx: dist_utils.DistContext,
    agent: Any,
    sampler: Any,
    arrays: Any,
    tracker: _Tracker | None,
    run_id: str | None,
    start: int,
    history: dict[str, list],
    show_progress: bool,
    kept_state: dict[str, Any] | None = None,
    sim: Any | None = None,
    known_metrics: set[str] | None = None,
) -> TrainResult:
    batch_size = int(agent.config.batch_size)
    ckpt_dir = (settings.home / "checkpoints" / str(run_id) / "latest").resolve()
    rng = np.random.default_rng([config.seed, 1])
    if tracker is not None and start == 0:
        save_checkpoint(ckpt_dir, agent, sampler, 0, history)  # a good state to fall back on from the start
        last_good = 0
    else:
        last_good = start
    window: dict[str, list[float]] = defaultdict(list)
    latest: dict[str, float] = {}
    keeper = None
    metric = keep_metric(config, arrays)
    if tracker is not None and metric:
        keeper = _BestWeights(metric, expected=metric in (known_metrics or ()))
        if kept_state is not None and kept_state["metric"] == metric:
            keeper.load_state_dict(kept_state, agent.device)  # a resumed run compares with the best before it
    started = time.perf_counter()
    with _progress(show_progress and ctx.is_main, config.steps, start) as (progress, task):
        for step in range(start + 1, config.steps + 1):
            metrics = agent.update(sampler.sample(batch_size).to(ctx.device))
            finite = all(math.isfinite(v) for v in metrics.values())
            if not dist_utils.all_agree(finite, ctx):
                bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
                message = (
                    f"training diverged at step {step}: non-finite {bad or 'loss on another process'}. "
                    f"Stopped; the last good checkpoint (step {last_good}) is kept at {ckpt_dir}"
                    + (f" and in run {run_id}" if run_id else "")
                    + "; lower agent.lr or check the rewards, then resume with --resume "
                    + str(run_id)
                )
                if tracker is not None:
                    tracker.close(failed=True, reason=message)
                raise TrainingDiverged(message, run_id=run_id, step=step, checkpoint=ckpt_dir)
            for k, v in metrics.items():
                window[k].append(v)
            if progress is not None:
                progress.update(task, advance=1, losses=_fmt(metrics))
            if tracker is not None and (step % config.log_every == 0 or step == config.steps):
                means = {k: float(np.mean(v)) for k, v in window.items()}
                means["perf/steps_per_s"] = (step - start) / max(time.perf_counter() - started, 1e-9)
                tracker.log(means, step, history)
                latest.update(means)
                window.clear()
            periodic_eval = config.eval_every and step % config.eval_every == 0 and step != config.steps
            if tracker is not None and periodic_eval:
                evaluated = tracker.evaluate(agent, arrays, rng, sim, step, history, final=False)
                latest.update(evaluated)
                if keeper is not None:
                    keeper.offer(agent, step, evaluated)
            if tracker is not None and (
                periodic_eval or (config.checkpoint_every and step % config.checkpoint_every == 0)
            ):
                save_checkpoint(ckpt_dir, agent, sampler, step, history, keeper)
                tracker.log_checkpoint(ckpt_dir)
                last_good = step
        dist_utils.release(agent)
    if tracker is None:  # other ranks: rank 0 logs and registers
        dist_utils.barrier(ctx)
        return TrainResult(run_id, None, None, None, [], {}, config.steps, None, rank=ctx.rank)
    save_checkpoint(ckpt_dir, agent, sampler, config.steps, history, keeper)
    tracker.log_checkpoint(ckpt_dir)
    final = tracker.evaluate(agent, arrays, rng, sim, config.steps, history, final=True)
    latest.update(final)
    kept: int | None = None
    if keeper is not None:
        keeper.offer(agent, config.steps, final)
        kept = keeper.step
        tracker.mlflow.set_tags({"decision_core.kept_step": str(kept), "decision_core.kept_by": f"best:{metric}"})
        if kept == config.steps:
            # The checkpoint was written before this evaluation, holding an earlier best: the last step beat it.
            partial = ckpt_dir / (KEPT_FILE + ".tmp")
            torch.save(keeper.state_dict(), partial)
            partial.replace(ckpt_dir / KEPT_FILE)
            tracker.mlflow.log_artifact(str(ckpt_dir / KEPT_FILE), CHECKPOINT_ARTIFACT)
        else:
            # The logged model is the best evaluation's weights; its full evaluation (OPE reports included) is
            # logged under "kept/" so the run's curves keep the last weights' figures at the last step.
            keeper.restore(agent)
            console.print(f"keeping the weights of step {kept} (best:{metric} = {keeper.value:.4g})")
            kept_eval = tracker.evaluate(agent, arrays, rng, sim, config.steps, history, final=True, prefix="kept/")
            latest.update({f"kept/{k}": v for k, v in kept_eval.items()})  # as logged: the plain names stay the last's
    result = tracker.finish(
        agent, history, latest, ckpt_dir, kept_step=kept, kept_by=metric if kept is not None else None
    )
    dist_utils.barrier(ctx)
    return result


def keep_metric(config: TrainConfig, arrays: Any) -> str | None:
    """The logged metric that picks the kept weights: ``config.keep_metric``, with ``"ope"`` read as the domain's
    own estimator's value (``"ope/mb"`` on a domain judged by ``mb``)."""
    from decision_core.ope import default_estimator

    metric = config.keep_metric
    return f"ope/{default_estimator(arrays)}" if metric == KEEP_BY_JUDGE else metric


def periodic_estimators(config: TrainConfig, arrays: Any) -> tuple[str, ...]:
    """The OPE estimators of the periodic evaluations: ``ope_periodic``, or by default the cheap ones
    (:data:`PERIODIC_ESTIMATORS`, FQE where the logs lack propensities) and the domain's own estimator unless it
    fits a Q model per policy (mb's dynamics model is fitted once per run, see :class:`_Tracker`). The estimator
    that ``keep`` picks by always runs."""
    from decision_core.ope import default_estimator, weighs_by_default
    from decision_core.ope.estimators import NEEDS_Q_MODEL

    if config.ope_periodic is not None:
        names = list(config.ope_periodic)
    else:
        names = list(PERIODIC_ESTIMATORS if weighs_by_default(arrays) else ("fqe",))
        judge = default_estimator(arrays)
        if judge not in NEEDS_Q_MODEL:
            names.append(judge)
    return _with_keep_estimator(names, config, arrays)


def final_estimators(config: TrainConfig, arrays: Any) -> tuple[str, ...] | None:
    """The OPE estimators of the final evaluation: ``ope_estimators`` (None: every one the data supports), with
    the estimator ``keep`` picks by, which the final evaluation is offered to the keeper on."""
    if config.ope_estimators is None:
        return None
    return _with_keep_estimator(list(config.ope_estimators), config, arrays)


def _with_keep_estimator(names: list[str], config: TrainConfig, arrays: Any) -> tuple[str, ...]:
    from decision_core.ope.estimators import ESTIMATORS

    metric = keep_metric(config, arrays)
    if metric is not None and metric.startswith("ope/") and metric.split("/")[1] in ESTIMATORS:
        names = [*names, metric.split("/")[1]]
    return tuple(dict.fromkeys(names))


class _BestWeights:
    """The weights of the evaluation with the highest ``metric`` so far (a copy, on the networks' device).

    ``expected``: the metric is one the evaluations log (checked before training), so an evaluation without it
    left out a figure it could not compute (e.g. steps to a goal no episode reached), which counts as NaN; else
    its absence is an error (the check is the fallback for runs that could not be checked)."""

    def __init__(self, metric: str, *, expected: bool = False) -> None:
        self.metric = metric
        self.expected = expected
        self.value = -math.inf
        self.step: int | None = None
        self._weights: dict[str, torch.Tensor] | None = None

    def offer(self, agent: Any, step: int, metrics: dict[str, float]) -> None:
        if self.metric not in metrics and not self.expected:
            close = difflib.get_close_matches(self.metric, sorted(metrics), n=1, cutoff=0.6)
            raise TrainingError(
                f"keep = 'best:{self.metric}', but the evaluation logs no '{self.metric}'"
                + (f"; did you mean 'best:{close[0]}'?" if close else "")
                + f" It logs {', '.join(sorted(metrics)) or 'nothing'}"
            )
        value = metrics.get(self.metric, math.nan)
        score = value if math.isfinite(value) else -math.inf  # a NaN estimate never beats a number
        if self.step is None or score > self.value:
            self.value, self.step = score, step
            self._weights = {k: v.detach().clone() for k, v in agent.nets.state_dict().items()}

    def restore(self, agent: Any) -> None:
        assert self._weights is not None
        agent.nets.load_state_dict(self._weights)

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "step": self.step, "value": self.value, "weights": self._weights}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.step, self.value = int(state["step"]), float(state["value"])
        self._weights = {k: v.to(device) for k, v in state["weights"].items()}


class _Tracker:
    """Rank 0's MLflow run: params, metrics, artifacts, evaluation, model registration."""

    def __init__(
        self,
        config: TrainConfig,
        settings: CoreSettings,
        arrays: Any,
        ctx: dist_utils.DistContext,
        resume: str | None,
        start: int = 0,
    ) -> None:
        import mlflow

        from decision_core.training.models import configure_tracking, ensure_experiment

        self.config, self.settings, self.ctx = config, settings, ctx
        configure_tracking(settings)
        self.mlflow = mlflow
        self.client = mlflow.MlflowClient()
        if resume is not None:
            try:
                self.client.get_run(resume)
            except Exception:
                raise TrainingError(f"no run '{resume}' in {settings.mlflow_uri} to resume") from None
            self.run = mlflow.start_run(run_id=resume)
            # Params cannot change: the run's "steps" param keeps the first target. The tags say how far it goes now
            # and from which steps it was resumed (each resume appended).
            before = self.client.get_run(resume).data.tags.get(RESUMED_TAG)
            mlflow.set_tags({RESUMED_TAG: ",".join(filter(None, (before, str(start))))})
        else:
            exp_id = ensure_experiment(config.experiment_name, settings)
            self.run = mlflow.start_run(experiment_id=exp_id, run_name=config.run_name)
        self.run_id = self.run.info.run_id
        self.ope_reports: list[Any] = []
        #: mb's fitted models by task: the dynamics do not depend on the policy, so every evaluation shares them.
        self.ope_models: dict[str, Any] = {}
        if resume is None:
            params = {**config.flat_params(), **fingerprint(arrays, settings), "dist.world_size": str(ctx.world_size)}
            mlflow.log_params(params)
            mlflow.set_tags({"decision_core.domain": config.domain, "decision_core.algo": config.algo})
            with tempfile.TemporaryDirectory() as tmp:
                d = Path(tmp)
                (d / "config.json").write_text(config.to_json())
                (d / "spec.json").write_text(arrays.spec.to_json())
                (d / "dataset.json").write_text(json.dumps(fingerprint(arrays, settings), indent=2))
                mlflow.log_artifacts(str(d))
        mlflow.set_tag(STEPS_TAG, str(config.steps))
        self._agent_params_logged = resume is not None

    def log(self, metrics: dict[str, float], step: int, history: dict[str, list]) -> None:
        clean = {k: v for k, v in metrics.items() if math.isfinite(v)}
        self.mlflow.log_metrics(clean, step=step)
        for k, v in clean.items():
            history.setdefault(k, []).append((step, v))

    def log_checkpoint(self, directory: Path) -> None:
        self.mlflow.log_artifacts(str(directory), CHECKPOINT_ARTIFACT)

    def evaluate(
        self,
        agent: Any,
        arrays: Any,
        rng: np.random.Generator,
        sim: Any,
        step: int,
        history: dict,
        *,
        final: bool,
        prefix: str = "",
    ) -> dict[str, float]:
        """Simulator and OPE figures of the agent's policy, logged at ``step`` (names under ``prefix``) and
        returned without the prefix."""
        metrics: dict[str, float] = {}
        if sim is not None:
            metrics.update(run_simulator_eval(agent, sim, self.config))
        estimators = final_estimators(self.config, arrays) if final else periodic_estimators(self.config, arrays)
        refits = self.config.ope_refits if final else 0
        ope_metrics, reports = run_ope(
            agent, arrays, self.config, rng=rng, estimators=estimators, sim=sim, refits=refits, models=self.ope_models
        )
        metrics.update(ope_metrics)
        if final:
            self.ope_reports = reports
        self.log({prefix + k: v for k, v in metrics.items()}, step, history)
        return metrics

    def finish(
        self,
        agent: Any,
        history: dict[str, list],
        latest: dict[str, float],
        ckpt: Path,
        *,
        kept_step: int | None = None,
        kept_by: str | None = None,
    ) -> TrainResult:
        from decision_core.training import plots
        from decision_core.training.models import log_agent_model, promote_new_version

        mlflow = self.mlflow
        if not self._agent_params_logged:
            mlflow.log_params({f"agent_config.{k}": json.dumps(v) for k, v in agent.config.to_dict().items()})
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            (d / "stats.json").write_text(json.dumps(agent.stats.to_dict(), indent=2))
            (d / "agent_config.json").write_text(agent.config.to_json())
            (d / "ope.json").write_text(json.dumps([r.to_dict() for r in self.ope_reports], indent=2))
            plots.learning_curves(
                history, d / "learning_curves.png", title=f"{self.config.algo} on {self.config.domain}"
            )
            if self.ope_reports:
                steps = self.config.steps
                title = f"OPE of the last weights (step {steps})"
                if kept_step is not None:
                    title = f"OPE of the kept weights (step {kept_step} of {steps}, best:{kept_by})"
                plots.ope_estimates(self.ope_reports, d / "ope.png", title=title)
            mlflow.log_artifacts(str(d))
        name = self.config.registered_name if self.config.register else None
        logged = log_agent_model(agent, registered_name=name)
        aliases: list[str] = []
        if logged.version is not None and name is not None:
            aliases = promote_new_version(name, logged.version, self.settings)
            mlflow.set_tags({"decision_core.model_version": logged.version, "decision_core.aliases": ",".join(aliases)})
        self.close(failed=False)
        return TrainResult(
            run_id=self.run_id,
            model_uri=logged.model_uri,
            registered_name=name,
            registered_version=logged.version,
            aliases=aliases,
            metrics=dict(latest),
            steps=self.config.steps,
            checkpoint=ckpt,
            ope=[r.to_dict() for r in self.ope_reports],
            kept_step=kept_step,
            kept_by=None if kept_by is None else f"best:{kept_by}",
        )

    def close(self, *, failed: bool, reason: str = "") -> None:
        if self.mlflow.active_run() is None:
            return
        if failed:
            self.mlflow.set_tag("decision_core.failure", reason)
        self.mlflow.end_run(status="FAILED" if failed else "FINISHED")
