"""`factory report RUN`: one self-contained HTML page about a generation run.

Contract: a run directory in (the `--out` of `factory generate`: `batch.json` and one
directory per environment, or only the environment directories of a run that has not
finished); one HTML file out, `RUN/report.html` by default. The page needs nothing else:
inline CSS, charts as inline SVG drawn here (`factory.charts`), no scripts, no URLs.

What it reads, all optional except the environments:
  - `batch.json` (generate): seed, run seed, the agent's totals, per environment its plan
    counts by level, reference tool calls, tools and the agent's rejected proposals; the
    replaced regions; `solve` tables (factory solve); `seconds` and per-environment
    `timings` where a run records them; without it, `journal.jsonl` (a run in progress);
  - each environment's `manifest.json` and `tasks/tasks.jsonl`, read one line at a time
    (constraints, moves, the greedy baseline's verdict);
  - `validation.json` (factory validate; else the `ENV.validation.json` files that
    validating single environments writes beside them), `solve-AGENT.json` (factory solve).
A section without data says in one line what to run to get it. Every piece of text from
the run is escaped (jinja2 autoescape; the charts escape their own).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from envfactory.factory.errors import UsageError

__all__ = ["render_report", "ReportError", "main"]

TEMPLATE = "report.html.j2"
EXAMPLES_PER_REASON = 3
TOP_REASONS = 12
MAX_LISTED = 20  # failures, problems, replaced regions listed in full before "and N more"


class ReportError(UsageError):
    """RUN is not a generation run, or the report cannot be written."""


# ---- reading the run ---------------------------------------------------------------------

def _json(path: Path, problems: list[str]):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        problems.append(f"{path.name}: unreadable ({type(e).__name__}: {e})")
        return None


def _journal(run: Path, problems: list[str]) -> dict | None:
    """batch.json's shape, rebuilt from a run's journal (a run killed or still going)."""
    path = run / "journal.jsonl"
    if not path.is_file():
        return None
    head, ok, skip = None, {}, {}
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a torn last line
            if row.get("event") == "run":
                head = row
            elif row.get("event") == "env":  # a later line for an index wins, as on resume
                i = row.get("i")
                ok.pop(i, None)
                skip.pop(i, None)
                if row.get("status") == "ok":
                    ok[i] = row.get("summary") or {}
                elif row.get("status") == "skip":
                    skip[i] = str(row.get("reason", ""))
    if head is None:
        problems.append("journal.jsonl: no run line")
        return None
    order = lambda i: (not isinstance(i, int), i if isinstance(i, int) else str(i))  # noqa: E731
    return {"seed": head.get("seed"), "run_seed": head.get("run_seed"), "agent": head.get("agent") or {},
            "envs": [ok[i] for i in sorted(ok, key=order)],
            "replaced": [{"origin": "?", "reason": skip[i]} for i in sorted(skip, key=order)], "from_journal": True}


def _env_dirs(run: Path) -> list[Path]:
    base = run / "envs" if (run / "envs").is_dir() else run
    return sorted(p for p in base.iterdir() if p.is_dir() and (p / "manifest.json").is_file())


def _tasks(env_dir: Path, problems: list[str]):
    """The task records of one environment, one line at a time."""
    path = env_dir / "tasks" / "tasks.jsonl"
    try:
        f = path.open(encoding="utf-8")
    except OSError:
        problems.append(f"{env_dir.name}: no tasks/tasks.jsonl")
        return
    with f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError:
                    problems.append(f"{env_dir.name}: tasks/tasks.jsonl line {n} is not JSON")


class Tally:
    """What the report keeps of the environments, filled one environment at a time."""

    def __init__(self):
        self.ladders: dict[str, list[tuple[str, list[int], list[bool]]]] = defaultdict(list)  # seed -> ladders
        self.tool_calls: dict[int, list[int]] = defaultdict(list)   # level -> reference tool calls
        self.n_tools: Counter = Counter()                            # tools per env -> envs
        self.tool_names: Counter = Counter()                         # tool -> envs that have it
        self.tasks_at: Counter = Counter()                           # level -> tasks
        self.kinds: Counter = Counter()                              # kind -> tasks using it
        self.kinds_at: dict[int, Counter] = defaultdict(Counter)     # level -> kind -> tasks
        self.moves_at: dict[int, Counter] = defaultdict(Counter)     # level -> move -> tasks
        self.greedy_at: dict[int, list[int]] = defaultdict(lambda: [0, 0])  # level -> [solved, known]
        self.agents: Counter = Counter()                             # (kind, model) -> envs
        self.reasons: Counter = Counter()                            # reason category -> count
        self.examples: dict[str, list[tuple[str, str]]] = defaultdict(list)
        self.rejected = self.checks_rejected = self.proposals = 0
        self.timings: Counter = Counter()                            # stage -> seconds, summed over envs
        self.env_seconds: list[float] = []
        self.no_tasks = 0

    def add_env(self, env_id: str, seed: str, summary: dict, tasks, problems: list[str]) -> None:
        counts, capped, calls = _ints(summary.get("counts")), _flags(summary.get("capped")), \
            _ints(summary.get("tool_calls"))
        from_tasks = not counts  # no batch.json: the ladder from the tasks
        seen = False
        for t in tasks:
            seen = True
            try:
                lv = self._add_task(t)
            except (TypeError, ValueError, AttributeError) as e:
                problems.append(f"{env_id}: a task record of an unexpected shape ({type(e).__name__}: {e})")
                continue
            if from_tasks and _is_num(t.get("solution_count")):
                _put(counts, lv, int(t["solution_count"]), 0)
                _put(capped, lv, bool(t.get("solution_count_capped")), False)
                _put(calls, lv, int(t.get("min_tool_calls") or 0), 0)
        self.no_tasks += not seen
        self.ladders[seed].append((env_id, counts, capped))
        for lv, c in enumerate(calls):
            self.tool_calls[lv].append(c)
        tools = summary.get("tools")
        if isinstance(tools, list):
            self.n_tools[len(tools)] += 1
            self.tool_names.update({str(t) for t in tools})
        self._add_agent(env_id, summary.get("agent") if isinstance(summary.get("agent"), dict) else {})
        if isinstance(summary.get("timings"), dict):
            self.timings.update({str(k): float(v) for k, v in summary["timings"].items() if _is_num(v)})
        if _is_num(summary.get("seconds")):
            self.env_seconds.append(float(summary["seconds"]))

    def _add_task(self, t: dict) -> int:
        lv = int(t.get("level", 0))
        kinds = {str(c.get("kind", "?")) for c in t.get("constraints") or []}
        self.tasks_at[lv] += 1
        self.kinds.update(kinds)
        self.kinds_at[lv].update(kinds)
        self.moves_at[lv][str(t.get("move", "?"))] += 1
        if t.get("greedy_solves") is not None:
            self.greedy_at[lv][0] += bool(t["greedy_solves"])
            self.greedy_at[lv][1] += 1
        return lv

    def _add_agent(self, env_id: str, agent: dict) -> None:
        self.agents[(str(agent.get("kind") or "?"), agent.get("model"))] += 1
        self.rejected += int(agent.get("rejected") or 0) if _is_num(agent.get("rejected")) else 0
        self.checks_rejected += int(agent["checks_rejected"]) if _is_num(agent.get("checks_rejected")) else 0
        self.proposals += int(agent["proposals"]) if _is_num(agent.get("proposals")) else 0
        for src, key in (("proposal", "reasons"), ("written check", "check_reasons")):
            for r in agent.get(key) if isinstance(agent.get(key), list) else []:
                cat = f"{src}: {reason_category(str(r))}"
                self.reasons[cat] += 1
                if len(self.examples[cat]) < EXAMPLES_PER_REASON:
                    self.examples[cat].append((env_id, str(r)))


def _ints(xs) -> list[int]:
    return [int(x) if _is_num(x) else 0 for x in xs] if isinstance(xs, list) else []


def _flags(xs) -> list[bool]:
    return [bool(x) for x in xs] if isinstance(xs, list) else []


def _put(xs: list, i: int, v, fill) -> None:
    xs.extend([fill] * (i + 1 - len(xs)))
    xs[i] = v


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def reason_category(reason: str) -> str:
    """The kind of a rejection, for counting: `add model:attribute x: not harder: it keeps all
    1578 plans of level 0` -> `not harder` (the move and the numbers dropped)."""
    text = re.sub(r"\{.*\}|\[.*\]", "{…}", reason)  # plans and lists quoted in a reason hold ': ' too
    parts = text.split(": ")
    cat = parts[1] if len(parts) > 1 else parts[0]
    cat = re.sub(r"\d+(\.\d+)?", "N", cat).strip()
    return cat if len(cat) <= 90 else cat[:89] + "…"


@dataclass
class Run:
    path: Path
    batch: dict                     # batch.json, or what the journal says of a run not finished
    tally: Tally
    problems: list[str] = field(default_factory=list)
    generator: dict | None = None   # the first environment manifest's generator
    run_seeds: set = field(default_factory=set)
    single: bool = False            # RUN is one environment directory


def load_run(path: Path) -> Run:
    """Read a run: batch.json (or its journal), then every environment, one at a time."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"{path}: not a directory (expected the --out of `factory generate`)")
    single = (path / "manifest.json").is_file() and (path / "tasks").is_dir()
    run = Run(path, {}, Tally(), single=single)
    batch = None if single else _json(path / "batch.json", run.problems)
    if batch is None and not single:
        batch = _journal(path, run.problems)
    dirs = [path] if single else _env_dirs(path)
    if batch is None and not dirs:
        raise ReportError(f"{path} is not a generation run: no batch.json and no environment directories "
                          "with a manifest.json (the --out of `factory generate`)")
    run.batch = batch if isinstance(batch, dict) else {}
    if run.batch.get("run_seed") is not None:
        run.run_seeds.add(run.batch["run_seed"])
    by_name = {d.name: d for d in dirs}
    listed = set()
    for summary in run.batch.get("envs") if isinstance(run.batch.get("envs"), list) else []:
        if not isinstance(summary, dict):
            run.problems.append("batch.json: an environment entry that is not an object")
            continue
        name = Path(str(summary.get("path") or summary.get("env_id") or "?")).name
        d = by_name.get(name)
        listed.add(name)
        if d is None:
            run.problems.append(f"{name}: listed in batch.json, but its directory is missing")
        seed = summary.get("seed") or run.batch.get("seed")
        if not seed and d:  # the manifest only where batch.json does not say
            seed = (_json(d / "manifest.json", run.problems) or {}).get("seed")
        run.tally.add_env(str(summary.get("env_id") or name), str(seed or "?"), summary,
                          _tasks(d, run.problems) if d else (), run.problems)
    for d in dirs:
        if d.name not in listed:
            _add_unlisted(run, d)
    if dirs and run.generator is None:
        run.generator = (_json(dirs[0] / "manifest.json", run.problems) or {}).get("generator")
    return run


