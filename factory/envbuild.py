"""One environment, end to end: acquire -> sandbox -> tools -> ladder -> verifiers -> bundle.

`build_env` is a pure function of (seed, partition, run seed) apart from fetch timestamps in
the database's provenance table: `tasks/` and `verifiers/` come out byte-identical.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path

import duckdb

from envfactory.factory.agents.base import AgentError, AgentSpec, agent_stats, make_agent
from envfactory.factory.agents.data import check_choice, data_catalog, everything, seed_for
from envfactory.factory.checkgate import CheckGate
from envfactory.factory.bundle import finalize, generator_info, sha256_file, write_json, write_manifest, write_tasks
from envfactory.factory.fingerprint import data_digest, task_fingerprint, template_of
from envfactory.factory.ladder import LadderError, Level, build_ladder
from envfactory.factory.prompt import SYSTEM_PROMPT, task_prompt
from envfactory.factory.partition import Part
from envfactory.sandboxes.catalog import catalog_for
from envfactory.sandboxes.duck import build_sandbox
from envfactory.toolgen import check_tools, from_seed, load_tools, render_tools, tool_schemas
from envfactory.verifiers.codegen import load_verifier, render_verifier
from envfactory.verifiers.problem import Problem, load_problem

__all__ = ["build_env", "EnvSummary", "env_id_for", "EnvBuildError"]


class EnvBuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class EnvSummary:
    env_id: str
    path: str
    origin: str
    country: str
    levels: int
    counts: list[int]
    capped: list[bool]
    tool_calls: list[int]
    tools: list[str]
    agent: dict = field(default_factory=dict)  # which agent built it, and its proposals' fate
    data: str = ""  # the data digest (`factory.fingerprint`): seed + the partition's members
    tasks: list = field(default_factory=list)  # per level: task_id, parent, move, fingerprint, template
    timings: dict = field(default_factory=dict)  # seconds per phase (agent, data, ladder, tools, verifiers, write)


class _Clock:
    """Seconds spent per phase of a build: `mark(phase)` adds the time since the last mark
    to that phase and returns the totals so far."""

    def __init__(self):
        import time

        self._now = time.perf_counter
        self._last = self._now()
        self.totals: dict[str, float] = {}

    def mark(self, phase: str) -> dict:
        t = self._now()
        self.totals[phase] = round(self.totals.get(phase, 0.0) + t - self._last, 4)
        self._last = t
        return dict(self.totals)


def _slug(text: str) -> str:
    ascii_ = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_.lower()).strip("-")[:24] or "x"


def env_id_for(seed_name: str, run_seed: int, index: int, part: Part) -> str:
    return f"{seed_name}-s{run_seed}-{index:03d}-{_slug(part.center_name)}"


def _written_tools(agent, p: Problem, tools: list, levels: list[Level], db: Path) -> list:
    """Let a model agent write the details tools the ladder added; each is used only after it
    ran in the sandbox on the reference calls that use it. A rejected one keeps its generated body."""
    out = []
    for t in tools:
        calls = list({json.dumps(a, sort_keys=True): a for lv in levels for n, a in lv.calls if n == t.name}.values())
        if t.shape != "details" or not calls:
            out.append(t)
            continue
        try:
            wt = agent.write_tool(t, p, db, calls[:8])
        except AgentError:
            wt = None
        out.append(replace(t, written=wt.code) if wt else t)
    return out


def _choose_data(agent, seed, cat, rng):
    """The agent's data choice, checked again here (an agent's answer is never trusted)."""
    tables = data_catalog(seed, cat)
    choose = getattr(agent, "choose_data", None)
    choice = choose(tables, rng) if choose else everything(tables)
    again, why = check_choice(tables, choice.to_json())
    if again is None:
        raise AgentError(f"the agent's data choice is unusable: {why}")
    return again


def _task_record(env_id, seed, region, p: Problem, lv: Level) -> dict:
    prompt = task_prompt(seed.seed.answer_intro, region, p, lv.constraints)
    task_id = f"{env_id}-L{lv.level}"
    return {
        "task_id": task_id, "env_id": env_id, "seed": seed.name, "level": lv.level,
        "prompt": prompt,
        "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
        "constraints": [c.to_json() for c in lv.constraints],
        "reference_answer": p.plan_dict(lv.reference),
        "solution_count": lv.count, "solution_count_capped": lv.capped,
        "tools": lv.tools, "tools_added": lv.tools_added, "move": lv.move,
        "reference_tool_calls": [{"name": n, "arguments": a} for n, a in lv.calls],
        "min_tool_calls": len(lv.calls),
        "greedy_solves": lv.greedy_solves,  # the greedy baseline, given every row, finds a feasible plan
        "verifier": f"verifiers/{task_id}.py",
    }


def _where(part: Part, seed) -> str:
    if part.kind == "region":
        return (f"Region: {part.center_name}" + (f" ({part.group_name})" if part.group_name else "")
                + f" and its {len(part.members)} nearest {seed.partition.table}.")
    if part.kind == "sample":
        return f"Partition: a seeded sample of {len(part.members)} {seed.partition.table}."
    return f"Partition: the {len(part.members)} {seed.partition.table} with {seed.partition.column} {part.group}."


def _data_lines(seed, provs) -> str:
    """Say what is real and what is synthetic, per table (the provenance table has the rest)."""
    by = {p.source: p for p in provs}
    out = []
    for src in seed.sources:
        url = by[src.table].url if src.table in by else ""
        if src.synthetic:
            out.append(f"- `{src.table}`: synthetic listings (generated by the factory, served by its offline web as {src.kind})")
        elif src.kind == "package":
            out.append(f"- `{src.table}`: real data from the `{src.dataset}` package dataset")
        elif src.is_file:
            out.append(f"- `{src.table}`: real data from `{url}`" if src.kind == "file" else
                       f"- `{src.table}`: inline rows written in the seed")
        else:
            out.append(f"- `{src.table}`: scraped ({src.kind}) from `{url}`")
    return "\n".join(out)


def _card(env_id, seed, part, levels: list[Level], tools, provs) -> str:
    rows = "\n".join(f"| {lv.level} | {lv.count}{'+' if lv.capped else ''} | {len(lv.calls)} | {lv.move} |"
                     for lv in levels)
    return f"""# {env_id}

