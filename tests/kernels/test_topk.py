"""Exact streaming top-k (radix select) against a stable sort, ties and -1 padding included."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="kernels need the triton package")

from envfactory.kernels.topk import canonical, topk_ref, topk_rows  # noqa: E402
from envfactory.model.indexer import select_topk  # noqa: E402
from tests.kernels.conftest import DEVICE  # noqa: E402


def test_reference_selects_the_model_set():
    s = torch.randn(2, 37, 37)
    s[..., ::5] = 0.0
    a = topk_ref(s, 8).long()
    b = select_topk(s, 8).sort(-1).values
    b = torch.where(b < 0, b.new_full((), 1 << 40), b).sort(-1).values
    assert torch.equal(a, b.masked_fill(b == 1 << 40, -1))


@pytest.mark.parametrize("S,k,method,hbits,cap", [
    (63, 5, "radix", 0, 0), (130, 40, "radix", 4, 0), (130, 40, "compact", 16, 4096),
    (63, 5, "compact", 12, 4096), (130, 40, "compact", 11, 8)],
    ids=["radix63", "radix4bit130", "compact16-130", "compact12-63", "compact11-130-fallback"])
def test_topk_rows_exact(S, k, method, hbits, cap):
    scores = torch.randn(1, S, S, device=DEVICE)
    scores[..., ::3] = scores[..., 1:2]  # many exact ties, resolved towards earlier tokens
    # cap=8: most rows' threshold bins overflow the scratch and go to the multi-pass kernel
    if method == "radix":  # hbits here: the radix digit width
        out = topk_rows(scores, k, method=method, digit_bits=hbits or 8)
    else:
        out = topk_rows(scores, k, method=method, cap=cap or 4096, hbits=hbits)
    assert out.dtype == torch.int32 and out.shape == (1, S, k)
    ref = topk_ref(scores, k)
    if method == "radix":
        assert torch.equal(out, ref)  # fully ascending
    assert torch.equal(canonical(out), ref.long())


def test_topk_rows_k_larger_than_rows_and_offsets():
    S, T0, k = 20, 43, 70  # rows see 44..63 keys: every visible key, then -1
    scores = torch.randn(2, S, T0 + S, device=DEVICE)
    assert torch.equal(topk_rows(scores, k, start_pos=T0), topk_ref(scores, k, T0))


@pytest.mark.parametrize("T", [130, 257])
def test_split_row_selection_for_decode(T):
    Sq, k = 2, 24
    scores = torch.randn(3, Sq, T, device=DEVICE).relu()  # half the keys tie at 0
    out = topk_rows(scores, k, start_pos=T - Sq, chunk=32)
    assert torch.equal(out, topk_ref(scores, k, T - Sq))


def _group_max(scores, G, start_pos=0):
    """[B, S, ceil(T / G)]: the max of every G consecutive visible scores (-inf if none)."""
    B, S, T = scores.shape
    pos = torch.arange(start_pos, start_pos + S, device=scores.device)
    vis = torch.arange(T, device=scores.device)[None, :] <= pos[:, None]
    m = scores.masked_fill(~vis, float("-inf"))
    m = F.pad(m, (0, -(-T // G) * G - T), value=float("-inf"))
    return m.view(B, S, -1, G).amax(-1).contiguous()


@pytest.mark.parametrize("ties,kth", [(False, "bisect"), (True, "bisect"), (False, "radix")],
                         ids=["distinct", "ties", "distinct-radix-kth"])
def test_bound_topk_exact(ties, kth):
    S, T0, k, G = 150, 7, 5, 8
    scores = torch.randn(2, S, T0 + S, device=DEVICE)
    if ties:  # a third of the scores equal: survivors overflow the cap, ties go early
        scores[..., ::3] = scores[..., 1:2]
    out = topk_rows(scores, k, start_pos=T0, method="bound", maxima=_group_max(scores, G, T0),
                    group=G, cap=64, maxg=16, kth=kth)
    assert out.dtype == torch.int32 and out.shape == (2, S, k)
    assert torch.equal(canonical(out), topk_ref(scores, k, T0).long())


def test_bound_topk_hands_over_only_rows_it_cannot_bound(monkeypatch):
    """Rows of at most maxg keys are read whole; longer rows bound from the group maxima;
    only rows with more than maxg keys and fewer than k groups go to the radix kernel."""
    import envfactory.kernels.topk.triton_topk as tt
    S, k, G, maxg = 150, 5, 8, 16
    scores = torch.randn(1, S, S, device=DEVICE)
    flags = []
    orig = tt._select
    monkeypatch.setattr(tt, "_select", lambda *a, flag=None, **kw: (
        flags.append(flag.clone()), orig(*a, flag=flag, **kw))[1])
    # exact tau (32 bits): exactly k groups listed, so at most k * G = 40 <= cap survivors
    out = topk_rows(scores, k, method="bound", maxima=_group_max(scores, G), group=G, cap=64,
                    maxg=maxg, bound_bits=32)
    assert torch.equal(canonical(out), topk_ref(scores, k).long())
    n = torch.arange(1, S + 1, device=DEVICE)
    ng = (n + G - 1) // G  # 17..32 keys: too long, too few groups; 129..: too many groups
    expect = (n > maxg) & ((ng < k) | (ng > maxg))
    assert torch.equal(flags[0].bool(), expect)


def test_bound_topk_without_maxima_is_ascending():
    """Without maxima, "bound" reads every row of at most maxg keys whole (tau exact) and
    hands longer ones to the radix kernel: either way positions come out ascending, which
    is the order `dsa_select` documents for such rows. Ties overflow the cap in some rows."""
    S, T0, k = 90, 20, 6
    scores = torch.randn(2, S, T0 + S, device=DEVICE)
    scores[1, :, ::2] = scores[1, :, :1]  # row batch 1: half its keys tie
    out = topk_rows(scores, k, start_pos=T0, method="bound", cap=16, maxg=64)
    assert torch.equal(out, topk_ref(scores, k, T0))


def test_bound_topk_rejects_bad_maxima():
    scores = torch.randn(1, 40, 40, device=DEVICE)
    with pytest.raises(ValueError, match="maxima"):
        topk_rows(scores, 5, method="bound", maxima=torch.zeros(1, 40, 2, device=DEVICE), group=8)
