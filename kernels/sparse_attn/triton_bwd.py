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
    def _bwd_dq_kernel(
        ql_ptr, qp_ptr, kv_ptr, pe_ptr, idx_ptr, o_ptr, do_ptr, lse_ptr,
        dql_ptr, dqp_ptr, p_ptr,
        r0, S, H, R, P, K, scale, scale_log2,
        s_q_b, s_q_s, s_q_h, s_p_b, s_p_s, s_p_h,
        s_kv_b, s_kv_t, s_pe_b, s_pe_t, s_idx_b, s_idx_s,
        IEEE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, RELOAD: tl.constexpr,
        DQ: tl.constexpr,
    ):
        """Pass 1 of the two- and three-pass backward: one program per (query token, BLOCK_H
        heads) of the chunk that starts at flat row r0. The probabilities P and dS (scale
        folded in) go to the chunk's scratch [rows, 2, H, K] in the input dtype, zero at -1
        slots and masked heads, for the key pass. DQ (two-pass): dq_lat, dq_pe accumulate
        here as in the fused kernel. Without it (three-pass) nothing accumulates over the key
        loop, so the gathers pipeline without spilling; `_bwd_dq_gather_kernel` forms dq."""
        n_hb = tl.cdiv(H, BLOCK_H)
        pid = tl.program_id(0)
        row = pid // n_hb  # the chunk's row; a token's head blocks run side by side
        pid_h = pid % n_hb
        flat = r0 + row
        b = (flat // S).to(tl.int64)
        s = (flat % S).to(tl.int64)
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
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
        nqp = (-qp.to(tl.float32)).to(qp.dtype)  # (through fp32: the interpreter keeps bf16 as raw bits)
        lse = tl.load(lse_ptr + flat.to(tl.int64) * H + offs_h, mask=h_ok, other=0.0)
        lse2 = tl.where(lse == float("-inf"), 0.0, lse * 1.4426950408889634)
        dql = tl.zeros([BLOCK_H, BLOCK_R], tl.float32)
        dqp = tl.zeros([BLOCK_H, BLOCK_P], tl.float32)
        idx_row = idx_ptr + b * s_idx_b + s * s_idx_s
        scr = row.to(tl.int64) * 2 * H * K + offs_h[:, None].to(tl.int64) * K
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            pos = tl.load(idx_row + offs_k, mask=k_ok, other=-1)
            valid = pos >= 0
            pos = tl.where(valid, pos, 0).to(tl.int64)
            kv_t = tl.load(kv_ptr + b * s_kv_b + pos[:, None] * s_kv_t + offs_r[None, :],
                           mask=valid[:, None] & r_ok[None, :], other=0.0)
            pe_t = tl.load(pe_ptr + b * s_pe_b + pos[:, None] * s_pe_t + offs_p[None, :],
                           mask=valid[:, None] & p_ok[None, :], other=0.0)
            # two products combined, not chained through the accumulator: Triton gives a product
            # that feeds another one (an accumulator too) all 8 warps along its rows, and folds
            # a + of two products back into that chain (not a -)
            z = mma(ql, tl.trans(kv_t), None, IEEE) - mma(nqp, tl.trans(pe_t), None, IEEE)
            dp = mma(do, tl.trans(kv_t), None, IEEE)
            p = tl.exp2(z * scale_log2 - lse2[:, None])
            p = tl.where(valid[None, :] & h_ok[:, None], p, 0.0)
            ds = p * (dp - delta[:, None]) * scale
            ds_l = ds.to(kv_t.dtype)
            st = h_ok[:, None] & k_ok[None, :]
            tl.store(p_ptr + scr + offs_k[None, :], p.to(p_ptr.dtype.element_ty), mask=st)
            tl.store(p_ptr + H * K + scr + offs_k[None, :], ds_l, mask=st)
            if DQ and RELOAD:
                # dS back from the scratch (L2) after a barrier: a score product whose result
                # feeds another product gets all 8 warps along its 64 rows from Triton (both
                # warpgroups then compute the whole tile); a loaded dS ends that chain
                tl.debug_barrier()
                ds_l = tl.load(p_ptr + H * K + scr + offs_k[None, :], mask=st, other=0.0)
            if DQ:
                dql = mma(ds_l, kv_t, dql, IEEE)
                dqp = mma(ds_l, pe_t, dqp, IEEE)
        if DQ:
            tl.store(dql_ptr + q_off, dql.to(dql_ptr.dtype.element_ty), mask=hr)
            tl.store(dqp_ptr + p_off, dqp.to(dqp_ptr.dtype.element_ty), mask=hp)

    @triton.jit
    def _bwd_dq_gather_kernel(
        kv_ptr, pe_ptr, idx_ptr, p_ptr, dql_ptr, dqp_ptr,
        r0, S, H, R, P, K,
        s_q_b, s_q_s, s_q_h, s_p_b, s_p_s, s_p_h,
        s_kv_b, s_kv_t, s_pe_b, s_pe_t, s_idx_b, s_idx_s,
        IEEE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        """Three-pass backward, pass 3: dq_lat = dS·kv and dq_pe = dS·pe per (token,
        BLOCK_H heads), dS read from the scratch and the rows gathered again."""
        n_hb = tl.cdiv(H, BLOCK_H)
        pid = tl.program_id(0)
        row = pid // n_hb
        pid_h = pid % n_hb
        flat = r0 + row
        b = (flat // S).to(tl.int64)
        s = (flat % S).to(tl.int64)
        offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
        offs_r = tl.arange(0, BLOCK_R)
        offs_p = tl.arange(0, BLOCK_P)
        h_ok, r_ok, p_ok = offs_h < H, offs_r < R, offs_p < P
        dql = tl.zeros([BLOCK_H, BLOCK_R], tl.float32)
        dqp = tl.zeros([BLOCK_H, BLOCK_P], tl.float32)
        idx_row = idx_ptr + b * s_idx_b + s * s_idx_s
        scr = row.to(tl.int64) * 2 * H * K + H * K + offs_h[:, None].to(tl.int64) * K
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            pos = tl.load(idx_row + offs_k, mask=k_ok, other=-1)
            valid = pos >= 0
            pos = tl.where(valid, pos, 0).to(tl.int64)
            ds = tl.load(p_ptr + scr + offs_k[None, :], mask=h_ok[:, None] & k_ok[None, :],
                         other=0.0)
            kv_t = tl.load(kv_ptr + b * s_kv_b + pos[:, None] * s_kv_t + offs_r[None, :],
                           mask=valid[:, None] & r_ok[None, :], other=0.0)
            pe_t = tl.load(pe_ptr + b * s_pe_b + pos[:, None] * s_pe_t + offs_p[None, :],
                           mask=valid[:, None] & p_ok[None, :], other=0.0)
            dql = mma(ds, kv_t, dql, IEEE)
            dqp = mma(ds, pe_t, dqp, IEEE)
        q_off = b * s_q_b + s * s_q_s + offs_h[:, None] * s_q_h + offs_r[None, :]
        p_off = b * s_p_b + s * s_p_s + offs_h[:, None] * s_p_h + offs_p[None, :]
        tl.store(dql_ptr + q_off, dql.to(dql_ptr.dtype.element_ty), mask=h_ok[:, None] & r_ok[None, :])
        tl.store(dqp_ptr + p_off, dqp.to(dqp_ptr.dtype.element_ty), mask=h_ok[:, None] & p_ok[None, :])

    @triton.jit
    def _bwd_dkv_kernel(
        ql_ptr, qp_ptr, do_ptr, idx_ptr, p_ptr, dkv_ptr, dpe_ptr,
        r0, S, H, R, P, K,
        s_q_b, s_q_s, s_q_h, s_p_b, s_p_s, s_p_h, s_idx_b, s_idx_s,
        s_dkv_b, s_dkv_t, s_dpe_b, s_dpe_t,
        IEEE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        """Pass 2: one program per (query token, BLOCK_K of its slots) sums the block's key
        gradients over all H heads, dkv = Pᵀ·dO + dSᵀ·q_lat and dpe = dSᵀ·q_pe, before one
        atomic add per element: a key block gets one atomic add per selecting token where
        the fused kernel gives it one per (token, head block). A token's key blocks run side
        by side, so its dO and q rows are read from L2."""
        n_kb = tl.cdiv(K, BLOCK_K)
        pid = tl.program_id(0)
        row = pid // n_kb
        kb = pid % n_kb
        flat = r0 + row
        b = (flat // S).to(tl.int64)
        s = (flat % S).to(tl.int64)
        offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
        k_ok = offs_k < K
        offs_r = tl.arange(0, BLOCK_R)
        offs_p = tl.arange(0, BLOCK_P)
        r_ok, p_ok = offs_r < R, offs_p < P
        dkv = tl.zeros([BLOCK_K, BLOCK_R], tl.float32)
        dpe = tl.zeros([BLOCK_K, BLOCK_P], tl.float32)
        # one product per head block over 2 x BLOCK_H rows, [P; dS]ᵀ · [dO; q_lat]: two dots
        # into one accumulator made Triton convert its layout between them
        j = tl.arange(0, 2 * BLOCK_H)
        is_ds = j >= BLOCK_H
        hj = tl.where(is_ds, j - BLOCK_H, j)
        scr = row.to(tl.int64) * 2 * H * K + is_ds.to(tl.int64) * H * K
        for h0 in range(0, H, BLOCK_H):
            h = h0 + hj
            h_ok = h < H
            q_off = b * s_q_b + s * s_q_s + h[:, None] * s_q_h + offs_r[None, :]
            p_off = b * s_p_b + s * s_p_s + h[:, None] * s_p_h + offs_p[None, :]
            hr = h_ok[:, None] & r_ok[None, :]
            src = tl.where(is_ds[:, None], ql_ptr + q_off, do_ptr + q_off)
            dq_t = tl.load(src, mask=hr, other=0.0)  # [dO; q_lat] rows
            qp = tl.load(qp_ptr + p_off, mask=(is_ds & h_ok)[:, None] & p_ok[None, :], other=0.0)
            s_off = scr[:, None] + h[:, None].to(tl.int64) * K + offs_k[None, :]
            pd = tl.load(p_ptr + s_off, mask=h_ok[:, None] & k_ok[None, :], other=0.0)
            dkv = mma(tl.trans(pd), dq_t, dkv, IEEE)
            dpe = mma(tl.trans(pd), qp, dpe, IEEE)  # (zero q_pe rows against P)
        # the positions only now: their pointer tensors would otherwise live across the loop
        pos = tl.load(idx_ptr + b * s_idx_b + s * s_idx_s + offs_k, mask=k_ok, other=-1)
        valid = pos >= 0
        pos = tl.where(valid, pos, 0).to(tl.int64)
        tl.atomic_add(dkv_ptr + b * s_dkv_b + pos[:, None] * s_dkv_t + offs_r[None, :], dkv,
                      mask=valid[:, None] & r_ok[None, :], sem="relaxed")
        tl.atomic_add(dpe_ptr + b * s_dpe_b + pos[:, None] * s_dpe_t + offs_p[None, :], dpe,
                      mask=valid[:, None] & p_ok[None, :], sem="relaxed")

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
                   num_warps=None, num_stages=None, method="auto", dkv_block_h=None,
                   dkv_block_k=None, scratch_bytes=1 << 30, reload=True, timings=None,
                   dq_block_k=None, dq_stages=None):
    """Gradients of `sparse_mla_fwd`: returns (dq_lat, dq_pe, dkv, dpe) in the input dtypes.

    method "auto" (default): "two_pass" on a GPU at 64 heads or more, else "fused" (H100,
    V3.2 shape: 38.0 against 104 ms; `benchmarks/results/dsa_attention_v32_h100.txt`).
    "fused": one kernel, key gradients added atomically per (token, head block).
    "two_pass": pass 1 computes dq and writes P and dS to a scratch of at most
    `scratch_bytes` (2 x rows x H x K in the input dtype; the tokens go in chunks that fit),
    pass 2 sums the key gradients over all heads before adding them, one atomic add per
    (token, slot, channel). block_h / block_k / num_warps / num_stages tune pass 1 (or the
    fused kernel), dkv_block_h / dkv_block_k pass 2; `reload` makes pass 1 read dS back from
    the scratch for its dq product (see the kernel). "three_pass": pass 1 writes only P and
    dS (nothing accumulates over its key loop, so its gathers pipeline without spilling),
    a dq pass gathers the rows again for dS·kv (dq_block_k keys a step, dq_stages), then
    pass 2 as above; its timings name the dq pass "pass3_ms". `timings` (a dict, CUDA, two-pass): adds
    each pass's milliseconds under "pass1_ms" / "pass2_ms" (CUDA events; synchronises)."""
    require_triton()
    if method not in ("auto", "fused", "two_pass", "three_pass"):
        raise ValueError(f"method must be 'auto', 'fused', 'two_pass' or 'three_pass', not {method!r}")
    B, S, H, R = q_lat.shape
    if method == "auto":  # H100, V3.2 shape: two-pass 38.0 ms (154 TFLOP/s) against fused 104
        method = "two_pass" if q_lat.is_cuda and H >= 64 else "fused"
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
    cuda = q_lat.is_cuda
    ieee = q_lat.dtype == torch.float32
    strides = (q_lat.stride(0), q_lat.stride(1), q_lat.stride(2),
               q_pe.stride(0), q_pe.stride(1), q_pe.stride(2))
    if method in ("two_pass", "three_pass"):
        rows = B * S
        per_row = 2 * H * K * q_lat.element_size()
        chunk = max(1, min(rows, scratch_bytes // max(per_row, 1)))
        pds = empty((chunk, 2, H, K), q_lat.dtype, q_lat.device)  # [P, dS] per token
        BH = block_h or min(64, block(H))
        BK = block_k or (64 if cuda else 16)
        BH2 = dkv_block_h or min(32 if cuda else 64, block(H))  # H100: 32 is 4% faster
        DQK = dq_block_k or (64 if cuda else 16)
        if cuda and min(2 * BH2, DQK) < 16:  # (the interpreter takes any tile)
            raise ValueError("sparse_mla_bwd: on a GPU dkv_block_h must be at least 8 and "
                             "dq_block_k at least 16 (a tensor-core product needs k >= 16)")
        BK2 = dkv_block_k or (64 if cuda else 16)
        n_hb, n_kb = triton.cdiv(H, BH), triton.cdiv(K, BK2)
        ev = [] if timings is not None and cuda else None

        def mark():
            if ev is not None:
                ev.append(torch.cuda.Event(enable_timing=True))
                ev[-1].record()
        for r0 in range(0, rows, chunk):
            n = min(chunk, rows - r0)
            mark()
            kv_args = (kv.stride(0), kv.stride(1), pe.stride(0), pe.stride(1),
                       idx.stride(0), idx.stride(1))
            two = method == "two_pass"
            _bwd_dq_kernel[(n * n_hb,)](
                q_lat, q_pe, kv, pe, idx, out, dout, lse, dql, dqp, pds,
                r0, S, H, R, P, K, scale, scale * LOG2E, *strides, *kv_args,
                IEEE=ieee, BLOCK_H=BH, BLOCK_R=block(R), BLOCK_P=block(P), BLOCK_K=BK,
                RELOAD=reload, DQ=two, num_warps=num_warps or (8 if cuda and two else 4),
                num_stages=num_stages or (1 if two or not cuda else 2))
            if not two:
                mark()
                _bwd_dq_gather_kernel[(n * n_hb,)](
                    kv, pe, idx, pds, dql, dqp, r0, S, H, R, P, K, *strides, *kv_args,
                    IEEE=ieee, BLOCK_H=BH, BLOCK_R=block(R), BLOCK_P=block(P),
                    BLOCK_K=DQK, num_warps=8 if cuda else 4,
                    num_stages=dq_stages or (2 if cuda else 1))
            mark()
            _bwd_dkv_kernel[(n * n_kb,)](
                q_lat, q_pe, dout, idx, pds, dkv, dpe,
                r0, S, H, R, P, K, *strides, idx.stride(0), idx.stride(1),
                dkv.stride(0), dkv.stride(1), dpe.stride(0), dpe.stride(1),
                IEEE=ieee, BLOCK_H=BH2, BLOCK_R=block(R), BLOCK_P=block(P), BLOCK_K=BK2,
                num_warps=8 if cuda else 4, num_stages=1)
            mark()
        if ev:
            torch.cuda.synchronize()
            names = ("pass1_ms", "pass2_ms") if method == "two_pass" else \
                ("pass1_ms", "pass3_ms", "pass2_ms")
            step = len(names) + 1
            for i in range(0, len(ev), step):
                for j, name in enumerate(names):
                    timings[name] = timings.get(name, 0.0) + ev[i + j].elapsed_time(ev[i + j + 1])
        return dql, dqp, dkv.to(kv.dtype), dpe.to(pe.dtype)
    # a wide latent (V3.2: 512) takes 32 heads x 32 keys on the GPU: 64 x 16 needs 311 KB of
    # shared memory on sm_90 (H100 limit 227 KB)
    wide = R > 256 and cuda
    BH = block_h or min(32 if wide else 64, block(H))
    BK = block_k or ((32 if cuda else 16))
    grid = (B * S, triton.cdiv(H, BH))
    _sparse_mla_bwd_kernel[grid](
        q_lat, q_pe, kv, pe, idx, out, dout, lse, dql, dqp, dkv, dpe,
        S, H, R, P, K, scale, scale * LOG2E, *strides,
        kv.stride(0), kv.stride(1), pe.stride(0), pe.stride(1), idx.stride(0), idx.stride(1),
        dkv.stride(0), dkv.stride(1), dpe.stride(0), dpe.stride(1),
        IEEE=ieee, BLOCK_H=BH, BLOCK_R=block(R), BLOCK_P=block(P),
        BLOCK_K=BK, num_warps=num_warps or (8 if cuda else 4),
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
