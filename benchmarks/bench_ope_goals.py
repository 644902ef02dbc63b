"""The model-based estimator on goal tasks against simulated truth: one dynamics fit per goal, or one for all goals.

For each domain: behaviour logs of about ``--log-steps`` steps (simulated, ingested and loaded back as
``bench_quality`` does), three goal-conditioned policies of different quality (GCIQL after ``--updates`` and a tenth
of them, GCBC after ``--updates``), and the domain's goal set. Each policy's true success on each goal is measured in
the simulator (``--truth-episodes`` per goal, greedy); ``mb`` estimates it from the logs with a model fitted per goal
(the baseline) and with one model shared by every goal (``fit_task_models``, what training, ``decision-core ope``
and ``select`` use). Printed: per (policy, goal) the truth and both estimates; per method the mean absolute error,
the Spearman correlation with the truth over the pairs, and the CPU seconds of fitting and rolling out, with the
ratio baseline / shared.

    python -m benchmarks.bench_ope_goals [--domains inventory] [--log-steps 100000] [--updates 1500]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results" / "ope_goals.json"
console = Console(width=150)


def run_domain(domain: str, args: argparse.Namespace) -> dict[str, Any]:
    from scipy.stats import spearmanr

    from benchmarks.bench_quality import load_domain, train
    from decision_core.data import OfflineDataset
    from decision_core.envs import get_simulator
    from decision_core.envs.evaluate import LearnedPolicy, evaluate
    from decision_core.ope import AgentPolicy, ModelConfig, evaluate_policy, fit_task_model, fit_task_models, goal_task
    from decision_core.training.loop import evaluation_goals

    with tempfile.TemporaryDirectory(prefix="bench_ope_goals_") as tmp:
        arrays = load_domain(domain, args.log_steps, Path(tmp), seed=args.seed)
    sim = get_simulator(domain)
    dataset = OfflineDataset(arrays)
    policies = {}
    for algo, updates in (("gciql", args.updates), ("gcbc", args.updates), ("gciql", max(1, args.updates // 10))):
        policies[f"{algo} @{updates}"], _, _ = train(algo, dataset, args.seed, 0.0, {}, "fp32", updates)
    goals = evaluation_goals(arrays.spec, None, sim)
    tasks = [goal_task(arrays, values, mask, name=name) for name, values, mask in goals]
    config = ModelConfig(steps=args.model_steps)
    rows: list[dict[str, Any]] = []
    cpu = {"per goal": 0.0, "shared": 0.0}
    for label, agent in policies.items():
        simulated = evaluate(sim, LearnedPolicy(agent), episodes=args.truth_episodes, seed=args.seed + 5)
        success = simulated.metrics("learned", prefix="")
        start = time.process_time()
        per_goal = [fit_task_model(arrays, t, config=config, rng=np.random.default_rng(args.seed)) for t in tasks]
        cpu["per goal"] += time.process_time() - start
        start = time.process_time()
        shared = fit_task_models(arrays, tasks, config=config, rng=np.random.default_rng(args.seed))
        cpu["shared"] += time.process_time() - start
        for (name, values, mask), task, alone, joint in zip(goals, tasks, per_goal, shared, strict=True):
            policy = AgentPolicy(agent, None, goal=values, goal_mask=mask)
            estimates = {}
            for method, model in (("per goal", alone), ("shared", joint)):
                start = time.process_time()
                report = evaluate_policy(
                    arrays, policy, rng=np.random.default_rng(args.seed), estimators=["mb"], task=task, dynamics=model
                )
                cpu[method] += time.process_time() - start
                estimates[method] = report.estimates["mb"].value
            rows.append({"policy": label, "goal": name, "truth": success[f"success/{name}"], **estimates})
    table = Table("policy", "goal", "truth", "mb, a fit per goal", "mb, one fit", title=f"{domain}: goal success")
    for r in rows:
        table.add_row(r["policy"], r["goal"], f"{r['truth']:.3f}", f"{r['per goal']:.3f}", f"{r['shared']:.3f}")
    console.print(table)
    truth = np.array([r["truth"] for r in rows], np.float64)
    summary = {}
    for method in ("per goal", "shared"):
        est = np.array([r[method] for r in rows])
        summary[method] = {
            "mean_abs_error": float(np.abs(est - truth).mean()),
            "spearman": float(spearmanr(est, truth).statistic),
            "cpu_s": cpu[method],
        }
        console.print(
            f"  {method:8s}: mean abs error {summary[method]['mean_abs_error']:.3f}, Spearman "
            f"{summary[method]['spearman']:.2f}, {cpu[method]:.0f} CPU-s"
        )
    console.print(f"  CPU ratio, a fit per goal / one fit: {cpu['per goal'] / cpu['shared']:.1f}x")
    return {"domain": domain, "steps": arrays.n_steps, "rows": rows, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", default="inventory")
    parser.add_argument("--log-steps", type=int, default=100_000)
    parser.add_argument("--updates", type=int, default=1500, help="training updates of the stronger policies")
    parser.add_argument("--model-steps", type=int, default=3000, help="gradient steps of each dynamics fit")
    parser.add_argument("--truth-episodes", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    results = [run_domain(d, args) for d in args.domains.split(",") if d]
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2))
    console.print(f"written to {args.out}")


if __name__ == "__main__":
    main()
