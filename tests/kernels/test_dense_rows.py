"""Rows that see at most top-k keys attend densely on the triton path (issue 16).

A query at position p sees p + 1 keys; when p + 1 <= k the top-k would select every one of
them, so the model skips the indexer selection and sparse kernels for those rows and runs
SDPA over their causal prefix instead (MHA form for a prefill, the absorbed form for a
decode step). The result must equal the masked-dense oracle, and the sparse kernels must
see only the remaining rows.
"""

import importlib

import pytest
import torch

pytest.importorskip("triton", reason="kernels need the triton package")

from envfactory.model import attention
from envfactory.model.cache import make_caches
from tests.kernels.conftest import DEVICE, rel
from tests.kernels.test_dsa_model import _pair

kern = importlib.import_module("envfactory.kernels")


def _spy(monkeypatch):
    """Calls of the selection (start_pos, rows) and of the two sparse attention entries
    (rows per call)."""
    calls = {"select": [], "prefill": [], "decode": []}
    real_sel = attention._dsa_select

    def sel(ind, topk, start_pos):
        calls["select"].append((start_pos, ind.w.shape[1]))
        return real_sel(ind, topk, start_pos)

    def wrap(name, key):
        real = getattr(kern, name)

        def f(*a, **k):
            calls[key].append(a[0].shape[1])
            return real(*a, **k)
        monkeypatch.setattr(kern, name, f)

    monkeypatch.setattr(attention, "_dsa_select", sel)
    wrap("sparse_mla_with_lse", "prefill")
    wrap("sparse_mla_decode", "decode")
    return calls


@pytest.mark.parametrize("S", [5, 8, 37])
def test_prefill_rows_below_topk_are_dense(S, monkeypatch):
    dense, tri = _pair()
    k, L = tri.cfg.index_topk, tri.cfg.n_layers
    tokens = torch.randint(0, 512, (2, S), device=DEVICE)
    calls = _spy(monkeypatch)
    with torch.no_grad():
        a, _ = dense(tokens)
        b, _ = tri(tokens)
    assert rel(b, a) < 1e-5
    n_sparse = max(0, S - k)
    if n_sparse:  # one selection and one sparse call per layer, for the rows from k on only
        assert calls["select"] == [(k, n_sparse)] * L
        assert calls["prefill"] == [n_sparse] * L
    else:  # a prompt of at most k tokens never reaches the sparse kernels
        assert calls["select"] == [] and calls["prefill"] == []
    if S > k:  # and the sparse rows really drop keys: full attention differs there
        full, _ = dense(tokens, sparse=False)
        assert rel(full[:, :k], a[:, :k]) < 1e-5 and rel(full[:, k:], a[:, k:]) > 1e-3


def test_decode_steps_below_topk_are_dense(monkeypatch):
    dense, tri = _pair()
    k, L = tri.cfg.index_topk, tri.cfg.n_layers
    B, S, P = 2, 14, 3
    tokens = torch.randint(0, 512, (B, S), device=DEVICE)
    calls = _spy(monkeypatch)
    with torch.no_grad():
        full, _ = dense(tokens)
        caches = make_caches(tri.cfg, B, S, device=DEVICE)
        parts = [tri(tokens[:, :P], 0, caches)[0]]
        parts += [tri(tokens[:, t:t + 1], t, caches)[0] for t in range(P, S)]
    assert rel(torch.cat(parts, 1), full) < 1e-5
    # positions P .. k-1 decode densely; k .. S-1 through the split-K decode kernel
    assert calls["decode"] == [1] * (L * (S - k))
    assert calls["select"] == [(t, 1) for t in range(k, S) for _ in range(L)]
    assert calls["prefill"] == []


def test_index_loss_keeps_every_row_sparse(monkeypatch):
    """The sparse stage's indexer KL is over each row's selection: no dense rows there."""
    _, tri = _pair()
    S = 19
    tokens = torch.randint(0, 512, (1, S), device=DEVICE)
    calls = _spy(monkeypatch)
    tri(tokens, sparse=True, index_loss=True)
    assert calls["select"] == [(0, S)] * tri.cfg.n_layers
