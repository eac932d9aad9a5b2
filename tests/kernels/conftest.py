"""Kernel tests: on a machine without a GPU they run the Triton kernels in the interpreter.

TRITON_INTERPRET must be set before triton is first imported (kernels read it at import), so
it is set here, at collection, whenever CUDA is absent. Without the `triton` package every
test in this folder skips with that reason; with it, any mismatch fails.

Every test draws fresh inputs from its own seed (random 32 bits, or KERNEL_TEST_SEED to
replay one). The seed is printed at setup and named in a failing test's report, so a failure
reads `kernel test seed: N (rerun with KERNEL_TEST_SEED=N)`; tests that need their own
generators take it from the `kernel_seed` fixture.

Launchers allocate their outputs through `kernels._common.empty`; here it poisons them (NaN,
or the integer dtype's minimum), so an output element a kernel fails to write shows up as a
mismatch. ENVFACTORY_KERNEL_POISON=0 turns that off.
"""

import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("ENVFACTORY_KERNEL_POISON", "1")  # read by kernels._common.empty

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SEED_ENV = "KERNEL_TEST_SEED"
_SEED_KEY = pytest.StashKey[int]()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error of a against the reference b (NaN anywhere fails any bound)."""
    a, b = a.double(), b.double()
    if torch.isnan(a).any():
        return float("inf")
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _seed_line(seed: int) -> str:
    return f"kernel test seed: {seed} (rerun with {SEED_ENV}={seed})"


@pytest.fixture(autouse=True)
def kernel_seed(request) -> int:
    """This test's seed: torch and `random` are seeded with it; a test that builds its own
    generator (random.Random, numpy) derives it from this value."""
    fixed = os.environ.get(SEED_ENV, "").strip()
    seed = int(fixed, 0) if fixed else int.from_bytes(os.urandom(4), "little")
    request.node.stash[_SEED_KEY] = seed
    request.node.user_properties.append(("kernel_test_seed", seed))  # (junit XML too)
    print(_seed_line(seed))  # shown as the failing test's "Captured stdout setup"
    torch.manual_seed(seed)
    random.seed(seed)
    torch.set_num_threads(1)
    return seed


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    seed = item.stash.get(_SEED_KEY, None)
    if seed is not None and report.failed:
        report.sections.append(("kernel test seed", _seed_line(seed)))
    return report


def pytest_terminal_summary(terminalreporter):
    """One line per failed kernel test with its seed, after the short summary."""
    lines = []
    for rep in terminalreporter.stats.get("failed", []) + terminalreporter.stats.get("error", []):
        seed = dict(getattr(rep, "user_properties", ())).get("kernel_test_seed")
        if seed is not None:
            lines.append(f"{rep.nodeid}: {_seed_line(seed)}")
    if lines:
        terminalreporter.write_sep("-", "kernel test seeds")
        for line in lines:
            terminalreporter.write_line(line)
