"""Training speed of every registered algorithm against a bare PyTorch loop doing the same network math.

One step = sample a batch from pre-loaded data + one ``update``. Batch 256, 2x256 MLPs, a synthetic domain of
17 state features (2 of them outcomes) with 6 discrete actions or a 6-D Box, 100k steps. For each algorithm and
action kind the framework (``agent.sampler(dataset).sample`` + ``agent.update``) and the bare loop from
``benchmarks/baselines/bare_loops.py`` are timed alternately, ``--repeats`` times each; the table shows median
steps/s and the median of the paired ratios (target >= 0.8, i.e. framework overhead <= 20%).

It also prints absolute steps/s for discrete BC, discrete CQL and IQL next to d3rlpy 2.8.1's figures from the
requirements (~110 DiscreteBC, ~62 DiscreteCQL, ~40 IQL steps/s on a 2-core machine; targets >= 3x on BC and
>= 1.5x on CQL/IQL). With ``--d3rlpy PYTHON`` (an interpreter that has d3rlpy 2.8.1 installed, e.g. a separate
``/tmp/d3rlpy-venv``) d3rlpy itself is measured in the same run on the same data shapes.

    python -m benchmarks.bench_algos_speed [--algos iql,cql] [--kinds discrete] [--seconds 3] [--repeats 3]
        [--precision bf16] [--d3rlpy /tmp/d3rlpy-venv/bin/python]

``--precision bf16`` trains the framework and the bare loops in mixed precision (``TrainConfig.precision``); d3rlpy
trains in float32 either way.

A d3rlpy interpreter that leaves the project's environment alone: a separate venv that reuses the project's
torch/numpy/gymnasium through a ``.pth`` file and gets d3rlpy and its small pure-Python dependencies without
their pins (d3rlpy 2.8.1 pins gymnasium 1.0; the measured update paths do not touch gymnasium)::

    python -m venv /tmp/d3rlpy-venv
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/d3rlpy-venv/lib/python3.11/site-packages/project.pth
    /tmp/d3rlpy-venv/bin/pip install --no-deps d3rlpy==2.8.1 gym==0.26.2 gym-notices tqdm h5py structlog \
        colorama dataclasses-json marshmallow typing-inspect mypy-extensions

The machine may be shared: compare ratios measured in the same run, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_DIM, N_OUTCOMES, N_ACTIONS, ACTION_DIM, N_STEPS, EPISODE_LEN = 17, 2, 6, 6, 100_000, 100
#: d3rlpy 2.8.1 steps/s quoted in the requirements (same batch and network size, 2-core machine).
D3RLPY_QUOTED = {("bc", "discrete"): 110.0, ("cql", "discrete"): 62.0, ("iql", "continuous"): 40.0}
#: Targets: framework steps/s as a multiple of d3rlpy's.
D3RLPY_TARGET = {"bc": 3.0, "cql": 1.5, "iql": 1.5}


def synthetic_arrays(discrete: bool, seed: int = 0) -> Any:
    """A random domain of ``N_STEPS`` steps in ``EPISODE_LEN``-step episodes, as ``load_arrays`` returns it."""
    from decision_core.schema import BoxActions, DiscreteActions, DomainSpec, Feature, OutcomeFeature
    from decision_core.store import DomainArrays

    rng = np.random.default_rng(seed)
    actions_space: DiscreteActions | BoxActions
    if discrete:
        actions_space = DiscreteActions(labels=tuple(f"a{i}" for i in range(N_ACTIONS)))
    else:
        names = tuple(f"u{i}" for i in range(ACTION_DIM))
        actions_space = BoxActions(names=names, low=(-1.0,) * ACTION_DIM, high=(1.0,) * ACTION_DIM)
    spec = DomainSpec(
        name="bench_speed",
        version="1",
        state=tuple(Feature(f"f{i}") for i in range(STATE_DIM)),
        outcomes=tuple(OutcomeFeature(f"f{i}", 0.1) for i in range(N_OUTCOMES)),
        actions=actions_space,
        reward="logged",
    )
    n_episodes = N_STEPS // EPISODE_LEN
    obs = rng.standard_normal((n_episodes, EPISODE_LEN + 1, STATE_DIM), dtype=np.float32)
    if discrete:
        actions = rng.integers(0, N_ACTIONS, (N_STEPS, 1)).astype(np.float32)
    else:
        actions = rng.uniform(-1, 1, (N_STEPS, ACTION_DIM)).astype(np.float32)
    starts = np.arange(0, N_STEPS, EPISODE_LEN, dtype=np.int64)
    terminated = np.zeros((n_episodes, EPISODE_LEN), np.bool_)
    terminated[:, -1] = True
    return DomainArrays(
        spec=spec,
        states=obs[:, :-1].reshape(N_STEPS, STATE_DIM).copy(),
        actions=actions,
        next_states=obs[:, 1:].reshape(N_STEPS, STATE_DIM).copy(),
        rewards=rng.standard_normal(N_STEPS).astype(np.float32),
        propensities=np.full(N_STEPS, 1.0 / N_ACTIONS, np.float32),
        terminated=terminated.reshape(-1),
        truncated=np.zeros(N_STEPS, np.bool_),
        action_masks=None,
        episode_starts=starts,
        episode_ends=starts + EPISODE_LEN,
    )


def bare_data(arrays: Any) -> dict[str, Any]:
    """The same data as pre-loaded tensors for the bare loops."""
    discrete = arrays.spec.discrete
    return {
        "states": torch.from_numpy(arrays.states),
        "next_states": torch.from_numpy(arrays.next_states),
        "actions": torch.from_numpy(arrays.actions[:, 0].astype(np.int64))
        if discrete
        else torch.from_numpy(arrays.actions),
        "rewards": torch.from_numpy(arrays.rewards),
        "terminals": torch.from_numpy(arrays.terminated.astype(np.float32)),
        "n_actions": arrays.spec.n_actions,
        "outcome_index": torch.from_numpy(arrays.spec.outcome_index),
        "tolerances": torch.from_numpy(arrays.spec.tolerances),
    }


def framework_step(name: str, dataset: Any, batch: int, precision: str = "fp32", seed: int = 0) -> Callable[[], None]:
    from decision_core.algos import create_agent

    agent = create_agent(
        name, dataset.spec, dataset.stats, config={"batch_size": batch, "hidden_dims": [256, 256]}, seed=seed
    ).set_precision(precision)
    sampler = agent.sampler(dataset, seed=seed)

    def step() -> None:
        agent.update(sampler.sample(batch))

    return step


def steps_per_second(step: Callable[[], None], seconds: float, warmup: int = 5) -> float:
    for _ in range(warmup):
        step()
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and n >= 3:
            return n / elapsed


# -- d3rlpy, measured in a separate interpreter -------------------------------------------------------------------

_D3RLPY_CHILD = r"""
import json, os, sys, time
# The protocol owns the real stdout; d3rlpy's logs go to stderr.
out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr
import numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
import d3rlpy
from d3rlpy.dataset import MDPDataset
from d3rlpy.models.encoders import VectorEncoderFactory
S, K, A, N, L = (int(x) for x in sys.argv[2:7])
rng = np.random.default_rng(0)
obs = rng.standard_normal((N, S)).astype(np.float32)
terminals = np.zeros(N, np.float32); terminals[L - 1 :: L] = 1.0
enc = VectorEncoderFactory(hidden_units=[256, 256])
steps = {}
for key, discrete, make in (
    ("bc/discrete", True, lambda: d3rlpy.algos.DiscreteBCConfig(batch_size=256, encoder_factory=enc)),
    ("cql/discrete", True, lambda: d3rlpy.algos.DiscreteCQLConfig(batch_size=256, encoder_factory=enc)),
    ("iql/continuous", False, lambda: d3rlpy.algos.IQLConfig(
        batch_size=256, actor_encoder_factory=enc, critic_encoder_factory=enc, value_encoder_factory=enc)),
    ("cql/continuous", False, lambda: d3rlpy.algos.CQLConfig(
        batch_size=256, actor_encoder_factory=enc, critic_encoder_factory=enc)),
):
    acts = rng.integers(0, K, N) if discrete else rng.uniform(-1, 1, (N, A)).astype(np.float32)
    ds = MDPDataset(obs, acts, rng.standard_normal(N).astype(np.float32), terminals,
                    action_space=d3rlpy.ActionSpace.DISCRETE if discrete else d3rlpy.ActionSpace.CONTINUOUS)
    algo = make().create(device="cpu:0")
    algo.build_with_dataset(ds)
    # What d3rlpy's fit() does per step: sample a transition batch from the dataset, then update.
    steps[key] = (lambda algo=algo, ds=ds: algo.update(ds.sample_transition_batch(256)))
    for _ in range(5):
        steps[key]()
