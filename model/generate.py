"""Generation engine: token ids in, token ids out (it knows nothing about text).

A batch of prompts of different lengths shares one position counter: the common prefix is
prefilled at once, then every step feeds one token per row, the row's next prompt token
while it still has one, else the sampled token. Every row sees exactly the positions it
would see alone, and the caches stay one contiguous tensor per layer.

Sampling: temperature (0 = greedy) and nucleus top-p. Stops per row at any stop id, after
`max_new_tokens`, or at the cache length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cache import make_caches
from .transformer import Transformer


def logits_to_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """logits [B, V] -> probabilities [B, V], nucleus-truncated to mass top_p."""
    probs = torch.softmax(logits.float() / max(temperature, 1e-5), dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # keep a token while the mass before it is below top_p (the first is always kept)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [B, V] -> next token ids [B]."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = logits_to_probs(logits, temperature, top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def prefill(model: Transformer, tokens: torch.Tensor, caches, sparse: bool) -> torch.Tensor:
    """tokens [B, S] at positions 0.. -> logits of the last position [B, V]."""
    logits, _ = model(tokens, 0, caches, sparse=sparse)
    return logits[:, -1]


@torch.no_grad()
def decode_one_token(model: Transformer, token: torch.Tensor, pos: int, caches,
                     sparse: bool) -> torch.Tensor:
    """token [B] at position pos -> logits [B, V]."""
    logits, _ = model(token[:, None], pos, caches, sparse=sparse)
    return logits[:, -1]


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop_ids: tuple[int, ...] = ()
    sparse: bool = True  # top-k attention through the indexer
    seed: int | None = None


@torch.no_grad()
def generate(model: Transformer, prompts: list[list[int]], gen: GenerationConfig = GenerationConfig(),
             max_len: int | None = None) -> list[list[int]]:
    """Continue each prompt; returns the new tokens per prompt (a final stop id included)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("need at least one prompt, each with at least one token")
    device = next(model.parameters()).device
    B, lengths = len(prompts), [len(p) for p in prompts]
    total = min(max_len or model.cfg.max_seq_len, max(lengths) + gen.max_new_tokens)
    if max(lengths) >= total:
        raise ValueError(f"prompt of {max(lengths)} tokens leaves no room under {total}")
    buf = torch.zeros(B, total, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        buf[i, : len(p)] = torch.tensor(p, device=device)
    in_prompt = torch.arange(total, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
    caches = make_caches(model.cfg, B, total, next(model.parameters()).dtype, device)
    rng = None
    if gen.seed is not None:
        rng = torch.Generator(device=device).manual_seed(gen.seed)
    stop = torch.tensor(list(gen.stop_ids) or [-1], device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    new = [[] for _ in range(B)]

    start = min(lengths)
    logits = prefill(model, buf[:, :start], caches, gen.sparse)
    for pos in range(start, total):
        nxt = sample(logits, gen.temperature, gen.top_p, rng)
        nxt = torch.where(in_prompt[:, pos], buf[:, pos], nxt)  # forced while inside a prompt
        buf[:, pos] = nxt
        generated = ~in_prompt[:, pos] & ~done
        for i in generated.nonzero().flatten().tolist():
            new[i].append(int(nxt[i]))
        done |= generated & torch.isin(nxt, stop)
        done |= torch.tensor([len(n) >= gen.max_new_tokens for n in new], device=device)
        if bool(done.all()) or pos + 1 == total:
            break
        logits = decode_one_token(model, nxt, pos, caches, gen.sparse)
    return new
