"""The closed loop on the embedded defaults: ingest sample logs -> train briefly -> serve -> act with a goal ->
feedback -> fine-tune -> promote (and roll back)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from decision_core.settings import CoreSettings
from serving.app import create_app
from serving.settings import ServingSettings

KEY = "test-key-1"
H = {"X-API-Key": KEY}


@pytest.mark.slow
@pytest.mark.parametrize("min_ess", [0.0, 1e6], ids=["guard-judges", "too-little-evidence"])
def test_ingest_train_serve_feedback_finetune_promote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, min_ess: float
) -> None:
    from adapters import get_adapter
    from adapters.ingest import ingest
    from decision_core.envs import get_simulator
    from decision_core.envs.simulate import simulate_logs
    from decision_core.store import DecisionStore
    from decision_core.training import TrainConfig, train
    from decision_core.training.models import CHAMPION, alias_version

    for var in [v for v in os.environ if v.startswith(("DECISION_CORE_", "MLFLOW_"))]:
        monkeypatch.delenv(var)
    home = tmp_path / "home"
    core = CoreSettings(home=home)
    sim = get_simulator("inventory")
    files = simulate_logs(sim, 40, "behaviour", 0, tmp_path / "raw", progress=False)
    adapter = get_adapter("inventory")
    with DecisionStore(core.db_path) as store:
        ingest(adapter, files, store)
    spec = adapter.spec()
    trained = train(
        TrainConfig(
            domain=spec.name,
            algo="gcbc",
            steps=60,
            eval_episodes=2,
            ope_episodes=20,
            fqe_steps=20,
            model_steps=20,
            agent={"hidden_dims": [32], "batch_size": 64},
        ),
        core,
        progress=False,
    )
    assert trained.registered_version is not None

    settings = ServingSettings(
        model=f"{trained.registered_name}@champion",
        home=home,
        api_keys=KEY,
        seed=0,
        epsilon=0.3,
        finetune_steps=5,
        finetune_model_steps=50,  # the domain's guard is mb (its spec's ope_estimator): a brief model here
        finetune_min_episodes=3,
        finetune_min_ess=min_ess,
        # 12 episodes judge a 5-step fine-tune: at 90% the paired interval of a near-zero difference can end just
        # below 0 (a rejection, as it should be); this test follows a promotion through, so it asks for 99.9%.
        finetune_confidence=0.999,
    )
    goal = sim.goal_set()[0].targets
    rng = np.random.default_rng(0)
    with TestClient(create_app(settings)) as c:
        champion = c.get("/v1/models", headers=H).json()["champion"]
        assert champion == {"name": spec.name, "version": trained.registered_version}
        # Serve 12 episodes in the simulator: act with a goal, step the world, report what happened.
        dynamics = sim.dynamics()
        n, horizon = 12, 6
        obs = dynamics.reset(rng, n)
        for t in range(horizon):
            items = [
                {
                    "state": dict(zip(spec.state_names, map(float, obs[i]), strict=True)),
                    "goal": goal,
                    "episode_id": f"e{i}",
                    "step": t,
                }
                for i in range(n)
            ]
            r = c.post("/v1/act:batch", json={"items": items})
            assert r.status_code == 200, r.text
            decisions = r.json()["decisions"]
            actions = np.array([d["action"]["index"] for d in decisions])
            obs, rewards, terminated = dynamics.step(actions, rng)
            for i, d in enumerate(decisions):
                body = {
                    "decision_id": d["decision_id"],
                    "reward": float(rewards[i]),
                    "next_state": dict(zip(spec.state_names, map(float, obs[i]), strict=True)),
                    "terminated": bool(terminated[i]),
                    "truncated": t == horizon - 1,
                }
                assert c.post("/v1/feedback", json=body, headers=H).status_code == 200
        r = c.post("/v1/finetune", headers=H, json={"steps": 5})
        if min_ess > 0:  # more evidence asked for than 12 served episodes can give: refused up front, and said why
            assert r.status_code == 409, r.text
            message = r.json()["error"]["message"]
            assert "only 12 served episodes" in message and "at least 1000000" in message, message
            assert c.get("/v1/models", headers=H).json()["champion"]["version"] == trained.registered_version
            return
        assert r.status_code == 202, r.text
        assert r.json()["new_feedback"] == n * horizon
        assert c.post("/v1/finetune", headers=H).status_code == 409  # one run at a time
        # Serving never blocks while the worker process runs.
        assert c.post("/v1/act", json=items[0]).status_code == 200
        ctx = c.app.state.ctx  # type: ignore[attr-defined]
        run = ctx.finetuner.wait(600)
        assert run is not None and run.status == "promoted", run
        assert "effective sample size" in run.detail and "paired over 12 episodes" in run.detail, run.detail
        models = c.get("/v1/models", headers=H).json()
        new = models["champion"]["version"]
        assert new != trained.registered_version
        entry = next(m for m in models["models"] if m["version"] == new)
        assert "not worse" in entry["reason"] and any(k.startswith("ope/") for k in entry["metrics"])
        assert alias_version(spec.name, CHAMPION, core) == new  # recorded in the registry
        assert c.post("/v1/act", json=items[0]).json()["model"]["version"] == new
        r = c.post("/v1/models/rollback", headers=H)
        assert r.json()["champion"]["version"] == trained.registered_version
        assert alias_version(spec.name, CHAMPION, core) == trained.registered_version
