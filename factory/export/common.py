"""What every exporter shares: reading bundles, splitting by environment, copying the
runtime payload, the dataset card, the export manifest and atomic placement.

An export directory is assembled under a hidden temporary name beside its destination and
renamed into place when complete (its `manifest.json`, sha256 of every file, written last).
When the destination lies inside an environment or bundle directory that has a
`manifest.json` with a `files` table, the export's files are recorded there too, so
`factory.bundle.verify_manifest` keeps passing on that directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from envfactory.factory.bundle import finalize, sha256_file, verify_manifest, write_json, write_manifest
from envfactory.factory.errors import UsageError

__all__ = [
    "EXPORT_FORMAT_VERSION",
    "RUNTIME_DIR",
    "InputEnv",
    "InputBundle",
    "copy_envs",
    "copy_runtime",
    "duckdb_requirement",
    "json_text",
    "load_source",
    "place",
    "render",
    "split_envs",
    "task_rows",
    "write_card",
]

EXPORT_FORMAT_VERSION = 1
RUNTIME_DIR = Path(__file__).parent / "runtime"
TEMPLATE_DIR = Path(__file__).parent / "templates"
ENV_FILES = ("db/sandbox.duckdb", "tools/tools.py", "tools/tool_schemas.json", "tasks/tasks.jsonl")


@dataclass
class InputEnv:
    env_id: str
    path: Path
    tasks: list[dict]
    schemas: list[dict]
    manifest_sha256: str
    max_result_chars: int


@dataclass
class InputBundle:
    path: Path
    envs: list[InputEnv]
    is_env: bool  # PATH was one environment directory (not a bundle of several)
    seeds: list[str] = field(default_factory=list)

    @property
    def tasks(self) -> list[dict]:
        return [t for e in self.envs for t in e.tasks]


def _is_env(p: Path) -> bool:
    return (p / "tasks" / "tasks.jsonl").is_file()


def _max_result_chars(tools_py: Path) -> int:
    for line in tools_py.read_text(encoding="utf-8").splitlines():
        if line.startswith("MAX_RESULT_CHARS ="):
            return int(line.split("=", 1)[1].strip())
    raise UsageError(f"{tools_py}: no MAX_RESULT_CHARS (not a generated tools module)")


def _load_env(p: Path) -> InputEnv:
    problems = verify_manifest(p)
    problems = [x for x in problems if not x.split(": ", 1)[-1].startswith("exports/")]
    if problems:
        raise UsageError(f"{p}: bundle files do not match manifest.json ({'; '.join(problems[:3])})")
    for rel in ENV_FILES:
        if not (p / rel).is_file():
            raise UsageError(f"{p}: missing {rel}")
    try:
        tasks = [json.loads(l) for l in (p / "tasks" / "tasks.jsonl").read_text(encoding="utf-8").splitlines() if l]
        schemas = json.loads((p / "tools" / "tool_schemas.json").read_text(encoding="utf-8"))
    except ValueError as e:
        raise UsageError(f"{p}: unreadable task or schema file ({e})") from None
    if not tasks:
        raise UsageError(f"{p}: no tasks")
    for t in tasks:
        if not (p / t["verifier"]).is_file():
            raise UsageError(f"{p}: task {t['task_id']} has no verifier file {t['verifier']}")
    return InputEnv(p.name, p, tasks, schemas, sha256_file(p / "manifest.json"), _max_result_chars(p / "tools" / "tools.py"))


def load_source(path: str | Path) -> InputBundle:
    """A bundle directory (environments as subdirectories) or one environment directory."""
    p = Path(path).resolve()
    if not p.is_dir():
        raise UsageError(f"{path} is not a directory")
    if _is_env(p):
        dirs, is_env = [p], True
    else:
        dirs = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".") and _is_env(d))
        is_env = False
    if not dirs:
        raise UsageError(f"{path} is neither an environment directory (tasks/tasks.jsonl) nor a bundle of them")
    envs = [_load_env(d) for d in dirs]
    return InputBundle(p, envs, is_env, sorted({t["seed"] for e in envs for t in e.tasks}))


def split_envs(env_ids: list[str], test_fraction: float) -> dict[str, list[str]]:
    """Environment-level split: no environment has tasks in both train and test. The test
    environments are the first round(n * fraction) (at least 1 when n > 1 and fraction > 0)
    in sha256(env_id) order: stable, and independent of the other ids present."""
    if not 0 <= test_fraction < 1:
        raise UsageError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    n = len(env_ids)
    k = 0 if n < 2 or test_fraction == 0 else min(n - 1, max(1, round(n * test_fraction)))
    order = sorted(env_ids, key=lambda e: hashlib.sha256(e.encode()).hexdigest())
    test = set(order[:k])
    return {"train": [e for e in env_ids if e not in test], "test": [e for e in env_ids if e in test]}


def task_rows(src: InputBundle, splits: dict[str, list[str]]) -> dict[str, list[dict]]:
    """Task records per split, each with `split` and a per-split `index` added."""
    by_env = {e.env_id: e for e in src.envs}
    out = {}
    for split, ids in splits.items():
        rows = [dict(t, split=split) for e in ids for t in by_env[e].tasks]
        for i, r in enumerate(rows):
            r["index"] = i
        out[split] = rows
    return out


def union_schemas(src: InputBundle) -> list[dict]:
    """The tools of all environments, by name (sorted); the same name must mean the same schema."""
    union: dict[str, dict] = {}
    for e in src.envs:
        for s in e.schemas:
            name = s["function"]["name"]
            if name in union and union[name] != s:
                raise UsageError(f"tool {name} has different schemas in different environments; "
                                 f"export them separately")
            union.setdefault(name, s)
    return [union[k] for k in sorted(union)]


PY_TYPES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool"}


def py_annotation(tool: str, name: str, prop: dict) -> str:
    """The Python annotation of a flat JSON-schema property (string enums -> Literal)."""
    if "enum" in prop:
        return "Literal[" + ", ".join(repr(v) for v in prop["enum"]) + "]"
    if prop.get("type") in PY_TYPES:
        return PY_TYPES[prop["type"]]
    raise UsageError(f"tool {tool}.{name}: type {prop.get('type')!r} has no Python equivalent")


def json_text(obj) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False)


def copy_envs(src: InputBundle, dest: Path) -> None:
    """The runtime payload of each environment under dest/envs/<env_id>/ (database, tools,
    verifiers, tasks) plus the environment's own manifest as source_manifest.json."""
    for e in src.envs:
        d = dest / "envs" / e.env_id
        for rel in ENV_FILES:
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(e.path / rel, d / rel)
        (d / "verifiers").mkdir(exist_ok=True)
        for t in e.tasks:
            shutil.copyfile(e.path / t["verifier"], d / t["verifier"])
        shutil.copyfile(e.path / "manifest.json", d / "source_manifest.json")


