"""The validation harness behind `factory validate`: every task of a bundle must be sound,
complete and solvable with its tools.

Per environment:
  - the manifest: every file's sha256 matches (a tampered bundle is reported);
  - per task, the answers of `verifiers.mutants.cases` are scored by the task's generated
    verifier *inside the sandbox* (`sandboxes.isolate`), and compared with the oracle's
    labels: the reference scores 1 on every rerun with identical checks; every mutant and
    junk answer scores 0 (soundness); every other feasible plan scores 1 (completeness);
  - per task, the reference's tool calls run in the sandbox without error, each result
    within the tool output limit, and together they reveal every id the reference cites
    (the toolset suffices).
Host-side work (reading the sandbox, enumerating plans, CP-SAT) runs in a process pool
and overlaps the sandboxed verifier calls. Nothing generated is imported on the host.
"""

from __future__ import annotations

import json
import os
import random
import time
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from envfactory.factory.bundle import verify_manifest, write_json
from envfactory.factory.executors import make_pool

__all__ = ["validate", "ValidateError", "ValidationReport", "EnvReport", "TaskReport", "find_envs"]

MIN_MUTANTS = 20


class ValidateError(RuntimeError):
    pass


@dataclass
class TaskReport:
    task_id: str
    level: int
    verifier: str
    cases: int = 0
    mutants: int = 0                  # cases the verifier must reject (mutants and junk)
    rejected: int = 0                 # ... of which it rejected
    feasible: int = 0                 # cases it must accept (reference reruns, alternatives)
    accepted: int = 0                 # ... of which it accepted
    alternatives: int = 0
    constraints_covered: str = ""     # "5/5": constraints with a mutant that breaks them
    tool_calls: int = 0
    tool_failures: int = 0
    failures: list[str] = field(default_factory=list)


@dataclass
class EnvReport:
    env_id: str
    path: str
    manifest: list[str] = field(default_factory=list)   # problems found in the manifest check
    tasks: list[TaskReport] = field(default_factory=list)
    error: str | None = None

    @property
    def failures(self) -> list[str]:
        out = [f"manifest: {m}" for m in self.manifest]
        if self.error:
            out.append(self.error)
        return out + [f"{t.task_id}: {f}" for t in self.tasks for f in t.failures]

    def totals(self) -> dict:
        t = self.tasks
        return {"mutants": sum(x.mutants for x in t), "rejected": sum(x.rejected for x in t),
                "feasible": sum(x.feasible for x in t), "accepted": sum(x.accepted for x in t)}


@dataclass
class ValidationReport:
    path: str
    backend: str
    envs: list[EnvReport]
    seconds: float
    verifier_calls: int
    tool_calls: int
    report_path: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.envs) and not any(e.failures for e in self.envs)

    def totals(self) -> dict:
        t = {"envs": len(self.envs), "tasks": sum(len(e.tasks) for e in self.envs)}
        for e in self.envs:
            for k, v in e.totals().items():
                t[k] = t.get(k, 0) + v
        t["soundness"] = t.get("rejected", 0) / t["mutants"] if t.get("mutants") else None
        t["completeness"] = t.get("accepted", 0) / t["feasible"] if t.get("feasible") else None
        t["failures"] = sum(len(e.failures) for e in self.envs)
        return t

    def to_json(self) -> dict:
        envs = []
        for e in self.envs:
            d = asdict(e)
            d["failures"] = e.failures
            d.update(e.totals())
            envs.append(d)
        return {"path": self.path, "backend": self.backend, "ok": self.ok, "seconds": round(self.seconds, 2),
                "verifier_calls": self.verifier_calls, "tool_calls": self.tool_calls,
                "verifier_calls_per_s": round(self.verifier_calls / self.seconds, 1) if self.seconds else None,
                "totals": self.totals(), "envs": envs}


def find_envs(path: Path) -> list[Path]:
    if (path / "tasks" / "tasks.jsonl").is_file():
        return [path]
    if not path.is_dir():
        raise ValidateError(f"{path} is not a directory")
    envs = sorted(p for p in path.iterdir() if (p / "tasks" / "tasks.jsonl").is_file())
    if not envs:
        raise ValidateError(f"{path} is neither an environment (tasks/tasks.jsonl) nor a bundle of environments")
    return envs


# ---- host-side preparation (in worker processes) -------------------------------------

