"""Fused, causal lightning-indexer logits in Triton: bf16/fp32 and FP8 e4m3 block-scaled.

One program owns a [BLOCK_M queries x BLOCK_N keys] tile and loops over the index heads,
accumulating w · ReLU(q·k) in registers: no per-head [S, H, T] intermediate touches memory.
Tiles wholly above the diagonal exit at once (optionally writing -inf); FP8 runs the q·k
products as e4m3 tensor-core dots with fp32 accumulation and folds the per-(token, head)
query scale into the head weight and the per-token key scale into the final tile.
"""

from __future__ import annotations

import torch

from .._common import block, empty, mma, require_triton, sm_count, tl, triton

if triton is not None:

    @triton.jit
    def _indexer_tile_store(acc, b, offs_m, n0, pos_m, S, T, n_groups, ks_ptr, out_ptr,
                            m_ptr, so_b, so_s, sm_b, sm_s, FP8: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, G: tl.constexpr):
        """One [BLOCK_M, BLOCK_N] tile's epilogue (keys from n0): the key scales, the causal
        mask, the store, and (G > 0) the tile's group maxima."""
        offs_n = n0 + tl.arange(0, BLOCK_N)
        if FP8:
            k_s = tl.load(ks_ptr + b * T + offs_n, mask=offs_n < T, other=0.0)
            acc = acc * k_s[None, :]
        visible = offs_n[None, :] <= pos_m[:, None]
        acc = tl.where(visible, acc, float("-inf"))
        out_ptrs = out_ptr + b * so_b + offs_m[:, None].to(tl.int64) * so_s + offs_n[None, :]
        tl.store(out_ptrs, acc, mask=(offs_m[:, None] < S) & (offs_n[None, :] < T))
        if G > 0:  # what the "bound" top-k starts from
            NG: tl.constexpr = BLOCK_N // G
            offs_g = n0 // G + tl.arange(0, NG)
            m_ptrs = m_ptr + b * sm_b + offs_m[:, None].to(tl.int64) * sm_s + offs_g[None, :]
            gm = tl.max(tl.reshape(tl.where(offs_n[None, :] < T, acc, float("-inf")),
                                   [BLOCK_M, NG, G]), 2)
            tl.store(m_ptrs, gm, mask=(offs_m[:, None] < S) & (offs_g[None, :] < n_groups))

    @triton.jit
    def _indexer_upper_store(b, offs_m, n0, S, T, n_groups, out_ptr, m_ptr, so_b, so_s,
                             sm_b, sm_s, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                             G: tl.constexpr):
        """-inf over one tile (keys from n0) wholly above the diagonal, and its maxima."""
        offs_n = n0 + tl.arange(0, BLOCK_N)
        out_ptrs = out_ptr + b * so_b + offs_m[:, None].to(tl.int64) * so_s + offs_n[None, :]
        tl.store(out_ptrs, tl.full([BLOCK_M, BLOCK_N], float("-inf"), tl.float32),
                 mask=(offs_m[:, None] < S) & (offs_n[None, :] < T))
        if G > 0:
            NG: tl.constexpr = BLOCK_N // G
            offs_g = n0 // G + tl.arange(0, NG)
            m_ptrs = m_ptr + b * sm_b + offs_m[:, None].to(tl.int64) * sm_s + offs_g[None, :]
            tl.store(m_ptrs, tl.full([BLOCK_M, NG], float("-inf"), tl.float32),
                     mask=(offs_m[:, None] < S) & (offs_g[None, :] < n_groups))

    @triton.jit
    def _indexer_logits_kernel(
        q_ptr, k_ptr, w_ptr, qs_ptr, ks_ptr, out_ptr, m_ptr,
        S, T, H, D, start_pos, n_groups,
        sq_b, sq_s, sq_h, sk_b, sk_t, sw_b, sw_s, so_b, so_s, sm_b, sm_s,
        FP8: tl.constexpr, WRITE_UPPER: tl.constexpr, IEEE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        G: tl.constexpr, SUB2: tl.constexpr = False,
    ):
        """One program: BLOCK_M queries x BLOCK_N keys, or with SUB2 two adjacent key tiles
        of BLOCK_N that share each head's query tile: the query block is read once per
        2 x BLOCK_N keys instead of once per BLOCK_N (at 64 index heads x 128 dims it is
        512 KB per 64 queries, far more than the keys' 16 KB a tile), with two accumulators
        and one head product in registers at a time."""
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)
        SPAN: tl.constexpr = BLOCK_N * 2 if SUB2 else BLOCK_N
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * SPAN + tl.arange(0, BLOCK_N)
        offs_n1 = offs_n + BLOCK_N
        offs_d = tl.arange(0, BLOCK_D)
        pos_m = start_pos + offs_m  # absolute position of each query row
        last_pos = start_pos + tl.minimum(pid_m * BLOCK_M + BLOCK_M, S) - 1
        if pid_n * SPAN > last_pos:  # tile above the diagonal
            if WRITE_UPPER:
                _indexer_upper_store(b, offs_m, pid_n * SPAN, S, T, n_groups, out_ptr, m_ptr,
                                     so_b, so_s, sm_b, sm_s, BLOCK_M, BLOCK_N, G)
                if SUB2:
                    _indexer_upper_store(b, offs_m, pid_n * SPAN + BLOCK_N, S, T, n_groups,
                                         out_ptr, m_ptr, so_b, so_s, sm_b, sm_s, BLOCK_M,
                                         BLOCK_N, G)
            return
        m_ok = offs_m < S
        k_base = k_ptr + b * sk_b + offs_d[None, :]
        kT = tl.trans(tl.load(k_base + offs_n[:, None].to(tl.int64) * sk_t,
                              mask=(offs_n[:, None] < T) & (offs_d[None, :] < D), other=0.0))
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        if SUB2:
            kT1 = tl.trans(tl.load(k_base + offs_n1[:, None].to(tl.int64) * sk_t,
                                   mask=(offs_n1[:, None] < T) & (offs_d[None, :] < D), other=0.0))
            acc1 = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        q_base = q_ptr + b * sq_b + offs_m[:, None].to(tl.int64) * sq_s + offs_d[None, :]
        w_base = w_ptr + b * sw_b + offs_m.to(tl.int64) * sw_s
        for h in range(H):
            q_h = tl.load(q_base + h * sq_h, mask=m_ok[:, None] & (offs_d[None, :] < D), other=0.0)
            w_h = tl.load(w_base + h, mask=m_ok, other=0.0)
            if FP8:
                w_h = w_h * tl.load(qs_ptr + b * sw_b + offs_m.to(tl.int64) * sw_s + h,
                                    mask=m_ok, other=0.0)
            r = mma(q_h, kT, None, IEEE)
            acc += tl.maximum(r, 0.0) * w_h[:, None]
            if SUB2:
                r1 = mma(q_h, kT1, None, IEEE)
                acc1 += tl.maximum(r1, 0.0) * w_h[:, None]
        _indexer_tile_store(acc, b, offs_m, pid_n * SPAN, pos_m, S, T, n_groups, ks_ptr,
                            out_ptr, m_ptr, so_b, so_s, sm_b, sm_s, FP8, BLOCK_M, BLOCK_N, G)
        if SUB2:
            _indexer_tile_store(acc1, b, offs_m, pid_n * SPAN + BLOCK_N, pos_m, S, T, n_groups,
                                ks_ptr, out_ptr, m_ptr, so_b, so_s, sm_b, sm_s, FP8, BLOCK_M,
                                BLOCK_N, G)


    @triton.jit
    def _indexer_decode_kernel(
        q_ptr, k_ptr, w_ptr, qs_ptr, ks_ptr, out_ptr, m_ptr,
        S, T, H, D, start_pos, n_groups,
        sq_b, sq_s, sq_h, sk_b, sk_t, sw_b, sw_s, so_b, so_s, sm_b, sm_s,
        FP8: tl.constexpr, WRITE_UPPER: tl.constexpr, IEEE: tl.constexpr,
        BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        N_BLOCKS: tl.constexpr, G: tl.constexpr,
    ):
        """Few query rows (decode): one program per (N_BLOCKS key blocks, query row) with the
        index heads as the rows of a single tensor-core product, [H, D] x [D, BLOCK_N]; the
        query and its weights are loaded once for all N_BLOCKS blocks. G > 0: also the max
        of every G consecutive keys (G divides BLOCK_N), as the tiled kernel writes them."""
        NG: tl.constexpr = BLOCK_N // G if G > 0 else 1
        pid_n = tl.program_id(0)
        s = tl.program_id(1).to(tl.int64)
        b = tl.program_id(2).to(tl.int64)
        offs_h = tl.arange(0, BLOCK_H)
        offs_d = tl.arange(0, BLOCK_D)
        pos = start_pos + s
        n0 = pid_n * (N_BLOCKS * BLOCK_N)
        # blocks of this program that hold a visible key; the rest are above the diagonal
        n_vis = tl.minimum(N_BLOCKS, tl.maximum(0, tl.cdiv(pos + 1 - n0, BLOCK_N)))
        if WRITE_UPPER:
            for j in range(n_vis, N_BLOCKS):
                offs_n = n0 + j * BLOCK_N + tl.arange(0, BLOCK_N)
                tl.store(out_ptr + b * so_b + s * so_s + offs_n, tl.full([BLOCK_N], float("-inf"), tl.float32),
                         mask=offs_n < T)
                if G > 0:
                    offs_g = (n0 + j * BLOCK_N) // G + tl.arange(0, NG)
                    tl.store(m_ptr + b * sm_b + s * sm_s + offs_g,
                             tl.full([NG], float("-inf"), tl.float32), mask=offs_g < n_groups)
        if n_vis > 0:
            h_ok = offs_h < H
            q = tl.load(q_ptr + b * sq_b + s * sq_s + offs_h[:, None] * sq_h + offs_d[None, :],
                        mask=h_ok[:, None] & (offs_d[None, :] < D), other=0.0)
            w = tl.load(w_ptr + b * sw_b + s * sw_s + offs_h, mask=h_ok, other=0.0)
            if FP8:
                w = w * tl.load(qs_ptr + b * sw_b + s * sw_s + offs_h, mask=h_ok, other=0.0)
            for j in range(0, n_vis):
                offs_n = n0 + j * BLOCK_N + tl.arange(0, BLOCK_N)
                k_tile = tl.load(k_ptr + b * sk_b + offs_n[:, None].to(tl.int64) * sk_t + offs_d[None, :],
                                 mask=(offs_n[:, None] < T) & (offs_d[None, :] < D), other=0.0)
                r = mma(q, tl.trans(k_tile), None, IEEE)  # (BLOCK_H, BLOCK_N)
                acc = tl.sum(tl.maximum(r, 0.0) * w[:, None], 0)
                if FP8:
                    acc = acc * tl.load(ks_ptr + b * T + offs_n, mask=offs_n < T, other=0.0)
                acc = tl.where(offs_n <= pos, acc, float("-inf"))
                tl.store(out_ptr + b * so_b + s * so_s + offs_n, acc, mask=offs_n < T)
                if G > 0:
                    gm = tl.max(tl.reshape(tl.where(offs_n < T, acc, float("-inf")), [NG, G]), 1)
                    offs_g = (n0 + j * BLOCK_N) // G + tl.arange(0, NG)
                    tl.store(m_ptr + b * sm_b + s * sm_s + offs_g, gm, mask=offs_g < n_groups)


