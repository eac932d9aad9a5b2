"""The batched decode step with the kernels' split-K sparse MLA reading the page pool
through the block table (what runs on CUDA with attn_impl="triton") against the same step's
PyTorch gather, rows on scattered pages of odd size. The page order and the tokens come from
a generator seeded with the conftest's per-test seed (KERNEL_TEST_SEED replays it)."""

import random

import pytest
import torch

pytest.importorskip("triton", reason="kernels need the triton package")

from envfactory.model.config import get_config
from envfactory.model.decode import BatchDecoder
from envfactory.model.paged import PagePool
from envfactory.model.transformer import Transformer
from tests.kernels.conftest import DEVICE, rel


def test_kernel_decode_over_pages_equals_the_gather_path(kernel_seed):
    rng = random.Random(kernel_seed)  # torch is already seeded with it
    cfg = get_config("tiny", vocab_size=97, max_seq_len=48, index_topk=9, attn_impl="triton")
    model = Transformer(cfg).to(DEVICE).eval()
    decs = []
    order = list(range(1, 31))
    rng.shuffle(order)
    for kernels in (False, True):
        pool = PagePool(cfg, 31, page=5, device=DEVICE)
        pool.alloc(30)
        dec = BatchDecoder(model, 3, 40, pool=pool, kernels=kernels)
        for b in range(3):
            dec.assign(b, order[b * 8:(b + 1) * 8])
        decs.append(dec)
    prompts = [[rng.randrange(97) for _ in range(n)] for n in (12, 3, 7)]
    with torch.no_grad():
        for dec in decs:
            dec.prefill(prompts)
        for _ in range(4):
            nxt = torch.tensor([rng.randrange(97) for _ in prompts], device=DEVICE)
            pos = torch.tensor([len(p) for p in prompts], device=DEVICE)
            ref, got = (dec.step(nxt, pos) for dec in decs)
            assert rel(got, ref) < 1e-4, f"positions {pos.tolist()}"
            for p, t in zip(prompts, nxt.tolist()):
                p.append(t)
