"""The main job, end to end on the embedded defaults (``decision-core quickstart``, ``make run``).

1. ingest the sample logs of every built-in domain (``sample_data/``, raw formats) into the DuckDB store;
2. show what was stored;
3. train a goal-conditioned agent on one domain as an MLflow run, registered as the domain's champion;
4. evaluate it in the domain's simulator beside the random, behaviour and oracle baselines;
5. serve it with uvicorn, act toward a goal over HTTP while the simulator plays the world, send every outcome
   back as feedback, fine-tune on old + new data in a worker process and promote only if OPE says the
   candidate is not worse;
6. keep the server answering until interrupted.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.table import Table

from decision_core.errors import DecisionCoreError
from decision_core.schema import BoxActions
from decision_core.settings import CoreSettings

if TYPE_CHECKING:
    from serving.settings import ServingSettings

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"
DOMAINS = ("inventory", "recommender", "dialogue")


def sample_files(domain: str, settings: CoreSettings, console: Console) -> list[Path]:
    """The domain's shipped sample logs, or freshly simulated ones when the package has no sample_data."""
    shipped = sorted((SAMPLE_DATA / domain).glob("*.csv"))
    shipped = [p for p in shipped if not p.name.startswith("ratings")]  # ratings need a mapping; see the docs
    if shipped:
        return shipped
    from decision_core.envs.simulate import simulate_logs

    console.print(f"no sample logs for {domain} under {SAMPLE_DATA}; simulating 300 behaviour episodes")
    return [
        p for p in simulate_logs(domain, 300, "behaviour", 0, settings.home / "logs" / domain) if p.suffix == ".csv"
    ]


def ingest_samples(settings: CoreSettings, console: Console) -> None:
    from adapters import get_adapter
    from adapters.ingest import ingest
    from decision_core.store import DecisionStore

    with DecisionStore(settings.db_path) as store:
        for domain in DOMAINS:
            report = ingest(get_adapter(domain), sample_files(domain, settings, console), store)
            console.print(
                f"[green]ingested[/] {domain}: {report.rows_read} raw rows -> {report.steps_staged} steps "
                f"({report.steps_inserted} new)"
            )
        table = Table("domain", "steps", "episodes", "with propensity", "spec", title=f"store {settings.db_path}")
        for name in store.domains():
            s = store.summary(name)
            table.add_row(
                name, str(s["steps"]), str(s["episodes"]), str(s["with_propensity"]), store.spec(name).summary()
            )
    console.print(table)