def _add_unlisted(run: Run, d: Path) -> None:
    """An environment batch.json does not list (no batch.json; a run not finished): its manifest and tasks."""
    manifest = _json(d / "manifest.json", run.problems)
    manifest = manifest if isinstance(manifest, dict) else {}
    summary = {"agent": manifest.get("agent") or {}}
    schemas = _json(d / "tools" / "tool_schemas.json", [])
    if isinstance(schemas, list):
        summary["tools"] = [s.get("function", {}).get("name", "?") for s in schemas if isinstance(s, dict)]
    seed = str(manifest.get("seed") or run.batch.get("seed") or "?")
    run.tally.add_env(str(manifest.get("env_id") or d.name), seed, summary, _tasks(d, run.problems), run.problems)
    if run.generator is None and isinstance(manifest.get("generator"), dict):
        run.generator = manifest["generator"]
    if manifest.get("run_seed") is not None:
        run.run_seeds.add(manifest["run_seed"])


# ---- the sections ------------------------------------------------------------------------

def _header(run: Run) -> dict:
    batch, tally = run.batch, run.tally
    n = sum(len(v) for v in tally.ladders.values())
    agent = batch.get("agent") if isinstance(batch.get("agent"), dict) else {}
    kinds = sorted({k for k, _ in tally.agents} | ({str(agent["kind"])} if agent.get("kind") else set()))
    models = sorted({str(m) for _, m in tally.agents if m} | ({str(agent["model"])} if agent.get("model") else set()))
    seconds = float(batch["seconds"]) if _is_num(batch.get("seconds")) and batch["seconds"] > 0 else None
    gen = run.generator or {}
    replaced = [r for r in batch.get("replaced") or [] if isinstance(r, dict)]
    dup = batch.get("duplicates") if isinstance(batch.get("duplicates"), dict) else {}
    return {
        "run": str(run.path), "seeds": sorted(tally.ladders) or [str(batch.get("seed") or "?")],
        "run_seeds": sorted(run.run_seeds, key=str), "envs": n,
        "levels": sorted({len(cs) for ls in tally.ladders.values() for _, cs, _ in ls}),
        "tasks": sum(tally.tasks_at.values()), "replaced": replaced,
        "agent_kinds": [k for k in kinds if k != "?"] or ["not recorded"], "models": models, "seconds": seconds,
        "per_minute": n / seconds * 60 if seconds else None, "from_journal": bool(batch.get("from_journal")),
        "executor": batch.get("executor") if isinstance(batch.get("executor"), str) else None,
        "duplicates": {k: dup[k] for k in ("n_envs", "n_tasks") if _is_num(dup.get(k))} or None,
        "generator": (f"{gen.get('name', 'envfactory')} {gen.get('version', '?')}"
                      + (f" ({str(gen['git_sha'])[:10]})" if gen.get("git_sha") else "")) if gen else None,
    }


