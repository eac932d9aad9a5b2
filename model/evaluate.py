"""Evaluation: validation loss and how well the lightning indexer ranks keys.

- `val_windows(tokens, seq_len)`: non-overlapping windows of seq_len + 1 tokens.
- `val_loss(model, windows, sparse)`: mean next-token cross-entropy over every position,
  with full causal attention (`sparse=False`) or the indexer's top-k (`sparse=True`).
- `indexer_recall(model, windows, ks)`: for each layer and query, the k keys the indexer
  would select (`select_topk`, exactly what sparse attention uses) against the k keys the
  *dense* attention weights most (its head-summed, L1-normalised distribution p, the
  warm-up's KL target). recall@k = |indexer top-k ∩ attention top-k| / k, averaged over
  queries and layers. Reported two ways:
  * `recall`: only queries that see more than k keys (for the others any selection is
    exact, so counting them would inflate the figure);
  * `recall_all`: every query, those trivial ones scoring 1.
  Also `mass`: the share of p's mass that the indexer's top-k holds (what sparse attention
  keeps of the dense attention), and the recall of a sliding window (the k most recent keys)
  as a baseline an indexer must beat to be worth its cost.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .indexer import select_topk
from .transformer import Transformer


def val_windows(tokens: np.ndarray, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows [N, seq_len + 1] int64 from a token stream."""
    n = (len(tokens) - 1) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise ValueError(f"{len(tokens)} tokens cannot fill a window of {seq_len + 1}")
    t = torch.from_numpy(tokens[: n * seq_len + 1].astype(np.int64))
    return torch.stack([t[i * seq_len: (i + 1) * seq_len + 1] for i in range(n)])


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def val_loss(model: Transformer, windows: torch.Tensor, sparse: bool, batch_size: int = 16) -> float:
    """Mean cross-entropy (nats per token) over all windows [N, S + 1]."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        w = windows[i:i + batch_size].to(device)
        with _autocast(device):
            logits, _ = model(w[:, :-1], sparse=sparse)
        total += F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(), reduction="sum").item()
        count += w[:, 1:].numel()
    model.train(was_training)
    return total / count


def recall_terms(scores: torch.Tensor, p: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """Per-query sums for one layer: scores (indexer, unmasked) and p (attention) [B, S, S].

    Returns for the queries that see more than k keys (positions >= k): `hits` (summed
    |indexer ∩ attention top-k| / k), `local` (the same for the k most recent keys),
    `mass` (summed p over the indexer's selection), and `n` (how many such queries).
    """
    B, S, _ = scores.shape
    rows = torch.arange(S, device=scores.device) >= k  # these see k + 1 keys or more
    n = int(rows.sum()) * B
    if n == 0:
        zero = torch.zeros((), device=scores.device)
        return {"hits": zero, "local": zero, "mass": zero, "n": 0}
    sel = select_topk(scores, k)[:, rows]  # (B, R, k), all valid on these rows
    pr = p[:, rows]  # (B, R, T)
    best = pr.topk(k, dim=-1).indices  # the attention's own top-k
    in_best = torch.zeros_like(pr, dtype=torch.bool).scatter_(-1, best, True)
    hits = in_best.gather(-1, sel).float().sum(-1) / k  # (B, R)
    q_pos = torch.arange(S, device=scores.device)[rows]
    recent = q_pos[:, None] - torch.arange(k, device=scores.device)[None, :]  # (R, k)
    local = in_best.gather(-1, recent.expand(B, -1, -1)).float().sum(-1) / k
    mass = pr.gather(-1, sel).sum(-1)
    return {"hits": hits.sum(), "local": local.sum(), "mass": mass.sum(), "n": n}


@torch.no_grad()
def indexer_recall(model: Transformer, windows: torch.Tensor, ks: list[int],
                   batch_size: int = 8) -> dict[int, dict]:
    """recall@k of the indexer against the dense attention's top-k, for each k in ks.

    windows [N, S] (or [N, S + 1]: the last column is dropped), all starting at position 0.
    Returns {k: {"recall", "recall_all", "mass", "local_recall", "per_layer", "queries"}}.
    """
    device = next(model.parameters()).device
    if windows.shape[1] > model.cfg.max_seq_len:
        windows = windows[:, :-1]
    S = windows.shape[1]
    L = len(model.layers)
    acc = {k: {"hits": [0.0] * L, "local": [0.0] * L, "mass": [0.0] * L, "n": [0] * L} for k in ks}

    def make_hook(li):
        def hook(mod, args):
            x, cos, sin = args[0], args[1], args[2]
            scores, p = mod.probe(x, cos, sin)
            for k in ks:
                t = recall_terms(scores, p, k)
                for key in ("hits", "local", "mass"):
                    acc[k][key][li] += float(t[key])
                acc[k]["n"][li] += t["n"]
        return hook

    hooks = [layer.self_attn.register_forward_pre_hook(make_hook(i))
             for i, layer in enumerate(model.layers)]
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(windows), batch_size):
            with _autocast(device):
                model(windows[i:i + batch_size].to(device), sparse=False)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    out = {}
    n_queries = len(windows) * S
    for k in ks:
        a = acc[k]
        n = a["n"][0]
        if n == 0:
            raise ValueError(f"k={k} leaves no query with more than k visible keys at context {S}")
        per_layer = [h / n for h in a["hits"]]
        recall = sum(per_layer) / L
        trivial = n_queries - n  # queries that see <= k keys: recall 1 by construction
        out[k] = {
            "recall": recall,
            "recall_all": (recall * n + trivial) / n_queries,
            "mass": sum(a["mass"]) / (L * n),
            "local_recall": sum(a["local"]) / (L * n),
            "per_layer": per_layer,
            "queries": n,
            "context": S,
        }
    return out

