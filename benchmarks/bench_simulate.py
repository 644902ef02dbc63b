"""Simulator speed per domain on one core: env steps/s of the single gymnasium env (B=1) and of the vectorised
env (B=1024, one batched dynamics call per step), with their ratio measured in the same run, plus the logging path
(``rollout`` of the behaviour policy, what ``decision-core simulate`` runs).

Target: >= 20k env steps/s per domain with the vectorised path. Medians of ``--repeats`` runs.

    python -m benchmarks.bench_simulate [--repeats 5] [--batch 1024] [--domains inventory,recommender,dialogue]
"""

from __future__ import annotations

import os

# One core: pin the numeric libraries' thread pools before they are imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

TARGET = 20_000


def _actions(space, n: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Pre-drawn uniform actions (so the timing is the env's, not the sampler's)."""
    import gymnasium

    if isinstance(space, gymnasium.spaces.Discrete):
        return rng.integers(0, int(space.n), size=(steps, n))
    low, high = space.low, space.high
    return rng.uniform(low, high, size=(steps, n, *low.shape)).astype(np.float32)


def single_env_rate(domain: str, steps: int, seed: int) -> float:
    from decision_core.envs.gym import SimulatorEnv

    env = SimulatorEnv(domain)
    actions = _actions(env.action_space, 1, steps, np.random.default_rng(seed))
    env.reset(seed=seed)
    start = time.perf_counter()
    for t in range(steps):
        a = actions[t, 0]
        _, _, term, trunc, _ = env.step(int(a) if a.ndim == 0 else a)
        if term or trunc:
            env.reset()
    return steps / (time.perf_counter() - start)


def vector_env_rate(domain: str, batch: int, steps: int, seed: int) -> float:
    from decision_core.envs.gym import SimulatorVectorEnv

    venv = SimulatorVectorEnv(domain, batch)
    actions = _actions(venv.single_action_space, batch, steps, np.random.default_rng(seed))
    venv.reset(seed=seed)
    start = time.perf_counter()
    for t in range(steps):
        venv.step(actions[t])
    return batch * steps / (time.perf_counter() - start)


def rollout_rate(domain: str, batch: int, seed: int) -> float:
    from decision_core.envs import get_simulator
    from decision_core.envs.rollout import rollout

    sim = get_simulator(domain)
    policy = sim.policies()["behaviour"]
    start = time.perf_counter()
    ep = rollout(sim.dynamics(), policy, batch=batch, max_steps=sim.max_steps, rng=np.random.default_rng(seed))
    return int(ep.lengths.sum()) / (time.perf_counter() - start)


def main() -> None:
    import torch

    torch.set_num_threads(1)
    from decision_core.envs import SIMULATORS, get_simulator

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--domains", default=",".join(SIMULATORS.names()))
    args = parser.parse_args()
    console = Console()
    table = Table(
        "domain",
        "B=1 env steps/s",
        f"B={args.batch} env steps/s",
        "vectorised / B=1",
        f"behaviour rollout B={args.batch} steps/s",
        f"target {TARGET // 1000}k",
        title=f"simulator speed, one core, median of {args.repeats}",
    )
    for domain in args.domains.split(","):
        steps = min(get_simulator(domain).max_steps, 200)
        single_env_rate(domain, 20, 0)  # warm-up: imports, first allocations
        single = statistics.median(single_env_rate(domain, 2000, r) for r in range(args.repeats))
        vector = statistics.median(vector_env_rate(domain, args.batch, steps, r) for r in range(args.repeats))
        logging = statistics.median(rollout_rate(domain, args.batch, r) for r in range(args.repeats))
        table.add_row(
            domain,
            f"{single:,.0f}",
            f"{vector:,.0f}",
            f"{vector / single:.0f}x",
            f"{logging:,.0f}",
            "[green]met[/]" if vector >= TARGET else "[red]missed[/]",
        )
        console.print(
            f"{domain}: B=1 {single:,.0f}/s, B={args.batch} {vector:,.0f}/s ({vector / single:.0f}x), "
            f"behaviour rollout {logging:,.0f}/s",
            highlight=False,
        )
    console.print(table)


if __name__ == "__main__":
    main()