def _prepare(env_dir: str) -> dict:
    """Cases for every task of one environment, built from trusted code only."""
    import duckdb

    from envfactory.verifiers.mutants import cases
    from envfactory.factory.seed import SeedError, load_seed
    from envfactory.verifiers.constraints import Constraint
    from envfactory.verifiers.problem import load_problem

    env = Path(env_dir)
    try:
        seed = load_seed(env / "seed.toml", check_data=False)
        con = duckdb.connect(str(env / "db" / "sandbox.duckdb"), read_only=True)
        try:
            p = load_problem(con, seed)
        finally:
            con.close()
        records = [json.loads(line) for line in (env / "tasks" / "tasks.jsonl").read_text().splitlines() if line]
    except (OSError, ValueError, KeyError, SeedError, duckdb.Error) as e:
        return {"error": f"cannot read the environment: {type(e).__name__}: {e}"}
    tasks = []
    for r in records:
        cs = [Constraint.from_json(c) for c in r["constraints"]]
        rng = random.Random(f"validate:{r['task_id']}")
        try:
            cc = cases(p, cs, r["reference_answer"], rng, p.origin_id)
        except (ValueError, KeyError, TypeError) as e:
            tasks.append({"record": _slim(r), "error": f"cannot build cases: {e}"})
            continue
        tasks.append({"record": _slim(r), "constraints": [c.name for c in cs], "cases": [asdict(c) for c in cc],
                      "ref_ids": sorted({v for u in r["reference_answer"][p.key] for v in u.values()})})
    return {"tasks": tasks}


def _slim(r: dict) -> dict:
    return {k: r[k] for k in ("task_id", "level", "verifier", "reference_tool_calls")}


# ---- judging the sandbox's answers -----------------------------------------------------