_DUCKDB_TAG = re.compile(rb"v(\d+)\.(\d+)\.\d+")


def duckdb_requirement(src: InputBundle) -> str:
    """`duckdb>=MAJOR.MINOR` of the newest DuckDB that wrote a shipped database (its main
    header records the writer's version tag, e.g. v2.0.1). DuckDB reads older storage formats,
    not newer ones: 1.1.3, 1.4.4 and 1.5.6 all refuse a database written by 2.0.1. Storage
    formats change with minor releases, so the patch level is left free."""
    versions = []
    for e in src.envs:
        with open(e.path / "db" / "sandbox.duckdb", "rb") as f:
            m = _DUCKDB_TAG.search(f.read(256))
        if m is None:
            raise UsageError(f"{e.path}/db/sandbox.duckdb: no DuckDB version in its header")
        versions.append((int(m.group(1)), int(m.group(2))))
    major, minor = max(versions)
    return f"duckdb>={major}.{minor}"


def copy_runtime(dest: Path, *names: str) -> None:
    """Ship the runtime and the named modules into `dest`: `runtime/<name>` verbatim, or
    `templates/<name>.j2` rendered (the shipped modules that load the runtime share one
    loader, `templates/runtime_loader.py.j2`, included where they need it)."""
    for name in ("envfactory_runtime.py", *names):
        if (TEMPLATE_DIR / f"{name}.j2").is_file():
            render(f"{name}.j2", dest / name)
        else:
            shutil.copyfile(RUNTIME_DIR / name, dest / name)


