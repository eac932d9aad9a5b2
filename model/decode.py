"""Batched decoding with fixed shapes: B sequences of different lengths, one token each per
step, over paged caches (`paged.PagePool`), the whole step capturable as one CUDA graph.

The model's own forward takes one start position for the whole batch and returns cache
views that grow every step, so its shapes change with the length and rows must be aligned.
`BatchDecoder.step(tokens [B], pos [B])` instead:

- runs every per-token part (embedding, norms, projections, RoPE, MLP) with the B tokens
  laid out as one sequence of B positions ([1, B, dim]), so RoPE takes each row's own
  position from the table with no change to the model's modules;
- writes each row's new latent, RoPE key and index key at its own position, through the
  row's block table (`table` [B, max_pages], page 0 for a slot with no sequence), in the
  pool's pages (the model's formats, FP8 index keys included);
- scores the row's query against the index keys of all max_pages * page positions of its
  table, masks positions past the row's own, keeps the top-k (a stable sort, so ties go to
  the earlier token as in `indexer.select_topk`), and attends over the selected latents
  in the absorbed MQA form: on CUDA with `attn_impl="triton"`, the kernels' split-K
  decode reads the pages through the block table; elsewhere a PyTorch gather;
- routes MoE tokens without a host sync: every expert runs on every token and the
  router's weights (zero where not chosen) combine them. Exact, but E times the expert
  FLOPs, so fit for small expert counts, not V3.2's 256.

Every shape depends only on (B, max_len, page), and nothing reads a value back to the host,
so on CUDA `capture()` records one step as a graph and `step` replays it: one launch per
token instead of a few hundred kernels. Changing which pages a row uses (`assign`) writes
into the same table tensor, so a captured graph stays valid while sequences come and go
(continuous batching, `scheduler.py`). Rows are prefilled by the model's forward through
`paged.paged_view` (`prefill` for all rows, contiguous rows of equal length in one pass;
`prefill_row` for one row after its shared prefix pages).

Without a pool the decoder makes its own, each row owning max_pages pages. Cost against the
model's decode path: the indexer scans every position of the table rather than pos + 1 (the
price of a fixed shape); pick max_len for the batch, not the model's window.
"""

from __future__ import annotations

import torch

from .fp8 import fp8_index
from .indexer import index_scores
from .moe import MoE
from .paged import PagePool, paged_view
from .transformer import Transformer

__all__ = ["BatchDecoder"]


