"""Reward-task learning curves: how the normalised score of IQL/CQL moves as training goes on.

One agent per domain and algorithm is trained on the behaviour logs (the quality benchmark's data path) and, every
``--every`` updates, its greedy policy runs the reward task in the simulator; the score is normalised against the
random and oracle policies run on the same worlds (0 = random, 100 = oracle). ``--variants`` re-reads the same
networks under other extraction settings (``support``, ``beta``: they change only how the policy is read from the
critic and the behaviour prior), so one training run shows how each setting ages. The figures are printed, written
as JSON and plotted (PNG).

    python -m benchmarks.bench_curves --domains inventory --algos iql --updates 40000 --every 5000 \\
        --variants '[{}, {"support": 0.1}]'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_quality import load_domain

#: Config fields a variant may change: read only when the policy is computed, never in training.
POLICY_FIELDS = frozenset({"support", "beta"})


def reward_return(sim: Any, policy: Any, episodes: int, seed: int) -> float:
    """Mean reward-task return of ``policy`` over ``episodes`` worlds drawn from ``seed``."""
    from decision_core.envs.rollout import rollout

    ep = rollout(sim.dynamics(), policy, batch=episodes, max_steps=sim.max_steps, rng=np.random.default_rng(seed))
    return float(ep.rewards.astype(np.float64).sum(axis=1).mean())


def variant_name(variant: dict[str, Any]) -> str:
    return ",".join(f"{k}={v:g}" for k, v in sorted(variant.items())) or "defaults"


@dataclass
class Domain:
    """A domain's logged data and its random / oracle returns on the evaluation worlds, shared by its algorithms."""

    name: str
    dataset: Any
    sim: Any
    low: float
    high: float


def load(name: str, args: argparse.Namespace, workdir: Path) -> Domain:
    from decision_core.data import OfflineDataset
    from decision_core.envs import get_simulator
    from decision_core.reward import rewards_for

    arrays = load_domain(name, args.log_steps, workdir, seed=args.data_seed)
    sim = get_simulator(name)
    baselines = sim.policies()
    return Domain(
        name,
        OfflineDataset(arrays, rewards=rewards_for(arrays)),
        sim,
        low=reward_return(sim, baselines["random"], args.episodes, args.eval_seed),
        high=reward_return(sim, baselines["oracle"], args.episodes, args.eval_seed),
    )


def run(domain: Domain, algo: str, args: argparse.Namespace, console: Any) -> dict[str, Any]:
    from decision_core.algos import create_agent
    from decision_core.envs.evaluate import LearnedPolicy

    dataset = domain.dataset
    agent = create_agent(algo, dataset.spec, dataset.stats, config=json.loads(args.config) or None, seed=args.seed)
    agent.set_precision(args.precision)
    sampler = agent.sampler(dataset, seed=args.seed)
    trained = agent.config
    variants = json.loads(args.variants)
    curves: dict[str, list[tuple[int, float]]] = {variant_name(v): [] for v in variants}
    start = time.process_time()
    for step in range(1, args.updates + 1):
        agent.update(sampler.sample(trained.batch_size))
        if step % args.every:
            continue
        scores = []
        for variant in variants:
            agent.config = dataclasses.replace(trained, **variant)
            ret = reward_return(domain.sim, LearnedPolicy(agent), args.episodes, args.eval_seed)
            score = 100 * (ret - domain.low) / (domain.high - domain.low)
            curves[variant_name(variant)].append((step, score))
            scores.append(f"{variant_name(variant)} {score:.1f}")
        agent.config = trained
        console.print(
            f"  {domain.name} {algo} {step:>6} updates ({time.process_time() - start:.0f} CPU-s): {'; '.join(scores)}"
        )
    return {"domain": domain.name, "algo": algo, "steps": dataset.n, "curves": curves}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", default="inventory,recommender,dialogue")
    parser.add_argument("--algos", default="iql,cql")
    parser.add_argument("--updates", type=int, default=30_000)
    parser.add_argument("--every", type=int, default=5_000)
    parser.add_argument("--variants", default="[{}]", help="JSON list of policy-time overrides (support, beta)")
    parser.add_argument("--config", default="{}", help="JSON config overrides for training")
    parser.add_argument("--log-steps", type=int, default=300_000)
    parser.add_argument("--episodes", type=int, default=400, help="reward-task episodes per evaluation")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--eval-seed", type=int, default=5)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="where JSON and PNG go")
    args = parser.parse_args()
    bad = [sorted(set(v) - POLICY_FIELDS) for v in json.loads(args.variants) if set(v) - POLICY_FIELDS]
    if bad:
        parser.error(f"--variants may change only {sorted(POLICY_FIELDS)} (read at acting time); got {bad}")

    import torch
    from rich.console import Console

    from decision_core.training.plots import learning_curves

    torch.set_num_threads(args.threads)
    console = Console()
    args.out.mkdir(parents=True, exist_ok=True)
    settings = vars(args) | {"out": str(args.out)}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.domains.split(","):
            domain = load(name, args, Path(tmp) / name)
            for algo in args.algos.split(","):
                result = run(domain, algo, args, console)
                stem = args.out / f"curves_{name}_{algo}"
                stem.with_suffix(".json").write_text(json.dumps({"args": settings, **result}, indent=1) + "\n")
                history = {f"normalised score/{name}": points for name, points in result["curves"].items()}
                learning_curves(history, stem.with_suffix(".png"), title=f"{name} {algo}: reward task, greedy")
                console.print(f"  wrote {stem}.json and {stem}.png")


if __name__ == "__main__":
    main()
