"""Plain-PyTorch reference for the fused indexer logits (dsa.md §1.3, model/indexer.py).

logits[b, s, t] = Σ_j w[b, s, j] · ReLU(q[b, s, j] · k[b, t])   for t <= start_pos + s,
                 -inf                                           otherwise (causal).
FP8: logits = k_s[t] · Σ_j w[s, j] · q_s[s, j] · ReLU(q8[s, j] · k8[t]), products in fp32
on the dequantised e4m3 values (model/fp8.py `fp8_index`).
"""

from __future__ import annotations

import torch


def _causal(out: torch.Tensor, start_pos: int) -> torch.Tensor:
    S, T = out.shape[-2:]
    pos = torch.arange(start_pos, start_pos + S, device=out.device)
    visible = torch.arange(T, device=out.device)[None, :] <= pos[:, None]
    return out.masked_fill(~visible, float("-inf"))


def indexer_logits_ref(q, k, w, start_pos: int = 0, causal: bool = True):
    """q [B, S, H, D], k [B, T, D], w [B, S, H] -> [B, S, T] fp32."""
    r = torch.einsum("bshd,btd->bsht", q.float(), k.float()).relu()
    out = torch.einsum("bsht,bsh->bst", r, w.float())
    return _causal(out, start_pos) if causal else out


def indexer_logits_fp8_ref(q8, q_s, k8, k_s, w, start_pos: int = 0, causal: bool = True):
    """q8 [B, S, H, D] e4m3, q_s [B, S, H], k8 [B, T, D] e4m3, k_s [B, T], w [B, S, H]."""
    r = torch.einsum("bshd,btd->bsht", q8.float(), k8.float()).relu()
    out = torch.einsum("bsht,bsh->bst", r, w.float() * q_s.float()) * k_s.float()[:, None, :]
    return _causal(out, start_pos) if causal else out
