"""Sigmoid gating with group-limited routing and the shared expert, against loops; the
auxiliary-loss-free bias update."""

import torch

from envfactory.model.config import get_config
from envfactory.model.moe import MoE, balance_experts
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


def skewed_gate():
    """A gate whose expert 0 wins most tokens: its weight leans along a direction u that
    every token shares, so ~all tokens pick it (load ratio ~3 = 12 experts / 3 active / 1.05)."""
    gate = MoE(CFG).gate
    torch.nn.init.normal_(gate.weight, std=0.1)
    u = torch.nn.functional.normalize(torch.randn(CFG.dim), dim=0)
    with torch.no_grad():
        gate.weight[0] += u
    return gate, lambda n: torch.randn(n, CFG.dim) + 2.0 * u


def load_ratio(gate, x):
    with torch.no_grad():
        _, ids = gate(x)
    load = torch.bincount(ids.flatten(), minlength=CFG.n_routed_experts).double()
    return (load.max() / load.mean()).item()


def test_bias_updates_balance_a_skewed_gate():
    gate, tokens = skewed_gate()
    held_out = tokens(2048)
    before = load_ratio(gate, held_out)
    gate.train()
    ratios = []
    for _ in range(300):  # V3's gamma: the bias has to travel ~0.25, 0.001 a step
        gate(tokens(256))
        ratios.append(balance_experts(gate, 0.001))
    after = load_ratio(gate, held_out)
    assert before > 2.5 and after < 1.3  # measured 3.25 -> 1.09 on 2048 held-out tokens
    # what balance_experts reports, per 256-token step: measured 3.27 first, 1.20 at the end
    assert ratios[0] > 2.5 and sum(ratios[-20:]) / 20 < 1.35
    bias = gate.e_score_correction_bias
    assert bias[0] == bias.min() and bias.abs().max() <= 0.3 + 1e-6


def test_zero_speed_leaves_the_bias_and_clears_the_counts():
    gate, tokens = skewed_gate()
    bias_before = gate.e_score_correction_bias.clone()
    gate.train()
    gate(tokens(64))
    assert gate.expert_load.sum() == 64 * CFG.n_activated_experts
    assert balance_experts(gate, 0.0) > 2.0
    assert torch.equal(gate.e_score_correction_bias, bias_before)
    assert gate.expert_load.sum() == 0
    assert balance_experts(gate, 0.001) is None  # nothing counted: no update either
    assert torch.equal(gate.e_score_correction_bias, bias_before)


def test_loads_are_counted_only_in_training_forwards_and_not_saved():
    moe = make_moe()
    x = torch.randn(2, 7, CFG.dim)
    moe.eval()
    moe(x)
    moe.train()
    with torch.no_grad():
        moe(x)
    assert moe.gate.expert_load.sum() == 0
    moe(x)
    _, ids = moe.gate(x.view(-1, CFG.dim))  # counts a second time
    assert torch.equal(moe.gate.expert_load, 2 * torch.bincount(ids.flatten(), minlength=12))
    # outside the state dict: checkpoints written before the counts existed still load strictly
    assert not any("expert_load" in k for k in moe.state_dict())
