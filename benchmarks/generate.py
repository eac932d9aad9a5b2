"""Environments per minute for each built-in seed (default 10 environments each, 2 workers),
everything included: the catalog and partition choice, the offline web, Chromium, DuckDB,
counting, CP-SAT, tool and verifier generation, bundle writing. Prints one table, with each
run's ladder: the top level's share of level 0's plans (median over environments; the
target is at most 5%), the tool calls of the reference at level 0 and at the top, and how
often the greedy baseline (given every row) solves level 0 and the top level.

    .venv/bin/python benchmarks/generate.py [--envs 10] [--workers 2] [--seed 7] [--seed-file NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from envfactory.factory.generate import generate
from envfactory.factory.seed import builtin_seeds


def run(seed_file: str, envs: int, workers: int, seed: int) -> dict:
    stamps = []
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        res = generate(seed_file, envs, out, seed, workers, progress=lambda *_: stamps.append(time.perf_counter()))
        total = time.perf_counter() - t0
        greedy = {0: [], -1: []}  # does the greedy baseline (given every row) solve level 0, the top level?
        for e in res.envs:
            tasks = [json.loads(x) for x in (Path(e.path) / "tasks" / "tasks.jsonl").read_text().splitlines()]
            for lv in greedy:
                greedy[lv].append(bool(tasks[lv].get("greedy_solves")))
    shares = [e.counts[-1] / e.counts[0] for e in res.envs]
    return {"seed": seed_file, "envs": len(res.envs), "wall": total, "per_min": len(res.envs) / total * 60,
            "levels": statistics.mean(e.levels for e in res.envs), "share": statistics.median(shares),
            "calls0": statistics.mean(e.tool_calls[0] for e in res.envs),
            "calls_top": statistics.mean(e.tool_calls[-1] for e in res.envs), "replaced": len(res.failed),
            "greedy0": statistics.mean(greedy[0]), "greedy_top": statistics.mean(greedy[-1])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--envs", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--seed-file", nargs="*", default=None, help="seed names or files (default: every built-in)")
    a = ap.parse_args()
    seeds = a.seed_file or list(builtin_seeds())
    print(f"{a.envs} environments per seed, {a.workers} workers, {os.cpu_count()} cores, run seed {a.seed}\n")
    print("| seed | envs | wall s | envs/min | levels/env | top/L0 plans (median) | calls L0 | calls top | "
          "greedy solves L0 | greedy solves top | replaced |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in seeds:
        r = run(s, a.envs, a.workers, a.seed)
        print(f"| {r['seed']} | {r['envs']} | {r['wall']:.1f} | {r['per_min']:.1f} | {r['levels']:.1f} | "
              f"{r['share']:.1%} | {r['calls0']:.1f} | {r['calls_top']:.1f} | {r['greedy0']:.0%} | "
              f"{r['greedy_top']:.0%} | {r['replaced']} |", flush=True)


if __name__ == "__main__":
    main()
