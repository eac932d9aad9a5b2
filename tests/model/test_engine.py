"""The serving engine: prefill + cached decode equals naive recomputation, the prefix cache
changes nothing but the work done, grammars hold under random weights, stops and sampling."""

import json

import pytest
import torch

from envfactory.model.config import get_config
from envfactory.model.constrain import Constraint
from envfactory.model.data import corpus_files, read_texts
from envfactory.model.engine import Engine, SamplingParams, filter_logits
from envfactory.model.tokenizer import train_bpe
from envfactory.model.transformer import Transformer
from tests.model.test_generate import naive_greedy


@pytest.fixture(scope="module")
def tok():
    return train_bpe(read_texts(corpus_files("stdlib"), 300_000), 512)


def _model(tok, impl="sparse", seed=0):
    torch.manual_seed(seed)
    return Transformer(get_config("tiny", vocab_size=tok.vocab_size, attn_impl=impl, max_seq_len=256)).eval()


@pytest.mark.parametrize("impl", ["dense", "sparse"])
def test_greedy_equals_naive_recomputation(tok, impl):
    model = _model(tok, impl)
    prompt = tok.encode("def add(a, b):\n    return", bos=True)
    got = Engine(model, tok).generate(prompt, SamplingParams(max_tokens=12, temperature=0))
    want = naive_greedy(model, prompt, 12, stop=(tok.eos_id,))
    assert got.ids == want and got.cached_tokens == 0


def test_the_prefix_cache_reuses_history_and_changes_no_output(tok):
    model = _model(tok)
    eng = Engine(model, tok)
    first = tok.encode("class Stack:\n    def push(self, x):", bos=True)
    a = eng.generate(first, SamplingParams(max_tokens=6, temperature=0))
    turn2 = first + a.ids[:-1] + tok.encode("\n    def pop(self):")  # the history, then new text
    b = eng.generate(turn2, SamplingParams(max_tokens=8, temperature=0))
    fresh = Engine(model, tok).generate(turn2, SamplingParams(max_tokens=8, temperature=0))
    assert b.cached_tokens == len(first) + len(a.ids[:-1])
    assert b.ids == fresh.ids and fresh.cached_tokens == 0
    # a prompt that diverges early reuses only the common part
    c = eng.generate(first[:3] + tok.encode(" other"), SamplingParams(max_tokens=4, temperature=0))
    assert c.cached_tokens == 3


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_random_weights_under_a_schema_give_valid_json(tok, seed):
    schema = {"type": "object", "properties": {"kind": {"enum": ["a", "b"]}, "n": {"type": "integer"},
                                               "why": {"type": "string", "maxLength": 20}},
              "required": ["kind", "n", "why"], "additionalProperties": False}
    eng = Engine(_model(tok, seed=seed), tok)
    out = eng.generate(tok.encode("Answer as JSON:", bos=True),
                       SamplingParams(max_tokens=120, temperature=1.0, seed=seed), Constraint.json(tok, schema))
    assert out.finish_reason == "stop", out.text
    v = json.loads(out.text)
    assert v["kind"] in ("a", "b") and isinstance(v["n"], int) and len(v["why"]) <= 20


def test_stop_strings_cut_the_text_and_streaming_never_shows_them(tok):
    eng = Engine(_model(tok), tok)
    prompt = tok.encode("x = 1\n", bos=True)
    free = eng.generate(prompt, SamplingParams(max_tokens=30, temperature=0))
    stop = free.text[5:8]
    assert len(stop) == 3 and free.text.find(stop) == 5
    pieces = []
    cut = eng.generate(prompt, SamplingParams(max_tokens=30, temperature=0, stop=(stop,)), on_text=pieces.append)
    assert cut.text == free.text[:5] and cut.finish_reason == "stop"
    assert "".join(pieces) == cut.text and stop not in "".join(pieces)


def test_a_seed_makes_sampling_repeatable(tok):
    eng = Engine(_model(tok), tok)
    p = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=5)
    prompt = tok.encode("import", bos=True)
    assert eng.generate(prompt, p).ids == eng.generate(prompt, p).ids
    assert eng.generate(prompt, p).ids != eng.generate(prompt, SamplingParams(max_tokens=16, temperature=1.0, seed=6)).ids


def test_filters_top_k_and_min_p():
    logits = torch.log(torch.tensor([0.4, 0.3, 0.2, 0.06, 0.04]))
    p = filter_logits(logits, SamplingParams(temperature=1.0, top_k=2))
    assert torch.allclose(p, torch.tensor([4 / 7, 3 / 7, 0, 0, 0]))
    p = filter_logits(logits, SamplingParams(temperature=1.0, min_p=0.45))  # keep p >= 0.18
    assert torch.allclose(p, torch.tensor([4 / 9, 3 / 9, 2 / 9, 0, 0]))
    p = filter_logits(logits, SamplingParams(temperature=1.0, top_p=0.65))
    assert torch.allclose(p, torch.tensor([4 / 7, 3 / 7, 0, 0, 0]))


def test_bad_requests_raise_one_clear_error(tok):
    eng = Engine(_model(tok), tok)
    with pytest.raises(ValueError, match="empty"):
        eng.generate([])
    with pytest.raises(ValueError, match="window"):
        eng.generate([1] * 300)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
