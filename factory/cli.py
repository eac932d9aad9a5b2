"""`factory`: the command line. Thin: parse arguments, call one library function, print.

Errors print one line (`factory: error: ...`) and exit 2; `verify` exits 1 when the score
is below 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

__all__ = ["main"]


from envfactory.factory.errors import UsageError


def _fail(msg: str, code: int = 2):
    print(f"factory: error: {msg}", file=sys.stderr)
    return code


def cmd_generate(a) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from envfactory.factory.agents.local import local_server
    from envfactory.factory.generate import generate, phase_totals
    from envfactory.factory.seed import load_seed, resolve_seed

    if a.envs < 1:
        raise UsageError("--envs must be at least 1")
    _check_address(a)
    spec = _agent_spec(a)
    seed_path = resolve_seed(a.seed_ref)
    seed = load_seed(seed_path)  # a bad seed fails here, before any progress display
    from envfactory.factory.journal import preflight
    from envfactory.factory.generate import run_header

    out = Path(a.out)
    if out.is_dir():  # and so does a run directory that cannot be resumed or reused
        preflight(out, run_header(seed, seed_path, a.seed, spec), a.resume, a.force, agent=False)
    console = Console(stderr=True)
    with Progress(TextColumn("[bold]generate[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task(a.seed_ref, total=a.envs)

        def progress(done, total, env):
            bar.update(task, completed=done, description=f"{env.env_id} (levels {env.levels}, plans {env.counts})")

        with local_server(spec) as served:  # --agent dsa: our model on loopback, for the workers
            res = generate(a.seed_ref, a.envs, a.out, a.seed, a.workers, a.force, progress, served,
                           resume=a.resume, executor=a.executor, address=a.address)
        spec = served
    for e in res.envs:
        print(f"{e.env_id}\tlevels={e.levels}\tplans={','.join(map(str, e.counts))}\t"
              f"calls={','.join(map(str, e.tool_calls))}\ttools={len(e.tools)}")
    rate = len(res.envs) / res.seconds * 60
    print(f"{len(res.envs)} environments in {res.seconds:.1f} s ({rate:.1f}/min) -> {res.out_dir}", file=sys.stderr)
    phases = phase_totals(res.envs)
    if phases:
        total = sum(phases.values()) or 1.0
        print("where the time went (worker seconds): " + ", ".join(
            f"{k} {v:.1f} s ({100 * v / total:.0f}%)" for k, v in sorted(phases.items(), key=lambda kv: -kv[1])),
            file=sys.stderr)
    if spec.kind != "specialist":
        t = res.agent
        print(f"agent {spec.kind} ({spec.model or 'server default'}): {t.get('proposals', 0)} proposals, "
              f"{t.get('rejected', 0)} rejected, {t.get('requests', 0)} requests, "
              f"{t.get('prompt_tokens', 0) + t.get('completion_tokens', 0)} tokens, "
              f"{t.get('fallbacks', 0)} decisions fell back to the specialist, "
              f"{t.get('tools_written', 0)} tools written ({t.get('tools_rejected', 0)} rejected), "
              f"{t.get('checks_tested', 0)} written checks through the harness ({t.get('checks_rejected', 0)} "
              f"rejected), {t.get('data_defaults', 0)} data choices defaulted; "
              f"{len(res.failed)} environments replaced", file=sys.stderr)
    return 0


def _check_address(a) -> None:
    if a.address and a.executor != "ray":
        raise UsageError("--address is for --executor ray")


def _executor_args(p, what: str = "built") -> None:
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help=f"where environments are {what}: a local process pool (default) or Ray tasks")
    p.add_argument("--address", default=None,
                   help="with --executor ray: a running cluster to join (auto, or host:port); default: start a "
                        "local Ray instance for this command")


def _agent_spec(a):
    from envfactory.factory.agents.base import AgentSpec

    try:
        return AgentSpec(a.agent, a.model, a.base_url, a.api_key_env,
                         None if getattr(a, "fallback", "none") == "none" else a.fallback,
                         _options(getattr(a, "agent_option", None) or []))
    except ValueError as e:
        raise UsageError(str(e)) from None


def cmd_report(a) -> int:
    from envfactory.factory.report import render_report

    print(render_report(Path(a.run), Path(a.out) if a.out else None))
    return 0


def cmd_solve(a) -> int:
    from envfactory.factory.solve import format_solve_table, solve_bundle

    _check_address(a)
    if a.k < 1:
        raise UsageError("-k must be at least 1")
    from envfactory.factory.agents.solvers import SOLVERS

    agents = a.agent.split(",")
    bad = [x for x in agents if x not in SOLVERS]
    if bad:
        raise UsageError(f"unknown solving agent {bad[0]!r} (agents: {', '.join(SOLVERS)})")
    from envfactory.factory.agents.base import AgentSpec
    from envfactory.factory.agents.local import local_server

    reports = []
    for agent in agents:
        spec = None
        if agent in ("openai", "dsa"):
            try:
                spec = AgentSpec(agent, a.model, a.base_url, a.api_key_env,
                                 options=_options(a.agent_option or []) + (("max_steps", a.max_steps),))
            except ValueError as e:
                raise UsageError(str(e)) from None

        def progress(done, total, name, agent=agent):
            if not a.quiet:
                print(f"solve {agent}: {done}/{total} {name}", file=sys.stderr)

        with local_server(spec) if spec else contextlib.nullcontext() as served:
            reports.append(solve_bundle(a.bundle, agent, a.k, a.seed, a.workers, served, a.max_tasks, progress,
                                        executor=a.executor, address=a.address))
    print(format_solve_table(reports))
    for r in reports:
        print(f"{r.agent}: {sum(v['tasks'] for v in r.levels.values())} tasks x {r.k} attempts in {r.seconds:.1f} s "
              f"-> {Path(a.bundle) / f'solve-{r.agent}.json'}", file=sys.stderr)
    return 0


def cmd_seed_draft(a) -> int:
    from envfactory.factory.draft import draft_seed

    spec = _agent_spec(a)
    if spec.kind != "openai":
        raise UsageError("seed draft needs a model: --agent openai --base-url URL")
    path, replies, complaints = draft_seed(a.description, a.out, spec, [Path(d) for d in a.data or []], a.attempts)
    print(f"{path}: a seed that passes the checker, after {replies} replies "
          f"({len(complaints)} refused by the checker)", file=sys.stderr)
    for c in complaints:
        print(f"  refused: {c}", file=sys.stderr)
    print(path)
    return 0


class _Unscorable(Exception):
    """An answer that is read but cannot be scored (too big, too deep, not UTF-8): it scores 0."""


def _read_answer(text: str):
    from envfactory.factory.export.runtime.envfactory_runtime import MAX_RESPONSE_CHARS, answer_problem

    if text == "-":
        raw = sys.stdin.buffer.read(4 * MAX_RESPONSE_CHARS + 1)
    else:
        p = Path(text)
        try:
            is_file = p.is_file()
        except (OSError, ValueError):  # JSON text too long to be a file name, or with a NUL
            is_file = False
        if is_file:
            try:
                with p.open("rb") as f:
                    raw = f.read(4 * MAX_RESPONSE_CHARS + 1)
            except OSError as e:
                raise UsageError(f"cannot read {text}: {e}") from None
        else:
            raw = text.encode("utf-8", "surrogateescape")
    if len(raw) > 4 * MAX_RESPONSE_CHARS:
        raise _Unscorable(f"answer too long (over {4 * MAX_RESPONSE_CHARS} bytes)")
    try:
        raw = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Unscorable(f"answer is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if len(raw) > MAX_RESPONSE_CHARS:
        raise _Unscorable(f"answer too long ({len(raw)} characters, limit {MAX_RESPONSE_CHARS})")
    try:
        answer = json.loads(raw)
    except RecursionError:
        raise _Unscorable("answer nests too deep to parse") from None
    except ValueError as e:
        raise UsageError(f"answer is not valid JSON ({e}); pass a JSON file, JSON text or - for stdin") from None
    why = answer_problem(answer)
    if why:
        raise _Unscorable(why)
    return answer


def cmd_verify(a) -> int:
    from envfactory.sandboxes.isolate import SandboxError, SandboxPool

    env = Path(a.env_dir)
    if not (env / "tasks" / "tasks.jsonl").is_file():
        raise UsageError(f"{env} is not an environment directory (no tasks/tasks.jsonl)")
    vpath = env / "verifiers" / f"{a.task_id}.py"
    if "/" in a.task_id or not vpath.is_file():
        known = [json.loads(l)["task_id"] for l in (env / "tasks" / "tasks.jsonl").read_text().splitlines() if l]
        raise UsageError(f"no task {a.task_id!r} in {env} (tasks: {', '.join(known)})")
    try:
        answer = _read_answer(a.answer)
    except _Unscorable as e:
        print(json.dumps({"score": 0.0, "checks": [{"name": "format", "passed": False, "reason": str(e)}]},
                         indent=2))
        return 1
    try:
        with SandboxPool(env, size=1, backend=a.backend) as pool:
            resp = pool.run([{"op": "verify", "verifier": f"verifiers/{a.task_id}.py", "db": "db/sandbox.duckdb",
                              "answers": [answer]}])[0]
    except SandboxError as e:
        raise UsageError(str(e)) from None
    res = resp["results"][0]
    if "error" in res:
        raise UsageError(f"the verifier failed in the {pool.backend} sandbox: {res['error']}")
    result = res["ok"]
    print(json.dumps(result, indent=2, ensure_ascii=True))
    return 0 if result["score"] == 1.0 else 1


def cmd_seeds(a) -> int:
    from envfactory.factory.seed import builtin_seeds, load_seed

    for name, path in builtin_seeds().items():
        print(f"{name}\t{load_seed(path).seed.description}")
    return 0


def _baselines(text: str) -> list[str]:
    agents = text.split(",")
    bad = [x for x in agents if x not in ("random", "greedy")]
    if bad:
        raise UsageError(f"--solve {bad[0]!r}: validate runs the no-model baselines (random, greedy); "
                         f"use factory solve for a model")
    return agents


def _validate_solve(a, report_path) -> None:
    """`factory validate --solve AGENTS`: the baselines' pass rates per level, printed and
    added to the validation report."""
    from envfactory.factory.bundle import write_json
    from envfactory.factory.solve import format_solve_table, solve_bundle

    reports = [solve_bundle(a.path, agent, a.solve_k, 0, a.workers, executor=a.executor, address=a.address)
               for agent in _baselines(a.solve)]
    print(format_solve_table(reports))
    path = Path(report_path)
    data = json.loads(path.read_text(encoding="utf-8"))
    data["solve"] = {r.agent: {"k": r.k, "levels": r.to_json()["levels"]} for r in reports}
    write_json(path, data)


def cmd_validate(a) -> int:
    import warnings

    from envfactory.factory.validate import format_table, validate
    from envfactory.sandboxes.isolate import SandboxWarning

    _check_address(a)
    if a.solve:
        _baselines(a.solve)  # a bad agent name fails before the validation runs

    def progress(done, total, env):
        if not a.quiet:
            status = "ok" if not env.failures else f"{len(env.failures)} failures"
            print(f"[{done}/{total}] {env.env_id}: {len(env.tasks)} tasks, {status}", file=sys.stderr, flush=True)

    def log(msg):
        print(f"factory: {msg}", file=sys.stderr, flush=True)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SandboxWarning)
        report = validate(a.path, backend=a.backend, workers=a.workers, report_path=a.report,
                          progress=progress, log=log, executor=a.executor, address=a.address)
    for w in caught:
        if issubclass(w.category, SandboxWarning):
            print(f"factory: warning: {w.message}", file=sys.stderr)
    print(format_table(report))
    if a.solve:
        _validate_solve(a, report.report_path)
    failures = [(e.env_id, f) for e in report.envs for f in e.failures]
    for env_id, f in failures[: a.max_failures]:
        print(f"FAIL {env_id}: {f}")
    if len(failures) > a.max_failures:
        print(f"... and {len(failures) - a.max_failures} more failures (see the report)")
    t = report.totals()
    print(f"{t['tasks']} tasks in {len(report.envs)} environments, {report.verifier_calls} verifier calls and "
          f"{report.tool_calls} tool calls in the {report.backend} sandbox, {report.seconds:.1f} s; "
          f"report: {report.report_path}")
    print("validation: " + ("ok" if report.ok else "FAILED"))
    return 0 if report.ok else 1


class _Parser(argparse.ArgumentParser):
    """Usage errors on one line (`factory validate: error: ...`), exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _options(items: list[str]) -> tuple:
    """`KEY=VALUE` agent options, values read as JSON where they parse (numbers, true/false)."""
    out = []
    for it in items:
        key, sep, value = it.partition("=")
        if not sep or not key:
            raise UsageError(f"--agent-option {it!r}: expected KEY=VALUE")
        try:
            out.append((key, json.loads(value)))
        except ValueError:
            out.append((key, value))
    return tuple(out)


