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

Load balancing (DeepSeek-V3 §2.1.2, auxiliary-loss-free): in training forward passes each
Gate counts the tokens routed to each expert (`expert_load`, a buffer outside the state
dict, so checkpoints are unchanged); after each optimizer step `balance_experts(model, γ)`
moves every bias by γ·sign(mean load − load_e), up for under-loaded experts and down for
over-loaded ones, and clears the counts (V3: γ = 0.001 for most of training, 0 at the end).
Counts are per process: under data parallelism, all-reduce `expert_load` before updating.
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
        # int64: a float buffer would follow model.to(bfloat16), which counts exactly only to 256
        self.register_buffer("expert_load", torch.zeros(cfg.n_routed_experts, dtype=torch.int64),
                             persistent=False)

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
        if self.training and torch.is_grad_enabled():  # training steps only: not eval, not no_grad
            self.expert_load += torch.bincount(ids.flatten(), minlength=c.n_routed_experts)
        weights = scores.gather(1, ids)
        weights = weights / weights.sum(dim=-1, keepdim=True) * c.route_scale
        return weights.to(x.dtype), ids

    def load_ratio(self) -> float:
        """max / mean of the counted loads (1.0 = perfectly balanced; nan before any count)."""
        load = self.expert_load.double()
        return (load.max() / load.mean()).item()

    @torch.no_grad()
    def update_bias(self, gamma: float) -> None:
        """bias_e += gamma * sign(mean load - load_e), then clear the counts (gamma 0: only clear)."""
        load = self.expert_load.float()
        if gamma and load.sum() > 0:
            step = gamma * torch.sign(load.mean() - load)
            self.e_score_correction_bias.add_(step.to(self.e_score_correction_bias.dtype))
        self.expert_load.zero_()


def gates(model: nn.Module) -> list[Gate]:
    return [m for m in model.modules() if isinstance(m, Gate)]


def balance_experts(model: nn.Module, gamma: float) -> float | None:
    """One bias update of every MoE layer from the loads counted since the last one (see the
    module docstring). Returns the worst layer's max/mean load ratio over those counts, or
    None when the model has no MoE layer or nothing was counted."""
    worst = None
    for gate in gates(model):
        if gate.expert_load.sum() > 0:
            r = gate.load_ratio()
            worst = r if worst is None else max(worst, r)
        gate.update_bias(gamma)
    return worst


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
