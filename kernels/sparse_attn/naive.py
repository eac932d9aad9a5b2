"""Plain-PyTorch references for sparse MLA attention over a shared latent KV cache.

Scores of query head h of token s against selected token t = idx[s, i]:
    z = scale · (q_lat[s, h] · kv[t] + q_pe[s, h] · pe[t]),   d_qk = R + P, d_v = R.
out[s, h] = Σ_i softmax_i(z) · kv[t_i],  lse[s, h] = log Σ_i exp(z_i) (natural log);
slots with idx = -1 are skipped (a row with none gives out = 0, lse = -inf).
"""

from __future__ import annotations

import torch


def _gather(x, idx):
    B = x.shape[0]
    rows = torch.arange(B, device=x.device)[:, None, None]
    return x[rows, idx.long().clamp(min=0)]  # (B, S, K, ...)


def sparse_mla_ref(q_lat, q_pe, kv, pe, idx, scale):
    """q_lat [B,S,H,R], q_pe [B,S,H,P], kv [B,T,R], pe [B,T,P], idx [B,S,K] -> (out, lse)."""
    kv_sel, pe_sel = _gather(kv, idx).float(), _gather(pe, idx).float()
    z = torch.einsum("bshr,bskr->bshk", q_lat.float(), kv_sel)
    z = (z + torch.einsum("bshp,bskp->bshk", q_pe.float(), pe_sel)) * scale
    z = z.masked_fill((idx < 0).unsqueeze(2), float("-inf"))
    lse = torch.logsumexp(z, dim=-1)  # (B, S, H)
    p = torch.exp(z - lse.unsqueeze(-1)).nan_to_num(0.0)
    out = torch.einsum("bshk,bskr->bshr", p, kv_sel)
    return out.to(q_lat.dtype), lse


def dequant_kv(kv8, kv_scale, dtype=torch.bfloat16):
    """kv8 [..., R] e4m3, kv_scale [..., R // G] fp32 (one per G-wide group) -> [..., R]."""
    g = kv8.shape[-1] // kv_scale.shape[-1]
    return (kv8.float().unflatten(-1, (kv_scale.shape[-1], g)) * kv_scale.float().unsqueeze(-1)
            ).flatten(-2).to(dtype)


def paged_to_contiguous(cache, block_table, T):
    """cache [n_pages, page, ...] + block_table [B, max_pages] -> [B, T, ...]."""
    page = cache.shape[1]
    pos = torch.arange(T, device=cache.device)
    phys = block_table[:, pos // page].long()  # (B, T)
    return cache[phys, (pos % page)[None, :]]


def sparse_mla_decode_ref(q_lat, q_pe, kv, pe, idx, scale, block_table=None, kv_scale=None):
    """Decode reference: kv/pe contiguous [B, T, .] or paged [n_pages, page, .] with
    `block_table`; kv e4m3 with `kv_scale` [.., R // 128] for the FP8 cache. idx holds
    logical positions. Returns (out [B,Sq,H,R], lse [B,Sq,H])."""
    if kv_scale is not None:
        kv = dequant_kv(kv, kv_scale, q_lat.dtype)
    if block_table is not None:
        T = block_table.shape[1] * kv.shape[1]
        kv, pe = paged_to_contiguous(kv, block_table, T), paged_to_contiguous(pe, block_table, T)
    return sparse_mla_ref(q_lat, q_pe, kv, pe, idx, scale)


def sparse_target_ref(q_lat, q_pe, kv, pe, idx, scale):
    """The indexer's KL target on the selected support: head-mean of the attention
    probabilities at each slot -> [B, S, K] fp32 (0 at -1 slots; rows sum to 1)."""
    kv_sel, pe_sel = _gather(kv, idx).float(), _gather(pe, idx).float()
    z = torch.einsum("bshr,bskr->bshk", q_lat.float(), kv_sel)
    z = (z + torch.einsum("bshp,bskp->bshk", q_pe.float(), pe_sel)) * scale
    z = z.masked_fill((idx < 0).unsqueeze(2), float("-inf"))
    return torch.softmax(z, dim=-1).mean(dim=2)
