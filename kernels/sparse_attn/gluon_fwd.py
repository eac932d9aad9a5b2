"""Sparse MLA prefill forward in Gluon for Hopper (sm_90): the V3.2 shape with its schedule
written out by hand.

Why not the Triton kernel: compiled for sm_90 at 128 heads x 512 + 64 latent (64 heads and
64 keys per program, 8 warps), `triton_fwd._sparse_mla_fwd_kernel` has two costs that no
tile choice removes (read from its TTGIR and PTX, compiled on the CPU):
- Triton gives a dot whose result feeds another dot all its warps along M (the
  flash-attention rule), so with 64 head rows both warpgroups compute the whole 64 x 64
  score tile: 72 m64n32k16 wgmma per block where 36 would do.
- Its pipeliner issues the next block's gather after the current block's P.V, and the loop
  then waits for every copy at its top: the gather only overlaps the P.V.

Here each program (8 warps = 2 warpgroups) owns one query token and 64 heads:
- scores: one wgmma over the [64, 512 + 64] query and the gathered [64 keys, 576] tile in
  a [4, 2] warp layout, so each warpgroup computes 32 of the 64 keys;
- softmax across the two halves (the compiler's cross-warp reductions);
- P.V with P in registers and the accumulator [64, 512] split by columns, 256 per
  warpgroup;
- two buffers of gathered rows (cp.async, 16 bytes a thread a copy): the gather of block
  i + 1 is issued as soon as P.V of block i - 1 is done with its buffer, so it overlaps the
  scores, the softmax and the P.V of block i. The positions of block i + 2 load meanwhile.

Empty slots (-1) gather row 0 (finite) and are masked to -inf in the scores, so every byte
of a buffer is always a real row. Shared memory: 64 + 8 KB query, 2 x 72 KB rows,
plus the compiler's scratch for the P exchange (about 224 KB of the 227).

Only the V3.2 layout: bf16, R = 512, P = 64, heads a multiple of 64, contiguous
[B, T, .] kv and pe. `sparse_mla_fwd_gluon` checks and refuses anything else.

Measured on an H100 at S 4096 over 32K keys, k 2048, 128 heads: 6.49 ms = 360 TFLOP/s
(7.13 ms = 328 with P.V left in flight over the loop's back edge, which makes ptxas
serialise every wgmma: `PV_INFLIGHT`, impl="gluon_inflight"); the best Triton configuration
takes 9.44 ms = 248 TFLOP/s (`benchmarks/results/dsa_attention_v32_h100.txt`). Prefill now
defaults to the warp-specialised kernel (`gluon_ws.py`, 416); decode to this one (split-K:
B = 32 at 128K in 67 us = 273 TFLOP/s, against 95 for Triton).
"""

from __future__ import annotations

import functools

import torch

try:  # Gluon ships with Triton >= 3.5; absent (or an older Triton): this module is unusable
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared,
                                                                  warpgroup_mma,
                                                                  warpgroup_mma_wait)
except Exception:  # pragma: no cover - depends on the installed triton
    gluon = None

LOG2E = 1.4426950408889634
BLOCK_H = 64
BLOCK_K = 64
NUM_WARPS = 8

