"""Plain-PyTorch reference for the indexer's KL loss on the selected support (sparse stage,
dsa.md §2.1; model/indexer.py `index_kl` with the top-k mask).

logit[s, i] = Σ_j w[s, j] · ReLU(q[s, j] · k[idx[s, i]])   (slots with idx = -1 excluded)
loss = mean_s Σ_i target[s, i] · (log target[s, i] − log_softmax_i(logit[s, ·]))
Differentiable in q, k and w through autograd.
"""

from __future__ import annotations

import torch


def indexer_kl_ref(q, k, w, idx, target):
    """q [B,S,H,D], k [B,T,D], w [B,S,H], idx [B,S,K], target [B,S,K] -> scalar loss."""
    B = k.shape[0]
    rows = torch.arange(B, device=k.device)[:, None, None]
    valid = idx >= 0
    k_sel = k[rows, idx.long().clamp(min=0)].float()  # (B, S, K, D)
    r = torch.einsum("bshd,bskd->bshk", q.float(), k_sel).relu()
    logit = torch.einsum("bshk,bsh->bsk", r, w.float())
    log_p = torch.log_softmax(logit.masked_fill(~valid, float("-inf")), dim=-1)
    t = target.float()
    terms = torch.where(valid & (t > 0), t * (t.clamp_min(1e-30).log() - log_p), 0.0)
    return terms.sum(-1).mean()
