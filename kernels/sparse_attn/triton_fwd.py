"""Sparse MLA attention forward in Triton: prefill and split-K decode.

One program owns one query token and BLOCK_H of its heads. It walks the token's K selected
positions in blocks of BLOCK_K, gathers their latent rows kv [BLOCK_K, R] and RoPE rows
pe [BLOCK_K, P] once for all its heads (MQA: every head shares them), scores them on tensor
cores, keeps an online softmax in fp32 and accumulates P·kv into [BLOCK_H, R].

Decode splits the K slots over N_SPLIT programs that write partial (out, lse) in fp32; a
small combine kernel merges them. The cache is contiguous [B, T, .] or paged
[n_pages, page, .] through a block table (indices stay logical positions), and the latent
part may be FP8 e4m3 with one fp32 scale per 128 (or R / n_groups) channels (the V3.2
656-byte format keeps RoPE in bf16). With 1, 2 or 4 groups of a power-of-two width the
split-scale kernel runs one pair of products per group and puts the scales on the scores
and probabilities; other layouts rescale every gathered element. On the H200 at 16 heads
either FP8 path is slower than the bf16 one (at 128K: 107 against 69 ms; the split-scale
kernel runs out of registers and spills), so FP8 pays off in cache size, not yet in prefill
speed. At 16 heads the bf16 kernel is bound by shared memory (ncu: L1/TEX 76% busy, L2
40%): every gathered row is written to shared memory and read by both products for only
16 rows of queries. Putting the keys on the MMA's M side instead (computing the transposed
products) was tried and measured slower (104 against 76 ms at 128K).
"""

from __future__ import annotations

import torch

from .._common import block, empty, mma, require_triton, sm_count, tl, triton

LOG2E = 1.4426950408889634

