"""Sparse MLA attention: prefill forward (out + LSE), backward, decode (contiguous, paged,
FP8 cache) and the KL target, against gather-based PyTorch references."""

import math

import pytest
import torch

pytest.importorskip("triton", reason="kernels need the triton package")

from envfactory.kernels.sparse_attn import (sparse_attn_target, sparse_mla_bwd,  # noqa: E402
                                 sparse_mla_decode, sparse_mla_decode_ref, sparse_mla_fwd,
                                 sparse_mla_lse, sparse_mla_ref, sparse_target_ref)
from envfactory.kernels.topk import topk_ref  # noqa: E402
from tests.kernels.conftest import DEVICE, rel  # noqa: E402

BF = torch.bfloat16


def inputs(B, S, T, H, R, P, K, dtype, start_pos=None):
    t = lambda *shape: (torch.randn(*shape, device=DEVICE) * 0.5).to(dtype)  # noqa: E731
    sp = T - S if start_pos is None else start_pos
    idx = topk_ref(torch.randn(B, S, T, device=DEVICE), K, sp)
    return t(B, S, H, R), t(B, S, H, P), t(B, T, R), t(B, T, P), idx


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (BF, 2e-2)])
@pytest.mark.parametrize("S,H,R,P,K", [(63, 5, 40, 12, 24), (130, 3, 24, 8, 50)])
def test_prefill_forward(S, H, R, P, K, dtype, tol):
    ql, qp, kv, pe, idx = inputs(1, S, S, H, R, P, K, dtype)
    scale = (R + P) ** -0.5
    out, lse = sparse_mla_fwd(ql, qp, kv, pe, idx, scale)
    ref, ref_lse = sparse_mla_ref(ql, qp, kv, pe, idx, scale)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert rel(out, ref) < tol
    assert rel(lse, ref_lse) < 1e-5  # scores in fp32 from identical operands


@pytest.mark.parametrize("dtype", [torch.float32, BF])
def test_lse_only_equals_the_forward_lse(dtype):
    ql, qp, kv, pe, idx = inputs(2, 45, 45, 5, 40, 12, 30, dtype)
    _, lse = sparse_mla_fwd(ql, qp, kv, pe, idx, 0.2)
    got = sparse_mla_lse(ql, qp, kv, pe, idx, 0.2)
    # same scores and running sums; a GPU build may order the row sums differently
    assert got.shape == lse.shape and torch.allclose(got, lse, rtol=1e-6, atol=1e-6)


def _strided(idx, layout, T):
    """idx [B, S, K] in a layout whose last stride is not 1 (same values)."""
    if layout == "int64-transposed":  # dense, so .to(int32) keeps the strides
        return idx.long().transpose(1, 2).contiguous().transpose(1, 2)
    # every other slot of a [B, S, 2K] tensor whose other slots hold valid but wrong keys
    dt = torch.int64 if layout == "int64-every-other" else torch.int32
    wide = torch.randint(0, T, idx.shape[:2] + (2 * idx.shape[2],), device=idx.device, dtype=dt)
    wide[..., ::2] = idx
    return wide[..., ::2]


