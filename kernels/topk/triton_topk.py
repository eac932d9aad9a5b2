"""Exact top-k per row in Triton, without the L x L score matrix.

"bound" (the default for prefill, three launches):
1. per row, a lower bound tau of its k-th largest score: a value that at least k of the
   row's group maxima reach (the max of every G consecutive visible scores, which the
   indexer kernel writes next to the logits), since k groups whose max reaches tau hold k
   scores >= tau; the bisection for it stops once at most k + k/8 maxima reach it. The
   groups that reach tau (k to 2k of the row's MAXG/2..MAXG groups) are listed. A row of
   at most MAXG scores is read whole instead and tau is exact;
2. per (row, chunk of listed groups), one read of only those groups, appending the scores
   >= tau and their positions to the row's survivor list (about k of them);
3. per row, bisection over the survivors' order-preserving uint32 keys until exactly k
   reach the threshold (or to the exact k-th largest when ties prevent it), then the keys
   above it plus the earliest ties.
A row the bound cannot serve (no usable maxima, more survivors than the cap) is flagged and
redone by the radix kernel below. Order: a row read whole, or of at most k keys, comes out in
ascending position order; a row bounded from the maxima lists its keys in survivor order,
and the filter's programs claim survivor slots with atomics, so on a GPU that order changes
from run to run (the interpreter, running programs one after another, happens to give
ascending order).

"radix" (and the flagged rows): each program walks its row in tiles, four passes build
256-bin histograms of successive 8-bit digits of the keys, which pins the k-th largest key
exactly; a last pass writes the positions of every key above it plus the earliest ties
(stable-sort semantics), in ascending position order, and pads the rest with -1.

Rows that see no more than k keys skip the search. Few long rows (decode) are split into
chunks selected by many programs at once: the digit histograms are summed across chunks
with atomic adds, then per-chunk counts give every chunk its output offsets. (The kernel
also takes candidate lists with positions, -1 = empty, for a select over merged chunks.)
The prefill driver (`kernels.dsa.dsa_select`) asks the indexer for a block of query rows
at a time and selects on that block.
"""

from __future__ import annotations

import torch

from .._common import empty, require_triton, tl, triton