if triton is not None:

    @triton.jit
    def _row_ptrs(b, pos, bt_ptr, s_bt, PAGED: tl.constexpr, PAGE: tl.constexpr, s_b, s_t):
        """Element offsets of logical rows `pos` of batch b (contiguous or paged)."""
        if PAGED:
            page = tl.load(bt_ptr + b * s_bt + pos // PAGE).to(tl.int64)
            return page * s_b + (pos % PAGE).to(tl.int64) * s_t
        else:
            return b * s_b + pos.to(tl.int64) * s_t

    @triton.jit
    def _softmax_step(z, valid, m_i, l_i, scale_log2):
        """Online-softmax update for one block of natural-unit scores z [BLOCK_H, BLOCK_K]:
        the block's probabilities (against the new running max), the rescale factor of the
        old accumulator, and the new running max and sum."""
        z = tl.where(valid[None, :], z * scale_log2, float("-inf"))  # base-2 logits
        m_new = tl.maximum(m_i, tl.max(z, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(z - m_safe[:, None])
        return p, alpha, m_new, l_i * alpha + tl.sum(p, 1)

    @triton.jit
    def _lse_of(m_i, l_i):
        """(safe divisor, natural-log LSE; -inf for a row that saw no key)."""
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.log2(l_safe)) / 1.4426950408889634)
        return l_safe, lse

    @triton.jit
    def _sparse_mla_fwd_kernel(
        ql_ptr, qp_ptr, kv_ptr, pe_ptr, kvs_ptr, idx_ptr, bt_ptr, out_ptr, lse_ptr,
        S, H, R, P, K, k_per_split, scale_log2,
        s_ql_b, s_ql_s, s_ql_h, s_qp_b, s_qp_s, s_qp_h,
        s_kv_b, s_kv_t, s_pe_b, s_pe_t, s_kvs_b, s_kvs_t,
        s_idx_b, s_idx_s, s_bt,
        s_o_b, s_o_s, s_o_sp, s_o_h, s_l_b, s_l_s, s_l_sp,
        PAGED: tl.constexpr, PAGE: tl.constexpr, FP8KV: tl.constexpr, GROUP: tl.constexpr,
        N_GROUPS: tl.constexpr, GROUP_POW2: tl.constexpr, IEEE: tl.constexpr,
        BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
        BLOCK_K: tl.constexpr, HEADS_FASTEST: tl.constexpr, LSE_ONLY: tl.constexpr,
        WS: tl.constexpr, IDX_AHEAD: tl.constexpr,
    ):
        """WS: ask Triton to warp-specialise the key loop (producer / consumer partitions).
        IDX_AHEAD: load the next block's positions one iteration early, so the indirect
        gather does not wait on its own index load."""
        if HEADS_FASTEST:  # a token's head blocks run side by side and share its gathers in L2
            # one flat axis (grid x allows 2^31 - 1 programs; y and z only 65535 tokens)
            n_hb = tl.cdiv(H, BLOCK_H)
            pid = tl.program_id(0)
            pid_h = pid % n_hb
            pid_s = pid // n_hb
        else:
            pid_s = tl.program_id(0)
            pid_h = tl.program_id(1)
        split = tl.program_id(2)
        b = (pid_s // S).to(tl.int64)
        s = (pid_s % S).to(tl.int64)
        offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
        offs_r = tl.arange(0, BLOCK_R)
        offs_p = tl.arange(0, BLOCK_P)
        h_ok = offs_h < H
        r_ok = offs_r < R
        p_ok = offs_p < P
        ql = tl.load(ql_ptr + b * s_ql_b + s * s_ql_s + offs_h[:, None] * s_ql_h + offs_r[None, :],
                     mask=h_ok[:, None] & r_ok[None, :], other=0.0)
        qp = tl.load(qp_ptr + b * s_qp_b + s * s_qp_s + offs_h[:, None] * s_qp_h + offs_p[None, :],
                     mask=h_ok[:, None] & p_ok[None, :], other=0.0)
        m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_H], tl.float32)
        acc = tl.zeros([BLOCK_H, BLOCK_R], tl.float32)
        k_lo = split * k_per_split
        k_hi = tl.minimum(k_lo + k_per_split, K)
        idx_row = idx_ptr + b * s_idx_b + s * s_idx_s
        if IDX_AHEAD:
            offs_k = k_lo + tl.arange(0, BLOCK_K)
            pos_next = tl.load(idx_row + offs_k, mask=offs_k < k_hi, other=-1)
        for k0 in tl.range(k_lo, k_hi, BLOCK_K, warp_specialize=WS):
            if IDX_AHEAD:
                pos = pos_next
                offs_n = k0 + BLOCK_K + tl.arange(0, BLOCK_K)
                pos_next = tl.load(idx_row + offs_n, mask=offs_n < k_hi, other=-1)
            else:
                offs_k = k0 + tl.arange(0, BLOCK_K)
                pos = tl.load(idx_row + offs_k, mask=offs_k < k_hi, other=-1)
            valid = pos >= 0
            pos = tl.where(valid, pos, 0)
            kv_rows = _row_ptrs(b, pos, bt_ptr, s_bt, PAGED, PAGE, s_kv_b, s_kv_t)
            pe_rows = _row_ptrs(b, pos, bt_ptr, s_bt, PAGED, PAGE, s_pe_b, s_pe_t)
            kv_t = tl.load(kv_ptr + kv_rows[:, None] + offs_r[None, :],
                           mask=valid[:, None] & r_ok[None, :], other=0.0)
            if FP8KV:
                kvs_rows = _row_ptrs(b, pos, bt_ptr, s_bt, PAGED, PAGE, s_kvs_b, s_kvs_t)
                if GROUP_POW2:  # one scale load per group, broadcast over its channels
                    offs_g = tl.arange(0, BLOCK_R // GROUP)
                    sc = tl.load(kvs_ptr + kvs_rows[:, None] + offs_g[None, :],
                                 mask=valid[:, None] & (offs_g[None, :] < N_GROUPS), other=0.0)
                    kv_t = tl.reshape(kv_t.to(tl.float32), [BLOCK_K, BLOCK_R // GROUP, GROUP])
                    kv_t = tl.reshape(kv_t * sc[:, :, None], [BLOCK_K, BLOCK_R]).to(ql.dtype)
                else:
                    sc = tl.load(kvs_ptr + kvs_rows[:, None] + (offs_r // GROUP)[None, :],
                                 mask=valid[:, None] & r_ok[None, :], other=0.0)
                    kv_t = (kv_t.to(tl.float32) * sc).to(ql.dtype)
            pe_t = tl.load(pe_ptr + pe_rows[:, None] + offs_p[None, :],
                           mask=valid[:, None] & p_ok[None, :], other=0.0)
            z = mma(ql, tl.trans(kv_t), None, IEEE)
            z = mma(qp, tl.trans(pe_t), z, IEEE)
            p, alpha, m_i, l_i = _softmax_step(z, valid, m_i, l_i, scale_log2)
            if not LSE_ONLY:  # (the LSE alone needs no P·V)
                acc = mma(p.to(kv_t.dtype), kv_t, acc * alpha[:, None], IEEE)
        l_safe, lse = _lse_of(m_i, l_i)
        if not LSE_ONLY:
            o = acc / l_safe[:, None]
            o_ptrs = (out_ptr + b * s_o_b + s * s_o_s + split * s_o_sp + offs_h[:, None] * s_o_h
                      + offs_r[None, :])
            tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=h_ok[:, None] & r_ok[None, :])
        tl.store(lse_ptr + b * s_l_b + s * s_l_s + split * s_l_sp + offs_h, lse, mask=h_ok)

    @triton.jit
    def _fp8_group(kv_ptr, kv_rows, kvs_ptr, kvs_rows, valid, offs_c, g: tl.constexpr,
                   GR: tl.constexpr, dtype: tl.constexpr):
        """Channels [g*GR, (g+1)*GR) of the gathered FP8 rows, widened to `dtype` unscaled,
        and their scales [BLOCK_K]."""
        kv = tl.load(kv_ptr + kv_rows[:, None] + g * GR + offs_c[None, :], mask=valid[:, None],
                     other=0.0).to(dtype)
        return kv, tl.load(kvs_ptr + kvs_rows + g, mask=valid, other=0.0)

    @triton.jit
    def _q_group(q_base, h_ok, g: tl.constexpr, GR: tl.constexpr, F16: tl.constexpr):
        """Channels [g*GR, (g+1)*GR) of the program's query heads, [BLOCK_H, GR]."""
        q = tl.load(q_base + g * GR, mask=h_ok[:, None], other=0.0)
        if F16:
            q = q.to(tl.float16)
        return q

    @triton.jit
    def _sparse_mla_fwd_fp8_kernel(
        ql_ptr, qp_ptr, kv_ptr, pe_ptr, kvs_ptr, idx_ptr, bt_ptr, out_ptr, lse_ptr,
        S, H, R, P, K, k_per_split, scale_log2,
        s_ql_b, s_ql_s, s_ql_h, s_qp_b, s_qp_s, s_qp_h,
        s_kv_b, s_kv_t, s_pe_b, s_pe_t, s_kvs_b, s_kvs_t,
        s_idx_b, s_idx_s, s_bt,
        s_o_b, s_o_s, s_o_sp, s_o_h, s_l_b, s_l_s, s_l_sp,
        PAGED: tl.constexpr, PAGE: tl.constexpr, NG: tl.constexpr, GR: tl.constexpr,
        IEEE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
        BLOCK_K: tl.constexpr, F16: tl.constexpr,
    ):
        """FP8 latent in NG (1, 2 or 4) groups of GR channels (R = NG * GR), one fp32 scale
        per group and token (V3.2: 4 x 128). Each group is its own pair of 2-D products with its own
        accumulator; a group's scales multiply its score columns and, for P.V, the
        probabilities, so the e4m3 tile is only widened, never rescaled element-wise.
        F16: the products run in fp16 (q cast to it): e4m3 widens to fp16 exactly in one
        instruction per pair, where bf16 takes a detour through fp32 (1.34x faster at 128K
        on the H200, and 10 mantissa bits instead of 7 for q and the probabilities)."""
        pid_s = tl.program_id(0)
        pid_h = tl.program_id(1)
        split = tl.program_id(2)
        b = (pid_s // S).to(tl.int64)
        s = (pid_s % S).to(tl.int64)
        offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
        offs_c = tl.arange(0, GR)
        offs_p = tl.arange(0, BLOCK_P)
        h_ok = offs_h < H
        p_ok = offs_p < P
        q_base = ql_ptr + b * s_ql_b + s * s_ql_s + offs_h[:, None] * s_ql_h + offs_c[None, :]
        q0 = _q_group(q_base, h_ok, 0, GR, F16)
        acc0 = tl.zeros([BLOCK_H, GR], tl.float32)
        if NG >= 2:
            q1 = _q_group(q_base, h_ok, 1, GR, F16)
            acc1 = tl.zeros([BLOCK_H, GR], tl.float32)
        if NG == 4:
            q2 = _q_group(q_base, h_ok, 2, GR, F16)
            q3 = _q_group(q_base, h_ok, 3, GR, F16)
            acc2 = tl.zeros([BLOCK_H, GR], tl.float32)
            acc3 = tl.zeros([BLOCK_H, GR], tl.float32)
        qp = tl.load(qp_ptr + b * s_qp_b + s * s_qp_s + offs_h[:, None] * s_qp_h + offs_p[None, :],
                     mask=h_ok[:, None] & p_ok[None, :], other=0.0)
        m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_H], tl.float32)
        k_lo = split * k_per_split
        k_hi = tl.minimum(k_lo + k_per_split, K)
        idx_row = idx_ptr + b * s_idx_b + s * s_idx_s
        dt = q0.dtype
        for k0 in range(k_lo, k_hi, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            pos = tl.load(idx_row + offs_k, mask=offs_k < k_hi, other=-1)
            valid = pos >= 0
            pos = tl.where(valid, pos, 0)
            kv_rows = _row_ptrs(b, pos, bt_ptr, s_bt, PAGED, PAGE, s_kv_b, s_kv_t)
            kvs_rows = _row_ptrs(b, pos, bt_ptr, s_bt, PAGED, PAGE, s_kvs_b, s_kvs_t)
            pe_rows = _row_ptrs(b, pos, bt_ptr, s_bt, PAGED, PAGE, s_pe_b, s_pe_t)
            pe_t = tl.load(pe_ptr + pe_rows[:, None] + offs_p[None, :],
                           mask=valid[:, None] & p_ok[None, :], other=0.0)
            z = mma(qp, tl.trans(pe_t), None, IEEE)
            k0_t, s0_t = _fp8_group(kv_ptr, kv_rows, kvs_ptr, kvs_rows, valid, offs_c, 0, GR, dt)
            z += mma(q0, tl.trans(k0_t), None, IEEE) * s0_t[None, :]
            if NG >= 2:
                k1_t, s1_t = _fp8_group(kv_ptr, kv_rows, kvs_ptr, kvs_rows, valid, offs_c, 1, GR, dt)
                z += mma(q1, tl.trans(k1_t), None, IEEE) * s1_t[None, :]
            if NG == 4:
                k2_t, s2_t = _fp8_group(kv_ptr, kv_rows, kvs_ptr, kvs_rows, valid, offs_c, 2, GR, dt)
                k3_t, s3_t = _fp8_group(kv_ptr, kv_rows, kvs_ptr, kvs_rows, valid, offs_c, 3, GR, dt)
                z += mma(q2, tl.trans(k2_t), None, IEEE) * s2_t[None, :]
                z += mma(q3, tl.trans(k3_t), None, IEEE) * s3_t[None, :]
            p, alpha, m_i, l_i = _softmax_step(z, valid, m_i, l_i, scale_log2)
            acc0 = mma((p * s0_t[None, :]).to(dt), k0_t, acc0 * alpha[:, None], IEEE)
            if NG >= 2:
                acc1 = mma((p * s1_t[None, :]).to(dt), k1_t, acc1 * alpha[:, None], IEEE)
            if NG == 4:
                acc2 = mma((p * s2_t[None, :]).to(dt), k2_t, acc2 * alpha[:, None], IEEE)
                acc3 = mma((p * s3_t[None, :]).to(dt), k3_t, acc3 * alpha[:, None], IEEE)
        l_safe, lse = _lse_of(m_i, l_i)
        o_base = (out_ptr + b * s_o_b + s * s_o_s + split * s_o_sp + offs_h[:, None] * s_o_h
                  + offs_c[None, :])
        ty = out_ptr.dtype.element_ty
        tl.store(o_base, (acc0 / l_safe[:, None]).to(ty), mask=h_ok[:, None])
        if NG >= 2:
            tl.store(o_base + GR, (acc1 / l_safe[:, None]).to(ty), mask=h_ok[:, None])
        if NG == 4:
            tl.store(o_base + 2 * GR, (acc2 / l_safe[:, None]).to(ty), mask=h_ok[:, None])
            tl.store(o_base + 3 * GR, (acc3 / l_safe[:, None]).to(ty), mask=h_ok[:, None])
        tl.store(lse_ptr + b * s_l_b + s * s_l_s + split * s_l_sp + offs_h, lse, mask=h_ok)

    @triton.jit
    def _combine_kernel(po_ptr, pl_ptr, out_ptr, lse_ptr, H, R, N_SPLIT,
                        s_po_row, s_po_sp, s_po_h, s_pl_row, s_pl_sp, s_o_row, s_o_h,
                        BLOCK_SP: tl.constexpr, BLOCK_R: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1)
        sp = tl.arange(0, BLOCK_SP)
        offs_r = tl.arange(0, BLOCK_R)
        sp_ok = sp < N_SPLIT
        lse = tl.load(pl_ptr + row * s_pl_row + sp * s_pl_sp + h, mask=sp_ok, other=float("-inf"))
        m = tl.max(lse, 0)
        m_safe = tl.where(m == float("-inf"), 0.0, m)
        wgt = tl.exp(lse - m_safe)
        tot = tl.sum(wgt, 0)
        po = tl.load(po_ptr + row * s_po_row + sp[:, None] * s_po_sp + h * s_po_h + offs_r[None, :],
                     mask=sp_ok[:, None] & (offs_r[None, :] < R), other=0.0)
        o = tl.sum(po * wgt[:, None], 0) / tl.where(tot == 0.0, 1.0, tot)
        tl.store(out_ptr + row * s_o_row + h * s_o_h + offs_r, o.to(out_ptr.dtype.element_ty),
                 mask=offs_r < R)
        tl.store(lse_ptr + row * H + h, tl.where(tot == 0.0, float("-inf"), m_safe + tl.log(tot)))


def split_scale_fp8(R: int, n_groups: int) -> bool:
    """Whether an FP8 cache of R channels in n_groups scale groups takes the split-scale
    kernel (1, 2 or 4 groups of a power-of-two width >= 16); other layouts go through the
    kernel that rescales every element."""
    gr = R // max(n_groups, 1)
    return n_groups in (1, 2, 4) and gr * n_groups == R and gr >= 16 and gr & (gr - 1) == 0


def _launch(q_lat, q_pe, kv, pe, idx, scale, block_table, kv_scale, n_split, out_dtype,
            block_h, block_k, num_warps, num_stages, heads_fastest=False, lse_only=False,
            warp_specialize=False, idx_ahead=False):
    require_triton()
    B, S, H, R = q_lat.shape
    P = q_pe.shape[-1]
    K = idx.shape[-1]
    for name, t in (("q_lat", q_lat), ("q_pe", q_pe), ("kv", kv), ("pe", pe)):
        if t.stride(-1) != 1:
            raise ValueError(f"{name} needs a unit last stride")
    idx = idx if idx.dtype == torch.int32 else idx.to(torch.int32)
    idx = idx.contiguous()
    paged = block_table is not None
    fp8 = kv_scale is not None
    if fp8 and kv.dtype != torch.float8_e4m3fn:
        raise ValueError("kv_scale given but kv is not float8_e4m3fn")
    group = R // kv_scale.shape[-1] if fp8 else 1
    BR, BP = block(R), block(P)
    BH = block_h or min(64, block(H))
    BK = block_k or (64 if q_lat.is_cuda else 16)
    dev = q_lat.device
    if lse_only:  # no output: a placeholder for the pointer and strides
        if n_split != 1 or kv_scale is not None:
            raise ValueError("lse_only takes one split over a bf16/fp32 latent")
        out = torch.empty(1, 1, 1, 1, 1, dtype=out_dtype, device=dev)
    elif n_split == 1:
        out = empty((B, S, 1, H, R), out_dtype, dev)
    else:
        out = empty((B, S, n_split, H, R), torch.float32, dev)
    lse = empty((B, S, n_split, H), torch.float32, dev)
    k_per_split = triton.cdiv(triton.cdiv(K, n_split), BK) * BK
    n_hb = triton.cdiv(H, BH)
    heads_fastest = heads_fastest and n_hb > 1
    grid = (n_hb * B * S, 1, n_split) if heads_fastest else (B * S, n_hb, n_split)
    bt = block_table.to(torch.int32).contiguous() if paged else idx
    kvs = kv_scale if fp8 else pe
    args = (q_lat, q_pe, kv, pe, kvs, idx, bt, out, lse,
            S, H, R, P, K, k_per_split, scale * LOG2E,
            q_lat.stride(0), q_lat.stride(1), q_lat.stride(2),
            q_pe.stride(0), q_pe.stride(1), q_pe.stride(2),
            kv.stride(0), kv.stride(1), pe.stride(0), pe.stride(1), kvs.stride(0), kvs.stride(1),
            idx.stride(0), idx.stride(1), bt.stride(0),
            out.stride(0), out.stride(1), out.stride(2), out.stride(3),
            lse.stride(0), lse.stride(1), lse.stride(2))
    page = kv.shape[1] if paged else 1
    ng = kv_scale.shape[-1] if fp8 else 0
    if fp8 and split_scale_fp8(R, ng) and kv_scale.stride(-1) == 1:
        _sparse_mla_fwd_fp8_kernel[(B * S, n_hb, n_split)](
            *args, PAGED=paged, PAGE=page, NG=ng, GR=R // ng,
            IEEE=(q_lat.dtype == torch.float32), BLOCK_H=BH, BLOCK_P=BP, BLOCK_K=BK,
            F16=q_lat.dtype != torch.float32, num_warps=num_warps, num_stages=num_stages,
        )
    else:
        _sparse_mla_fwd_kernel[grid](
            *args, PAGED=paged, PAGE=page, FP8KV=fp8, GROUP=group,
            N_GROUPS=max(ng, 1), GROUP_POW2=fp8 and group & (group - 1) == 0 and BR % group == 0,
            IEEE=(q_lat.dtype == torch.float32),
            BLOCK_H=BH, BLOCK_R=BR, BLOCK_P=BP, BLOCK_K=BK, HEADS_FASTEST=heads_fastest,
            LSE_ONLY=lse_only, WS=warp_specialize, IDX_AHEAD=idx_ahead,
            num_warps=num_warps, num_stages=num_stages,
        )
    return merge_splits(out, lse, out_dtype)


def merge_splits(out, lse, out_dtype):
    """Per-split (out [B,S,n,H,R], lse [B,S,n,H]) -> (out [B,S,H,R] in out_dtype, lse [B,S,H]):
    one split is a view; more are merged by the LSE-weighted combine kernel (fp32 partials)."""
    B, S, n_split, H, R = out.shape
    if n_split == 1:
        return out[:, :, 0], lse[:, :, 0]
    final = empty((B, S, H, R), out_dtype, out.device)
    final_lse = empty((B, S, H), torch.float32, out.device)
    po, pl = out.view(B * S, n_split, H, R), lse.view(B * S, n_split, H)
    _combine_kernel[(B * S, H)](
        po, pl, final, final_lse, H, R, n_split,
        po.stride(0), po.stride(1), po.stride(2), pl.stride(0), pl.stride(1),
        final.stride(1), final.stride(2),
        BLOCK_SP=block(n_split, 2), BLOCK_R=block(R), num_warps=4,
    )
    return final, final_lse


def sparse_mla_fwd(q_lat, q_pe, kv, pe, idx, scale, block_h=None, block_k=None, num_warps=None,
                   num_stages=None, kv_scale=None, heads_fastest=False, lse_only=False,
                   warp_specialize=False, idx_ahead=False, impl="auto"):
    """Prefill forward. q_lat [B,S,H,R], q_pe [B,S,H,P], kv [B,T,R], pe [B,T,P],
    idx [B,S,K] (-1 = empty) -> (out [B,S,H,R] in q's dtype, lse [B,S,H] fp32, natural log).
    kv may be e4m3 with kv_scale [B,T,G] (forward only; the backward takes bf16/fp32 kv).
    Over an e4m3 latent in 1, 2 or 4 power-of-two groups the latent products run in fp16,
    so a bf16 q_lat must lie within fp16's range (|q| < 65504). `lse_only` (bf16/fp32
    latent): skip P·V; out is then a placeholder (see `sparse_mla_lse`). `warp_specialize` and
    `idx_ahead` are schedule knobs of the bf16/fp32 kernel that the benchmark sweeps (same
    result; see the kernel's docstring). `impl`: "triton" this module's kernel; "gluon" the
    lockstep hand-scheduled Hopper kernel (`gluon_fwd.py`: V3.2 layout, bf16, sm_90 only;
    H100 at the V3.2 shape 360 against 248 TFLOP/s); "gluon_ws" the warp-specialised one
    (`gluon_ws.py`, 416); other "gluon_*" variants in `_gluon_kernel`; "auto" (default) the
    warp-specialised one wherever it applies and no tile or schedule argument is given, else
    Triton."""
    tuned = (any(x is not None for x in (block_h, block_k, num_warps, num_stages))
             or warp_specialize or idx_ahead)
    if _use_gluon(impl, tuned, q_lat, q_pe, kv, pe, kv_scale is not None or lse_only):
        from .gluon_fwd import sparse_mla_fwd_gluon

        return sparse_mla_fwd_gluon(q_lat, q_pe, kv, pe, idx, scale,
                                    **_gluon_kernel(impl, prefill=True))
    # H200: 8 warps for head blocks of 64 over a bf16 latent (V3.2 shape: 247 against 139
    # TFLOP/s with 4); 4 for smaller head blocks (16 heads: 69 against 75 ms at 128K) and
    # over an FP8 latent
    wide = q_lat.is_cuda and kv_scale is None and (block_h or min(64, block(q_lat.shape[2]))) >= 64
    nw = num_warps or (8 if wide else 4)
    ns = num_stages or (2 if q_lat.is_cuda else 1)
    return _launch(q_lat, q_pe, kv, pe, idx, scale, None, kv_scale, 1, q_lat.dtype, block_h,
                   block_k, nw, ns, heads_fastest, lse_only, warp_specialize, idx_ahead)


IMPLS = ("auto", "triton", "gluon", "gluon_ws", "gluon_ws_early", "gluon_ws_stagger",
         "gluon_inflight")


def _gluon_kernel(impl, prefill=False) -> dict:
    """`sparse_mla_fwd_gluon`'s kernel arguments for an impl: "gluon_ws" the warp-specialised
    kernel ("gluon_ws_early": handing half buffers back earlier; "gluon_ws_stagger": that and
    the consumers' softmax staggered; both unmeasured), "gluon" the lockstep one,
    "gluon_inflight" the lockstep one with P.V left in flight (the schedule measured before
    ptxas's serialisation was found); "auto" the fastest measured (H100, V3.2 shape):
    warp-specialised for prefill (416 against 360 TFLOP/s), lockstep for decode (B=32: 67
    against 73 us)."""
    if impl == "auto":
        impl = "gluon_ws" if prefill else "gluon"
    return {"gluon_ws": {"kernel": "ws"},
            "gluon_ws_early": {"kernel": "ws", "early_free": True},
            "gluon_ws_stagger": {"kernel": "ws", "early_free": True, "stagger": True},
            "gluon_inflight": {"pv_inflight": True}}.get(impl, {})


def _use_gluon(impl, tuned, q_lat, q_pe, kv, pe, other_path) -> bool:
    """Whether a forward goes to a Gluon kernel: always for impl="gluon*" (which raises
    where it cannot), for "auto" where it applies and nothing asks for this module's own."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))}, not {impl!r}")
    if impl.startswith("gluon"):
        if other_path:
            raise ValueError(f"impl={impl!r} takes a bf16 latent in contiguous [B, T, .] rows "
                             "and computes the output")
        return True
    if impl == "triton" or tuned or other_path or not q_lat.is_cuda:
        return False
    from .gluon_fwd import gluon_fwd_supported

    return gluon_fwd_supported(q_lat, q_pe, kv, pe) is None


def sparse_mla_lse(q_lat, q_pe, kv, pe, idx, scale):
    """Only the log-sum-exp [B,S,H] of `sparse_mla_fwd` (the scores, no P·V): what the
    indexer's KL targets are normalised by."""
    return sparse_mla_fwd(q_lat, q_pe, kv, pe, idx, scale, lse_only=True)[1]


def decode_split(rows: int, H: int, K: int, device, block_h=None) -> int:
    """How many programs share one token's K selections in `sparse_mla_decode`.

    About one program per SM (rows x head blocks x splits, rounded down), at most 32 and at
    least 64 selections per split: every extra split writes an fp32 [H, R] partial that the
    combine kernel reads back. H100, V3.2 shape (128 heads, 131K keys): B=1 is fastest at 32
    splits, B=32 at 2 (and 4 warps: 161 us, against 179 at 4 splits and 455 at 32), B=64 at 1
    (`benchmarks/results/dsa_attention_v32_h100.txt`). On the CPU (interpreter) at most 4."""
    if torch.device(device).type != "cuda":
        return max(1, min(4, K // 16))
    n_hb = -(-H // (block_h or min(64, block(H))))
    want = sm_count(device) // max(1, rows * n_hb)
    return max(1, min(want, 32, K // 64))


def sparse_mla_decode(q_lat, q_pe, kv, pe, idx, scale, block_table=None, kv_scale=None,
                      n_split=None, block_h=None, block_k=None, num_warps=None, num_stages=None,
                      impl="auto"):
    """Decode forward for a few query tokens per sequence.

    q_lat [B,Sq,H,R], q_pe [B,Sq,H,P]; kv [B,T,R] / pe [B,T,P] contiguous, or paged
    [n_pages, page, R|P] with block_table [B, max_pages]; kv may be e4m3 with kv_scale
    [B,T,G] / [n_pages,page,G] fp32 (G groups of R // G channels). idx [B,Sq,K] holds logical
    positions (-1 = empty). K is split over `n_split` programs per token (flash-decoding) and
    merged by a combine kernel. Returns (out [B,Sq,H,R], lse [B,Sq,H]). `impl` as in
    `sparse_mla_fwd` (the Gluon kernels take a contiguous bf16 cache, not a paged or FP8
    one); "auto" takes the lockstep Gluon kernel where it applies (H100, V3.2 shape at 128K:
    B=1 13.0 against 14.5 us, B=32 67 against 95, B=64 114 against 173).
    """
    if n_split is None:
        n_split = decode_split(q_lat.shape[0] * q_lat.shape[1], q_lat.shape[2], idx.shape[-1],
                               q_lat.device, block_h)
    tuned = any(x is not None for x in (block_h, block_k, num_warps, num_stages))
    if _use_gluon(impl, tuned, q_lat, q_pe, kv, pe, block_table is not None or kv_scale is not None):
        from .gluon_fwd import sparse_mla_fwd_gluon

        return sparse_mla_fwd_gluon(q_lat, q_pe, kv, pe, idx, scale, n_split=n_split,
                                    **_gluon_kernel(impl))
    # 8 warps for head blocks of 64 over a bf16 latent, as in the prefill (H100, B=32 at
    # 128 heads: 95 against 161 us with 4)
    wide = (q_lat.is_cuda and kv_scale is None
            and (block_h or min(64, block(q_lat.shape[2]))) >= 64)
    nw = num_warps or (8 if wide else 4)
    ns = num_stages or (2 if q_lat.is_cuda else 1)
    return _launch(q_lat, q_pe, kv, pe, idx, scale, block_table, kv_scale, n_split,
                   q_lat.dtype, block_h, block_k, nw, ns)