class BatchDecoder:
    """A block table for `batch` sequences of up to `max_len` tokens over a page pool, and a
    fixed-shape decode step."""

    def __init__(self, model: Transformer, batch: int, max_len: int | None = None, sparse: bool = True,
                 pool: PagePool | None = None, page: int = 64, kernels: bool | None = None):
        self.model = model.eval()
        cfg = model.cfg
        self.cfg, self.batch, self.sparse = cfg, batch, sparse
        self.max_len = min(max_len or cfg.max_seq_len, cfg.max_seq_len)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        page = pool.page if pool is not None else min(page, self.max_len)
        self.max_pages = -(-self.max_len // page)
        self.span = self.max_pages * page  # positions a row's table can address
        self.table = torch.zeros(batch, self.max_pages, dtype=torch.long, device=self.device)
        if kernels is None:
            kernels = self.device.type == "cuda" and cfg.attn_impl == "triton"
        self.kernels = kernels
        self._table32 = torch.zeros_like(self.table, dtype=torch.int32) if kernels else None
        if pool is None:  # each row owns its pages
            pool = PagePool(cfg, batch * self.max_pages + 1, page, self.dtype, self.device)
            for b in range(batch):
                self.assign(b, pool.alloc(self.max_pages))
        self.pool = pool
        self.k = min(cfg.index_topk, self.max_len) if sparse else self.span
        self._rows = torch.arange(batch, device=self.device)
        self._slots = torch.arange(self.k, device=self.device)
        self._positions = torch.arange(self.span, device=self.device)
        self._graph = None
        self._tokens = torch.zeros(batch, dtype=torch.long, device=self.device)
        self._pos = torch.zeros(batch, dtype=torch.long, device=self.device)
        self._logits = None

    def assign(self, b: int, pages: list[int]) -> None:
        """Row b's sequence lives in `pages` (logical page i at pages[i]); the rest of the
        row points at the scratch page. Writes into the same table, so graphs stay valid."""
        if len(pages) > self.max_pages:
            raise ValueError(f"{len(pages)} pages for a row of {self.max_pages}")
        row = torch.zeros(self.max_pages, dtype=torch.long)
        row[: len(pages)] = torch.tensor(pages, dtype=torch.long)
        self.table[b].copy_(row)
        if self._table32 is not None:
            self._table32[b].copy_(row)

    # ---------------------------------------------------------------------------- prefill

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        """Row b gets prompts[b] at positions 0..; -> the logits of each prompt's last token
        [B, V]. Contiguous rows of equal length run as one forward pass."""
        if len(prompts) != self.batch:
            raise ValueError(f"{len(prompts)} prompts for a batch of {self.batch}")
        for pr in prompts:
            self._check(0, pr)
        out = torch.empty(self.batch, self.cfg.vocab_size, dtype=torch.float32, device=self.device)
        lo = 0
        while lo < self.batch:
            hi = lo + 1
            while hi < self.batch and len(prompts[hi]) == len(prompts[lo]):
                hi += 1
            out[lo:hi] = self._forward(lo, hi, prompts[lo:hi], 0)
            lo = hi
        return out

    @torch.no_grad()
    def prefill_row(self, b: int, tokens: list[int], start: int = 0) -> torch.Tensor:
        """Feed tokens[start:] to row b at positions start.. (positions < start already in
        its pages, e.g. shared prefix pages) -> the last token's logits [V]."""
        self._check(start, tokens)
        return self._forward(b, b + 1, [tokens], start)[0]

    def _check(self, start: int, tokens: list[int]) -> None:
        if not 0 <= start < len(tokens) or len(tokens) >= self.max_len:
            raise ValueError(f"prompts need 1 to {self.max_len - 1} tokens and one past the cached {start}, "
                             f"got {len(tokens)}")

    def _forward(self, lo: int, hi: int, prompts: list[list[int]], start: int) -> torch.Tensor:
        x = torch.tensor([p[start:] for p in prompts], device=self.device)
        table = self.table[lo:hi, : self.pool.pages_for(len(prompts[0]))]
        logits, _ = self.model(x, start, paged_view(self.pool, table), sparse=self.sparse, last_only=True)
        return logits[:, -1].float()

    # ------------------------------------------------------------------------------ decode

    def step(self, tokens: torch.Tensor, pos: torch.Tensor, rows: list[int] | None = None) -> torch.Tensor:
        """tokens [B] long at positions pos [B] long (each < max_len; the pages hold every
        earlier position of its row) -> next-token logits [B, V] float32. Replays the CUDA
        graph when one was captured (the result is then a buffer the next step overwrites).
        Eagerly, `rows` (slot ids, in order) steps only those slots: tokens, pos and the
        logits then have one entry per listed row."""
        if self._graph is None:
            with torch.no_grad():
                if rows is None or len(rows) == self.batch:
                    return self._step(tokens, pos, self.table, self._table32)
                sel = torch.tensor(rows, dtype=torch.long, device=self.device)
                return self._step(tokens, pos, self.table[sel],
                                  self._table32[sel] if self._table32 is not None else None)
        if rows is not None and list(rows) != list(range(self.batch)):
            raise ValueError("a captured step runs every slot")
        self._tokens.copy_(tokens)
        self._pos.copy_(pos)
        self._graph.replay()
        return self._logits

    @property
    def captured(self) -> bool:
        return self._graph is not None

    @torch.no_grad()
    def capture(self, warmup: int = 2) -> None:
        """Record one decode step as a CUDA graph (CUDA only). The caches' contents are
        kept: warm-up steps write at position 0 of the scratch page only (every row is
        pointed there meanwhile)."""
        if self.device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA model")
        saved = self.table.clone()
        self.table.zero_()
        if self._table32 is not None:
            self._table32.zero_()
        self._pos.zero_()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._step(self._tokens, self._pos, self.table, self._table32)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._logits = self._step(self._tokens, self._pos, self.table, self._table32)
        self._graph = graph
        self.table.copy_(saved)
        if self._table32 is not None:
            self._table32.copy_(saved)

    def _step(self, tokens, pos, table, table32) -> torch.Tensor:
        m = self.model
        cos, sin = m.rope_cos[pos], m.rope_sin[pos]  # (B, P/2): row b's own angles
        x = m.embed_tokens(tokens).unsqueeze(0)  # (1, B, dim): the B tokens as one sequence
        page = table[self._rows[: len(table)], pos // self.pool.page]  # where each row writes
        row = pos % self.pool.page
        for layer, lay in zip(m.layers, self.pool.layers):
            x = x + self._attention(layer.self_attn, layer.input_layernorm(x), cos, sin, pos, lay, page, row,
                                    table, table32)
            h = layer.post_attention_layernorm(x)
            x = x + (_moe(layer.mlp, h) if isinstance(layer.mlp, MoE) else layer.mlp(h))
        return m.lm_head(m.norm(x)).float()[0]

    def _attention(self, attn, x, cos, sin, pos, lay, page, row, table, table32) -> torch.Tensor:
        c = self.cfg
        B, P = len(table), self.pool.page
        qr, q_nope, q_pe, kv, k_pe = attn._project(x, cos, sin)  # (1, B, ...)
        lay.kv[page, row] = kv[0].to(lay.kv.dtype)
        lay.pe[page, row] = k_pe[0].to(lay.pe.dtype)
        ind = attn.indexer.project(x, qr, cos, sin, 0, None)  # this token's q, k, w; no cache write
        fp8 = ind.q8 is not None
        lay.k[page, row] = (ind.k8 if fp8 else ind.k)[0].to(lay.k.dtype)  # cached in either mode
        if fp8:
            lay.scale[page, row] = ind.k_s[0].unsqueeze(-1)
        if self.sparse:
            keys = lay.k[table].view(B, self.span, -1)  # (B, L, D): the rows' own pages
            if fp8:
                scores = fp8_index(ind.q8.transpose(0, 1), ind.q_s.transpose(0, 1), keys,
                                   lay.scale[table].view(B, self.span), ind.w.transpose(0, 1))
            else:
                scores = index_scores(ind.q.transpose(0, 1), keys, ind.w.transpose(0, 1))
            visible = self._positions[None, :] <= pos[:, None]
            scores = scores[:, 0].masked_fill(~visible, float("-inf"))  # (B, L) fp32
            idx = scores.sort(dim=-1, descending=True, stable=True).indices[:, : self.k]  # (B, K)
            valid = self._slots[None, :] < (pos[:, None] + 1).clamp(max=self.k)
        else:  # every visible key, in position order
            idx = self._positions.expand(B, -1)
            valid = self._positions[None, :] <= pos[:, None]
        w_uk, w_uv = attn._w_kv_b()
        q_lat = torch.einsum("bhd,hdr->bhr", q_nope[0], w_uk)  # absorb W_UK into the query
        if self.kernels:  # split-K decode over the pages, through the block table
            from envfactory.kernels.sparse_attn import sparse_mla_decode

            sel = torch.where(valid, idx, -1).to(torch.int32)[:, None]  # (B, 1, K)
            o_lat, _ = sparse_mla_decode(q_lat[:, None].contiguous(), q_pe[0][:, None].contiguous(),
                                         lay.kv, lay.pe, sel, c.softmax_scale, block_table=table32)
            o_lat = o_lat[:, 0].to(x.dtype)
        else:
            where = table.gather(1, idx // P), idx % P
            lat, pe = lay.kv[where], lay.pe[where]  # (B, K, R), (B, K, P)
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

