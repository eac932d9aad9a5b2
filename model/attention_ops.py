"""Attention cores, free of parameters: the seam where kernels plug in.

Three ways to compute the same top-k attention, and the indexer's training target:

- `mha_attention`: the masked-dense oracle in MHA form (per-head keys and values expanded
  from the latent), as the reference prefill does (dsa.md §1.2).
- `absorbed_attention`: the MQA form over the latent cache, q_nope absorbed through
  W_UK, the output staying in the latent space until W_UV (reference decode).
- `sparse_attention`: the MQA form over the *gathered* top-k latents only, the computation
  FlashMLA's sparse kernels perform (`indices` [B, S, K], -1 = no token). `attn_impl="triton"`
  replaces this function.
- `attention_target`: the head-summed, L1-normalised attention distribution for the KL loss.

All scores and softmaxes run in float32; outputs come back in the query dtype.
"""

from __future__ import annotations

import torch


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
