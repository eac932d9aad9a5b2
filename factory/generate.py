"""Batch generation: N environments from one seed, in a process pool, with progress.

The offline web runs in this process (a loopback server thread); each worker keeps one
fetch context (httpx client + one Chromium) for all its environments. Workers are local
processes or Ray tasks (`factory.executors`); every outcome is journaled as it arrives
(`factory.journal`), so a killed run resumes. Environments are
pure functions of (seed, region, run seed), so the output does not depend on scheduling.
If an environment cannot reach the ladder's level count, the next spare region replaces it.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from envfactory.factory.bundle import write_json
from envfactory.factory.envbuild import EnvSummary, build_env
from envfactory.factory.executors import make_pool
from envfactory.factory.fingerprint import run_index
from envfactory.factory.partition import PartitionError, choose_parts
from envfactory.factory.seed import load_seed, resolve_seed

__all__ = ["generate", "BatchResult", "GenerateError"]

SPARE_FACTOR = 2  # regions drawn per requested environment, for replacements


class GenerateError(RuntimeError):
    """The run could not finish. `envs` holds what was built before it stopped, `failed` the
    (origin, reason) of every region given up on, `agent` the agent's totals (so a
    comparison can still report a run that fell short)."""

    def __init__(self, message: str, envs: list | None = None, agent: dict | None = None,
                 failed: list | None = None):
        super().__init__(message)
        self.envs = envs or []
        self.agent = agent or {}
        self.failed = failed or []


@dataclass(frozen=True)
class BatchResult:
    out_dir: str
    envs: list[EnvSummary]
    failed: list[tuple[str, str]]  # (origin, reason) of regions that were replaced
    seconds: float
    agent: dict = field(default_factory=dict)  # the agent, and its proposals and rejections over the run


def agent_totals(totals: dict, stats: dict) -> None:
    for k in ("proposals", "rejected", "fallbacks", "malformed", "data_defaults", "tools_written", "tools_rejected",
              "checks_tested", "checks_rejected", "prompt_tokens", "completion_tokens", "requests"):
        if k in stats:
            totals[k] = totals.get(k, 0) + stats[k]


_CTX = None  # the worker's fetch context


def _worker_init() -> None:
    global _CTX
    from envfactory.sandboxes.sources import FetchContext

    _watch_parent()
    _CTX = FetchContext()


def _watch_parent() -> None:
    """Exit this worker as soon as the run's process is gone (killed with SIGKILL, say), so
    no orphan keeps building into a directory that a resumed run now owns."""
    import threading

    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _job(seed_path: str, region, index: int, run_seed: int, base_url: str, out_dir: str, force: bool, agent):
    from envfactory.factory.agents.base import AgentError
    from envfactory.factory.envbuild import EnvBuildError
    from envfactory.factory.ladder import LadderError
    from envfactory.sandboxes.duck import SandboxError
    from envfactory.toolgen import ToolCheckError

    seed = load_seed(seed_path)
    try:
        return "ok", build_env(seed, Path(seed_path), region, index, run_seed, base_url, _CTX, Path(out_dir), force,
                               agent)
    except (LadderError, EnvBuildError, ToolCheckError, AgentError) as e:
        return "skip", (f"{region.origin_name}: {e}", getattr(e, "agent", {}))
    except SandboxError as e:
        return "fail", str(e)
    except Exception as e:  # one environment's bug is that environment's failure, reported with where it was
        import traceback

        where = traceback.extract_tb(e.__traceback__)[-1]
        return "skip", (f"{region.origin_name}: unexpected {type(e).__name__}: {e} "
                        f"(at {Path(where.filename).name}:{where.lineno})", getattr(e, "agent", {}))


def _parts(seed, seed_path: Path, run_seed: int, n_envs: int) -> list:
    """The partitions of a run: n_envs and spares for replacements (fewer spares where the
    data has no more)."""
    from envfactory.sandboxes.catalog import CatalogError, catalog_for

    if not n_envs:
        return []
    try:
        cat = catalog_for(seed, seed_path)
    except CatalogError as e:
        raise GenerateError(str(e)) from None
    parts = choose_parts(seed, cat, run_seed, n_envs * SPARE_FACTOR)
    if len(parts) < n_envs:
        raise PartitionError(f"partition: the data has only {len(parts)} distinct environments for these settings; "
                             f"asked for {n_envs}")
    return parts


def _publish(seed, seed_path: Path, web) -> None:
    """Put the file tables a web source scrapes (`/data/TABLE...` paths) on the offline web."""
    from envfactory.factory.seedcheck import DATA_ROUTE
    from envfactory.sandboxes.catalog import catalog_for

    wanted = {m["table"] for s in seed.sources if s.is_web and s.path for m in [DATA_ROUTE.match(s.path)] if m}
    if not wanted:
        return
    cat = catalog_for(seed, seed_path)
    for table in sorted(wanted):
        cols = seed.table_columns(table)
        key = seed.table_key(table)
        order = [key] + [c for c in cols if c != key]  # the offline web takes the first column as the row key
        sel = ", ".join(f'"{c}"' for c in order)
        rows = cat.query(f'SELECT {sel} FROM "{table}" ORDER BY "{key}"')
        web.add_table(table, [dict(zip(order, r)) for r in rows])


def phase_totals(envs) -> dict[str, float]:
    """Seconds per build phase summed over environments (worker seconds, not wall time)."""
    phases: dict[str, float] = {}
    for e in envs:
        for k, v in e.timings.items():
            phases[k] = round(phases.get(k, 0.0) + v, 3)
    return phases


def run_header(seed, seed_path: Path, run_seed: int, agent) -> dict:
    """The journal's first line for this run (`factory.journal`)."""
    from envfactory.factory import journal as jr
    from envfactory.factory.bundle import sha256_file

    return jr.run_header(seed.name, sha256_file(seed_path), run_seed, agent.kind, agent.model)


