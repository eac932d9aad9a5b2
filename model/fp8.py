"""FP8 (e4m3) block quantisation as the DeepSeek-V3.2 reference kernels define it.

- Activations: one fp32 scale per row and 128-column block (`act_quant`, dsa.md §1.4):
  amax clamped to >= 1e-4, scale = amax / 448, or 2^ceil(log2(amax / 448)) with the UE8M0
  format; values clamped to ±448 and cast to e4m3.
- Weights: one fp32 scale per 128 x 128 block, stored in checkpoints as `weight_scale_inv`
  (the factor that *dequantises*: w = w_fp8 * scale_inv).
- Indexer logits (`fp8_index`): score[b,s,t] = k_s[t] · Σ_h w[s,h]·q_s[s,h]·ReLU(q8[s,h]·k8[t]).

On CPU the casts to `torch.float8_e4m3fn` are real (the rounding is the hardware's), and the
products are taken on the dequantised values in float32: that is the "simulated" path. On a
CUDA device of compute capability >= 8.9 the q·k products run through `torch._scaled_mm`.
"""

from __future__ import annotations

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0


def _scale_from_amax(amax: torch.Tensor, scale_fmt: str | None) -> torch.Tensor:
    scale = amax.float().clamp(min=1e-4) / E4M3_MAX
    if scale_fmt == "ue8m0":
        scale = torch.exp2(torch.ceil(torch.log2(scale)))
    elif scale_fmt is not None:
        raise ValueError(f"unknown scale format {scale_fmt!r}")
    return scale


def act_quant(x: torch.Tensor, block: int = 128, scale_fmt: str | None = None):
    """x [..., N] -> (x8 [..., N] e4m3, scale [..., N // block] float32)."""
    n = x.shape[-1]
    if n % block:
        raise ValueError(f"last dim {n} is not a multiple of the block {block}")
    xb = x.float().unflatten(-1, (n // block, block))  # (..., N/b, b)
    scale = _scale_from_amax(xb.abs().amax(dim=-1), scale_fmt)  # (..., N/b)
    x8 = (xb / scale.unsqueeze(-1)).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return x8.flatten(-2), scale


def act_dequant(x8: torch.Tensor, scale: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Inverse of `act_quant`: [..., N] e4m3 and [..., N // block] scales -> [..., N]."""
    nb = scale.shape[-1]
    xb = x8.float().unflatten(-1, (nb, x8.shape[-1] // nb)) * scale.unsqueeze(-1)
    return xb.flatten(-2).to(dtype)


def fake_quant(x: torch.Tensor, block: int = 128, scale_fmt: str | None = None) -> torch.Tensor:
    """Round-trip through e4m3 (forward precision of an FP8 cache), in x's dtype.

    The backward is the identity (straight-through): differentiating the casts would round
    the incoming gradient itself to unscaled e4m3, which flushes most small gradients to 0.
    """
    return straight_through(x, act_dequant(*act_quant(x.detach(), block, scale_fmt),
                                           dtype=x.dtype))


def straight_through(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`value` forward, the identity to x backward (`value` itself when x needs no grad)."""
    return x + (value - x).detach() if x.requires_grad else value


def weight_quant(w: torch.Tensor, block: int = 128, scale_fmt: str | None = None):
    """w [N, K] -> (w8 [N, K] e4m3, scale_inv [ceil(N/b), ceil(K/b)] float32)."""
    n, k = w.shape
    nb, kb = -(-n // block), -(-k // block)
    padded = torch.zeros(nb * block, kb * block, dtype=torch.float32, device=w.device)
    padded[:n, :k] = w.float()
    tiles = padded.view(nb, block, kb, block)  # (N/b, b, K/b, b)
    scale = _scale_from_amax(tiles.abs().amax(dim=(1, 3)), scale_fmt)  # (N/b, K/b)
    w8 = (tiles / scale[:, None, :, None]).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return w8.view(nb * block, kb * block)[:n, :k].contiguous(), scale


def weight_dequant(w8: torch.Tensor, scale_inv: torch.Tensor, block: int = 128,
                   dtype=torch.float32) -> torch.Tensor:
    """Inverse of `weight_quant`; also reads Hugging Face FP8 checkpoints."""
    n, k = w8.shape
    full = scale_inv.float().repeat_interleave(block, 0).repeat_interleave(block, 1)[:n, :k]
    return (w8.float() * full).to(dtype)


def _qk_fp8_cuda(q8: torch.Tensor, k8: torch.Tensor) -> torch.Tensor | None:
    """Raw e4m3 products q8 [B, M, D] x k8 [B, T, D] -> [B, M, T] fp32 on tensor cores.

    Returns None where `_scaled_mm` cannot run (CPU, pre-Ada GPU, sizes not multiples of 16).
    """
    if not q8.is_cuda or torch.cuda.get_device_capability(q8.device) < (8, 9):
        return None
    if q8.shape[1] % 16 or k8.shape[1] % 16 or q8.shape[2] % 16:
        return None
    one = torch.ones((), device=q8.device, dtype=torch.float32)
    out = [torch._scaled_mm(q8[b].contiguous(), k8[b].contiguous().t(), scale_a=one,
                            scale_b=one, out_dtype=torch.float32) for b in range(q8.shape[0])]
    return torch.stack(out)


def fp8_index(q8: torch.Tensor, q_s: torch.Tensor, k8: torch.Tensor, k_s: torch.Tensor,
              w: torch.Tensor) -> torch.Tensor:
    """Indexer logits from FP8 operands (reference `fp8_index`).

    q8 [B, S, H, D] e4m3, q_s [B, S, H] fp32, k8 [B, T, D] e4m3, k_s [B, T] fp32,
    w [B, S, H] fp32 (head weights with every constant folded in) -> [B, S, T] fp32.
    The scales are positive, so they commute with the ReLU.
    """
    B, S, H, D = q8.shape
    raw = _qk_fp8_cuda(q8.reshape(B, S * H, D), k8)
    if raw is None:
        raw = torch.einsum("bmd,btd->bmt", q8.reshape(B, S * H, D).float(), k8.float())
    raw = raw.view(B, S, H, -1).relu()  # (B, S, H, T)
    logits = torch.einsum("bsht,bsh->bst", raw, w * q_s)
    return logits * k_s.unsqueeze(1)
