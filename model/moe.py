"""DeepSeek-V3 mixture of experts: sigmoid gate, group-limited routing, a shared expert.

Routing of one token (reference `Gate`, dsa.md §1.1: 256 experts in 8 groups, 4 groups
kept, 8 experts active, route_scale 2.5):

1. s = sigmoid(x · W_gate^T)                         affinities, [E]
2. choice = s + e_score_correction_bias              the bias steers *selection* only
   (auxiliary-loss-free load balancing; it is not trained by gradients)
3. each group's score = sum of its two best `choice` values; keep n_limited_groups groups
4. top n_activated_experts experts of the kept groups, by `choice`
5. weights = s[chosen] / sum(s[chosen]) * route_scale

Output = Σ weights · expert(x) + shared_experts(x). Experts run as a loop over the experts
that received tokens: simple and exact, not fast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import MLP


class Gate(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.dim))
        self.e_score_correction_bias = nn.Parameter(
            torch.zeros(cfg.n_routed_experts, dtype=torch.float32), requires_grad=False)

    def forward(self, x: torch.Tensor):
        """x [N, dim] -> (weights [N, k] in x's dtype, expert ids [N, k] int64)."""
        c = self.cfg
        scores = F.linear(x.float(), self.weight.float()).sigmoid()  # (N, E)
        choice = scores + self.e_score_correction_bias.float()
        if c.n_expert_groups > 1:
            grouped = choice.view(x.shape[0], c.n_expert_groups, -1)  # (N, G, E/G)
            group_score = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(-1)  # (N, G)
            keep = group_score.topk(c.n_limited_groups, dim=-1).indices  # (N, G_keep)
            group_mask = torch.ones_like(group_score, dtype=torch.bool).scatter_(1, keep, False)
            choice = grouped.masked_fill(group_mask.unsqueeze(-1), float("-inf")).flatten(1)
        ids = choice.topk(c.n_activated_experts, dim=-1).indices  # (N, k)
        weights = scores.gather(1, ids)
        weights = weights / weights.sum(dim=-1, keepdim=True) * c.route_scale
        return weights.to(x.dtype), ids


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate = Gate(cfg)
        self.experts = nn.ModuleList(MLP(cfg.dim, cfg.moe_inter_dim) for _ in range(cfg.n_routed_experts))
        self.shared_experts = MLP(cfg.dim, cfg.n_shared_experts * cfg.moe_inter_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, dim)
        weights, ids = self.gate(x)  # (N, k), (N, k)
        out = torch.zeros_like(x)
        for e in ids.unique().tolist():
            tok, slot = (ids == e).nonzero(as_tuple=True)
            out.index_add_(0, tok, self.experts[e](x[tok]) * weights[tok, slot, None])
        return (out + self.shared_experts(x)).view(shape)
