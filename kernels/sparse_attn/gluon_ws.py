"""Sparse MLA forward in Gluon for Hopper with a producer warpgroup and two consumers that
each own a whole key block: the schedule FlashMLA's sparse prefill describes, written here
from its published facts (no code taken).

Why a second Gluon kernel. The lockstep kernel (`gluon_fwd.py`) splits each 64-key block
between its two warpgroups, so each issues m64n32k16 score steps. A wgmma reading both
operands from shared memory moves (64 + N) x 32 bytes per (N / 2) cycles of tensor work:
192 B a cycle at N = 32 against the SM's 128, so its score phase runs at about two thirds
of the tensor rate however well the rest is hidden; at N = 64 it is exactly 128. And both
warpgroups stop for the softmax at the same time, so the tensor cores idle through it.

Here one program (12 warps) owns a query token and 64 heads, and takes its keys two blocks
of 64 at a time:
- consumer c (warpgroup c, c = 0, 1) computes the [64 heads, 64 keys] scores of block
  2j + c alone (m64n64k16), so each key is read from shared memory once;
- the two exchange their row maxima through shared memory and both use the joint maximum,
  so their running sums stay on one scale and add up at the end;
- each writes its P (bf16) into the RoPE part of its own buffer, dead once its scores are
  done, and computes columns [256c, 256c + 256) of the output over both blocks: its own P
  from registers, the other's from shared memory;
- the producer (4 warps, 40 registers; the consumers get 232) gathers rows with cp.async
  into two buffers, each in two halves of 256 latent columns; a half is refilled as soon
  as the two warpgroups that read it let go of it (mbarriers with expected counts), in the
  order they do. By default a consumer lets go of both its halves once both its P.V are
  done: a wgmma left in flight over the loop's back edge would make ptxas serialise them
  all.

Buffer b's RoPE rows travel with the half that the other consumer reads (half 1 - b), since
that consumer reads P from them last. Shared memory: query 72 KB, two buffers 144 KB,
barriers, maxima and positions: 218 KB.

Two unmeasured knobs (`EARLY_FREE`, `STAGGER`; impl="gluon_ws_early" / "gluon_ws_stagger"):
each consumer hands its own half buffer back after its local P.V instead of after both;
consumer 0 leads with its own maximum, issues its local P.V, and only then takes the joint
maximum from consumer 1 and rescales (its accumulator, sum and shared P by
exp2(m_own - m_joint)), so consumer 1's softmax runs under consumer 0's P.V instead of both
stopping for the exchange at once (the order FlashMLA's kernel uses).

The compile for sm_90 (`gluon_fwd.compile_report("ws")`): no spill, no serialised wgmma,
36 m64n64k16 score steps and 8 m64n256k16 P.V steps per consumer. On an H100 at the V3.2
shape (S 4096 over 32K keys, k 2048, 128 heads): 5.62 ms = 416 TFLOP/s, against 6.49 for the
lockstep kernel and 9.44 for the best Triton one; prefill default ("auto") on sm_90,
launched by `gluon_fwd.sparse_mla_fwd_gluon(kernel="ws")`.
"""

from __future__ import annotations

from .gluon_fwd import gluon

if gluon is not None:
    from .gluon_fwd import _positions

if gluon is not None:
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier,
                                                                  warpgroup_mma,
                                                                  warpgroup_mma_wait)

HALF = 256  # latent columns a half buffer (and a consumer's output columns) holds
CONSUMER_REGS = 232
PRODUCER_REGS = 40

