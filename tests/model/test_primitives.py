"""RoPE/YaRN, Hadamard and FP8 helpers against independent formulas."""

import math

import pytest
import torch

from envfactory.model.config import get_config
from envfactory.model.fp8 import (
    E4M3,
    act_dequant,
    act_quant,
    fake_quant,
    fp8_index,
    weight_dequant,
    weight_quant,
)
from envfactory.model.hadamard import hadamard_matrix, hadamard_transform
from envfactory.model.rope import apply_rope, rope_tables, yarn_inv_freq
from tests.model.conftest import rel_err


def sylvester(d: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < d:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h / math.sqrt(d)


@pytest.mark.parametrize("d", [2, 32, 128])
def test_hadamard_matches_sylvester_matrix(d):
    x = torch.randn(3, 5, d, dtype=torch.float64)
    assert rel_err(hadamard_transform(x), x @ sylvester(d).T) < 1e-12
    H = hadamard_matrix(d).double()
    assert torch.allclose(H @ H, torch.eye(d, dtype=torch.float64), atol=1e-6)


def test_hadamard_rejects_non_power_of_two():
    with pytest.raises(ValueError):
        hadamard_transform(torch.randn(4, 24))


def test_rope_layouts_are_a_channel_permutation_of_each_other():
    cos, sin = rope_tables(get_config("tiny"), 13)
    x = torch.randn(2, 13, 3, 8)
    inter = apply_rope(x, cos, sin, interleaved=True)
    perm = torch.tensor([0, 2, 4, 6, 1, 3, 5, 7])  # interleaved pairs -> half-split pairs
    half = apply_rope(x[..., perm], cos, sin, interleaved=False)
    assert rel_err(half, inter[..., perm]) < 1e-6


def test_rope_dot_products_depend_on_relative_position_only():
    cfg = get_config("tiny")
    cos, sin = rope_tables(cfg, 40)
    q, k = torch.randn(8), torch.randn(8)
    rot = lambda v, p: apply_rope(v.expand(1, 40, 1, 8), cos, sin, False)[0, p, 0]
    a = rot(q, 17) @ rot(k, 5)
    b = rot(q, 31) @ rot(k, 19)
    c = rot(q, 31) @ rot(k, 20)
    assert abs(a - b) < 1e-5 and abs(a - c) > 1e-3


def test_yarn_scales_slow_channels_only():
    base = get_config("tiny", max_seq_len=256)  # no YaRN: max_seq_len <= original_seq_len
    long = get_config("deepseek-v3.2")
    plain = 1.0 / (10000.0 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64))
    f = yarn_inv_freq(long).double()
    assert not base.yarn and long.yarn
    assert torch.allclose(f[:5], plain[:5].float().double(), rtol=1e-6)  # fast channels kept
    assert torch.allclose(f[-5:], (plain[-5:] / 40).float().double(), rtol=1e-6)  # slow / factor
    mid = f[10:20] / plain[10:20]
    assert ((mid < 1) & (mid > 1 / 40)).any()  # the ramp blends in between


def test_softmax_scale_has_mscale_squared():
    cfg = get_config("deepseek-v3.2")
    m = 0.1 * math.log(40) + 1
    assert abs(cfg.softmax_scale - 192**-0.5 * m * m) < 1e-12
    assert abs(m - 1.3689) < 1e-4  # dsa.md §1.2
    assert get_config("tiny").softmax_scale == 24**-0.5


@pytest.mark.parametrize("fmt", [None, "ue8m0"])
def test_act_quant_scales_and_error(fmt):
    x = torch.randn(4, 7, 256) * torch.logspace(-3, 2, 256)
    x8, s = act_quant(x, 128, fmt)
    assert x8.dtype == E4M3 and s.shape == (4, 7, 2)
    amax = x.view(4, 7, 2, 128).abs().amax(-1)
    if fmt is None:
        assert torch.allclose(s, amax / 448, rtol=1e-6)
    else:
        assert torch.equal(s, torch.exp2(torch.log2(s).round()))  # powers of two
        assert (s >= amax / 448).all() and (s < 2 * amax / 448).all()
    back = act_dequant(x8, s)
    # e4m3 keeps 3 mantissa bits: relative error <= 2^-4 for normal values
    big = x.abs() > s.repeat_interleave(128, -1) * 2**-6
    assert ((back - x).abs()[big] <= x.abs()[big] * 2**-4 + 1e-12).all()
    assert rel_err(back, x) < 0.05


def test_fake_quant_rounds_forward_and_passes_gradients_through():
    """Forward: the e4m3 round trip. Backward: the identity; differentiating the casts
    would round small gradients to e4m3 and flush most of them to zero."""
    x = (torch.randn(4, 256) * 3).requires_grad_()
    y = fake_quant(x, 128)
    assert torch.equal(y.detach(), act_dequant(*act_quant(x.detach(), 128)))
    assert not torch.equal(y.detach(), x.detach())
    g = torch.randn(4, 256) * 1e-3
    y.backward(g)
    assert torch.equal(x.grad, g)


def test_weight_quant_blocks_and_round_trip():
    w = torch.randn(300, 200)
    w[:128, :128] *= 100  # one loud block must not degrade the others
    w8, s = weight_quant(w, 128)
    assert w8.shape == w.shape and s.shape == (3, 2)
    assert torch.allclose(s[0, 0], w[:128, :128].abs().max() / 448)
    assert torch.allclose(s[2, 1], w[256:, 128:].abs().max() / 448)
    back = weight_dequant(w8, s, 128)
    assert rel_err(back[128:], w[128:]) < 0.04


def test_fp8_index_matches_dequantised_formula():
    B, S, T, H, D = 2, 5, 11, 4, 32
    q, k, w = torch.randn(B, S, H, D), torch.randn(B, T, D), torch.randn(B, S, H)
    q8, qs = act_quant(q, D)
    k8, ks = act_quant(k, D)
    got = fp8_index(q8, qs[..., 0], k8, ks[..., 0], w)
    qd, kd = act_dequant(q8, qs), act_dequant(k8, ks)
    ref = torch.zeros(B, S, T)
    for b in range(B):
        for s in range(S):
            for t in range(T):
                ref[b, s, t] = sum(w[b, s, h] * torch.relu(qd[b, s, h] @ kd[b, t]) for h in range(H))
    assert rel_err(got, ref) < 1e-5
