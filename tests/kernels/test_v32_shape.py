"""The kernels at DeepSeek-V3.2's real attention shape, against the naive references.

V3.2: 128 query heads over a 512-wide latent plus 64 RoPE channels (softmax scale
1/sqrt(128 + 64)), top-k 2048, the indexer's 64 heads x 128 dims in FP8 e4m3. On a GPU
(`gpu` marker) the checks run at that shape over 4096 + 37 keys with the last 300 query
rows, batch 1, bf16 (decode: 4 sequences over a paged cache). The same checks, taking the
shape as parameters, also run at a tiny shape under the interpreter with the normal suite,
so their logic is exercised everywhere:

- select: `dsa_select` (FP8 operands) against the naive logits' selection, as sets per row,
  up to keys whose naive score is within the kernel's logit error of the k-th largest; on
  the interpreter also exactly against `topk_ref` of the kernel's own logits (the approach
  of test_dsa_model). A small `maxg` adds the rows the selection splits (decode path) or
  bounds from the indexer's group maxima, and `topk_rows` from those maxima is exact.
- forward / backward: `sparse_mla_fwd`, and the autograd `sparse_mla_with_lse`'s gradients
  (and the two-pass `sparse_mla_bwd`'s) against autograd through `sparse_mla_ref` (bounds of
  test_sparse_attn).
- decode: `sparse_mla_decode`, B=4 sequences of different lengths on shuffled pages, bf16
  and the FP8 latent (V3.2's format: e4m3 with one scale per 128 channels, RoPE in bf16).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

pytest.importorskip("triton", reason="kernels need the triton package")

from envfactory.kernels import dsa_select, sparse_mla_with_lse  # noqa: E402
from envfactory.kernels.indexer_logits import (indexer_logits_fp8,  # noqa: E402
                                               indexer_logits_fp8_ref)
from envfactory.kernels.sparse_attn import (sparse_mla_bwd, sparse_mla_decode,  # noqa: E402
                                            sparse_mla_decode_ref, sparse_mla_fwd,
                                            sparse_mla_ref)
from envfactory.kernels.topk import canonical, topk_ref, topk_rows  # noqa: E402
from tests.kernels.conftest import DEVICE, rel  # noqa: E402

BF = torch.bfloat16
E4M3 = torch.float8_e4m3fn


@dataclass(frozen=True)
class Shape:
    H: int  # query heads
    R: int  # latent width (kv_lora_rank)
    P: int  # RoPE width
    K: int  # top-k
    Hi: int  # indexer heads
    Di: int  # indexer head dim
    T: int  # keys (the query rows are the last S positions)
    S: int  # prefill query rows
    scale: float  # softmax scale
    maxg: int  # a small "bound" maxg (>= 2K) for the extra selection paths
    B_dec: int = 4  # decode sequences
    Sq: int = 2  # decode rows per sequence
    page: int = 64  # cache page size
    groups: int = 4  # FP8 latent scale groups


V32 = Shape(H=128, R=512, P=64, K=2048, Hi=64, Di=128, T=4096 + 37, S=300,
            scale=1 / math.sqrt(128 + 64), maxg=4096)
TINY = Shape(H=4, R=64, P=16, K=32, Hi=4, Di=32, T=100, S=24, scale=1 / math.sqrt(48),
             maxg=64, page=16)


def _quant(x):
    """Per-row (last dim) e4m3 with a positive fp32 scale -> (x8, scale [...])."""
    s = x.abs().amax(-1) / 448 + 1e-12
    return (x / s[..., None]).to(E4M3), s


def _assert_topk_set(got, scores, K, start_pos, tol):
    """got [B, S, K] is a top-k of each row's visible scores, ties (and scores within tol
    of the k-th largest) resolved either way: min(K, visible) distinct visible keys, then
    exactly -1; every key it holds scores >= kth - tol, every key scoring > kth + tol held."""
    B, S, _ = got.shape
    T = scores.shape[-1]
    pos = start_pos + torch.arange(S, device=got.device)
    vis = torch.arange(T, device=got.device)[None, :] <= pos[:, None]
    masked = scores.float().masked_fill(~vis, float("-inf"))
    valid = got >= 0
    assert bool((got[~valid] == -1).all()), "an empty slot other than -1 (unwritten?)"
    assert not bool((~valid[..., :-1] & valid[..., 1:]).any()), "a key after an empty slot"
    assert torch.equal(valid.sum(-1), (pos + 1).clamp(max=K).expand(B, S))
    c = canonical(got)
    assert not bool(((c[..., 1:] == c[..., :-1]) & (c[..., 1:] >= 0)).any()), "a key twice"
    g = got.long().clamp(min=0)
    assert bool((torch.where(valid, g, 0) <= pos[:, None]).all()), "a key after the query"
    kth = masked.topk(min(K, T), dim=-1).values[..., -1:]  # -inf where fewer are visible
    low = masked.gather(-1, g) < kth - tol
    assert not bool((low & valid).any()), "a key scoring below the k-th largest"
    chosen = torch.zeros(B, S, T, dtype=torch.int32, device=got.device)
    chosen = chosen.scatter_add(-1, g, valid.int()) > 0  # (empty slots add 0 at key 0)
    assert not bool(((masked > kth + tol) & ~chosen).any()), "a top key left out"


def check_select(sh: Shape):
    B, S, T, K = 1, sh.S, sh.T, sh.K
    sp = T - S
    q8, q_s = _quant(torch.randn(B, S, sh.Hi, sh.Di, device=DEVICE))
    k8, k_s = _quant(torch.randn(B, T, sh.Di, device=DEVICE))
    w = torch.randn(B, S, sh.Hi, device=DEVICE) * sh.Hi ** -0.5
    ref = indexer_logits_fp8_ref(q8, q_s, k8, k_s, w, sp)
    logits = indexer_logits_fp8(q8, q_s, k8, k_s, w, sp)  # the kernel's own scores
    fin = ref.isfinite()
    assert torch.equal(logits.isfinite(), fin)
    assert rel(logits[fin], ref[fin]) < (3e-4 if logits.is_cuda else 1e-5)  # test_indexer_logits
    tol = 2 * (logits - ref)[fin].abs().max().item()  # the k-th largest moves by <= the error
    for cfg in (None, {"maxg": sh.maxg}):  # default: every row read whole; maxg: see above
        got = dsa_select(q8, k8, w, K, sp, q_s=q_s, k_s=k_s, topk_cfg=cfg)
        assert got.dtype == torch.int32 and got.shape == (B, S, K)
        _assert_topk_set(got, ref, K, sp, tol)
        if not got.is_cuda:  # identical logits under the interpreter: the exact set
            assert torch.equal(canonical(got), topk_ref(logits, K, sp).long())
    # "bound" from the indexer's group maxima (G=2) over the very same logits: exact
    m = torch.full((B, S, -(-T // 2)), float("nan"), device=DEVICE)
    logits2 = indexer_logits_fp8(q8, q_s, k8, k_s, w, sp, maxima=m, group=2)
    got = topk_rows(logits2, K, sp, method="bound", maxima=m, group=2, maxg=sh.maxg)
    assert torch.equal(canonical(got), topk_ref(logits2, K, sp).long())


def _attn_inputs(sh: Shape, B, S, T):
    t = lambda *shape: (torch.randn(*shape, device=DEVICE) * 0.5).to(BF)  # noqa: E731
    idx = topk_ref(torch.randn(B, S, T, device=DEVICE), sh.K, T - S)
    idx[:, :4, -(sh.K // 4):] = -1  # a few short rows: -1 slots at the end
    return t(B, S, sh.H, sh.R), t(B, S, sh.H, sh.P), t(B, T, sh.R), t(B, T, sh.P), idx


def check_forward(sh: Shape):
    ql, qp, kv, pe, idx = _attn_inputs(sh, 1, sh.S, sh.T)
    out, lse = sparse_mla_fwd(ql, qp, kv, pe, idx, sh.scale)
    ref, ref_lse = sparse_mla_ref(ql, qp, kv, pe, idx, sh.scale)
    assert out.dtype == BF and lse.dtype == torch.float32
    assert rel(out, ref) < 2e-2
    assert rel(lse, ref_lse) < 1e-5  # scores in fp32 from identical operands


def check_backward(sh: Shape):
    ql, qp, kv, pe, idx = _attn_inputs(sh, 1, sh.S, sh.T)
    leaves = [x.detach().requires_grad_() for x in (ql, qp, kv, pe)]
    out, lse = sparse_mla_with_lse(*leaves, idx, sh.scale)
    dout = torch.randn_like(out)
    out.backward(dout)
    ref_leaves = [x.detach().float().requires_grad_() for x in (ql, qp, kv, pe)]
    ref, _ = sparse_mla_ref(*ref_leaves, idx, sh.scale)
    ref.backward(dout.float())
    assert rel(out, ref) < 2e-2
    for leaf, r in zip(leaves, ref_leaves):
        assert leaf.grad.dtype == BF and leaf.grad.shape == r.shape
        assert rel(leaf.grad, r.grad) < 3e-2
    # the two-pass method, its scratch in 3 chunks (the last one partial)
    per_row = 2 * sh.H * sh.K * 2
    grads = sparse_mla_bwd(ql, qp, kv, pe, idx, out.detach(), lse, dout, sh.scale,
                           method="two_pass", scratch_bytes=per_row * (sh.S // 3 + 1))
    for g, r in zip(grads, ref_leaves):
        assert g.dtype == BF and g.shape == r.shape
        assert rel(g, r.grad) < 3e-2


def _paged(x, page, table):
    """x [B, T, ...] -> pages [n, page, ...] laid out by the block table [B, T / page];
    every slot no row maps to stays NaN (as bytes for e4m3), so reading one shows."""
    B, T = x.shape[:2]
    raw = x.view(torch.uint8) if x.dtype == E4M3 else x
    fill = 0x7F if x.dtype == E4M3 else float("nan")
    out = torch.full((table.numel(), page) + x.shape[2:], fill, dtype=raw.dtype, device=x.device)
    pos = torch.arange(T, device=x.device)
    for b in range(B):
        out[table[b, pos // page].long(), pos % page] = raw[b]
    return out.view(E4M3) if x.dtype == E4M3 else out


def check_decode(sh: Shape):
    B, Sq, K = sh.B_dec, sh.Sq, sh.K
    n_pages = -(-sh.T // sh.page)
    T = n_pages * sh.page
    ql, qp, kv, pe, _ = _attn_inputs(sh, B, Sq, T)
    # sequence b holds lens[b] tokens; its queries are the last Sq of them
    lens = [T - 7 * b * (sh.page // 4) - b for b in range(B)]
    idx = torch.cat([topk_ref(torch.randn(1, Sq, T, device=DEVICE), K, n - Sq) for n in lens])
    # positions past a sequence's length hold NaN: a kernel reading one fails the bounds
    table = torch.randperm(B * n_pages, device=DEVICE).view(B, n_pages).int()
    n_tok = torch.tensor(lens, device=DEVICE)
    past = torch.arange(T, device=DEVICE)[None, :, None] >= n_tok[:, None, None]
    kv, pe = kv.masked_fill(past, float("nan")), pe.masked_fill(past, float("nan"))
    g = sh.groups
    kvg = kv.float().unflatten(-1, (g, sh.R // g))
    s = kvg.abs().amax(-1).nan_to_num(1.0) / 448 + 1e-6  # (B, T, g) fp32
    kv8 = (kvg / s[..., None]).flatten(-2).to(E4M3)
    cases = {"bf16": dict(kv=_paged(kv, sh.page, table)),
             "fp8": dict(kv=_paged(kv8, sh.page, table), kv_scale=_paged(s, sh.page, table))}
    pe_p = _paged(pe, sh.page, table)
    for name, c in cases.items():
        kw = dict(block_table=table, kv_scale=c.get("kv_scale"))
        ref, ref_lse = sparse_mla_decode_ref(ql, qp, c["kv"], pe_p, idx, sh.scale, **kw)
        assert not ref.isnan().any(), "the reference read a slot past a sequence"
        for n_split in (None, 1):  # the default split-K and one program per token
            out, lse = sparse_mla_decode(ql, qp, c["kv"], pe_p, idx, sh.scale, n_split=n_split,
                                         **kw)
            assert out.shape == (B, Sq, sh.H, sh.R) and out.dtype == BF
            assert rel(out, ref) < 2e-2, (name, n_split)
            assert rel(lse, ref_lse) < 2e-3, (name, n_split)


CHECKS = {"select": check_select, "forward": check_forward, "backward": check_backward,
          "decode": check_decode}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="V3.2 shapes need a CUDA GPU")
@pytest.mark.parametrize("part", list(CHECKS))
def test_v32_shape(part):
    CHECKS[part](V32)
    torch.cuda.synchronize()


@pytest.mark.parametrize("part", list(CHECKS))
def test_v32_checks_at_a_tiny_shape(part):
    """The same checks at 4 heads, R=64, P=16, top-k 32, 100 keys (interpreter on CPU)."""
    CHECKS[part](TINY)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("heads_fastest", [False, True])
def test_forward_past_65535_query_rows(heads_fastest):
    """A 128K prefill has more query rows than a grid's y axis holds (65535): the rows must
    sit on the x axis in both launch orders (heads_fastest once failed to launch at 128K)."""
    S, H, R, P, K = 70_001, 32, 64, 16, 16
    t = lambda *s: torch.randn(*s, device="cuda").to(BF)  # noqa: E731
    ql, qp, kv, pe = t(1, S, H, R), t(1, S, H, P), t(1, S, R), t(1, S, P)
    pos = torch.arange(S, device="cuda")[:, None]
    idx = (pos - torch.arange(K, device="cuda")[None, :] * 37).clamp(min=-1)  # -1 = empty
    idx = idx.int()[None].contiguous()
    out, lse = sparse_mla_fwd(ql, qp, kv, pe, idx, 0.2, block_h=16, heads_fastest=heads_fastest)
    rows = torch.cat([torch.arange(64), torch.arange(S - 64, S)]).cuda()
    ref, ref_lse = sparse_mla_ref(ql[:, rows], qp[:, rows], kv, pe, idx[:, rows], 0.2)
    assert rel(out[:, rows], ref) < 2e-2 and rel(lse[:, rows], ref_lse) < 2e-3
