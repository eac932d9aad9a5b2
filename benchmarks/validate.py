"""Validation speed: verifier calls per second in the sandbox, and `factory validate` wall
time on a bundle of trip-planning environments (default 20, 2 workers).

Part 1 scores reference answers through three runners side by side: in-process (no
isolation: the baseline), the local subprocess sandbox, and the Docker sandbox (a warm
pool of containers); start-up is timed separately. Part 2 runs the whole validation
(mutants, alternatives, CP-SAT labels, tool checks, manifest) in the Docker sandbox.
Targets: >= 200 verifier calls/s with Docker; 20 environments validated in < 120 s.

    .venv/bin/python benchmarks/validate.py [--envs 20] [--workers 2] [--bundle DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from envfactory.factory.generate import generate
from envfactory.factory.validate import find_envs, validate
from envfactory.sandboxes.isolate import SandboxPool
from envfactory.verifiers.codegen import load_verifier

CALLS_PER_REQUEST = 50


def _requests(root: Path, envs: list[Path]) -> list[dict]:
    reqs = []
    for env in envs:
        rel = env.relative_to(root).as_posix()
        for line in (env / "tasks" / "tasks.jsonl").read_text().splitlines():
            r = json.loads(line)
            reqs.append({"op": "verify", "verifier": f"{rel}/{r['verifier']}", "db": f"{rel}/db/sandbox.duckdb",
                         "answers": [r["reference_answer"]] * CALLS_PER_REQUEST})
    return reqs


def _in_process(root: Path, reqs: list[dict]) -> tuple[float, int]:
    import duckdb

    mods = {r["verifier"]: load_verifier(root / r["verifier"]) for r in reqs}
    cons = {r["db"]: duckdb.connect(str(root / r["db"]), read_only=True) for r in reqs}
    t0 = time.perf_counter()
    n = 0
    for r in reqs:
        for a in r["answers"]:
            assert mods[r["verifier"]].verify(a, cons[r["db"]])["score"] == 1.0
            n += 1
    return time.perf_counter() - t0, n


def _pooled(root: Path, reqs: list[dict], backend: str, workers: int) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    with SandboxPool(root, size=workers, backend=backend) as pool:
        pool.warm()
        start = time.perf_counter() - t0
        pool.run(reqs[:workers])  # load every module once per worker
        t1 = time.perf_counter()
        out = pool.run(reqs)
        dt = time.perf_counter() - t1
    errors = [x["error"] for o in out for x in o["results"] if "error" in x]
    if errors:
        raise SystemExit(f"{backend} sandbox: {len(errors)} calls failed, e.g. {errors[0]}")
    scores = [x["ok"]["score"] for o in out for x in o["results"]]
    assert scores and all(s == 1.0 for s in scores), "a reference answer failed in the sandbox"
    return start, dt, len(scores)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--envs", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--bundle", help="validate this bundle instead of generating one")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if a.bundle:
            root = Path(a.bundle).resolve()
        else:
            root = Path(tmp) / "bundle"
            t = time.perf_counter()
            generate("trip_planning", a.envs, root, a.seed, a.workers)
            print(f"generated {a.envs} environments in {time.perf_counter() - t:.0f} s (not part of the timings)\n")
        envs = find_envs(root)
        reqs = _requests(root, envs)

        rows = []
        base_s, base_n = _in_process(root, reqs)
        rows.append(("in-process (no isolation)", "-", base_n, base_s, base_n / base_s))
        for backend in ("local", "docker"):
            start, dt, n = _pooled(root, reqs, backend, a.workers)
            rows.append((f"{backend} sandbox, {a.workers} workers", f"{start:.2f}", n, dt, n / dt))
        print(f"Verifier calls per second ({os.cpu_count()} cores; reference answers, {CALLS_PER_REQUEST} per request)\n")
        print("| runner | pool start s | calls | s | calls/s | vs in-process | target |")
        print("|---|---|---|---|---|---|---|")
        for name, start, n, dt, rate in rows:
            target = ">= 200" if name.startswith("docker") else ""
            print(f"| {name} | {start} | {n} | {dt:.2f} | {rate:.0f} | {rate / rows[0][4]:.2f}x | {target} |")

        rep = validate(root, backend="docker", workers=a.workers, report_path=Path(tmp) / "report.json")
        tot = rep.totals()
        print(f"\n`factory validate` on {len(envs)} environments ({tot['tasks']} tasks), Docker sandbox\n")
        print("| envs | tasks | verifier calls | tool calls | wall s | calls/s | soundness | completeness | failures | target |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        print(f"| {len(envs)} | {tot['tasks']} | {rep.verifier_calls} | {rep.tool_calls} | {rep.seconds:.1f} | "
              f"{rep.verifier_calls / rep.seconds:.0f} | {100 * tot['soundness']:.1f}% | "
              f"{100 * tot['completeness']:.1f}% | {tot['failures']} | < 120 s |")
    for f in [f"{e.env_id}: {f}" for e in rep.envs for f in e.failures][:5]:
        print("FAIL", f)


if __name__ == "__main__":
    main()
