"""Continuous batching: many requests share one fixed-shape decode step over one page pool.

`Scheduler(model, tokenizer, slots=8)` runs a loop on its own thread. A request (`submit`,
or the blocking `generate`, which has `Engine.generate`'s signature) waits until a slot is
free and the pool has pages for its prompt plus max_tokens; then it takes the longest run
of cached prefix pages its prompt begins with (an agent's next turn, or another request
with the same system prompt and tools, finished or still running), prefills only the rest
into fresh pages, publishes its prompt's full pages as prefix entries, and joins the
batch. Every loop turn is one `BatchDecoder.step` for all slots (a CUDA graph with
`graphs=True` on CUDA); each row samples with its own parameters, grammar and seeded
generator, so a request's completion does not depend on what else runs beside it. A
finished request leaves at once: its full pages become prefix-cache entries and its slot
points back at the scratch page, so the next waiting request can take it in the same turn.

Requests are admitted in arrival order. A request whose pages the pool could never hold
fails at once (`PoolFull`); one that fails later (a grammar error) fails alone, and an
error in the step fails the rows that were in it, not the scheduler. Prefill runs between
steps, one request at a time (no chunked prefill): a long prompt stalls the batch for its
prefill.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .decode import BatchDecoder
from .engine import Completion, SamplingParams, _Row, _sample
from .paged import PagePool, PoolFull
from .tokenizer import Tokenizer
from .transformer import Transformer

if TYPE_CHECKING:
    from .constrain import Constraint

__all__ = ["Scheduler"]


@dataclass
class _Request:
    prompt: list[int]
    params: SamplingParams
    constraint: Constraint | None
    on_text: Callable[[str], None] | None
    need: int  # pages for the prompt plus max_tokens
    future: Future = field(default_factory=Future)
    cancelled: bool = False
    # set on admission
    slot: int = -1
    pages: list[int] = field(default_factory=list)
    cached: int = 0
    pos: int = 0  # where the next token goes
    row: _Row | None = None
    rng: torch.Generator | None = None
    t0: float = 0.0
    t1: float = 0.0


class Scheduler:
    """`slots` sequences decoded together; `pool_pages` pages of `page` tokens (default:
    room for every slot's full window and one more window of prefix entries)."""

    concurrent = True  # ModelServer: requests need no lock

    def __init__(self, model: Transformer, tokenizer: Tokenizer, slots: int = 8, max_len: int | None = None,
                 page: int = 16, pool_pages: int | None = None, sparse: bool = True, graphs: bool = False):
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.model, self.tok = model.eval(), tokenizer
        self.max_len = min(max_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
        p = next(model.parameters())
        page = min(page, self.max_len)
        per_slot = -(-self.max_len // page)
        self.pool = PagePool(model.cfg, pool_pages or (slots + 1) * per_slot + 1, page, p.dtype, p.device)
        self.dec = BatchDecoder(model, slots, self.max_len, sparse, pool=self.pool)
        if graphs and p.device.type == "cuda":
            self.dec.capture()
        self.device = p.device
        self._slots: list[_Request | None] = [None] * slots
        self._waiting: deque[_Request] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self.steps = 0
        self.busy_rows = 0  # sum over steps of the rows that were decoding
        self._thread = threading.Thread(target=self._loop, name="model-scheduler", daemon=True)
        self._thread.start()

    # -------------------------------------------------------------------------- interface

    def submit(self, prompt: list[int], params: SamplingParams = SamplingParams(),
               constraint: Constraint | None = None,
               on_text: Callable[[str], None] | None = None) -> Future:
        """Queue a request; the future's result is its `Completion`. on_text is called from
        the scheduler's thread: it should only hand the text on (a queue), not block."""
        if not prompt:
            raise ValueError("the prompt is empty")
        if len(prompt) >= self.max_len:
            raise ValueError(f"prompt of {len(prompt)} tokens leaves no room in a {self.max_len}-token window")
        need = self.pool.pages_for(min(len(prompt) + params.max_tokens, self.max_len))
        if need > self.pool.n_pages - 1:
            raise PoolFull(f"a request of {need} pages can never fit a pool of {self.pool.n_pages - 1}")
        req = _Request(list(prompt), params, constraint, on_text, need)
        with self._cv:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self._waiting.append(req)
            self._cv.notify()
        return req.future

    def generate(self, prompt: list[int], params: SamplingParams = SamplingParams(),
                 constraint: Constraint | None = None,
                 on_text: Callable[[str], None] | None = None) -> Completion:
        return self.submit(prompt, params, constraint, on_text).result()

    def cancel(self, future: Future) -> None:
        """Stop a request (a client that went away): it leaves at the next step."""
        with self._cv:
            for r in [*self._waiting, *self._slots]:
                if r is not None and r.future is future:
                    r.cancelled = True

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------------------- loop

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._closed and not self._waiting and not any(self._slots):
                    self._cv.wait()
                if self._closed:
                    for r in [*self._waiting, *self._slots]:
                        if r is not None and not r.future.done():
                            r.future.set_exception(RuntimeError("the scheduler was closed"))
                    return
            self._admit()
            if any(self._slots):
                self._step()

    def _admit(self) -> None:
        while True:
            with self._cv:
                free = [b for b, r in enumerate(self._slots) if r is None]
                if not free or not self._waiting:
                    return
                req = self._waiting[0]
                if req.cancelled:
                    self._waiting.popleft()
                    req.future.set_exception(RuntimeError("cancelled"))
                    continue
                shared = self.pool.match(req.prompt)
                if req.need - len(shared) > self.pool.available:
                    self.pool.release(shared)
                    return  # wait for running requests to give pages back
                self._waiting.popleft()
                req.slot, req.pages = free[0], shared + self.pool.alloc(req.need - len(shared))
                req.cached = len(shared) * self.pool.page
                self._slots[req.slot] = req
            try:
                req.t0 = time.perf_counter()
                self.dec.assign(req.slot, req.pages)
                logits = self.dec.prefill_row(req.slot, req.prompt, req.cached)
                with self._cv:  # requests admitted after this one can share its prompt's pages
                    self.pool.publish(req.pages, req.prompt)
                req.t1 = time.perf_counter()
                req.row = _Row(self.tok, req.params, req.constraint, req.on_text)
                if req.params.seed is not None:
                    req.rng = torch.Generator(device=self.device).manual_seed(req.params.seed)
                req.pos = len(req.prompt)
                self._push(req, _sample(req.row.mask(logits), req.params, req.rng))
            except Exception as e:  # noqa: BLE001 - this request fails, the others go on
                self._finish(req, e)

    def _step(self) -> None:
        live = [r for r in self._slots if r is not None]
        # a captured graph steps every slot (idle ones on the scratch page); eagerly only
        # the live rows are computed
        rows = list(range(len(self._slots))) if self.dec.captured else [r.slot for r in live]
        at = {b: i for i, b in enumerate(rows)}  # slot -> its row of the logits
        tokens = torch.zeros(len(rows), dtype=torch.long)
        pos = torch.zeros(len(rows), dtype=torch.long)
        for r in live:
            tokens[at[r.slot]], pos[at[r.slot]] = r.row.ids[-1], r.pos
        try:
            logits = self.dec.step(tokens.to(self.device), pos.to(self.device), rows)
        except Exception as e:  # noqa: BLE001
            for r in live:
                self._finish(r, e)
            return
        self.steps += 1
        self.busy_rows += len(live)
        greedy = [r for r in live if r.params.temperature == 0 and r.constraint is None]
        picks = dict(zip((r.slot for r in greedy), logits[[at[r.slot] for r in greedy]].argmax(-1).tolist())) \
            if greedy else {}
        for r in live:
            r.pos += 1
            try:
                nxt = picks[r.slot] if r.slot in picks else _sample(r.row.mask(logits[at[r.slot]]), r.params, r.rng)
                self._push(r, nxt)
            except Exception as e:  # noqa: BLE001
                self._finish(r, e)

    def _push(self, r: _Request, token: int) -> None:
        """Take a sampled token; the request leaves when it is done or out of room."""
        if r.row.push(token) or r.cancelled or r.pos + 1 >= self.max_len:
            self._finish(r)

    def _finish(self, r: _Request, error: Exception | None = None) -> None:
        with self._cv:
            if r.slot >= 0 and self._slots[r.slot] is r:
                self._slots[r.slot] = None
                self.dec.assign(r.slot, [])
                # positions < pos hold keys: the prompt and every fed token
                self.pool.release(r.pages, None if error else (r.prompt + r.row.ids)[: r.pos])
                r.slot = -1
        if r.future.done():
            return
        if error is not None:
            r.future.set_exception(error)
        elif r.cancelled:
            r.future.set_exception(RuntimeError("cancelled"))
        else:
            end = time.perf_counter()
            r.future.set_result(r.row.completion(len(r.prompt), r.cached,
                                                 {"prefill": r.t1 - r.t0, "decode": end - r.t1}))
