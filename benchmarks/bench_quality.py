"""Goal-reaching quality of every goal-conditioned algorithm (and IQL/CQL on the reward task) per built-in domain.

For each simulator: behaviour-policy logs are generated (``simulate_logs``), ingested through the domain's
adapter into a DuckDB store and loaded back (the real data path). Each algorithm is then trained for a fixed
CPU-time budget per seed and evaluated in the simulator (``decision_core.envs.evaluate``) on the domain's
fixed goal set, beside the random / behaviour / oracle baselines; then again on **partial goals** (each goal
reduced to one of its outcome features). Reward-task learners (IQL, CQL, BC) are scored on the normalised
reward-task score (0 = random, 100 = oracle). A simulator's further policies are evaluated beside them as
references (the recommender's ``session_oracle``: the oracle without the user's hidden state, roughly what
the observable state allows). Figures are means (± std) over seeds.

The bars this checks (printed, never asserted): the best goal-conditioned method beats the behaviour policy's
goal success by >= 15 points and beats GCBC; IQL/CQL reach a normalised score >= 70.

    python -m benchmarks.bench_quality --budget-s 600 --seeds 3              # the full run (hours on 2 cores)
    python -m benchmarks.bench_quality --budget-s 20 --seeds 1 --log-steps 30000 --domains inventory  # a check
    python -m benchmarks.bench_quality --updates 2000 --domains inventory --algos gciql,qrl   # the same work anywhere

``--memory-steps 10000000`` instead measures peak RSS while building a dataset of that many steps with
``--memory-features`` state features and running a few updates of each algorithm (target: < 4 GiB).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

GOAL_ALGOS = ("gcbc", "gciql", "crl", "hiql", "qrl")
REWARD_ALGOS = ("iql", "cql", "bc")


# -- data ----------------------------------------------------------------------------------------------------------
def load_domain(domain: str, log_steps: int, workdir: Path, seed: int) -> Any:
    """Behaviour logs of ``domain`` (about ``log_steps`` steps), ingested and loaded back as DomainArrays."""
    from adapters import get_adapter
    from adapters.ingest import ingest
    from decision_core.envs import get_simulator
    from decision_core.envs.simulate import simulate_logs
    from decision_core.store import DecisionStore

    sim = get_simulator(domain)
    adapter = get_adapter(domain)
    # Episodes often end before max_steps (sessions, dialogues): a pilot measures the mean length so that the
    # logs hold about ``log_steps`` steps, not ``log_steps`` divided by the longest possible episode.
    pilot = simulate_logs(sim, 200, "behaviour", seed + 10_000, workdir / f"{domain}_pilot", progress=False)
    with DecisionStore(workdir / f"{domain}_pilot.duckdb") as store:
        ingest(adapter, pilot, store)
        pilot_arrays = store.load_arrays(adapter.spec().name)
    mean_length = pilot_arrays.n_steps / pilot_arrays.n_episodes
    episodes = max(2, math.ceil(log_steps / mean_length))
    files = simulate_logs(sim, episodes, "behaviour", seed, workdir / f"{domain}_raw", progress=False)
    with DecisionStore(workdir / f"{domain}.duckdb") as store:
        ingest(adapter, files, store)
        return store.load_arrays(adapter.spec().name)


class PartialGoals:
    """A simulator whose goal set is every goal of ``sim`` reduced to one of its outcome features."""

    def __new__(cls, sim: Any) -> Any:
        from decision_core.envs.base import DomainSimulator, Goal

        goals: list[Goal] = []
        seen: set[tuple[str, float]] = set()
        for g in sim.goal_set():
            for feature, target in g.targets.items():
                if (feature, target) not in seen:
                    seen.add((feature, target))
                    goals.append(Goal(f"{feature}={target:g}", {feature: target}, hard=g.hard))

        class _Partial(DomainSimulator):
            domain = sim.domain
            env_id = sim.env_id
            max_steps = sim.max_steps

            def spec(self, **options: Any) -> Any:
                return sim.spec(**options)

            def dynamics(self, **options: Any) -> Any:
                return sim.dynamics(**options)

            def policies(self) -> Any:
                return sim.policies()

            def goal_set(self) -> list[Goal]:
                return goals

            def write_logs(self, episodes: Any, out_dir: Path, *, seed: int, start_episode: int = 0) -> Any:
                return sim.write_logs(episodes, out_dir, seed=seed, start_episode=start_episode)

        return _Partial()


# -- training ------------------------------------------------------------------------------------------------------
def train(
    name: str,
    dataset: Any,
    seed: int,
    budget_s: float,
    config: dict[str, Any],
    precision: str = "fp32",
    updates: int | None = None,
) -> tuple[Any, int, float]:
    """Train ``name`` on ``dataset`` for ``budget_s`` seconds of this process's CPU time, or for exactly ``updates``
    updates when given; returns (agent, updates, CPU seconds).

    CPU time, not wall clock: on a shared machine the wall clock would measure the neighbours' load. A CPU budget
    still buys a different number of updates on another machine or day (and some results move with it); a fixed
    number of updates is the same work wherever it runs, and repeats exactly on one machine.
    """
    from decision_core.algos import create_agent

    agent = create_agent(name, dataset.spec, dataset.stats, config=config or None, seed=seed)
    agent.set_precision(precision)
    sampler = agent.sampler(dataset, seed=seed)
    batch = agent.config.batch_size
    start = time.process_time()
    steps = 0
    while steps < updates if updates is not None else time.process_time() - start < budget_s:
        for _ in range(25 if updates is None else min(25, updates - steps)):
            agent.update(sampler.sample(batch))
            steps += 1
    return agent, steps, time.process_time() - start


def _training(args: argparse.Namespace) -> str:
    return f"{args.updates} updates" if args.updates is not None else f"{args.budget_s:g} CPU-s training"


def _fmt(values: Sequence[float], pct: bool = True) -> str:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "n/a"
    scale = 100.0 if pct else 1.0
    mean = statistics.fmean(vals) * scale
    if len(vals) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {statistics.stdev(vals) * scale:.1f}"


def run_domain(domain: str, args: argparse.Namespace, workdir: Path, console: Any) -> dict[str, Any]:
    from rich.table import Table

    from decision_core.algos import ALGORITHMS, Exploration
    from decision_core.data import OfflineDataset
    from decision_core.envs import get_simulator
    from decision_core.envs.evaluate import BASELINES, LearnedPolicy, evaluate_policies
    from decision_core.reward import rewards_for

    t0 = time.perf_counter()
    arrays = load_domain(domain, args.log_steps, workdir, seed=args.data_seed)
    console.print(
        f"[bold]{domain}[/]: {arrays.n_steps} logged steps in {arrays.n_episodes} episodes "
        f"(simulate + ingest + load {time.perf_counter() - t0:.1f}s)"
    )
    goal_ds = OfflineDataset(arrays)
    reward_ds = None
    reward_algos = [a for a in args.reward_algos if a in ALGORITHMS]
    if reward_algos:
        try:
            reward_ds = OfflineDataset(arrays, rewards=rewards_for(arrays))
        except Exception as exc:  # a domain without a usable reward: report it, keep the goal benchmark
            console.print(f"  no reward task for {domain}: {exc}")
            reward_algos = []
    sim = get_simulator(domain)
    partial_sim = PartialGoals(sim)
    algos = [a for a in args.algos if a in ALGORITHMS] + reward_algos
    # A simulator's policies beyond the baselines are references (e.g. the recommender's oracle without the
    # user's hidden state): evaluated beside the learners, to show what the observable state allows.
    references = {n: p for n, p in sim.policies().items() if n not in BASELINES}
    per_seed: dict[str, list[dict[str, float]]] = {
        a: [] for a in [*algos, *references, "behaviour", "oracle", "random"]
    }
    for seed in range(args.seeds):
        agents: dict[str, Any] = {}
        work: dict[str, dict[str, float]] = {}  # updates and CPU seconds each learner trained for
        for name in algos:
            ds = reward_ds if name in reward_algos else goal_ds
            t = time.perf_counter()
            agent, updates, cpu_s = train(
                name, ds, seed, args.budget_s, json.loads(args.config), args.precision, args.updates
            )
            agents[name] = agent
            work[name] = {"updates": updates, "cpu_s": cpu_s}
            console.print(
                f"  seed {seed} {name}: {updates} updates in {cpu_s:.0f} CPU-s ({time.perf_counter() - t:.0f}s wall)"
            )
        exploration = None if args.temperature is None else Exploration(temperature=args.temperature)
        learned = {name: LearnedPolicy(agent, exploration=exploration) for name, agent in agents.items()}
        policies = {**references, **learned}
        full = evaluate_policies(sim, policies, episodes=args.eval_episodes, seed=1000 + seed, bootstrap=200)
        goal_policies = {n: p for n, p in policies.items() if n not in reward_algos}
        partial = evaluate_policies(
            partial_sim, goal_policies, episodes=args.eval_episodes, seed=2000 + seed, bootstrap=200
        )
        for name, r in full.policies.items():
            p = partial.policies.get(name)
            per_seed[name].append(
                {
                    "success": r.success_rate.mean,
                    "hard_success": r.hard_success_rate.mean,
                    "steps_to_goal": r.steps_to_goal,
                    "partial_success": p.success_rate.mean if p is not None else float("nan"),
                    "normalised_score": r.normalised_score.mean,
                    **work.get(name, {}),
                }
            )
    table = Table(
        "policy",
        "goal success %",
        "hard-goal success %",
        "steps to goal",
        "partial-goal success %",
        "normalised score",
        title=f"{domain}: {args.seeds} seed(s), {_training(args)} per algorithm and seed, "
        f"{arrays.n_steps} logged steps, {args.eval_episodes} eval episodes per goal"
        + ("" if args.temperature is None else f", learned policies sampled at temperature {args.temperature:g}"),
    )
    summary: dict[str, dict[str, float]] = {}
    for name, rows in per_seed.items():
        if not rows:
            continue
        col = {k: [r[k] for r in rows] for k in rows[0]}
        summary[name] = {
            k: statistics.fmean(v) if not all(map(math.isnan, v)) else float("nan") for k, v in col.items()
        }
        table.add_row(
            name,
            _fmt(col["success"]),
            _fmt(col["hard_success"]),
            _fmt(col["steps_to_goal"], pct=False),
            _fmt(col["partial_success"]),
            _fmt(col["normalised_score"], pct=False)
            if name in (*reward_algos, *references, "behaviour", "oracle", "random")
            else "-",
        )
    console.print(table)
    goal_algos = [a for a in args.algos if a in summary]
    if goal_algos and "behaviour" in summary:
        best = max(goal_algos, key=lambda a: summary[a]["success"])
        gain = 100 * (summary[best]["success"] - summary["behaviour"]["success"])
        vs_gcbc = (
            f"{100 * (summary[best]['success'] - summary['gcbc']['success']):+.1f} over GCBC"
            if "gcbc" in summary
            else "GCBC not run"
        )
        console.print(f"  best goal-conditioned: {best}, {gain:+.1f} points over behaviour (bar +15), {vs_gcbc}")
    for name in reward_algos:
        console.print(f"  {name} normalised score {summary[name]['normalised_score']:.1f} (bar 70)")
    for name in references:
        console.print(f"  reference {name}: normalised score {summary[name]['normalised_score']:.1f}")
    return {"domain": domain, "steps": arrays.n_steps, "summary": summary, "per_seed": per_seed}


# -- memory --------------------------------------------------------------------------------------------------------
def _rss_gib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_memory(args: argparse.Namespace, console: Any) -> None:
    """Peak RSS of a dataset of ``--memory-steps`` steps and a few updates of each algorithm."""
    from decision_core.algos import ALGORITHMS, create_agent
    from decision_core.data import OfflineDataset
    from decision_core.schema import DiscreteActions, DomainSpec, Feature, OutcomeFeature
    from decision_core.store import DomainArrays

    n, s, ep = args.memory_steps, args.memory_features, 200
    spec = DomainSpec(
        name="memory",
        version="1",
        state=tuple(Feature(f"f{i}") for i in range(s)),
        outcomes=(OutcomeFeature("f0", 0.1), OutcomeFeature("f1", 0.1)),
        actions=DiscreteActions(tuple(f"a{i}" for i in range(8))),
        reward="logged",
    )
    rng = np.random.default_rng(0)
    console.print(f"baseline RSS {_rss_gib():.2f} GiB; building {n} x {s} arrays as the store would return them")
    states = np.empty((n, s), np.float32)
    for lo in range(0, n, 1 << 20):
        states[lo : lo + (1 << 20)] = rng.standard_normal((min(1 << 20, n - lo), s), dtype=np.float32)
    next_states = np.empty_like(states)
    next_states[:-1] = states[1:]
    next_states[-1] = states[-1]
    starts = np.arange(0, n, ep, dtype=np.int64)
    arrays = DomainArrays(
        spec=spec,
        states=states,
        actions=rng.integers(0, 8, (n, 1)).astype(np.float32),
        next_states=next_states,
        rewards=np.zeros(n, np.float32),
        propensities=np.full(n, np.nan, np.float32),
        terminated=np.zeros(n, np.bool_),
        truncated=np.zeros(n, np.bool_),
        action_masks=None,
        episode_starts=starts,
        episode_ends=np.minimum(starts + ep, n),
    )
    console.print(f"arrays {arrays.nbytes / 2**30:.2f} GiB; peak RSS so far {_rss_gib():.2f} GiB")
    t = time.perf_counter()
    dataset = OfflineDataset(arrays)
    del arrays, next_states  # training keeps only the dataset (states are shared, next states reconstructed)
    console.print(
        f"dataset built in {time.perf_counter() - t:.1f}s: {dataset.nbytes / 2**30:.2f} GiB held; "
        f"peak RSS {_rss_gib():.2f} GiB"
    )
    for name in [a for a in (*GOAL_ALGOS, *REWARD_ALGOS) if a in ALGORITHMS]:
        agent = create_agent(name, spec, dataset.stats, seed=0)
        sampler = agent.sampler(dataset, seed=0)
        t = time.perf_counter()
        for _ in range(20):
            agent.update(sampler.sample(agent.config.batch_size))
        console.print(f"  {name}: 20 updates in {time.perf_counter() - t:.2f}s; peak RSS {_rss_gib():.2f} GiB")
    peak = _rss_gib()
    console.print(f"[bold]peak RSS {peak:.2f} GiB for {n} steps x {s} features (bar: < 4 GiB)[/]")


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console

    from decision_core.algos import configure_torch_threads

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", default="inventory,recommender,dialogue")
    parser.add_argument("--algos", default=",".join(GOAL_ALGOS), help="goal-conditioned algorithms")
    parser.add_argument("--reward-algos", default=",".join(REWARD_ALGOS), help="reward-task algorithms ('' = none)")
    parser.add_argument(
        "--budget-s", type=float, default=600.0, help="training CPU seconds per algorithm and seed (process time)"
    )
    parser.add_argument(
        "--updates",
        type=int,
        default=None,
        help="train exactly this many updates per algorithm and seed instead of --budget-s (the same work anywhere)",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--log-steps", type=int, default=300_000, help="behaviour-log steps per domain")
    parser.add_argument("--eval-episodes", type=int, default=200, help="evaluation episodes per goal")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="evaluate learned policies sampling at this temperature (default: greedy); the baselines are stochastic",
    )
    parser.add_argument("--config", default="{}", help="JSON config overrides applied to every algorithm")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="training precision")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: these small networks run fastest on one)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--memory-steps", type=int, default=0, help="run the memory check with this many steps")
    parser.add_argument("--memory-features", type=int, default=32)
    args = parser.parse_args(argv)
    args.algos = [a for a in args.algos.split(",") if a]
    args.reward_algos = [a for a in args.reward_algos.split(",") if a]
    console = Console()
    threads = configure_torch_threads(args.threads)
    console.print(f"torch threads: {threads}")
    if args.memory_steps:
        run_memory(args, console)
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_quality_") as tmp:
        for domain in [d for d in args.domains.split(",") if d]:
            results.append(run_domain(domain, args, Path(tmp), console))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": {k: v for k, v in vars(args).items() if k != "json"}, "results": results},
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