def _agent_args(ap, kinds=("specialist", "openai", "dsa"), default="specialist") -> None:
    ap.add_argument("--agent", choices=kinds, default=default,
                    help=f"who makes the decisions (default {default}; openai: any OpenAI-compatible server; "
                         "dsa: our own DSA model, served here unless --base-url is given)")
    ap.add_argument("--model", default=None, help="model name sent to the server (default: the server's own); "
                                                  "for dsa, a checkpoint directory (default: the shipped one)")
    ap.add_argument("--base-url", default=None, help="the server's API root, e.g. http://127.0.0.1:8000/v1")
    ap.add_argument("--api-key-env", default="OPENAI_API_KEY",
                    help="environment variable holding the API key (default OPENAI_API_KEY; unset: no key)")
    ap.add_argument("--agent-option", action="append", metavar="KEY=VALUE",
                    help="model agent settings: rounds, attempts, base_attempts; chat: timeout_s, max_tokens, "
                         "temperature, stream, context_tokens, strategy (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="factory", description="Agentic environment and task synthesis factory.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="generate environments from a task-type seed")
    g.add_argument("seed_ref", metavar="SEED", help="a built-in seed name (see `factory seeds`) or a seed file")
    g.add_argument("--envs", type=int, default=3, help="number of environments (default 3)")
    g.add_argument("--out", required=True, help="output directory")
    g.add_argument("--seed", type=int, default=0, help="run seed: same seed, same output (default 0)")
    g.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count)")
    g.add_argument("--force", action="store_true", help="replace environments that already exist")
    _executor_args(g)
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its journal (a killed run, or a finished one grown with "
                        "a larger --envs), building only what it has not finished")
    _agent_args(g)
    g.add_argument("--fallback", choices=["none", "specialist"], default="none",
                   help="when the model cannot make a decision usably: fail that environment (none, the default) "
                        "or let the specialist make it (counted in the report)")
    g.set_defaults(fn=cmd_generate)
    v = sub.add_parser("verify", help="score an answer with a task's verifier")
    v.add_argument("env_dir", metavar="ENV_DIR")
    v.add_argument("task_id", metavar="TASK_ID")
    v.add_argument("answer", metavar="ANSWER_JSON", help="a JSON file, JSON text, or - for stdin")
    v.add_argument("--backend", choices=["auto", "docker", "local"], default="auto",
                   help="where the verifier runs (default: docker if a daemon answers, else local with a warning)")
    v.set_defaults(fn=cmd_verify)
    so = sub.add_parser("solve", help="run a solving agent on every task; pass@1 and pass@k per level")
    so.add_argument("bundle", metavar="BUNDLE", help="a generated bundle directory or one environment")
    so.add_argument("--agent", default="greedy",
                    help="random, greedy (no model), openai or dsa (our local model); several comma-separated (default greedy)")
    so.add_argument("-k", type=int, default=1, help="attempts per task (default 1)")
    so.add_argument("--seed", type=int, default=0, help="seed of the attempts' randomness (default 0)")
    so.add_argument("--workers", type=int, default=None, help="processes, one environment each (default: CPU count)")
    _executor_args(so, "solved")
    so.add_argument("--max-tasks", type=int, default=None, help="tasks per environment, lowest levels first")
    so.add_argument("--quiet", action="store_true", help="no per-environment progress")
    so.add_argument("--model", default=None, help="model name sent to the server (openai)")
    so.add_argument("--base-url", default=None, help="the server's API root, e.g. http://127.0.0.1:8000/v1 (openai)")
    so.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    so.add_argument("--agent-option", action="append", metavar="KEY=VALUE",
                    help="chat settings for the model (timeout_s, max_tokens, temperature, strategy, ...)")
    so.add_argument("--max-steps", type=int, default=24, help="model turns per attempt (openai; default 24)")
    so.set_defaults(fn=cmd_solve)
    rp = sub.add_parser("report", help="one self-contained HTML page about a run: ladders, constraint mix, tools, "
                                       "validation, pass@k, rejected proposals, timings")
    rp.add_argument("run", metavar="RUN", help="a generate --out directory (or one environment)")
    rp.add_argument("--out", default=None, help="the HTML file to write (default RUN/report.html)")
    rp.set_defaults(fn=cmd_report)
    sd = sub.add_parser("seed", help="seed files: draft one with a model")
    sds = sd.add_subparsers(dest="seed_cmd", required=True)
    dr = sds.add_parser("draft", help="a model drafts a seed from a description; the seed checker gates it")
    dr.add_argument("description", metavar="DESCRIPTION", help='the task type, e.g. "a 3-day trip from Hangzhou ..."')
    dr.add_argument("-o", "--out", required=True, help="the seed file to write (only a seed that passes the checker)")
    dr.add_argument("--data", action="append", metavar="FILE",
                    help="a data file of your own the seed may use (CSV, Parquet, JSON...; beside or below the "
                         "output seed); repeatable")
    dr.add_argument("--attempts", type=int, default=4, help="replies the model gets (default 4)")
    _agent_args(dr, kinds=("openai",), default="openai")
    dr.set_defaults(fn=cmd_seed_draft)
    s = sub.add_parser("seeds", help="list the built-in seeds")
    s.set_defaults(fn=cmd_seeds)
    va = sub.add_parser("validate", help="check every task: reference passes, mutants fail, tools suffice, manifest intact")
    va.add_argument("path", metavar="PATH", help="a bundle directory or one environment")
    va.add_argument("--backend", choices=["auto", "docker", "local"], default="auto",
                    help="where generated code runs (default: docker if a daemon answers, else local with a warning)")
    va.add_argument("--workers", type=int, default=None, help="sandbox workers and host processes (default: CPU count)")
    _executor_args(va, "prepared (mutants, completeness cases); their code runs in --backend")
    va.add_argument("--report", default=None, help="JSON report path (default: PATH/validation.json)")
    va.add_argument("--max-failures", type=int, default=20, help="failures to print (all are in the report)")
    va.add_argument("--quiet", action="store_true", help="no per-environment progress")
    va.add_argument("--solve", default=None, metavar="AGENTS",
                    help="also run these solving baselines (random,greedy) and report pass@1/pass@k per level")
    va.add_argument("--solve-k", type=int, default=1, help="attempts per task for --solve (default 1)")
    va.set_defaults(fn=cmd_validate)
    from envfactory.factory.export.cli import register as register_export

    register_export(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    from envfactory.factory.generate import GenerateError
    from envfactory.factory.partition import PartitionError
    from envfactory.sandboxes.catalog import CatalogError
    from envfactory.factory.seed import SeedError
    from envfactory.factory.validate import ValidateError
    from envfactory.factory.solve import SolveError
    from envfactory.factory.draft import DraftError
    from envfactory.sandboxes.duck import SandboxError

    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (UsageError, SeedError, PartitionError, CatalogError, GenerateError, SandboxError, ValidateError, SolveError,
            DraftError, FileExistsError) as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:  # output piped into a reader that closed early (e.g. `| head`)
        return 0


if __name__ == "__main__":
    sys.exit(main())
