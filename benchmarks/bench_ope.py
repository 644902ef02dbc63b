"""OPE against simulated truth: on each simulator, >= 5 policies of different quality, every estimator.

For each domain: log ``--episodes`` episodes with the simulator's behaviour policy (propensities included), train
a BC agent (imitates the logs) and an IQL agent (reward task) on them, and evaluate these state-only policies:

- ``uniform``: uniformly random over the available actions;
- ``bc (T=1)``: the BC agent's stochastic policy (close to the logging policy);
- ``bc (eps 0.2)``: the BC agent's greedy action, epsilon-greedy with epsilon 0.2;
- ``iql (T=1)``: the IQL agent's stochastic policy;
- ``iql (eps 0.2)``: the IQL agent's greedy action, epsilon 0.2;
- ``0.5 iql + 0.5 uniform``, ``0.7 bc + 0.3 uniform``, ``0.4 bc + 0.6 uniform``: degraded mixtures.

Each policy's true value is its mean undiscounted return over ``--truth-episodes`` simulated episodes. The table
gives every estimator's estimate and relative error, and per estimator the Spearman rank correlation with the
truth across policies (target >= 0.8 for the best), the median relative error and the interval coverage. The
baseline in the same run is the naive estimate every policy would get without OPE (the logged average return):
the ratio column is naive median relative error / estimator median relative error.

    python -m benchmarks.bench_ope [--domains inventory,recommender,dialogue] [--episodes 2000] [--seed 0] [--out F]

Results are written to benchmarks/results/ope.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

RESULTS = Path(__file__).parent / "results" / "ope.json"
console = Console(width=150)


def train_agent(algo: str, arrays, steps: int, seed: int):  # type: ignore[no-untyped-def]
    from decision_core.algos import create_agent
    from decision_core.data import OfflineDataset

    dataset = OfflineDataset(arrays)
    agent = create_agent(algo, arrays.spec, dataset.stats, {"hidden_dims": [128, 128], "batch_size": 256}, seed=seed)
    sampler = agent.sampler(dataset, seed=seed)
    for _ in range(steps):
        agent.update(sampler.sample(256))
    return agent


def policies_for(arrays, steps: int, seed: int) -> dict:  # type: ignore[no-untyped-def]
    from decision_core.algos import Exploration
    from decision_core.ope import AgentPolicy, MixturePolicy, UniformPolicy

    bc = train_agent("bc", arrays, steps, seed)
    iql = train_agent("iql", arrays, steps, seed)
    uniform = UniformPolicy(arrays.spec)
    iql_soft = AgentPolicy(iql, Exploration(temperature=1.0), name="iql (T=1)")
    bc_soft = AgentPolicy(bc, Exploration(temperature=1.0), name="bc (T=1)")
    return {
        "uniform": uniform,
        "bc (T=1)": bc_soft,
        "bc (eps 0.2)": AgentPolicy(bc, Exploration(epsilon=0.2), name="bc (eps 0.2)"),
        "iql (T=1)": iql_soft,
        "iql (eps 0.2)": AgentPolicy(iql, Exploration(epsilon=0.2), name="iql (eps 0.2)"),
        "0.5 iql + 0.5 uniform": MixturePolicy([iql_soft, uniform], [0.5, 0.5], name="0.5 iql + 0.5 uniform"),
        "0.7 bc + 0.3 uniform": MixturePolicy([bc_soft, uniform], [0.7, 0.3], name="0.7 bc + 0.3 uniform"),
        "0.4 bc + 0.6 uniform": MixturePolicy([bc_soft, uniform], [0.4, 0.6], name="0.4 bc + 0.6 uniform"),
    }


def simulated_truth_parser(doc: str, results: Path, truth_episodes: int) -> argparse.ArgumentParser:
    """The options the benchmarks that judge OPE against a simulator share: domains, the behaviour logs, the BC and
    IQL agents' training, the truth's episodes, the seed and where the results go."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--domains", default="inventory,recommender,dialogue")
    parser.add_argument("--episodes", type=int, default=2000, help="logged behaviour episodes per domain")
    parser.add_argument("--truth-episodes", type=int, default=truth_episodes, help="simulated episodes per policy")
    parser.add_argument("--train-steps", type=int, default=3000, help="gradient steps of the BC and IQL agents")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=results, help="where the JSON results go")
    return parser


def main() -> None:
    parser = simulated_truth_parser(__doc__, RESULTS, truth_episodes=1000)
    parser.add_argument("--fqe-steps", type=int, default=3000)
    parser.add_argument("--model-steps", type=int, default=6000, help="gradient steps of mb's dynamics model")
    args = parser.parse_args()

    from decision_core.algos import configure_torch_threads
    from decision_core.envs import get_simulator
    from decision_core.ope.fqe import FQEConfig
    from decision_core.ope.model import ModelConfig
    from decision_core.ope.validate import log_behaviour, validate

    configure_torch_threads(1)
    results = {}
    for domain in [d.strip() for d in args.domains.split(",") if d.strip()]:
        started = time.perf_counter()
        sim = get_simulator(domain)
        logs = log_behaviour(sim, args.episodes, args.seed)
        with Progress(console=console, transient=True) as progress:
            t = progress.add_task(f"{domain}: training bc and iql", total=None)
            policies = policies_for(logs, args.train_steps, args.seed)
            progress.remove_task(t)
            report = validate(
                sim,
                logs,
                policies,
                truth_episodes=args.truth_episodes,
                seed=args.seed,
                fqe=FQEConfig(steps=args.fqe_steps),
                model=ModelConfig(steps=args.model_steps),
                progress=progress,
            )
        elapsed = time.perf_counter() - started
        estimators = report.estimators
        table = Table("policy", "true value", *estimators, title=f"{domain}: OPE estimate (relative error)")
        for c in report.checks:
            cells = [f"{c.report.estimates[e].value:.3g} ({100 * c.relative_error(e):.0f}%)" for e in estimators]
            table.add_row(c.policy, f"{c.truth:.3g} ± {c.truth_se:.2g}", *cells)
        console.print(table)
        naive = float(
            np.median([abs(report.behaviour_value - c.truth) / max(abs(c.truth), 1e-8) for c in report.checks])
        )
        summary = Table(
            "estimator", "Spearman", "median rel. error", "90% CI coverage", "ratio vs naive",
            title=f"{domain}: {len(report.checks)} policies, {logs.n_episodes} logged episodes "
            f"({logs.n_steps} steps), naive median rel. error {100 * naive:.0f}%",
        )  # fmt: skip
        for e in estimators:
            mre = report.median_relative_error(e)
            summary.add_row(
                e, f"{report.spearman(e):.2f}", f"{100 * mre:.0f}%", f"{100 * report.coverage(e):.0f}%",
                f"{naive / max(mre, 1e-9):.1f}x",
            )  # fmt: skip
        console.print(summary)
        best = report.best()
        console.print(
            f"[bold]{domain}[/]: best estimator {best} — Spearman {report.spearman(best):.2f} "
            f"(target >= 0.8), median relative error {100 * report.median_relative_error(best):.0f}%; "
            f"{elapsed:.0f} s"
        )
        results[domain] = {**report.to_dict(), "naive_median_relative_error": naive, "seconds": elapsed}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {**vars(args), "out": str(args.out)}
    args.out.write_text(json.dumps({"args": meta, "domains": results}, indent=2, default=float))
    console.print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