if triton is not None:

    @triton.jit
    def _key(x):
        u = x.to(tl.uint32, bitcast=True)
        flip = tl.where((u >> 31) == 1, tl.full(u.shape, 0xFFFFFFFF, tl.uint32),
                        tl.full(u.shape, 0x80000000, tl.uint32))
        return u ^ flip

    @triton.jit
    def _topk_kernel(
        x_ptr, cand_ptr, len_ptr, out_idx_ptr, out_val_ptr,
        n_cols, chunk, K, start_pos, rows_per_b,
        sx_r, so_r, so_c,
        HAS_CAND: tl.constexpr, HAS_LEN: tl.constexpr, WRITE_VAL: tl.constexpr,
        BLOCK: tl.constexpr, BLOCK_K: tl.constexpr, flag_ptr, HAS_FLAG: tl.constexpr,
        DB: tl.constexpr,
    ):
        # DB-bit digits: 32 // DB histogram passes of 2^DB bins (tl.histogram costs grow
        # with the bin count, so narrower digits trade compute for passes over the row)
        NB: tl.constexpr = 1 << DB
        row = tl.program_id(0).to(tl.int64)
        c = tl.program_id(1)
        if HAS_FLAG:  # only the rows the two-pass kernel handed over
            if tl.load(flag_ptr + row) == 0:
                return
        # row length: explicit, or causal (position start_pos + row % rows_per_b, +1)
        if HAS_LEN:
            n = tl.load(len_ptr + row)
        else:
            n = tl.minimum(start_pos + (row % rows_per_b) + 1, n_cols)
        lo = c * chunk
        hi = tl.minimum(lo + chunk, n)
        x_row = x_ptr + row * sx_r
        o_idx = out_idx_ptr + row * so_r + c * so_c
        o_val = out_val_ptr + row * so_r + c * so_c
        offs = tl.arange(0, BLOCK)
        # ---- pass 0: count valid entries and histogram the top digit ----------------
        prefix = tl.zeros([], tl.uint32)
        pmask = tl.zeros([], tl.uint32)
        k_rem = K + tl.zeros([], tl.int32)
        total = tl.zeros([], tl.int32)
        bins = tl.arange(0, NB)
        take_all = hi - lo <= K
        if not take_all:
            for p in tl.static_range(32 // DB):
                shift = 32 - DB * (p + 1)
                hist = tl.zeros([NB], tl.int32)
                for start in range(lo, hi, BLOCK):
                    cols = start + offs
                    ok = cols < hi
                    x = tl.load(x_row + cols, mask=ok, other=0.0)
                    if HAS_CAND:
                        ok = ok & (tl.load(cand_ptr + row * sx_r + cols, mask=ok, other=-1) >= 0)
                    key = _key(x)
                    ok = ok & ((key & pmask) == prefix)
                    digit = ((key >> shift) & (NB - 1)).to(tl.int32)
                    hist += tl.histogram(digit, NB, mask=ok)
                if p == 0:
                    total = tl.sum(hist, 0)
                # c_ge[d] = number of keys (with this prefix) whose digit >= d
                c_ge = tl.sum(hist, 0) - tl.cumsum(hist, 0) + hist
                d_star = tl.max(tl.where(c_ge >= k_rem, bins, -1), 0)
                c_gt = tl.sum(tl.where(bins > d_star, hist, 0), 0)
                k_rem = k_rem - c_gt
                prefix = prefix | (d_star.to(tl.uint32) << shift)
                pmask = pmask | (tl.full([], NB - 1, tl.uint32) << shift)
            # fewer valid keys than K (only with candidates holding -1): take them all
            take_all = total <= K
        # ---- final pass: write positions above the threshold plus the earliest ties ---
        n_out = tl.zeros([], tl.int32)
        n_tie = tl.zeros([], tl.int32)
        for start in range(lo, hi, BLOCK):
            cols = start + offs
            ok = cols < hi
            x = tl.load(x_row + cols, mask=ok, other=0.0)
            if HAS_CAND:
                pos = tl.load(cand_ptr + row * sx_r + cols, mask=ok, other=-1)
                ok = ok & (pos >= 0)
            else:
                pos = cols
            if take_all:
                sel = ok
            else:
                key = _key(x)
                tie = ok & (key == prefix)
                n_tie_tile = tl.sum(tie.to(tl.int32), 0)
                sel = ok & (key > prefix)
                if n_tie_tile > 0:  # rare except for runs of equal scores
                    tie_rank = n_tie + tl.cumsum(tie.to(tl.int32), 0) - 1
                    sel = sel | (tie & (tie_rank < k_rem))
                n_tie += n_tie_tile
            slot = n_out + tl.cumsum(sel.to(tl.int32), 0) - 1
            tl.store(o_idx + slot, pos.to(tl.int32), mask=sel)
            if WRITE_VAL:
                tl.store(o_val + slot, x, mask=sel)
            n_out += tl.sum(sel.to(tl.int32), 0)
        # ---- pad -----------------------------------------------------------------
        for start in range(0, K, BLOCK_K):
            s = start + tl.arange(0, BLOCK_K)
            pad = (s >= n_out) & (s < K)
            tl.store(o_idx + s, tl.full([BLOCK_K], -1, tl.int32), mask=pad)
            if WRITE_VAL:
                tl.store(o_val + s, tl.full([BLOCK_K], float("-inf"), tl.float32), mask=pad)


    @triton.jit
    def _radix_state(hist_row, K, NPASS: tl.constexpr):
        """Threshold prefix, its mask, the ties still to take and the valid count, from the
        global histograms of the first NPASS digit passes of one row."""
        bins = tl.arange(0, 256)
        prefix = tl.zeros([], tl.uint32)
        pmask = tl.zeros([], tl.uint32)
        k_rem = K + tl.zeros([], tl.int32)
        total = tl.zeros([], tl.int32)
        for p in tl.static_range(NPASS):
            hist = tl.load(hist_row + p * 256 + bins)
            if p == 0:
                total = tl.sum(hist, 0)
            c_ge = tl.sum(hist, 0) - tl.cumsum(hist, 0) + hist
            d_star = tl.max(tl.where(c_ge >= k_rem, bins, -1), 0)
            k_rem = k_rem - tl.sum(tl.where(bins > d_star, hist, 0), 0)
            prefix = prefix | (d_star.to(tl.uint32) << (24 - 8 * p))
            pmask = pmask | (tl.full([], 255, tl.uint32) << (24 - 8 * p))
        return prefix, pmask, k_rem, total

    @triton.jit
    def _split_hist_kernel(x_ptr, hist_ptr, n_cols, chunk, K, start_pos, rows_per_b, sx_r,
                           PASS: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        c = tl.program_id(1)
        n = tl.minimum(start_pos + (row % rows_per_b) + 1, n_cols)
        hist_row = hist_ptr + row * 1024
        prefix, pmask, k_rem, total = _radix_state(hist_row, K, PASS)
        if PASS > 0:
            if total <= K:
                return
        lo = c * chunk
        hi = tl.minimum(lo + chunk, n)
        offs = tl.arange(0, BLOCK)
        hist = tl.zeros([256], tl.int32)
        for start in range(lo, hi, BLOCK):
            cols = start + offs
            ok = cols < hi
            key = _key(tl.load(x_ptr + row * sx_r + cols, mask=ok, other=0.0))
            ok = ok & ((key & pmask) == prefix)
            hist += tl.histogram(((key >> (24 - 8 * PASS)) & 255).to(tl.int32), 256, mask=ok)
        bins = tl.arange(0, 256)
        tl.atomic_add(hist_row + PASS * 256 + bins, hist, mask=hist > 0, sem="relaxed")

    @triton.jit
    def _split_select_kernel(x_ptr, hist_ptr, cnt_ptr, out_ptr, n_cols, chunk, n_chunks, K,
                             start_pos, rows_per_b, sx_r, so_r,
                             WRITE: tl.constexpr, BLOCK: tl.constexpr, BLOCK_C: tl.constexpr,
                             BLOCK_K: tl.constexpr):
        """WRITE=False: count this chunk's keys above the threshold and its ties.
        WRITE=True: write their positions at offsets from the other chunks' counts."""
        row = tl.program_id(0).to(tl.int64)
        c = tl.program_id(1)
        n = tl.minimum(start_pos + (row % rows_per_b) + 1, n_cols)
        prefix, pmask, k_rem, total = _radix_state(hist_ptr + row * 1024, K, 4)
        take_all = total <= K
        lo = c * chunk
        hi = tl.minimum(lo + chunk, n)
        offs = tl.arange(0, BLOCK)
        cnt_row = cnt_ptr + row * n_chunks * 2
        if WRITE:
            cc = tl.arange(0, BLOCK_C)
            before = cc < c
            n_gt = tl.sum(tl.load(cnt_row + cc * 2, mask=before, other=0), 0)
            n_tie = tl.sum(tl.load(cnt_row + cc * 2 + 1, mask=before, other=0), 0)
            n_out = n_gt + tl.minimum(n_tie, k_rem)
        else:
            n_gt = tl.zeros([], tl.int32)
            n_tie = tl.zeros([], tl.int32)
            n_out = tl.zeros([], tl.int32)
        for start in range(lo, hi, BLOCK):
            cols = start + offs
            ok = cols < hi
            key = _key(tl.load(x_ptr + row * sx_r + cols, mask=ok, other=0.0))
            if take_all:
                gt = ok
                tie = ok & (cols < 0)
            else:
                gt = ok & (key > prefix)
                tie = ok & (key == prefix)
            if WRITE:
                tie_rank = n_tie + tl.cumsum(tie.to(tl.int32), 0) - 1
                sel = gt | (tie & (tie_rank < k_rem))
                slot = n_out + tl.cumsum(sel.to(tl.int32), 0) - 1
                tl.store(out_ptr + row * so_r + slot, cols.to(tl.int32), mask=sel)
                n_out += tl.sum(sel.to(tl.int32), 0)
            n_gt += tl.sum(gt.to(tl.int32), 0)
            n_tie += tl.sum(tie.to(tl.int32), 0)
        if WRITE:
            if c == 0:  # pad after the last selected slot
                n_sel = tl.minimum(total, K)
                for s0 in range(0, K, BLOCK_K):
                    s = s0 + tl.arange(0, BLOCK_K)
                    tl.store(out_ptr + row * so_r + s, tl.full([BLOCK_K], -1, tl.int32),
                             mask=(s >= n_sel) & (s < K))
        else:
            tl.store(cnt_row + c * 2, n_gt)
            tl.store(cnt_row + c * 2 + 1, n_tie)


    @triton.jit
    def _refine(low, ok, prefix, pmask, k_rem, b256, sh: tl.constexpr):
        """One 8-bit radix step at bit `sh` among the keys matching the prefix so far."""
        m = ok & ((low & pmask) == prefix)
        h = tl.histogram(((low >> sh) & 255).to(tl.int32), 256, mask=m)
        ge = tl.sum(h, 0) - tl.cumsum(h, 0) + h
        dd = tl.max(tl.where(ge >= k_rem, b256, -1), 0)
        k_rem = k_rem - tl.sum(tl.where(b256 > dd, h, 0), 0)
        prefix = prefix | (dd.to(tl.uint32) << sh)
        pmask = pmask | (tl.full([], 255, tl.uint32) << sh)
        return prefix, pmask, k_rem

    @triton.jit
    def _topk_compact_kernel(
        x_ptr, out_ptr, sk_ptr, sp_ptr, flag_ptr, n_cols, K, start_pos, rows_per_b, sx_r, so_r,
        HBITS: tl.constexpr, SH0: tl.constexpr, SH1: tl.constexpr, SH2: tl.constexpr,
        CAP: tl.constexpr, BLOCK: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        """A 2^HBITS-bin histogram of the keys' top bits (HBITS=16: two passes of 256 bins)
        finds the bin holding the k-th largest; one more pass writes every position above it
        and copies the bin's keys and positions (at most CAP) to a scratch row, where the
        remaining low bits are resolved in registers. A row whose bin holds more than CAP
        keys raises its flag and is left to the multi-pass kernel."""
        row = tl.program_id(0).to(tl.int64)
        n = tl.minimum(start_pos + (row % rows_per_b) + 1, n_cols)
        x_row = x_ptr + row * sx_r
        o_row = out_ptr + row * so_r
        offs = tl.arange(0, BLOCK)
        SH: tl.constexpr = 32 - HBITS
        tl.store(flag_ptr + row, 0)
        if n <= K:  # every visible key, then -1
            for s0 in range(0, K, BLOCK_K):
                sl = s0 + tl.arange(0, BLOCK_K)
                tl.store(o_row + sl, tl.where(sl < n, sl, -1), mask=sl < K)
        else:
            if HBITS == 16:  # two cheap 256-bin passes (bits 31..24, then 23..16)
                b256 = tl.arange(0, 256)
                h0 = tl.zeros([256], tl.int32)
                for start in range(0, n, BLOCK):
                    cols = start + offs
                    ok = cols < n
                    key = _key(tl.load(x_row + cols, mask=ok, other=0.0))
                    h0 += tl.histogram((key >> 24).to(tl.int32), 256, mask=ok)
                ge0 = n - tl.cumsum(h0, 0) + h0
                d0 = tl.max(tl.where(ge0 >= K, b256, -1), 0)
                above0 = tl.sum(tl.where(b256 > d0, h0, 0), 0)
                h1 = tl.zeros([256], tl.int32)
                for start in range(0, n, BLOCK):
                    cols = start + offs
                    ok = cols < n
                    key = _key(tl.load(x_row + cols, mask=ok, other=0.0))
                    ok = ok & ((key >> 24).to(tl.int32) == d0)
                    h1 += tl.histogram(((key >> 16) & 255).to(tl.int32), 256, mask=ok)
                ge1 = tl.sum(h1, 0) - tl.cumsum(h1, 0) + h1
                d1 = tl.max(tl.where(ge1 >= K - above0, b256, -1), 0)
                b_star = d0 * 256 + d1
                n_above = above0 + tl.sum(tl.where(b256 > d1, h1, 0), 0)
                c_b = tl.sum(tl.where(b256 == d1, h1, 0), 0)
            else:  # one 2^HBITS-bin pass
                hist = tl.zeros([1 << HBITS], tl.int32)
                for start in range(0, n, BLOCK):
                    cols = start + offs
                    ok = cols < n
                    key = _key(tl.load(x_row + cols, mask=ok, other=0.0))
                    hist += tl.histogram((key >> SH).to(tl.int32), 1 << HBITS, mask=ok)
                bins = tl.arange(0, 1 << HBITS)
                c_ge = n - tl.cumsum(hist, 0) + hist
                b_star = tl.max(tl.where(c_ge >= K, bins, -1), 0)
                n_above = tl.sum(tl.where(bins > b_star, hist, 0), 0)
                c_b = tl.sum(tl.where(bins == b_star, hist, 0), 0)
            k_rem = K - n_above
            if c_b > CAP:
                tl.store(flag_ptr + row, 1)
            else:
                n_def = tl.zeros([], tl.int32)
                n_bnd = tl.zeros([], tl.int32)
                sk_row = sk_ptr + row * CAP
                sp_row = sp_ptr + row * CAP
                for start in range(0, n, BLOCK):
                    cols = start + offs
                    ok = cols < n
                    key = _key(tl.load(x_row + cols, mask=ok, other=0.0))
                    top = (key >> SH).to(tl.int32)
                    d = ok & (top > b_star)
                    bd = ok & (top == b_star)
                    tl.store(o_row + n_def + tl.cumsum(d.to(tl.int32), 0) - 1, cols, mask=d)
                    n_def += tl.sum(d.to(tl.int32), 0)
                    bslot = n_bnd + tl.cumsum(bd.to(tl.int32), 0) - 1
                    tl.store(sk_row + bslot, key.to(tl.int32, bitcast=True), mask=bd)
                    tl.store(sp_row + bslot, cols, mask=bd)
                    n_bnd += tl.sum(bd.to(tl.int32), 0)
                tl.debug_barrier()
                co = tl.arange(0, CAP)
                okc = co < c_b
                low = tl.load(sk_row + co, mask=okc, other=0).to(tl.uint32, bitcast=True)
                low = low & ((1 << SH) - 1)
                pos = tl.load(sp_row + co, mask=okc, other=0)
                b256 = tl.arange(0, 256)
                prefix = tl.zeros([], tl.uint32)
                pmask = tl.zeros([], tl.uint32)
                prefix, pmask, k_rem = _refine(low, okc, prefix, pmask, k_rem, b256, SH0)
                prefix, pmask, k_rem = _refine(low, okc, prefix, pmask, k_rem, b256, SH1)
                prefix, pmask, k_rem = _refine(low, okc, prefix, pmask, k_rem, b256, SH2)
                tie = okc & (low == prefix)
                sel = (okc & (low > prefix)) | (tie & (tl.cumsum(tie.to(tl.int32), 0) - 1 < k_rem))
                tl.store(o_row + n_above + tl.cumsum(sel.to(tl.int32), 0) - 1, pos, mask=sel)


    @triton.jit
    def _kth_key(key, ok, K, K_HI, BITS: tl.constexpr, RADIX: tl.constexpr):
        """A lower bound t of the K-th largest key over the keys held in registers, with
        K <= #{ok & key >= t}; needs #{ok} >= K. Bit-by-bit bisection (one count per bit)
        that stops as soon as that count is at most K_HI, else after BITS bits: then t is
        the largest such value with only its top BITS bits set (BITS=32: exactly the K-th
        largest key). With RADIX: one 256-bin histogram per 8 bits (BITS a multiple of 8),
        no early stop. The early stop is what makes the bisection cheap: distinct keys
        are separated after about log2(#keys) + the exponent's bits, not 32."""
        t = tl.zeros([], tl.uint32)
        if RADIX:
            pmask = tl.zeros([], tl.uint32)
            k_rem = K + tl.zeros([], tl.int32)
            b256 = tl.arange(0, 256)
            for i in tl.static_range(BITS // 8):
                t, pmask, k_rem = _refine(key, ok, t, pmask, k_rem, b256, 24 - 8 * i)
        else:
            c = tl.sum(ok.to(tl.int32), 0)  # #{key >= t}, kept >= K
            i = tl.zeros([], tl.int32)
            while (i < BITS) & (c > K_HI):
                trial = t | (tl.full([], 1, tl.uint32) << (31 - i).to(tl.uint32))
                ct = tl.sum((ok & (key >= trial)).to(tl.int32), 0)
                t = tl.where(ct >= K, trial, t)
                c = tl.where(ct >= K, ct, c)
                i += 1
        # no lower than the key of -inf: below it lie NaNs, which no comparison reaches
        return tl.maximum(t, tl.full([], 0x007FFFFF, tl.uint32))

    @triton.jit
    def _unkey(k):
        """The float whose _key is k."""
        u = k ^ tl.where((k >> 31) == 1, tl.full(k.shape, 0x80000000, tl.uint32),
                         tl.full(k.shape, 0xFFFFFFFF, tl.uint32))
        return u.to(tl.float32, bitcast=True)

    @triton.jit
    def _bound_tau_kernel(
        x_ptr, m_ptr, tau_ptr, cnt_ptr, gl_ptr, gcnt_ptr, sk_ptr, sp_ptr,
        n_cols, K, G, start_pos, rows_per_b, sx_r, sm_r,
        HAS_M: tl.constexpr, MAXG: tl.constexpr, CAP: tl.constexpr,
        BOUND_BITS: tl.constexpr, KTH_RADIX: tl.constexpr,
    ):
        """Stage 1 of "bound", one program per row: a bound tau with at least k scores of
        the row at or above it, and few more.
        - From the group maxima (m: the max of every G consecutive visible scores, written
          by the indexer), tau is a value at least k maxima reach (bisection on the top
          BOUND_BITS bits, stopped once at most k + k/8 reach it): k groups each hold a
          score >= tau. The groups whose maximum reaches tau (k to 2k of
          them) are listed for stage 2; no other group can hold a survivor.
        - A row of at most MAXG scores without usable maxima is read whole: tau is its
          exact k-th largest and its survivors are written here (stage 2 skips the row).
        - Otherwise (or a row of k or fewer scores) there is no tau: cnt = -1."""
        row = tl.program_id(0).to(tl.int64)
        n = tl.minimum(start_pos + (row % rows_per_b) + 1, n_cols)
        tl.store(cnt_ptr + row, 0)
        tl.store(gcnt_ptr + row, 0)
        gi = tl.arange(0, MAXG)
        ng = (n + G - 1) // G
        if n <= K:
            tl.store(cnt_ptr + row, -1)
        elif HAS_M & (ng <= MAXG) & (ng >= K):
            ok = gi < ng
            mv = tl.load(m_ptr + row * sm_r + gi, mask=ok, other=0.0)
            tau = _kth_key(_key(mv), ok, K, K + K // 8, BOUND_BITS, KTH_RADIX)
            tauf = _unkey(tau)
            tl.store(tau_ptr + row, tauf)
            gsel = ok & (mv >= tauf)
            tl.store(gl_ptr + row * MAXG + tl.cumsum(gsel.to(tl.int32), 0) - 1, gi, mask=gsel)
            tl.store(gcnt_ptr + row, tl.sum(gsel.to(tl.int32), 0))
        elif n <= MAXG:
            ok = gi < n
            xv = tl.load(x_ptr + row * sx_r + gi, mask=ok, other=0.0)
            tau = _kth_key(_key(xv), ok, K, K, 32, KTH_RADIX)
            sel = ok & (xv >= _unkey(tau))
            slot = tl.cumsum(sel.to(tl.int32), 0) - 1
            keep = sel & (slot < CAP)
            tl.store(sk_ptr + row * CAP + slot, xv, mask=keep)
            tl.store(sp_ptr + row * CAP + slot, gi, mask=keep)
            tl.store(cnt_ptr + row, tl.sum(sel.to(tl.int32), 0))
        else:
            tl.store(cnt_ptr + row, -1)

    @triton.jit
    def _bound_filter_kernel(
        x_ptr, tau_ptr, cnt_ptr, gl_ptr, gcnt_ptr, sk_ptr, sp_ptr, n_cols, start_pos,
        rows_per_b, chunk, sx_r,
        G: tl.constexpr, MAXG: tl.constexpr, CAP: tl.constexpr, BG: tl.constexpr,
    ):
        """Stage 2, one program per (row, chunk of its listed groups): reads only the listed
        groups' scores and appends those >= tau, with their positions, to the row's survivor
        list (CAP slots; one atomic per tile claims the tile's slots, so tiles land in any
        order). Every lane of a tile holds a listed group: no work on groups below tau."""
        row = tl.program_id(0).to(tl.int64)
        c = tl.program_id(1)
        n = tl.minimum(start_pos + (row % rows_per_b) + 1, n_cols)
        lo = c * chunk
        n_g = tl.load(gcnt_ptr + row)
        if lo < n_g:
            tauf = tl.load(tau_ptr + row)
            hi = tl.minimum(lo + chunk, n_g)
            x_row = x_ptr + row * sx_r
            sk_row = sk_ptr + row * CAP
            sp_row = sp_ptr + row * CAP
            offs_in = tl.arange(0, G)
            for j0 in range(lo, hi, BG):
                jj = j0 + tl.arange(0, BG)
                jok = jj < hi
                gid = tl.load(gl_ptr + row * MAXG + jj, mask=jok, other=0)
                cols = gid[:, None] * G + offs_in[None, :]
                ok = jok[:, None] & (cols < n)
                xv = tl.load(x_row + cols, mask=ok, other=float("-inf"))
                sel = (ok & (xv >= tauf)).to(tl.int32)
                per_g = tl.sum(sel, 1)
                base = tl.atomic_add(cnt_ptr + row, tl.sum(per_g, 0), sem="relaxed")
                slot = (base + tl.cumsum(per_g, 0) - per_g)[:, None] + tl.cumsum(sel, 1) - 1
                keep = (sel > 0) & (slot < CAP)
                tl.store(sk_row + slot, xv, mask=keep)
                tl.store(sp_row + slot, cols, mask=keep)

    @triton.jit
    def _bound_select_kernel(
        cnt_ptr, sk_ptr, sp_ptr, out_ptr, flag_ptr, n_cols, K, start_pos, rows_per_b, so_r,
        CAP: tl.constexpr, BLOCK_K: tl.constexpr, KTH_RADIX: tl.constexpr,
    ):
        """Stage 3, one program per row: the exact k largest among the survivors (ties to
        the earlier position), in survivor order. Rows of at most k keys take them all; a
        row without tau or with more survivors than CAP raises its flag."""
        row = tl.program_id(0).to(tl.int64)
        n = tl.minimum(start_pos + (row % rows_per_b) + 1, n_cols)
        o_row = out_ptr + row * so_r
        cnt = tl.load(cnt_ptr + row)
        flag = tl.zeros([], tl.int32)
        if n <= K:  # every visible key, then -1
            for s0 in range(0, K, BLOCK_K):
                sl = s0 + tl.arange(0, BLOCK_K)
                tl.store(o_row + sl, tl.where(sl < n, sl, -1), mask=sl < K)
        elif (cnt < K) | (cnt > CAP):  # no tau, too many survivors (or inconsistent maxima)
            flag = flag + 1
        else:
            co = tl.arange(0, CAP)
            ok = co < cnt
            key = _key(tl.load(sk_ptr + row * CAP + co, mask=ok, other=0.0))
            pos = tl.load(sp_ptr + row * CAP + co, mask=ok, other=0)
            thr = _kth_key(key, ok, K, K, 32, KTH_RADIX)
            gt = ok & (key > thr)
            tie = ok & (key == thr)
            need = K - tl.sum(gt.to(tl.int32), 0)
            # ties go to the earliest positions: rank each tie among the ties before it
            n_tie = tl.sum(tie.to(tl.int32), 0)
            if n_tie > need:
                tpos = tl.where(tie, pos, 2147483647)
                tie = tie & (_tie_rank(tpos, tie, need) < need)
            sel = gt | tie
            tl.store(o_row + tl.cumsum(sel.to(tl.int32), 0) - 1, pos, mask=sel)
        tl.store(flag_ptr + row, flag)

    @triton.jit
    def _tie_rank(tpos, tie, need):
        """For tied keys (positions tpos, others at INT_MAX): 0 for the `need` earliest ties,
        `need` for the rest (bisection on the position cut-off)."""
        lo = tl.zeros([], tl.int32)
        hi = tl.full([], 2147483647, tl.int32)
        for _ in tl.static_range(31):  # smallest p with #{tie & tpos <= p} >= need
            mid = lo + (hi - lo) // 2
            c = tl.sum((tie & (tpos <= mid)).to(tl.int32), 0)
            big = c >= need
            hi = tl.where(big, mid, hi)
            lo = tl.where(big, lo, mid + 1)
        return tl.where(tpos <= hi, 0, need)


def _select(x, K, n_cols, chunk, n_chunks, start_pos, rows_per_b, lengths=None, cand=None,
            want_val=False, block=None, num_warps=4, out_idx=None, flag=None, digit_bits=8):
    """x [R, >=n_cols] fp32 (row stride arbitrary, unit column stride)."""
    require_triton()
    R = x.shape[0]
    dev = x.device
    if out_idx is None:
        out_idx = empty((R, n_chunks, K), torch.int32, dev)
    out_val = empty((R, n_chunks, K), torch.float32, dev) if want_val else out_idx
    BLOCK = block or (1024 if x.is_cuda else 128)
    _topk_kernel[(R, n_chunks)](
        x, cand if cand is not None else x, lengths if lengths is not None else x,
        out_idx, out_val,
        n_cols, chunk, K, start_pos, rows_per_b,
        x.stride(0), out_idx.stride(0), out_idx.stride(1),
        HAS_CAND=cand is not None, HAS_LEN=lengths is not None, WRITE_VAL=want_val,
        BLOCK=BLOCK, BLOCK_K=min(BLOCK, 1024), flag_ptr=flag if flag is not None else x,
        HAS_FLAG=flag is not None, DB=digit_bits, num_warps=num_warps,
    )
    return out_idx, (out_val if want_val else None)


def _topk_compact(x, K, T, start_pos, rows_per_b, hbits=12, cap=4096, block=None, num_warps=8):
    """Two-pass selection for many long rows (prefill); see `_topk_compact_kernel`. Output
    per row: the positions above the threshold bin (ascending), then the threshold bin's
    picks (ascending), then -1. Rows the kernel flags are redone by the multi-pass kernel."""
    R = x.shape[0]
    dev = x.device
    out = empty((R, K), torch.int32, dev)
    flag = empty((R,), torch.int32, dev)
    sk = empty((R, cap), torch.int32, dev)
    sp = empty((R, cap), torch.int32, dev)
    BLOCK = block or (2048 if x.is_cuda else 128)
    sh = 32 - hbits
    if not 8 < sh <= 24 or (hbits > 12 and hbits != 16):
        raise ValueError("hbits: 8..12 (one histogram pass) or 16 (two 256-bin passes)")
    _topk_compact_kernel[(R,)](
        x, out, sk, sp, flag, T, K, start_pos, rows_per_b, x.stride(0), out.stride(0),
        HBITS=hbits, SH0=sh - 8, SH1=max(sh - 16, 0), SH2=0, CAP=cap, BLOCK=BLOCK,
        BLOCK_K=min(1024, triton.next_power_of_2(K)), num_warps=num_warps,
    )
    _select(x, K, T, max(T, 1), 1, start_pos, rows_per_b, block=None if x.is_cuda else 128,
            num_warps=4, out_idx=out.view(R, 1, K), flag=flag)
    return out


BOUND_CAP = 4096  # survivors per row the "bound" method selects from in registers
BOUND_MAXG = 8192  # group maxima per row (or keys of a short row) it can take tau from


def bound_group(n_max: int, maxg: int = BOUND_MAXG) -> int:
    """The power-of-two group size whose maxima of a row of n_max keys fit `maxg`."""
    g = 1
    while (n_max + g - 1) // g > maxg:
        g *= 2
    return g


def _topk_bound(x, K, T, start_pos, rows_per_b, maxima=None, group=1, cap=BOUND_CAP,
                maxg=BOUND_MAXG, bound_bits=16, block=None, chunk=None, num_warps=None,
                filter_warps=2, kth="bisect"):
    """Three launches (tau, filter, select; see the kernels) plus the multi-pass kernel for
    the rows the select flags. `kth`: how tau and the select find a k-th largest key,
    "bisect" (one count per bit) or "radix" (one 256-bin histogram per 8 bits)."""
    if kth not in ("bisect", "radix") or (kth == "radix" and bound_bits % 8):
        raise ValueError("kth: 'bisect', or 'radix' with bound_bits a multiple of 8")
    R = x.shape[0]
    dev = x.device
    has_m = maxima is not None
    if has_m and (maxima.dtype != torch.float32 or maxima.stride(-1) != 1):
        raise ValueError("maxima must be fp32 with a unit last stride")
    # no row holds more than T keys: short rows need neither a CAP- nor a MAXG-wide pass
    cap = triton.next_power_of_2(max(K, min(cap, T)))
    maxg = triton.next_power_of_2(max(16, min(maxg, T)))
    out = empty((R, K), torch.int32, dev)
    flag = empty((R,), torch.int32, dev)
    tau = empty((R,), torch.float32, dev)
    cnt = empty((R,), torch.int32, dev)
    gcnt = empty((R,), torch.int32, dev)
    gl = empty((R if has_m else 1, maxg), torch.int32, dev)
    sk = empty((R, cap), torch.float32, dev)
    sp = empty((R, cap), torch.int32, dev)
    m = maxima if has_m else x
    cuda = x.is_cuda
    G = max(group, 1) if has_m else 1
    _bound_tau_kernel[(R,)](
        x, m, tau, cnt, gl, gcnt, sk, sp, T, K, G, start_pos, rows_per_b, x.stride(0),
        m.stride(0), HAS_M=has_m, MAXG=maxg, CAP=cap, BOUND_BITS=bound_bits,
        KTH_RADIX=kth == "radix",
        num_warps=num_warps or 4)
    if has_m:
        BG = block or (128 if cuda else 8)  # listed groups per tile
        chunk = triton.cdiv(max(BG, chunk or (4 * BG)), BG) * BG
        _bound_filter_kernel[(R, triton.cdiv(maxg, chunk))](
            x, tau, cnt, gl, gcnt, sk, sp, T, start_pos, rows_per_b, chunk, x.stride(0),
            G=G, MAXG=maxg, CAP=cap, BG=BG, num_warps=filter_warps)
    _bound_select_kernel[(R,)](
        cnt, sk, sp, out, flag, T, K, start_pos, rows_per_b, out.stride(0), CAP=cap,
        BLOCK_K=min(1024, triton.next_power_of_2(K)), KTH_RADIX=kth == "radix",
        num_warps=num_warps or 4)
    _select(x, K, T, max(T, 1), 1, start_pos, rows_per_b, block=None if cuda else 128,
            num_warps=4, out_idx=out.view(R, 1, K), flag=flag)
    return out


def topk_rows(scores: torch.Tensor, k: int, start_pos: int = 0, chunk: int | None = None,
              block=None, num_warps=None, method: str = "radix", hbits: int = 16,
              cap: int | None = None, digit_bits: int = 8, maxima: torch.Tensor | None = None,
              group: int = 1, bound_bits: int = 16, maxg: int = BOUND_MAXG,
              bound_chunk: int | None = None, filter_warps: int = 2,
              kth: str = "bisect") -> torch.Tensor:
    """Causal top-k of scores [B, S, T] fp32 -> [B, S, k] int32, -1 padded.

    Row s reads only its visible prefix (positions <= start_pos + s): what lies above the
    diagonal is never read, so the indexer may leave it unwritten. Methods: "radix" (the
    default: 32 / digit_bits histogram passes of 2^digit_bits bins plus a write pass, fully
    ascending), "compact" (hbits=16: three
    passes, two histograms then a write that parks the threshold bin's keys in a scratch row
    resolved in registers; a row holds the positions above the threshold bin in ascending
    order, then the threshold bin's picks in ascending order; hbits<=12: two passes with one
    2^hbits-bin histogram, slower on the H200 as the large histogram costs more), "bound"
    (see the module docstring: ascending without `maxima`; with them, rows bounded from
    the maxima in no fixed order). With `chunk` (decode: few, long rows) each row is split
    into chunks selected in parallel (ascending). The set is the same in every case: the k
    largest, ties to the earlier position; -1 slots always come last.
    """
    B, S, T = scores.shape
    if scores.dtype != torch.float32 or scores.stride(-1) != 1:
        raise ValueError("scores must be fp32 with a unit last stride")
    x = scores.reshape(B * S, T) if scores.is_contiguous() else scores.contiguous().view(B * S, T)
    if chunk is None or chunk >= T:
        if method == "bound":
            m = None
            if maxima is not None:
                if (maxima.shape[:2] != (B, S) or maxima.shape[2] < -(-T // group)
                        or not maxima.is_contiguous()):
                    raise ValueError("maxima must be contiguous [B, S, >= ceil(T / group)]")
                m = maxima.view(B * S, maxima.shape[2])
            return _topk_bound(x, k, T, start_pos, S, m, group, cap or BOUND_CAP, maxg,
                               bound_bits=bound_bits, block=block, chunk=bound_chunk,
                               num_warps=num_warps, filter_warps=filter_warps,
                               kth=kth).view(B, S, k)
        if method == "compact":
            return _topk_compact(x, k, T, start_pos, S, hbits, cap or 4096, block,
                                 num_warps or 8).view(B, S, k)
        if digit_bits not in (2, 4, 8):
            raise ValueError("digit_bits must be 2, 4 or 8")
        idx, _ = _select(x, k, T, max(T, 1), 1, start_pos, S, block=block,
                         num_warps=num_warps or 4, digit_bits=digit_bits)
        return idx.view(B, S, k)
    return _topk_split_rows(x, k, T, chunk, start_pos, S, block=block,
                            num_warps=num_warps or 4).view(B, S, k)


def _topk_split_rows(x, K, T, chunk, start_pos, rows_per_b, block=None, num_warps=4):
    """Few long rows (decode): every row is cut into chunks that run in parallel. Four
    launches build the row's 4 x 256-bin digit histograms with atomic adds (each program
    re-derives the threshold prefix from the passes before), one counts every chunk's keys
    above the threshold and its ties, and one writes the positions at offsets from those
    counts, keeping ascending order and the earliest-tie rule."""
    R = x.shape[0]
    dev = x.device
    n_chunks = triton.cdiv(T, chunk)
    hist = torch.zeros(R, 4, 256, dtype=torch.int32, device=dev)
    cnt = empty((R, n_chunks, 2), torch.int32, dev)
    out = empty((R, K), torch.int32, dev)
    BLOCK = block or (min(2048, triton.next_power_of_2(chunk)) if x.is_cuda else 128)
    grid = (R, n_chunks)
    for p in range(4):
        _split_hist_kernel[grid](x, hist, T, chunk, K, start_pos, rows_per_b, x.stride(0),
                                 PASS=p, BLOCK=BLOCK, num_warps=num_warps)
    for write in (False, True):
        _split_select_kernel[grid](x, hist, cnt, out, T, chunk, n_chunks, K, start_pos,
                                   rows_per_b, x.stride(0), out.stride(0), WRITE=write,
                                   BLOCK=BLOCK, BLOCK_C=triton.next_power_of_2(n_chunks),
                                   BLOCK_K=min(1024, triton.next_power_of_2(K)),
                                   num_warps=num_warps)
    return out
