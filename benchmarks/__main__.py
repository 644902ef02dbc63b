"""Run every benchmark in this folder in turn (``make bench``); each prints its own figures and ratios.

python -m benchmarks              # all
python -m benchmarks store ingest # only bench_store and bench_ingest
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main() -> int:
    names = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    chosen = sys.argv[1:] or names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; available: {', '.join(names)}", file=sys.stderr)
        return 2
    status = 0
    for name in chosen:
        print(f"\n=== benchmarks/bench_{name}.py ===", flush=True)
        status |= subprocess.call([sys.executable, "-m", f"benchmarks.bench_{name}"])
    return status


if __name__ == "__main__":
    sys.exit(main())