def _ladders(tally: Tally) -> dict:
    from envfactory.factory.charts import ladder_chart

    charts = [{"seed": s, "svg": ladder_chart(f"Difficulty ladders: {s} ({len(ls)} environments)", ls), "n": len(ls)}
              for s, ls in sorted(tally.ladders.items())]
    levels = sorted({i for ls in tally.ladders.values() for _, cs, _ in ls for i in range(len(cs))})
    rows = []
    for lv in levels:
        cs = [cs[lv] for ls in tally.ladders.values() for _, cs, _ in ls if lv < len(cs)]
        caps = sum(bool(cp[lv]) for ls in tally.ladders.values() for _, _, cp in ls if lv < len(cp))
        g = tally.greedy_at.get(lv, [0, 0])
        top = tally.moves_at.get(lv, Counter()).most_common(3)
        rows.append({"level": lv, "envs": len(cs), "median": _median_int(cs), "min": min(cs), "max": max(cs),
                     "capped": caps, "greedy": f"{g[0] / g[1]:.0%}" if g[1] else "–",
                     "moves": ", ".join(f"{m} ({c})" for m, c in top)})
    return {"charts": charts, "rows": rows}


def _median_int(xs: list[int]) -> float:
    s = sorted(xs)
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


def _constraints(tally: Tally) -> dict | None:
    from envfactory.factory.charts import hbar_chart, heatmap

    if not tally.kinds:
        return None
    kinds = [k for k, _ in sorted(tally.kinds.items(), key=lambda kv: (-kv[1], kv[0]))]
    levels = sorted(tally.tasks_at)
    total = sum(tally.tasks_at.values())
    matrix = [[tally.kinds_at[lv][k] for lv in levels] for k in kinds]
    return {
        "total": total,
        "bars": hbar_chart(f"Constraint kinds: tasks using each kind (of {total} tasks)",
                           [(k, tally.kinds[k]) for k in kinds], "tasks using the kind"),
        "heat": heatmap("Constraint kinds by level: tasks using each kind", kinds, [f"L{lv}" for lv in levels],
                        matrix, [tally.tasks_at[lv] for lv in levels], "difficulty level (shade: share of its tasks)"),
        "rows": [{"kind": k, "tasks": tally.kinds[k], "by_level": row} for k, row in zip(kinds, matrix)],
        "levels": levels,
    }


