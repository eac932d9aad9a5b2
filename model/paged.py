"""Paged inference caches: one pool of fixed-size pages shared by every sequence, in the
layout the kernels read (`kernels.sparse_attn.sparse_mla_decode` with a block table).

Per layer the pool holds
- the MLA latent `kv` [n_pages, page, kv_lora_rank] and RoPE key `pe` [n_pages, page, P],
- the indexer's keys `k` [n_pages, page, index_head_dim] (e4m3 with `scale`
  [n_pages, page, 1] fp32 when the config's index keys are FP8),
and a sequence is a list of page ids (its block table): logical position t lives at
page `pages[t // page]`, row `t % page`. Page 0 is never handed out: a decode slot with no
sequence points at it, so a fixed-shape step may write there harmlessly.

Pages are reference-counted, and a full page is also a prefix-cache entry: its key chains
the hashes of every token up to the page's end, so two sequences that begin with the same
tokens share those pages (the keys of a token depend on its prefix only). A released page
that is a cache entry stays filled until the pool needs it (least recently used first);
`match` finds the longest run of cached pages a new prompt begins with. Nothing is
copied on write: a sequence only writes positions after its shared pages.

`paged_view` gives one or more sequences the `LatentCache` / `IndexKeyCache` interface
(`update(start_pos, ...)` writes and returns contiguous views up to the write's end), so
the model's own forward prefills straight into pages.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass

import torch

from .cache import LayerCache
from .config import ModelConfig
from .fp8 import E4M3

__all__ = ["PagePool", "PoolFull", "paged_view"]


class PoolFull(RuntimeError):
    """No free or evictable page is left."""


@dataclass
class PagedLayer:
    kv: torch.Tensor      # [N, page, R]
    pe: torch.Tensor      # [N, page, P]
    k: torch.Tensor       # [N, page, D] (e4m3 when fp8)
    scale: torch.Tensor | None  # [N, page, 1] fp32 when fp8


class PagePool:
    def __init__(self, cfg: ModelConfig, n_pages: int, page: int = 64, dtype=torch.float32, device=None):
        if n_pages < 2 or page < 1:
            raise ValueError("a pool needs at least 2 pages (page 0 is scratch) of at least 1 token")
        self.n_pages, self.page = n_pages, page
        fp8 = cfg.index_fp8
        self.layers = [
            PagedLayer(
                torch.zeros(n_pages, page, cfg.kv_lora_rank, dtype=dtype, device=device),
                torch.zeros(n_pages, page, cfg.qk_rope_head_dim, dtype=dtype, device=device),
                torch.zeros(n_pages, page, cfg.index_head_dim, dtype=E4M3 if fp8 else dtype, device=device),
                torch.ones(n_pages, page, 1, dtype=torch.float32, device=device) if fp8 else None,
            )
            for _ in range(cfg.n_layers)
        ]
        self._ref = [0] * n_pages
        self._free = list(range(n_pages - 1, 0, -1))  # pop() hands out low ids first
        self._cached: OrderedDict[bytes, int] = OrderedDict()  # prefix key -> page, LRU first
        self._key_of: dict[int, bytes] = {}  # page -> its prefix key
        self._idle = 0  # entries nobody holds (evictable)
        self.hits = 0  # prompt tokens served from cached pages

    # ---------------------------------------------------------------- accounting

    @property
    def available(self) -> int:
        """Pages that `alloc` can hand out now: free ones and cached ones nobody holds."""
        return len(self._free) + self._idle

    def alloc(self, n: int) -> list[int]:
        if n > self.available:
            raise PoolFull(f"{n} pages asked, {self.available} of {self.n_pages - 1} available")
        out = []
        for _ in range(n):
            if self._free:
                p = self._free.pop()
            else:  # evict the least recently used cached page that nobody holds
                key = next(k for k, q in self._cached.items() if self._ref[q] == 0)
                p = self._cached.pop(key)
                del self._key_of[p]
                self._idle -= 1
            self._ref[p] = 1
            out.append(p)
        return out

    def publish(self, pages: list[int], tokens: list[int]) -> None:
        """Make the full pages of a sequence prefix-cache entries while it still runs (its
        later writes go to later positions): `tokens` are those whose keys are in the
        pages, in order."""
        for i, key in enumerate(_chain(tokens, self.page)):
            if i >= len(pages):
                break
            p = pages[i]
            if p in self._key_of:  # already an entry (shared, or published before)
                self._cached.move_to_end(self._key_of[p])
            elif key not in self._cached:
                self._cached[key] = p
                self._key_of[p] = key

    def release(self, pages: list[int], tokens: list[int] | None = None) -> None:
        """Drop one reference to each page. With `tokens` (the sequence's tokens whose keys
        are in the pages, in order), its full pages become prefix-cache entries."""
        if tokens is not None:
            self.publish(pages, tokens)
        for p in pages:
            if self._ref[p] <= 0:
                raise ValueError(f"page {p} released more often than taken")
            self._ref[p] -= 1
            if self._ref[p] == 0:
                if p in self._key_of:
                    self._idle += 1
                else:
                    self._free.append(p)

    def match(self, tokens: list[int]) -> list[int]:
        """The cached pages `tokens` begins with, each taken (one reference). At least one
        token is always left over, so the caller has a last token to compute logits for."""
        usable = (len(tokens) - 1) // self.page
        out = []
        for key in _chain(tokens[: usable * self.page], self.page):
            p = self._cached.get(key)
            if p is None:
                break
            self._cached.move_to_end(key)
            if self._ref[p] == 0:
                self._idle -= 1
            self._ref[p] += 1
            out.append(p)
        self.hits += len(out) * self.page
        return out

    def pages_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.page)


def _chain(tokens: list[int], page: int):
    """One key per full page of `tokens`: a 128-bit digest of every token up to that page's
    end (chained, so each page hashes only its own tokens)."""
    h = b""
    for i in range(len(tokens) // page):
        h = hashlib.blake2b(h + array("q", tokens[i * page:(i + 1) * page]).tobytes(), digest_size=16).digest()
        yield h


class _PagedLatent:
    def __init__(self, layer: PagedLayer, table: torch.Tensor, page: int):
        self.layer, self.table, self.page = layer, table, page

    def _where(self, lo: int, hi: int):
        pos = torch.arange(lo, hi, device=self.table.device)
        if hi > self.table.shape[1] * self.page:
            raise ValueError(f"the block table holds {self.table.shape[1] * self.page} positions, asked for {hi}")
        return self.table[:, pos // self.page], (pos % self.page)[None, :]  # (B, n), (1, n)

    def update(self, start_pos: int, kv: torch.Tensor, pe: torch.Tensor):
        end = start_pos + kv.shape[1]
        page, row = self._where(start_pos, end)
        self.layer.kv[page, row] = kv.to(self.layer.kv.dtype)
        self.layer.pe[page, row] = pe.to(self.layer.pe.dtype)
        page, row = self._where(0, end)
        return self.layer.kv[page, row], self.layer.pe[page, row]


class _PagedIndex(_PagedLatent):
    @property
    def fp8(self) -> bool:
        return self.layer.scale is not None

    def update(self, start_pos: int, k: torch.Tensor, scale: torch.Tensor | None = None):
        if (scale is not None) != self.fp8:
            raise ValueError("FP8 index cache needs a scale, a plain one must not get one")
        end = start_pos + k.shape[1]
        page, row = self._where(start_pos, end)
        self.layer.k[page, row] = k
        if self.fp8:
            self.layer.scale[page, row] = scale
        page, row = self._where(0, end)
        return self.layer.k[page, row], (self.layer.scale[page, row] if self.fp8 else None)


def paged_view(pool: PagePool, table: torch.Tensor) -> list[LayerCache]:
    """Caches for the model's forward over B sequences whose block tables are the rows of
    `table` [B, n] (long, on the pool's device); every sequence must have the same length."""
    return [LayerCache(_PagedLatent(layer, table, pool.page), _PagedIndex(layer, table, pool.page))
            for layer in pool.layers]
