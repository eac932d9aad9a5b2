"""Fused causal lightning-indexer logits (bf16 and FP8 e4m3 block-scaled)."""

from .naive import indexer_logits_fp8_ref, indexer_logits_ref
from .triton_indexer import indexer_logits, indexer_logits_fp8

__all__ = ["indexer_logits", "indexer_logits_fp8", "indexer_logits_fp8_ref", "indexer_logits_ref"]
