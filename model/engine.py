"""Serving engine for one conversation at a time: token ids in, a completion out.

An agent's turns share their history, so the engine keeps the caches of the last sequence
it ran and, for the next prompt, prefills only the tokens after the longest common prefix
(the prefix cache). Prefill is one forward pass over the new tokens at their positions, not
a token per step. Decoding samples one token per step with, in order: the grammar's mask
(`constrain.py`), temperature, top-k, top-p, min-p; greedy at temperature 0. It stops at
EOS, at a stop id or stop string, when the grammar ends, at max_tokens, or at the cache's
end.

`generate_batch` runs several prompts of different lengths together: each row prefilled in
one pass, then one fixed-shape step per token for all rows over paged caches
(`decode.BatchDecoder`, `paged.py`), which on CUDA can be a captured CUDA graph. Requests
that arrive at different times (a server's) are batched continuously by `scheduler.py`,
which shares prefix pages between them; this engine keeps one sequence's caches and serves
one request at a time. On CUDA with `attn_impl="triton"` the model's Triton path runs for
prefill, and the batched step attends through the kernels' split-K decode.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .cache import make_caches
from .tokenizer import Tokenizer
from .transformer import Transformer

if TYPE_CHECKING:  # grammars need llguidance; the engine alone does not
    from .constrain import Constraint


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0          # 0: off
    top_p: float = 1.0
    min_p: float = 0.0      # keep tokens with p >= min_p * p_max
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or not 0 <= self.min_p <= 1 or self.top_k < 0:
            raise ValueError("need temperature >= 0, 0 < top_p <= 1, 0 <= min_p <= 1, top_k >= 0")


@dataclass
class Completion:
    ids: list[int]
    text: str
    finish_reason: str          # "stop" (EOS, stop id/string, grammar end) or "length"
    prompt_tokens: int
    cached_tokens: int          # prompt tokens whose caches were reused
    seconds: dict = field(default_factory=dict)  # prefill, decode


def filter_logits(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """logits [V] (masked tokens at -inf) -> probabilities [V] after temperature, top-k,
    top-p and min-p. Each filter keeps at least the most likely token."""
    probs = torch.softmax(logits.float() / p.temperature, dim=-1)
    if p.top_k and p.top_k < probs.shape[-1]:
        kth = probs.topk(p.top_k).values[-1]
        probs = torch.where(probs >= kth, probs, 0.0)
    if p.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= p.top_p * sorted_p.sum()
        probs = probs.scatter(0, order, sorted_p.masked_fill(drop, 0.0))
    if p.min_p > 0:
        probs = torch.where(probs >= p.min_p * probs.max(), probs, 0.0)
    return probs / probs.sum()


class Engine:
    """One model, one tokenizer, caches for one sequence kept between calls."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, max_len: int | None = None,
                 sparse: bool = True):
        self.model = model.eval()
        self.tok = tokenizer
        self.sparse = sparse
        self.max_len = min(max_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self._caches = None
        self._ids: list[int] = []   # the tokens whose keys are in the caches, in order

    def reset(self) -> None:
        self._ids = []

    def _prefill(self, prompt: list[int]) -> tuple[torch.Tensor, int]:
        """Feed the prompt past the cached common prefix; logits of its last token [V]."""
        if self._caches is None:
            self._caches = make_caches(self.model.cfg, 1, self.max_len, self.dtype, self.device)
        reuse = 0
        for a, b in zip(self._ids, prompt[:-1]):  # at least one token is fed, for its logits
            if a != b:
                break
            reuse += 1
        x = torch.tensor([prompt[reuse:]], device=self.device)
        logits, _ = self.model(x, reuse, self._caches, sparse=self.sparse, last_only=True)
        self._ids = list(prompt)
        return logits[0, -1], reuse

    @torch.no_grad()
    def generate(self, prompt: list[int], params: SamplingParams = SamplingParams(),
                 constraint: Constraint | None = None,
                 on_text: Callable[[str], None] | None = None) -> Completion:
        """Continue `prompt`. on_text gets each new piece of text as soon as no stop string
        can still claim it (for streaming)."""
        if not prompt:
            raise ValueError("the prompt is empty")
        if len(prompt) >= self.max_len:
            raise ValueError(f"prompt of {len(prompt)} tokens leaves no room in a {self.max_len}-token window")
        t0 = time.perf_counter()
        logits, cached = self._prefill(prompt)
        t1 = time.perf_counter()
        rng = torch.Generator(device=self.device).manual_seed(params.seed) if params.seed is not None else None
        row = _Row(self.tok, params, constraint, on_text)
        while True:
            if row.push(_sample(row.mask(logits), params, rng)):
                break
            if len(self._ids) + 1 >= self.max_len:
                break
            step, _ = self.model(torch.tensor([[row.ids[-1]]], device=self.device), len(self._ids), self._caches,
                                 sparse=self.sparse)
            self._ids.append(row.ids[-1])
            logits = step[0, -1]
        return row.completion(len(prompt), cached, {"prefill": t1 - t0, "decode": time.perf_counter() - t1})

    @torch.no_grad()
    def generate_batch(self, prompts: list[list[int]], params: SamplingParams = SamplingParams(),
                       constraints: list[Constraint | None] | None = None,
                       graphs: bool = False) -> list[Completion]:
        """Continue several prompts of any lengths at once: each prefilled in one pass (rows
        of equal length together), then one fixed-shape step per token for all rows
        (`decode.BatchDecoder`); with `graphs` on CUDA that step is a captured CUDA graph.
        Sampling, stops and grammars are per row, as in `generate`; a seed gives one stream
        for the batch. The single-conversation prefix cache is not used (nor disturbed)."""
        from .decode import BatchDecoder

        if not prompts or any(not p for p in prompts):
            raise ValueError("every prompt needs at least one token")
        longest = max(len(p) for p in prompts)
        if longest >= self.max_len:
            raise ValueError(f"prompt of {longest} tokens leaves no room in a {self.max_len}-token window")
        constraints = constraints or [None] * len(prompts)
        if len(constraints) != len(prompts):
            raise ValueError("one constraint (or None) per prompt")
        t0 = time.perf_counter()
        dec = BatchDecoder(self.model, len(prompts), min(self.max_len, longest + params.max_tokens + 1),
                           self.sparse)
        logits = dec.prefill(prompts)
        t1 = time.perf_counter()
        if graphs and self.device.type == "cuda":
            dec.capture()
        rng = torch.Generator(device=self.device).manual_seed(params.seed) if params.seed is not None else None
        rows = [_Row(self.tok, params, c, None) for c in constraints]
        pos = [len(p) for p in prompts]  # where each row's next token goes
        while True:
            if params.temperature == 0 and all(r.constraint is None for r in rows):
                picks = logits.argmax(-1).tolist()  # one host sync for the batch
            else:
                picks = [_sample(r.mask(logits[b]), params, rng) if not r.done else 0 for b, r in enumerate(rows)]
            for b, r in enumerate(rows):
                if not r.done and r.push(picks[b]):
                    r.done = True
            live = [b for b, r in enumerate(rows) if not r.done]
            if not live or max(pos[b] for b in live) + 1 >= dec.max_len:
                break
            tokens = torch.tensor([r.ids[-1] if r.ids else 0 for r in rows], device=self.device)
            logits = dec.step(tokens, torch.tensor(pos, device=self.device))
            for b in live:
                pos[b] += 1
        spent = {"prefill": t1 - t0, "decode": time.perf_counter() - t1}
        return [r.completion(len(p), 0, spent) for r, p in zip(rows, prompts)]


def _sample(logits: torch.Tensor, params: SamplingParams, rng) -> int:
    if params.temperature == 0:
        return int(logits.argmax())
    return int(torch.multinomial(filter_logits(logits, params), 1, generator=rng))


class _Row:
    """One sequence's output: the grammar, stop ids and strings, streaming, finish reason."""

    def __init__(self, tok: Tokenizer, params: SamplingParams, constraint: Constraint | None, on_text):
        self.tok, self.params, self.constraint, self.on_text = tok, params, constraint, on_text
        self.stops = {tok.eos_id, *params.stop_ids}
        self.ids: list[int] = []
        self.text, self.sent, self.reason, self.done = "", 0, "length", False

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        if self.constraint is None:
            return logits
        allowed = self.constraint.allowed().to(logits.device)
        return logits[: allowed.shape[0]].masked_fill(~allowed, float("-inf"))

    def push(self, nxt: int) -> bool:
        """Take the sampled token; True when the sequence is finished."""
        p = self.params
        if self.constraint is not None:
            self.constraint.advance(nxt)
        self.ids.append(nxt)
        if nxt in self.stops:
            self.reason = "stop"
            return True
        self.text = self.tok.decode(self.ids)
        cut = _first_stop(self.text, p.stop)
        if cut is not None:
            self.text, self.reason = self.text[:cut], "stop"
            return True
        if self.on_text is not None:
            safe = len(self.text) - _held_back(self.text, p.stop)
            if safe > self.sent:
                self.on_text(self.text[self.sent:safe])
                self.sent = safe
        if self.constraint is not None and self.constraint.done:
            self.reason = "stop"
            return True
        return len(self.ids) >= p.max_tokens

    def completion(self, prompt_tokens: int, cached: int, seconds: dict) -> Completion:
        if self.ids and self.ids[-1] in self.stops:
            self.text = self.tok.decode(self.ids[:-1])
        if self.on_text is not None and len(self.text) > self.sent:
            self.on_text(self.text[self.sent:])
        return Completion(self.ids, self.text, self.reason, prompt_tokens, cached, seconds)


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters might still become a stop string (or are half of a
    UTF-8 character), so are not streamed yet."""
    n = 1 if text.endswith("\ufffd") else 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                n = max(n, k)
                break
    return n
