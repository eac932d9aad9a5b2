"""Per-layer inference caches (dsa.md §1.2 and §6.1 item 6).

- `LatentCache`: the MLA latent `kv` [B, T, kv_lora_rank] (RMS-normed) and the RoPE'd
  shared key `pe` [B, T, qk_rope_head_dim]; the 576-wide MQA cache at V3.2 sizes.
- `IndexKeyCache`: the indexer's one key per token [B, T, index_head_dim], either in the
  model dtype or as e4m3 plus one fp32 scale per token (132 B per token at V3.2 sizes).

Each has one method, `update(start_pos, ...)`, which writes the new positions and returns
views of everything up to the end of the write.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ModelConfig
from .fp8 import E4M3


class LatentCache:
    def __init__(self, batch: int, max_len: int, kv_dim: int, pe_dim: int, dtype, device):
        self.kv = torch.zeros(batch, max_len, kv_dim, dtype=dtype, device=device)
        self.pe = torch.zeros(batch, max_len, pe_dim, dtype=dtype, device=device)

    def update(self, start_pos: int, kv: torch.Tensor, pe: torch.Tensor):
        """kv [B, S, R], pe [B, S, P] -> (kv [B, T, R], pe [B, T, P]) with T = start_pos + S."""
        end = start_pos + kv.shape[1]
        if end > self.kv.shape[1]:
            raise ValueError(f"cache holds {self.kv.shape[1]} positions, asked for {end}")
        self.kv[:, start_pos:end] = kv
        self.pe[:, start_pos:end] = pe
        return self.kv[:, :end], self.pe[:, :end]


class IndexKeyCache:
    def __init__(self, batch: int, max_len: int, dim: int, fp8: bool, dtype, device):
        self.fp8 = fp8
        self.k = torch.zeros(batch, max_len, dim, dtype=E4M3 if fp8 else dtype, device=device)
        self.scale = torch.ones(batch, max_len, 1, dtype=torch.float32, device=device) if fp8 else None

    def update(self, start_pos: int, k: torch.Tensor, scale: torch.Tensor | None = None):
        """k [B, S, D] (and scale [B, S, 1] when FP8) -> (k [B, T, D], scale [B, T, 1] or None)."""
        end = start_pos + k.shape[1]
        if end > self.k.shape[1]:
            raise ValueError(f"cache holds {self.k.shape[1]} positions, asked for {end}")
        if (scale is not None) != self.fp8:
            raise ValueError("FP8 index cache needs a scale, a plain one must not get one")
        self.k[:, start_pos:end] = k
        if self.fp8:
            self.scale[:, start_pos:end] = scale
            return self.k[:, :end], self.scale[:, :end]
        return self.k[:, :end], None


@dataclass
class LayerCache:
    latent: LatentCache
    index: IndexKeyCache


def make_caches(cfg: ModelConfig, batch: int, max_len: int | None = None,
                dtype=torch.float32, device=None) -> list[LayerCache]:
    """One empty `LayerCache` per layer for `batch` sequences of up to `max_len` tokens."""
    max_len = max_len or cfg.max_seq_len
    return [
        LayerCache(
            LatentCache(batch, max_len, cfg.kv_lora_rank, cfg.qk_rope_head_dim, dtype, device),
            IndexKeyCache(batch, max_len, cfg.index_head_dim, cfg.index_fp8, dtype, device),
        )
        for _ in range(cfg.n_layers)
    ]
