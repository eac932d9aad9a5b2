"""Constrained decoding: under random logits, every completion is in the grammar."""

import json
import random

import jsonschema
import pytest
import torch

from envfactory.model.constrain import Constraint, ConstraintError, bounded, completion_lark, mask_logits
from envfactory.model.data import corpus_files, read_texts
from envfactory.model.tokenizer import train_bpe

DECISION = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["budget", "rating", "distinct"]},
        "max_total": {"type": "integer", "minimum": 50, "maximum": 5000},
        "why": {"type": "string", "maxLength": 40},
        "cities": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "strict": {"type": "boolean"},
    },
    "required": ["kind", "max_total", "why", "cities"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "hotels_in", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 16},
                                         "max_price": {"type": "integer", "minimum": 0, "maximum": 999}},
        "required": ["city"]}}},
    {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}},
]


@pytest.fixture(scope="module")
def tok():
    return train_bpe(read_texts(corpus_files("stdlib"), 400_000), 600)


def _run(tok, c: Constraint, seed: int, limit: int = 2000) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    out = []
    while not c.done and len(out) < limit:
        logits = torch.randn(1, tok.vocab_size, generator=g) * 3  # random "weights", peaky
        mask_logits(logits, [c])
        t = int(torch.multinomial(torch.softmax(logits, -1), 1))
        c.advance(t)
        out.append(t)
    return out


@pytest.mark.parametrize("seed", [random.Random(7).randrange(10**6) + i for i in range(12)])
def test_random_logits_give_schema_valid_json(tok, seed):
    c = Constraint.json(tok, DECISION)
    ids = _run(tok, c, seed)
    assert c.done, f"seed {seed}: not finished in {len(ids)} tokens"
    # the matcher stops after the closing brace (nothing can follow) or at an EOS
    value = json.loads(tok.decode(ids[:-1] if ids[-1] == tok.eos_id else ids))
    jsonschema.validate(value, DECISION)  # bounds included: llguidance enforces them


def test_unbounded_strings_and_arrays_get_a_bound():
    s = bounded({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "array", "items": {
        "type": "string", "enum": ["x"]}}, "c": {"type": "string", "maxLength": 3}}})
    assert s["properties"]["a"]["maxLength"] == 120 and s["properties"]["b"]["maxItems"] == 16
    assert "maxLength" not in s["properties"]["b"]["items"] and s["properties"]["c"]["maxLength"] == 3


@pytest.mark.parametrize("seed", range(8))
def test_required_tool_calls_name_offered_tools_with_typed_arguments(tok, seed):
    from envfactory.model.chat_format import parse_completion

    c = Constraint.tool_calls(tok, TOOLS, require=True)
    ids = _run(tok, c, seed)
    assert c.done, f"seed {seed}: not finished in {len(ids)} tokens"
    parsed = parse_completion(tok.decode(ids))
    assert parsed.tool_calls, parsed
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for call in parsed.tool_calls:
        args = json.loads(call["function"]["arguments"])
        jsonschema.validate(args, by_name[call["function"]["name"]])


def test_the_grammar_names_special_tokens_by_id(tok):
    lark = completion_lark(tok, tools=TOOLS)
    dsml = tok.tok.token_to_id("｜DSML｜")
    assert f"<[{dsml}]>" in lark and "｜DSML｜" not in lark.replace("[^<｜]", "").replace("[^｜]", "")
    # the DSML text spelled in bytes is not the token: the grammar refuses it
    c = Constraint.tool_calls(tok, TOOLS, require=True)
    for t in tok.encode("\n\n<"):
        c.advance(t)
    spelled = [i for i in tok.tok.encode("｜", add_special_tokens=False).ids]
    with pytest.raises(ConstraintError, match="refused"):
        c.advance(spelled[0])


def test_bad_tools_and_refused_tokens_raise_one_clear_error(tok):
    with pytest.raises(ConstraintError, match="name"):
        Constraint.tool_calls(tok, [{"type": "function", "function": {"name": 'a"b'}}])
    with pytest.raises(ConstraintError, match="no tools"):
        Constraint.tool_calls(tok, [])
    c = Constraint.json(tok, DECISION)
    with pytest.raises(ConstraintError, match="refused"):
        c.advance(tok.encode("x")[0])  # JSON starts with '{'


@pytest.mark.parametrize("seed", range(4))
def test_thinking_mode_reasons_then_closes_the_block_then_answers(tok, seed):
    c = Constraint.completion(tok, schema={"type": "object", "properties": {"n": {"type": "integer"}},
                                           "required": ["n"], "additionalProperties": False},
                              thinking=True, max_reasoning=60)
    ids = _run(tok, c, seed)
    think_end = tok.tok.token_to_id("</think>")
    assert c.done and ids.count(think_end) == 1
    reasoning, answer = tok.decode(ids[: ids.index(think_end)]), ids[ids.index(think_end) + 1:]
    assert len(reasoning) <= 60 and "｜" not in reasoning
    assert isinstance(json.loads(tok.decode([t for t in answer if t != tok.eos_id]))["n"], int)


def test_plain_content_never_holds_a_special_token(tok):
    c = Constraint.completion(tok)
    specials = {tok.tok.token_to_id(s) for s in ("<｜User｜>", "<｜Assistant｜>", "<think>", "</think>", "｜DSML｜")}
    allowed = c.allowed()
    assert not any(allowed[s] for s in specials) and allowed[tok.eos_id] and allowed.sum() > tok.vocab_size // 2
