"""Exact, streaming causal top-k selection (radix select), -1 for empty slots."""

from .naive import canonical, topk_ref
from .triton_topk import topk_rows

__all__ = ["canonical", "topk_ref", "topk_rows"]
