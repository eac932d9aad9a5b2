"""Serving agent traffic: C clients hold multi-turn conversations at once, as the factory's
workers do with `--agent dsa`; the single-sequence engine (requests one at a time, the
prefix cache of the last sequence only) against the continuous-batching scheduler (C slots,
the page pool's prefix entries).

    python benchmarks/dsa_serving.py [--clients 1,4,16] [--turns 4] [--device cuda] [--json FILE]

Each client opens with a system prompt of --system tokens (the same for every client: the
tools and rules of one seed) and a first user message of --user tokens; every next turn
appends the model's reply and a new user message of --user tokens. Replies are greedy,
--reply tokens at most (EOS ends one early). Tokens are random ids of the shipped
tokenizer, so the text means nothing; the work is what an agent's turn costs.

Columns per (clients, backend): wall seconds for all turns of all clients, generated
tokens/s, prompt tokens prefilled (the rest came from a cache) and the scheduler's mean
rows per step. Correctness first: for one client, both backends must give the same
replies (greedy, fp32 on CPU; on CUDA bf16 they may drift, and the check is skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from envfactory.model.checkpoint import load_pretrained  # noqa: E402
from envfactory.model.engine import Engine, SamplingParams  # noqa: E402
from envfactory.model.scheduler import Scheduler  # noqa: E402

AGENT = Path(__file__).resolve().parent.parent / "model" / "checkpoints" / "agent"


def conversations(n: int, turns: int, system: int, user: int, vocab: int, seed: int):
    rng = random.Random(seed)
    sys_ids = [rng.randrange(8, vocab) for _ in range(system)]
    return [(sys_ids, [[rng.randrange(8, vocab) for _ in range(user)] for _ in range(turns)]) for _ in range(n)]


def run(backend, convs, params: SamplingParams):
    """-> (seconds, generated tokens, prefilled prompt tokens, replies per client)."""
    lock = threading.Lock()
    stats = {"gen": 0, "prefilled": 0}
    replies = [[] for _ in convs]

    def client(i):
        sys_ids, users = convs[i]
        prompt = list(sys_ids)
        for u in users:
            prompt = prompt + u
            c = backend.generate(prompt, params)
            replies[i].append(c.ids)
            with lock:
                stats["gen"] += len(c.ids)
                stats["prefilled"] += c.prompt_tokens - c.cached_tokens
            prompt = prompt + [t for t in c.ids if t != backend.tok.eos_id]

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(convs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, stats["gen"], stats["prefilled"], replies


class Serial:
    """The engine behind a lock, as `ModelServer` runs it with --slots 0."""

    def __init__(self, engine: Engine):
        self.engine, self.tok, self._lock = engine, engine.tok, threading.Lock()

    def generate(self, prompt, params):
        with self._lock:
            return self.engine.generate(prompt, params)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--system", type=int, default=1200)
    ap.add_argument("--user", type=int, default=150)
    ap.add_argument("--reply", type=int, default=48)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--graphs", action="store_true", help="capture the scheduler's step (CUDA)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    model, tok = load_pretrained(AGENT, a.device, dtype)
    params = SamplingParams(max_tokens=a.reply, temperature=0)
    window = a.system + a.turns * (a.user + a.reply) + 8
    clients = [int(c) for c in a.clients.split(",")]

    # correctness: one client, both backends, same replies (fp32)
    if a.device == "cpu":
        convs = conversations(1, 2, a.system, a.user, tok.vocab_size, 0)
        want = run(Serial(Engine(model, tok, window)), convs, params)[3]
        with Scheduler(model, tok, 1, window) as sch:
            got = run(sch, convs, params)[3]
        if got != want:
            print("FAIL: the scheduler's replies differ from the engine's", file=sys.stderr)
            return 1
        print("check: scheduler replies == engine replies (1 client, 2 turns)")

    rows = []
    print(f"{'clients':>7} {'backend':>10} {'seconds':>8} {'gen tok/s':>10} {'prefilled':>10} "
          f"{'rows/step':>9} {'speed-up':>8}")
    for n in clients:
        convs = conversations(n, a.turns, a.system, a.user, tok.vocab_size, n)
        base = None
        for name in ("engine", "scheduler"):
            if name == "engine":
                backend = Serial(Engine(model, tok, window))
                dt, gen, pre, _ = run(backend, convs, params)
                per_step = 1.0
            else:
                with Scheduler(model, tok, n, window, graphs=a.graphs) as backend:
                    dt, gen, pre, _ = run(backend, convs, params)
                    per_step = backend.busy_rows / max(1, backend.steps)
            base = base or dt
            r = dict(clients=n, backend=name, seconds=round(dt, 2), gen_tok_s=round(gen / dt, 1),
                     prefilled=pre, rows_per_step=round(per_step, 2), speedup=round(base / dt, 2))
            rows.append(r)
            print(f"{n:>7} {name:>10} {dt:>8.2f} {gen / dt:>10.1f} {pre:>10} {per_step:>9.2f} {base / dt:>7.2f}x",
                  flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"device": a.device, "args": vars(a), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
