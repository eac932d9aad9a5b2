"""Fused causal indexer logits (bf16/fp32 and FP8) against the einsum reference."""

import pytest
import torch

pytest.importorskip("triton", reason="kernels need the triton package")

from envfactory.kernels.indexer_logits import (indexer_logits, indexer_logits_fp8,  # noqa: E402
                                    indexer_logits_fp8_ref, indexer_logits_ref)
from tests.kernels.conftest import DEVICE, rel  # noqa: E402


def _check(out, ref, tol):
    fin = ref.isfinite()
    assert torch.equal(out.isfinite(), fin), "causal -inf pattern differs (or unwritten NaN)"
    assert rel(out[fin], ref[fin]) < tol


@pytest.mark.parametrize("B,S,T0,H,D", [(1, 63, 0, 5, 24), (2, 130, 7, 3, 40), (3, 2, 61, 5, 24)],
                         ids=["prefill63", "prefill130", "decode2of63"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("key_tiles", [1, 2])
def test_indexer_logits_matches_reference(B, S, T0, H, D, dtype, key_tiles):
    """Tiled logits against the reference; key_tiles=2 puts two key tiles in a program (on
    the CPU tiles of up to 64 keys: at 137 keys a program's second tile is partial, at 63
    it lies wholly past the keys)."""
    T = T0 + S  # T0 cached keys before the S new queries (start_pos = T0)
    q = torch.randn(B, S, H, D, device=DEVICE).to(dtype)
    k = torch.randn(B, T, D, device=DEVICE).to(dtype)
    w = torch.randn(B, S, H, device=DEVICE)
    out = torch.full((B, S, T), float("nan"), device=DEVICE)
    indexer_logits(q, k, w, start_pos=T0, out=out, key_tiles=key_tiles,
                   block_m=None if S <= 4 else 16)
    _check(out, indexer_logits_ref(q, k, w, T0), 1e-5 if dtype == torch.float32 else 1e-3)


@pytest.mark.parametrize("S,key_tiles", [(63, 1), (1, 1), (63, 2)])
def test_indexer_logits_fp8_matches_reference(S, key_tiles):
    B, H, D = 1, 5, 32
    q8 = torch.randn(B, S, H, D, device=DEVICE).to(torch.float8_e4m3fn)
    k8 = (3 * torch.randn(B, S, D, device=DEVICE)).to(torch.float8_e4m3fn)
    q_s = torch.rand(B, S, H, device=DEVICE) + 0.1
    k_s = torch.rand(B, S, device=DEVICE) + 0.1
    w = torch.randn(B, S, H, device=DEVICE)
    out = torch.full((B, S, S), float("nan"), device=DEVICE)
    indexer_logits_fp8(q8, q_s, k8, k_s, w, out=out, key_tiles=key_tiles)
    # The interpreter sums the e4m3 products in fp32. Hopper's FP8 tensor-core dot keeps
    # fewer accumulator bits (the reason the reference fp8_gemm "promotes" partial sums,
    # dsa.md §1.4): on the H200 this test read 4.3e-5 and 4.7e-5 against a 1e-5 bound.
    _check(out, indexer_logits_fp8_ref(q8, q_s, k8, k_s, w), 3e-4 if q8.is_cuda else 1e-5)


@pytest.mark.parametrize("key_tiles", [1, 2])
def test_upper_tiles_left_unwritten_on_request(key_tiles):
    B, S, H, D = 1, 130, 2, 16
    q, k = torch.randn(B, S, H, D, device=DEVICE), torch.randn(B, S, D, device=DEVICE)
    w = torch.randn(B, S, H, device=DEVICE)
    out = torch.full((B, S, S), float("nan"), device=DEVICE)
    indexer_logits(q, k, w, out=out, write_upper=False, block_m=16, block_n=16,
                   key_tiles=key_tiles)
    ref = indexer_logits_ref(q, k, w)
    lower = torch.ones(S, S, dtype=torch.bool, device=DEVICE).tril()
    assert not out[0][lower].isnan().any()
    assert rel(out[0][lower], ref[0][lower]) < 1e-5
    assert out[0, :16, 32:].isnan().all()  # a whole tile above the diagonal: skipped
    if key_tiles == 2:  # keys 16-31 share a program with keys 0-15: written (-inf)
        assert (out[0, :16, 16:32] == float("-inf")).all()
    with pytest.raises(ValueError, match="key_tiles"):
        indexer_logits(q, k, w, key_tiles=3, block_m=16)


def _group_max_ref(ref, G, n_groups, T0, write_upper):
    """The max of every G consecutive keys of the reference logits [B, S, T], and which
    groups a kernel writes: those holding a visible key (all of them with write_upper)."""
    B, S, T = ref.shape
    ref_m = torch.nn.functional.pad(ref, (0, n_groups * G - T), value=float("-inf"))
    ref_m = ref_m.view(B, S, -1, G).amax(-1)
    seen = torch.arange(n_groups, device=DEVICE) * G <= (T0 + torch.arange(S, device=DEVICE))[:, None]
    return ref_m, torch.ones_like(seen) if write_upper else seen


@pytest.mark.parametrize("write_upper", [True, False])
@pytest.mark.parametrize("key_tiles", [1, 2])
def test_indexer_writes_group_maxima(write_upper, key_tiles):
    """The max over every G consecutive keys of each row, visible keys only (what the
    "bound" top-k starts from), next to the logits themselves."""
    B, S, T0, H, D, G = 2, 70, 9, 3, 16, 8
    T = T0 + S
    q, k = torch.randn(B, S, H, D, device=DEVICE), torch.randn(B, T, D, device=DEVICE)
    w = torch.randn(B, S, H, device=DEVICE)
    out = torch.full((B, S, T), float("nan"), device=DEVICE)
    m = torch.full((B, S, -(-T // G)), float("nan"), device=DEVICE)
    indexer_logits(q, k, w, start_pos=T0, out=out, maxima=m, group=G, write_upper=write_upper,
                   block_m=16, block_n=32, key_tiles=key_tiles)
    ref = indexer_logits_ref(q, k, w, T0)
    ref_m, seen = _group_max_ref(ref, G, m.shape[-1], T0, write_upper)
    _check(m[:, seen], ref_m[:, seen], 1e-5)
    with pytest.raises(ValueError, match="maxima"):
        indexer_logits(q, k, w, start_pos=T0, maxima=m, group=3)


@pytest.mark.parametrize("blocks", [1, 3])
@pytest.mark.parametrize("write_upper", [True, False])
def test_decode_indexer_writes_group_maxima(blocks, write_upper):
    """The decode kernel (S <= 4 rows, heads as the product's rows) writes the same group
    maxima as the tiled kernel: T = 203 keys end in a partial group of 3, 32-key blocks
    hold 4 groups of 8, and with 3 blocks per program the last program has blocks above
    every row's diagonal."""
    B, S, H, D, G, T = 2, 3, 5, 16, 8, 203
    T0 = T - S - 60  # the last 60 keys are above every row
    q, k = torch.randn(B, S, H, D, device=DEVICE), torch.randn(B, T, D, device=DEVICE)
    w = torch.randn(B, S, H, device=DEVICE)
    out = torch.full((B, S, T), float("nan"), device=DEVICE)
    m = torch.full((B, S, -(-T // G)), float("nan"), device=DEVICE)
    indexer_logits(q, k, w, start_pos=T0, out=out, maxima=m, group=G, write_upper=write_upper,
                   block_n=32, decode_blocks=blocks)
    ref = indexer_logits_ref(q, k, w, T0)
    ref_m, seen = _group_max_ref(ref, G, m.shape[-1], T0, write_upper)
    _check(m[:, seen], ref_m[:, seen], 1e-5)
    lower = torch.arange(T, device=DEVICE) <= (T0 + torch.arange(S, device=DEVICE))[:, None]
    _check(out[:, lower], ref[:, lower], 1e-5)


@pytest.mark.parametrize("blocks", [1, 3, 4])
@pytest.mark.parametrize("write_upper", [True, False])
def test_decode_programs_over_several_key_blocks(blocks, write_upper):
    """The decode path with each program looping over `blocks` key blocks (query loaded once):
    T not a multiple of blocks x BLOCK_N, rows whose diagonal ends inside a program's range,
    and programs wholly above it."""
    B, S, H, D, T = 2, 3, 5, 24, 300
    T0 = 170  # rows see 171..173 keys: the last programs hold none
    q = torch.randn(B, S, H, D, device=DEVICE)
    k = torch.randn(B, T, D, device=DEVICE)
    w = torch.randn(B, S, H, device=DEVICE)
    out = torch.full((B, S, T), float("nan"), device=DEVICE)
    indexer_logits(q, k, w, start_pos=T0, out=out, write_upper=write_upper, block_n=32, decode_blocks=blocks)
    ref = indexer_logits_ref(q, k, w, T0)
    vis = torch.arange(T, device=DEVICE)[None, :] <= T0 + torch.arange(S, device=DEVICE)[:, None]
    vis = vis.expand(B, S, T)
    assert not out[vis].isnan().any()
    assert rel(out[vis], ref[vis]) < 1e-5
    if write_upper:
        assert torch.equal(out.isfinite(), ref.isfinite())
    else:  # blocks wholly above every row's diagonal stay unwritten
        assert out[..., 192:].isnan().all()
