"""Sparse MLA attention over a shared latent KV cache: prefill/decode forward (with LSE),
backward, and the indexer's KL target on the selected support."""

from .naive import (dequant_kv, paged_to_contiguous, sparse_mla_decode_ref, sparse_mla_ref,
                    sparse_target_ref)
from .triton_bwd import sparse_attn_target, sparse_mla_bwd
from .triton_fwd import sparse_mla_decode, sparse_mla_fwd, sparse_mla_lse

__all__ = [
    "dequant_kv", "paged_to_contiguous", "sparse_attn_target", "sparse_mla_bwd",
    "sparse_mla_decode", "sparse_mla_decode_ref", "sparse_mla_fwd", "sparse_mla_lse",
    "sparse_mla_ref", "sparse_target_ref",
]
