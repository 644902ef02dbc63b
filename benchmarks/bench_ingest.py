"""Ingest of a ~1M-row raw log per built-in adapter: rows/s, peak RSS, and the ratio to DuckDB's own read_csv.

Targets: >= 1M raw rows/s, and within 3x of loading the same files into a table with DuckDB's ``read_csv``.
The raw logs are simulated once with each domain's behaviour policy (the format its adapter reads) and cached in
``benchmarks/.cache``. Each measurement runs in a fresh subprocess (its own peak RSS) into a fresh store.

    python -m benchmarks.bench_ingest [--rows 1000000] [--repeats 3] [--domains inventory,recommender,dialogue]
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

CACHE = Path(__file__).parent / ".cache"


def count_rows(files: list[Path]) -> int:
    import polars as pl

    return sum(pl.scan_csv(f, infer_schema=False).select(pl.len()).collect().item() for f in files)


def raw_logs(domain: str, rows: int) -> list[Path]:
    """Simulated behaviour logs of ``domain`` with at least ``rows`` raw rows (cached per domain version)."""
    from decision_core.envs import get_simulator
    from decision_core.envs.simulate import simulate_logs

    out = CACHE / f"{domain}-v{get_simulator(domain).spec().version}-{rows}"
    manifest = out / "files.json"
    if manifest.exists():
        return [Path(p) for p in json.loads(manifest.read_text())]
    probe_dir = out.with_name(out.name + "-probe")
    probe = simulate_logs(domain, 200, "behaviour", 0, probe_dir)
    per_episode = count_rows([p for p in probe if p.suffix == ".csv"]) / 200
    episodes = int(rows / per_episode * 1.02) + 1
    chunks = [p for p in simulate_logs(domain, episodes, "behaviour", 1, out / "chunks") if p.suffix == ".csv"]
    merged = out / f"{domain}.csv"  # one 1M-row raw log, as a source system would export it
    with merged.open("w") as dst:
        for i, chunk in enumerate(chunks):
            with chunk.open() as src:
                header = src.readline()
                if i == 0:
                    dst.write(header)
                dst.writelines(src)
            chunk.unlink()
    manifest.write_text(json.dumps([str(merged)]))
    return [merged]


def child(mode: str, domain: str, files: list[str], db: str) -> None:
    t0 = time.perf_counter()
    if mode == "ingest":
        from adapters import get_adapter
        from adapters.ingest import ingest
        from decision_core.store import DecisionStore

        with DecisionStore(db) as store:
            report = ingest(get_adapter(domain), files, store)
        rows = report.rows_read
    else:
        import duckdb

        con = duckdb.connect(db)
        rows = 0
        for i, f in enumerate(files):
            if not f.endswith(".csv"):
                continue
            con.execute(f"CREATE TABLE raw_{i} AS SELECT * FROM read_csv('{f}')")
            rows += con.execute(f"SELECT count(*) FROM raw_{i}").fetchall()[0][0]
        con.close()
    seconds = time.perf_counter() - t0
    peak = proc_status_mib("VmHWM")
    print(json.dumps({"seconds": seconds, "rows": rows, "rss_peak": peak}))


def measure(mode: str, domain: str, files: list[Path]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.bench_ingest",
                "--child",
                mode,
                "--domains",
                domain,
                "--db",
                str(Path(tmp) / "s.duckdb"),
                "--files",
                *map(str, files),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--domains", default="inventory,recommender,dialogue")
    parser.add_argument("--child", choices=["ingest", "read_csv"])
    parser.add_argument("--db")
    parser.add_argument("--files", nargs="*")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.domains, args.files, args.db)
        return

    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(
        "adapter",
        "raw rows",
        "ingest s",
        "rows/s",
        "peak RSS MiB",
        "read_csv s",
        "read_csv RSS MiB",
        "ingest / read_csv",
    )
    for domain in args.domains.split(","):
        with console.status(f"simulating {args.rows:,} raw rows of {domain} (cached after the first run)"):
            files = raw_logs(domain, args.rows)
        runs: dict[str, list[dict]] = {"ingest": [], "read_csv": []}
        for _ in range(args.repeats):
            for mode in runs:
                runs[mode].append(measure(mode, domain, files))
        ours = statistics.median(r["seconds"] for r in runs["ingest"])
        base = statistics.median(r["seconds"] for r in runs["read_csv"])
        rows = runs["ingest"][0]["rows"]
        table.add_row(
            domain,
            f"{rows:,}",
            f"{ours:.2f}",
            f"{rows / ours:,.0f}",
            f"{statistics.median(r['rss_peak'] for r in runs['ingest']):,.0f}",
            f"{base:.2f}",
            f"{statistics.median(r['rss_peak'] for r in runs['read_csv']):,.0f}",
            f"{ours / base:.2f}x",
        )
    console.print(table)
    console.print("targets: >= 1,000,000 raw rows/s; ingest / read_csv <= 3x (medians of the repeats)")


if __name__ == "__main__":
    main()
