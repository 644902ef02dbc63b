"""What a run is judged by: a reward model's task (recorded with it, used by OPE, selection and the simulator),
the goal set of the simulator evaluation, and the keep metric (checked before training)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from decision_core.cli import app
from decision_core.errors import DecisionCoreError
from decision_core.settings import CoreSettings
from decision_core.training import TrainConfig, load_agent_from_uri, select_champion, train
from decision_core.training.loop import TrainingError, load_domain, run_ope
from decision_core.training.models import configure_tracking

from .conftest import INVENTORY_TINY

#: The audit's custom inventory task: holding cost and stockouts, not the simulator's own reward.
HOLDING = "-(next.on_hand)*0.1 - 5*next.stockout"
#: A chain task other than the logged reward: how far right the walker got.
RIGHTWARD = "next.x - x"


def _inventory(settings: CoreSettings, inventory_store: Path) -> CoreSettings:
    return settings.model_copy(update={"db": inventory_store})


def _runs(settings: CoreSettings) -> list:
    configure_tracking(settings)
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def test_a_reward_model_records_its_task_and_ope_and_select_judge_it_by_it(
    settings: CoreSettings, tiny: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = train(TrainConfig(domain="chain", algo="iql", task=RIGHTWARD, **tiny), settings, progress=False)
    assert result.ope[0]["task"] == f"reward: {RIGHTWARD}"
    # The logged resolved config states the task and the fitted reward scale, not null.
    params = mlflow.MlflowClient().get_run(result.run_id).data.params
    assert json.loads(params["agent_config.reward"]) == RIGHTWARD
    assert json.loads(params["agent_config.reward_scale"]) > 0
    agent, _ = load_agent_from_uri("models:/chain@candidate", settings)
    assert agent.task == RIGHTWARD
    assert agent.config.reward_scale == pytest.approx(float(agent.nets["reward_scale"].scale))

    # Training's OPE helper, `ope` and `select` default to the model's task; an explicit --task still overrides.
    arrays = load_domain(TrainConfig(domain="chain", algo="iql"), settings)
    _, reports = run_ope(
        agent, arrays, TrainConfig(domain="chain", algo="iql"), rng=np.random.default_rng(0), estimators=["snips"]
    )
    assert reports[0].task == f"reward: {RIGHTWARD}"
    monkeypatch.setenv("DECISION_CORE_HOME", str(settings.home))
    ope = ["ope", "--domain", "chain", "--model", "models:/chain@candidate", "--estimator", "snips", "--json"]
    for extra, task in (([], RIGHTWARD), (["--task", "logged"], "logged")):
        r = CliRunner().invoke(app, [*ope, *extra, "--db", str(settings.db_path)])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["reports"][0]["task"] == f"reward: {task}"
    selection = select_champion("chain", settings=settings, max_episodes=150, move_alias=False)
    assert selection.task == f"reward: {RIGHTWARD}"


def test_select_refuses_candidates_trained_on_different_tasks_unless_one_is_named(
    settings: CoreSettings, tiny: dict
) -> None:
    base = TrainConfig(domain="chain", algo="iql", **{**tiny, "steps": 10, "log_every": 10})
    train(base, settings, progress=False)  # the domain's own reward: the logged one
    rightward = train(base.replace(task=RIGHTWARD), settings, progress=False)
    with pytest.raises(DecisionCoreError, match=rf"different reward tasks.*v1: 'logged'; v2: '{RIGHTWARD}'"):
        select_champion("chain", settings=settings, max_episodes=150)
    named = select_champion("chain", settings=settings, max_episodes=150, task="logged", move_alias=False)
    assert named.task == "reward: logged" and len(named.candidates) == 2
    # Named runs leave out a champion trained on another task (noted), rather than compare returns across tasks.
    only = select_champion("chain", settings=settings, max_episodes=150, run_ids=[str(rightward.run_id)])
    assert any("trained on reward task 'logged'" in n for n in only.notes), only.notes
    assert [c.version for c in only.candidates] == ["2"]


def test_a_run_may_not_name_two_tasks_nor_resume_on_another(settings: CoreSettings, tiny: dict) -> None:
    cfg = TrainConfig(domain="chain", algo="iql", task=RIGHTWARD, register=False, **tiny)
    with pytest.raises(DecisionCoreError, match="'task' .* and 'agent.reward' .* name different reward tasks"):
        train(cfg.replace(agent={**cfg.agent, "reward": "logged"}), settings, progress=False)
    first = train(cfg, settings, progress=False)
    with pytest.raises(TrainingError, match=f"trained its agent on reward task '{RIGHTWARD}'; resuming it on 'logged'"):
        train(cfg.replace(steps=60, task="logged"), settings, progress=False, resume=first.run_id)


def test_the_simulator_scores_a_reward_model_under_its_task(
    settings: CoreSettings, inventory_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from decision_core.envs import get_simulator
    from decision_core.envs.evaluate import LearnedPolicy, evaluate

    inventory = _inventory(settings, inventory_store)
    cfg = TrainConfig(domain="inventory", algo="iql", task=HOLDING, **INVENTORY_TINY)
    result = train(cfg, inventory, progress=False)
    evaluated = {k for k in result.metrics if k.startswith("eval/")}
    # Returns only: a reward model pursues no goal, and the oracle, which pursues the simulator's own reward,
    # anchors no normalised score under another task.
    assert evaluated == {"eval/return", "eval/return_low", "eval/return_high"}
    agent, _ = load_agent_from_uri("models:/inventory@candidate", inventory)
    sim = get_simulator("inventory")
    under_task = evaluate(sim, LearnedPolicy(agent), episodes=3, seed=cfg.seed, goals=[], reward=HOLDING)
    own = evaluate(sim, LearnedPolicy(agent), episodes=3, seed=cfg.seed, goals=[])
    assert result.metrics["eval/return"] == pytest.approx(under_task.policies["learned"].returns.mean)
    assert result.metrics["eval/return"] != pytest.approx(own.policies["learned"].returns.mean)
    # `ope` on the registered model evaluates the task it was trained on (the audit saw "reward: logged").
    monkeypatch.setenv("DECISION_CORE_HOME", str(settings.home))
    r = CliRunner().invoke(
        app,
        ["ope", "--domain", "inventory", "--model", "models:/inventory@candidate", "--estimator", "fqe",
         "--fqe-steps", "20", "--episodes", "20", "--db", str(inventory_store)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert f"reward: {HOLDING}" in " ".join(r.output.split())

    # On the domain's own reward the normalised score is there (what docs/algorithms.md keeps by).
    own_run = train(cfg.replace(task=None, register=False), inventory, progress=False)
    assert {"eval/return", "eval/normalised_score"} <= set(own_run.metrics)
    assert not any(k.startswith(("eval/success", "eval/hard", "eval/steps")) for k in own_run.metrics)


def test_the_simulator_evaluation_pursues_the_goal_set_only(settings: CoreSettings, inventory_store: Path) -> None:
    cfg = TrainConfig(domain="inventory", algo="gcbc", goal_set="restock_40", register=False, **INVENTORY_TINY)
    result = train(cfg, _inventory(settings, inventory_store), progress=False)
    per_goal = {k for k in result.metrics if k.startswith("eval/success/")}
    assert per_goal == {"eval/success/restock_40"}
    assert result.metrics["eval/success_rate"] == result.metrics["eval/success/restock_40"]


def test_a_keep_metric_no_evaluation_logs_is_refused_before_training(
    settings: CoreSettings, inventory_store: Path, tiny: dict
) -> None:
    inventory = _inventory(settings, inventory_store)
    long = {**INVENTORY_TINY, "steps": 1_000_000, "eval_every": 300}  # would not finish in the test
    misspelt = TrainConfig(domain="inventory", algo="iql", keep="best:eval/normalized_score", **long)
    with pytest.raises(TrainingError, match="did you mean 'best:eval/normalised_score'"):
        train(misspelt, inventory, progress=False)
    custom = misspelt.replace(keep="best:eval/normalised_score", task=HOLDING)
    with pytest.raises(TrainingError, match="is not the simulator's own, so the oracle anchors no normalised score"):
        train(custom, inventory, progress=False)
    goals = TrainConfig(domain="inventory", algo="gcbc", keep="best:eval/success/restock40", **long)
    with pytest.raises(TrainingError, match="did you mean 'best:eval/success/restock_40'"):
        train(goals, inventory, progress=False)
    chain = TrainConfig(
        domain="chain", algo="iql", keep="best:ope/snip", **{**tiny, "steps": 1_000_000, "eval_every": 300}
    )
    with pytest.raises(TrainingError, match="no evaluation of this run logs 'ope/snip'; did you mean 'best:ope/snips'"):
        train(chain, settings, progress=False)
    with pytest.raises(TrainingError, match="ope/behaviour is the logged policy's value"):
        train(chain.replace(keep="best:ope/behaviour"), settings, progress=False)
    assert not _runs(inventory) and not _runs(settings)  # nothing trained, no run started
