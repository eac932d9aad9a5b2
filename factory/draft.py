"""`factory seed draft "DESCRIPTION"`: a model drafts a seed file from a free-text task type
and the data catalog, and the seed checker gates it.

The model sees the description, the catalog (every data source the built-in seeds declare,
as TOML it may copy: packaged files and datasets with their columns; plus any `--data`
files the user names, with their columns and a few rows), one whole built-in seed as the
format, and the field reference of `docs/seeds.md`. It answers {"toml": "..."}; the text
is written beside the output and loaded with the full checker (`load_seed`: fields,
columns, links, reachability, countable shapes, the data itself). A seed that fails goes
back with the checker's one line (`file:line: field: reason`), a bounded number of times.
Only a seed that loads is written to the output path (atomically).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

__all__ = ["draft_seed", "DraftError", "catalog_text"]

DOC = Path(__file__).resolve().parents[1] / "docs" / "seeds.md"
EXAMPLE = "film_programme"


class DraftError(RuntimeError):
    pass


def _source_blocks(text: str) -> list[str]:
    """The [[sources]] blocks of a seed file, as written."""
    out, cur = [], None
    for line in text.splitlines():
        if line.strip().startswith("[[sources]]"):
            if cur:
                out.append("\n".join(cur).strip())
            cur = [line]
        elif line.strip().startswith("[") and cur is not None:
            out.append("\n".join(cur).strip())
            cur = None
        elif cur is not None:
            cur.append(line)
    if cur:
        out.append("\n".join(cur).strip())
    return out


def catalog_text(data_files: list[Path] | None = None, seed_dir: Path | None = None) -> str:
    """Every data source the built-in seeds declare (file and package sources; synthetic web
    listings are left out), and the user's own files with their columns."""
    from envfactory.factory.seed import builtin_seeds

    seen, parts = set(), []
    for name, path in sorted(builtin_seeds().items()):
        for block in _source_blocks(path.read_text(encoding="utf-8")):
            if "synthetic = true" in block:
                continue
            table = re.search(r'table = "([^"]+)"', block)
            key = (table[1] if table else block)
            if key in seen:
                continue
            seen.add(key)
            parts.append(f"# from the built-in seed {name}\n{block}")
    for f in data_files or []:
        parts.append(_describe_file(Path(f), seed_dir))
    return "\n\n".join(parts)


def _describe_file(path: Path, seed_dir: Path | None) -> str:
    import duckdb

    con = duckdb.connect()
    try:
        rel = con.sql(f"SELECT * FROM '{str(path).replace(chr(39), chr(39) * 2)}' LIMIT 3")
        cols = [f"{c} {t}" for c, t in zip(rel.columns, rel.types)]
        rows = rel.fetchall()
    except duckdb.Error as e:
        raise DraftError(f"{path}: cannot read it as a table: {e}") from None
    finally:
        con.close()
    rel = os.path.relpath(path.resolve(), (seed_dir or Path.cwd()).resolve())
    return (f"# the user's file {path.name} (declare it with kind = \"file\", path = \"{rel}\")\n"
            f"# columns: {', '.join(cols)}\n# first rows: {rows}")


def _field_reference() -> str:
    text = DOC.read_text(encoding="utf-8") if DOC.is_file() else ""
    m = re.search(r"(\| section \| field.*?)\n\n", text, flags=re.S)
    return m[1] if m else ""


def draft_seed(description: str, out: str | Path, spec, data_files: list[Path] | None = None,
               attempts: int = 4) -> tuple[Path, int, list[str]]:
    """Draft, check and write a seed. Returns (path, replies used, the checker's complaints)."""
    from envfactory.factory.agents.chat import ChatClient, ChatConfig, ChatError, Conversation, decide
    from envfactory.factory.seed import SeedError, builtin_seeds, load_seed

    out = Path(out)
    if out.exists():
        raise DraftError(f"{out} exists; choose another path or remove it")
    if not description.strip():
        raise DraftError("the description is empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    example = builtin_seeds()[EXAMPLE].read_text(encoding="utf-8")
    conv = Conversation().system(
        "You write task-type seed files (TOML) for an environment factory. Answer with JSON only: "
        '{"toml": "<the whole seed file>"}.').user(
        f"Task type to write a seed for:\n{description.strip()}\n\n"
        f"Data you may use (copy a source block as it is, or declare the user's files):\n{catalog_text(data_files, out.parent)}\n\n"
        f"The seed format, field by field:\n{_field_reference()}\n\n"
        f"A complete seed, for its format:\n```toml\n{example}```\n\n"
        "Write the seed: a [seed] table (name, description, answer_intro), a [partition], the [[sources]] it "
        "needs, a [plan] with its [[plan.slots]], [[tools]] that list every slot's candidates, and a [ladder] "
        "whose base and pool entries name real slots and columns.")
    trial = out.with_name(f".{out.name}.draft{os.getpid()}")
    complaints: list[str] = []

    def check(value) -> str | None:
        text = str(value["toml"])
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            return f"not valid TOML: {e}"
        trial.write_text(text, encoding="utf-8")
        try:
            load_seed(trial)
        except SeedError as e:
            msg = str(e).replace(str(trial), out.name)
            complaints.append(msg)
            return f"the seed checker refused it: {msg}"
        return None

    schema = {"type": "object", "required": ["toml"], "additionalProperties": False,
              "properties": {"toml": {"type": "string", "minLength": 20}}}
    client = ChatClient(ChatConfig(spec.base_url, spec.model, spec.api_key,
                                   **({"max_tokens": 4096} | dict(spec.options))))
    try:
        d = decide(client, conv, schema, check, attempts=attempts, name="seed")
    except ChatError as e:
        raise DraftError(f"model server: {e}") from None
    finally:
        client.close()
    try:
        if d.value is None:
            last = d.errors[-1] if d.errors else "no reply"
            raise DraftError(f"the model drafted no seed that passes the checker in {attempts} replies; last: {last}")
        os.replace(trial, out)  # the checked text, in place at once
    finally:
        trial.unlink(missing_ok=True)
    return out, d.attempts, complaints
