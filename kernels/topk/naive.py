"""Plain-PyTorch reference for causal top-k selection (model/indexer.py `select_topk`).

Row s (position start_pos + s) sees keys 0..start_pos+s. It keeps min(k, visible) of them:
the largest scores, ties going to the earlier token (a stable descending sort). The kernel
returns the same *set* with the -1 padding last (in ascending order on some paths only: see
`topk_rows`); this reference returns each row ascending.
"""

from __future__ import annotations

import torch


def topk_ref(scores: torch.Tensor, k: int, start_pos: int = 0) -> torch.Tensor:
    """scores [B, S, T] -> idx [B, S, k] int32, each row ascending, -1 padded at the end."""
    B, S, T = scores.shape
    pos = torch.arange(start_pos, start_pos + S, device=scores.device)
    visible = torch.arange(T, device=scores.device)[None, :] <= pos[:, None]
    masked = scores.float().masked_fill(~visible, float("-inf"))
    order = masked.sort(dim=-1, descending=True, stable=True).indices  # (B, S, T)
    K = min(k, T)
    idx = order[..., :K]
    n_valid = (pos + 1).clamp(max=K)
    slot = torch.arange(K, device=scores.device)
    big = torch.iinfo(torch.int64).max
    idx = idx.masked_fill(slot[None, :] >= n_valid[:, None], big).sort(dim=-1).values
    idx = idx.masked_fill(idx == big, -1).to(torch.int32)
    if K < k:
        idx = torch.cat([idx, idx.new_full((B, S, k - K), -1)], dim=-1)
    return idx


def canonical(idx: torch.Tensor) -> torch.Tensor:
    """Rows of indices sorted ascending with the -1 slots last (int64): compares selections
    whatever order a kernel wrote them in."""
    idx = idx.long()
    big = torch.iinfo(torch.int64).max
    idx = torch.where(idx < 0, big, idx).sort(dim=-1).values
    return idx.masked_fill(idx == big, -1)
