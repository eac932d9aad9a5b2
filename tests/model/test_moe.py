"""Sigmoid gating with group-limited routing and the shared expert, against loops."""

import torch

from envfactory.model.config import get_config
from envfactory.model.moe import MoE
from tests.model.conftest import rel_err

CFG = get_config("tiny", n_routed_experts=12, n_expert_groups=4, n_limited_groups=2,
                 n_activated_experts=3, route_scale=2.5, n_dense_layers=0)


def make_moe():
    moe = MoE(CFG)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.3)
    moe.gate.e_score_correction_bias.data = torch.randn(12) * 0.2
    return moe


def naive_route(moe, x):
    """Per token (12 experts, 4 groups of 3): keep the 2 best groups (by their top-2 biased scores), then top-3 experts."""
    out = []
    for v in x:
        s = torch.sigmoid(moe.gate.weight @ v)
        c = s + moe.gate.e_score_correction_bias
        group_score = [sum(sorted(c[3 * g:3 * g + 3].tolist())[1:]) for g in range(4)]  # best 2 of 3
        groups = sorted(range(4), key=lambda g: -group_score[g])[:2]
        allowed = [e for e in range(12) if e // 3 in groups]
        chosen = sorted(allowed, key=lambda e: -c[e].item())[:3]
        w = s[chosen] / s[chosen].sum() * 2.5
        out.append(dict(zip(chosen, w.tolist())))
    return out


def test_routing_matches_naive_and_respects_groups():
    moe = make_moe()
    x = torch.randn(29, CFG.dim)
    weights, ids = moe.gate(x)
    for t, ref in enumerate(naive_route(moe, x)):
        got = dict(zip(ids[t].tolist(), weights[t].tolist()))
        assert got.keys() == ref.keys()
        assert all(abs(got[e] - ref[e]) < 1e-5 for e in ref)
        assert len({e // 3 for e in got}) <= 2
    assert torch.allclose(weights.sum(-1), torch.full((29,), 2.5))


def test_moe_output_matches_loop():
    moe = make_moe()
    x = torch.randn(2, 13, CFG.dim)
    with torch.no_grad():
        got = moe(x)
        flat = x.reshape(-1, CFG.dim)
        ref = torch.stack([moe.shared_experts(v) + sum(w * moe.experts[e](v) for e, w in r.items())
                           for v, r in zip(flat, naive_route(moe, flat))])
    assert rel_err(got.reshape(-1, CFG.dim), ref) < 1e-5