def _tools(tally: Tally) -> dict | None:
    from envfactory.factory.charts import hbar_chart, vbar_chart

    if not tally.n_tools and not tally.tool_calls:
        return None
    out = {"hist": None, "names": None, "calls": None}
    if tally.n_tools:
        lo, hi = min(tally.n_tools), max(tally.n_tools)
        out["hist"] = vbar_chart("Tools per environment", [(str(n), tally.n_tools[n]) for n in range(lo, hi + 1)],
                                 "tools in the environment", "environments")
        names = sorted(tally.tool_names.items(), key=lambda kv: (-kv[1], kv[0]))
        out["names"] = hbar_chart("Tools: environments that have each", names, "environments", label_width=230)
    if tally.tool_calls:
        levels = sorted(tally.tool_calls)
        means = [(f"L{lv}", sum(tally.tool_calls[lv]) / len(tally.tool_calls[lv])) for lv in levels]
        out["calls"] = vbar_chart("Reference tool calls per task, by level (mean; whiskers: min to max)", means,
                                  "difficulty level", "tool calls", ranges=[(min(tally.tool_calls[lv]),
                                                                             max(tally.tool_calls[lv]))
                                                                            for lv in levels],
                                  fmt=lambda v: f"{v:.1f}")
    return out


def _validation_reports(run: Run) -> list[dict]:
    """validation.json (validate RUN); else the ENV.validation.json that validating one
    environment writes beside it."""
    if run.single:
        paths = [run.path.parent / f"{run.path.name}.validation.json"]
    else:
        paths = [run.path / "validation.json"]
        if not paths[0].is_file():
            paths = sorted(run.path.glob("*.validation.json"))
    return [r for p in paths for r in [_json(p, run.problems)] if isinstance(r, dict)]


