"""The indexer's KL loss on the top-k support: fused forward + backward."""

from .naive import indexer_kl_ref
from .triton_kl import IndexerKL, indexer_kl, indexer_kl_fwd_bwd

__all__ = ["IndexerKL", "indexer_kl", "indexer_kl_fwd_bwd", "indexer_kl_ref"]
