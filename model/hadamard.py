"""Orthonormal Walsh-Hadamard rotation of the last dimension.

The indexer rotates both q and k with `hadamard_transform(x, scale=d^-1/2)` before FP8
quantisation (dsa.md §1.3 step 4). H is symmetric and orthonormal (H·H = I), so
(Hq)·(Hk) = q·k: in exact arithmetic the rotation changes nothing. It matters only for
quantisation, where it spreads outlier channels across the block. Rotating one side only
breaks the scores (ROCm/ATOM #1507).

Sylvester (natural) order, as in `fast_hadamard_transform`.
"""

from __future__ import annotations

import torch


def hadamard_transform(x: torch.Tensor) -> torch.Tensor:
    """x [..., d] with d a power of two -> H_d x / sqrt(d), same shape and dtype."""
    d = x.shape[-1]
    if d & (d - 1):
        raise ValueError(f"Hadamard size must be a power of two, got {d}")
    dtype, lead = x.dtype, x.shape[:-1]
    y = (x if x.dtype == torch.float64 else x.float()).reshape(-1, d)
    h = 1
    while h < d:
        # butterflies on pairs (i, i + h) inside blocks of 2h
        y = y.view(-1, d // (2 * h), 2, h)
        a, b = y[:, :, 0], y[:, :, 1]
        y = torch.stack((a + b, a - b), dim=2)
        h *= 2
    return (y.reshape(*lead, d) * d**-0.5).to(dtype)


def hadamard_matrix(d: int) -> torch.Tensor:
    """The d x d normalised Sylvester matrix, for tests and for folding into weights."""
    return hadamard_transform(torch.eye(d))
