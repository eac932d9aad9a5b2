"""Fingerprints for a run of thousands: near-duplicate tasks and environments, and splits.

- An environment's data digest: its seed plus the sorted members of its partition (the
  entity keys it was built from), so two environments over the same entities collide
  whatever their order or names.
- A task's fingerprint: the data digest plus its constraints normalised: names dropped,
  numbers to within 1% (a budget of 218 and one of 218.9 over the same data are the same
  task for training purposes; the ladder's tightening steps are larger), keys and list
  order canonical.
- Splits are by hash, so they never change as a run grows: environment-level (every task
  of an environment in one split) and template-level (a template is the seed plus the
  sorted set of constraint kinds; every task of a template in one split, so a held-out
  split tests unseen task shapes).
"""

from __future__ import annotations

import hashlib
import json
import math

SPLITS = (("train", 0.8), ("val", 0.1), ("test", 0.1))


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def data_digest(seed_name: str, members) -> str:
    return _digest([seed_name, sorted(map(str, members))])


def _round(x):
    """A number's 1% bucket on a log scale (sign kept): 218 and 218.9 fall together, 238 and
    244 (a tightened budget one level up, with an eighth of the plans) do not."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or x == 0 or not math.isfinite(x):
        return x
    return math.copysign(round(math.log(abs(x)) / math.log(1.01)), x)


def _norm(v):
    if isinstance(v, dict):
        return {k: _norm(v[k]) for k in sorted(v)}
    if isinstance(v, (list, tuple)):
        items = [_norm(x) for x in v]
        return sorted(items, key=lambda x: json.dumps(x, sort_keys=True))
    return _round(v)


def normalise_constraints(constraints: list[dict]) -> list:
    """Constraints without their names, numbers to 1% buckets, in a fixed order."""
    return _norm([{"kind": c["kind"], "params": c.get("params", {})} for c in constraints])


def task_fingerprint(data: str, constraints: list[dict]) -> str:
    return _digest([data, normalise_constraints(constraints)])


def template_of(seed_name: str, constraints: list[dict]) -> str:
    return seed_name + ":" + "+".join(sorted({c["kind"] for c in constraints}))


def split_of(key: str) -> str:
    """train / val / test for a key, by its hash (stable as a run grows)."""
    u = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0x100000000
    acc = 0.0
    for name, frac in SPLITS:
        acc += frac
        if u < acc:
            return name
    return SPLITS[-1][0]


def duplicates(keys: dict[str, str]) -> list[list[str]]:
    """Groups (of two or more ids) that share a key, in first-seen order: {id: key} ->
    [[id, id, ...], ...]."""
    groups: dict[str, list[str]] = {}
    for ident, key in keys.items():
        groups.setdefault(key, []).append(ident)
    return [g for g in groups.values() if len(g) > 1]


def run_index(envs: list[dict]) -> dict:
    """From the run's environment summaries (each with `env_id`, `data` digest and per-level
    `tasks` [{task_id, fingerprint, template}]): the duplicate groups and both splits."""
    env_keys = {e["env_id"]: e["data"] for e in envs if e.get("data")}
    task_keys, env_split, tpl_split = {}, {}, {}
    for e in envs:
        s = split_of(e["env_id"])
        for t in e.get("tasks", []):
            task_keys[t["task_id"]] = t["fingerprint"]
            env_split.setdefault(s, []).append(t["task_id"])
            tpl_split.setdefault(split_of(t["template"]), []).append(t["task_id"])
    # within one environment the ladder's levels differ by construction (each has strictly
    # fewer plans, even when a tightened number moves by less than 1%): only groups that
    # span environments are near-duplicates
    owner = {t["task_id"]: e["env_id"] for e in envs for t in e.get("tasks", [])}
    tasks = [g for g in duplicates(task_keys) if len({owner[t] for t in g}) > 1]
    return {"duplicates": {"envs": duplicates(env_keys), "tasks": tasks},
            "splits": {"env": {k: env_split.get(k, []) for k, _ in SPLITS},
                       "template": {k: tpl_split.get(k, []) for k, _ in SPLITS}}}
