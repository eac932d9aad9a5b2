"""The Gluon sparse MLA forwards (Hopper, V3.2 layout): the lockstep kernel and the
warp-specialised one.

On any machine: each kernel compiles for sm_90 with Triton's own ptxas, fits shared memory,
spills nothing, keeps its wgmma asynchronous (ptxas serialises them all when a wgmma stays
in flight over a loop's back edge; the report reads ptxas's notes) and issues each score
k-step once (lockstep: 36 m64n32k16, 512 / 16 latent + 64 / 16 RoPE; the Triton kernel's
flash-attention warp layout duplicates them in both warpgroups, 72; warp-specialised: 36
m64n64k16 per consumer, one block each). On an sm_90 GPU (`gpu` marker): the result
against the gather reference at 128 heads, with partial blocks, empty slots and rows that
see fewer than K keys, and split-K decode."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton.experimental.gluon", reason="needs Triton with Gluon")

from envfactory.kernels.sparse_attn import (sparse_mla_decode, sparse_mla_fwd,  # noqa: E402
                                            sparse_mla_ref)
from envfactory.kernels.topk import topk_ref  # noqa: E402
from tests.kernels.conftest import rel  # noqa: E402

H100_SMEM = 232_448  # bytes of shared memory one block may use on sm_90


def _compile_report(kernel, pv_inflight=False, early_free=False, stagger=False):
    # the interpreter (set for the CPU kernel tests) would replace the kernel object
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import json; from envfactory.kernels.sparse_attn.gluon_fwd import compile_report; "
            f"print(json.dumps(compile_report({kernel!r}, {pv_inflight!r}, {early_free!r}, "
            f"{stagger!r})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def report():
    return _compile_report("lockstep")


@pytest.fixture(scope="module")
def ws_report():
    return _compile_report("ws")


def test_compiles_for_hopper_within_shared_memory_without_spills(report):
    assert 200_000 < report["shared"] <= H100_SMEM  # two row buffers, query, P exchange
    assert report["stack"] == 0
    assert report["regs"] <= 255


def test_each_score_step_is_issued_once_and_pv_split_by_warpgroup(report):
    # scores: [64 heads, 64 keys] over 512 + 64 in k-steps of 16, 32 keys a warpgroup
    assert report["wgmma"].get("m64n32k16") == (512 + 64) // 16
    # P.V: [64, 512] over 64 keys, 256 columns a warpgroup
    assert report["wgmma"].get("m64n256k16") == 64 // 16
    assert set(report["wgmma"]) == {"m64n32k16", "m64n256k16"}
    # a gather of 64 rows x (1024 + 128) bytes in 16-byte copies over 256 threads, at two
    # sites (the first block before the loop, the next one inside it)
    assert report["cp_async"] == 2 * (64 * (1024 + 128) // 16 // 256)


def test_ptxas_keeps_the_wgmma_asynchronous(report):
    """A P.V left in flight over the loop's back edge (the schedule first measured) makes
    ptxas put a wait after every wgmma; the default schedule does not, and the report sees
    the difference."""
    assert report["serialized"] is False
    assert _compile_report("lockstep", True)["serialized"] is True


@pytest.mark.parametrize("stagger", [False, True])
def test_unmeasured_variants_compile_without_spills_or_serialisation(stagger):
    r = _compile_report("ws", False, True, stagger)
    assert r["stack"] == 0 and r["serialized"] is False and r["wgmma"]["m64n64k16"] == 72


def test_warp_specialised_kernel_compiles_without_spills_or_serialisation(ws_report):
    assert 200_000 < ws_report["shared"] <= H100_SMEM  # query, two buffers, barriers
    assert ws_report["stack"] == 0
    assert ws_report["serialized"] is False
    # two consumers: each its own block's [64 heads, 64 keys] scores over 512 + 64, and
    # 256 output columns over both blocks (its own P from registers, the other's from
    # shared memory)
    assert ws_report["wgmma"] == {"m64n64k16": 2 * (512 + 64) // 16, "m64n256k16": 2 * 2 * 64 // 16}
    # query by the first warpgroup (36 a thread), then four half-buffer fills by the producer:
    # 64 rows x 512 bytes in 16-byte copies over 128 threads, two with the RoPE rows
    assert ws_report["cp_async"] == 36 + 4 * (64 * 512 // 16 // 128) + 2 * (64 * 128 // 16 // 128)
    from envfactory.kernels.sparse_attn import gluon_ws
    assert {gluon_ws.CONSUMER_REGS, gluon_ws.PRODUCER_REGS} <= set(ws_report["setmaxnreg"])
    assert 2 * gluon_ws.CONSUMER_REGS + gluon_ws.PRODUCER_REGS <= 512  # 64K registers / 128


hopper = pytest.mark.skipif(not (torch.cuda.is_available()
                                 and torch.cuda.get_device_capability()[0] == 9),
                            reason="the Gluon kernel runs on sm_90 only")


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("impl", ["gluon", "gluon_ws", "gluon_ws_early", "gluon_ws_stagger",
                                  "gluon_inflight"])
@pytest.mark.parametrize("B,S,T,K", [(2, 77, 300, 100), (1, 64, 4133, 2048)])
def test_matches_the_reference_at_128_heads(B, S, T, K, impl, kernel_seed):
    g = torch.Generator(device="cuda").manual_seed(kernel_seed)
    H, R, P = 128, 512, 64
    t = lambda *shape: (torch.randn(*shape, device="cuda", generator=g) * 0.3).to(torch.bfloat16)  # noqa: E731
    ql, qp, kv, pe = t(B, S, H, R), t(B, S, H, P), t(B, T, R), t(B, T, P)
    # causal rows ending at T: the first rows of the small case see fewer than K keys
    idx = topk_ref(torch.randn(B, S, T, device="cuda", generator=g), K, T - S).int()
    scale = (R + P) ** -0.5
    out, lse = sparse_mla_fwd(ql, qp, kv, pe, idx, scale, impl=impl)
    ref, ref_lse = sparse_mla_ref(ql, qp, kv, pe, idx, scale)
    assert not out.isnan().any()
    assert rel(out, ref) < 1e-2
    assert rel(lse, ref_lse) < 1e-3
    tri, tri_lse = sparse_mla_fwd(ql, qp, kv, pe, idx, scale, impl="triton")
    assert rel(out, tri) < 1e-2 and rel(lse, tri_lse) < 1e-3
    if impl == "gluon_ws":  # the default ("auto") takes the warp-specialised kernel here
        auto, auto_lse = sparse_mla_fwd(ql, qp, kv, pe, idx, scale)
        assert torch.equal(auto, out) and torch.equal(auto_lse, lse)


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("impl", ["gluon", "gluon_ws", "gluon_ws_early", "gluon_ws_stagger"])
@pytest.mark.parametrize("n_split", [1, 3, None])
def test_split_decode_matches_the_reference(n_split, impl, kernel_seed):
    """Decode: 5 sequences, 2 new tokens each, K = 300 slots split over programs (3 splits:
    128 + 128 + 44, the last one partial); the fp32 partials merged by the combine kernel."""
    g = torch.Generator(device="cuda").manual_seed(kernel_seed)
    B, Sq, T, H, R, P, K = 5, 2, 1000, 128, 512, 64, 300
    t = lambda *shape: (torch.randn(*shape, device="cuda", generator=g) * 0.3).to(torch.bfloat16)  # noqa: E731
    ql, qp, kv, pe = t(B, Sq, H, R), t(B, Sq, H, P), t(B, T, R), t(B, T, P)
    idx = topk_ref(torch.randn(B, Sq, T, device="cuda", generator=g), K, T - Sq).int()
    out, lse = sparse_mla_decode(ql, qp, kv, pe, idx, 0.05, n_split=n_split, impl=impl)
    ref, ref_lse = sparse_mla_ref(ql, qp, kv, pe, idx, 0.05)
    assert rel(out, ref) < 1e-2 and rel(lse, ref_lse) < 1e-3


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("impl", ["gluon", "gluon_ws", "gluon_ws_stagger"])
def test_a_row_with_no_keys_gives_zero_and_minus_infinity(impl, kernel_seed):
    g = torch.Generator(device="cuda").manual_seed(kernel_seed)
    t = lambda *shape: torch.randn(*shape, device="cuda", generator=g).to(torch.bfloat16)  # noqa: E731
    ql, qp, kv, pe = t(1, 3, 64, 512), t(1, 3, 64, 64), t(1, 50, 512), t(1, 50, 64)
    idx = torch.randint(0, 50, (1, 3, 70), device="cuda", generator=g, dtype=torch.int32)
    idx[0, 1] = -1
    out, lse = sparse_mla_fwd(ql, qp, kv, pe, idx, 0.05, impl=impl)
    assert torch.all(out[0, 1] == 0) and torch.all(lse[0, 1] == float("-inf"))
    ref, ref_lse = sparse_mla_ref(ql, qp, kv, pe, idx, 0.05)
    assert rel(out[0, ::2], ref[0, ::2]) < 1e-2


def test_refuses_what_it_does_not_take():
    bf = torch.bfloat16
    ql, qp = torch.zeros(1, 2, 64, 512, dtype=bf), torch.zeros(1, 2, 64, 64, dtype=bf)
    kv, pe = torch.zeros(1, 8, 512, dtype=bf), torch.zeros(1, 8, 64, dtype=bf)
    idx = torch.zeros(1, 2, 4, dtype=torch.int32)
    with pytest.raises(ValueError, match="sparse_mla_fwd_gluon: .*sm_90"):
        sparse_mla_fwd(ql, qp, kv, pe, idx, 0.1, impl="gluon")  # CPU tensors
    with pytest.raises(ValueError, match="bf16 latent"):
        sparse_mla_fwd(ql, qp, kv, pe, idx, 0.1, impl="gluon", lse_only=True)
    with pytest.raises(ValueError, match="impl must be"):
        sparse_mla_fwd(ql, qp, kv, pe, idx, 0.1, impl="cuda")
    with pytest.raises(ValueError, match="contiguous"):
        sparse_mla_decode(ql, qp, kv[0], pe[0], idx, 0.1, block_table=torch.zeros(1, 1, dtype=torch.int32),
                          impl="gluon")


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="CPU tensors run Triton kernels only under the interpreter")
def test_auto_takes_the_triton_kernel_off_hopper():
    """On the CPU (interpreter) the default runs this module's kernel: same numbers as
    impl="triton"."""
    t = lambda *shape: torch.randn(*shape) * 0.3  # noqa: E731
    ql, qp, kv, pe = t(1, 6, 3, 16), t(1, 6, 3, 8), t(1, 6, 16), t(1, 6, 8)
    idx = topk_ref(torch.randn(1, 6, 6), 4, 0).int()
    a = sparse_mla_fwd(ql, qp, kv, pe, idx, 0.3)
    b = sparse_mla_fwd(ql, qp, kv, pe, idx, 0.3, impl="triton")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
