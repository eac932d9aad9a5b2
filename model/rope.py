"""Rotary position embedding with YaRN frequency scaling, in two channel layouts.

- MLA uses the *interleaved* layout: channel pairs (2i, 2i+1) rotate together.
- The indexer uses the *non-interleaved* (half-split) layout: pairs (i, i + d/2), on the
  first `qk_rope_head_dim` channels (commit 8631a81 "fix indexer rope", dsa.md §1.3 step 3).
Both share one frequency table.

YaRN (ModelArgs defaults beta_fast=32, beta_slow=1, factor=40, original_seq_len=4096):
frequencies whose wavelength fits many times in the original context keep their value,
slow ones are divided by `factor`, and a linear ramp blends the band in between.
"""

from __future__ import annotations

import math

import torch

from .config import ModelConfig


def _correction_dim(n_rotations: float, dim: int, base: float, seq_len: int) -> float:
    """The frequency index whose wavelength completes `n_rotations` turns over seq_len."""
    return dim * math.log(seq_len / (n_rotations * 2 * math.pi)) / (2 * math.log(base))


def yarn_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies, [qk_rope_head_dim // 2] float32, YaRN-scaled when cfg.yarn."""
    dim, base = cfg.qk_rope_head_dim, cfg.rope_theta
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    if cfg.yarn:
        low = max(math.floor(_correction_dim(cfg.beta_fast, dim, base, cfg.original_seq_len)), 0)
        high = min(math.ceil(_correction_dim(cfg.beta_slow, dim, base, cfg.original_seq_len)), dim - 1)
        if low == high:
            high += 0.001  # avoid a zero-width ramp
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        keep = 1.0 - ramp  # 1 for fast (high-frequency) channels, 0 for slow ones
        inv_freq = inv_freq / cfg.rope_factor * (1 - keep) + inv_freq * keep
    return inv_freq.float()


def rope_tables(cfg: ModelConfig, seq_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each [seq_len, qk_rope_head_dim // 2] float32."""
    seq_len = seq_len or cfg.max_seq_len
    t = torch.arange(seq_len, dtype=torch.float32)
    angles = torch.outer(t, yarn_inv_freq(cfg))  # (T, P/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotate x [B, S, ..., P] by the angles of its positions; cos/sin are [S, P/2].

    Computed in float32 and returned in x's dtype.
    """
    dtype, x = x.dtype, x.float()
    shape = (1, cos.shape[0]) + (1,) * (x.dim() - 3) + (cos.shape[1],)
    c, s = cos.view(shape), sin.view(shape)  # broadcast over batch and heads
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    else:
        x1, x2 = x.chunk(2, dim=-1)
        out = torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1)
    return out.to(dtype)