@pytest.mark.parametrize("layout", ["int64-transposed", "int64-every-other", "int32-every-other"])
def test_strided_indices_match_the_reference(layout):
    """The kernels read a row's K slots at unit stride: the launchers (forward, decode,
    backward, target) must turn any index tensor into a contiguous int32 one. Rows 0..5
    see fewer than K keys, so -1 slots take part."""
    B, S, T, H, R, P, K = 2, 20, 20, 3, 16, 8, 7
    ql, qp, kv, pe, idx = inputs(B, S, T, H, R, P, K, torch.float32)
    strided = _strided(idx, layout, T)
    assert torch.equal(strided, idx.to(strided.dtype)) and strided.stride(-1) != 1
    ref, ref_lse = sparse_mla_ref(ql, qp, kv, pe, idx, 0.3)
    out, lse = sparse_mla_fwd(ql, qp, kv, pe, strided, 0.3)
    assert rel(out, ref) < 1e-5 and rel(lse, ref_lse) < 1e-5
    out_d, lse_d = sparse_mla_decode(ql, qp, kv, pe, strided, 0.3, n_split=2)
    assert rel(out_d, ref) < 1e-5 and rel(lse_d, ref_lse) < 1e-5
    tgt = sparse_attn_target(ql, qp, kv, pe, strided, lse, 0.3)
    assert rel(tgt, sparse_target_ref(ql, qp, kv, pe, idx, 0.3)) < 1e-5
    dout = torch.randn_like(out)
    leaves = [x.detach().clone().requires_grad_() for x in (ql, qp, kv, pe)]
    sparse_mla_ref(*leaves, idx, 0.3)[0].backward(dout)
    for method in ("fused", "two_pass", "three_pass"):
        grads = sparse_mla_bwd(ql, qp, kv, pe, strided, out, lse, dout, 0.3, method=method)
        for g, leaf in zip(grads, leaves):
            assert rel(g, leaf.grad) < 1e-5


def test_prefill_forward_many_head_blocks_heads_fastest():
    ql, qp, kv, pe, idx = inputs(1, 20, 20, 40, 16, 8, 7, torch.float32)
    out, lse = sparse_mla_fwd(ql, qp, kv, pe, idx, 0.3, block_h=16, heads_fastest=True)
    ref, ref_lse = sparse_mla_ref(ql, qp, kv, pe, idx, 0.3)
    assert rel(out, ref) < 1e-5 and rel(lse, ref_lse) < 1e-5


@pytest.mark.parametrize("knob", ["idx_ahead", "warp_specialize"])
def test_prefill_forward_schedule_knobs(knob):
    """The benchmark's schedule knobs keep the result: K = 50 over block_k 16 ends in a
    partial block, the next-block positions past k_hi are masked, and early rows see fewer
    than K keys (-1 slots)."""
    ql, qp, kv, pe, idx = inputs(1, 70, 70, 3, 24, 8, 50, torch.float32)
    out, lse = sparse_mla_fwd(ql, qp, kv, pe, idx, 0.3, block_k=16, **{knob: True})
    ref, ref_lse = sparse_mla_ref(ql, qp, kv, pe, idx, 0.3)
    assert rel(out, ref) < 1e-5 and rel(lse, ref_lse) < 1e-5


@pytest.mark.parametrize("R,groups", [(64, 4), (32, 1), (48, 3)],
                         ids=["4x16-split-scale", "per-token-split-scale", "3x16-per-element"])