def _validation(reports: list[dict]) -> dict | None:
    from envfactory.factory.charts import stacked_hbar_chart

    if not reports:
        return None
    envs = [e for r in reports for e in r.get("envs") or []]
    tasks = [t for e in envs for t in e.get("tasks") or []]
    covered = [str(t.get("constraints_covered", "0/0")).split("/") for t in tasks]

    def n(key):
        return sum(int(t.get(key) or 0) for t in tasks)

    def split(pred, xs):
        good = sum(bool(pred(x)) for x in xs)
        return good, len(xs) - good

    rows = [  # (label, passed, failed, what passing means)
        ("envs: manifest intact", *split(lambda e: not e.get("manifest"), envs),
         "every file's sha256 matches manifest.json"),
        ("envs: readable", *split(lambda e: not e.get("error"), envs), "seed, database and tasks load"),
        ("tasks: sound", *split(lambda t: t.get("rejected") == t.get("mutants"), tasks),
         "every mutant and junk answer scores 0"),
        ("tasks: complete", *split(lambda t: t.get("accepted") == t.get("feasible"), tasks),
         "the reference (every rerun) and every other feasible plan score 1"),
        ("tasks: constraints covered", *split(lambda c: len(c) == 2 and c[0] == c[1], covered),
         "each constraint has a mutant that breaks it"),
        ("tasks: tools suffice", *split(lambda t: not t.get("tool_failures"), tasks),
         "the reference's tool calls run without error"),
        ("tasks: no failure", *split(lambda t: not t.get("failures"), tasks), "nothing at all reported"),
        ("answers: wrong scored 0", n("rejected"), n("mutants") - n("rejected"), "mutants and junk, over all tasks"),
        ("answers: feasible scored 1", n("accepted"), n("feasible") - n("accepted"),
         "reference reruns and alternatives, over all tasks"),
        ("tool calls: reference ok", n("tool_calls") - n("tool_failures"), n("tool_failures"),
         "the reference's calls, over all tasks"),
    ]
    failures = [f"{e.get('env_id', '?')}: {f}" for e in envs for f in e.get("failures") or []]
    return {"svg": stacked_hbar_chart("Validation: checks passed and failed", [r[:3] for r in rows], "share passed"),
            "rows": rows,
            "ok": all(r.get("ok") for r in reports), "backends": sorted({str(r.get("backend")) for r in reports}),
            "envs": len(envs), "tasks": len(tasks), "failures": failures[:MAX_LISTED],
            "more_failures": max(0, len(failures) - MAX_LISTED),
            "seconds": sum(float(r.get("seconds") or 0) for r in reports)}


