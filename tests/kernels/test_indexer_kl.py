"""The indexer's sparse-support KL loss: fused forward + backward against autograd."""

import pytest
import torch

pytest.importorskip("triton", reason="kernels need the triton package")

from kernels.indexer_kl import indexer_kl, indexer_kl_ref  # noqa: E402
from kernels.topk import topk_ref  # noqa: E402
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
