"""The model-based estimator's state model: categorical changes for whole-number features against all-Gaussian.

``mb`` predicts the change of each ``int`` and ``bool`` feature whose logged changes take few values as a
categorical over those values (``ModelConfig.max_classes``); the baseline, measured in the same run on the same
logs, policies and simulated truth, predicts every feature's change as a Gaussian (``max_classes = 0``).

For each domain: log ``--episodes`` behaviour episodes, train the BC and IQL agents of ``bench_ope`` and form its
eight policies, simulate each policy's true value, then fit ``--fits`` models of each kind (different seeds) and
estimate every policy with each. Per kind and fit: Spearman rank correlation with the truth, median relative
error and 90% interval coverage; the ratio column is the baseline's median relative error over the categorical
model's (above 1: the categorical model is closer to the truth).

    python -m benchmarks.bench_ope_model [--domains inventory,recommender,dialogue] [--episodes 2000] [--fits 2]

Results are written to benchmarks/results/ope_model.json (or ``--out``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from benchmarks.bench_ope import policies_for, simulated_truth_parser
from decision_core.ope.model import ModelConfig

RESULTS = Path(__file__).parent / "results" / "ope_model.json"
console = Console(width=150)
#: The two models: ``max_classes`` at its default, and 0 (every feature's change Gaussian).
KINDS = {"categorical": ModelConfig.max_classes, "gaussian": 0}


def main() -> None:
    parser = simulated_truth_parser(__doc__, RESULTS, truth_episodes=1000)
    parser.add_argument("--model-steps", type=int, default=6000, help="gradient steps of each dynamics model")
    parser.add_argument("--fits", type=int, default=2, help="models of each kind, fitted from different seeds")
    args = parser.parse_args()

    from decision_core.algos import configure_torch_threads
    from decision_core.envs import get_simulator
    from decision_core.ope import evaluate_policy, fit_task_model, reward_task
    from decision_core.ope.validate import PolicyCheck, ValidationReport, log_behaviour, true_value

    configure_torch_threads(1)
    results: dict[str, dict] = {}
    for domain in [d.strip() for d in args.domains.split(",") if d.strip()]:
        started = time.perf_counter()
        sim = get_simulator(domain)
        logs = log_behaviour(sim, args.episodes, args.seed)
        with console.status(f"{domain}: training bc and iql, simulating the truth"):
            policies = policies_for(logs, args.train_steps, args.seed)
            truth = {name: true_value(sim, p, args.truth_episodes, args.seed) for name, p in policies.items()}
        task = reward_task(logs, "logged")
        rows: dict[str, list[dict]] = {kind: [] for kind in KINDS}
        for fit in range(args.fits):
            for kind, classes in KINDS.items():
                with console.status(f"{domain}: {kind} model, fit {fit + 1} of {args.fits}"):
                    t0 = time.perf_counter()
                    config = ModelConfig(steps=args.model_steps, max_classes=classes)
                    model = fit_task_model(logs, task, config=config, rng=np.random.default_rng([args.seed, 7, fit]))
                    fit_s = time.perf_counter() - t0
                    checks = []
                    for name, policy in policies.items():
                        estimate = evaluate_policy(
                            logs, policy, rng=np.random.default_rng([args.seed, 5]), task=task, dynamics=model,
                            estimators=["mb"],
                        )  # fmt: skip
                        checks.append(PolicyCheck(name, *truth[name], estimate))
                report = ValidationReport(domain, checks, logs.n_episodes, checks[0].report.behaviour_value)
                rows[kind].append(
                    {
                        "spearman": report.spearman("mb"),
                        "median_relative_error": report.median_relative_error("mb"),
                        "coverage": report.coverage("mb"),
                        "fit_seconds": fit_s,
                        "categorical_features": [logs.spec.state[j].name for j in model.categorical],
                        "estimates": {c.policy: c.report.estimates["mb"].value for c in checks},
                    }
                )
        table = Table("policy", "true value", *[f"{k} fit {i + 1}" for k in KINDS for i in range(args.fits)])
        for name in policies:
            cells = []
            for kind in KINDS:
                for row in rows[kind]:
                    value = row["estimates"][name]
                    cells.append(f"{value:.3g} ({100 * abs(value - truth[name][0]) / abs(truth[name][0]):.0f}%)")
            table.add_row(name, f"{truth[name][0]:.3g} ± {truth[name][1]:.2g}", *cells)
        table.title = f"{domain}: mb's estimate (relative error)"
        console.print(table)
        summary = Table(
            "model", "Spearman", "median rel. error", "90% CI coverage", "fit s",
            title=f"{domain}: {len(policies)} policies, {logs.n_episodes} logged episodes ({logs.n_steps} steps); "
            f"categorical: {len(rows['categorical'][0]['categorical_features'])} of {len(logs.spec.state)} features",
        )  # fmt: skip
        for kind in KINDS:
            for i, row in enumerate(rows[kind]):
                summary.add_row(
                    f"{kind} fit {i + 1}", f"{row['spearman']:.2f}", f"{100 * row['median_relative_error']:.0f}%",
                    f"{100 * row['coverage']:.0f}%", f"{row['fit_seconds']:.0f}",
                )  # fmt: skip
        console.print(summary)
        med = {k: float(np.median([r["median_relative_error"] for r in rows[k]])) for k in KINDS}
        rho = {k: float(np.median([r["spearman"] for r in rows[k]])) for k in KINDS}
        ratio = med["gaussian"] / max(med["categorical"], 1e-9)
        console.print(
            f"[bold]{domain}[/]: median over fits: categorical Spearman {rho['categorical']:.2f}, median relative "
            f"error {100 * med['categorical']:.0f}%; gaussian (baseline) {rho['gaussian']:.2f}, "
            f"{100 * med['gaussian']:.0f}%; error ratio gaussian / categorical {ratio:.2f}x; "
            f"{time.perf_counter() - started:.0f} s"
        )
        results[domain] = {
            "truth": {k: list(v) for k, v in truth.items()},
            "fits": rows,
            "median_spearman": rho,
            "median_relative_error": med,
            "error_ratio": ratio,
            "seconds": time.perf_counter() - started,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {**vars(args), "out": str(args.out)}, "domains": results}, indent=2))
    console.print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
