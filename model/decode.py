"""Batched decoding with fixed shapes: B sequences of different lengths, one token each per
step, the whole step capturable as one CUDA graph.

The model's own forward takes one start position for the whole batch and returns cache
views that grow every step, so its shapes change with the length and rows must be aligned.
`BatchDecoder.step(tokens [B], pos [B])` instead:

- runs every per-token part (embedding, norms, projections, RoPE, MLP) with the B tokens
  laid out as one sequence of B positions ([1, B, dim]), so RoPE takes each row's own
  position from the table with no change to the model's modules;
- writes each row's new latent, RoPE key and index key at its own position of full-size
  caches (`make_caches(cfg, B, max_len)`, the model's formats, FP8 index keys included);
- scores the row's query against all max_len index keys, masks positions past the row's
  own, keeps the top-k (a stable sort, so ties go to the earlier token as in
  `indexer.select_topk`), and attends over the gathered latents in the absorbed MQA form,
  slots past min(k, pos + 1) masked;
- routes MoE tokens without a host sync: every expert runs on every token and the
  router's weights (zero where not chosen) combine them. Exact, but E times the expert
  FLOPs, so fit for small expert counts, not V3.2's 256.

Every shape depends only on (B, max_len), and nothing reads a value back to the host, so on
CUDA `capture()` records one step as a graph and `step` replays it: one launch per token
instead of a few hundred kernels. Rows are prefilled by the model's forward through row
views of the same caches (`prefill`), contiguous rows of equal length in one pass.

Cost against the model's decode path: the indexer scans max_len keys rather than pos + 1
(the price of a fixed shape); pick max_len for the batch, not the model's window.
"""

from __future__ import annotations

import torch

from .cache import IndexKeyCache, LatentCache, LayerCache, make_caches
from .fp8 import fp8_index
from .indexer import index_scores
from .moe import MoE
from .transformer import Transformer

__all__ = ["BatchDecoder"]


def _row_view(cache: LayerCache, lo: int, hi: int) -> LayerCache:
    """The same storage seen as a cache of rows lo..hi-1 (writes go to the full tensors)."""
    lat = LatentCache.__new__(LatentCache)
    lat.kv, lat.pe = cache.latent.kv[lo:hi], cache.latent.pe[lo:hi]
    idx = IndexKeyCache.__new__(IndexKeyCache)
    idx.fp8, idx.k = cache.index.fp8, cache.index.k[lo:hi]
    idx.scale = cache.index.scale[lo:hi] if cache.index.fp8 else None
    return LayerCache(lat, idx)


