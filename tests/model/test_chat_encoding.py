"""V3.2 chat encoding: golden renderings, the drop-thinking rule, and a strict parser that
round-trips what the renderer writes."""

import json
import random

import pytest

from envfactory.model.chat_format import (ChatFormatError, parse_completion, render, render_assistant,
                                          tools_block)
from envfactory.model.tokenizer import SPECIAL_TOKENS

B, E, U, A = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"
D = "｜DSML｜"
TOOL = {"type": "function", "function": {"name": "hotels_in", "description": "Hotels of a city.",
                                         "parameters": {"type": "object", "properties": {
                                             "city": {"type": "string"}, "max_price": {"type": "integer"}},
                                             "required": ["city"]}}}
CALL = {"id": "c1", "type": "function", "function": {"name": "hotels_in",
                                                     "arguments": '{"city": "Oulu", "max_price": 90}'}}


def test_the_special_tokens_are_the_tokenizers():
    assert {B, E, U, A, "<think>", "</think>", D} <= set(SPECIAL_TOKENS)


def test_chat_mode_system_and_user():
    got = render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert got == f"{B}Be brief.{U}Hi{A}</think>"


def test_thinking_mode_tool_round_keeps_reasoning_after_the_last_user_turn():
    msgs = [{"role": "user", "content": "Find a hotel"},
            {"role": "assistant", "content": "", "reasoning_content": "look it up", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "c1", "content": '[{"id": "H1"}]'}]
    got = render(msgs, thinking=True)
    assert got == (f"{B}{U}Find a hotel{A}<think>look it up</think>\n\n<{D}function_calls>\n"
                   f'<{D}invoke name="hotels_in">\n'
                   f'<{D}parameter name="city" string="true">Oulu</{D}parameter>\n'
                   f'<{D}parameter name="max_price" string="false">90</{D}parameter>\n'
                   f"</{D}invoke>\n</{D}function_calls>{E}"
                   f'\n\n<function_results>\n<result>[{{"id": "H1"}}]</result>\n</function_results>\n\n<think>')
    # the same in chat mode: no reasoning, and the results close with </think>
    chat = render(msgs)
    assert "look it up" not in chat and chat.endswith("</function_results>\n\n</think>")


def test_a_new_user_message_drops_earlier_reasoning():
    msgs = [{"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
            {"role": "user", "content": "Q2"}]
    got = render(msgs, thinking=True)
    assert got == f"{B}{U}Q1{A}</think>A1{E}{U}Q2{A}<think>"
    assert "R1" not in got


def test_developer_turn_and_tools_block():
    got = render([{"role": "developer", "content": "Plan it"}], tools=[TOOL])
    assert got == f"{B}{U}\n\n{tools_block([TOOL])}\n\n# The user's message is: Plan it{A}</think>"
    block = tools_block([TOOL])
    assert block.startswith("## Tools\n") and json.dumps(TOOL["function"]) in block
    assert block.endswith("</functions>\n")
    sys_got = render([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], tools=[TOOL])
    assert sys_got == f"{B}S\n\n{block}{U}U{A}</think>"
    # tools without a system message: one is made, empty, to carry them
    assert render([{"role": "user", "content": "U"}], tools=[TOOL]) == f"{B}\n\n{block}{U}U{A}</think>"


def test_several_results_group_into_one_block():
    two = [CALL, {**CALL, "id": "c2"}]
    msgs = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": two},
            {"role": "tool", "content": "r1"}, {"role": "tool", "content": "r2"}]
    assert render(msgs).endswith("\n\n<function_results>\n<result>r1</result>\n<result>r2</result>\n"
                                 "</function_results>\n\n</think>")
    with pytest.raises(ChatFormatError, match="no assistant tool call"):
        render([{"role": "user", "content": "x"}, {"role": "tool", "content": "r"}])
    with pytest.raises(ChatFormatError, match="unknown role"):
        render([{"role": "robot", "content": "x"}])


@pytest.mark.parametrize("text, why", [
    (f"hi\n\n<{D}function_calls>\n<{D}invoke name=\"f\">\n", "expected an invoke|malformed"),
    (f"hi\n\n<{D}function_calls>\n</{D}function_calls>", "no invoke"),
    (f"\n\n<{D}function_calls>\n<{D}invoke name=\"f\">\n<{D}parameter name=\"n\" string=\"false\">[1,</{D}"
     f"parameter>\n</{D}invoke>\n</{D}function_calls>", "not JSON"),
    (f"\n\n<{D}function_calls>\n<{D}invoke name=\"f\">\n<{D}parameter name=\"n\" string=\"true\">a</{D}"
     f"parameter>\n<{D}parameter name=\"n\" string=\"true\">b</{D}parameter>\n</{D}invoke>\n</{D}function_calls>",
     "twice"),
    (f"\n\n<{D}function_calls>\n<{D}invoke name=\"f\">\n\n</{D}invoke>\n</{D}function_calls> and more", "after"),
    (f"\n\n<{D}function_calls>\n<{D}call name=\"f\">\n</{D}call>\n</{D}function_calls>", "expected an invoke"),
    (f"content with {U} inside", "special token"),
])
def test_malformed_completions_are_errors(text, why):
    with pytest.raises(ChatFormatError, match=why):
        parse_completion(text)


def test_thinking_completion_needs_its_end():
    with pytest.raises(ChatFormatError, match="never ends"):
        parse_completion("still thinking", thinking=True)
    p = parse_completion(f"why</think>the answer{E}", thinking=True)
    assert (p.reasoning, p.content, p.tool_calls) == ("why", "the answer", [])


def _random_call(rng: random.Random, i: int) -> dict:
    args = {}
    for k in rng.sample(["city", "n", "tags", "ok", "price", "note"], rng.randrange(0, 4)):
        args[k] = rng.choice(["Oulu", "São Paulo", "a < b", 3, 2.5, True, None, ["x", 1], {"a": [1, 2]}, ""])
    return {"id": f"call_{i}", "type": "function",
            "function": {"name": rng.choice(["hotels_in", "route", "now"]), "arguments": json.dumps(args)}}


@pytest.mark.parametrize("seed", [random.Random(99).randrange(10**6) + i for i in range(20)])
def test_parse_round_trips_rendered_turns(seed):
    rng = random.Random(seed)
    thinking = rng.random() < 0.5
    content = rng.choice(["", "Here you go.", "Line one\nline two", "x < y"])
    reasoning = rng.choice(["", "step 1, step 2"]) if thinking else None
    calls = [_random_call(rng, i) for i in range(rng.randrange(0, 3))]
    text = render_assistant(content, reasoning, calls, thinking)
    p = parse_completion(text, thinking)
    assert p.content == content and p.reasoning == (reasoning if thinking else None)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in p.tool_calls] == \
           [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls], f"seed {seed}"
    # and inside a conversation the same text follows the prompt exactly
    msgs = [{"role": "user", "content": "go"},
            {"role": "assistant", "content": content, "reasoning_content": reasoning, "tool_calls": calls or None}]
    assert render(msgs, thinking=thinking) == render(msgs[:1], thinking=thinking) + text


def test_drop_thinking_strips_only_turns_before_the_last_user_message():
    from envfactory.model.chat_format import drop_thinking

    msgs = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
            {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "", "reasoning": "R2",
                                                "tool_calls": [CALL]}, {"role": "tool", "content": "r"}]
    out = drop_thinking(msgs)
    assert "reasoning_content" not in out[1] and out[3]["reasoning"] == "R2" and msgs[1]["reasoning_content"] == "R1"
    assert "R2" in render(msgs, thinking=True) and "R1" not in render(msgs, thinking=True)
