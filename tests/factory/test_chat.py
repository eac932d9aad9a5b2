"""The chat runtime against a real HTTP server on loopback, scripted with tool calls,
reasoning and malformed output: one transcript test per context strategy and for the
thinking rule; retries, streaming and server quirks."""

from __future__ import annotations

import json
import socket

import pytest

from envfactory.factory.agents.chat import (SUMMARY_PROMPT, ChatClient, ChatConfig, ChatError, Conversation, decide,
                                            parse_json_reply, run_tools)
from tests.factory.scripted_server import ScriptedServer, completion, stream, tool_call

TOOLS = [{"type": "function", "function": {
    "name": "search_hotels", "description": "Hotels of one city.",
    "parameters": {"type": "object", "properties": {"city_id": {"type": "string"}, "limit": {"type": "integer"}},
                   "required": ["city_id"], "additionalProperties": False}}}]


def _client(srv, **kw) -> ChatClient:
    kw.setdefault("backoff_s", 0.01)
    return ChatClient(ChatConfig(srv.base_url, model="m", **kw))


def _conv(task="Find a hotel in city 7.") -> Conversation:
    return Conversation().system("You plan trips.").user(task)


def _hotels(name, args):
    return json.dumps({"results": [{"hotel_id": f"h{args['city_id']}", "stars": 4}]})


def test_completion_reads_both_reasoning_fields_and_usage():
    with ScriptedServer([completion("a", reasoning="r1"),
                         completion("b", reasoning="r2", reasoning_key="reasoning", prompt_tokens=30)]) as srv:
        c = _client(srv, api_key="sk-test")
        one, two = c.complete([{"role": "user", "content": "hi"}]), c.complete([{"role": "user", "content": "hi"}])
    assert (one.content, one.reasoning, two.content, two.reasoning) == ("a", "r1", "b", "r2")
    assert c.usage.prompt_tokens == 40 and c.usage.completion_tokens == 10 and c.usage.requests == 2
    assert srv.requests[0]["auth"] == "Bearer sk-test" and srv.requests[0]["path"] == "/v1/chat/completions"
    assert srv.bodies()[0]["model"] == "m"


def test_streamed_reply_assembles_content_reasoning_and_tool_calls():
    chunks = [{"reasoning_content": "think "}, {"reasoning_content": "more"},
              {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "search_hotels", "arguments": '{"city'}}]},
              {"tool_calls": [{"index": 0, "function": {"arguments": '_id": "7"}'}}]},
              {"tool_calls": [{"index": 1, "id": "c2", "function": {"name": "search_hotels", "arguments": "{}"}}]},
              {"content": ""},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
              {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 7}}]
    with ScriptedServer([stream(chunks)]) as srv:
        r = _client(srv, stream=True).complete([{"role": "user", "content": "x"}], tools=TOOLS)
    assert r.reasoning == "think more" and r.finish_reason == "tool_calls"
    assert [(t.id, t.name, t.arguments) for t in r.tool_calls] == [("c1", "search_hotels", '{"city_id": "7"}'),
                                                                   ("c2", "search_hotels", "{}")]
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (12, 7)
    assert srv.bodies()[0]["stream"] is True


def test_retries_429_and_5xx_with_backoff_then_succeeds():
    steps = [{"status": 429, "json": {"error": "slow down"}, "headers": {"Retry-After": "0"}},
             {"status": 503, "json": {"error": "busy"}}, completion("ok")]
    with ScriptedServer(steps) as srv:
        c = _client(srv)
        r = c.complete([{"role": "user", "content": "x"}])
    assert r.content == "ok" and r.usage.retries == 2 and len(srv.requests) == 3


def test_a_client_error_is_not_retried_and_a_dead_server_gives_up():
    with ScriptedServer([{"status": 401, "json": {"error": "bad key"}}, completion("never")]) as srv:
        with pytest.raises(ChatError, match="HTTP 401"):
            _client(srv).complete([{"role": "user", "content": "x"}])
        assert len(srv.requests) == 1
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now
    c = ChatClient(ChatConfig(f"http://127.0.0.1:{port}/v1", retries=2, backoff_s=0.01, timeout_s=2))
    with pytest.raises(ChatError, match="gave up after 3 attempts"):
        c.complete([{"role": "user", "content": "x"}])