def render(template: str, dest: Path, **context) -> None:
    """Render `templates/<template>` (jinja2, strict about undefined names) to `dest`."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    dest.write_text(env.get_template(template).render(**context), encoding="utf-8")


def max_tool_chars(src: InputBundle) -> int:
    """The tool-output length an export declares: the largest cap of its tools modules
    (each module turns a longer result into an error), enforced again by the runtime."""
    return max(e.max_result_chars for e in src.envs)


def write_card(dest: Path, target: str, src: InputBundle, splits: dict[str, list[str]], usage: str,
               data_files: dict[str, str] | None = None, max_chars: int | None = None) -> None:
    """README.md: a Hugging Face dataset card (YAML front matter, then usage and contents)."""
    n_tasks = len(src.tasks)
    size = "n<1K" if n_tasks < 1000 else "1K<n<10K" if n_tasks < 10000 else "10K<n<100K"
    lines = ["---", "license: other", "language:", "- en", "pretty_name: " + json.dumps(f"envfactory {target} export"),
             "size_categories:", f"- {size}", "task_categories:", "- text-generation",
             "tags:", "- envfactory", "- agentic-rl", "- tool-use", f"- {target}"]
    lines += [f"- {s}" for s in src.seeds]
    if data_files:
        lines += ["configs:", "- config_name: default", "  data_files:"]
        for split, path in data_files.items():
            if splits.get(split):
                lines += [f"  - split: {split}", f"    path: {path}"]
    lines.append("---")
    by_env = {e.env_id: e for e in src.envs}
    rows = "\n".join(f"| {env} | {split} | {len(by_env[env].tasks)} | "
                     f"{', '.join(str(t['level']) for t in by_env[env].tasks)} |"
                     for split, ids in splits.items() for env in ids)
    limit = f"\nEvery tool output is at most {max_chars} characters (the runtime turns a longer result into a " \
            f"short error); the trainer config here declares that length.\n" if max_chars else ""
    body = f"""
# envfactory export: {target}

{n_tasks} tasks from {len(src.envs)} environment(s) ({', '.join(src.seeds)}), generated by envfactory:
each environment is a read-only DuckDB sandbox of real data, typed tools over it, and tasks
of rising difficulty with a generated verifier (`envs/<env_id>/verifiers/<task_id>.py`,
exact: score 1 only if every check passes). Splits are by environment: no environment has
tasks in both train and test.
{limit}
## Use

{usage.strip()}

## Contents

| environment | split | tasks | levels |
|---|---|---|---|
{rows}

`manifest.json` holds the sha256 of every file here and the source environments' manifests.
"""
    (dest / "README.md").write_text("\n".join(lines) + "\n" + body, encoding="utf-8")


def _record_in_parent(out: Path, target: str) -> Path | None:
    """Add the export's files to the manifest of the environment/bundle directory holding it."""
    for parent in out.parents:
        mf = parent / "manifest.json"
        if not mf.is_file():
            continue
        try:
            manifest = json.loads(mf.read_text(encoding="utf-8"))
        except ValueError:
            return None
        if not isinstance(manifest.get("files"), dict):
            return None
        prefix = out.relative_to(parent).as_posix() + "/"
        files = {k: v for k, v in manifest["files"].items() if not k.startswith(prefix)}
        for p in sorted(out.rglob("*")):
            if p.is_file() and p.name != "manifest.json":  # bundle.verify_manifest skips every manifest.json
                files[p.relative_to(parent).as_posix()] = sha256_file(p)
        manifest["files"] = dict(sorted(files.items()))
        manifest.setdefault("exports", {})[target] = {
            "path": prefix.rstrip("/"), "manifest_sha256": sha256_file(out / "manifest.json")}
        write_json(mf, manifest)
        return mf
    return None


def place(tmp: Path, out: Path, target: str, info: dict) -> Path | None:
    """Write the export manifest into `tmp`, move it to `out` (replacing an earlier export of
    ours there), and record it in an enclosing manifest. Returns that manifest's path, if any."""
    write_manifest(tmp, dict(info, export_format_version=EXPORT_FORMAT_VERSION, target=target))
    if out.exists():
        old = out / "manifest.json"
        ours = False
        if old.is_file():
            try:
                ours = "export_format_version" in json.loads(old.read_text(encoding="utf-8"))
            except ValueError:
                ours = False
        if not ours and any(out.iterdir()):
            raise UsageError(f"{out} exists and is not an envfactory export; choose another --out")
    finalize(tmp, out, force=True)
    return _record_in_parent(out, target)


def new_tmp(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def write_settings(dest: Path, settings: dict) -> None:
    write_json(dest / "export.json", settings)
