"""The fine-tuning guard against simulated truth: how often it stops a worse candidate, and how often a good one.

Serving fine-tunes the champion and promotes the candidate unless OPE on the newly served episodes says it is
worse (``serving.finetune.judge``). This benchmark replays that decision many times in each simulator:

1. log ``--episodes`` behaviour episodes and train BC and IQL agents on them (as ``bench_ope`` does); the
   champion is the BC agent's stochastic policy, which serves and logs its own propensities;
2. candidates range from slightly to clearly different: the champion's policy sharper or flatter (temperature 0.5,
   0.8, 1.25: what a fine-tune does to it), mixed with a uniform policy (shares 0.05 to 0.5), mixed with the IQL
   policy (shares 0.3 and 0.6) and the IQL policy itself;
3. every policy's true value comes from ``--truth-episodes`` simulated episodes;
4. ``--draws`` times, the champion serves ``--served`` new episodes in the simulator, and each candidate is judged
   on them with each of ``--estimators`` (by default SNIPS and PDWIS; ``mb`` fits its dynamics model on the served
   episodes alone, ``mb-all`` on the logs and the served episodes together, as the guard does with its snapshot
   of every stored step; ``mb-all-gaussian`` as ``mb-all`` with every feature's change Gaussian;
   ``mb-all-one`` as ``mb-all``, from the same fitted model, with each rollout in one member and an interval
   over episodes alone; ``mb-all-boot`` as ``mb-all`` with each member fitted on its own bootstrap resample of
   the transitions) at 90% confidence by two rules:

   - **paired** (the guard's rule): reject when the paired bootstrap interval of ``candidate - champion``
     (:func:`decision_core.ope.compare_policies`) lies below 0;
   - **one-sided** (the baseline, the former rule): reject when the upper end of the candidate's own interval is
     below the champion's estimate.

A candidate counts as truly worse when its true value is below the champion's by more than twice the standard
error of the true difference, and as not worse when it is at least the champion's; the figures are the share of
draws in which each rule rejects, per kind, and the paired interval's coverage of the true difference.

    python -m benchmarks.bench_guard [--domains inventory,recommender,dialogue] [--served 200] [--draws 40]

Results go to benchmarks/results/guard.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from benchmarks.bench_ope import simulated_truth_parser, train_agent

RESULTS = Path(__file__).parent / "results" / "guard.json"
console = Console(width=150)


def candidates_for(bc, champion, uniform, iql):  # type: ignore[no-untyped-def]
    from decision_core.algos import Exploration
    from decision_core.ope import AgentPolicy, MixturePolicy

    # A fine-tune moves the champion's action probabilities a little: sharper or flatter versions of it.
    out = {
        f"champion at T={t:g}": AgentPolicy(bc, Exploration(temperature=t), name=f"T={t:g}") for t in (0.5, 0.8, 1.25)
    }
    for share in (0.05, 0.1, 0.2, 0.3, 0.5):
        name = f"champion + {share:g} uniform"
        out[name] = MixturePolicy([champion, uniform], [1 - share, share], name=name)
    for share in (0.3, 0.6):
        name = f"champion + {share:g} iql"
        out[name] = MixturePolicy([champion, iql], [1 - share, share], name=name)
    out["iql (T=1)"] = iql
    return out


def rng_of(draw: int) -> np.random.Generator:
    return np.random.default_rng([draw, 17])


def run_domain(domain: str, args: argparse.Namespace, progress: Progress) -> dict:
    from decision_core.algos import Exploration
    from decision_core.envs import get_simulator
    from decision_core.ope import AgentPolicy, ModelConfig, UniformPolicy, compare_policies, fit_task_model, reward_task
    from decision_core.ope.validate import SimulatedTarget, log_behaviour, log_policy, true_value
    from decision_core.store import DomainArrays

    sim = get_simulator(domain)
    logs = log_behaviour(sim, args.episodes, args.seed)
    t = progress.add_task(f"{domain}: training bc and iql", total=None)
    bc = train_agent("bc", logs, args.train_steps, args.seed)
    iql = train_agent("iql", logs, args.train_steps, args.seed)
    progress.remove_task(t)
    champion = AgentPolicy(bc, Exploration(temperature=1.0), name="champion")
    candidates = candidates_for(
        bc, champion, UniformPolicy(logs.spec), AgentPolicy(iql, Exploration(temperature=1.0), name="iql (T=1)")
    )
    t = progress.add_task(f"{domain}: true values", total=len(candidates) + 1)
    truth = {}
    for name, policy in {"champion": champion, **candidates}.items():
        truth[name] = true_value(sim, policy, args.truth_episodes, args.seed)
        progress.advance(t)
    progress.remove_task(t)
    t = progress.add_task(f"{domain}: {args.draws} draws of {args.served} served episodes", total=args.draws)
    estimators = [e.strip() for e in args.estimators.split(",") if e.strip()]
    decisions: dict[tuple[str, str], dict[str, list[float]]] = {
        (e, n): {"paired": [], "one_sided": [], "covered": [], "ess": [], "above_paired": [], "above_bounds": []}
        for e in estimators
        for n in candidates
    }
    for draw in range(args.draws):
        # The champion serves, logging its own propensities.
        new = log_policy(sim, SimulatedTarget(champion), args.served, np.random.default_rng(args.seed * 1000 + draw))
        task = reward_task(new, "logged")
        # mb's model does not depend on the policy: one fit per draw serves every comparison on it.
        # mb-all fits it on the logs and the served episodes together, as the guard does with the full snapshot.
        dynamics = {}
        if "mb" in estimators:
            dynamics["mb"] = fit_task_model(new, task, config=ModelConfig(steps=args.model_steps), rng=rng_of(draw))
        both = DomainArrays.concat([logs, new])
        for variant, config in (
            ("mb-all", ModelConfig(steps=args.model_steps)),
            ("mb-all-gaussian", ModelConfig(steps=args.model_steps, max_classes=0)),
            ("mb-all-boot", ModelConfig(steps=args.model_steps, member_data="bootstrap")),
        ):
            if variant in estimators or (variant == "mb-all" and "mb-all-one" in estimators):
                dynamics[variant] = fit_task_model(both, reward_task(both, "logged"), config=config, rng=rng_of(draw))
        if "mb-all-one" in estimators:  # the same fitted model, each rollout in one member, episodes resampled alone
            fitted = dynamics["mb-all"]
            one = dataclasses.replace(fitted.config, rollouts="one")
            dynamics["mb-all-one"] = dataclasses.replace(fitted, config=one)
        for (estimator, name), verdicts in decisions.items():
            d = compare_policies(
                new,
                candidates[name],
                champion,
                estimator="mb" if estimator.startswith("mb-all") else estimator,
                rng=rng_of(draw),
                task=task,
                dynamics=dynamics.get(estimator),
            )
            true_diff = truth[name][0] - truth["champion"][0]
            verdicts["paired"].append(d.worse)
            verdicts["one_sided"].append(d.policy.ci_high < d.baseline.value)
            verdicts["covered"].append(d.ci_low <= true_diff <= d.ci_high)
            verdicts["ess"].append(d.policy.ess)
            # select's question (replace the champion?): the paired lower bound above 0, or (select's rule) the
            # candidate's own lower bound above the champion's.
            verdicts["above_paired"].append(d.ci_low > 0.0)
            verdicts["above_bounds"].append(d.policy.ci_low > d.baseline.ci_low)
        progress.advance(t)
    progress.remove_task(t)
    kinds = {}
    for name in candidates:
        diff = truth[name][0] - truth["champion"][0]
        se = float(np.hypot(truth[name][1], truth["champion"][1]))
        kind = "worse" if diff < -2 * se else "not worse" if diff >= 0 else "unclear"
        better = bool(diff > 2 * se)
        kinds[name] = {
            "true_value": truth[name][0], "true_difference": diff, "difference_se": se, "kind": kind, "better": better,
        }  # fmt: skip
    by_estimator = {
        e: {
            n: {
                **kinds[n],
                **{k: float(np.mean(v)) for k, v in decisions[e, n].items()},
                "draws": {k: [float(x) for x in v] for k, v in decisions[e, n].items()},
            }
            for n in candidates
        }
        for e in estimators
    }
    return {"champion_true_value": truth["champion"][0], "estimators": by_estimator}


def outcomes(rows: dict, rule: str, min_ess: float) -> dict[str, float]:
    """The guard's verdicts under ``rule`` with an effective-sample-size floor: on truly worse candidates the
    share stopped (called worse, or not evaluable); on not-worse ones the share called worse and not evaluable."""

    def share(kind: str, verdict: str) -> float:
        picked = []
        for r in rows.values():
            if r["kind"] != kind:
                continue
            thin = np.asarray(r["draws"]["ess"]) < min_ess
            worse = np.asarray(r["draws"][rule], bool) & ~thin
            picked.append({"worse": worse, "thin": thin, "stopped": worse | thin}[verdict])
        return float(np.mean(np.concatenate(picked))) if picked else float("nan")

    return {
        "worse_stopped": share("worse", "stopped"),
        "not_worse_called_worse": share("not worse", "worse"),
        "not_worse_not_evaluable": share("not worse", "thin"),
    }


def compact_lists(text: str) -> str:
    """Indented JSON with each list of numbers on one line (the per-draw verdicts would take a line per number)."""
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


def replacements(rows: dict, rule: str, min_ess: float) -> dict[str, float]:
    """How often a candidate would replace the champion under ``rule`` ("above_paired" or "above_bounds") when
    it needs ``min_ess``: the share of verdicts on truly better candidates, and on truly worse ones."""

    def share(chosen: list[dict]) -> float:
        picked = [np.asarray(r["draws"][rule], bool) & (np.asarray(r["draws"]["ess"]) >= min_ess) for r in chosen]
        return float(np.mean(np.concatenate(picked))) if picked else float("nan")

    return {
        "better_chosen": share([r for r in rows.values() if r["better"]]),
        "worse_chosen": share([r for r in rows.values() if r["kind"] == "worse"]),
    }


def main() -> None:
    parser = simulated_truth_parser(__doc__, RESULTS, truth_episodes=4000)
    parser.add_argument("--served", type=int, default=200, help="episodes the champion serves before each verdict")
    parser.add_argument("--draws", type=int, default=40, help="independent verdicts per candidate")
    parser.add_argument(
        "--estimators",
        default="snips,pdwis",
        help="comma-separated OPE estimators, plus mb-all (mb with its model fitted on the logs and the served "
        "episodes), mb-all-gaussian (the same with every feature's change Gaussian, max_classes = 0), mb-all-one "
        "(mb-all's model with each rollout in one member, rollouts = 'one') and mb-all-boot (members fitted on "
        "bootstrap resamples of the transitions, member_data = 'bootstrap')",
    )
    parser.add_argument("--min-ess", type=float, default=10.0, help="the guard's ESS floor, beside none")
    parser.add_argument("--model-steps", type=int, default=3000, help="gradient steps of mb's model (with mb)")
    args = parser.parse_args()

    from decision_core.algos import configure_torch_threads

    configure_torch_threads(1)
    results = {}
    for domain in [d.strip() for d in args.domains.split(",") if d.strip()]:
        started = time.perf_counter()
        with Progress(console=console, transient=True) as progress:
            result = run_domain(domain, args, progress)
        result["seconds"] = time.perf_counter() - started
        for estimator, rows in result["estimators"].items():
            table = Table(
                "candidate", "true value", "true diff.", "kind", "paired rejects", "one-sided rejects",
                "paired coverage", "mean ESS",
                title=f"{domain}: champion true value {result['champion_true_value']:.4g}; {args.draws} verdicts on "
                f"{args.served} served episodes each ({estimator}, 90%)",
            )  # fmt: skip
            for name, r in rows.items():
                shares = (f"{100 * r[k]:.0f}%" for k in ("paired", "one_sided", "covered"))
                table.add_row(
                    name, f"{r['true_value']:.4g}", f"{r['true_difference']:+.3g} ± {r['difference_se']:.2g}",
                    r["kind"], *shares, f"{r['ess']:.3g}",
                )  # fmt: skip
            console.print(table)
            summary = {
                f"{rule}, min ESS {floor:g}": outcomes(rows, rule, floor)
                for floor in sorted({0.0, args.min_ess})
                for rule in ("paired", "one_sided")
            }
            result.setdefault("summary", {})[estimator] = summary
            replace = {rule: replacements(rows, rule, args.min_ess) for rule in ("above_paired", "above_bounds")}
            result.setdefault("replacements", {})[estimator] = replace
            console.print(
                f"[bold]{domain}, {estimator}, replace the champion (min ESS {args.min_ess:g})[/]: truly better "
                f"candidates — paired lower bound > 0 {100 * replace['above_paired']['better_chosen']:.0f}%, own "
                f"lower bound above the champion's {100 * replace['above_bounds']['better_chosen']:.0f}%; truly "
                f"worse — {100 * replace['above_paired']['worse_chosen']:.0f}% and "
                f"{100 * replace['above_bounds']['worse_chosen']:.0f}%"
            )
            for label, o in summary.items():
                console.print(
                    f"[bold]{domain}, {estimator}, {label}[/]: worse candidates stopped "
                    f"{100 * o['worse_stopped']:.0f}%; not-worse candidates called worse "
                    f"{100 * o['not_worse_called_worse']:.0f}%, not evaluable {100 * o['not_worse_not_evaluable']:.0f}%"
                )
        console.print(f"{domain}: {result['seconds']:.0f} s")
        results[domain] = result
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"args": {**vars(args), "out": str(args.out)}, "domains": results}, indent=2)
    args.out.write_text(compact_lists(text))
    console.print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