def _solvers(run: Run, reports: list[dict]) -> dict[str, dict]:
    """agent -> {k, levels, seconds}: solve-AGENT.json first, then batch.json's and validation.json's tables."""
    found: dict[str, dict] = {}
    for p in sorted(run.path.glob("solve-*.json")):
        d = _json(p, run.problems)
        if isinstance(d, dict) and isinstance(d.get("levels"), dict):
            found[str(d.get("agent") or p.stem[len("solve-"):])] = d
    for table in [run.batch.get("solve")] + [r.get("solve") for r in reports]:
        for agent, d in table.items() if isinstance(table, dict) else ():
            if isinstance(d, dict) and isinstance(d.get("levels"), dict):
                found.setdefault(str(agent), d)
    return found


def _solve(solvers: dict[str, dict]) -> dict | None:
    from envfactory.factory.charts import PALETTE, Line, line_chart

    if not solvers:
        return None
    agents = sorted(solvers)
    per = {a: {int(x): v for x, v in solvers[a]["levels"].items() if isinstance(v, dict)} for a in agents}
    ks = {a: int(solvers[a].get("k") or 1) for a in agents}
    levels = sorted({x for a in agents for x in per[a]})
    lines = []
    for n, a in enumerate(agents):
        color, lv = PALETTE[n % len(PALETTE)], per[a]
        lines.append(Line(f"{a} pass@1", [(x, float(lv[x].get("pass@1") or 0)) for x in sorted(lv)], color))
        if ks[a] > 1:
            lines.append(Line(f"{a} pass@{ks[a]}", [(x, float(lv[x].get(f"pass@{ks[a]}") or 0)) for x in sorted(lv)],
                              color, dashed=True))
    rows = []
    for x in levels:
        first = next(per[a][x] for a in agents if x in per[a])
        cells = []
        for a in agents:
            v = per[a].get(x, {})
            cells.append({"p1": v.get("pass@1"), "pk": v.get(f"pass@{ks[a]}") if ks[a] > 1 else None,
                          "calls": v.get("tool_calls"), "tokens": v.get("tokens")})
        rows.append({"level": x, "tasks": first.get("tasks"), "min_calls": first.get("min_tool_calls"), "cells": cells})
    svg = line_chart("Solving agents: pass@1 and pass@k by level", lines, [(x, str(x)) for x in levels],
                     "difficulty level", "pass rate")
    return {"svg": svg, "agents": [{"name": a, "k": ks[a]} for a in agents], "rows": rows}