if gluon is not None:

    @gluon.jit
    def _gather(buf_kv, buf_pe, kv_ptr, pe_ptr, b, pos, s_kv_b, s_kv_t, s_pe_b, s_pe_t,
                R: gl.constexpr, P: gl.constexpr, L_KV: gl.constexpr, L_PE: gl.constexpr):
        """cp.async the kv and pe rows of `pos` (int32, [BLOCK_K], empty slots already 0)
        into one buffer, as one commit group."""
        pk = gl.convert_layout(pos, gl.SliceLayout(1, L_KV)).to(gl.int64)
        offs_r = gl.arange(0, R, layout=gl.SliceLayout(0, L_KV))
        kv_ptrs = kv_ptr + b * s_kv_b + pk[:, None] * s_kv_t + offs_r[None, :]
        async_copy.async_copy_global_to_shared(buf_kv, kv_ptrs)
        pp = gl.convert_layout(pos, gl.SliceLayout(1, L_PE)).to(gl.int64)
        offs_p = gl.arange(0, P, layout=gl.SliceLayout(0, L_PE))
        pe_ptrs = pe_ptr + b * s_pe_b + pp[:, None] * s_pe_t + offs_p[None, :]
        async_copy.async_copy_global_to_shared(buf_pe, pe_ptrs)
        async_copy.commit_group()

    @gluon.jit
    def _positions(idx_row, k0, k_hi, L_POS: gl.constexpr, BK: gl.constexpr):
        """Block positions at k0 (int32 [BK]; -1 past k_hi)."""
        offs = k0 + gl.arange(0, BK, layout=L_POS)
        return gl.load(idx_row + offs, mask=offs < k_hi, other=-1)

    @gluon.jit
    def _sparse_mla_fwd_gluon_kernel(
        ql_ptr, qp_ptr, kv_ptr, pe_ptr, idx_ptr, out_ptr, lse_ptr,
        S, H, K, k_per_split, scale_log2,
        s_ql_b, s_ql_s, s_ql_h, s_qp_b, s_qp_s, s_qp_h,
        s_kv_b, s_kv_t, s_pe_b, s_pe_t, s_idx_b, s_idx_s,
        s_o_b, s_o_s, s_o_sp, s_o_h, s_l_b, s_l_s, s_l_sp,
        R: gl.constexpr, P: gl.constexpr, BH: gl.constexpr, BK: gl.constexpr,
        PV_INFLIGHT: gl.constexpr = False,
    ):
        """Grid (heads / 64 x B x S, splits): split j takes slots [j * k_per_split, ...) of
        the token's K and writes its (out, lse) at split j (in fp32 when out is fp32: the
        partials a combine kernel merges)."""
        # register layouts: gathers and query loads 16 bytes a thread; the two MMA shapes
        L_KV: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [8, 1], [1, 0])
        L_PE: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [8, 1], [1, 0])
        L_POS: gl.constexpr = gl.BlockedLayout([1], [32], [8], [0])
        QK: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2],
                                                     instr_shape=[16, 32, 16])
        PV: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2],
                                                     instr_shape=[16, 256, 16])
        P_OP: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=PV, k_width=2)
        SH_R: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BK, R], gl.bfloat16)
        SH_P: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BK, P], gl.bfloat16)

        n_hb = gl.cdiv(H, BH)
        pid = gl.program_id(0)
        pid_h = pid % n_hb
        pid_s = pid // n_hb
        b = (pid_s // S).to(gl.int64)
        s = (pid_s % S).to(gl.int64)
        split = gl.program_id(1)

        # the program's queries, once, into shared memory (A operands of the score wgmma)
        offs_hq = pid_h * BH + gl.arange(0, BH, layout=gl.SliceLayout(1, L_KV))
        offs_rq = gl.arange(0, R, layout=gl.SliceLayout(0, L_KV))
        ql = gl.load(ql_ptr + b * s_ql_b + s * s_ql_s + offs_hq[:, None] * s_ql_h + offs_rq[None, :],
                     mask=(offs_hq < H)[:, None], other=0.0)
        ql_s = gl.allocate_shared_memory(gl.bfloat16, [BH, R], SH_R, ql)
        offs_hp = pid_h * BH + gl.arange(0, BH, layout=gl.SliceLayout(1, L_PE))
        offs_pq = gl.arange(0, P, layout=gl.SliceLayout(0, L_PE))
        qp = gl.load(qp_ptr + b * s_qp_b + s * s_qp_s + offs_hp[:, None] * s_qp_h + offs_pq[None, :],
                     mask=(offs_hp < H)[:, None], other=0.0)
        qp_s = gl.allocate_shared_memory(gl.bfloat16, [BH, P], SH_P, qp)

        kv_s = gl.allocate_shared_memory(gl.bfloat16, [2, BK, R], SH_R)
        pe_s = gl.allocate_shared_memory(gl.bfloat16, [2, BK, P], SH_P)

        idx_row = idx_ptr + b * s_idx_b + s * s_idx_s
        k_lo = split * k_per_split
        k_hi = gl.minimum(k_lo + k_per_split, K)
        n_blk = gl.cdiv(k_hi - k_lo, BK)
        pos0 = _positions(idx_row, k_lo, k_hi, L_POS, BK)
        _gather(kv_s.index(0), pe_s.index(0), kv_ptr, pe_ptr, b, gl.maximum(pos0, 0),
                s_kv_b, s_kv_t, s_pe_b, s_pe_t, R, P, L_KV, L_PE)
        pos_cur = pos0
        pos_next = _positions(idx_row, k_lo + BK, k_hi, L_POS, BK)

        m_i = gl.full([BH], float("-inf"), gl.float32, gl.SliceLayout(1, QK))
        l_i = gl.zeros([BH], gl.float32, gl.SliceLayout(1, QK))
        acc = gl.zeros([BH, R], gl.float32, PV)
        z0 = gl.zeros([BH, BK], gl.float32, QK)
        for i in range(n_blk):
            buf = i % 2
            kv_b = kv_s.index(buf)
            pe_b = pe_s.index(buf)
            # block i's rows have landed (this thread's copies; the barrier: everyone's)
            async_copy.wait_group(0)
            fence_async_shared()
            gl.thread_barrier()
            z = warpgroup_mma(ql_s, kv_b.permute((1, 0)), z0, use_acc=False, is_async=True)
            z = warpgroup_mma(qp_s, pe_b.permute((1, 0)), z, is_async=True)
            # P.V of block i - 1 done (the score groups may still run): its buffer is free
            acc = warpgroup_mma_wait(num_outstanding=2, deps=[acc])
            gl.thread_barrier()
            if i + 1 < n_blk:
                _gather(kv_s.index(1 - buf), pe_s.index(1 - buf), kv_ptr, pe_ptr, b,
                        gl.maximum(pos_next, 0), s_kv_b, s_kv_t, s_pe_b, s_pe_t, R, P, L_KV, L_PE)
            pos_after = _positions(idx_row, k_lo + (i + 2) * BK, k_hi, L_POS, BK)
            z = warpgroup_mma_wait(num_outstanding=0, deps=[z])
            # online softmax in base 2 over this block's 64 keys (32 per warpgroup)
            valid = gl.convert_layout(pos_cur, gl.SliceLayout(0, QK)) >= 0
            z = gl.where(valid[None, :], z * scale_log2, float("-inf"))
            m_new = gl.maximum(m_i, gl.max(z, 1))
            m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = gl.exp2(m_i - m_safe)
            p = gl.exp2(z - m_safe[:, None])
            l_i = l_i * alpha + gl.sum(p, 1)
            m_i = m_new
            acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, PV))[:, None]
            p_op = gl.convert_layout(p.to(gl.bfloat16), P_OP)
            acc = warpgroup_mma(p_op, kv_b, acc, is_async=True)
            # PV_INFLIGHT: P.V stays in flight into the next block's scores. A wgmma in flight
            # over the loop's back edge makes ptxas serialise every wgmma of the kernel (its
            # C7514 note: a wait after each one), so the default waits here instead.
            if PV_INFLIGHT:
                acc = warpgroup_mma_wait(num_outstanding=1, deps=[acc])
            else:
                acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
            pos_cur = pos_next
            pos_next = pos_after
        acc = warpgroup_mma_wait(num_outstanding=0, deps=[acc])
        async_copy.wait_group(0)  # (a split with no block still gathered its first)

        l_safe = gl.where(l_i == 0.0, 1.0, l_i)
        lse = gl.where(l_i == 0.0, float("-inf"), (m_i + gl.log2(l_safe)) / 1.4426950408889634)
        o = acc / gl.convert_layout(l_safe, gl.SliceLayout(1, PV))[:, None]
        offs_ho = pid_h * BH + gl.arange(0, BH, layout=gl.SliceLayout(1, PV))
        offs_ro = gl.arange(0, R, layout=gl.SliceLayout(0, PV))
        o_base = out_ptr + b * s_o_b + s * s_o_s + split * s_o_sp
        gl.store(o_base + offs_ho[:, None] * s_o_h + offs_ro[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=(offs_ho < H)[:, None])
        offs_hl = pid_h * BH + gl.arange(0, BH, layout=gl.SliceLayout(1, QK))
        gl.store(lse_ptr + b * s_l_b + s * s_l_s + split * s_l_sp + offs_hl, lse, mask=offs_hl < H)


@functools.lru_cache(maxsize=None)
def _major(index) -> int:
    """A CUDA device's compute capability major (asked once per device: this runs per call)."""
    return torch.cuda.get_device_capability(index)[0]


def gluon_fwd_supported(q_lat, q_pe, kv, pe) -> str | None:
    """None when `sparse_mla_fwd_gluon` takes these tensors, else why not."""
    if gluon is None:
        return "this triton has no Gluon"
    if not q_lat.is_cuda or _major(q_lat.device.index) != 9:
        return "Gluon kernel is for sm_90 (Hopper) only"
    if any(t.dtype != torch.bfloat16 for t in (q_lat, q_pe, kv, pe)):
        return "bf16 only"
    if q_lat.shape[-1] != 512 or q_pe.shape[-1] != 64 or q_lat.shape[2] % BLOCK_H:
        return "the V3.2 layout only (R 512, P 64, heads a multiple of 64)"
    if kv.dim() != 3 or any(t.stride(-1) != 1 for t in (q_lat, q_pe, kv, pe)):
        return "contiguous [B, T, .] kv and pe with unit last strides"
    return None


def _kernel_choice(kernel, pv_inflight, early_free, stagger):
    """(kernel function, K-slot alignment of a split, warps, schedule constexprs) for a
    kernel name: what the launcher and `compile_report` both specialise."""
    if kernel == "ws":
        from . import gluon_ws

        return (gluon_ws._sparse_mla_fwd_ws_kernel, 2 * BLOCK_K, 4,
                dict(HALF=gluon_ws.HALF, CONSUMER_REGS=gluon_ws.CONSUMER_REGS,
                     PRODUCER_REGS=gluon_ws.PRODUCER_REGS, EARLY_FREE=bool(early_free),
                     STAGGER=bool(stagger)))
    if kernel == "lockstep":
        return _sparse_mla_fwd_gluon_kernel, BLOCK_K, NUM_WARPS, dict(PV_INFLIGHT=bool(pv_inflight))
    raise ValueError(f"sparse_mla_fwd_gluon: kernel must be 'lockstep' or 'ws', not {kernel!r}")


def sparse_mla_fwd_gluon(q_lat, q_pe, kv, pe, idx, scale, n_split: int = 1,
                         kernel: str = "lockstep", pv_inflight: bool = False,
                         early_free: bool = False, stagger: bool = False):
    """`sparse_mla_fwd` at the V3.2 layout through a Gluon kernel: (out [B,S,H,512] bf16,
    lse [B,S,H] fp32, natural log). `n_split` > 1 splits each token's K slots over that many
    programs (decode) and merges their fp32 partials with the Triton combine kernel.
    `kernel`: "lockstep" (this module's) or "ws" (`gluon_ws.py`: a producer warpgroup and
    two consumers). `pv_inflight` (lockstep only): leave each P.V in flight into the next
    block's scores, the schedule measured at 327 TFLOP/s, which ptxas compiles with every
    wgmma serialised. `early_free` (ws only): each consumer hands its own half buffer back
    after its local P.V rather than after both; `stagger` (ws only): consumer 0 leads with its
    own maximum and rescales once the joint one comes, so the other's softmax runs under its
    P.V (neither measured yet). Raises ValueError where
    `gluon_fwd_supported` says no."""
    why = gluon_fwd_supported(q_lat, q_pe, kv, pe)
    if why:
        raise ValueError(f"sparse_mla_fwd_gluon: {why}")
    import triton

    from .._common import empty
    from .triton_fwd import merge_splits

    B, S, H, R = q_lat.shape
    K = idx.shape[-1]
    idx = (idx if idx.dtype == torch.int32 else idx.to(torch.int32)).contiguous()
    dev = q_lat.device
    n_split = max(1, int(n_split))
    fn, align, warps, extra = _kernel_choice(kernel, pv_inflight, early_free, stagger)
    k_per_split = triton.cdiv(triton.cdiv(K, n_split), align) * align
    dt = torch.bfloat16 if n_split == 1 else torch.float32
    out = empty((B, S, n_split, H, R), dt, dev)
    lse = empty((B, S, n_split, H), torch.float32, dev)
    grid = ((H // BLOCK_H) * B * S, n_split)
    fn[grid](
        q_lat, q_pe, kv, pe, idx, out, lse, S, H, K, k_per_split, scale * LOG2E,
        q_lat.stride(0), q_lat.stride(1), q_lat.stride(2),
        q_pe.stride(0), q_pe.stride(1), q_pe.stride(2),
        kv.stride(0), kv.stride(1), pe.stride(0), pe.stride(1), idx.stride(0), idx.stride(1),
        out.stride(0), out.stride(1), out.stride(2), out.stride(3),
        lse.stride(0), lse.stride(1), lse.stride(2),
        R=R, P=q_pe.shape[-1], BH=BLOCK_H, BK=BLOCK_K, num_warps=warps, **extra,
    )
    return merge_splits(out, lse, torch.bfloat16)


def compile_report(kernel: str = "lockstep", pv_inflight: bool = False,
                   early_free: bool = False, stagger: bool = False) -> dict:
    """Compile a kernel ("lockstep" or "ws") for sm_90 here, without a GPU (Triton's own
    ptxas), at the V3.2 shape with the divisibility a real launch specialises on, and report
    what the schedule rests on: shared memory, registers and spill stack per thread, the
    wgmma and cp.async instructions of one program, and whether ptxas serialised the wgmma
    (its C7514/C7515 notes, from running the bundled ptxas on the PTX with -v: a wait after
    every wgmma). Needs TRITON_INTERPRET unset (the interpreter replaces the kernel object)."""
    import collections
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    fn, _, warps, extra = _kernel_choice(kernel, pv_inflight, early_free, stagger)
    const = {"R": 512, "P": 64, "BH": BLOCK_H, "BK": BLOCK_K, **extra}
    names = list(fn.arg_names)
    ptrs = {"ql_ptr": "*bf16", "qp_ptr": "*bf16", "kv_ptr": "*bf16", "pe_ptr": "*bf16",
            "idx_ptr": "*i32", "out_ptr": "*bf16", "lse_ptr": "*fp32"}
    sig = {n: ptrs.get(n, "constexpr" if n in const else "fp32" if n == "scale_log2" else "i32")
           for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if sig[n] not in ("constexpr", "fp32")}
    src = GluonASTSource(fn, sig, constexprs={(names.index(k),): v for k, v in const.items()},
                         attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    tools = f"{triton.__path__[0]}/backends/nvidia/bin"
    ptx = k.asm["ptx"]
    with tempfile.TemporaryDirectory() as d:
        with open(f"{d}/k.cubin", "wb") as f:
            f.write(k.asm["cubin"])
        usage = subprocess.run([f"{tools}/cuobjdump", "--dump-resource-usage", f"{d}/k.cubin"],
                               capture_output=True, text=True, check=True).stdout
        with open(f"{d}/k.ptx", "w") as f:
            f.write(ptx)
        notes = subprocess.run([f"{tools}/ptxas", "-arch=sm_90a", "-v", f"{d}/k.ptx", "-o",
                                f"{d}/v.cubin"], capture_output=True, text=True, check=True)
    m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    return {"shared": k.metadata.shared, "regs": int(m.group(1)), "stack": int(m.group(2)),
            "wgmma": dict(collections.Counter(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(\w+)\.", ptx))),
            "cp_async": len(re.findall(r"cp\.async\.cg\.shared\.global", ptx)),
            "serialized": bool(re.search(r"C751[0-9]", notes.stdout + notes.stderr)),
            "setmaxnreg": sorted({int(x) for x in re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+)", ptx)})}
