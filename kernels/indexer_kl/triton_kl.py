"""Indexer KL loss over the top-k support, forward and backward fused, in Triton.

One program per query token: pass 1 recomputes the token's indexer logits at its K selected
keys (all index heads in one tensor-core product [H, D] x [D, BLOCK_K], ReLU, weighted head
sum), with an online log-sum-exp and the target sums; pass 2 recomputes them, forms the
logit gradient coef·(softmax·Σtarget − target) and pushes it back through the weighted ReLU:
dq and dw stay in registers, dk is scattered with fp32 atomic adds (a token's K indices are
distinct). The gradients are produced with the loss (coef = 1/(B·S)); the autograd wrapper
scales them by the incoming gradient.
"""

from __future__ import annotations

import torch

from .._common import block, empty, mma, require_triton, tl, triton

if triton is not None:

    @triton.jit
    def _logits_tile(q, w, k_ptr, b, pos, valid, offs_d, D, s_k_b, s_k_t, IEEE: tl.constexpr):
        kt = tl.load(k_ptr + b * s_k_b + pos[:, None] * s_k_t + offs_d[None, :],
                     mask=valid[:, None] & (offs_d[None, :] < D), other=0.0)
        r = mma(q, tl.trans(kt), None, IEEE)  # (BLOCK_HI, BLOCK_K)
        logit = tl.sum(tl.maximum(r, 0.0) * w[:, None], 0)
        return kt, r, logit

    @triton.jit
    def _indexer_kl_kernel(
        q_ptr, k_ptr, w_ptr, idx_ptr, tgt_ptr, loss_ptr, dq_ptr, dw_ptr, dk_ptr,
        S, H, D, K, coef,
        s_q_b, s_q_s, s_q_h, s_k_b, s_k_t, s_w_b, s_w_s, s_i_b, s_i_s, s_t_b, s_t_s,
        s_dk_b, s_dk_t,
        IEEE: tl.constexpr, BLOCK_HI: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        pid = tl.program_id(0)
        b = (pid // S).to(tl.int64)
        s = (pid % S).to(tl.int64)
        offs_h = tl.arange(0, BLOCK_HI)
        offs_d = tl.arange(0, BLOCK_D)
        h_ok = offs_h < H
        hd = h_ok[:, None] & (offs_d[None, :] < D)
        q_off = b * s_q_b + s * s_q_s + offs_h[:, None] * s_q_h + offs_d[None, :]
        q = tl.load(q_ptr + q_off, mask=hd, other=0.0)
        w = tl.load(w_ptr + b * s_w_b + s * s_w_s + offs_h, mask=h_ok, other=0.0)
        idx_row = idx_ptr + b * s_i_b + s * s_i_s
        tgt_row = tgt_ptr + b * s_t_b + s * s_t_s
        m_i = float("-inf")
        l_i = 0.0
        t_sum = 0.0
        t_logt = 0.0
        t_logit = 0.0
        for k0 in range(0, K, BLOCK_K):  # pass 1: log-sum-exp and target sums
            offs_k = k0 + tl.arange(0, BLOCK_K)
            pos = tl.load(idx_row + offs_k, mask=offs_k < K, other=-1)
            valid = pos >= 0
            pos = tl.where(valid, pos, 0).to(tl.int64)
            kt, r, logit = _logits_tile(q, w, k_ptr, b, pos, valid, offs_d, D, s_k_b, s_k_t, IEEE)
            logit = tl.where(valid, logit, float("-inf"))
            t = tl.load(tgt_row + offs_k, mask=valid, other=0.0)
            pos_t = valid & (t > 0)
            t_sum += tl.sum(tl.where(pos_t, t, 0.0), 0)
            t_logt += tl.sum(tl.where(pos_t, t * tl.log(tl.where(pos_t, t, 1.0)), 0.0), 0)
            t_logit += tl.sum(tl.where(pos_t, t * logit, 0.0), 0)
            m_new = tl.maximum(m_i, tl.max(logit, 0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(tl.exp(logit - m_safe), 0)
            m_i = m_new
        lse = tl.where(l_i == 0.0, 0.0, tl.where(m_i == float("-inf"), 0.0, m_i) + tl.log(l_i))
        tl.store(loss_ptr + b * S + s, t_logt - t_logit + t_sum * lse)
        dq = tl.zeros([BLOCK_HI, BLOCK_D], tl.float32)
        dw = tl.zeros([BLOCK_HI], tl.float32)
        for k0 in range(0, K, BLOCK_K):  # pass 2: gradients
            offs_k = k0 + tl.arange(0, BLOCK_K)
            pos = tl.load(idx_row + offs_k, mask=offs_k < K, other=-1)
            valid = pos >= 0
            pos = tl.where(valid, pos, 0).to(tl.int64)
            kt, r, logit = _logits_tile(q, w, k_ptr, b, pos, valid, offs_d, D, s_k_b, s_k_t, IEEE)
            t = tl.load(tgt_row + offs_k, mask=valid, other=0.0)
            t = tl.where(t > 0, t, 0.0)
            p = tl.exp(logit - lse)
            g = tl.where(valid, coef * (p * t_sum - t), 0.0)  # d loss / d logit, (BLOCK_K,)
            dw += tl.sum(tl.maximum(r, 0.0) * g[None, :], 1)
            dr = tl.where(r > 0, w[:, None] * g[None, :], 0.0)  # (BLOCK_HI, BLOCK_K)
            dq = mma(dr, kt.to(tl.float32), dq, True)
            dk = mma(tl.trans(dr), q.to(tl.float32), None, True)  # (BLOCK_K, BLOCK_D)
            tl.atomic_add(dk_ptr + b * s_dk_b + pos[:, None] * s_dk_t + offs_d[None, :], dk,
                          mask=valid[:, None] & (offs_d[None, :] < D), sem="relaxed")
        tl.store(dq_ptr + q_off, dq, mask=hd)
        tl.store(dw_ptr + (b * S + s) * H + offs_h, dw, mask=h_ok)


def indexer_kl_fwd_bwd(q, k, w, idx, target, block_k=None, num_warps=None):
    """Loss and gradients of the sparse-support indexer KL (see naive.py for the maths).

    q [B,S,H,D], k [B,T,D], w [B,S,H] fp32, idx [B,S,K] (-1 = empty), target [B,S,K] fp32.
    Returns (loss scalar fp32, dq fp32 [B,S,H,D], dk fp32 [B,T,D], dw fp32 [B,S,H]).
    """
    require_triton()
    B, S, H, D = q.shape
    K = idx.shape[-1]
    q, k = q.contiguous(), k.contiguous()
    w = w.float().contiguous()
    idx = idx.to(torch.int32).contiguous()
    target = target.float().contiguous()
    dev = q.device
    loss = empty((B, S), torch.float32, dev)
    dq = empty((B, S, H, D), torch.float32, dev)
    dw = empty((B, S, H), torch.float32, dev)
    dk = torch.zeros(k.shape, dtype=torch.float32, device=dev)
    coef = 1.0 / (B * S)
    BK = block_k or (64 if q.is_cuda else 16)
    _indexer_kl_kernel[(B * S,)](
        q, k, w, idx, target, loss, dq, dw, dk, S, H, D, K, coef,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), w.stride(0), w.stride(1),
        idx.stride(0), idx.stride(1), target.stride(0), target.stride(1),
        dk.stride(0), dk.stride(1),
        IEEE=(q.dtype == torch.float32), BLOCK_HI=block(H), BLOCK_D=block(D), BLOCK_K=BK,
        num_warps=num_warps or (8 if q.is_cuda else 4),
    )
    return loss.mean(), dq, dk, dw


class IndexerKL(torch.autograd.Function):
    """Autograd wrapper: forward computes loss and grads at once, backward scales them."""

    @staticmethod
    def forward(ctx, q, k, w, idx, target):
        loss, dq, dk, dw = indexer_kl_fwd_bwd(q, k, w, idx, target)
        ctx.save_for_backward(dq, dk, dw)
        ctx.dtypes = (q.dtype, k.dtype, w.dtype)
        return loss

    @staticmethod
    def backward(ctx, g):
        dq, dk, dw = ctx.saved_tensors
        tq, tk, tw = ctx.dtypes
        return (dq * g).to(tq), (dk * g).to(tk), (dw * g).to(tw), None, None


def indexer_kl(q, k, w, idx, target):
    """Differentiable (in q, k, w) sparse-support indexer KL loss, a scalar."""
    return IndexerKL.apply(q, k, w, idx, target)
