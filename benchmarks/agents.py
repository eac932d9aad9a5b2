"""Agents side by side on the same seeds: the specialist, the distilled DSA model (`dsa`), or
any OpenAI-compatible server. For each seed and agent, one `factory generate` run (same run
seed, so the same regions); one table row each:

- decisions: model requests; well-formed: the share that was JSON meeting the decision's
  schema (under constrained decoding this should be 100%);
- proposals and accepted: what the agent proposed (moves, data choices, tools) and the share
  the ladder, the data check or the tool sandbox accepted;
- envs: environments built of those asked for (a run that falls short still reports);
- levels reached: over every region the run tried (built, or given up on after level N:
  N + 1 levels), mean and best; levels/built env; plans Lk/L0: the median over environments of
  level k's plan count as a share of level 0's (the ladder's narrowing);
- envs/min over the whole run, everything included.

    .venv/bin/python benchmarks/agents.py [--seed-file car_fleet film_programme flight_itinerary]
        [--agents specialist dsa] [--envs 3] [--workers 2] [--seed 7] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time

from envfactory.factory.agents.base import AgentSpec
from envfactory.factory.generate import GenerateError, generate

HELD_OUT = ["car_fleet", "film_programme", "flight_itinerary"]  # seeds the shipped agent never saw


def run(seed_file: str, agent: str, envs: int, workers: int, seed: int, base_url: str | None) -> dict:
    spec = AgentSpec(kind=agent, base_url=base_url if agent == "openai" else None)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        try:
            res = generate(seed_file, envs, out, seed, workers, agent=spec)
            built, totals, failed, note = res.envs, res.agent, res.failed, ""
        except GenerateError as e:
            built, totals, failed, note = e.envs, e.agent, e.failed, str(e)[:160]
        wall = time.perf_counter() - t0
    top = max((len(e.counts) for e in built), default=0)
    shares = []
    for k in range(1, top):
        vals = [e.counts[k] / e.counts[0] for e in built if len(e.counts) > k and e.counts[0]]
        shares.append(statistics.median(vals) if vals else None)
    # levels reached by every region tried, built or given up on ("after level N": N + 1)
    reached = [e.levels for e in built] + [_reached(why) for _, why in failed]
    requests = totals.get("requests", 0)
    proposals = totals.get("proposals", 0)
    return {"seed": seed_file, "agent": agent, "asked": envs, "built": len(built), "wall": wall,
            "per_min": len(built) / wall * 60, "tried": len(reached),
            "reached": statistics.mean(reached) if reached else 0, "best": max(reached, default=0), "levels": statistics.mean(e.levels for e in built) if built else 0,
            "shares": shares, "requests": requests, "malformed": totals.get("malformed", 0),
            "proposals": proposals, "rejected": totals.get("rejected", 0),
            "fallbacks": totals.get("fallbacks", 0), "note": note}


def _reached(reason: str) -> int:
    m = re.search(r"after level (\d+)", reason)
    return int(m[1]) + 1 if m else 0


def _pct(x) -> str:
    return "—" if x is None else f"{x:.0%}" if x >= 0.1 else f"{x:.1%}"


def row(r: dict) -> str:
    model = r["agent"] != "specialist"
    formed = _pct(1 - r["malformed"] / r["requests"]) if model and r["requests"] else "—"
    accepted = _pct(1 - r["rejected"] / r["proposals"]) if model and r["proposals"] else "—"
    shares = " / ".join(_pct(s) for s in r["shares"]) or "—"
    return (f"| {r['seed']} | {r['agent']} | {r['built']}/{r['asked']} | {r['requests'] if model else '—'} | "
            f"{formed} | {r['proposals'] if model else '—'} | {accepted} | {r['reached']:.1f} ({r['best']}) of "
            f"{r['tried']} | {r['levels']:.1f} | {shares} | "
            f"{r['per_min']:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed-file", nargs="*", default=HELD_OUT)
    ap.add_argument("--agents", nargs="*", default=["specialist", "dsa"])
    ap.add_argument("--envs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--base-url", default=None, help="for --agents openai")
    ap.add_argument("--json", default=None, help="also write every row here")
    a = ap.parse_args()
    print(f"{a.envs} environments per seed and agent, {a.workers} workers, {os.cpu_count()} cores, "
          f"run seed {a.seed}\n")
    print("| seed | agent | envs | decisions | well-formed | proposals | accepted | levels reached, mean (best) "
          "of regions tried | levels/built env | "
          "plans L1..Ltop / L0 (median) | envs/min |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for s in a.seed_file:
        for agent in a.agents:
            r = run(s, agent, a.envs, a.workers, a.seed, a.base_url)
            rows.append(r)
            print(row(r), flush=True)
    for r in rows:
        if r["note"]:
            print(f"\n{r['seed']} / {r['agent']}: {r['note']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
