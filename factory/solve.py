"""`factory solve`: run a solving agent k times on every task of a bundle and report pass@1
and pass@k per difficulty level, with the tool calls and tokens spent.

Each attempt is one episode of the export runtime (`factory/export/runtime`), the tool
runtime the MCP server and the trainer exports use; its answer is scored by the task's own
verifier. pass@k is the unbiased estimate from k samples per task (1 - C(n-c, k)/C(n, k),
n = k samples, c correct: with n = k it is 1 when any attempt passed); pass@1 is c/n averaged
over tasks. Environments run in parallel processes. The report goes to
`BUNDLE/solve-AGENT.json`; `batch.json` (when the bundle has one) records each agent's table.
"""

from __future__ import annotations

import json
import os
import random
import time
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path

from envfactory.factory.executors import make_pool

__all__ = ["solve_bundle", "SolveError", "SolveReport", "format_solve_table"]


class SolveError(RuntimeError):
    pass


@dataclass
class SolveReport:
    agent: str
    k: int
    levels: dict[int, dict] = field(default_factory=dict)  # level -> tasks, pass@1, pass@k, calls, tokens
    tasks: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"agent": self.agent, "k": self.k, "seconds": round(self.seconds, 1),
                "levels": {str(k): v for k, v in sorted(self.levels.items())}, "tasks": self.tasks}


def _env_dirs(path: Path) -> list[Path]:
    if (path / "tasks" / "tasks.jsonl").is_file():
        return [path]
    base = path / "envs" if (path / "envs").is_dir() else path
    return sorted(p for p in base.iterdir() if (p / "tasks" / "tasks.jsonl").is_file())


def _solve_env(env_dir: str, agent: str, spec, k: int, seed: int, max_tasks: int | None) -> list[dict]:
    """Every task of one environment, k attempts each (in a worker process)."""
    from envfactory.factory.agents.solvers import make_solver
    from envfactory.factory.export.runtime.envfactory_runtime import Runtime

    rt = Runtime(env_dir)
    env = rt.env()
    solver = make_solver(agent, spec)
    out = []
    try:
        for task_id, task in sorted(env.tasks.items(), key=lambda t: t[1]["level"])[:max_tasks]:
            scores, calls, tokens, notes = [], [], [], []
            for j in range(k):
                rng = random.Random(f"{seed}:{task_id}:{j}")
                ep = rt.start(f"{task_id}:{j}", task_id)
                try:
                    att = solver.solve(task, ep, rng)
                    res = ep.submit(att.answer)
                    scores.append(float(res["score"]))
                    calls.append(len(ep.calls))
                    tokens.append(att.tokens)
                    if att.note:
                        notes.append(att.note)
                except Exception as e:  # noqa: BLE001  (one attempt's crash scores 0 and is reported)
                    scores.append(0.0)
                    calls.append(len(ep.calls))
                    tokens.append(0)
                    notes.append(f"{type(e).__name__}: {e}"[:300])
                finally:
                    rt.release(f"{task_id}:{j}")
            out.append({"task_id": task_id, "env_id": env.env_id, "level": task["level"], "scores": scores,
                        "tool_calls": calls, "tokens": tokens, "min_tool_calls": task.get("min_tool_calls"),
                        "notes": sorted(set(notes))[:3]})
    finally:
        if hasattr(solver, "close"):
            solver.close()
    return out


def pass_at(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct."""
    from math import comb

    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def solve_bundle(path: str | Path, agent: str, k: int = 1, seed: int = 0, workers: int | None = None,
                 spec=None, max_tasks: int | None = None, progress=None, write: bool = True,
                 executor: str = "local", address: str | None = None) -> SolveReport:
    """Solve every task of the bundle `k` times with `agent`; one environment per task of the
    executor ("local" process pool or "ray", `factory.executors`)."""
    path = Path(path)
    if not path.is_dir():
        raise SolveError(f"{path}: not a directory")
    dirs = _env_dirs(path)
    if not dirs:
        raise SolveError(f"{path}: no environments (no */tasks/tasks.jsonl)")
    if k < 1:
        raise SolveError("-k must be at least 1")
    t0 = time.perf_counter()
    workers = max(1, min(workers or os.cpu_count() or 1, len(dirs)))
    results: list[dict] = []
    with make_pool(executor, workers, address=address) as pool:
        futs = {pool.submit(_solve_env, str(d), agent, spec, k, seed, max_tasks): d for d in dirs}
        for n, fut in enumerate(as_completed(futs), 1):
            results.extend(fut.result())
            if progress:
                progress(n, len(dirs), futs[fut].name)
    rep = SolveReport(agent, k, seconds=time.perf_counter() - t0)
    rep.tasks = sorted(results, key=lambda r: (r["env_id"], r["level"]))
    for level in sorted({r["level"] for r in results}):
        rows = [r for r in results if r["level"] == level]
        c = [sum(s == 1.0 for s in r["scores"]) for r in rows]
        rep.levels[level] = {
            "tasks": len(rows),
            "pass@1": round(sum(ci / k for ci in c) / len(rows), 4),
            f"pass@{k}": round(sum(pass_at(k, ci, k) for ci in c) / len(rows), 4),
            "tool_calls": round(sum(sum(r["tool_calls"]) / k for r in rows) / len(rows), 1),
            "min_tool_calls": round(sum(r["min_tool_calls"] or 0 for r in rows) / len(rows), 1),
            "tokens": round(sum(sum(r["tokens"]) / k for r in rows) / len(rows), 1),
        }
    if write:
        _record(path, rep)
    return rep


def _record(path: Path, rep: SolveReport) -> None:
    from envfactory.factory.bundle import write_json

    write_json(path / f"solve-{rep.agent}.json", rep.to_json())
    batch = path / "batch.json"
    if batch.is_file():
        data = json.loads(batch.read_text(encoding="utf-8"))
        data.setdefault("solve", {})[rep.agent] = {"k": rep.k, "levels": rep.to_json()["levels"]}
        write_json(batch, data)


def format_solve_table(reports: list[SolveReport]) -> str:
    """One row per level, one column group per agent: pass@1, pass@k, mean tool calls."""
    levels = sorted({lv for r in reports for lv in r.levels})
    def metrics(r):  # pass@k only when it says more than pass@1
        return ("pass@1",) + ((f"pass@{r.k}",) if r.k > 1 else ()) + ("calls", "tokens")

    head = ["level", "tasks", "min calls"] + [f"{r.agent} {m}" for r in reports for m in metrics(r)]
    rows = []
    for lv in levels:
        first = next(r.levels[lv] for r in reports if lv in r.levels)
        row = [str(lv), str(first["tasks"]), f"{first['min_tool_calls']:.1f}"]
        for r in reports:
            v = r.levels.get(lv)
            cells = [f"{v['pass@1']:.2f}"] + ([f"{v[f'pass@{r.k}']:.2f}"] if r.k > 1 else []) \
                + [f"{v['tool_calls']:.1f}", f"{v['tokens']:.0f}"] if v else ["-"] * len(metrics(r))
            row += cells
        rows.append(row)
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in rows])