if gluon is not None:

    @gluon.jit
    def _ws_fill(dst, pe_dst, bar, kv_row, pe_row, pos_s, col0, s_kv_t, s_pe_t,
                 WITH_PE: gl.constexpr, HALF: gl.constexpr, P: gl.constexpr, BK: gl.constexpr):
        """cp.async latent columns [col0, col0 + HALF) of the rows at `pos_s` (and their RoPE
        part when WITH_PE) into one half buffer, 16 rows at a time; each thread then arrives
        on `bar` when its copies land (the barrier expects all 128 producer threads)."""
        RC: gl.constexpr = 16
        L_KV: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [4, 1], [1, 0])
        L_PE: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
        offs_c = col0 + gl.arange(0, HALF, layout=gl.SliceLayout(0, L_KV))
        for r0 in gl.static_range(0, BK, RC):
            pk = pos_s.slice(r0, RC).load(gl.SliceLayout(1, L_KV)).to(gl.int64)
            async_copy.async_copy_global_to_shared(dst.slice(r0, RC, dim=0),
                                                   kv_row + pk[:, None] * s_kv_t + offs_c[None, :])
        if WITH_PE:
            offs_p = gl.arange(0, P, layout=gl.SliceLayout(0, L_PE))
            for r0 in gl.static_range(0, BK, RC):
                pp = pos_s.slice(r0, RC).load(gl.SliceLayout(1, L_PE)).to(gl.int64)
                async_copy.async_copy_global_to_shared(pe_dst.slice(r0, RC, dim=0),
                                                       pe_row + pp[:, None] * s_pe_t + offs_p[None, :])
        async_copy.mbarrier_arrive(bar, increment_count=False)

    @gluon.jit
    def _ws_producer(kv_s, pe_s, ready, free, pos_s, kv_row, pe_row, idx_row, k_lo, k_hi, n_pair,
                     s_kv_t, s_pe_t, HALF: gl.constexpr, P: gl.constexpr, BK: gl.constexpr):
        """Fill buffer b (block 2j + b) half h into kv_s[2b + h], in the order the consumers
        free them: (0, 0), (1, 1), then (0, 1) and (1, 0) with the RoPE rows. The pair's
        positions pass through shared memory (`pos_s`), which keeps 64-bit index pointers out
        of the producer's few registers; empty slots gather row 0 (the scores mask them)."""
        L_POS: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
        for j in range(n_pair):
            ph = (j & 1) ^ 1  # the first pass through each barrier must not wait
            offs = k_lo + 2 * j * BK + gl.arange(0, 2 * BK, layout=L_POS)
            pos = gl.maximum(gl.load(idx_row + offs, mask=offs < k_hi, other=0), 0)
            gl.thread_barrier()  # (the previous pair's reads of pos_s are done)
            pos_s.store(pos)
            gl.thread_barrier()
            p0 = pos_s.slice(0, BK)
            p1 = pos_s.slice(BK, BK)
            mbarrier.wait(free.index(0), ph)
            _ws_fill(kv_s.index(0), pe_s.index(0), ready.index(0), kv_row, pe_row, p0, 0,
                     s_kv_t, s_pe_t, False, HALF, P, BK)
            mbarrier.wait(free.index(3), ph)
            _ws_fill(kv_s.index(3), pe_s.index(1), ready.index(3), kv_row, pe_row, p1, HALF,
                     s_kv_t, s_pe_t, False, HALF, P, BK)
            mbarrier.wait(free.index(1), ph)
            _ws_fill(kv_s.index(1), pe_s.index(0), ready.index(1), kv_row, pe_row, p0, HALF,
                     s_kv_t, s_pe_t, True, HALF, P, BK)
            mbarrier.wait(free.index(2), ph)
            _ws_fill(kv_s.index(2), pe_s.index(1), ready.index(2), kv_row, pe_row, p1, 0,
                     s_kv_t, s_pe_t, True, HALF, P, BK)

    @gluon.jit
    def _ws_consumer(C: gl.constexpr, ql_s, qp_s, kv_s, pe_s, ready, free, bar_m, bar_p, bar_l,
                     s_max, s_l, idx_row, k_lo, k_hi, n_pair, scale_log2, o_row, s_o_h, lse_row,
                     h0, H, BH: gl.constexpr, BK: gl.constexpr, HALF: gl.constexpr,
                     EARLY_FREE: gl.constexpr, STAGGER: gl.constexpr):
        """Consumer C: scores of blocks 2j + C, output columns [C * HALF, (C + 1) * HALF)."""
        OTH: gl.constexpr = 1 - C
        QK: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                     instr_shape=[16, 64, 16])
        PV: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                     instr_shape=[16, HALF, 16])
        P_OP: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=PV, k_width=2)
        ROW: gl.constexpr = gl.SliceLayout(1, QK)

        m_i = gl.full([BH], float("-inf"), gl.float32, ROW)
        l_i = gl.zeros([BH], gl.float32, ROW)
        acc = gl.zeros([BH, HALF], gl.float32, PV)
        # the scores' registers, reused with use_acc=False: zeros written into an accumulator
        # while another wgmma is in flight make ptxas serialise every wgmma
        z = gl.zeros([BH, BK], gl.float32, QK)
        for j in range(n_pair):
            ph = j & 1
            # o is 0, but not to the compiler: views indexed by it get their wgmma
            # descriptors built inside the loop. Hoisted, the worker partition keeps ~90
            # 64-bit descriptors live in ordinary registers and spills 400 bytes.
            o = j >> 30
            own_a = kv_s.index(2 * C + C + o)  # my half of my buffer: read first, freed first
            own_b = kv_s.index(2 * C + OTH + o)
            oth_v = kv_s.index(2 * OTH + C + o)  # my half of the other's buffer (remote P.V)
            pos = _positions(idx_row, k_lo + (2 * j + C) * BK, k_hi, gl.SliceLayout(0, QK), BK)
            mbarrier.wait(ready.index(2 * C + C), ph)
            fence_async_shared()
            z = warpgroup_mma(ql_s.index(C + o), own_a.permute((1, 0)), z, use_acc=False,
                              is_async=True)
            mbarrier.wait(ready.index(2 * C + OTH), ph)
            fence_async_shared()
            z = warpgroup_mma(ql_s.index(OTH + o), own_b.permute((1, 0)), z, is_async=True)
            z = warpgroup_mma(qp_s, pe_s.index(C + o).permute((1, 0)), z, is_async=True)
            z = warpgroup_mma_wait(num_outstanding=0, deps=[z])
            # scores done with both halves (the owner's arrival on each)
            mbarrier.arrive(free.index(2 * C + C))
            mbarrier.arrive(free.index(2 * C + OTH))

            z = gl.where((pos >= 0)[None, :], z * scale_log2, float("-inf"))
            if STAGGER and C == 0:
                # the leader goes on with its own maximum (its running one included), issues
                # its local P.V, and only then takes the joint maximum from the follower and
                # rescales: the follower's softmax runs under the leader's P.V
                m_lead = gl.maximum(m_i, gl.max(z, 1))
                s_max.index(C).store(m_lead)
                mbarrier.arrive(bar_m.index(C))
                m_safe = gl.where(m_lead == float("-inf"), 0.0, m_lead)
                alpha = gl.exp2(m_i - m_safe)
                p = gl.exp2(z - m_safe[:, None])
                l_i = l_i * alpha + gl.sum(p, 1)
                acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, PV))[:, None]
                acc = warpgroup_mma(gl.convert_layout(p.to(gl.bfloat16), P_OP), own_a, acc,
                                    is_async=True)
                mbarrier.wait(bar_m.index(OTH), ph)
                m_new = s_max.index(OTH).load(ROW)
                # (a row with no key yet has p = acc = l = 0: any finite factor will do)
                beta = gl.where(m_lead == float("-inf"), 1.0, gl.exp2(m_lead - m_new))
                pe_s.index(C).store((p * beta[:, None]).to(gl.bfloat16))
                fence_async_shared()
                mbarrier.arrive(bar_p.index(C))
                acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
                if EARLY_FREE:
                    mbarrier.arrive(free.index(2 * C + C))
                acc = acc * gl.convert_layout(beta, gl.SliceLayout(1, PV))[:, None]
                l_i = l_i * beta
                m_i = m_new
            else:
                if STAGGER:  # the follower: the leader's maximum and mine make the joint one
                    mbarrier.wait(bar_m.index(OTH), ph)
                    m_new = gl.maximum(s_max.index(OTH).load(ROW), gl.max(z, 1))
                    s_max.index(C).store(m_new)
                    mbarrier.arrive(bar_m.index(C))
                else:
                    s_max.index(C).store(gl.max(z, 1))
                    mbarrier.arrive(bar_m.index(C))
                    mbarrier.wait(bar_m.index(OTH), ph)
                    m_new = gl.maximum(m_i, gl.maximum(gl.max(z, 1), s_max.index(OTH).load(ROW)))
                m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
                alpha = gl.exp2(m_i - m_safe)
                p = gl.exp2(z - m_safe[:, None])
                l_i = l_i * alpha + gl.sum(p, 1)
                m_i = m_new
                acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, PV))[:, None]
                pb = p.to(gl.bfloat16)
                # P into my RoPE rows (my scores no longer read them) for the other consumer
                pe_s.index(C).store(pb)
                fence_async_shared()
                mbarrier.arrive(bar_p.index(C))
                acc = warpgroup_mma(gl.convert_layout(pb, P_OP), own_a, acc, is_async=True)
                if EARLY_FREE:
                    # my half of my buffer back to the producer before the remote P.V: the
                    # next pair's first gather starts that much earlier (the two P.V share
                    # the accumulator, so they ran one after the other anyway)
                    acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
                    mbarrier.arrive(free.index(2 * C + C))
            mbarrier.wait(bar_p.index(OTH), ph)
            acc = warpgroup_mma(pe_s.index(OTH + o), oth_v, acc, is_async=True)
            # Both P.V done before the loop turns: a wgmma left in flight over the back edge
            # makes ptxas serialise every wgmma of the kernel (its C7514/C7515 notes); the
            # other consumer keeps the tensor cores busy meanwhile.
            acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
            if not EARLY_FREE:
                mbarrier.arrive(free.index(2 * C + C))  # my half of my buffer
            mbarrier.arrive(free.index(2 * OTH + C))  # my half of the other's
        acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])

        # the two running sums share one maximum: the row's sum is theirs
        s_l.index(C).store(l_i)
        mbarrier.arrive(bar_l.index(C))
        mbarrier.wait(bar_l.index(OTH), 0)
        l_t = l_i + s_l.index(OTH).load(ROW)
        l_safe = gl.where(l_t == 0.0, 1.0, l_t)
        o = acc / gl.convert_layout(l_safe, gl.SliceLayout(1, PV))[:, None]
        offs_h = h0 + gl.arange(0, BH, layout=gl.SliceLayout(1, PV))
        offs_c = C * HALF + gl.arange(0, HALF, layout=gl.SliceLayout(0, PV))
        gl.store(o_row + offs_h[:, None] * s_o_h + offs_c[None, :],
                 o.to(o_row.dtype.element_ty), mask=(offs_h < H)[:, None])
        if C == 0:
            lse = gl.where(l_t == 0.0, float("-inf"), (m_i + gl.log2(l_safe)) / 1.4426950408889634)
            offs_hl = h0 + gl.arange(0, BH, layout=ROW)
            gl.store(lse_row + offs_hl, lse, mask=offs_hl < H)

    @gluon.jit
    def _sparse_mla_fwd_ws_kernel(
        ql_ptr, qp_ptr, kv_ptr, pe_ptr, idx_ptr, out_ptr, lse_ptr,
        S, H, K, k_per_split, scale_log2,
        s_ql_b, s_ql_s, s_ql_h, s_qp_b, s_qp_s, s_qp_h,
        s_kv_b, s_kv_t, s_pe_b, s_pe_t, s_idx_b, s_idx_s,
        s_o_b, s_o_s, s_o_sp, s_o_h, s_l_b, s_l_s, s_l_sp,
        R: gl.constexpr, P: gl.constexpr, BH: gl.constexpr, BK: gl.constexpr,
        HALF: gl.constexpr, CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr,
        EARLY_FREE: gl.constexpr = False, STAGGER: gl.constexpr = False,
    ):
        """Grid and arguments as `gluon_fwd._sparse_mla_fwd_gluon_kernel`; 4 warps here, plus
        a 4-warp consumer and a 4-warp producer."""
        gl.static_assert(R == 2 * HALF)
        L_Q: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [4, 1], [1, 0])
        L_QP: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
        SH_H: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BK, HALF], gl.bfloat16)
        SH_P: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BK, P], gl.bfloat16)
        SH_V: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])

        n_hb = gl.cdiv(H, BH)
        pid = gl.program_id(0)
        pid_h = pid % n_hb
        pid_s = pid // n_hb
        b = (pid_s // S).to(gl.int64)
        s = (pid_s % S).to(gl.int64)
        split = gl.program_id(1)
        h0 = pid_h * BH

        # queries: two [64, 256] latent halves and the RoPE part, by cp.async
        ql_s = gl.allocate_shared_memory(gl.bfloat16, [2, BH, HALF], SH_H)
        qp_s = gl.allocate_shared_memory(gl.bfloat16, [BH, P], SH_P)
        offs_hq = h0 + gl.arange(0, BH, layout=gl.SliceLayout(1, L_Q))
        offs_rq = gl.arange(0, HALF, layout=gl.SliceLayout(0, L_Q))
        hq = gl.minimum(offs_hq, H - 1)  # (H is a multiple of 64: never clamps)
        q_base = ql_ptr + b * s_ql_b + s * s_ql_s + hq[:, None] * s_ql_h + offs_rq[None, :]
        async_copy.async_copy_global_to_shared(ql_s.index(0), q_base)
        async_copy.async_copy_global_to_shared(ql_s.index(1), q_base + HALF)
        offs_hp = gl.minimum(h0 + gl.arange(0, BH, layout=gl.SliceLayout(1, L_QP)), H - 1)
        offs_pq = gl.arange(0, P, layout=gl.SliceLayout(0, L_QP))
        async_copy.async_copy_global_to_shared(
            qp_s, qp_ptr + b * s_qp_b + s * s_qp_s + offs_hp[:, None] * s_qp_h + offs_pq[None, :])
        async_copy.commit_group()

        kv_s = gl.allocate_shared_memory(gl.bfloat16, [4, BK, HALF], SH_H)  # [2 buffers x 2 halves]
        pe_s = gl.allocate_shared_memory(gl.bfloat16, [2, BK, P], SH_P)
        s_max = gl.allocate_shared_memory(gl.float32, [2, BH], SH_V)
        s_l = gl.allocate_shared_memory(gl.float32, [2, BH], SH_V)
        ready = gl.allocate_shared_memory(gl.int64, [4, 1], mbarrier.MBarrierLayout())
        free = gl.allocate_shared_memory(gl.int64, [4, 1], mbarrier.MBarrierLayout())
        bar_m = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        bar_p = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        bar_l = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        pos_s = gl.allocate_shared_memory(gl.int32, [2 * BK], SH_V)  # the producer's positions
        for i in gl.static_range(4):
            mbarrier.init(ready.index(i), count=128)  # every producer thread's copies
            mbarrier.init(free.index(i), count=2)  # the scores' owner and the P.V's reader
        for i in gl.static_range(2):
            mbarrier.init(bar_m.index(i), count=1)
            mbarrier.init(bar_p.index(i), count=1)
            mbarrier.init(bar_l.index(i), count=1)
        async_copy.wait_group(0)
        fence_async_shared()
        gl.thread_barrier()

        idx_row = idx_ptr + b * s_idx_b + s * s_idx_s
        k_lo = split * k_per_split
        k_hi = gl.minimum(k_lo + k_per_split, K)
        n_pair = gl.cdiv(gl.maximum(k_hi - k_lo, 0), 2 * BK)
        o_row = out_ptr + b * s_o_b + s * s_o_s + split * s_o_sp
        lse_row = lse_ptr + b * s_l_b + s * s_l_s + split * s_l_sp
        kv_row = kv_ptr + b * s_kv_b
        pe_row = pe_ptr + b * s_pe_b
        gl.warp_specialize([
            (_ws_consumer, (0, ql_s, qp_s, kv_s, pe_s, ready, free, bar_m, bar_p, bar_l, s_max,
                            s_l, idx_row, k_lo, k_hi, n_pair, scale_log2, o_row, s_o_h, lse_row,
                            h0, H, BH, BK, HALF, EARLY_FREE, STAGGER)),
            (_ws_consumer, (1, ql_s, qp_s, kv_s, pe_s, ready, free, bar_m, bar_p, bar_l, s_max,
                            s_l, idx_row, k_lo, k_hi, n_pair, scale_log2, o_row, s_o_h, lse_row,
                            h0, H, BH, BK, HALF, EARLY_FREE, STAGGER)),
            (_ws_producer, (kv_s, pe_s, ready, free, pos_s, kv_row, pe_row, idx_row, k_lo, k_hi, n_pair,
                            s_kv_t, s_pe_t, HALF, P, BK)),
        ], [4, 4], [CONSUMER_REGS, PRODUCER_REGS])
