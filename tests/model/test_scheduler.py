"""Continuous batching: requests submitted from many threads, more of them than slots,
get exactly the completions the single-sequence engine gives one at a time; seeded sampling
does not depend on what runs beside a request; a shared prefix is prefilled once; a tight
pool makes requests wait rather than fail; errors and cancellations stay with their request."""

import random
import threading

import pytest
import torch

from envfactory.model.config import get_config
from envfactory.model.engine import Engine, SamplingParams
from envfactory.model.paged import PoolFull
from envfactory.model.scheduler import Scheduler
from envfactory.model.transformer import Transformer
from tests.model.test_engine import tok  # noqa: F401  (the module's tokenizer fixture)

TEXTS = ["def add(a, b):\n    return", "import os\n", "class Stack:\n    def push(self, x):\n        self.", "x",
         "for i in range(10):\n", "with open(path) as f:\n    data = f.", "try:\n    import json\nexcept"]


def _model(tok, seed: int = 3, max_seq_len: int = 160):
    torch.manual_seed(seed)
    return Transformer(get_config("tiny", vocab_size=tok.vocab_size, attn_impl="sparse",
                                  max_seq_len=max_seq_len, index_topk=24)).double().eval()


def _run_threads(fn, items):
    out = [None] * len(items)

    def work(i):
        out[i] = fn(items[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_concurrent_requests_equal_the_engine_one_at_a_time(tok):  # noqa: F811
    model = _model(tok)
    prompts = [tok.encode(t, bos=True) for t in TEXTS]
    params = SamplingParams(max_tokens=20, temperature=0, stop=("\n\n",))
    want = [Engine(model, tok).generate(p, params) for p in prompts]
    with Scheduler(model, tok, slots=3, page=8) as sch:  # 7 requests through 3 slots
        got = _run_threads(lambda p: sch.generate(p, params), prompts)
        assert sch.steps > 0 and sch.busy_rows / sch.steps > 1.5  # rows really ran together
    for g, w in zip(got, want):
        assert (g.ids, g.text, g.finish_reason) == (w.ids, w.text, w.finish_reason)


def test_a_seeded_request_samples_the_same_beside_others(tok):  # noqa: F811
    model = _model(tok)
    p = tok.encode(TEXTS[0], bos=True)
    params = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=11)
    with Scheduler(model, tok, slots=4, page=8) as sch:
        alone = sch.generate(p, params)
        others = [sch.submit(tok.encode(t, bos=True), SamplingParams(max_tokens=30, temperature=1.0))
                  for t in TEXTS[1:4]]
        beside = sch.generate(p, params)
        for f in others:
            f.result()
    assert beside.ids == alone.ids


def test_a_shared_prefix_is_prefilled_once(tok):  # noqa: F811
    model = _model(tok)
    system = tok.encode("You plan trips. " * 12, bos=True)
    a, b = system + tok.encode(" First."), system + tok.encode(" Second one.")
    params = SamplingParams(max_tokens=6, temperature=0)
    with Scheduler(model, tok, slots=2, page=8) as sch:
        first = sch.generate(a, params)
        second = sch.generate(b, params)
    assert first.cached_tokens == 0
    assert second.cached_tokens == (len(system) // 8) * 8 > 0
    assert second.ids == Engine(model, tok).generate(b, params).ids  # the reused keys are right


def test_a_tight_pool_makes_requests_wait_not_fail(tok):  # noqa: F811
    model = _model(tok)
    prompts = [tok.encode(t, bos=True) for t in TEXTS[:5]]
    params = SamplingParams(max_tokens=12, temperature=0)
    want = [Engine(model, tok).generate(p, params).ids for p in prompts]
    # 4 slots, but pages for about two requests at a time
    with Scheduler(model, tok, slots=4, page=8, pool_pages=9) as sch:
        got = _run_threads(lambda p: sch.generate(p, params).ids, prompts)
        with pytest.raises(PoolFull, match="never fit"):
            sch.submit(prompts[0], SamplingParams(max_tokens=150))
    assert got == want


class _Exploding:
    """A grammar that fails on its third token."""

    def __init__(self, vocab):
        self.vocab, self.n, self.done = vocab, 0, False

    def allowed(self):
        if self.n == 2:
            raise RuntimeError("grammar broke")
        return torch.ones(self.vocab, dtype=torch.bool)

    def advance(self, token):
        self.n += 1


def test_errors_and_cancellations_stay_with_their_request(tok):  # noqa: F811
    model = _model(tok)
    rng = random.Random(0)
    prompts = [tok.encode(rng.choice(TEXTS), bos=True) for _ in range(3)]
    params = SamplingParams(max_tokens=40, temperature=0)
    with Scheduler(model, tok, slots=3, page=8) as sch:
        bad = sch.submit(prompts[0], params, _Exploding(tok.vocab_size))
        gone = sch.submit(prompts[1], SamplingParams(max_tokens=140, temperature=0))
        sch.cancel(gone)
        good = sch.submit(prompts[2], params)
        with pytest.raises(RuntimeError, match="grammar broke"):
            bad.result(timeout=60)
        with pytest.raises(RuntimeError, match="cancelled"):
            gone.result(timeout=60)
        assert good.result(timeout=60).ids == Engine(model, tok).generate(prompts[2], params).ids
        assert sch.pool.available == sch.pool.n_pages - 1  # every page came back
        assert not sch.dec.table.any()  # and no idle slot still writes into one
        assert sch.generate(prompts[0], params).ids  # and it still serves


def test_the_next_turn_reads_exactly_the_keys_of_the_last(tok):  # noqa: F811
    """An agent's turn 2 is turn 1's prompt and reply plus more. Turn 1 ends on a page
    boundary (its last token, never fed, would be the page's last row), and turn 2 runs
    while another request keeps stepping, so stale or foreign writes into the shared pages
    would change turn 2's tokens."""
    model = _model(tok)
    prompt = tok.encode(TEXTS[2], bos=True)
    n = 8 * (len(prompt) // 8 + 3) - len(prompt)  # prompt + reply fill whole pages
    params = SamplingParams(max_tokens=n, temperature=0)
    with Scheduler(model, tok, slots=2, page=8) as sch:
        busy = sch.submit(tok.encode(TEXTS[4], bos=True), SamplingParams(max_tokens=120, temperature=0))
        first = sch.generate(prompt, params)
        assert first.finish_reason == "length" and len(first.ids) == n
        turn2 = prompt + first.ids + tok.encode(" more")
        second = sch.generate(turn2, SamplingParams(max_tokens=10, temperature=0))
        assert not busy.done()  # the other request stepped all along
        busy.result()
    assert second.cached_tokens == len(prompt) + n - 8  # the last full page held an unfed token
    assert second.ids == Engine(model, tok).generate(turn2, SamplingParams(max_tokens=10, temperature=0)).ids