def decode_blocks_per_program(n_blocks: int, device) -> int:
    """Key blocks per program of the decode indexer: enough programs for about eight waves
    over the GPU's SMs, each reusing its query over up to 16 blocks (1 on the CPU)."""
    if not str(device).startswith("cuda"):
        return 1
    per = n_blocks // (8 * sm_count(device))
    return 1 if per < 2 else min(16, 1 << (per.bit_length() - 1))


def _launch(q, k, w, q_s, k_s, start_pos, out, write_upper, block_m, block_n, num_warps,
            num_stages, maxima=None, group=0, decode_blocks=None, key_tiles=1):
    require_triton()
    B, S, H, D = q.shape
    T = k.shape[1]
    if q.stride(-1) != 1 or k.stride(-1) != 1:
        raise ValueError("q and k need a contiguous last dim")
    w = w.float().contiguous()
    if out is None:
        out = empty((B, S, T), torch.float32, q.device)
    fp8 = q_s is not None
    if fp8:
        q_s = q_s.float().contiguous()
        k_s = k_s.float().reshape(B, T).contiguous()
        if q_s.shape != w.shape:
            raise ValueError("q_s must have w's shape [B, S, H]")
    BD = block(D)
    if maxima is not None:
        if group < 1 or group & (group - 1) or maxima.dtype != torch.float32 \
                or maxima.stride(-1) != 1 or tuple(maxima.shape[:2]) != (B, S) \
                or maxima.shape[2] < -(-T // group):
            raise ValueError("maxima: fp32 [B, S, >= ceil(T / group)], group a power of two")
    m = maxima if maxima is not None else out
    if block_m is None and S <= 4 and H <= 128:  # decode: heads as the product's rows
        BN = max(block_n or (128 if q.is_cuda else 32), group if maxima is not None else 1)
        nb = decode_blocks or decode_blocks_per_program(B * S * triton.cdiv(T, BN), q.device)
        _indexer_decode_kernel[(triton.cdiv(T, BN * nb), S, B)](
            q, k, w, q_s if fp8 else w, k_s if fp8 else w, out, m,
            S, T, H, D, start_pos, -(-T // max(group, 1)),
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
            w.stride(0), w.stride(1), out.stride(0), out.stride(1), m.stride(0), m.stride(1),
            FP8=fp8, WRITE_UPPER=write_upper, IEEE=(q.dtype == torch.float32),
            BLOCK_H=block(H), BLOCK_N=BN, BLOCK_D=BD, N_BLOCKS=nb,
            G=group if maxima is not None else 0, num_warps=4, num_stages=2,
        )
        return out
    # H200 sweep (benchmarks/dsa_attention.py): 64 x 128 tiles, 4 warps, 4 stages are the
    # fastest FP8 tiles at 8 and 64 heads (0.44 against 0.54 ms at 8 x 128, 16K causal)
    BM = block_m or (64 if S > 32 else 16)  # decode: few rows
    BN = block_n or (64 if not q.is_cuda else 128)
    if not q.is_cuda:  # interpreter: small tiles keep the masked work small
        BM, BN = min(BM, block(S)), min(BN, block(T))
    if maxima is not None:
        BN = max(BN, group)
    sub2 = key_tiles == 2
    if key_tiles not in (1, 2):
        raise ValueError(f"key_tiles must be 1 or 2, not {key_tiles!r}")
    grid = (triton.cdiv(T, BN * key_tiles), triton.cdiv(S, BM), B)
    _indexer_logits_kernel[grid](
        q, k, w, q_s if fp8 else w, k_s if fp8 else w, out, m,
        S, T, H, D, start_pos, -(-T // max(group, 1)),
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
        w.stride(0), w.stride(1), out.stride(0), out.stride(1), m.stride(0), m.stride(1),
        FP8=fp8, WRITE_UPPER=write_upper, IEEE=(q.dtype == torch.float32),
        BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=BD, G=group if maxima is not None else 0, SUB2=sub2,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out


def indexer_logits(q, k, w, start_pos: int = 0, out=None, write_upper: bool = True,
                   block_m=None, block_n=None, num_warps=4, num_stages=4, maxima=None,
                   group: int = 0, decode_blocks: int | None = None, key_tiles: int = 1):
    """q [B, S, H, D] (bf16/fp16/fp32), k [B, T, D], w [B, S, H] -> [B, S, T] fp32, causal.

    Query row s sits at position start_pos + s; keys after it read -inf. With
    `write_upper=False` the tiles wholly above the diagonal are left unwritten (the top-k
    kernel never reads them), saving half the stores of a prefill. With `maxima`
    [B, S, >= ceil(T / group)] fp32 the kernel also writes, per row, the max over every
    `group` consecutive keys (-inf where none is visible): the bound the "bound" top-k uses.
    `decode_blocks`: key blocks per program on the decode path (S <= 4; default from the SM
    count, `decode_blocks_per_program`). `key_tiles` 2 (prefill): each program takes two
    adjacent key tiles that share every head's query tile, halving the query reads (not yet
    measured on a GPU; compiled for sm_90 at 64 heads x 128, FP8, 64 x 128 tiles: 8 warps
    161 registers and no spill, 4 warps spill 280 bytes).
    """
    if q.dtype != k.dtype:
        raise ValueError("q and k must share a dtype")
    return _launch(q, k, w, None, None, start_pos, out, write_upper, block_m, block_n,
                   num_warps, num_stages, maxima, group, decode_blocks, key_tiles)


def indexer_logits_fp8(q8, q_s, k8, k_s, w, start_pos: int = 0, out=None,
                       write_upper: bool = True, block_m=None, block_n=None, num_warps=4,
                       num_stages=4, maxima=None, group: int = 0, decode_blocks: int | None = None,
                       key_tiles: int = 1):
    """q8 [B, S, H, D] e4m3, q_s [B, S, H] fp32, k8 [B, T, D] e4m3, k_s [B, T] (or [B, T, 1])
    fp32, w [B, S, H] fp32 -> [B, S, T] fp32 (k_s · Σ_j w·q_s·ReLU(q8·k8)), causal."""
    if q8.dtype != torch.float8_e4m3fn or k8.dtype != torch.float8_e4m3fn:
        raise ValueError("FP8 path takes float8_e4m3fn q8 and k8")
    return _launch(q8, k8, w, q_s, k_s, start_pos, out, write_upper, block_m, block_n,
                   num_warps, num_stages, maxima, group, decode_blocks, key_tiles)
