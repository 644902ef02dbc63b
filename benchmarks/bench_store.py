"""Reading a stored domain back into training arrays: steps/s and memory against the arrays' own size.

Targets: >= 5M steps/s, and the load's peak memory (RSS growth) <= 1.5x the arrays it returns.
Baseline measured in the same run: DuckDB's own ``fetchnumpy`` of the same columns (what a plain query costs).

    python -m benchmarks.bench_store [--steps 5000000] [--features 32] [--repeats 3]

Each measurement runs in a fresh subprocess so peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.memory import proc_status_mib


def build(db: Path, steps: int, features: int, episode_len: int = 50) -> None:
    """Write a synthetic domain of ``steps`` steps straight into the store, in 1M-row chunks."""
    import numpy as np
    import polars as pl

    from decision_core.schema import DiscreteActions, DomainSpec, Feature, OutcomeFeature, steps_schema
    from decision_core.store import DecisionStore

    spec = DomainSpec(
        name="bench",
        version="1",
        state=tuple(Feature(f"f{i}") for i in range(features)),
        outcomes=(OutcomeFeature("f0", 0.1), OutcomeFeature("f1", 0.1)),
        actions=DiscreteActions(labels=tuple(f"a{i}" for i in range(8))),
    )
    schema = steps_schema(spec)
    if steps % episode_len:
        raise SystemExit(f"--steps must be a multiple of the episode length ({episode_len})")
    rng = np.random.default_rng(0)
    with DecisionStore(db) as store, store.transaction() as con:
        store.ensure_domain(spec, con)
        for start in range(0, steps, 1_000_000):  # whole episodes per chunk (1M is a multiple of episode_len)
            n = min(1_000_000, steps - start)
            idx = np.arange(start, start + n)
            # The N+1 observations of each episode: a step's next state is the following step's state.
            obs = rng.standard_normal((n // episode_len, episode_len + 1, features), dtype=np.float32)
            chunk = pl.DataFrame(
                {
                    "episode_id": pl.Series((idx // episode_len).astype(np.int64)).cast(pl.String).str.zfill(9),
                    "step": (idx % episode_len).astype(np.int32),
                    "state": obs[:, :-1].reshape(n, features),
                    "action": rng.integers(0, 8, (n, 1)).astype(np.float32),
                    "action_mask": None,
                    "propensity": np.full(n, 0.125),
                    "reward": rng.standard_normal(n),
                    "next_state": obs[:, 1:].reshape(n, features),
                    "terminated": (idx % episode_len) == episode_len - 1,
                    "truncated": np.zeros(n, bool),
                    "timestamp": None,
                    "source_adapter": "bench",
                    "adapter_version": "1",
                    "source_file": "synthetic",
                    "source_row": idx,
                },
                schema=schema,
            )
            con.register("chunk", chunk)
            store.insert_steps(spec, "chunk", con, dedupe=False, ensure=False)
            con.unregister("chunk")


def child(mode: str, db: str) -> None:
    from decision_core.store import DecisionStore

    store = DecisionStore(db, read_only=True)
    before = proc_status_mib("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    if mode == "load_arrays":
        arrays = store.load_arrays("bench")
        n, nbytes = arrays.n_steps, arrays.nbytes
    else:  # baseline: DuckDB's fetchnumpy of the same stored columns, no episode bookkeeping or next states
        cols = store.con.sql(
            "SELECT state, action, reward, propensity, terminated, truncated, step FROM steps_bench_rows"
        ).fetchnumpy()
        n = len(cols["step"])
        nbytes = sum(getattr(v, "nbytes", 0) for v in cols.values())
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = proc_status_mib("VmHWM")
    print(
        json.dumps(
            {"seconds": seconds, "cpu": cpu, "steps": n, "nbytes": nbytes, "rss_before": before, "rss_peak": peak}
        )
    )


def measure(mode: str, db: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_store", "--child", mode, "--db", str(db)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5_000_000)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["load_arrays", "fetchnumpy"])
    parser.add_argument("--db")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.db)
        return

    from rich.console import Console
    from rich.table import Table

    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        with console.status(f"writing {args.steps:,} synthetic steps x {args.features} features"):
            build(db, args.steps, args.features)
        results: dict[str, list[dict[str, float]]] = {"load_arrays": [], "fetchnumpy": []}
        for _ in range(args.repeats):
            for mode in results:
                results[mode].append(measure(mode, db))

    table = Table(
        "reader", "median s", "steps/s", "CPU s", "steps per CPU s", "arrays MiB", "RSS growth MiB", "growth / arrays"
    )
    summary = {}
    for mode, runs in results.items():
        secs = statistics.median(r["seconds"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        growth = statistics.median(r["rss_peak"] - r["rss_before"] for r in runs)
        nbytes = runs[0]["nbytes"] / 2**20
        summary[mode] = (secs, growth, nbytes)
        table.add_row(
            mode,
            f"{secs:.3f}",
            f"{args.steps / secs:,.0f}",
            f"{cpu:.3f}",
            f"{args.steps / cpu:,.0f}",
            f"{nbytes:,.0f}",
            f"{growth:,.0f}",
            f"{growth / nbytes:.2f}x",
        )
    console.print(table)
    console.print(
        "load_arrays decodes on two DuckDB threads while a third copies into the arrays; on a machine shared with "
        "other work its wall time measures the neighbours too"
    )
    ours, base = summary["load_arrays"], summary["fetchnumpy"]
    console.print(
        f"load_arrays: {args.steps / ours[0] / 1e6:.1f}M steps/s (target >= 5M), "
        f"memory {ours[1] / ours[2]:.2f}x arrays (target <= 1.5x); "
        f"speed vs DuckDB fetchnumpy baseline: {base[0] / ours[0]:.2f}x"
    )


if __name__ == "__main__":
    main()
