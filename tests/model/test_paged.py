"""Paged caches: the pool's accounting (references, prefix entries, eviction), and the
decoder over pages that are scattered, shared between rows and smaller than a prompt,
against a fresh recomputation of each row alone. Seeds are printed; sizes are odd."""

import random

import pytest
import torch

from envfactory.model.config import get_config
from envfactory.model.decode import BatchDecoder
from envfactory.model.paged import PagePool, PoolFull
from envfactory.model.transformer import Transformer

VOCAB = 301


def _model(seed: int, **kw) -> Transformer:
    torch.manual_seed(seed)
    cfg = get_config("tiny", vocab_size=VOCAB, max_seq_len=64, index_topk=7, attn_impl="sparse", **kw)
    return Transformer(cfg).double().eval()


def _seeded(**kw):
    """A fresh seed (printed), a model from it and a token stream from it."""
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    return _model(seed, **kw), random.Random(seed)


def _recompute(model, ids: list[int]) -> torch.Tensor:
    logits, _ = model(torch.tensor([ids]), 0, None, sparse=True)
    return logits[0, -1]


def test_pool_counts_references_and_keeps_full_pages_as_prefix_entries():
    cfg = get_config("tiny", vocab_size=VOCAB, max_seq_len=64)
    pool = PagePool(cfg, 6, page=4)
    assert pool.available == 5  # page 0 is scratch
    a = pool.alloc(3)
    assert 0 not in a and len(set(a)) == 3
    toks = list(range(10))  # two full pages and half of a third
    pool.release(a, toks)
    assert pool.available == 5  # the two entries are evictable, the half page is free
    # a prompt beginning with the same 8 tokens gets the two pages back, in order
    got = pool.match(toks[:8] + [99, 98])
    assert got == a[:2]
    assert pool.hits == 8
    assert pool.available == 3
    # one token must be left to compute: a prompt of exactly 8 tokens reuses one page
    pool.release(got)
    assert pool.match(toks[:8]) == a[:1]
    # a different first page shares nothing, even with an equal second page
    assert pool.match([7] + toks[1:10]) == []
    with pytest.raises(PoolFull):
        pool.alloc(5)
    with pytest.raises(ValueError, match="released more often"):
        pool.release([a[2]])


def test_a_page_is_found_only_after_its_own_prefix():
    """Equal tokens after different first pages are different entries: their keys differ."""
    cfg = get_config("tiny", vocab_size=VOCAB, max_seq_len=64)
    pool = PagePool(cfg, 8, page=2)
    a, b = pool.alloc(2), pool.alloc(2)
    pool.release(a, [1, 2, 5, 6])
    pool.release(b, [3, 4, 5, 6])
    assert pool.match([1, 2, 5, 6, 0]) == a
    assert pool.match([3, 4, 5, 6, 0]) == b


def test_pool_evicts_the_least_recently_used_entry_first():
    cfg = get_config("tiny", vocab_size=VOCAB, max_seq_len=64)
    pool = PagePool(cfg, 3, page=2)
    p, q = pool.alloc(1), pool.alloc(1)
    pool.release(p, [1, 2])
    pool.release(q, [3, 4])
    pool.release(pool.match([1, 2, 5]))  # touch the first entry
    new = pool.alloc(1)
    assert new == q  # the untouched entry went
    assert pool.match([3, 4, 5]) == [] and pool.match([1, 2, 5]) == p


@pytest.mark.parametrize("fp8", [False, True])
def test_scattered_small_pages_decode_as_the_model_does(fp8):
    model, rng = _seeded(index_fp8=fp8)
    pool = PagePool(model.cfg, 40, page=3, dtype=torch.float64)
    order = pool.alloc(39)
    rng.shuffle(order)  # rows get pages in no particular order
    dec = BatchDecoder(model, 3, 30, pool=pool)
    assert dec.max_pages == 10
    for b in range(3):
        dec.assign(b, order[b * 10:(b + 1) * 10])
    prompts = [[rng.randrange(VOCAB) for _ in range(n)] for n in (11, 4, 17)]
    with torch.no_grad():
        first = dec.prefill(prompts)
        for b, p in enumerate(prompts):
            torch.testing.assert_close(first[b], _recompute(model, p), rtol=1e-5, atol=1e-5)
        for _ in range(7):
            nxt = [rng.randrange(VOCAB) for _ in prompts]
            got = dec.step(torch.tensor(nxt), torch.tensor([len(p) for p in prompts]))
            for b, p in enumerate(prompts):
                p.append(nxt[b])
                torch.testing.assert_close(got[b], _recompute(model, p), rtol=1e-5, atol=1e-5,
                                           msg=f"row {b} at position {len(p) - 1}")


def test_a_row_resumes_after_shared_prefix_pages():
    """Row 0 runs a prompt and releases it; row 1 starts with the same tokens, gets the
    cached pages, prefills only the rest, and its logits equal a full recomputation."""
    model, rng = _seeded()
    pool = PagePool(model.cfg, 24, page=4, dtype=torch.float64)
    dec = BatchDecoder(model, 2, 40, pool=pool)
    first = [rng.randrange(VOCAB) for _ in range(14)]
    pages = pool.alloc(pool.pages_for(14))
    dec.assign(0, pages)
    with torch.no_grad():
        dec.prefill_row(0, first)
        pool.release(pages, first)
        dec.assign(0, [])  # row 0 is done: its steps must not write into the shared pages
        second = first[:13] + [rng.randrange(VOCAB) for _ in range(6)]
        shared = pool.match(second)
        assert shared == pages[:3]  # 12 tokens in three full pages
        dec.assign(1, shared + pool.alloc(pool.pages_for(len(second) + 4) - len(shared)))
        got = dec.prefill_row(1, second, start=len(shared) * pool.page)
        torch.testing.assert_close(got, _recompute(model, second), rtol=1e-5, atol=1e-5)
        seq = list(second)
        for _ in range(4):  # decode on: positions cross into the row's own pages
            nxt = rng.randrange(VOCAB)
            out = dec.step(torch.tensor([0, nxt]), torch.tensor([0, len(seq)]))
            seq.append(nxt)
            torch.testing.assert_close(out[1], _recompute(model, seq), rtol=1e-5, atol=1e-5)


def test_a_row_on_the_scratch_page_leaves_other_rows_alone():
    model, rng = _seeded()
    pool = PagePool(model.cfg, 12, page=5, dtype=torch.float64)
    dec = BatchDecoder(model, 2, 25, pool=pool)
    dec.assign(0, pool.alloc(5))  # row 1 has no sequence: all its pages are page 0
    p = [rng.randrange(VOCAB) for _ in range(9)]
    with torch.no_grad():
        dec.prefill_row(0, p)
        for _ in range(3):
            nxt = rng.randrange(VOCAB)
            out = dec.step(torch.tensor([nxt, rng.randrange(VOCAB)]), torch.tensor([len(p), rng.randrange(20)]))
            p.append(nxt)
            torch.testing.assert_close(out[0], _recompute(model, p), rtol=1e-5, atol=1e-5)