def test_prefill_forward_fp8_cache(R, groups):
    """Prefill over an FP8 latent with one scale per group of channels (V3.2: 4 x 128),
    the groups' scales made to differ so a scale applied to the wrong channels shows."""
    S, H, P, K = 70, 5, 16, 30
    ql, qp, kv, pe, idx = inputs(1, S, S, H, R, P, K, BF)
    kvg = kv.float().unflatten(-1, (groups, R // groups))
    s = kvg.abs().amax(-1) / 448 + 1e-6
    kv8 = (kvg / s[..., None]).flatten(-2).to(torch.float8_e4m3fn)
    s = s * torch.linspace(0.5, 2.0, groups, device=DEVICE)  # groups' scales differ
    scale = (R + P) ** -0.5
    out, lse = sparse_mla_fwd(ql, qp, kv8, pe, idx, scale, kv_scale=s)
    ref, ref_lse = sparse_mla_decode_ref(ql, qp, kv8, pe, idx, scale, kv_scale=s)
    assert rel(out, ref) < 2e-2 and rel(lse, ref_lse) < 2e-3


# (a GPU's tensor cores need k >= 16: its pass 2 takes head blocks of 8 (16 rows of
# [P; dS]), its dq pass 16 keys a step; the interpreter takes the smaller tiles)
_GPU = DEVICE == "cuda"


@pytest.mark.parametrize("method,kw", [("fused", {}), ("two_pass", {}),
                                       ("two_pass", {"reload": False, "scratch_bytes": 1}),
                                       ("two_pass", {"scratch_bytes": 20 * 2 * 5 * 24 * 4,
                                                     "dkv_block_h": 8 if _GPU else 2,
                                                     "dkv_block_k": 16}),
                                       ("three_pass", {}),
                                       ("three_pass", {"scratch_bytes": 20 * 2 * 5 * 24 * 4,
                                                       "dq_block_k": 16 if _GPU else 8})],
                         ids=["fused", "two-pass", "two-pass-one-row-chunks", "two-pass-3-chunks",
                              "three-pass", "three-pass-chunks"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (BF, 3e-2)])
def test_backward(dtype, tol, method, kw):
    """The backward methods against autograd through the reference, 2 x 63 tokens. Two-pass:
    scratch chunks of one token, and of 20 (fp32) or 40 (bf16) tokens with a partial last
    chunk; pass 2 over head blocks of 2 (GPU: 8; 5 heads: a partial last block) and a partial
    last key block (24 over 16). Three-pass: its dq pass over 8 keys a step (3 steps; GPU: 16,
    a partial second step)."""
    S, H, R, P, K = 63, 5, 40, 12, 24
    ql, qp, kv, pe, idx = inputs(2, S, S, H, R, P, K, dtype)
    scale = (R + P) ** -0.5
    out, lse = sparse_mla_fwd(ql, qp, kv, pe, idx, scale)
    dout = torch.randn_like(out)
    leaves = [x.detach().float().requires_grad_() for x in (ql, qp, kv, pe)]
    ref, _ = sparse_mla_ref(*leaves, idx, scale)
    ref.backward(dout.float())
    grads = sparse_mla_bwd(ql, qp, kv, pe, idx, out, lse, dout, scale, method=method, **kw)
    for g, leaf in zip(grads, leaves):
        assert g.dtype == dtype and g.shape == leaf.shape
        assert rel(g, leaf.grad) < tol


def _paged(x, page, perm):
    """x [B, T, D] -> pages [n, page, D] laid out by block table perm [B, n_pages]."""
    B, T, D = x.shape
    out = torch.full((perm.numel(), page, D), float("nan"), device=x.device).to(x.dtype)
    pos = torch.arange(T, device=x.device)
    for b in range(B):
        out[perm[b, pos // page].long(), pos % page] = x[b]
    return out


@pytest.mark.parametrize("mode", ["contiguous", "paged", "paged_fp8", "contiguous_fp8"])
def test_decode(mode):
    B, Sq, T, H, R, P, K = 3, 2, 130, 5, 48, 16, 40
    ql, qp, kv, pe, idx = inputs(B, Sq, T, H, R, P, K, BF)
    scale = (R + P) ** -0.5
    kw = {}
    if mode == "contiguous_fp8":  # four groups of 12 channels: the per-channel scale path
        s = kv.float().unflatten(-1, (4, 12)).abs().amax(-1) / 448 + 1e-6
        kv = (kv.float().unflatten(-1, (4, 12)) / s[..., None]).flatten(-2).to(torch.float8_e4m3fn)
        kw["kv_scale"] = s
    elif mode != "contiguous":
        page = 16
        n = math.ceil(T / page)
        perm = torch.randperm(B * n, device=DEVICE).view(B, n).int()
        if mode == "paged_fp8":
            g = 3  # three groups of 16 channels, one fp32 scale each
            s = kv.float().unflatten(-1, (g, R // g)).abs().amax(-1) / 448 + 1e-6
            kv8 = (kv.float().unflatten(-1, (g, R // g)) / s[..., None]).flatten(-2)
            kv = _paged(kv8.to(torch.float8_e4m3fn).view(torch.uint8), page, perm).view(
                torch.float8_e4m3fn)
            kw["kv_scale"] = _paged(s, page, perm).nan_to_num(1.0)
        else:
            kv = _paged(kv, page, perm)
        pe = _paged(pe, page, perm)
        kw["block_table"] = perm
    ref, ref_lse = sparse_mla_decode_ref(ql, qp, kv, pe, idx, scale, **kw)
    for n_split in (1, 3):
        out, lse = sparse_mla_decode(ql, qp, kv, pe, idx, scale, n_split=n_split, **kw)
        assert rel(out, ref) < 2e-2
        assert rel(lse, ref_lse) < 2e-3


@pytest.mark.parametrize("groups", [4, 2])
def test_decode_paged_fp8_split_scale(groups):
    """Paged FP8 cache in 2 or 4 power-of-two groups (the split-scale kernel), split-K."""
    B, Sq, T, H, R, P, K = 2, 2, 100, 3, 64, 16, 30
    ql, qp, kv, pe, idx = inputs(B, Sq, T, H, R, P, K, BF)
    page, n = 16, math.ceil(T / 16)
    perm = torch.randperm(B * n, device=DEVICE).view(B, n).int()
    kvg = kv.float().unflatten(-1, (groups, R // groups))
    sc = kvg.abs().amax(-1) / 448 + 1e-6
    kv8 = (kvg / sc[..., None]).flatten(-2).to(torch.float8_e4m3fn)
    sc = sc * torch.linspace(0.5, 2.0, groups, device=DEVICE)
    kv8 = _paged(kv8.view(torch.uint8), page, perm).view(torch.float8_e4m3fn)
    kw = dict(block_table=perm, kv_scale=_paged(sc, page, perm).nan_to_num(1.0))
    pe = _paged(pe, page, perm)
    scale = (R + P) ** -0.5
    ref, ref_lse = sparse_mla_decode_ref(ql, qp, kv8, pe, idx, scale, **kw)
    for n_split in (1, 3):
        out, lse = sparse_mla_decode(ql, qp, kv8, pe, idx, scale, n_split=n_split, **kw)
        assert rel(out, ref) < 2e-2 and rel(lse, ref_lse) < 2e-3


def test_target_is_head_mean_of_probabilities():
    S, H, R, P, K = 63, 5, 40, 12, 24
    ql, qp, kv, pe, idx = inputs(2, S, S, H, R, P, K, torch.float32)
    _, lse = sparse_mla_fwd(ql, qp, kv, pe, idx, 0.2)
    tgt = sparse_attn_target(ql, qp, kv, pe, idx, lse, 0.2)
    ref = sparse_target_ref(ql, qp, kv, pe, idx, 0.2)
    assert rel(tgt, ref) < 1e-5
    assert torch.allclose(tgt.sum(-1), torch.ones(2, S, device=DEVICE), atol=1e-5)


def test_decode_split_fills_the_gpu_without_over_splitting(monkeypatch):
    """The launcher's split count: about one program per SM, at most 32, at least 64
    selections per split (132 SMs: an H100/H200)."""
    from envfactory.kernels import _common
    from envfactory.kernels.sparse_attn.triton_fwd import decode_split
    monkeypatch.setitem(_common._SM_COUNT, 0, 132)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    cuda = torch.device("cuda", 0)
    assert decode_split(1, 128, 2048, cuda) == 32       # 2 head blocks: split all the way
    assert decode_split(32, 128, 2048, cuda) == 2       # 64 programs -> 132 // 64
    assert decode_split(64, 128, 2048, cuda) == 1
    assert decode_split(256, 128, 2048, cuda) == 1      # the batch alone fills the GPU
    assert decode_split(1, 128, 256, cuda) == 4         # >= 64 selections per split
    assert decode_split(1, 16, 2048, cuda) == 32
    assert decode_split(8, 16, 2048, cuda, block_h=8) == 8
    assert decode_split(4, 128, 2048, "cpu") == 4
