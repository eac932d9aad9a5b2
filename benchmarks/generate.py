"""Environments per minute for a batch of trip-planning environments (default 20, 2 workers),
everything included: region choice, the offline web, Chromium, DuckDB, counting, CP-SAT,
tool and verifier generation, bundle writing. Prints one table; target >= 20 per minute.

    .venv/bin/python benchmarks/generate.py [--envs 20] [--workers 2] [--seed 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from envfactory.factory.generate import generate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--envs", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--seed-file", default="trip_planning")
    a = ap.parse_args()
    stamps = []
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        res = generate(a.seed_file, a.envs, out, a.seed, a.workers, progress=lambda *_: stamps.append(time.perf_counter()))
        total = time.perf_counter() - t0
    gaps = [b - a_ for a_, b in zip([t0] + stamps, stamps)]
    levels = [e.levels for e in res.envs]
    print(f"| seed | envs | workers | cores | wall s | envs/min | target | levels/env | replaced |")
    print(f"|---|---|---|---|---|---|---|---|---|")
    print(f"| {a.seed_file} | {len(res.envs)} | {a.workers} | {os.cpu_count()} | {total:.1f} | "
          f"{len(res.envs) / total * 60:.1f} | 20 | {statistics.mean(levels):.1f} | {len(res.failed)} |")
    print(f"\nseconds between completions: median {statistics.median(gaps):.2f}, max {max(gaps):.2f}")


if __name__ == "__main__":
    main()
