"""`model.serve` on loopback answers the same client as any OpenAI-compatible server
(`factory/agents/chat.py`): completions, structured decisions, tool calls, streaming,
reasoning, the prefix cache, and clear 400s, both on the single-sequence engine and on the
continuous-batching scheduler; with random weights, every structured reply
parses because decoding runs under a grammar."""

import json

import httpx
import jsonschema
import pytest
import torch

from envfactory.factory.agents.chat import ChatClient, ChatConfig, Conversation, decide, run_tools
from envfactory.model.config import get_config
from envfactory.model.data import corpus_files, read_texts
from envfactory.model.engine import Engine
from envfactory.model.scheduler import Scheduler
from envfactory.model.serve import ModelServer, load_pretrained
from envfactory.model.tokenizer import train_bpe
from envfactory.model.transformer import Transformer

TOOLS = [{"type": "function", "function": {"name": "hotels_in", "description": "Hotels of a city.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                     "max_price": {"type": "integer", "minimum": 1, "maximum": 500}},
    "required": ["city", "max_price"]}}}]


@pytest.fixture(scope="module", params=["engine", "scheduler"])
def served(request, tmp_path_factory):
    from envfactory.model.checkpoint import save_checkpoint

    tok = train_bpe(read_texts(corpus_files("stdlib"), 300_000), 512)
    torch.manual_seed(3)
    model = Transformer(get_config("tiny", vocab_size=tok.vocab_size, attn_impl="sparse", max_seq_len=4096))
    ckpt = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(model, ckpt)
    tok.save(ckpt / "tokenizer.json")
    model, tok = load_pretrained(ckpt)  # what `python -m envfactory.model.serve CKPT` loads
    engine = Engine(model, tok) if request.param == "engine" else Scheduler(model, tok, slots=3, page=16)
    with ModelServer(engine, name="tiny") as srv:
        yield srv


def _client(srv, **kw) -> ChatClient:
    return ChatClient(ChatConfig(srv.base_url, max_tokens=kw.pop("max_tokens", 48), retries=0, **kw))


def test_models_and_a_plain_completion(served):
    assert httpx.get(served.base_url + "/models").json()["data"][0]["id"] == "tiny"
    r = _client(served, temperature=0.0).complete([{"role": "user", "content": "Name a city."}])
    assert isinstance(r.content, str) and r.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 48 and not r.tool_calls


def test_structured_decisions_parse_under_random_weights(served):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                               "days": {"type": "integer", "minimum": 1, "maximum": 9}},
              "required": ["city", "days"], "additionalProperties": False}
    c = _client(served, temperature=1.0, max_tokens=64)
    for _ in range(3):
        d = decide(c, Conversation().user("A trip as JSON."), schema, attempts=1)
        assert d.value is not None, d.errors  # parsed and schema-valid on the first reply
        jsonschema.validate(d.value, schema)
    assert c._json_mode == "auto"  # json_schema accepted as is (no llama.cpp fallback needed)


def test_required_tool_calls_come_back_as_openai_tool_calls(served):
    body = {"messages": [{"role": "user", "content": "Find hotels."}], "tools": TOOLS, "tool_choice": "required",
            "max_tokens": 1500, "temperature": 1.0, "seed": 7}
    r = httpx.post(served.base_url + "/chat/completions", json=body, timeout=60).json()
    choice = r["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    for call in choice["message"]["tool_calls"]:
        assert call["function"]["name"] == "hotels_in"
        jsonschema.validate(json.loads(call["function"]["arguments"]), TOOLS[0]["function"]["parameters"])


def test_the_tool_loop_runs_against_it(served):
    seen = []

    def call(name, args):
        seen.append((name, args))
        return json.dumps([{"id": "H1", "price": 80}])

    run = run_tools(_client(served, temperature=1.0, max_tokens=1500), lambda: Conversation().user("Find a hotel."),
                    TOOLS, call, max_steps=3)
    assert run.usage.requests >= 1 and all(n == "hotels_in" for n, _ in seen)


def test_streaming_gives_the_same_text_as_a_plain_reply(served):
    msgs = [{"role": "user", "content": "Say something."}]
    plain = _client(served, temperature=0.0, max_tokens=24).complete(msgs)
    streamed = _client(served, temperature=0.0, max_tokens=24, stream=True).complete(msgs)
    assert streamed.content == plain.content and streamed.usage.completion_tokens == plain.usage.completion_tokens


def test_thinking_replies_carry_reasoning_content(served):
    body = {"messages": [{"role": "user", "content": "Think first."}], "max_tokens": 2500, "temperature": 1.0,
            "seed": 1, "chat_template_kwargs": {"thinking": True},
            "response_format": {"type": "json_object", "schema": {"type": "object", "properties": {
                "n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}}}
    r = httpx.post(served.base_url + "/chat/completions", json=body, timeout=60).json()["choices"][0]
    # the grammar bounds reasoning at 2000 characters, so 2500 tokens always reach the answer
    assert r["finish_reason"] == "stop", r
    assert isinstance(r["message"]["reasoning_content"], str) and "｜" not in r["message"]["reasoning_content"]
    assert isinstance(json.loads(r["message"]["content"])["n"], int)


def test_the_next_turn_reuses_the_cached_history(served):
    msgs = [{"role": "system", "content": "You plan trips. " * 20}, {"role": "user", "content": "First."}]
    c = _client(served, temperature=0.0, max_tokens=8)
    first = c.complete(msgs)
    raw = httpx.post(served.base_url + "/chat/completions", timeout=60, json={
        "messages": msgs + [{"role": "assistant", "content": first.content}, {"role": "user", "content": "Next."}],
        "max_tokens": 8, "temperature": 0}).json()
    # the engine keeps the whole history; the scheduler keeps its full pages
    page = served.engine.pool.page if isinstance(served.engine, Scheduler) else 1
    assert raw["usage"]["prompt_tokens_details"]["cached_tokens"] >= first.usage.prompt_tokens - page


@pytest.mark.parametrize("body, why", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "xml"}}, "response_format"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": TOOLS,
      "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "nope"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "unknown role"),
    ({"messages": [{"role": "user", "content": "x " * 9000}]}, "context"),
])
def test_bad_requests_get_one_clear_400(served, body, why):
    r = httpx.post(served.base_url + "/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and why in r.json()["error"]["message"], r.text
    assert httpx.post(served.base_url + "/chat/completions", content=b"{not json", timeout=10).status_code == 400