A `{seed.name}` environment generated by envfactory. {seed.seed.description}

{_where(part, seed)}
Data (see the `provenance` table in `db/sandbox.duckdb`):
{_data_lines(seed, provs)}

Tools ({len(tools)}): {', '.join(t.name for t in tools)} (`tools/tools.py`, schemas in `tools/tool_schemas.json`).

| level | feasible plans | tool calls for the reference | move |
|---|---|---|---|
{rows}

Score an answer: `factory verify {env_id} <task_id> answer.json` (exact: 1 only if every check passes).
"""


def build_env(seed, seed_path: Path, region: Part, index: int, run_seed: int, base_url: str, ctx,
              out_dir: Path, force: bool = False, agent: AgentSpec = AgentSpec()) -> EnvSummary:
    env_id = env_id_for(seed.name, run_seed, index, region)
    final = out_dir / env_id
    if final.exists() and not force:
        raise FileExistsError(f"{final} exists (use --force to replace it)")
    tmp = out_dir / f".{env_id}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "db").mkdir(parents=True)
    try:
        summary = _build_into(tmp, env_id, seed, seed_path, region, index, run_seed, base_url, ctx, agent)
        finalize(tmp, final, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _build_into(tmp, env_id, seed, seed_path, region, index, run_seed, base_url, ctx, spec) -> EnvSummary:
    db = tmp / "db" / "sandbox.duckdb"
    cat = catalog_for(seed, seed_path) if any(s.is_file for s in seed.sources) else None
    rng = random.Random(f"{seed.name}:{run_seed}:{region.origin_id}")
    agent = make_agent(spec, seed)
    gate = None
    clock = _Clock()
    try:
        # the agent's first decision: which tables this environment loads (the required ones
        # and any optional one it wants), and which columns its tasks may read
        choice = _choose_data(agent, seed, cat, rng)
        env_seed = seed_for(seed, choice)
        clock.mark("agent")
        provs = build_sandbox(db, env_seed, region, base_url, ctx, cat)
        clock.mark("data")
        con = duckdb.connect(str(db), read_only=True)
        try:
            p = load_problem(con, env_seed)
        finally:
            con.close()
        gate = CheckGate(p, seed.name, db)
        if hasattr(agent, "gate"):
            agent.gate = gate  # a model agent runs its level-0 checks through the harness before answering
        clock.mark("data")
        levels, tools = build_ladder(p, agent, seed, from_seed(seed, region.center_id), rng, seed.ladder.levels,
                                     gate)
        clock.mark("ladder")
        if getattr(agent, "write_tools", False):
            tools = _written_tools(agent, p, tools, levels, db)
    except (LadderError, AgentError) as e:
        # the run counts its rejections
        e.agent = {"kind": spec.kind, "model": spec.model} | agent_stats(agent) | (gate.stats() if gate else {})
        raise
    finally:
        if hasattr(agent, "close"):
            agent.close()
    if hasattr(agent, "dump"):
        agent.dump(env_id)  # distillation records, outside the bundle
    clock.mark("agent")
    agent_info = ({"kind": spec.kind, "model": spec.model} | agent_stats(agent) | gate.stats()
                  | {"data": choice.to_json()})
    tools_py = tmp / "tools" / "tools.py"
    tools_py.parent.mkdir()
    tools_py.write_text(render_tools(tools, env_id, seed.name), encoding="utf-8")
    mod = load_tools(tools_py, db)
    # a model-written body already ran on its reference calls in the sandbox: not again on the host
    written = {t.name for t in tools if t.written}
    check_tools(mod, [c for lv in levels for c in lv.calls], frozenset(written))
    clock.mark("tools")
    write_json(tmp / "tools" / "tool_schemas.json", tool_schemas(mod))
    records = []
    for lv in levels:
        rec = _task_record(env_id, seed, region, p, lv)
        vpath = tmp / rec["verifier"]
        vpath.parent.mkdir(exist_ok=True)
        vpath.write_text(render_verifier(rec["task_id"], seed.name, lv.level, p, lv.constraints), encoding="utf-8")
        result = load_verifier(vpath).verify(rec["reference_answer"], str(db))
        if result["score"] != 1.0:
            bad = [c for c in result["checks"] if not c["passed"]]
            raise EnvBuildError(f"{rec['task_id']}: the reference answer fails its own verifier: {bad}")
        records.append(rec)
    clock.mark("verifiers")
    write_tasks(tmp / "tasks", records)
    data = data_digest(seed.name, region.members)
    lineage = [{"task_id": r["task_id"], "level": r["level"],
                "parent": records[i - 1]["task_id"] if i else None, "move": r["move"],
                "fingerprint": task_fingerprint(data, r["constraints"]),
                "template": template_of(seed.name, r["constraints"])} for i, r in enumerate(records)]
    shutil.copyfile(seed_path, tmp / "seed.toml")
    write_json(tmp / "db" / "rebuild.json", {
        "command": f"factory generate {seed_path.name} --seed {run_seed}",
        "seed": seed.name, "run_seed": run_seed, "index": index,
        "partition": region.to_json(),
        "region": {"origin_id": region.origin_id, "country_code": region.country_code,
                   "city_ids": list(region.city_ids)},
        "sources": [vars(pv) for pv in provs]})
    (tmp / "README.md").write_text(_card(env_id, env_seed, region, levels, tools, provs), encoding="utf-8")
    write_manifest(tmp, {
        "env_id": env_id, "seed": seed.name, "seed_sha256": sha256_file(seed_path), "run_seed": run_seed,
        "generator": generator_info(), "agent": agent_info, "data_digest": data,
        # lineage: each level's task, the parent it was made from and the move that made it
        "levels": {str(lv.level): {"tasks": 1, "solution_count": lv.count, "capped": lv.capped,
                                   "min_tool_calls": len(lv.calls)} | ln for lv, ln in zip(levels, lineage)}})
    return EnvSummary(env_id, str(tmp.parent / env_id), region.origin_name, region.country_name, len(levels),
                      [lv.count for lv in levels], [lv.capped for lv in levels], [len(lv.calls) for lv in levels],
                      [t.name for t in tools], agent_info, data, lineage, clock.mark("write"))
