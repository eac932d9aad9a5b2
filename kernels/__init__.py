"""Triton kernels for DeepSeek Sparse Attention (issue 6), one folder per op, each with a
plain-PyTorch `naive.py` reference beside the Triton file:

- `indexer_logits/`: fused causal lightning-indexer logits, bf16/fp32 and FP8 e4m3, with
  optional per-row group maxima (the top-k's bound).
- `topk/`: exact top-k per row, -1 for empty slots: "bound" (from the group maxima, one read
  of the groups that can hold a winner) with a multi-pass radix select behind it.
- `sparse_attn/`: sparse MLA forward (prefill; decode split-K over contiguous or paged,
  optionally FP8, caches) returning out and LSE; backward; the KL target on the support.
- `indexer_kl/`: the indexer's KL loss on the top-k support, forward + backward fused.
- `dsa.py`: the blocked indexer + top-k pipeline, the autograd `sparse_mla`
  (`model.attention` uses it for attn_impl="triton") and the dense warm-up's indexer KL
  (`dense_indexer_kl`, in blocks of query rows).

On a machine without a GPU the kernels run under the Triton interpreter
(TRITON_INTERPRET=1, set before the first import of triton).
"""

from ._common import HAS_TRITON, INTERPRET

if HAS_TRITON:
    from .dsa import SparseMLA, dense_indexer_kl, dsa_select, sparse_mla, sparse_mla_with_lse
    from .indexer_kl import indexer_kl
    from .indexer_logits import indexer_logits, indexer_logits_fp8
    from .sparse_attn import sparse_attn_target, sparse_mla_bwd, sparse_mla_decode, sparse_mla_fwd
    from .topk import topk_rows
else:  # the names exist so `from kernels import sparse_mla` fails with a clear message
    def sparse_mla(*args, **kwargs):
        raise ImportError("kernels.sparse_mla needs the `triton` package")

__all__ = [
    "HAS_TRITON", "INTERPRET", "SparseMLA", "dense_indexer_kl", "dsa_select", "indexer_kl",
    "indexer_logits", "indexer_logits_fp8", "sparse_attn_target", "sparse_mla",
    "sparse_mla_bwd", "sparse_mla_decode", "sparse_mla_fwd", "sparse_mla_with_lse", "topk_rows",
]