def generate(seed_ref: str, n_envs: int, out_dir: str | Path, run_seed: int, workers: int | None = None,
             force: bool = False, progress=None, agent=None, resume: bool = False, executor: str = "local",
             address: str | None = None) -> BatchResult:
    """Generate `n_envs` environments into `out_dir`. `progress(done, total, summary)` is
    called after each environment. Every outcome goes to the run's journal as it happens
    (`factory.journal`); `resume` continues a killed run in `out_dir` (or grows a finished
    one to a larger `n_envs`), building only what it has not finished. `executor` "local"
    (a process pool) or "ray" (Ray tasks; `address` joins a cluster), `factory.executors`."""
    from envfactory.sandboxes.web import OfflineWeb

    from envfactory.factory import journal as jr
    from envfactory.factory.agents.base import AgentSpec
    from envfactory.factory.agents.local import local_server

    agent = agent or AgentSpec()
    t0 = time.perf_counter()
    seed_path = resolve_seed(seed_ref)
    seed = load_seed(seed_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = run_header(seed, seed_path, run_seed, agent)
    rows = jr.preflight(out, header, resume, force)
    regions = _parts(seed, seed_path, run_seed, n_envs)
    workers = max(1, min(workers or os.cpu_count() or 1, n_envs or 1))
    done: dict[int, EnvSummary] = {}
    failed: list[tuple[str, str]] = []
    totals: dict = {"kind": agent.kind, "model": agent.model, "proposals": 0, "rejected": 0}
    skipped: dict[int, str] = {}
    log = jr.Journal(out, header, resume)  # takes OUT's lock first
    if resume:
        ok, skipped = jr.finished(out, rows)
        # journaled summaries hold the directory's name; the run's own hold its path
        done = {i: EnvSummary(**(d | {"path": str(out / d["path"])})) for i, d in ok.items()
                if i < len(regions)}
        for i in sorted(skipped):
            failed.append((regions[i].origin_name if i < len(regions) else "?", skipped[i]))
        for e in done.values():
            agent_totals(totals, e.agent)
        # what a kill left half-done, or moved into place without its line, is built again
        jr.sweep(out, f"{seed.name}-s{run_seed}-", {Path(e.path).name for e in done.values()})
    # --agent dsa without a server: one in this process for every worker (the CLI starts it first)
    with log, local_server(agent, quiet=True) as agent, OfflineWeb() as web, \
            make_pool(executor, workers, _worker_init, address) as pool:
        _publish(seed, seed_path, web)
        queue = [(i, r) for i, r in enumerate(regions) if i not in done and i not in skipped]
        running = {}

        def submit():
            i, region = queue.pop(0)
            fut = pool.submit(_job, str(seed_path), region, i, run_seed, web.base_url, str(out), force, agent)
            running[fut] = (i, region)

        while queue and len(running) < min(n_envs - len(done), workers * 2):
            submit()
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                i, region = running.pop(fut)
                status, value = fut.result()
                if status == "fail":
                    raise GenerateError(value)
                if status == "skip":
                    reason, stats = value
                    failed.append((region.origin_name, reason))
                    agent_totals(totals, stats)
                    log.write({"event": "env", "i": i, "status": "skip", "reason": reason})
                else:
                    done[i] = value
                    agent_totals(totals, value.agent)
                    log.write({"event": "env", "i": i, "status": "ok",
                               "summary": asdict(value) | {"path": Path(value.path).name}})
                    if progress:
                        progress(min(len(done), n_envs), n_envs, value)
            while queue and len(running) + len(done) < n_envs:
                submit()
    if len(done) < n_envs:
        said = (f" The {agent.kind} agent made {totals['proposals']} proposals; {totals['rejected']} were rejected."
                if agent.kind != "specialist" else "")
        raise GenerateError(f"only {len(done)} of {n_envs} environments could be built; "
                            f"last problems: {'; '.join(r for _, r in failed[-3:])}.{said}",
                            [done[i] for i in sorted(done)], totals, failed)
    envs = [done[i] for i in sorted(done)][:n_envs]
    # environments beyond the first n (built in parallel as replacements finished) are dropped
    keep = {e.env_id for e in envs}
    dropped = [i for i, e in done.items() if e.env_id not in keep]
    if dropped:
        with jr.Journal(out, header, resume=True) as log:
            for i in dropped:
                shutil.rmtree(done[i].path, ignore_errors=True)
                log.write({"event": "env", "i": i, "status": "dropped"})
    result = BatchResult(str(out), envs, failed, time.perf_counter() - t0, totals)
    rows = [asdict(e) | {"path": Path(e.path).name} for e in envs]
    index = run_index(rows)
    phases = phase_totals(envs)
    write_json(out / "splits.json", index["splits"])
    dup = index["duplicates"]
    write_json(out / "batch.json", {"seed": seed.name, "run_seed": run_seed, "agent": totals, "executor": executor,
                                    "seconds": round(result.seconds, 3),
                                    # summed over environments (worker seconds, not wall time)
                                    "phase_seconds": phases, "envs": rows,
                                    "replaced": [{"origin": o, "reason": m} for o, m in failed],
                                    "duplicates": dup | {"n_envs": sum(len(g) - 1 for g in dup["envs"]),
                                                         "n_tasks": sum(len(g) - 1 for g in dup["tasks"])}})
    _run_card(out, seed.name, run_seed, n_envs, result, executor)
    return result


def _run_card(out: Path, seed_name: str, run_seed: int, n_envs: int, result: BatchResult, executor: str) -> None:
    """The run's README.md, linking its report, and the report itself (`factory report`),
    rendered now and again by `factory report RUN` after validate or solve add results."""
    from envfactory.factory.report import render_report

    try:
        render_report(out)
        link = "[report.html](report.html)"
    except Exception as e:  # the run is built either way; say why there is no page
        link = f"not rendered ({type(e).__name__}: {e}); run `factory report {out}`"
    (out / "README.md").write_text(
        f"# {seed_name}, run seed {run_seed}\n\n"
        f"{len(result.envs)} environments ({n_envs} asked for, {len(result.failed)} regions replaced), "
        f"built by the {result.agent.get('kind', 'specialist')} agent on the {executor} executor in "
        f"{result.seconds:.0f} s.\n\n"
        f"- Report: {link} (`factory report {out.name}` redraws it after `factory validate` or `factory solve`)\n"
        f"- Summary: `batch.json`; splits: `splits.json`; journal: `journal.jsonl` "
        f"(`factory generate {seed_name} --seed {run_seed} --envs N --out {out.name} --resume` continues or grows it)\n",
        encoding="utf-8")
