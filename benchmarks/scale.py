"""A run of many environments, generated and validated, on the local pool and on Ray side by
side (issue 17): wall time, environments per minute, peak memory of the whole process tree
(every descendant's RSS summed, sampled twice a second; Ray's own daemons included), the
driver's RSS at each quarter of the run (flat = the run does not grow in memory), and
whether the two runs wrote identical tasks, verifiers and tools.

    .venv/bin/python benchmarks/scale.py [--envs 2000] [--seed 7] [--workers 2]
                                         [--executors local,ray] [--out DIR] [--no-validate]
                                         [--save-rows DIR] [--with ROW.json ...]

The seed is the built-in trip_planning with its region cities' `min_population` lowered to
`--min-population` (default 50,000: 2,628 regions of distinct cities; the built-in 80,000 has
1,643; before the partition deduplicated member sets, 2,730 and 1,702),
written next to the runs, so that 2,000 environments exist without repeating an origin.

On the 2-core machine 2,000 environments take one to two hours per executor; `--envs 100`
gives the same table in a few minutes. `--save-rows DIR` writes each executor's row as
`DIR/scale_<envs>_<executor>.json` (with the commit it ran at); `--with` puts rows saved by an
earlier invocation into the table, so the two halves of a long comparison can run apart (rows
with other settings are refused; a row from another commit is named, and the digests tell
whether the outputs still agree).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree_rss(root: int) -> tuple[int, int]:
    """(RSS of `root`, RSS of root and all its descendants), bytes, from /proc."""
    parent, rss = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            with open(f"/proc/{d}/statm") as f:
                pages = int(f.read().split()[1])
        except OSError:
            continue
        parent[int(d)] = int(stat[stat.rfind(")") + 2:].split()[1])
        rss[int(d)] = pages * PAGE
    tree, frontier = {root}, [root]
    children: dict[int, list[int]] = {}
    for p, pp in parent.items():
        children.setdefault(pp, []).append(p)
    while frontier:
        for c in children.get(frontier.pop(), []):
            if c not in tree:
                tree.add(c)
                frontier.append(c)
    return rss.get(root, 0), sum(rss.get(p, 0) for p in tree)


class Sampler:
    """Samples a process tree's memory twice a second while a command runs."""

    def __init__(self, pid: int, run: Path, total: int):
        self.pid, self.run, self.total = pid, run, total
        self.peak = 0
        self.driver_at: dict[int, int] = {}  # quarter of the run -> driver RSS then
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _done(self) -> int:
        try:
            return (self.run / "journal.jsonl").read_text().count('"status": "ok"')
        except OSError:
            return 0

    def _loop(self):
        while not self._stop.wait(0.5):
            driver, tree = _tree_rss(self.pid)
            self.peak = max(self.peak, tree)
            q = min(4, 4 * self._done() // max(1, self.total))
            if q and q not in self.driver_at:
                self.driver_at[q] = driver

    def stop(self):
        self._stop.set()
        self._t.join()


def _timed(cmd: list[str], run: Path, total: int) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(proc.pid, run, total)
    _, err = proc.communicate()
    sampler.stop()
    if proc.returncode != 0:
        sys.exit(f"scale: {' '.join(cmd[2:5])} failed ({proc.returncode}): {err.strip()[-800:]}")
    return {"wall": time.perf_counter() - t0, "peak": sampler.peak, "driver_at": sampler.driver_at,
            "stderr": err}


def _digest(run: Path) -> tuple[str, int]:
    """A digest of every file under each environment's tasks/, verifiers/ and tools/."""
    h, n = hashlib.sha256(), 0
    for env in sorted(p for p in run.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for part in ("tasks", "verifiers", "tools"):
            for f in sorted((env / part).rglob("*")):
                if f.is_file():
                    h.update(str(f.relative_to(run)).encode() + b"\0" + f.read_bytes())
                    n += 1
    return h.hexdigest()[:16], n


def _seed_file(base: Path, min_population: int) -> Path:
    """The built-in trip_planning seed with another population floor for its region cities."""
    from envfactory.factory.seed import resolve_seed

    text = resolve_seed("trip_planning").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("min_population"))
    out = base / f"trip_planning_pop{min_population}.toml"
    out.write_text(text.replace(line, f"min_population = {min_population}", 1))
    return out


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _load_row(path: str, settings: dict, commit: str) -> dict:
    try:
        row = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"scale: cannot read the saved row {path}: {e}")
    if row.get("settings") != settings:
        sys.exit(f"scale: {path} was run with {row.get('settings')}, not {settings}")
    if row.get("commit") != commit:
        print(f"note: {path} ran at commit {row.get('commit')}, this run at {commit} (the digests say whether "
              "the outputs still agree)", flush=True)
    for part in ("gen", "val"):  # JSON made the quarters' keys strings
        if part in row:
            row[part]["driver_at"] = {int(q): v for q, v in row[part].get("driver_at", {}).items()}
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--envs", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--executors", default="local,ray")
    ap.add_argument("--out", default=None, help="keep the runs here (default: a temporary directory)")
    ap.add_argument("--no-validate", action="store_true")
    ap.add_argument("--min-population", type=int, default=50_000,
                    help="region cities' population floor (the built-in seed has 80,000)")
    ap.add_argument("--save-rows", default=None, help="write each executor's row as JSON into this directory")
    ap.add_argument("--with", dest="with_rows", nargs="*", default=[], help="rows saved by an earlier run")
    a = ap.parse_args()
    commit = _commit()
    settings = {"envs": a.envs, "seed": a.seed, "workers": a.workers, "validate": not a.no_validate,
                "min_population": a.min_population}
    base = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix="scale-"))
    base.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m", "envfactory.factory.cli"]
    seed_file = _seed_file(base, a.min_population)
    rows = [_load_row(f, settings, commit) for f in a.with_rows]
    for ex in [e for e in a.executors.split(",") if e]:
        run = base / ex
        gen = _timed(py + ["generate", str(seed_file), "--envs", str(a.envs), "--seed", str(a.seed), "--workers",
                           str(a.workers), "--out", str(run), "--executor", ex, "--force"], run, a.envs)
        row = {"executor": ex, "gen": gen}
        if not a.no_validate:
            # each half validates on its own executor (the rows of 2026-12-07 both validated
            # on the local pool: `val_executor` absent)
            val = _timed(py + ["validate", str(run), "--backend", "local", "--workers", str(a.workers), "--quiet",
                               "--executor", ex], run, a.envs)
            row["val_executor"] = ex
            rep = json.loads((run / "validation.json").read_text())
            row["val"] = val
            row["valid"] = f"{'ok' if rep.get('ok') else 'FAILED'}, {rep.get('verifier_calls', 0)} verifier calls"
        row["digest"], row["files"] = _digest(run)
        batch = json.loads((run / "batch.json").read_text())
        row["dups"] = batch["duplicates"]["n_envs"], batch["duplicates"]["n_tasks"]
        row["phases"] = batch.get("phase_seconds", {})
        rows.append(row)
        if a.save_rows:
            out = Path(a.save_rows) / f"scale_{a.envs}_{ex}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(row | {"settings": settings, "commit": commit,
                                             "date": time.strftime("%Y-%m-%d %H:%M")}, indent=1, default=str))
        print(f"{ex}: generated in {gen['wall']:.0f} s" + (f", validated in {row['val']['wall']:.0f} s"
                                                           if "val" in row else ""), flush=True)
    print(f"\n{a.envs} trip_planning environments (region cities of {a.min_population:,}+ people), run seed {a.seed}, {a.workers} workers, {os.cpu_count()} cores; "
          f"runs in {base}\n")
    print("| executor | generate s | envs/min | peak MB (tree) | driver MB at 25/50/75/100% | validate s | "
          "validation | duplicate envs/tasks | output digest (files) | vs local |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ref = next((r for r in rows if r["executor"] == "local"), rows[0])  # the ratios are against the local pool
    for r in rows:
        g = r["gen"]
        drv = "/".join(f"{g['driver_at'].get(q, 0) / 2**20:.0f}" for q in (1, 2, 3, 4))
        val = f"{r['val']['wall']:.0f}" if "val" in r else "-"
        summ = r.get("valid", "-")
        same = "identical" if r["digest"] == ref["digest"] else "DIFFERENT"
        ratio = g["wall"] / ref["gen"]["wall"]
        print(f"| {r['executor']} | {g['wall']:.0f} | {a.envs / g['wall'] * 60:.1f} | {g['peak'] / 2**20:.0f} | {drv} | "
              f"{val} | {summ} | {r['dups'][0]}/{r['dups'][1]} | {r['digest']} ({r['files']}) | "
              f"{ratio:.2f}x time, {same} |")
    phases = ref["phases"]
    if phases:
        tot = sum(phases.values()) or 1.0
        print("\nwhere the time went (local, worker seconds): " + ", ".join(
            f"{k} {v:.0f} s ({100 * v / tot:.0f}%)" for k, v in sorted(phases.items(), key=lambda kv: -kv[1])))
    if any(r["digest"] != ref["digest"] for r in rows) or any("FAILED" in r.get("valid", "") for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