print(json.dumps(sorted(steps)), file=out, flush=True)
for line in sys.stdin:
    key, seconds = line.split()
    step, n, t0 = steps[key], 0, time.perf_counter()
    while time.perf_counter() - t0 < float(seconds) or n < 3:
        step(); n += 1
    print(json.dumps(n / (time.perf_counter() - t0)), file=out, flush=True)
"""


class D3rlpyRunner:
    """d3rlpy 2.8.1 in its own interpreter, kept running so each measurement sits right next to ours."""

    def __init__(self, python: str, threads: int) -> None:
        args = [str(x) for x in (threads, STATE_DIM, N_ACTIONS, ACTION_DIM, N_STEPS, EPISODE_LEN)]
        self.proc = subprocess.Popen(
            [python, "-c", _D3RLPY_CHILD, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"d3rlpy could not be started with {python}; run it by hand to see why")
        self.keys: list[str] = json.loads(line)

    def steps_per_second(self, key: str, seconds: float) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{key} {seconds}\n")
        self.proc.stdin.flush()
        return float(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


# -- main ---------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", default="", help="comma-separated algorithm names (default: all registered)")
    parser.add_argument("--kinds", default="discrete,continuous")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is steadiest here)")
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="training precision of the framework and the bare loops (d3rlpy trains in fp32 either way)",
    )
    parser.add_argument("--d3rlpy", default="", help="python interpreter with d3rlpy 2.8.1 installed")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from benchmarks.baselines.bare_loops import BARE_LOOPS, make_bare_loop
    from decision_core.algos import ALGORITHMS, configure_torch_threads
    from decision_core.data import OfflineDataset

    console = Console()
    threads = configure_torch_threads(args.threads)
    names = [a for a in args.algos.split(",") if a] or ALGORITHMS.names()
    kinds = [k for k in args.kinds.split(",") if k]
    results: dict[str, dict[str, Any]] = {}
    steps: dict[str, tuple[Callable[[], None], Callable[[], None] | None]] = {}
    for kind in kinds:
        arrays = synthetic_arrays(kind == "discrete")
        dataset = OfflineDataset(arrays)
        tensors = bare_data(arrays)
        for name in names:
            try:
                fw = framework_step(name, dataset, args.batch, args.precision)
            except Exception as exc:  # an algorithm that cannot be built here is reported, not fatal
                results[f"{name}/{kind}"] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            bare = None
            if name in BARE_LOOPS:
                bare = make_bare_loop(
                    name, tensors, discrete=kind == "discrete", batch=args.batch, precision=args.precision
                )
            steps[f"{name}/{kind}"] = (fw, bare)

    # Repeats are the outer loop so that a change in the machine's load hits every algorithm alike; within a
    # repeat, each framework measurement is followed at once by its bare loop's (paired ratios).
    runs: dict[str, dict[str, list[float]]] = {key: {"framework": [], "bare": [], "d3rlpy": []} for key in steps}
    d3rlpy = None
    if args.d3rlpy:
        with console.status("starting d3rlpy 2.8.1 in its own interpreter"):
            d3rlpy = D3rlpyRunner(args.d3rlpy, threads)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("measuring", total=args.repeats * len(steps))
        for repeat in range(args.repeats):
            for key, (fw, bare) in steps.items():
                progress.update(task, description=f"repeat {repeat + 1}: {key}")
                runs[key]["framework"].append(steps_per_second(fw, args.seconds))
                if bare is not None:
                    runs[key]["bare"].append(steps_per_second(bare, args.seconds))
                if d3rlpy is not None and key in d3rlpy.keys:
                    runs[key]["d3rlpy"].append(d3rlpy.steps_per_second(key, args.seconds))
                progress.advance(task)
    if d3rlpy is not None:
        d3rlpy.close()
    for key, r in runs.items():
        row: dict[str, Any] = {"framework": statistics.median(r["framework"]), "framework_runs": r["framework"]}
        if r["bare"]:
            row["bare"] = statistics.median(r["bare"])
            row["bare_runs"] = r["bare"]
            row["ratio"] = statistics.median(f / b for f, b in zip(r["framework"], r["bare"], strict=True))
        results[key] = row
    d3 = {k: statistics.median(r["d3rlpy"]) for k, r in runs.items() if r["d3rlpy"]}
    # Paired ratios: each d3rlpy measurement was taken right after ours.
    d3_ratio = {
        k: statistics.median(f / d for f, d in zip(runs[k]["framework"], runs[k]["d3rlpy"], strict=True)) for k in d3
    }
    for k in d3:
        results[k]["d3rlpy"], results[k]["d3rlpy_runs"] = d3[k], runs[k]["d3rlpy"]

    table = Table(
        title=f"steps/s, batch {args.batch}, 2x256 MLP, {args.precision}, {threads} torch thread(s); "
        f"medians of {args.repeats}"
    )
    for col in ("algorithm", "actions", "framework", "bare loop", "ratio (>= 0.8)"):
        table.add_column(col, justify="right" if col not in ("algorithm", "actions") else "left")
    for key, row in results.items():
        name, kind = key.split("/")
        if "error" in row:
            table.add_row(name, kind, f"[red]{row['error'][:60]}[/]", "", "")
            continue
        ratio = row.get("ratio")
        shown = "n/a (no bare loop)" if ratio is None else f"[{'green' if ratio >= 0.8 else 'red'}]{ratio:.2f}[/]"
        bare_text = f"{row['bare']:.1f}" if "bare" in row else "-"
        table.add_row(name, kind, f"{row['framework']:.1f}", bare_text, shown)
    console.print(table)

    vs = Table(title="against d3rlpy 2.8.1 (quoted figures from the requirements; measured if --d3rlpy given)")
    for col in ("algorithm", "ours", "d3rlpy quoted", "x quoted", "d3rlpy measured", "x measured", "target"):
        vs.add_column(col, justify="left" if col == "algorithm" else "right")
    for (name, kind), quoted in D3RLPY_QUOTED.items():
        found = results.get(f"{name}/{kind}")
        if not found or "framework" not in found:
            continue
        ours = found["framework"]
        measured = d3.get(f"{name}/{kind}")
        vs.add_row(
            f"{name} ({kind})",
            f"{ours:.1f}",
            f"{quoted:.0f}",
            f"{ours / quoted:.2f}x",
            f"{measured:.1f}" if measured else "-",
            f"{d3_ratio[f'{name}/{kind}']:.2f}x" if measured else "-",
            f">= {D3RLPY_TARGET[name]}x",
        )
    for key, value in d3.items():
        if tuple(key.split("/")) not in D3RLPY_QUOTED and key in results and "framework" in results[key]:
            ours = results[key]["framework"]
            name, kind = key.split("/")
            vs.add_row(f"{name} ({kind})", f"{ours:.1f}", "-", "-", f"{value:.1f}", f"{d3_ratio[key]:.2f}x", "-")
    console.print(vs)
    if args.json:
        args.json.write_text(json.dumps({"threads": threads, "results": results}, indent=2))


if __name__ == "__main__":
    main()
