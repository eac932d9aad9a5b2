"""Attention cores, free of parameters: the seam where kernels plug in.

Full causal attention for training and long prefills:

- `sdpa_attention`: `torch.nn.functional.scaled_dot_product_attention` (fused kernels that
  never hold the [B, S, H, T] scores, forward or backward), in MHA form or, with one shared
  key/value head, in the absorbed MQA form.

Three ways to compute the same top-k attention (the first two, given a causal mask, are also
the full-attention oracles), and the indexer's training target:

- `mha_attention`: the masked-dense oracle in MHA form (per-head keys and values expanded
  from the latent), as the reference prefill does (dsa.md §1.2).
- `absorbed_attention`: the MQA form over the latent cache, q_nope absorbed through
  W_UK, the output staying in the latent space until W_UV (reference decode).
- `sparse_attention`: the MQA form over the *gathered* top-k latents only, the computation
  FlashMLA's sparse kernels perform (`indices` [B, S, K], -1 = no token). `attn_impl="triton"`
  replaces this function.
- `attention_target`: the head-summed, L1-normalised attention distribution for the KL loss.

The einsum cores materialise [B, S, H, T] float32 scores; all their scores and softmaxes
run in float32. `sdpa_attention` runs in its inputs' dtype (bf16 under autocast), the fused
kernels keeping the softmax statistics in float32. Outputs come back in the query dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of S queries at the last S of T positions (start_pos = T - S).

    q [B, S, H, Dqk], k [B, T, H or 1, Dqk], v [B, T, H or 1, Dv] -> [B, S, H, Dv]. A single
    key/value head is shared by every query head (the absorbed form: q = [q_lat; q_pe],
    k = [kv; k_pe], v = kv). Equal to `mha_attention` with `causal_mask(S, T, T - S)`.
    """
    S, H, Dqk = q.shape[1], q.shape[2], q.shape[3]
    T, Dv = k.shape[1], v.shape[-1]
    dt = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    if v.device.type == "cpu" and Dv < Dqk:
        # PyTorch's CPU flash kernel wants equal head dims; without it SDPA falls back to the
        # math backend, which materialises the scores. Zero columns leave the output as is.
        v = F.pad(v, (0, Dqk - Dv))
    # expand (stride 0), not enable_gqa: with one kv head and head dim 576 (V3.2's absorbed
    # form) enable_gqa sends CUDA SDPA to the math backend; the expanded view does not.
    qh = q.to(dt).transpose(1, 2)  # (B, H, S, Dqk)
    kh = k.to(dt).transpose(1, 2).expand(-1, H, -1, -1)  # (B, H, T, Dqk)
    vh = v.to(dt).transpose(1, 2).expand(-1, H, -1, -1)
    if S == T:
        o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale)
    elif S == 1:  # the newest token sees every key
        o = F.scaled_dot_product_attention(qh, kh, vh, scale=scale)
    else:  # is_causal aligns the top-left corner; queries after a cache need the bottom-right
        o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=causal_lower_right(S, T),
                                           scale=scale)
    return o[..., :Dv].transpose(1, 2).to(q.dtype)  # (B, S, H, Dv)


def mha_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                  scale: float) -> torch.Tensor:
    """q [B, S, H, Dqk], k [B, T, H, Dqk], v [B, T, H, Dv], mask [B|1, S, T] additive
    -> [B, S, H, Dv]."""
    scores = torch.einsum("bshd,bthd->bsht", q.float(), k.float()) * scale  # (B, S, H, T)
    probs = torch.softmax(scores + mask.unsqueeze(2), dim=-1)
    return torch.einsum("bsht,bthd->bshd", probs, v.float()).to(q.dtype)


def _latent_scores(q_lat, q_pe, kv, pe, scale):
    # q_lat [B, S, H, R], q_pe [B, S, H, P], kv [B, T, R], pe [B, T, P] -> [B, S, H, T]
    s = torch.einsum("bshr,btr->bsht", q_lat.float(), kv.float())
    s = s + torch.einsum("bshp,btp->bsht", q_pe.float(), pe.float())
    return s * scale


def absorbed_attention(q_lat: torch.Tensor, q_pe: torch.Tensor, kv: torch.Tensor,
                       pe: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """q_lat [B, S, H, R], q_pe [B, S, H, P], kv [B, T, R], pe [B, T, P], mask [B|1, S, T]
    -> latent output [B, S, H, R] (still to be multiplied by W_UV)."""
    scores = _latent_scores(q_lat, q_pe, kv, pe, scale) + mask.unsqueeze(2)
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("bsht,btr->bshr", probs, kv.float()).to(q_lat.dtype)


def sparse_attention(q_lat: torch.Tensor, q_pe: torch.Tensor, kv: torch.Tensor,
                     pe: torch.Tensor, idx: torch.Tensor, scale: float) -> torch.Tensor:
    """Like `absorbed_attention`, but each query reads only its K selected tokens.

    idx [B, S, K] int64 (-1 = empty slot; every row has at least one valid slot, its own
    position being visible) -> [B, S, H, R]. Memory and time are O(S·K), not O(S·T).
    """
    B = kv.shape[0]
    rows = torch.arange(B, device=kv.device)[:, None, None]
    safe = idx.clamp(min=0)
    kv_sel, pe_sel = kv[rows, safe], pe[rows, safe]  # (B, S, K, R), (B, S, K, P)
    scores = torch.einsum("bshr,bskr->bshk", q_lat.float(), kv_sel.float())
    scores = (scores + torch.einsum("bshp,bskp->bshk", q_pe.float(), pe_sel.float())) * scale
    scores = scores.masked_fill((idx < 0).unsqueeze(2), float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # (B, S, H, K)
    return torch.einsum("bshk,bskr->bshr", probs, kv_sel.float()).to(q_lat.dtype)


@torch.no_grad()
def attention_target(q_lat: torch.Tensor, q_pe: torch.Tensor, kv: torch.Tensor,
                     pe: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """The indexer's target p [B, S, T]: per-head softmax over the masked scores, summed
    over heads, L1-normalised along T (report §2.1; Megatron `compute_dsa_indexer_loss`)."""
    with torch.autocast(kv.device.type, enabled=False):
        return _target(q_lat, q_pe, kv, pe, mask, scale)


def _target(q_lat, q_pe, kv, pe, mask, scale):
    scores = _latent_scores(q_lat, q_pe, kv, pe, scale) + mask.unsqueeze(2)
    p = torch.softmax(scores, dim=-1).sum(dim=2)  # (B, S, T)
    return p / p.sum(dim=-1, keepdim=True)
