"""DSA pipelines built from the kernels: blocked indexer + top-k, decode top-k, the
autograd-capable sparse MLA attention that `model.attention` plugs in for attn_impl="triton",
and the dense warm-up's indexer KL in blocks of query rows.
"""

from __future__ import annotations

import torch

from ._common import empty
from .indexer_kl.triton_kl import indexer_kl
from .indexer_logits.triton_indexer import indexer_logits, indexer_logits_fp8
from .sparse_attn.triton_bwd import sparse_attn_target, sparse_mla_bwd
from .sparse_attn.triton_fwd import sparse_mla_fwd, sparse_mla_lse
from .topk.triton_topk import BOUND_MAXG, bound_group, topk_rows

# query rows (batch x new tokens) from which a decode step selects with the bound top-k;
# measured at 1 (split faster) and 32 (bound faster), the crossover in between is not
BOUND_DECODE_ROWS = 16


def dsa_select(q, k, w, topk: int, start_pos: int = 0, q_s=None, k_s=None,
               rows_per_block: int | None = None, max_block_bytes: int = 1 << 30,
               decode_chunk: int = 4096, out=None, topk_cfg: dict | None = None,
               indexer_cfg: dict | None = None, timings: dict | None = None) -> torch.Tensor:
    """Indexer logits + causal top-k without an L x L score matrix.

    q [B,S,H,D] (bf16/fp32, or e4m3 with q_s [B,S,H]), k [B,T,D] (or e4m3 with k_s [B,T]),
    w [B,S,H] fp32 -> idx [B,S,topk] int32: the set `select_topk` picks (ties to the
    earlier key), the -1 (empty) slots last. Order within a row: ascending positions on
    the split-row path and, with the "bound" method, for rows of at most maxg keys (8192
    by default) or more than 128 * maxg; rows in between are bounded from the group
    maxima and list their keys in the order the top-k's filter programs claim survivor
    slots, not fixed on a GPU (other methods: see `topk_rows`). Consumers must be
    order-free.
    `topk_cfg`/`indexer_cfg`: tuning keywords for `topk_rows` / the indexer kernel;
    topk_cfg["decode"] = "bound" sends few rows through the bound top-k too (the decode
    indexer writing the group maxima) instead of the split-row selection; "split" keeps
    them split; "auto" (default) bounds them on a GPU from BOUND_DECODE_ROWS rows.
    `timings` (a dict, CUDA only): adds the milliseconds of the indexer and top-k launches
    under "indexer_ms" / "topk_ms" (CUDA events; the call then synchronises).
    Query rows go through in blocks whose [B, rows, T] fp32 logits stay under
    `max_block_bytes`; within a block only the causal part is written and read. Rows are
    selected by the "bound" top-k: the indexer also writes each row's maxima over groups of
    G keys (G a power of two, the same for the whole block, so that a row of n keys has
    between MAXG/2 and MAXG groups; blocks are cut where G changes), and the top-k reads
    each row once. Few rows over a long cache (decode) use the split-row selection (many
    programs per row) for parallelism.
    """
    B, S, H, D = q.shape
    T = k.shape[1]
    cfg = dict(topk_cfg or {})
    method = cfg.setdefault("method", "bound")
    # few rows: "split" rows, or "bound" from maxima; "auto": bound from BOUND_DECODE_ROWS
    # rows (H100, V3.2 decode at 128K: B=1 split 53 against bound 68 us a step; B=32 bound
    # 386 against 506; B=64 691 against 962)
    decode = cfg.pop("decode", "auto")
    if decode not in ("split", "bound", "auto"):
        raise ValueError(f"topk_cfg decode must be 'auto', 'split' or 'bound', not {decode!r}")
    if decode == "auto":
        decode = "bound" if q.is_cuda and B * S >= BOUND_DECODE_ROWS else "split"
    maxg = cfg.get("maxg", BOUND_MAXG)
    if rows_per_block is None:
        rows_per_block = max(1, min(S, max_block_bytes // max(1, 4 * B * T)))
    if out is None:
        out = empty((B, S, topk), torch.int32, q.device)
    buf = empty((B * min(rows_per_block, S) * T,), torch.float32, q.device)
    fp8 = q_s is not None
    events = [] if timings is not None and q.is_cuda else None

    def mark():
        if events is not None:
            events.append(torch.cuda.Event(enable_timing=True))
            events[-1].record()
    s0 = 0
    while s0 < S:
        s1 = min(S, s0 + rows_per_block)
        n = s1 - s0
        # few rows: split each row over many programs (chunks of 1K..decode_chunk keys)
        split = B * n < 256 and start_pos + s1 > max(topk, 1024) and \
            not (decode == "bound" and method == "bound")
        group, maxima = 0, None
        if not split and method == "bound" and topk <= maxg // 2:
            g = bound_group(start_pos + s0 + 1, maxg)
            s1 = min(s1, max(s0 + 1, maxg * g - start_pos))  # every row keeps this g
            n = s1 - s0
            if 1 < g <= 128:  # rows longer than maxg bound from the maxima; shorter: read
                group = g
                maxima = empty((B, n, -(-(start_pos + s1) // g)), torch.float32, q.device)
        # keys beyond the block's last position are never visible: trim them
        t_end = min(T, start_pos + s1)
        logits = buf[:B * n * t_end].view(B, n, t_end)  # contiguous: top-k reads it in place
        kk = k[:, :t_end]
        icfg = dict(indexer_cfg or {}, maxima=maxima, group=group)
        mark()
        if fp8:
            indexer_logits_fp8(q[:, s0:s1], q_s[:, s0:s1], kk, k_s.reshape(B, T)[:, :t_end],
                               w[:, s0:s1], start_pos + s0, out=logits, write_upper=False,
                               **icfg)
        else:
            indexer_logits(q[:, s0:s1], kk, w[:, s0:s1], start_pos + s0, out=logits,
                           write_upper=False, **icfg)
        mark()
        if split:
            chunk = max(1024, min(decode_chunk, t_end // 128))
            out[:, s0:s1] = topk_rows(logits, topk, start_pos + s0, chunk=chunk)
        else:
            kw = dict(cfg, maxima=maxima, group=max(group, 1)) if method == "bound" else cfg
            out[:, s0:s1] = topk_rows(logits, topk, start_pos + s0, **kw)
        mark()
        s0 = s1
    if events:
        torch.cuda.synchronize()
        for i in range(0, len(events), 3):
            a, b, c = events[i:i + 3]
            timings["indexer_ms"] = timings.get("indexer_ms", 0.0) + a.elapsed_time(b)
            timings["topk_ms"] = timings.get("topk_ms", 0.0) + b.elapsed_time(c)
    return out


class SparseMLA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_lat, q_pe, kv, pe, idx, scale):
        q_lat, q_pe = q_lat.contiguous(), q_pe.contiguous()
        kv = kv if kv.stride(-1) == 1 else kv.contiguous()
        pe = pe if pe.stride(-1) == 1 else pe.contiguous()
        idx = idx.to(torch.int32).contiguous()
        out, lse = sparse_mla_fwd(q_lat, q_pe, kv, pe, idx, scale)
        ctx.save_for_backward(q_lat, q_pe, kv, pe, idx, out, lse)
        ctx.scale = scale
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q_lat, q_pe, kv, pe, idx, out, lse = ctx.saved_tensors
        dql, dqp, dkv, dpe = sparse_mla_bwd(q_lat, q_pe, kv, pe, idx, out, lse,
                                            dout.contiguous(), ctx.scale)
        return dql, dqp, dkv, dpe, None, None


def sparse_mla_with_lse(q_lat, q_pe, kv, pe, idx, scale):
    """(out [B,S,H,R], lse [B,S,H]); differentiable in q_lat, q_pe, kv, pe."""
    return SparseMLA.apply(q_lat, q_pe, kv, pe, idx, scale)


def sparse_mla(q_lat, q_pe, kv, pe, idx, scale):
    """Drop-in for `model.attention_ops.sparse_attention` (attn_impl="triton"): same
    arguments, returns the latent output [B,S,H,R] in q_lat's dtype, differentiable."""
    return SparseMLA.apply(q_lat, q_pe, kv, pe, idx, scale)[0]


def dense_indexer_kl(q, k, w, q_lat, q_pe, kv, pe, scale, start_pos: int = 0,
                     max_block_bytes: int = 1 << 28) -> torch.Tensor:
    """The dense warm-up's indexer loss: mean over query tokens of KL(p || softmax(I)) over
    every visible key, p the head-mean attention distribution (detached), I the indexer
    logits; differentiable in q, k and w.

    Indexer operands q [B,S,H,D], k [B,T,D], w [B,S,H] fp32 (what `indexer_kl` takes);
    attention operands q_lat [B,S,Ha,R], q_pe [B,S,Ha,P], kv [B,T,R], pe [B,T,P] (latent
    form), query s at position start_pos + s. Query rows go in blocks whose [B, rows, T]
    support (int32 positions and fp32 target) stays under `max_block_bytes`: per block the
    attention's LSE over all visible keys (the sparse forward's scores over the full
    support, without P·V), the target from it, and the fused KL with its backward.
    Nothing of size S x T x heads is ever held; the PyTorch path builds [B, S, Ha, T].
    """
    B, S = q.shape[:2]
    T = k.shape[1]
    if kv.shape[1] != T or start_pos + S > T:
        raise ValueError("kv must have k's T keys, and T >= start_pos + S")
    rows = max(1, min(S, max_block_bytes // max(1, 8 * B * T)))
    keys = torch.arange(T, device=k.device, dtype=torch.int32)
    total = None
    for s0 in range(0, S, rows):
        s1 = min(S, s0 + rows)
        t1 = start_pos + s1  # the block's last row sees keys 0 .. t1 - 1
        qpos = start_pos + torch.arange(s0, s1, device=k.device, dtype=torch.int32)
        idx = torch.where(keys[None, :t1] <= qpos[:, None], keys[None, :t1], -1)
        idx = idx.unsqueeze(0).expand(B, -1, -1).contiguous()
        with torch.no_grad():
            ql = q_lat[:, s0:s1].detach().contiguous()
            qp = q_pe[:, s0:s1].detach().contiguous()
            kvd, ped = kv.detach()[:, :t1], pe.detach()[:, :t1]
            lse = sparse_mla_lse(ql, qp, kvd, ped, idx, scale)
            target = sparse_attn_target(ql, qp, kvd, ped, idx, lse, scale)
        part = indexer_kl(q[:, s0:s1], k[:, :t1], w[:, s0:s1], idx, target) * ((s1 - s0) / S)
        total = part if total is None else total + part
    return total