def test_thinking_rule_keeps_reasoning_across_tool_results_and_drops_it_on_a_new_user_message():
    steps = [completion(None, [tool_call("search_hotels", {"city_id": "7"}, "c1")], reasoning="R1"),
             completion(None, [tool_call("search_hotels", {"city_id": "8"}, "c2")], reasoning="R2"),
             completion("done", reasoning="R3"),
             completion("next answer", reasoning="R4")]
    with ScriptedServer(steps) as srv:
        c = _client(srv)
        run = run_tools(c, _conv, TOOLS, _hotels)
        assert run.finished and run.steps == 3 and run.tool_calls == 2 and run.tool_errors == 0
        conv = run.conversation
        conv.user("Now a second request.")
        c.complete(conv.wire())
    bodies = srv.bodies()

    def assistants(body):
        return [m for m in body["messages"] if m["role"] == "assistant"]

    # within the request: each earlier turn's reasoning is sent back with its tool calls
    assert [m.get("reasoning_content") for m in assistants(bodies[1])] == ["R1"]
    assert [m.get("reasoning_content") for m in assistants(bodies[2])] == ["R1", "R2"]
    # a new user message: every earlier turn's reasoning goes, the tool history stays
    last = bodies[3]["messages"]
    assert all("reasoning_content" not in m for m in assistants(bodies[3]))
    assert [m["tool_call_id"] for m in last if m["role"] == "tool"] == ["c1", "c2"]
    assert sum(bool(m.get("tool_calls")) for m in last) == 2
    # llama.cpp rejects content: null on tool-call turns; the client sends ""
    assert all(m["content"] == "" for m in assistants(bodies[2]))


def test_bad_tool_calls_go_back_with_the_error_and_are_counted():
    steps = [completion(None, [tool_call("book_flight", {"to": "x"}, "c1"),
                               tool_call("search_hotels", '{"city_id": 7', "c2"),
                               tool_call("search_hotels", {"city_id": 7}, "c3"),
                               tool_call("search_hotels", {"city_id": "7", "stars": 5}, "c4")]),
             completion(None, [tool_call("search_hotels", {"city_id": "7"}, "c5")]),
             completion("hotel h7")]
    with ScriptedServer(steps) as srv:
        run = run_tools(_client(srv), _conv, TOOLS, _hotels)
    assert run.finished and run.final == "hotel h7"
    assert run.tool_calls == 5 and run.tool_errors == 4
    results = {m["tool_call_id"]: m["content"] for m in srv.bodies()[1]["messages"] if m["role"] == "tool"}
    assert "unknown tool 'book_flight'" in results["c1"]
    assert "not valid JSON" in results["c2"]
    assert "city_id: 7 is not of type 'string'" in results["c3"]
    assert "Additional properties are not allowed" in results["c4"]
    later = {m["tool_call_id"]: m["content"] for m in srv.bodies()[2]["messages"] if m["role"] == "tool"}
    assert json.loads(later["c5"]) == {"results": [{"hotel_id": "h7", "stars": 4}]}


def _rounds_script(n_rounds: int, big: int = 0):
    """n tool-call rounds, then a final answer; each tool result padded to `big` chars."""
    steps = [completion(None, [tool_call("search_hotels", {"city_id": str(i)}, f"c{i}")]) for i in range(n_rounds)]
    return steps + [completion("final")]


def _padded(name, args):
    return json.dumps({"results": [{"hotel_id": f"h{args['city_id']}", "note": "x" * 2000}]})


def test_discard_all_drops_every_tool_round_when_the_window_fills():
    with ScriptedServer(_rounds_script(3)) as srv:
        run = run_tools(_client(srv, context_tokens=1200, strategy="discard-all"), _conv, TOOLS, _padded)
    assert run.finished
    sent = [[m.get("tool_call_id") for m in b["messages"] if m["role"] == "tool"] for b in srv.bodies()]
    # 2 rounds (about 1,100 tokens) fit, 3 do not: before the 4th request all three went
    assert sent == [[], ["c0"], ["c0", "c1"], []]
    assert run.conversation.discarded_rounds == 3
    assert srv.bodies()[-1]["messages"][1]["content"] == "Find a hotel in city 7."  # the task stays


def test_discard_75_drops_the_oldest_three_quarters():
    with ScriptedServer(_rounds_script(5)) as srv:
        run = run_tools(_client(srv, context_tokens=2200, strategy="discard-75"), _conv, TOOLS, _padded)
    assert run.finished
    sent = [[m.get("tool_call_id") for m in b["messages"] if m["role"] == "tool"] for b in srv.bodies()]
    # 3 rounds (about 1,650 tokens) fit, 4 do not: the oldest 3 of 4 (75%) go, the newest stays
    assert sent == [[], ["c0"], ["c0", "c1"], ["c0", "c1", "c2"], ["c3"], ["c3", "c4"]]
    assert run.conversation.discarded_rounds == 3


def test_summary_restarts_from_the_models_own_summary():
    def script(body, n):
        msgs = body["messages"]
        if msgs[-1]["content"] == SUMMARY_PROMPT:
            return completion("city 0 has h0, city 1 has h1; still need city 2")
        if any("Summary of my work so far" in (m.get("content") or "") for m in msgs):
            return completion("final: h0")
        i = sum(m["role"] == "tool" for m in msgs)
        return completion(None, [tool_call("search_hotels", {"city_id": str(i)}, f"c{i}")])

    with ScriptedServer(script) as srv:
        run = run_tools(_client(srv, context_tokens=1200, strategy="summary"), _conv, TOOLS, _padded)
    assert run.finished and run.final == "final: h0" and run.conversation.summaries == 1
    bodies = srv.bodies()
    ask = next(b for b in bodies if b["messages"][-1]["content"] == SUMMARY_PROMPT)
    assert sum(m["role"] == "tool" for m in ask["messages"]) == 3  # it summarised the whole trajectory
    after = bodies[-1]["messages"]
    assert [m["role"] for m in after] == ["system", "user", "assistant", "user"]
    assert "still need city 2" in after[2]["content"]


