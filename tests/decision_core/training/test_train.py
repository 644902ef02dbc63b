"""End-to-end training runs against the embedded sqlite MLflow store and a real DuckDB store."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner, Result

from decision_core.cli import app
from decision_core.errors import SpecError
from decision_core.schema import SCHEMA_VERSION
from decision_core.settings import CoreSettings
from decision_core.training import TrainConfig, load_agent_from_uri, train
from decision_core.training.loop import TrainingDiverged, TrainingError
from decision_core.training.models import CANDIDATE, CHAMPION, alias_version, configure_tracking


def _client(settings: CoreSettings) -> mlflow.MlflowClient:
    configure_tracking(settings)
    return mlflow.MlflowClient()


def test_a_run_logs_everything_and_registers_the_model(settings: CoreSettings, tiny: dict) -> None:
    cfg = TrainConfig(domain="chain", algo="iql", eval_every=20, **tiny)
    result = train(cfg, settings, progress=False)
    c = _client(settings)
    run = c.get_run(result.run_id)
    params = run.data.params
    assert params["algo"] == "iql" and params["agent.batch_size"] == "32"
    assert int(params["data.steps"]) > 300
    assert params["data.episodes"] == "300" and params["data.schema_version"] == str(SCHEMA_VERSION)
    assert params["data.store"] == str(settings.db_path.resolve())
    assert run.info.status == "FINISHED"
    losses = c.get_metric_history(result.run_id, "critic/loss")
    assert [m.step for m in losses] == [10, 20, 30, 40]
    assert [m.step for m in c.get_metric_history(result.run_id, "ope/snips")] == [20, 40]
    assert {"ope/fqe", "ope/wdr", "ope/dr", "ope/ips", "ope/pdwis"} <= set(run.data.metrics)
    artifacts = {a.path for a in c.list_artifacts(result.run_id)}
    assert {"config.json", "spec.json", "stats.json", "dataset.json", "learning_curves.png", "ope.png"} <= artifacts
    assert {"checkpoint"} <= artifacts
    config_path = mlflow.artifacts.download_artifacts(
        run_id=result.run_id, artifact_path="config.json", tracking_uri=settings.mlflow_uri
    )
    assert json.loads(Path(config_path).read_text())["steps"] == 40

    # Registered under the domain's name; the first version is both candidate and champion.
    assert (result.registered_name, result.registered_version) == ("chain", "1")
    assert result.aliases == [CANDIDATE, CHAMPION]
    tags = c.get_model_version("chain", "1").tags
    assert {k: tags[k] for k in ("decision_core.algo", "decision_core.kind")} == {
        "decision_core.algo": "iql",
        "decision_core.kind": "reward",
    }
    assert tags["decision_core.task"] == "logged"  # the chain's spec reward
    agent, ref = load_agent_from_uri("models:/chain@champion", settings)
    assert (ref.name, ref.version, ref.run_id) == ("chain", "1", result.run_id)
    acts = agent.act(np.zeros((3, 2), np.float32), rng=np.random.default_rng(0)).actions
    assert acts.shape == (3,) and set(acts.tolist()) <= {0, 1}

    # MLflow's generic pyfunc loading works on a frame of named state features.
    model = mlflow.pyfunc.load_model("models:/chain/1")
    frame = pd.DataFrame({"x": [0.0, 3.0], "noise": [0.1, -0.2]})
    out = model.predict(frame)
    assert list(out.columns) == ["action", "action_label", "propensity"]
    np.testing.assert_array_equal(
        out["action"].to_numpy(), agent.act(frame.to_numpy(np.float32), rng=np.random.default_rng(0)).actions
    )

    # A second run becomes the candidate; the champion stays until selection moves it.
    second = train(cfg.replace(steps=20, eval_every=0), settings, progress=False)
    assert second.registered_version == "2" and second.aliases == [CANDIDATE]
    assert alias_version("chain", CANDIDATE, settings) == "2"
    assert alias_version("chain", CHAMPION, settings) == "1"
    assert not list(Path.cwd().glob("mlruns"))  # artifacts live under the data directory, not the cwd
    assert (settings.home / "mlartifacts").is_dir()


def test_goal_conditioned_run_reports_success_on_the_domain_goals(settings: CoreSettings, tiny: dict) -> None:
    cfg = TrainConfig(
        domain="chain", algo="gcbc", goal_set="end", ope_estimators=("snips", "pdwis"), precision="bf16", **tiny
    )
    result = train(cfg, settings, progress=False)
    assert _client(settings).get_run(result.run_id).data.params["precision"] == "bf16"
    assert 0.0 <= result.metrics["ope/snips"] <= 1.0
    assert result.ope[0]["task"] == "goal end: x=4"
    # Logged success at reaching x=4 within 8 steps under the random policy (about 0.2 in these logs).
    assert 0.1 < result.ope[0]["behaviour_value"] < 0.4


def test_resume_continues_the_same_run_from_its_checkpoint(settings: CoreSettings, tiny: dict) -> None:
    cfg = TrainConfig(domain="chain", algo="bc", register=False, **tiny)
    first = train(cfg, settings, progress=False)
    assert first.registered_version is None
    resumed = train(cfg.replace(steps=60), settings, progress=False, resume=first.run_id)
    assert resumed.run_id == first.run_id
    c = _client(settings)
    # MLflow params cannot change ("steps" stays 40); tags say how far the run trains and where it was resumed.
    run = c.get_run(first.run_id)
    assert run.data.params["steps"] == "40"
    assert run.data.tags["decision_core.steps"] == "60" and run.data.tags["decision_core.resumed_from_steps"] == "40"
    steps = [m.step for m in c.get_metric_history(first.run_id, "actor/loss")]
    assert steps == [10, 20, 30, 40, 50, 60]
    trainer = json.loads((resumed.checkpoint / "trainer.json").read_text())
    assert trainer["step"] == 60
    assert json.loads((resumed.checkpoint / "agent" / "agent.json").read_text())["n_updates"] == 60
    train(cfg.replace(steps=70), settings, progress=False, resume=first.run_id)
    assert c.get_run(first.run_id).data.tags["decision_core.resumed_from_steps"] == "40,60"


def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(settings: CoreSettings, tiny: dict) -> None:
    # A constant reward near float32's limit makes squared TD errors overflow to inf.
    cfg = TrainConfig(domain="chain", algo="iql", task="3e38", **tiny)
    with pytest.raises(TrainingDiverged, match=r"diverged at step \d+.*last good checkpoint \(step 0\)") as info:
        train(cfg, settings, progress=False)
    ckpt = info.value.checkpoint
    assert ckpt is not None and json.loads((ckpt / "trainer.json").read_text())["step"] == 0
    run = _client(settings).get_run(info.value.run_id)
    assert run.info.status == "FAILED"
    assert "diverged" in run.data.tags["decision_core.failure"]
    assert alias_version("chain", CHAMPION, settings) is None  # nothing was registered


def test_cli_errors_list_the_choices(settings: CoreSettings, make_store) -> None:
    runner = CliRunner()
    db = ["--db", str(settings.db_path)]
    r = runner.invoke(app, ["train", "--domain", "chain", "--algo", "iqll", *db])
    assert r.exit_code == 2 and "unknown algorithm 'iqll'" in r.output and "Did you mean 'iql'" in r.output
    r = runner.invoke(app, ["train", "--domain", "chian", "--algo", "iql", *db])
    assert r.exit_code == 2 and "no domain 'chian'" in r.output and "chain" in r.output
    r = runner.invoke(app, ["train", "--domain", "chain", "--algo", "iql", "--set", "agent.lrr=1", *db])
    assert r.exit_code == 2 and "unknown fields ['lrr']" in r.output
    r = runner.invoke(app, ["train", "--domain", "chain", "--algo", "iql", "--set", "agent.lr=abc", *db])
    assert r.exit_code == 2 and "IQLConfig.lr must be a number, got 'abc'" in r.output, r.output
    # An unknown goal set stops the run before it trains (a million steps would not finish in the test).
    r = runner.invoke(
        app, ["train", "--domain", "chain", "--algo", "gcbc", "--goal-set", "nope", "--steps", "1000000", *db]
    )
    assert r.exit_code == 2 and "goal set 'nope' is not defined for domain 'chain'" in r.output, r.output
    configure_tracking(CoreSettings(db=settings.db_path))  # the store the command line used
    assert not mlflow.search_runs(search_all_experiments=True, output_format="list")
    empty = make_store(0, name="empty.duckdb")
    r = runner.invoke(app, ["train", "--domain", "chain", "--algo", "iql", "--db", str(empty)])
    assert r.exit_code == 2 and "no steps" in r.output


def cli_train(runner: CliRunner, algo: str, db: list[str]) -> Result:
    """Train a tiny ``algo`` agent on the chain with the command line (30 steps, small OPE); it must succeed."""
    r = runner.invoke(
        app,
        ["train", "--domain", "chain", "--algo", algo, "--steps", "30", "--no-progress", *db,
         "--set", "agent.hidden_dims=[16, 16]", "--set", "fqe_steps=100", "--set", "model_steps=100",
         "--set", "ope_episodes=100"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return r


def test_cli_trains_and_evaluates_offline(settings: CoreSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DECISION_CORE_HOME", str(settings.home))
    runner = CliRunner()
    db = ["--db", str(settings.db_path)]
    r = cli_train(runner, "bc", db)
    assert "registered as chain v1 (candidate, champion)" in r.output
    # The summary gives each estimate with its interval.
    assert re.search(r"ope/snips\s+│\s+\S+\s+│\s+\[\S+, \S+\]", r.output), r.output
    r = runner.invoke(app, ["ope", "--domain", "chain", "--model", "models:/chain@champion", "--goal", "x=3", *db])
    assert r.exit_code == 2 and "--goal and --goal-set are for goal-conditioned models" in " ".join(r.output.split())
    r = runner.invoke(
        app,
        ["ope", "--domain", "chain", "--model", "models:/chain@champion", "--estimator", "snips",
         "--estimator", "fqe", "--fqe-steps", "100", "--json", *db],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)["reports"][0]
    assert set(report["estimates"]) == {"snips", "fqe"}
    assert report["estimates"]["snips"]["ci_low"] <= report["estimates"]["snips"]["ci_high"]
    # --refits takes FQE's interval from refitted models (same estimate, another interval).
    fqe = report["estimates"]["fqe"]
    r = runner.invoke(
        app,
        ["ope", "--domain", "chain", "--model", "models:/chain@champion", "--estimator", "fqe", "--fqe-steps", "100",
         "--refits", "3", "--json", *db],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    refit = json.loads(r.stdout)["reports"][0]["estimates"]["fqe"]
    assert refit["value"] == pytest.approx(fqe["value"]) and refit["ci_low"] <= refit["value"] <= refit["ci_high"]
    assert (refit["ci_low"], refit["ci_high"]) != (fqe["ci_low"], fqe["ci_high"])
    # mb rolls each episode out in every ensemble member, or in one each with --model-rollouts one.
    mb = ["ope", "--domain", "chain", "--model", "models:/chain@champion", "--estimator", "mb", "--model-steps", "50"]
    for rollouts in ("every", "one"):
        r = runner.invoke(app, [*mb, "--model-rollouts", rollouts, "--json", *db])
        assert r.exit_code == 0, r.output
        estimate = json.loads(r.stdout)["reports"][0]["estimates"]["mb"]
        assert estimate["ci_low"] <= estimate["value"] <= estimate["ci_high"]
    r = runner.invoke(app, [*mb, "--model-rollouts", "all", *db])
    assert r.exit_code != 0 and "--model-rollouts must be one of every, one, got 'all'" in " ".join(r.output.split())

    # Logs that mix (100 episodes lose their propensities): SNIPS weighs the others, and the table says so.
    import duckdb

    con = duckdb.connect(str(settings.db_path))
    con.execute(
        "UPDATE steps_chain_rows SET propensity = NULL WHERE episode_id IN "
        "(SELECT DISTINCT episode_id FROM steps_chain_rows ORDER BY episode_id LIMIT 100)"
    )
    con.close()
    r = runner.invoke(
        app,
        ["ope", "--domain", "chain", "--model", "models:/chain@champion", "--estimator", "snips",
         "--estimator", "fqe", "--fqe-steps", "100", *db],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    episodes = report["n_episodes"]
    assert f"snips weigh the {episodes - 100} episodes with a logged propensity on every step; the others use all" in (
        " ".join(r.output.split())
    )


def test_cli_compares_a_model_with_a_baseline_on_the_same_episodes(
    settings: CoreSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DECISION_CORE_HOME", str(settings.home))
    runner = CliRunner()
    db = ["--db", str(settings.db_path)]
    cli_train(runner, "bc", db)
    cli_train(runner, "iql", db)
    ope = ["ope", "--domain", "chain", "--model", "models:/chain/2", "--json", *db]
    r = runner.invoke(app, [*ope, "--baseline", "models:/chain/1", "--estimator", "snips", "--estimator", "pdwis"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (out["model"], out["baseline"]) == ("chain v2", "chain v1")
    assert [c["estimator"] for c in out["comparisons"]] == ["snips", "pdwis"]
    for c in out["comparisons"]:
        assert c["value"] == pytest.approx(c["policy"]["value"] - c["baseline"]["value"])
        assert c["ci_low"] <= c["ci_high"] and 0.0 <= c["share_worse"] <= 1.0
    r = runner.invoke(app, [*ope, "--baseline", "models:/chain/1", "--refits", "2"])
    assert r.exit_code != 0 and "a comparison with --baseline takes a paired interval" in " ".join(r.output.split())
    r = runner.invoke(app, [*ope, "--baseline", "models:/chain/2"])  # itself, with the default estimator
    assert r.exit_code == 0, r.output
    (same,) = json.loads(r.stdout)["comparisons"]
    assert same["estimator"] == "snips" and (same["value"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0)
    r = runner.invoke(app, [*ope[:-3], "--baseline", "models:/chain/1", *db])  # the table
    assert r.exit_code == 0, r.output
    assert "chain v2 - chain v1 (paired over the same episodes)" in r.output
    cli_train(runner, "gcbc", db)
    r = runner.invoke(app, [*ope, "--baseline", "models:/chain/3"])
    assert r.exit_code != 0 and "must be a reward model of domain 'chain'" in " ".join(r.output.split())


def test_cli_evaluates_a_goal_model_on_a_stated_goal_or_the_domains_goals(
    settings: CoreSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DECISION_CORE_HOME", str(settings.home))
    runner = CliRunner()
    db = ["--db", str(settings.db_path)]
    cli_train(runner, "gcbc", db)
    ope = ["ope", "--domain", "chain", "--model", "models:/chain@champion", "--estimator", "snips", "--json", *db]
    r = runner.invoke(app, [*ope, "--goal", "x=3"])
    assert r.exit_code == 0, r.output
    (report,) = json.loads(r.stdout)["reports"]
    assert report["task"] == "goal cli: x=3" and 0.0 <= report["estimates"]["snips"]["value"] <= 1.0
    r = runner.invoke(app, ope)  # no --goal: the domain's goals, one report each
    assert r.exit_code == 0, r.output
    assert [rep["task"] for rep in json.loads(r.stdout)["reports"]] == ["goal end: x=4", "goal middle: x=2"]
    for bad in ("x=three", "y=1", "x"):
        r = runner.invoke(app, [*ope, "--goal", bad])
        assert r.exit_code != 0 and f"--goal '{bad}' must be feature=number over the outcome features x" in r.output
    # Options the model cannot use are refused, not ignored; so is a model of another domain.
    r = runner.invoke(app, [*ope, "--task", "next.x"])
    assert r.exit_code == 2 and "--task is for reward models" in r.output and "use --goal" in r.output
    other = ["ope", "--domain", "grid", "--model", "models:/chain@champion", *db]
    r = runner.invoke(app, other)
    assert r.exit_code == 2 and "is a model of domain 'chain', not 'grid'" in " ".join(r.output.split()), r.output
    r = runner.invoke(app, ["train", "--domain", "chain", "--algo", "gcbc", "--task", "next.x", *db])
    assert r.exit_code == 2 and "--task is for reward-task algorithms" in " ".join(r.output.split())


def test_behaviour_cloning_without_rewards_trains_and_skips_reward_ope(
    settings: CoreSettings, make_store, tiny: dict
) -> None:
    import duckdb

    path = make_store(120, name="unrewarded.duckdb")
    con = duckdb.connect(str(path))
    con.execute("UPDATE steps_chain_rows SET reward = NULL")
    con.execute('UPDATE domains SET spec_json = replace(spec_json, \'"reward": "logged"\', \'"reward": null\')')
    con.close()
    unrewarded = settings.model_copy(update={"db": path})
    result = train(TrainConfig(domain="chain", algo="bc", **tiny), unrewarded, progress=False)
    assert result.registered_version == "1"
    assert not any(k.startswith("ope/") for k in result.metrics)
    with pytest.raises(SpecError, match="needs a reward on every step"):
        train(TrainConfig(domain="chain", algo="iql", **tiny), unrewarded, progress=False)


def test_keep_best_logs_and_registers_the_best_evaluated_weights(
    settings: CoreSettings, tiny: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from decision_core.training import plots

    titles = []
    ope_plot = plots.ope_estimates
    monkeypatch.setattr(plots, "ope_estimates", lambda *a, title, **k: titles.append(title) or ope_plot(*a, **k))
    # Every logged episode in OPE (no random subset), so an evaluation of the same weights gives the same figure.
    tiny["agent"]["action_shrink"] = 0.0  # a plain critic head: on this chain its evaluations peak before the end
    cfg = TrainConfig(domain="chain", algo="iql", eval_every=10, keep="best:ope/snips", **tiny)
    cfg = cfg.replace(steps=60, ope_episodes=1000)
    result = train(cfg, settings, progress=False)
    c = _client(settings)
    history = {m.step: m.value for m in c.get_metric_history(result.run_id, "ope/snips")}
    assert sorted(history) == [10, 20, 30, 40, 50, 60]
    best = max(history, key=lambda s: (history[s], -s))  # the first of equal values
    assert best != 60, history  # the last weights are not the best here, or the test shows nothing
    run = c.get_run(result.run_id)
    assert run.data.tags["decision_core.kept_step"] == str(best)
    assert run.data.tags["decision_core.kept_by"] == "best:ope/snips"
    # The kept weights' full evaluation is logged apart from the last weights' curve; the result names both alike.
    kept = c.get_metric_history(result.run_id, "kept/ope/snips")
    assert [m.step for m in kept] == [60] and kept[0].value == pytest.approx(history[best])
    assert result.metrics["kept/ope/snips"] == pytest.approx(history[best])
    assert result.metrics["ope/snips"] == pytest.approx(history[60])
    assert (result.kept_step, result.kept_by) == (best, "best:ope/snips")
    assert result.ope[0]["estimates"]["snips"]["value"] == pytest.approx(history[best])  # the kept model's OPE
    assert titles == [f"OPE of the kept weights (step {best} of 60, best:ope/snips)"]
    # The registered model is the kept one: its evaluation again gives the best figure.
    agent, _ref = load_agent_from_uri(f"models:/chain/{result.registered_version}", settings)
    from decision_core.training.loop import load_domain as load_arrays
    from decision_core.training.loop import run_ope

    again, _ = run_ope(agent, load_arrays(cfg, settings), cfg, rng=np.random.default_rng(0), estimators=("snips",))
    assert again["ope/snips"] == pytest.approx(history[best])
    # The checkpoint to resume from stays the last step's.
    assert json.loads((result.checkpoint / "trainer.json").read_text())["step"] == 60


def test_periodic_ope_runs_the_estimators_asked_for(settings: CoreSettings, tiny: dict) -> None:
    cfg = TrainConfig(domain="chain", algo="iql", eval_every=20, ope_periodic=("fqe",), register=False, **tiny)
    result = train(cfg, settings, progress=False)
    c = _client(settings)
    assert [m.step for m in c.get_metric_history(result.run_id, "ope/fqe")] == [20, 40]
    assert [m.step for m in c.get_metric_history(result.run_id, "ope/snips")] == [40]  # the final OPE runs all


def _judged_by(settings: CoreSettings, estimator: str) -> Any:
    """The chain's arrays under a spec that names ``estimator`` as the domain's judge."""
    from dataclasses import replace

    from decision_core.training.loop import load_domain

    arrays = load_domain(TrainConfig(domain="chain", algo="iql"), settings)
    return replace(arrays, spec=replace(arrays.spec, ope_estimator=estimator))


def test_periodic_ope_adds_the_domains_judge_unless_it_fits_a_q_model_per_policy(settings: CoreSettings) -> None:
    from decision_core.training.loop import periodic_estimators

    cfg = TrainConfig(domain="chain", algo="iql")
    assert periodic_estimators(cfg, _judged_by(settings, "mb")) == ("snips", "pdwis", "mb")
    assert periodic_estimators(cfg, _judged_by(settings, "wdr")) == ("snips", "pdwis")  # one Q fit per evaluation
    assert periodic_estimators(cfg.replace(ope_periodic=("ips",)), _judged_by(settings, "mb")) == ("ips",)
    # The estimator that keep picks by always runs, named or as the domain's judge ("best:ope").
    keep_fqe = cfg.replace(eval_every=10, keep="best:ope/fqe/ci_low", ope_periodic=("snips",))
    assert periodic_estimators(keep_fqe, _judged_by(settings, "mb")) == ("snips", "fqe")
    keep_judge = cfg.replace(eval_every=10, keep="best:ope", ope_periodic=("snips",))
    assert periodic_estimators(keep_judge, _judged_by(settings, "wdr")) == ("snips", "wdr")


def test_a_run_fits_mbs_model_once_for_all_its_evaluations(
    settings: CoreSettings, tiny: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    import decision_core.ope as ope

    fits = []
    fit = ope.fit_model  # the reward task's model; goal tasks fit through fit_task_models
    monkeypatch.setattr(ope, "fit_model", lambda *a, **k: fits.append(1) or fit(*a, **k))
    arrays = _judged_by(settings, "mb")
    cfg = TrainConfig(domain="chain", algo="iql", eval_every=10, keep="best:ope", register=False, **tiny)
    result = train(cfg, settings, progress=False, arrays=arrays)
    c = _client(settings)
    assert [m.step for m in c.get_metric_history(result.run_id, "ope/mb")] == [10, 20, 30, 40]
    assert len(fits) == 1  # fitted at the first evaluation, shared by the later ones and the final one
    run = c.get_run(result.run_id)
    history = {m.step: m.value for m in c.get_metric_history(result.run_id, "ope/mb")}
    best = max(history, key=history.__getitem__)
    assert run.data.tags["decision_core.kept_by"] == "best:ope/mb"
    assert run.data.tags["decision_core.kept_step"] == str(best)


def test_keep_best_needs_evaluations_and_a_metric_they_log(settings: CoreSettings, tiny: dict) -> None:
    with pytest.raises(SpecError, match="'keep' = 'best:ope/snips' picks among the periodic evaluations"):
        TrainConfig(domain="chain", algo="iql", keep="best:ope/snips", **tiny)
    with pytest.raises(SpecError, match="'keep' must be 'last', 'best:ope' .* or 'best:<a logged metric>'"):
        TrainConfig(domain="chain", algo="iql", keep="best", eval_every=10, **tiny)
    cfg = TrainConfig(domain="chain", algo="iql", keep="best:eval/normalised_score", eval_every=20, **tiny)
    with pytest.raises(TrainingError, match=r"cannot pick the weights: domain 'chain' has no simulator.*"
                       r"Its evaluations log: .*ope/snips"):  # fmt: skip
        train(cfg.replace(steps=1_000_000), settings, progress=False)  # refused before the first step


def test_keep_best_never_prefers_a_nan_evaluation() -> None:
    from types import SimpleNamespace

    import torch

    from decision_core.training.loop import _BestWeights

    layer = torch.nn.Linear(1, 1)
    agent = SimpleNamespace(nets=torch.nn.ModuleDict({"layer": layer}))
    keeper = _BestWeights("ope/snips")
    for step, value, weight in ((10, float("nan"), 1.0), (20, -3.0, 2.0), (30, -5.0, 3.0), (40, float("nan"), 4.0)):
        with torch.no_grad():
            layer.weight.fill_(weight)
        keeper.offer(agent, step, {"ope/snips": value})
    assert (keeper.step, keeper.value) == (20, -3.0)
    keeper.restore(agent)
    assert layer.weight.item() == 2.0


def test_a_resumed_run_keeps_the_best_evaluation_from_before_the_resume(settings: CoreSettings, tiny: dict) -> None:
    tiny["agent"]["action_shrink"] = 0.0  # a plain critic head: on this chain its evaluations peak before the end
    cfg = TrainConfig(domain="chain", algo="iql", eval_every=10, keep="best:ope/snips", register=False, **tiny)
    cfg = cfg.replace(steps=30, ope_episodes=1000)
    first = train(cfg, settings, progress=False)
    resumed = train(cfg.replace(steps=60), settings, progress=False, resume=first.run_id)
    c = _client(settings)
    history = {m.step: m.value for m in c.get_metric_history(first.run_id, "ope/snips")}
    assert sorted(history) == [10, 20, 30, 40, 50, 60]
    best = max(history, key=lambda s: (history[s], -s))
    assert best <= 30, history  # the best came before the resume here, or the test shows nothing
    assert c.get_run(resumed.run_id).data.tags["decision_core.kept_step"] == str(best)
    assert resumed.metrics["kept/ope/snips"] == pytest.approx(history[best])
