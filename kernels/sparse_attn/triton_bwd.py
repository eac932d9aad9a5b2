"""Sparse MLA attention backward, and the indexer's KL target on the selected support.

Backward: one program per (query token, BLOCK_H heads), like the forward. It recomputes the
probabilities from the saved log-sum-exp, forms dS = P ∘ (dO·kvᵀ − Δ) with Δ = rowsum(dO∘O),
accumulates dq_lat, dq_pe in registers and scatters dkv = Pᵀ·dO + scale·dSᵀ·q_lat (the latent
is both key and value) and dpe = scale·dSᵀ·q_pe into fp32 buffers with atomic adds: a
token's K indices are distinct, so only different queries collide.

Target: for the sparse-stage KL (dsa.md §2.1), the head-mean of the attention
probabilities at each selected slot, exp(z − lse) averaged over heads, from the same lse.
"""

from __future__ import annotations

import torch

from .._common import block, empty, mma, require_triton, tl, triton

LOG2E = 1.4426950408889634

if triton is not None:

    @triton.jit
    def _sparse_mla_bwd_kernel(
        ql_ptr, qp_ptr, kv_ptr, pe_ptr, idx_ptr, o_ptr, do_ptr, lse_ptr,
        dql_ptr, dqp_ptr, dkv_ptr, dpe_ptr,
        S, H, R, P, K, scale, scale_log2,
        s_q_b, s_q_s, s_q_h, s_p_b, s_p_s, s_p_h,
        s_kv_b, s_kv_t, s_pe_b, s_pe_t, s_idx_b, s_idx_s,
        s_dkv_b, s_dkv_t, s_dpe_b, s_dpe_t,
        IEEE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        pid_s = tl.program_id(0)
        pid_h = tl.program_id(1)
        b = (pid_s // S).to(tl.int64)
        s = (pid_s % S).to(tl.int64)
        offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
        offs_r = tl.arange(0, BLOCK_R)
        offs_p = tl.arange(0, BLOCK_P)
        h_ok, r_ok, p_ok = offs_h < H, offs_r < R, offs_p < P
        hr = h_ok[:, None] & r_ok[None, :]
        hp = h_ok[:, None] & p_ok[None, :]
        q_off = b * s_q_b + s * s_q_s + offs_h[:, None] * s_q_h + offs_r[None, :]
        p_off = b * s_p_b + s * s_p_s + offs_h[:, None] * s_p_h + offs_p[None, :]
        ql = tl.load(ql_ptr + q_off, mask=hr, other=0.0)
        qp = tl.load(qp_ptr + p_off, mask=hp, other=0.0)
        do = tl.load(do_ptr + q_off, mask=hr, other=0.0)
        o = tl.load(o_ptr + q_off, mask=hr, other=0.0)
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)  # (BLOCK_H,)
        lse = tl.load(lse_ptr + (b * S + s) * H + offs_h, mask=h_ok, other=0.0)
        lse2 = tl.where(lse == float("-inf"), 0.0, lse * 1.4426950408889634)
        dql = tl.zeros([BLOCK_H, BLOCK_R], tl.float32)
        dqp = tl.zeros([BLOCK_H, BLOCK_P], tl.float32)
        idx_row = idx_ptr + b * s_idx_b + s * s_idx_s
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            pos = tl.load(idx_row + offs_k, mask=offs_k < K, other=-1)
            valid = pos >= 0
            pos = tl.where(valid, pos, 0).to(tl.int64)
            kv_t = tl.load(kv_ptr + b * s_kv_b + pos[:, None] * s_kv_t + offs_r[None, :],
                           mask=valid[:, None] & r_ok[None, :], other=0.0)
            pe_t = tl.load(pe_ptr + b * s_pe_b + pos[:, None] * s_pe_t + offs_p[None, :],
                           mask=valid[:, None] & p_ok[None, :], other=0.0)
            z = mma(ql, tl.trans(kv_t), None, IEEE)
            z = mma(qp, tl.trans(pe_t), z, IEEE)
            dp = mma(do, tl.trans(kv_t), None, IEEE)
            p = tl.exp2(z * scale_log2 - lse2[:, None])
            p = tl.where(valid[None, :] & h_ok[:, None], p, 0.0)
            ds = p * (dp - delta[:, None]) * scale  # (BLOCK_H, BLOCK_K), scale folded in
            ds_l = ds.to(kv_t.dtype)
            dql = mma(ds_l, kv_t, dql, IEEE)
            dqp = mma(ds_l, pe_t, dqp, IEEE)
            dkv = mma(tl.trans(p.to(do.dtype)), do, None, IEEE)
            dkv = mma(tl.trans(ds_l), ql, dkv, IEEE)
            dpe = mma(tl.trans(ds_l), qp, None, IEEE)
            tl.atomic_add(dkv_ptr + b * s_dkv_b + pos[:, None] * s_dkv_t + offs_r[None, :], dkv,
                          mask=valid[:, None] & r_ok[None, :], sem="relaxed")
            tl.atomic_add(dpe_ptr + b * s_dpe_b + pos[:, None] * s_dpe_t + offs_p[None, :], dpe,
                          mask=valid[:, None] & p_ok[None, :], sem="relaxed")
        tl.store(dql_ptr + q_off, dql.to(dql_ptr.dtype.element_ty), mask=hr)
        tl.store(dqp_ptr + p_off, dqp.to(dqp_ptr.dtype.element_ty), mask=hp)

    @triton.jit
    def _target_kernel(
        ql_ptr, qp_ptr, kv_ptr, pe_ptr, idx_ptr, lse_ptr, tgt_ptr,
        S, H, R, P, K, scale_log2, inv_h,
        s_q_b, s_q_s, s_q_h, s_p_b, s_p_s, s_p_h, s_kv_b, s_kv_t, s_pe_b, s_pe_t,
        s_idx_b, s_idx_s,
        IEEE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        pid_s = tl.program_id(0)
        pid_k = tl.program_id(1)
        b = (pid_s // S).to(tl.int64)
        s = (pid_s % S).to(tl.int64)
        offs_r = tl.arange(0, BLOCK_R)
        offs_p = tl.arange(0, BLOCK_P)
        r_ok, p_ok = offs_r < R, offs_p < P
        offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        pos = tl.load(idx_ptr + b * s_idx_b + s * s_idx_s + offs_k, mask=offs_k < K, other=-1)
        valid = pos >= 0
        pos = tl.where(valid, pos, 0).to(tl.int64)
        kv_t = tl.load(kv_ptr + b * s_kv_b + pos[:, None] * s_kv_t + offs_r[None, :],
                       mask=valid[:, None] & r_ok[None, :], other=0.0)
        pe_t = tl.load(pe_ptr + b * s_pe_b + pos[:, None] * s_pe_t + offs_p[None, :],
                       mask=valid[:, None] & p_ok[None, :], other=0.0)
        tot = tl.zeros([BLOCK_K], tl.float32)
        for h0 in range(0, H, BLOCK_H):
            offs_h = h0 + tl.arange(0, BLOCK_H)
            h_ok = offs_h < H
            ql = tl.load(ql_ptr + b * s_q_b + s * s_q_s + offs_h[:, None] * s_q_h + offs_r[None, :],
                         mask=h_ok[:, None] & r_ok[None, :], other=0.0)
            qp = tl.load(qp_ptr + b * s_p_b + s * s_p_s + offs_h[:, None] * s_p_h + offs_p[None, :],
                         mask=h_ok[:, None] & p_ok[None, :], other=0.0)
            z = mma(ql, tl.trans(kv_t), None, IEEE)
            z = mma(qp, tl.trans(pe_t), z, IEEE)
            lse = tl.load(lse_ptr + (b * S + s) * H + offs_h, mask=h_ok, other=float("-inf"))
            lse2 = tl.where(lse == float("-inf"), 0.0, lse * 1.4426950408889634)
            pr = tl.exp2(z * scale_log2 - lse2[:, None])
            pr = tl.where(h_ok[:, None] & (lse != float("-inf"))[:, None], pr, 0.0)
            tot += tl.sum(pr, 0)
        tot = tl.where(valid, tot * inv_h, 0.0)
        tl.store(tgt_ptr + (b * S + s) * K + offs_k, tot, mask=offs_k < K)


def _check(*ts):
    for t in ts:
        if t.stride(-1) != 1:
            raise ValueError("inputs need a unit last stride")


def sparse_mla_bwd(q_lat, q_pe, kv, pe, idx, out, lse, dout, scale, block_h=None, block_k=None,
                   num_warps=None, num_stages=None):
    """Gradients of `sparse_mla_fwd`: returns (dq_lat, dq_pe, dkv, dpe) in the input dtypes."""
    require_triton()
    B, S, H, R = q_lat.shape
    P = q_pe.shape[-1]
    K = idx.shape[-1]
    q_lat, q_pe, out, dout = (t.contiguous() for t in (q_lat, q_pe, out, dout))
    _check(kv, pe)
    idx = idx.to(torch.int32).contiguous()
    lse = lse.float().contiguous()
    dql = empty(q_lat.shape, q_lat.dtype, q_lat.device)  # (both made contiguous above)
    dqp = empty(q_pe.shape, q_pe.dtype, q_pe.device)
    dkv = torch.zeros(kv.shape, dtype=torch.float32, device=kv.device)
    dpe = torch.zeros(pe.shape, dtype=torch.float32, device=pe.device)
    # a wide latent (V3.2: 512) takes 32 heads x 32 keys on the GPU: 64 x 16 needs 311 KB of
    # shared memory on sm_90 (H100 limit 227 KB)
    wide = R > 256 and q_lat.is_cuda
    BH = block_h or min(32 if wide else 64, block(H))
    BK = block_k or ((32 if q_lat.is_cuda else 16))
    grid = (B * S, triton.cdiv(H, BH))
    _sparse_mla_bwd_kernel[grid](
        q_lat, q_pe, kv, pe, idx, out, dout, lse, dql, dqp, dkv, dpe,
        S, H, R, P, K, scale, scale * LOG2E,
        q_lat.stride(0), q_lat.stride(1), q_lat.stride(2),
        q_pe.stride(0), q_pe.stride(1), q_pe.stride(2),
        kv.stride(0), kv.stride(1), pe.stride(0), pe.stride(1), idx.stride(0), idx.stride(1),
        dkv.stride(0), dkv.stride(1), dpe.stride(0), dpe.stride(1),
        IEEE=(q_lat.dtype == torch.float32), BLOCK_H=BH, BLOCK_R=block(R), BLOCK_P=block(P),
        BLOCK_K=BK, num_warps=num_warps or (8 if q_lat.is_cuda else 4),
        num_stages=num_stages or 1,
    )
    return dql, dqp, dkv.to(kv.dtype), dpe.to(pe.dtype)


def sparse_attn_target(q_lat, q_pe, kv, pe, idx, lse, scale, block_h=None, block_k=None):
    """Head-mean attention probability at each selected slot -> [B, S, K] fp32 (0 at -1)."""
    require_triton()
    B, S, H, R = q_lat.shape
    P = q_pe.shape[-1]
    K = idx.shape[-1]
    _check(q_lat, q_pe, kv, pe)
    idx = idx.to(torch.int32).contiguous()
    lse = lse.float().contiguous()
    tgt = empty((B, S, K), torch.float32, q_lat.device)
    BH = block_h or min(64, block(H))
    BK = block_k or (64 if q_lat.is_cuda else 16)
    _target_kernel[(B * S, triton.cdiv(K, BK))](
        q_lat, q_pe, kv, pe, idx, lse, tgt, S, H, R, P, K, scale * LOG2E, 1.0 / H,
        q_lat.stride(0), q_lat.stride(1), q_lat.stride(2),
        q_pe.stride(0), q_pe.stride(1), q_pe.stride(2),
        kv.stride(0), kv.stride(1), pe.stride(0), pe.stride(1), idx.stride(0), idx.stride(1),
        IEEE=(q_lat.dtype == torch.float32), BLOCK_H=BH, BLOCK_R=block(R), BLOCK_P=block(P),
        BLOCK_K=BK, num_warps=8 if q_lat.is_cuda else 4,
    )
    return tgt
