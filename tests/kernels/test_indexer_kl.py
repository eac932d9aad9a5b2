"""The indexer's sparse-support KL loss: fused forward + backward against autograd."""

import pytest
import torch

pytest.importorskip("triton", reason="kernels need the triton package")

from envfactory.kernels.indexer_kl import indexer_kl, indexer_kl_ref  # noqa: E402
from envfactory.kernels.topk import topk_ref  # noqa: E402
from tests.kernels.conftest import DEVICE, rel  # noqa: E402


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_indexer_kl_loss_and_grads(dtype, tol):
    B, S, H, D, K = 1, 63, 3, 24, 20
    q = torch.randn(B, S, H, D, device=DEVICE).to(dtype).requires_grad_()
    k = torch.randn(B, S, D, device=DEVICE).to(dtype).requires_grad_()
    w = torch.randn(B, S, H, device=DEVICE).requires_grad_()
    idx = topk_ref(torch.randn(B, S, S, device=DEVICE), K)
    tgt = torch.rand(B, S, K, device=DEVICE).masked_fill(idx < 0, 0.0)
    tgt[..., 1] = 0.0  # zero-probability slots contribute nothing
    tgt = tgt / tgt.sum(-1, keepdim=True)
    ref = indexer_kl_ref(q, k, w, idx, tgt)
    g_ref = torch.autograd.grad(2.5 * ref, (q, k, w))
    loss = indexer_kl(q, k, w, idx, tgt)
    g = torch.autograd.grad(2.5 * loss, (q, k, w))
    assert rel(loss, ref) < 1e-5
    for a, b in zip(g, g_ref):
        assert a.dtype == b.dtype and rel(a, b) < tol


@pytest.mark.parametrize("rows_per_block", [10, 64], ids=["4-blocks", "one-block"])
def test_dense_indexer_kl_matches_pytorch(rows_per_block):
    """The dense warm-up's KL (every visible key; the target is the head-mean attention
    distribution) in blocks of query rows, against a plain PyTorch computation of the
    whole [B, S, T] problem, loss and gradients, with queries starting at position 5."""
    from envfactory.kernels import dense_indexer_kl

    B, S, sp, H, D, Ha, R, P = 2, 37, 5, 3, 24, 4, 20, 8
    T = sp + S
    g = lambda *shape: torch.randn(*shape, device=DEVICE)  # noqa: E731
    q, k, w = (g(*shape).requires_grad_() for shape in ((B, S, H, D), (B, T, D), (B, S, H)))
    q_lat, q_pe, kv, pe = g(B, S, Ha, R), g(B, S, Ha, P), g(B, T, R), g(B, T, P)
    scale = (R + P) ** -0.5
    pos = sp + torch.arange(S, device=DEVICE)
    visible = torch.arange(T, device=DEVICE)[None, :] <= pos[:, None]
    z = torch.einsum("bshr,btr->bsht", q_lat, kv) + torch.einsum("bshp,btp->bsht", q_pe, pe)
    z = z * scale
    p = torch.softmax(z.masked_fill(~visible[None, :, None], float("-inf")), -1).mean(2)
    logit = torch.einsum("bshd,btd->bsht", q, k).relu().mul(w[..., None]).sum(2)
    log_q = torch.log_softmax(logit.masked_fill(~visible, float("-inf")), -1)
    ref = torch.where(p > 0, p * (p.clamp_min(1e-30).log() - log_q), 0.0).sum(-1).mean()
    g_ref = torch.autograd.grad(ref, (q, k, w))
    loss = dense_indexer_kl(q, k, w, q_lat, q_pe, kv, pe, scale, start_pos=sp,
                            max_block_bytes=rows_per_block * 8 * B * T)
    grads = torch.autograd.grad(loss, (q, k, w))
    assert rel(loss, ref) < 1e-5
    for a, b in zip(grads, g_ref):
        assert rel(a, b) < 1e-4