def test_parallel_fewest_step_keeps_the_shortest_finished_rollout():
    # rollout k (told apart by the tool-call ids it carries) needs `length[k]` steps
    length = {0: 4, 1: 2, 2: 3}
    seen = []

    def script(body, n):
        ids = [m["tool_call_id"] for m in body["messages"] if m["role"] == "tool"]
        if not ids:
            k = len(seen)
            seen.append(k)
        else:
            k = int(ids[0].split("-")[0][1:])
        if len(ids) + 1 >= length[k]:
            return completion(f"answer from rollout {k}")
        return completion(None, [tool_call("search_hotels", {"city_id": "7"}, f"r{k}-{len(ids)}")])

    with ScriptedServer(script) as srv:
        run = run_tools(_client(srv, strategy="parallel-fewest-step", parallel=3), _conv, TOOLS, _hotels)
    assert run.final == "answer from rollout 1" and run.steps == 2
    assert len(srv.requests) == 4 + 2 + 3 and run.usage.requests == 9  # every rollout's tokens counted


def test_decide_retries_bad_json_and_schema_errors_with_the_error():
    schema = {"type": "object", "properties": {"kind": {"enum": ["sum", "attribute"]}, "value": {"type": "number"}},
              "required": ["kind", "value"], "additionalProperties": False}
    steps = [completion("sure! {kind: sum"), completion('{"kind": "teleport", "value": 3}'),
             completion('{"kind": "sum", "value": 99}'), completion('```json\n{"kind": "sum", "value": 4}\n```')]
    with ScriptedServer(steps) as srv:
        conv = _conv("Propose a constraint.")
        d = decide(_client(srv), conv, schema, check=lambda v: "value must be below 10" if v["value"] >= 10 else None,
                   attempts=4)
    assert d.value == {"kind": "sum", "value": 4} and d.attempts == 4 and len(d.errors) == 3
    assert "no JSON value" in d.errors[0] and "'teleport' is not one of" in d.errors[1]
    assert d.errors[2] == "value must be below 10"
    assert d.malformed == 2  # bad JSON and the schema miss; the failed check was well formed
    fed_back = [m["content"] for m in srv.bodies()[3]["messages"] if m["role"] == "user"][1:]
    assert len(fed_back) == 3 and "'teleport' is not one of" in fed_back[1]
    rf = srv.bodies()[0]["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["schema"] == schema


def test_decide_gives_up_after_the_bound():
    with ScriptedServer([completion("no")] * 3) as srv:
        d = decide(_client(srv), _conv(), {"type": "object"}, attempts=3)
    assert d.value is None and d.attempts == 3 and len(d.errors) == 3 and len(srv.requests) == 3
    assert d.malformed == 3


@pytest.mark.parametrize("status,message", [
    (400, "response_format type json_schema is not supported"),  # llama.cpp's own server
    # llama-cpp-python's server: a 500 carrying its request validation error (seen on 0.3.36)
    (500, "1 validation error: {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
          "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}"),
])
def test_a_server_without_json_schema_gets_json_object_with_the_schema(status, message):
    """Servers of the llama.cpp family refuse response_format json_schema; they take
    json_object with a schema beside it. The client switches once, remembers, and does not
    spend its retries on it."""
    def script(body, n):
        if body.get("response_format", {}).get("type") == "json_schema":
            return {"status": status, "json": {"error": {"message": message}}}
        return completion('{"ok": true}')

    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    with ScriptedServer(script) as srv:
        c = _client(srv, retries=0)
        assert decide(c, _conv(), schema).value == {"ok": True}
        assert decide(c, _conv(), schema).value == {"ok": True}
    kinds = [b["response_format"]["type"] for b in srv.bodies()]
    assert kinds == ["json_schema", "json_object", "json_object"]
    assert srv.bodies()[1]["response_format"]["schema"] == schema


@pytest.mark.parametrize("text,want", [('{"a": 1}', {"a": 1}), ('Here: ```json\n[1, 2]\n```', [1, 2]),
                                       ('I think {"a": {"b": 2}} is it', {"a": {"b": 2}})])
def test_parse_json_reply(text, want):
    assert parse_json_reply(text) == want


def test_decide_asks_for_the_grammar_and_judges_by_the_schema():
    schema = {"type": "object", "properties": {"slot": {"type": "string"}}, "required": ["slot"]}
    grammar = {"type": "object", "properties": {"slot": {"enum": ["hotel", "city"]}}, "required": ["slot"]}
    with ScriptedServer([completion('{"slot": "spa"}')]) as srv:
        d = decide(_client(srv), _conv(), schema, check=lambda v: None, grammar=grammar)
    # a server without constrained decoding left the grammar: the reply is still judged by the schema
    assert d.value == {"slot": "spa"} and d.malformed == 0
    assert srv.bodies()[0]["response_format"]["json_schema"]["schema"] == grammar
