"""Kernel tests: on a machine without a GPU they run the Triton kernels in the interpreter.

TRITON_INTERPRET must be set before triton is first imported (kernels read it at import), so
it is set here, at collection, whenever CUDA is absent. Without the `triton` package every
test in this folder skips with that reason; with it, any mismatch fails.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error of a against the reference b (NaN anywhere fails any bound)."""
    a, b = a.double(), b.double()
    if torch.isnan(a).any():
        return float("inf")
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))  # fresh inputs each run
    torch.set_num_threads(1)
    yield