def _examples(names: list[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def _judge_task(t: dict, vresp: dict, tresp: dict, max_chars: int) -> TaskReport:
    rec = t["record"]
    rep = TaskReport(rec["task_id"], rec["level"], rec["verifier"])
    cases, results = t["cases"], vresp.get("results", [])
    if vresp.get("failed"):
        rep.failures.append(f"verifier {rec['verifier']}: the sandbox failed: {vresp['failed']}")
    rep.cases = len(cases)
    missed, rejected_ok, crashed, ref_checks = [], [], [], []
    for c, res in zip(cases, results):
        score = None
        if "ok" in res and isinstance(res["ok"], dict):
            score = res["ok"].get("score")
        elif "error" in res and not vresp.get("failed"):
            crashed.append(f"{c['name']} ({res['error'][:80]})")
        if c["disagree"]:
            rep.failures.append(f"oracle disagreement on {c['name']}: {c['note']}")
        if c["expect"] == 0.0:
            rep.mutants += 1
            if score == 0.0:
                rep.rejected += 1
            else:
                missed.append(c["name"])
        else:
            rep.feasible += 1
            rep.alternatives += c["group"] == "alternative"
            if score == 1.0:
                rep.accepted += 1
            else:
                rejected_ok.append(c["name"])
            if c["group"] == "reference" and score is not None:
                ref_checks.append(json.dumps(res["ok"].get("checks"), sort_keys=True))
    v = f"verifier {rec['verifier']}"
    if crashed:
        rep.failures.append(f"{v} raised on {len(crashed)} answers: {_examples(crashed)}")
    ref_failed = [n for n in rejected_ok if n.startswith("reference")]
    if ref_failed:
        rep.failures.append(f"{v} rejects the reference answer ({len(ref_failed)} of {sum(1 for c in cases if c['group'] == 'reference')} runs)")
    if len(set(ref_checks)) > 1:
        rep.failures.append(f"{v} gives different checks on reruns of the reference")
    alt_failed = [n for n in rejected_ok if not n.startswith("reference")]
    if alt_failed:
        rep.failures.append(f"{v} rejects {len(alt_failed)} of {rep.feasible - sum(1 for c in cases if c['group'] == 'reference')} "
                            f"other feasible plans (incomplete): {_examples(alt_failed)}")
    if missed:
        rep.failures.append(f"{v} accepts {len(missed)} of {rep.mutants} wrong answers (unsound): {_examples(missed)}")
    real_mutants = sum(1 for c in cases if c["group"] == "mutant" and c["expect"] == 0.0)
    if real_mutants < MIN_MUTANTS:
        rep.failures.append(f"only {real_mutants} mutants could be built (need {MIN_MUTANTS})")
    covered = {c["target"] for c in cases if c["target"] and c["expect"] == 0.0}
    rep.constraints_covered = f"{len(covered & set(t['constraints']))}/{len(t['constraints'])}"
    uncovered = [n for n in t["constraints"] if n not in covered]
    if uncovered:
        rep.failures.append(f"no mutant breaks {', '.join(uncovered)}")
    _judge_tools(rep, t, tresp, max_chars)
    return rep


def _judge_tools(rep: TaskReport, t: dict, tresp: dict, max_chars: int) -> None:
    calls = t["record"]["reference_tool_calls"]
    rep.tool_calls = len(calls)
    seen = ""
    bad = []
    for call, res in zip(calls, tresp.get("results", [])):
        label = f"{call['name']}({json.dumps(call.get('arguments', {}), sort_keys=True)})"
        out = res.get("ok")
        if not isinstance(out, str):
            bad.append(f"{label}: {res.get('error', 'no text result')}")
            continue
        if len(out) > max_chars:
            bad.append(f"{label}: {len(out)} characters, over the limit of {max_chars}")
        try:
            parsed = json.loads(out)
        except ValueError:
            bad.append(f"{label}: not JSON")
            continue
        if not isinstance(parsed, dict) or "error" in parsed or "results" not in parsed:
            bad.append(f"{label}: {str(parsed.get('error') if isinstance(parsed, dict) else parsed)[:80]}")
            continue
        seen += out
    rep.tool_failures = len(bad)
    if bad:
        rep.failures.append(f"{len(bad)} of {len(calls)} reference tool calls fail: {_examples(bad, 2)}")
    hidden = [i for i in t["ref_ids"] if json.dumps(i) not in seen]
    if hidden and not bad:
        rep.failures.append(f"the reference's tool calls never show ids it cites: {_examples(hidden)}")


# ---- the run ------------------------------------------------------------------------------

def validate(path, backend: str = "auto", workers: int | None = None, report_path=None,
             progress=lambda done, total, env: None, log=lambda msg: None, executor: str = "local",
             address: str | None = None) -> ValidationReport:
    """Validate every environment under `path`. Each environment's preparation (its mutants,
    completeness cases and the checks that need no sandbox) runs on `executor` ("local": a
    process pool; "ray": Ray tasks, `address` joins a cluster); the generated code then runs
    in this host's sandbox pool (`backend`)."""
    from envfactory.sandboxes.isolate import Limits, SandboxError, SandboxPool
    from envfactory.toolgen.generate import MAX_RESULT_CHARS

    t0 = time.monotonic()
    path = Path(path).resolve()
    envs = find_envs(path)
    root = path if envs != [path] else path.parent
    if workers is not None and workers < 1:
        raise ValidateError(f"--workers must be at least 1, got {workers}")
    workers = workers or os.cpu_count() or 1
    reports: dict[str, EnvReport] = {}
    try:
        pool = SandboxPool(root, size=workers, backend=backend, limits=Limits(), progress=log)
    except SandboxError as e:
        raise ValidateError(str(e)) from None
    vcalls = tcalls = 0
    with pool, make_pool(executor, min(workers, len(envs)), address=address) as ex:
        futures = {ex.submit(_prepare, str(e)): e for e in envs}
        for n, fut in enumerate(as_completed(futures), 1):
            env = futures[fut]
            rep = EnvReport(env.name, str(env), manifest=verify_manifest(env))
            prep = fut.result()
            if "error" in prep:
                rep.error = prep["error"]
            else:
                rel = env.relative_to(root).as_posix()
                db = f"{rel}/db/sandbox.duckdb"
                ready = [t for t in prep["tasks"] if "error" not in t]
                for t in prep["tasks"]:
                    if "error" in t:
                        r = TaskReport(t["record"]["task_id"], t["record"]["level"], t["record"]["verifier"])
                        r.failures.append(t["error"])
                        rep.tasks.append(r)
                reqs = []
                for t in ready:
                    reqs.append({"op": "verify", "verifier": f"{rel}/{t['record']['verifier']}", "db": db,
                                 "answers": [c["answer"] for c in t["cases"]]})
                    reqs.append({"op": "tools", "tools": f"{rel}/tools/tools.py", "db": db,
                                 "calls": [{"name": c["name"], "arguments": c.get("arguments", {})}
                                           for c in t["record"]["reference_tool_calls"]]})
                resps = pool.run(reqs)
                for i, t in enumerate(ready):
                    rep.tasks.append(_judge_task(t, resps[2 * i], resps[2 * i + 1], MAX_RESULT_CHARS))
                    vcalls += len(t["cases"])
                    tcalls += len(t["record"]["reference_tool_calls"])
                rep.tasks.sort(key=lambda r: r.level)
            reports[env.name] = rep
            progress(n, len(envs), rep)
    report = ValidationReport(str(path), pool.backend, [reports[e.name] for e in envs], time.monotonic() - t0,
                              vcalls, tcalls)
    if report_path is None:
        report_path = path / "validation.json" if envs != [path] else path.parent / f"{path.name}.validation.json"
    report.report_path = str(report_path)
    try:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(report_path), report.to_json())
    except OSError as e:
        raise ValidateError(f"cannot write the report {report_path}: {e.strerror or e}") from None
    return report


def format_table(report: ValidationReport) -> str:
    rows = [("environment", "tasks", "soundness", "completeness", "tools", "failures")]
    for e in report.envs:
        t = e.totals()
        snd = f"{t['rejected']}/{t['mutants']}" if t["mutants"] else "-"
        cmp_ = f"{t['accepted']}/{t['feasible']}" if t["feasible"] else "-"
        tools = f"{sum(x.tool_calls - x.tool_failures for x in e.tasks)}/{sum(x.tool_calls for x in e.tasks)}"
        rows.append((e.env_id, str(len(e.tasks)), snd, cmp_, tools, str(len(e.failures))))
    tot = report.totals()
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    rows.append(("total", str(tot["tasks"]), pct(tot["soundness"]), pct(tot["completeness"]), "",
                 str(tot["failures"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, lines[1])
    return "\n".join(lines)
