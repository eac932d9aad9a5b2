"""Serving engine for one conversation at a time: token ids in, a completion out.

An agent's turns share their history, so the engine keeps the caches of the last sequence
it ran and, for the next prompt, prefills only the tokens after the longest common prefix
(the prefix cache). Prefill is one forward pass over the new tokens at their positions, not
a token per step. Decoding samples one token per step with, in order: the grammar's mask
(`constrain.py`), temperature, top-k, top-p, min-p; greedy at temperature 0. It stops at
EOS, at a stop id or stop string, when the grammar ends, at max_tokens, or at the cache's
end.

What it does not do yet: batch several conversations (the server
serialises requests), page the caches, or capture CUDA graphs. On CUDA the model's Triton
path runs when its config says `attn_impl="triton"`; on CPU the PyTorch path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .cache import make_caches
from .constrain import Constraint
from .tokenizer import Tokenizer
from .transformer import Transformer


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
        logits, _ = self.model(x, reuse, self._caches, sparse=self.sparse)
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
        stops = {self.tok.eos_id, *params.stop_ids}
        out: list[int] = []
        text, sent, reason = "", 0, "length"
        while True:
            if constraint is not None:
                allowed = constraint.allowed().to(logits.device)
                logits = logits[: allowed.shape[0]].masked_fill(~allowed, float("-inf"))
            if params.temperature == 0:
                nxt = int(logits.argmax())
            else:
                nxt = int(torch.multinomial(filter_logits(logits, params), 1, generator=rng))
            if constraint is not None:
                constraint.advance(nxt)
            out.append(nxt)
            if nxt in stops:
                reason = "stop"
                break
            text = self.tok.decode(out)
            cut = _first_stop(text, params.stop)
            if cut is not None:
                text, reason = text[:cut], "stop"
                break
            if on_text is not None:
                safe = len(text) - _held_back(text, params.stop)
                if safe > sent:
                    on_text(text[sent:safe])
                    sent = safe
            if (constraint is not None and constraint.done) or len(out) >= params.max_tokens:
                reason = "stop" if constraint is not None and constraint.done else "length"
                break
            if len(self._ids) + 1 >= self.max_len:
                break
            step, _ = self.model(torch.tensor([[nxt]], device=self.device), len(self._ids), self._caches,
                                 sparse=self.sparse)
            self._ids.append(nxt)
            logits = step[0, -1]
        if out and out[-1] in stops:
            text = self.tok.decode(out[:-1])
        if on_text is not None and len(text) > sent:
            on_text(text[sent:])
        return Completion(out, text, reason, len(prompt), cached,
                          {"prefill": t1 - t0, "decode": time.perf_counter() - t1})


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