def check_port_free(port: int) -> None:
    """Fail before any work when 127.0.0.1:``port`` is taken (e.g. by a quickstart still serving)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closing socket is no user
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise DecisionCoreError(
                f"port {port} on 127.0.0.1 is in use ({exc.strerror}); stop what listens there (another "
                f"quickstart still serving?) or pass --port N"
            ) from None


def start_server(settings: ServingSettings, port: int) -> tuple[object, threading.Thread]:
    import uvicorn

    from serving.app import create_app

    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise DecisionCoreError(f"the server did not start on 127.0.0.1:{port} (is the port free? pass --port N)")
        time.sleep(0.1)
    return server, thread


def play_episodes(base: str, key: str, domain: str, episodes: int, console: Console, seed: int = 0) -> int:
    """Act toward the domain's first goal over HTTP while its simulator plays the world; send every outcome back.

    Returns the number of feedback events the server acknowledged (each durable in the store).
    """
    import httpx

    from decision_core.envs import get_simulator

    sim = get_simulator(domain)
    spec = sim.spec()
    goal = sim.goal_set()[0]
    rng = np.random.default_rng(seed)
    dynamics = sim.dynamics()
    obs = dynamics.reset(rng, episodes)
    alive = np.ones(episodes, bool)
    reached = np.zeros(episodes, bool)
    acked = 0
    with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=60) as http:
        for t in range(sim.max_steps):
            live = np.flatnonzero(alive)
            if live.size == 0:
                break
            items: list[dict[str, Any]] = [
                {
                    "state": dict(zip(spec.state_names, map(float, obs[i]), strict=True)),
                    "goal": goal.targets,
                    "episode_id": f"quickstart-{seed}-{i}",
                    "step": t,
                    "action_mask": None,
                }
                for i in live
            ]
            if spec.masked:
                masks = dynamics.info().get("action_mask")
                for item, i in zip(items, live, strict=True):
                    item["action_mask"] = None if masks is None else [bool(x) for x in masks[i]]
            decided = http.post("/v1/act:batch", json={"items": items})
            decided.raise_for_status()
            decisions = decided.json()["decisions"]
            actions = (
                np.zeros(episodes, np.int64) if spec.discrete else np.zeros((episodes, spec.action_dim), np.float32)
            )
            for i, d in zip(live, decisions, strict=True):
                act = d["action"]
                if isinstance(spec.actions, BoxActions):
                    actions[i] = [act["values"][n] for n in spec.actions.names]
                else:
                    actions[i] = act["index"]
            obs, rewards, terminated = dynamics.step(actions, rng)
            outcome = obs[:, spec.outcome_index]
            values, mask = goal.vector(spec)
            now = np.all((np.abs(outcome - values) <= spec.tolerances) | ~mask, axis=1)
            for i, d in zip(live, decisions, strict=True):
                done = bool(terminated[i] or now[i])
                feedback = {
                    "decision_id": d["decision_id"],
                    "next_state": dict(zip(spec.state_names, map(float, obs[i]), strict=True)),
                    "reward": float(rewards[i]),
                    "terminated": done,
                    "truncated": (not done) and t == sim.max_steps - 1,
                }
                http.post("/v1/feedback", json=feedback).raise_for_status()
                acked += 1
                if now[i]:
                    reached[i] = True
                if done:
                    alive[i] = False
    console.print(
        f"served {episodes} episodes toward goal '{goal.name}' {goal.targets}: reached in "
        f"{reached.mean():.0%}; {acked} outcomes logged back as steps"
    )
    return acked


def run(
    *,
    domain: str = "inventory",
    algo: str = "gciql",
    steps: int = 1500,
    port: int = 8000,
    episodes: int = 24,
    serve_forever: bool = True,
    console: Console | None = None,
) -> None:
    console = console or Console()
    check_port_free(port)
    settings = CoreSettings()
    console.rule("1-2  ingest the sample logs")
    ingest_samples(settings, console)

    console.rule(f"3  train {algo} on {domain} (MLflow: {settings.mlflow_uri})")
    from decision_core.training import TrainConfig, train

    result = train(
        TrainConfig(
            domain=domain,
            algo=algo,
            steps=steps,
            eval_episodes=50,
            ope_episodes=500,
            fqe_steps=300,
            model_steps=300,
        ),
        settings,
    )
    console.print(
        f"run {result.run_id}: registered {result.registered_name} v{result.registered_version} "
        f"(aliases: {', '.join(result.aliases) or 'none'})"
    )

    console.rule("4  evaluate in the simulator against the baselines")
    from decision_core.envs.evaluate import LearnedPolicy, evaluate
    from decision_core.training.models import load_agent_from_uri

    agent, _ref = load_agent_from_uri(f"models:/{result.registered_name}/{result.registered_version}")
    report = evaluate(domain, LearnedPolicy(agent), name=algo, episodes=100, seed=1)
    console.print(report.table())
    console.print(report.goal_table())

    console.rule("5  serve, act toward a goal, log outcomes back, fine-tune under the OPE guard")
    from serving.cli import ensure_api_key
    from serving.settings import ServingSettings

    key, key_file = ensure_api_key(settings.home)
    serving = ServingSettings(
        model=f"{result.registered_name}@champion",
        api_keys=key,
        epsilon=0.1,
        finetune_steps=max(100, steps // 5),
    )
    server, thread = start_server(serving, port)
    base = f"http://127.0.0.1:{port}"
    console.print(f"serving {serving.model} on {base} (API key in {key_file})")
    try:
        import httpx

        play_episodes(base, key, domain, episodes, console)
        with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=60) as http:
            started = http.post("/v1/finetune", json={})
            started.raise_for_status()
            console.print(f"fine-tune started on {started.json()['new_feedback']} new feedback steps")
            deadline = time.monotonic() + 1800
            with console.status("fine-tuning in a worker process (serving continues)"):
                while http.get("/v1/models").json()["finetune_running"] and time.monotonic() < deadline:
                    time.sleep(1)
            models = http.get("/v1/models").json()
        table = Table("version", "status", "source", "reason", title=f"{domain} models")
        for m in models["models"]:
            table.add_row(m["version"], m["status"], m["source"], m.get("reason") or "")
        console.print(table)
        console.print(f"champion: {models['champion']['name']} v{models['champion']['version']}")
        if serve_forever:
            console.rule(f"6  serving on {base} — POST /v1/act, /v1/feedback; docs at {base}/docs; Ctrl-C to stop")
            while thread.is_alive():
                thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join(30)
