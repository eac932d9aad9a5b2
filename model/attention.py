"""Multi-head latent attention (MLA) with DeepSeek Sparse Attention (DSA).

Module names are the Hugging Face V3.2 tensor names (the reference `model.py` name follows
in brackets), so checkpoints map one to one:

    qr  = q_a_layernorm(q_a_proj(x))                       [wq_a, q_norm]   (B, S, q_lora)
    q   = q_b_proj(qr) -> (q_nope, q_pe)                   [wq_b]           (B, S, H, 128+64)
    kv, k_pe = kv_a_proj_with_mqa(x); kv = kv_a_layernorm  [wkv_a, kv_norm] (B, S, 512), (B, S, 64)
    k_nope, v = kv_b_proj(kv)                              [wkv_b]          (B, T, H, 128+128)
    out = o_proj(attention)                                [wo]

RoPE is interleaved here (the indexer's is not). The softmax scale carries YaRN's mscale².

Paths, picked per call:
- full causal attention (`sparse=False`: pre-training and the indexer warm-up). With
  `cfg.full_attn_impl="sdpa"` (the default) it runs through `sdpa_attention` (torch's fused
  SDPA): prefill in MHA form, a one-token step in the absorbed MQA form, no [B, S, H, T]
  scores and no [S, T] mask. "oracle" keeps the fp32 einsum cores. What still materialises
  scores: the warm-up's KL on the PyTorch path (`index_loss` with attn_impl "dense" or
  "sparse"), whose target `attention_target` is the [B, S, H, T] softmax (under no_grad)
  and whose indexer logits and mask are [B, S, T]; with "triton" the kernels compute that KL
  in row blocks (`kernels.dense_indexer_kl`) and nothing of size S·T is held;
- top-k attention (`sparse=True`): the indexer scores every visible token, `select_topk`
  keeps k, and `cfg.attn_impl` decides how attention reads them: "dense" masks dense scores
  (the oracle), "sparse" gathers the selected latents (what the kernels replace);
  "triton" runs the kernels/ pipeline instead: `Indexer.project` hands q, k and the head
  weights (or their FP8 forms) to `kernels.dsa_select` (indexer logits in row blocks + a
  streaming top-k, never the [B, S, T] score matrix), `kernels.sparse_mla_with_lse` attends,
  and the sparse stage's indexer KL comes from `kernels.sparse_attn_target` (on that LSE) and
  the fused `kernels.indexer_kl`; decode steps attend through `kernels.sparse_mla_decode`.
  With "triton" the dense warm-up's KL (every visible key) also runs through the kernels,
  `kernels.dense_indexer_kl`, in blocks of query rows.
  Its selection is the same set as `select_topk`'s, in no fixed order within a row; nothing
  downstream depends on the order.
Prefill uses the MHA form; a one-token step over a cache uses the absorbed MQA form.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention_ops import (
    absorbed_attention,
    attention_target,
    mha_attention,
    sdpa_attention,
    sparse_attention,
)
from .cache import LayerCache
from .config import ModelConfig
from .fp8 import fake_quant
from .indexer import Indexer, causal_mask, index_kl, index_mask, select_topk
from .layers import RMSNorm
from .rope import apply_rope


class MLA(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        H, R = cfg.n_heads, cfg.kv_lora_rank
        self.q_a_proj = nn.Linear(cfg.dim, cfg.q_lora_rank, bias=False)
        self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, cfg.norm_eps)
        self.q_b_proj = nn.Linear(cfg.q_lora_rank, H * cfg.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(cfg.dim, R + cfg.qk_rope_head_dim, bias=False)
        self.kv_a_layernorm = RMSNorm(R, cfg.norm_eps)
        self.kv_b_proj = nn.Linear(R, H * (cfg.qk_nope_head_dim + cfg.v_head_dim), bias=False)
        self.o_proj = nn.Linear(H * cfg.v_head_dim, cfg.dim, bias=False)
        self.indexer = Indexer(cfg)

    def _w_kv_b(self):
        """W_UK [H, nope, R] and W_UV [H, v, R]: kv_b_proj's weight split per head."""
        c = self.cfg
        w = self.kv_b_proj.weight.view(c.n_heads, c.qk_nope_head_dim + c.v_head_dim, c.kv_lora_rank)
        return w[:, : c.qk_nope_head_dim], w[:, c.qk_nope_head_dim:]

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start_pos: int = 0,
                cache: LayerCache | None = None, sparse: bool = True, index_loss: bool = False):
        """x [B, S, dim] at positions start_pos.. -> (out [B, S, dim], indexer KL or None).

        cos/sin [S, rope/2] are the rows of those positions. With `index_loss`, also returns
        the KL between the indexer and the detached main attention over the support in use.
        """
        c = self.cfg
        B, S, _ = x.shape
        T = start_pos + S
        qr, q_nope, q_pe, kv, k_pe = self._project(x, cos, sin)
        if cache is not None:
            kv, k_pe = cache.latent.update(start_pos, kv, k_pe)  # (B, T, R), (B, T, P)

        scores = idx = ind = None
        fused = sparse and c.attn_impl == "triton"  # kernels select, attend and give the KL
        use_sdpa = not sparse and c.full_attn_impl == "sdpa"
        n_dense = 0
        if fused:  # indexer + blocked top-k: no [B, S, T] score matrix, no mask
            ind = self.indexer.project(x, qr, cos, sin, start_pos, cache.index if cache else None)
            # rows at positions < k see at most k keys and would select all of them: they
            # attend densely (same result, cheaper). The sparse stage's KL needs every row.
            n_dense = 0 if index_loss else min(S, max(0, c.index_topk - start_pos))
            if n_dense < S:  # (B, S - n_dense, topk) int32, -1 = empty
                idx = _dsa_select(ind.rows(n_dense) if n_dense else ind, c.index_topk,
                                  start_pos + n_dense)
            mask = None
        else:
            if sparse or (index_loss and c.attn_impl != "triton"):
                scores = self.indexer(x, qr, cos, sin, start_pos, cache.index if cache else None)
            elif index_loss:  # dense warm-up through the kernels: operands, no [B, S, T] scores
                ind = self.indexer.project(x, qr, cos, sin, start_pos,
                                           cache.index if cache else None)
            if sparse:
                idx = select_topk(scores, c.index_topk, start_pos)  # (B, S, K)
                # the gather path needs no [B, S, T] mask unless the KL target is wanted
                mask = index_mask(idx, T) if c.attn_impl == "dense" or index_loss else None
            elif scores is not None or not use_sdpa:  # the PyTorch KL needs it, or the oracle
                mask = causal_mask(S, T, start_pos, x.device)  # (1, S, T)
            else:  # SDPA masks by itself; S·T floats would be the biggest tensor at long context
                mask = None

        w_uk, w_uv = self._w_kv_b()
        q_lat = lse = None
        if fused:
            q_lat = torch.einsum("bshd,hdr->bshr", q_nope, w_uk)  # absorb W_UK into the query
            parts = []
            if n_dense:  # keys 0 .. start_pos + n_dense - 1, causal
                t_d = start_pos + n_dense
                parts.append(self._dense_core(q_nope[:, :n_dense], q_pe[:, :n_dense],
                                              q_lat[:, :n_dense], kv[:, :t_d], k_pe[:, :t_d],
                                              w_uv, decode=cache is not None and S <= 4))
            if n_dense < S:
                ql, qp = q_lat[:, n_dense:], q_pe[:, n_dense:]
                if cache is not None and S <= 4 and not (torch.is_grad_enabled() and ql.requires_grad):
                    # decode: each token's top-k split over many programs (split-K), merged by LSE
                    o_lat, lse = _kernels().sparse_mla_decode(ql.contiguous(), qp.contiguous(),
                                                              kv, k_pe, idx, c.softmax_scale)
                else:
                    o_lat, lse = _kernels().sparse_mla_with_lse(ql, qp, kv, k_pe, idx,
                                                                c.softmax_scale)
                parts.append(torch.einsum("bshr,hvr->bshv", o_lat, w_uv))
            o = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        elif sparse and c.attn_impl != "dense":
            q_lat = torch.einsum("bshd,hdr->bshr", q_nope, w_uk)  # absorb W_UK into the query
            o_lat = _sparse_core(c.attn_impl)(q_lat, q_pe, kv, k_pe, idx, c.softmax_scale)
            o = torch.einsum("bshr,hvr->bshv", o_lat, w_uv)
        elif S == 1 and cache is not None:  # decode: MQA over the latent cache
            q_lat = torch.einsum("bshd,hdr->bshr", q_nope, w_uk)
            if use_sdpa:  # one shared head: keys [kv; k_pe], values kv
                o_lat = sdpa_attention(torch.cat((q_lat, q_pe), dim=-1),
                                       torch.cat((kv, k_pe), dim=-1).unsqueeze(2),
                                       kv.unsqueeze(2), c.softmax_scale)
            else:
                o_lat = absorbed_attention(q_lat, q_pe, kv, k_pe, mask, c.softmax_scale)
            o = torch.einsum("bshr,hvr->bshv", o_lat, w_uv)
        else:  # prefill: expand the latent into per-head keys and values
            # MHA, not the absorbed form, also for SDPA: heads of qk 192 / v 128 instead of
            # 576 / 512 (V3.2 shapes). On an H200, bf16, S=4096, fwd+bwd of the core: 6 ms and
            # 1.4 GB (cuDNN kernel) against 121 ms and 6.2 GB (576 is too wide for the flash
            # and cuDNN kernels, which leaves the memory-efficient one).
            q, k, v = self._mha_qkv(q_nope, q_pe, kv, k_pe)
            if use_sdpa:
                o = sdpa_attention(q, k, v, c.softmax_scale)
            else:
                o = mha_attention(q, k, v, mask, c.softmax_scale)
        out = self.o_proj(o.flatten(2))  # (B, S, dim)

        kl = None
        if index_loss and fused:
            kl = _fused_index_kl(ind, q_lat, q_pe, kv, k_pe, idx, lse, c.softmax_scale)
        elif index_loss and ind is not None:
            if q_lat is None:
                q_lat = torch.einsum("bshd,hdr->bshr", q_nope, w_uk)
            kl = _fused_dense_index_kl(ind, q_lat, q_pe, kv, k_pe, start_pos, c.softmax_scale)
        elif index_loss:
            if q_lat is None:
                q_lat = torch.einsum("bshd,hdr->bshr", q_nope, w_uk)
            target = attention_target(q_lat, q_pe, kv, k_pe, mask, c.softmax_scale)
            kl = index_kl(scores, mask, target)
        return out, kl


    def _dense_core(self, q_nope, q_pe, q_lat, kv, k_pe, w_uv, decode: bool):
        """Causal attention of the last n of T positions over all T keys through SDPA ->
        [B, n, H, v]: the absorbed MQA form for a few decode rows, MHA for a prefill."""
        c = self.cfg
        if decode:
            o_lat = sdpa_attention(torch.cat((q_lat, q_pe), dim=-1),
                                   torch.cat((kv, k_pe), dim=-1).unsqueeze(2), kv.unsqueeze(2),
                                   c.softmax_scale)
            return torch.einsum("bshr,hvr->bshv", o_lat, w_uv)
        return sdpa_attention(*self._mha_qkv(q_nope, q_pe, kv, k_pe), c.softmax_scale)

    def _mha_qkv(self, q_nope, q_pe, kv, k_pe):
        """The MHA form: per-head q [B, S, H, N+P], k [B, T, H, N+P] and v [B, T, H, V],
        keys and values expanded from the latent."""
        c = self.cfg
        B, T = kv.shape[:2]
        kvb = self.kv_b_proj(kv).view(B, T, c.n_heads, c.qk_nope_head_dim + c.v_head_dim)
        k_nope, v = kvb.split([c.qk_nope_head_dim, c.v_head_dim], dim=-1)
        q = torch.cat((q_nope, q_pe), dim=-1)
        k = torch.cat((k_nope, k_pe.unsqueeze(2).expand(-1, -1, c.n_heads, -1)), dim=-1)
        return q, k, v

    def _project(self, x, cos, sin):
        """x [B, S, dim] -> qr [B, S, q_lora], q_nope [B, S, H, N], q_pe [B, S, H, P] (RoPE'd),
        kv [B, S, R] (normed, FP8-rounded when kv_fp8), k_pe [B, S, P] (RoPE'd)."""
        c = self.cfg
        B, S, _ = x.shape
        qr = self.q_a_layernorm(self.q_a_proj(x))  # (B, S, q_lora)
        q = self.q_b_proj(qr).view(B, S, c.n_heads, c.qk_head_dim)
        q_nope, q_pe = q.split([c.qk_nope_head_dim, c.qk_rope_head_dim], dim=-1)
        q_pe = apply_rope(q_pe, cos, sin, interleaved=True)  # (B, S, H, P)
        kv, k_pe = self.kv_a_proj_with_mqa(x).split([c.kv_lora_rank, c.qk_rope_head_dim], dim=-1)
        kv = self.kv_a_layernorm(kv)  # (B, S, R)
        if c.kv_fp8:  # the deployed cache is FP8: simulate its precision (commit 8631a81)
            block = c.fp8_block if c.kv_lora_rank % c.fp8_block == 0 else c.kv_lora_rank
            kv = fake_quant(kv, block, c.fp8_scale_fmt)
        k_pe = apply_rope(k_pe.unsqueeze(2), cos, sin, interleaved=True).squeeze(2)  # (B, S, P)
        return qr, q_nope, q_pe, kv, k_pe

    @torch.no_grad()
    def probe(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """For a prefill from position 0 (no cache): the indexer's scores I [B, S, S] (unmasked)
        and the full causal attention's head-summed, L1-normalised distribution p [B, S, S],
        the warm-up's KL target. Used to measure how well the indexer ranks keys."""
        qr, q_nope, q_pe, kv, k_pe = self._project(x, cos, sin)
        S = x.shape[1]
        scores = self.indexer(x, qr, cos, sin, 0, None)
        w_uk, _ = self._w_kv_b()
        q_lat = torch.einsum("bshd,hdr->bshr", q_nope, w_uk)
        target = attention_target(q_lat, q_pe, kv, k_pe, causal_mask(S, S, 0, x.device),
                                  self.cfg.softmax_scale)
        return scores, target


# Query rows of the indexer logits per top-k block are chosen so that the block's
# [B, rows, T] fp32 logits stay under this many bytes (kernels.dsa_select).
INDEX_BLOCK_BYTES = 1 << 28


def _kernels():
    try:
        from envfactory import kernels
    except ImportError as e:  # pragma: no cover
        raise NotImplementedError("attn_impl='triton' needs the kernels/ package") from e
    if not kernels.HAS_TRITON:
        raise NotImplementedError("attn_impl='triton' needs the `triton` package")
    return kernels


@torch.no_grad()
def _dsa_select(ind, topk: int, start_pos: int) -> torch.Tensor:
    """Top-k keys per query from the indexer operands by the fused indexer + blocked top-k
    kernels -> [B, S, topk] int32 (a row's order is not fixed), -1 in unused slots. The same set as `select_topk` on the full scores (ties to the earlier
    token); every consumer (sparse attention, its KL target, the KL) is order-free."""
    dsa_select = _kernels().dsa_select
    with torch.autocast(ind.w.device.type, enabled=False):
        if ind.q8 is not None:
            return dsa_select(ind.q8, ind.k8, ind.w, topk, start_pos, q_s=ind.q_s, k_s=ind.k_s,
                              max_block_bytes=INDEX_BLOCK_BYTES)
        dt = torch.promote_types(ind.q.dtype, ind.k.dtype)  # the scores' products are fp32
        return dsa_select(ind.q.to(dt), ind.k.to(dt), ind.w, topk, start_pos,
                          max_block_bytes=INDEX_BLOCK_BYTES)


def _fused_index_kl(ind, q_lat, q_pe, kv, k_pe, idx, lse, scale) -> torch.Tensor:
    """The sparse stage's indexer KL on the selected support, by the kernels: the target
    (head-mean attention probability per selected slot, from the sparse attention's LSE;
    equal to the head-summed, L1-normalised `attention_target` there) and the fused KL with
    its backward into the indexer's q, k and head weights."""
    kern = _kernels()
    with torch.no_grad(), torch.autocast(kv.device.type, enabled=False):
        target = kern.sparse_attn_target(q_lat.detach().contiguous(), q_pe.detach().contiguous(),
                                         kv.detach(), k_pe.detach(), idx, lse, scale)
    with torch.autocast(kv.device.type, enabled=False):
        q, k, w = ind.dequantised()
        dt = torch.promote_types(q.dtype, k.dtype)
        return kern.indexer_kl(q.to(dt), k.to(dt), w, idx, target)


def _fused_dense_index_kl(ind, q_lat, q_pe, kv, k_pe, start_pos, scale) -> torch.Tensor:
    """The dense warm-up's indexer KL by the kernels (`kernels.dense_indexer_kl`): over every
    visible key, in blocks of query rows, never the [B, S, H, T] scores of the PyTorch path."""
    with torch.autocast(kv.device.type, enabled=False):
        q, k, w = ind.dequantised()
        dt = torch.promote_types(q.dtype, k.dtype)
        return _kernels().dense_indexer_kl(q.to(dt), k.to(dt), w, q_lat.detach(), q_pe.detach(),
                                           kv.detach(), k_pe.detach(), scale, start_pos,
                                           INDEX_BLOCK_BYTES)


def _sparse_core(attn_impl: str):
    if attn_impl == "sparse":
        return sparse_attention
    if attn_impl == "triton":
        try:
            from envfactory.kernels import sparse_mla  # provided by the kernels/ package
        except ImportError as e:
            raise NotImplementedError("attn_impl='triton' needs kernels.sparse_mla") from e
        return sparse_mla
    raise ValueError(f"unknown attn_impl {attn_impl!r}")
