"""Shared helpers: Triton availability and small launch utilities.

Every kernel module imports Triton through here, so a missing Triton raises one clear
ImportError and `kernels.HAS_TRITON` tells tests to skip.
"""

from __future__ import annotations

import os

import torch

try:  # pragma: no cover - exercised by the import itself
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover
    triton = None
    tl = None
    HAS_TRITON = False


def _fix_interpreter_index() -> None:
    """Triton 3.6's interpreter turns a scalar into int() of a 1-element 1-D array, which
    NumPy >= 2.4 rejects ("only 0-dimensional arrays can be converted"), breaking any
    `range(runtime_scalar)` under TRITON_INTERPRET=1. Re-point `__index__` at the element."""
    try:
        from triton.runtime import interpreter as _interp
    except Exception:  # pragma: no cover
        return
    orig = getattr(_interp, "_patch_lang_tensor", None)
    if orig is None or getattr(orig, "_envfactory_fixed", False):
        return

    def patched(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._envfactory_fixed = True
    _interp._patch_lang_tensor = patched


if HAS_TRITON:
    _fix_interpreter_index()


def require_triton() -> None:
    if not HAS_TRITON:
        raise ImportError("kernels/ needs the `triton` package (CPU: run under TRITON_INTERPRET=1)")


# Test hygiene: with poisoning on, `empty` hands out buffers pre-filled with values no kernel
# writes (NaN for floats, the dtype's most negative value for integers), so a slot a kernel
# leaves unwritten shows instead of passing with whatever memory held. Off by default: `empty`
# is then plain torch.empty. On with ENVFACTORY_KERNEL_POISON=1 (read at every call) or
# set_poison(True) (tests/kernels/conftest.py); set_poison(None) defers to the variable again.
_POISON: bool | None = None


def set_poison(on: bool | None) -> None:
    global _POISON
    _POISON = on


def poison_enabled() -> bool:
    if _POISON is not None:
        return _POISON
    return os.environ.get("ENVFACTORY_KERNEL_POISON", "0") not in ("", "0")


def poison_value(dtype):
    """What a poisoned buffer of `dtype` holds: NaN for floating dtypes (float8 included:
    e4m3fn stores it as 0x7F), the minimum for signed integers (negative, so never a key
    position, and not -1, the empty-slot marker of index outputs), the maximum for unsigned
    ones, True for bool."""
    if dtype.is_floating_point or dtype.is_complex:
        return float("nan")
    if dtype == torch.bool:
        return True
    return torch.iinfo(dtype).min if dtype.is_signed else torch.iinfo(dtype).max


def empty(shape, dtype, device):
    """torch.empty(shape), or with poisoning on a tensor of `poison_value(dtype)`: for the
    buffers a kernel is meant to write in full (outputs, partial outputs, LSE, logits)."""
    if not poison_enabled():
        return torch.empty(shape, dtype=dtype, device=device)
    if dtype.is_floating_point and dtype.itemsize == 1:  # float8: no fill kernel; cast a NaN
        return torch.full(shape, float("nan"), dtype=torch.float32, device=device).to(dtype)
    return torch.full(shape, poison_value(dtype), dtype=dtype, device=device)


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def block(n: int, lo: int = 16) -> int:
    """Power-of-two block at least `lo` (tl.dot needs >= 16) covering n."""
    return max(lo, next_pow2(n))


_SM_COUNT: dict = {}


def sm_count(device) -> int:
    """Streaming multiprocessors of a CUDA device (cached); 1 for a CPU tensor's device."""
    device = torch.device(device)
    if device.type != "cuda":
        return 1
    i = device.index if device.index is not None else torch.cuda.current_device()
    if i not in _SM_COUNT:
        _SM_COUNT[i] = torch.cuda.get_device_properties(i).multi_processor_count
    return _SM_COUNT[i]


INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

if HAS_TRITON:
    _INTERP = tl.constexpr(INTERPRET)

    @triton.jit
    def mma(a, b, acc, IEEE: tl.constexpr):
        """tl.dot with fp32 accumulation. IEEE: exact fp32 products (fp32 operands). Under the
        interpreter, operands go through fp32: Triton 3.6's interpreter multiplies bf16 as raw
        uint16 bits."""
        if _INTERP:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if IEEE:
            return tl.dot(a, b, acc, input_precision="ieee", out_dtype=tl.float32)
        else:
            return tl.dot(a, b, acc, out_dtype=tl.float32)