def _rejections(run: Run) -> dict:
    from envfactory.factory.charts import hbar_chart

    tally = run.tally
    agent = run.batch.get("agent") if isinstance(run.batch.get("agent"), dict) else {}
    model_run = any(k not in ("specialist", "?") for k, _ in tally.agents) or \
        agent.get("kind") not in (None, "specialist")
    keys = ("proposals", "rejected", "fallbacks", "malformed", "data_defaults", "tools_written", "tools_rejected",
            "checks_tested", "checks_rejected", "requests", "prompt_tokens", "completion_tokens")
    totals = {k: agent[k] for k in keys if _is_num(agent.get(k))}
    if "proposals" not in totals:  # no run totals (a journal): the kept environments' own
        totals = {"proposals": tally.proposals, "rejected": tally.rejected, "checks_rejected": tally.checks_rejected}
    top = tally.reasons.most_common(TOP_REASONS)
    return {
        "model_run": model_run, "totals": totals,
        "svg": hbar_chart("Rejected proposals by reason (reasons recorded per environment)", top,
                          "rejections recorded", label_width=330, color="#d55e00") if top else None,
        "top": [{"reason": r, "count": c, "examples": tally.examples[r]} for r, c in top],
        "recorded": sum(tally.reasons.values()), "rejected": tally.rejected + tally.checks_rejected,
    }


def _timings(run: Run, validation: dict | None, solvers: dict[str, dict]) -> dict | None:
    from envfactory.factory.charts import hbar_chart

    batch, tally = run.batch, run.tally
    items = []
    if _is_num(batch.get("seconds")):
        items.append(("generation (wall)", float(batch["seconds"])))
    items += [(f"generation: {k} (summed over environments)", v) for k, v in tally.timings.most_common()]
    if tally.env_seconds and not tally.timings:
        items.append(("generation (summed over environments)", sum(tally.env_seconds)))
    if validation and validation["seconds"]:
        items.append(("factory validate", validation["seconds"]))
    items += [(f"factory solve --agent {a}", float(d["seconds"])) for a, d in sorted(solvers.items())
              if _is_num(d.get("seconds"))]
    if not items:
        return None
    return {"svg": hbar_chart("Where time went (seconds)", items, "seconds", label_width=330,
                              fmt=lambda v: f"{v:,.1f}"), "items": items,
            "generation": _is_num(batch.get("seconds")) or bool(tally.timings or tally.env_seconds)}


# ---- the page ----------------------------------------------------------------------------

def _template():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v, d=0: "–" if v is None else f"{v:,.{d}f}"
    env.globals["zip"] = zip
    return env.get_template(TEMPLATE)


def render_report(run_dir: Path, out: Path | None = None) -> Path:
    """Write the report of the run in `run_dir` to `out` (default `run_dir/report.html`;
    beside a single environment, `ENV.report.html`, so its manifest stays whole); return its path."""
    run = load_run(Path(run_dir))
    reports = _validation_reports(run)
    try:
        validation = _validation(reports)
    except (TypeError, ValueError, AttributeError) as e:
        run.problems.append(f"validation.json: of an unexpected shape ({type(e).__name__}: {e})")
        validation = None
    solvers = _solvers(run, reports)
    try:
        solve = _solve(solvers)
    except (TypeError, ValueError, AttributeError) as e:
        run.problems.append(f"solve results: of an unexpected shape ({type(e).__name__}: {e})")
        solve = None
    tally = run.tally
    page = _template().render(
        header=_header(run), ladders=_ladders(tally), constraints=_constraints(tally), tools=_tools(tally),
        validation=validation, solve=solve, rejections=_rejections(run), timings=_timings(run, validation, solvers),
        problems=run.problems[:MAX_LISTED], more_problems=max(0, len(run.problems) - MAX_LISTED),
        no_tasks=tally.no_tasks)
    if out is None:
        out = run.path.parent / f"{run.path.name}.report.html" if run.single else run.path / "report.html"
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
    except OSError as e:
        raise ReportError(f"cannot write the report {out}: {e.strerror or e}") from None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="factory report", description="One self-contained HTML page about a run.")
    ap.add_argument("run", metavar="RUN", help="a generation run (the --out of factory generate)")
    ap.add_argument("--out", default=None, help="the HTML file to write (default RUN/report.html)")
    a = ap.parse_args(argv)
    try:
        path = render_report(Path(a.run), Path(a.out) if a.out else None)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