class BatchDecoder:
    """Caches for `batch` sequences of up to `max_len` tokens and a fixed-shape decode step."""

    def __init__(self, model: Transformer, batch: int, max_len: int | None = None, sparse: bool = True):
        self.model = model.eval()
        cfg = model.cfg
        self.cfg, self.batch, self.sparse = cfg, batch, sparse
        self.max_len = min(max_len or cfg.max_seq_len, cfg.max_seq_len)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.caches = make_caches(cfg, batch, self.max_len, self.dtype, self.device)
        self.k = min(cfg.index_topk, self.max_len) if sparse else self.max_len
        self._rows = torch.arange(batch, device=self.device)
        self._slots = torch.arange(self.k, device=self.device)
        self._graph = None
        self._tokens = torch.zeros(batch, dtype=torch.long, device=self.device)
        self._pos = torch.zeros(batch, dtype=torch.long, device=self.device)
        self._logits = None

    # ---------------------------------------------------------------------------- prefill

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        """Row b gets prompts[b] at positions 0..; -> the logits of each prompt's last token
        [B, V]. Contiguous rows of equal length run as one forward pass."""
        if len(prompts) != self.batch:
            raise ValueError(f"{len(prompts)} prompts for a batch of {self.batch}")
        for pr in prompts:
            if not pr or len(pr) >= self.max_len:
                raise ValueError(f"prompts need 1 to {self.max_len - 1} tokens, got {len(pr)}")
        out = torch.empty(self.batch, self.cfg.vocab_size, dtype=torch.float32, device=self.device)
        lo = 0
        while lo < self.batch:
            hi = lo + 1
            while hi < self.batch and len(prompts[hi]) == len(prompts[lo]):
                hi += 1
            x = torch.tensor(prompts[lo:hi], device=self.device)
            views = [_row_view(c, lo, hi) for c in self.caches]
            logits, _ = self.model(x, 0, views, sparse=self.sparse, last_only=True)
            out[lo:hi] = logits[:, -1]
            lo = hi
        return out

    # ------------------------------------------------------------------------------ decode

    def step(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """tokens [B] long at positions pos [B] long (each < max_len; the cache holds every
        earlier position of its row) -> next-token logits [B, V] float32. Replays the CUDA
        graph when one was captured (the result is then a buffer the next step overwrites)."""
        if self._graph is None:
            with torch.no_grad():
                return self._step(tokens, pos)
        self._tokens.copy_(tokens)
        self._pos.copy_(pos)
        self._graph.replay()
        return self._logits

    @torch.no_grad()
    def capture(self, warmup: int = 2) -> None:
        """Record one decode step as a CUDA graph (CUDA only). The caches' contents are
        kept: warm-up steps write at position max_len - 1 of every row, which prefill and
        decode overwrite before any query may read it."""
        if self.device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA model")
        self._pos.fill_(self.max_len - 1)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._step(self._tokens, self._pos)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._logits = self._step(self._tokens, self._pos)
        self._graph = graph

    def _step(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        m = self.model
        cos, sin = m.rope_cos[pos], m.rope_sin[pos]  # (B, P/2): row b's own angles
        x = m.embed_tokens(tokens).unsqueeze(0)  # (1, B, dim): the B tokens as one sequence
        for layer, cache in zip(m.layers, self.caches):
            x = x + self._attention(layer.self_attn, layer.input_layernorm(x), cos, sin, pos, cache)
            h = layer.post_attention_layernorm(x)
            x = x + (_moe(layer.mlp, h) if isinstance(layer.mlp, MoE) else layer.mlp(h))
        return m.lm_head(m.norm(x)).float()[0]

    def _attention(self, attn, x, cos, sin, pos, cache: LayerCache) -> torch.Tensor:
        c = self.cfg
        B, rows = self.batch, self._rows
        qr, q_nope, q_pe, kv, k_pe = attn._project(x, cos, sin)  # (1, B, ...)
        cache.latent.kv[rows, pos] = kv[0]
        cache.latent.pe[rows, pos] = k_pe[0]
        ind = attn.indexer.project(x, qr, cos, sin, 0, None)  # this token's q, k, w; no cache write
        if ind.q8 is not None:
            cache.index.k[rows, pos] = ind.k8[0]
            cache.index.scale[rows, pos] = ind.k_s[0].unsqueeze(-1)
            scores = fp8_index(ind.q8.transpose(0, 1), ind.q_s.transpose(0, 1), cache.index.k,
                               cache.index.scale.squeeze(-1), ind.w.transpose(0, 1))
        else:
            cache.index.k[rows, pos] = ind.k[0]
            scores = index_scores(ind.q.transpose(0, 1), cache.index.k, ind.w.transpose(0, 1))
        scores = scores[:, 0]  # (B, L) fp32
        visible = torch.arange(self.max_len, device=self.device)[None, :] <= pos[:, None]
        if self.sparse:
            scores = scores.masked_fill(~visible, float("-inf"))
            idx = scores.sort(dim=-1, descending=True, stable=True).indices[:, : self.k]  # (B, K)
            valid = self._slots[None, :] < (pos[:, None] + 1).clamp(max=self.k)
        else:  # every visible key, in position order
            idx = torch.arange(self.max_len, device=self.device).expand(B, -1)
            valid = visible
        lat = cache.latent.kv[rows[:, None], idx]  # (B, K, R)
        pe = cache.latent.pe[rows[:, None], idx]  # (B, K, P)
        w_uk, w_uv = attn._w_kv_b()
        q_lat = torch.einsum("bhd,hdr->bhr", q_nope[0], w_uk)  # absorb W_UK into the query
        acc = torch.promote_types(x.dtype, torch.float32)  # fp32 scores for bf16 models
        s = (torch.einsum("bhr,bkr->bhk", q_lat.to(acc), lat.to(acc))
             + torch.einsum("bhp,bkp->bhk", q_pe[0].to(acc), pe.to(acc))) * c.softmax_scale
        s = s.masked_fill(~valid[:, None, :], float("-inf"))
        o_lat = torch.einsum("bhk,bkr->bhr", s.softmax(-1), lat.to(acc)).to(x.dtype)
        o = torch.einsum("bhr,hvr->bhv", o_lat, w_uv)  # (B, H, v)
        return attn.o_proj(o.reshape(1, B, -1))


def _moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """The MoE block without a host sync: all experts on all tokens, weighted by the router
    (zero for experts it did not choose). Same result as `MoE.forward`."""
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    weights, ids = moe.gate(x)  # (N, k)
    dense = torch.zeros(x.shape[0], len(moe.experts), dtype=weights.dtype, device=x.device)
    dense.scatter_(1, ids, weights)  # (N, E)
    out = moe.shared_experts(x)
    for e, expert in enumerate(moe.experts):
        out = out + expert(x) * dense[:, e:e + 1]
    return out.view(shape)

