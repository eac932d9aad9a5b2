"""V3.2 chat format (model/chat_format.py): golden renderings written out in full, the
drop-thinking rule, and the strict completion parser, with a round trip over random conversations."""

import json
import random

import pytest

from envfactory.model import chat_format as cf
from envfactory.model.chat_format import ChatFormatError, ParsedCompletion, drop_thinking, parse_completion, render
from envfactory.model.tokenizer import SPECIAL_TOKENS

WEATHER = {"type": "function", "function": {
    "name": "weather", "description": "Forecast for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}
NOW = {"type": "function", "function": {"name": "now", "description": "The time.",
                                        "parameters": {"type": "object", "properties": {}}}}


def call(name: str, args: dict, id_: str = "c1") -> dict:
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


# The tools block for [WEATHER, NOW], exactly as V3.2 writes it.
TOOLS_TEXT = (
    "## Tools\n"
    "You have access to a set of tools you can use to answer the user's question.\n"
    "You can invoke functions by writing a \"<｜DSML｜function_calls>\" block like the following as part of "
    "your reply to the user:\n"
    "<｜DSML｜function_calls>\n"
    "<｜DSML｜invoke name=\"$FUNCTION_NAME\">\n"
    "<｜DSML｜parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</｜DSML｜parameter>\n"
    "...\n"
    "</｜DSML｜invoke>\n"
    "<｜DSML｜invoke name=\"$FUNCTION_NAME2\">\n"
    "...\n"
    "</｜DSML｜invoke>\n"
    "</｜DSML｜function_calls>\n"
    "String and scalar parameters should be specified as is without any escaping or quotes, while lists and "
    "objects should use JSON format. The \"string\" attribute should be set to \"true\" for string type "
    "parameters and \"false\" for other types (numbers, booleans, arrays, objects).\n"
    "If the thinking_mode is enabled, then after function results you should strongly consider outputting a "
    "thinking block. Here is an example:\n"
    "<｜DSML｜function_calls>\n"
    "...\n"
    "</｜DSML｜function_calls>\n"
    "<function_results>\n"
    "...\n"
    "</function_results>\n"
    "<think>...thinking about results</think>\n"
    "Here are the functions available in JSONSchema format:\n"
    "<functions>\n"
    '{"name": "weather", "description": "Forecast for a city.", "parameters": {"type": "object", "properties": '
    '{"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}\n'
    '{"name": "now", "description": "The time.", "parameters": {"type": "object", "properties": {}}}\n'
    "</functions>\n"
)

WEATHER_CALL_TEXT = (
    "\n\n<｜DSML｜function_calls>\n"
    "<｜DSML｜invoke name=\"weather\">\n"
    "<｜DSML｜parameter name=\"city\" string=\"true\">Oulu</｜DSML｜parameter>\n"
    "<｜DSML｜parameter name=\"days\" string=\"false\">2</｜DSML｜parameter>\n"
    "</｜DSML｜invoke>\n"
    "</｜DSML｜function_calls>"
)


def test_module_constants_are_the_tokenizers_special_tokens():
    assert {cf.USER, cf.ASSISTANT, cf.THINK, cf.END_THINK, cf.DSML} <= set(SPECIAL_TOKENS)
    assert (cf.USER, cf.ASSISTANT) == ("<｜User｜>", "<｜Assistant｜>")


# --- golden renderings ---------------------------------------------------------------------------

def test_golden_system_and_user_chat_mode_with_generation_prompt():
    got = render([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}])
    assert got == "<｜begin▁of▁sentence｜>You are terse.<｜User｜>Hi<｜Assistant｜></think>"


def test_golden_thinking_tool_round_keeps_reasoning_after_the_last_user_message():
    msgs = [{"role": "system", "content": "S"},
            {"role": "user", "content": "Weather in Oulu?"},
            {"role": "assistant", "content": "", "reasoning_content": "Need the tool.",
             "tool_calls": [call("weather", {"city": "Oulu", "days": 2})]},
            {"role": "tool", "tool_call_id": "c1", "content": "-3C"},
            {"role": "assistant", "content": "Cold: -3C.", "reasoning_content": "It is cold."}]
    assert render(msgs, thinking=True) == (
        "<｜begin▁of▁sentence｜>S<｜User｜>Weather in Oulu?<｜Assistant｜><think>"
        "Need the tool.</think>" + WEATHER_CALL_TEXT + "<｜end▁of▁sentence｜>"
        "\n\n<function_results>\n<result>-3C</result>\n</function_results>\n\n<think>"
        "It is cold.</think>Cold: -3C.<｜end▁of▁sentence｜>")
    # the prompt for the continued turn ends with the results and an open think block
    assert render(msgs[:4], thinking=True).endswith("</function_results>\n\n<think>")


def test_golden_second_user_message_drops_earlier_reasoning():
    msgs = [{"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "", "reasoning_content": "R0",
             "tool_calls": [call("weather", {"city": "Oulu", "days": 2})]},
            {"role": "tool", "content": "-3C"},
            {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
            {"role": "user", "content": "Q2"}]
    assert render(msgs, thinking=True) == (
        "<｜begin▁of▁sentence｜><｜User｜>Q1<｜Assistant｜></think>" + WEATHER_CALL_TEXT +
        "<｜end▁of▁sentence｜>\n\n<function_results>\n<result>-3C</result>\n</function_results>\n\n</think>"
        "A1<｜end▁of▁sentence｜><｜User｜>Q2<｜Assistant｜><think>")


def test_golden_developer_turn():
    msgs = [{"role": "system", "content": "S"}, {"role": "developer", "content": "Plan a trip"}]
    assert render(msgs, thinking=True) == (
        "<｜begin▁of▁sentence｜>S<｜User｜>\n\n# The user's message is: Plan a trip<｜Assistant｜><think>")
    # a developer turn counts as a user turn for the drop-thinking rule
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "reasoning_content": "R"},
            {"role": "developer", "content": "D"}]
    assert render(msgs, thinking=True) == (
        "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜></think>A<｜end▁of▁sentence｜>"
        "<｜User｜>\n\n# The user's message is: D<｜Assistant｜><think>")


def test_golden_tools_block_in_the_system_prompt():
    got = render([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], tools=[WEATHER, NOW])
    assert got == "<｜begin▁of▁sentence｜>S\n\n" + TOOLS_TEXT + "<｜User｜>U<｜Assistant｜></think>"
    assert cf.tools_block([WEATHER, NOW]) == TOOLS_TEXT


def test_tools_without_a_system_message_get_an_empty_one_or_ride_on_the_developer_turn():
    got = render([{"role": "user", "content": "U"}], tools=[WEATHER, NOW])
    assert got == "<｜begin▁of▁sentence｜>\n\n" + TOOLS_TEXT + "<｜User｜>U<｜Assistant｜></think>"
    got = render([{"role": "developer", "content": "D"}], tools=[WEATHER, NOW])
    assert got == ("<｜begin▁of▁sentence｜><｜User｜>\n\n" + TOOLS_TEXT +
                   "\n\n# The user's message is: D<｜Assistant｜></think>")


def test_golden_consecutive_tool_messages_group_into_one_block():
    msgs = [{"role": "user", "content": "x"},
            {"role": "assistant", "content": "Checking.",
             "tool_calls": [call("now", {}, "a"), call("weather", {"city": "São Paulo", "days": [1, 2]}, "b")]},
            {"role": "tool", "tool_call_id": "a", "content": "12:00"},
            {"role": "tool", "tool_call_id": "b", "content": [{"type": "text", "text": "warm"}]}]
    assert render(msgs) == (
        "<｜begin▁of▁sentence｜><｜User｜>x<｜Assistant｜></think>Checking."
        "\n\n<｜DSML｜function_calls>\n"
        "<｜DSML｜invoke name=\"now\">\n\n</｜DSML｜invoke>\n"
        "<｜DSML｜invoke name=\"weather\">\n"
        "<｜DSML｜parameter name=\"city\" string=\"true\">São Paulo</｜DSML｜parameter>\n"
        "<｜DSML｜parameter name=\"days\" string=\"false\">[1, 2]</｜DSML｜parameter>\n"
        "</｜DSML｜invoke>\n"
        "</｜DSML｜function_calls><｜end▁of▁sentence｜>"
        "\n\n<function_results>\n<result>12:00</result>\n<result>warm</result>\n</function_results>\n\n</think>")


def test_without_generation_prompt_the_opener_of_the_next_turn_is_left_out():
    user = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    assert render(user, add_generation_prompt=False) == "<｜begin▁of▁sentence｜>S<｜User｜>Q"
    assert render(user, thinking=True) == render(user, add_generation_prompt=False) + "<｜Assistant｜><think>"
    tool = [*user, {"role": "assistant", "tool_calls": [call("now", {})]}, {"role": "tool", "content": "r"}]
    assert render(tool, thinking=True) == render(tool, thinking=True, add_generation_prompt=False) + "\n\n<think>"
    assert render(tool) == render(tool, add_generation_prompt=False) + "\n\n</think>"
    done = [*user, {"role": "assistant", "content": "A"}]
    assert render(done, add_generation_prompt=False) == render(done) == "<｜begin▁of▁sentence｜>S<｜User｜>Q" \
        "<｜Assistant｜></think>A<｜end▁of▁sentence｜>"


def test_chat_mode_never_writes_reasoning_and_reasoning_is_an_accepted_alias():
    msgs = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "reasoning": "R"}]
    assert render(msgs) == \
        "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜></think>A<｜end▁of▁sentence｜>"
    assert render(msgs, thinking=True) == \
        "<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜><think>R</think>A<｜end▁of▁sentence｜>"


def test_drop_thinking_strips_only_turns_before_the_last_user_or_developer_message():
    msgs = [{"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
            {"role": "assistant", "content": "A2", "reasoning": "R2"},
            {"role": "developer", "content": "Q2"},
            {"role": "assistant", "content": "A3", "reasoning_content": "R3"}]
    out = drop_thinking(msgs)
    assert out[1] == {"role": "assistant", "content": "A1"} and out[2] == {"role": "assistant", "content": "A2"}
    assert out[4] is msgs[4] and out[0] is msgs[0] and out[3] is msgs[3]
    assert msgs[1]["reasoning_content"] == "R1"  # the caller's messages are left alone


@pytest.mark.parametrize("msgs, why", [
    ([{"role": "user", "content": "x"}, {"role": "tool", "content": "r"}], "no assistant tool call"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call("now", {})]},
      {"role": "tool", "content": "r1"}, {"role": "tool", "content": "r2"}], "2 tool results .* answer 1"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call("now", {}), call("now", {})]},
      {"role": "tool", "content": "r1"}], "1 tool results .* answer 2"),
    ([{"role": "robot", "content": "x"}], "unknown role"),
    ([{"role": "developer", "content": ""}], "developer message .* no content"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "now", "arguments": "[1]"}}]}], "JSON object"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "now", "arguments": "{oops"}}]}], "not JSON"),
    ([{"role": "user", "content": 3}], "must be text"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call('say"hi', {})]}],
     "bad function name"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call("f", {"a\nb": 1})]}],
     "bad parameter name"),
])
def test_unrenderable_conversations_are_errors(msgs, why):
    with pytest.raises(ChatFormatError, match=why):
        render(msgs)


# --- the parser ----------------------------------------------------------------------------------

D = "｜DSML｜"


def calls_text(*invokes: str) -> str:
    return f"\n\n<{D}function_calls>\n" + "\n".join(invokes) + f"\n</{D}function_calls>"


def invoke(name: str, *params: tuple[str, str, str]) -> str:
    body = "\n".join(f'<{D}parameter name="{k}" string="{s}">{v}</{D}parameter>' for k, s, v in params)
    return f'<{D}invoke name="{name}">\n{body}\n</{D}invoke>'


GOOD = calls_text(invoke("f", ("a", "true", "x")))


@pytest.mark.parametrize("text, why", [
    (f"hi\n\n<{D}function_calls>\n<{D}invoke name=\"f\">\n", "invoke of f is never closed"),
    (f"hi\n\n<{D}function_calls>\n", "function_calls block is never closed"),
    (GOOD.removesuffix(f"</{D}function_calls>"), "function_calls block is never closed"),
    (f"\n\n<{D}function_calls>\n<{D}invoke name=\"f\">\n<{D}parameter name=\"a\" string=\"true\">x",
     "expected a parameter of f"),
    (f"\n\n<{D}function_calls>\n</{D}function_calls>", "no invoke"),
    (f"\n\n<{D}function_calls x>\n" + GOOD[len(f"\n\n<{D}function_calls>\n"):], "malformed function_calls tag"),
    (calls_text(f'<{D}call name="f">\n\n</{D}call>'), "expected an invoke"),
    (calls_text(f'<{D}invoke name="f">\n<{D}arg name="a">1</{D}arg>\n</{D}invoke>'), "expected a parameter"),
    (calls_text(invoke("f", ("a", "maybe", "x"))), "expected a parameter"),
    (calls_text(invoke("f", ("n", "false", "[1,"))), "marked non-string but is not JSON"),
    (calls_text(invoke("f", ("n", "false", "Oulu"))), "marked non-string but is not JSON"),
    (calls_text(invoke("f", ("n", "true", "a"), ("n", "true", "b"))), "given twice"),
    (calls_text(invoke("f", ("n", "true", "a</think>b"))), "special token </think> inside the value"),
    (calls_text(invoke("f", ("a", "true", "x"), ("b", "true", "y"))).replace(f"</{D}parameter>", "", 1),
     "special token ｜DSML｜ inside the value of parameter a"),  # an unclosed parameter swallows the next
    (GOOD.replace(f"</{D}parameter>", "", 1), "expected a parameter of f"),
    (GOOD + " and more", "text after the tool calls"),
    (GOOD + "<｜end▁of▁sentence｜>more", "text after the tool calls"),
    (GOOD + "\n\n" + GOOD, "text after the tool calls"),
    ("content with <｜User｜> inside", "special token <｜User｜> inside the content"),
    ("content <think> inside", "special token <think> inside the content"),
    ("done<｜end▁of▁sentence｜>and on", "special token <｜end▁of▁sentence｜> inside the content"),
    (f"no blank line<{D}function_calls>\n", "special token ｜DSML｜ inside the content"),
    ("thoughts</think>answer", "special token </think> inside the content"),
])
def test_malformed_completions_are_errors(text, why):
    with pytest.raises(ChatFormatError, match=why):
        parse_completion(text)


@pytest.mark.parametrize("text, why", [
    ("still thinking", "never ends"),
    ("still thinking" + GOOD, "never ends"),
    ("a<think>b</think>answer", "special token <think> inside the reasoning"),
    ("calls first" + GOOD + "</think>answer", "special token ｜DSML｜ inside the reasoning"),
])
def test_malformed_thinking_completions_are_errors(text, why):
    with pytest.raises(ChatFormatError, match=why):
        parse_completion(text, thinking=True)


def test_chat_format_error_is_a_value_error():
    assert issubclass(ChatFormatError, ValueError)


def test_plain_completions_with_and_without_eos():
    assert parse_completion("Hello.<｜end▁of▁sentence｜>") == ParsedCompletion("Hello.", None, [])
    assert parse_completion("Hello.") == ParsedCompletion("Hello.", None, [])
    assert parse_completion("") == ParsedCompletion("", None, [])
    assert parse_completion("why</think>the answer<｜end▁of▁sentence｜>", thinking=True) == \
        ParsedCompletion("the answer", "why", [])
    assert parse_completion("</think>", thinking=True) == ParsedCompletion("", "", [])
    with pytest.raises(AttributeError):  # frozen
        parse_completion("x").content = "y"


def test_string_and_json_parameters():
    text = calls_text(invoke("f", ("s", "true", "42"), ("n", "false", "42"), ("x", "false", "2.5"),
                             ("b", "false", "true"), ("z", "false", "null"), ("o", "false", '{"a": [1, "b"]}'),
                             ("q", "false", '"quoted"'), ("raw", "true", 'line one\n"two" {not json}'),
                             ("e", "true", "")))
    (c,) = parse_completion(text + "<｜end▁of▁sentence｜>").tool_calls
    assert json.loads(c["function"]["arguments"]) == {
        "s": "42", "n": 42, "x": 2.5, "b": True, "z": None, "o": {"a": [1, "b"]}, "q": "quoted",
        "raw": 'line one\n"two" {not json}', "e": ""}


def test_multiple_invokes_get_ids_in_order_and_trailing_whitespace_is_allowed():
    text = "Two calls." + calls_text(invoke("weather", ("city", "true", "Oulu"), ("days", "false", "2")),
                                     f'<{D}invoke name="now">\n\n</{D}invoke>',
                                     invoke("weather", ("city", "true", "São Paulo"))) + "\n \n"
    p = parse_completion(text)
    assert p.content == "Two calls." and p.reasoning is None
    assert [c["id"] for c in p.tool_calls] == ["call_0", "call_1", "call_2"]
    assert all(c["type"] == "function" for c in p.tool_calls)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in p.tool_calls] == [
        ("weather", {"city": "Oulu", "days": 2}), ("now", {}), ("weather", {"city": "São Paulo"})]
    assert p.tool_calls[2]["function"]["arguments"] == '{"city": "São Paulo"}'  # not ASCII-escaped


def test_thinking_completion_with_a_tool_call():
    p = parse_completion("look it up</think>" + WEATHER_CALL_TEXT + "<｜end▁of▁sentence｜>", thinking=True)
    assert (p.reasoning, p.content) == ("look it up", "")
    assert json.loads(p.tool_calls[0]["function"]["arguments"]) == {"city": "Oulu", "days": 2}


# --- round trip ----------------------------------------------------------------------------------

TEXTS = ["", "Sure.", "Line one\nline two", "a < b && c > d", "{\"looks\": \"like json\"}", "naïve café 東京",
         "trailing blank\n\n", "  spaced  "]
VALUES = ["Oulu", "São Paulo", "", "42", "true", "null", "a\nb", "x </y>", 0, -3, 2.5, True, False, None,
          [], [1, "two", None], {}, {"k": {"n": [1.5, "v"]}}]


def _random_calls(rng: random.Random) -> list[dict]:
    calls = []
    for i in range(rng.randrange(1, 4)):
        keys = rng.sample(["city", "n", "tags", "ok", "price", "note", "q"], rng.randrange(0, 5))
        calls.append(call(rng.choice(["weather", "now", "route_2"]), {k: rng.choice(VALUES) for k in keys}, f"c{i}"))
    return calls


def _random_conversation(rng: random.Random) -> tuple[list[dict], bool, list[dict] | None]:
    thinking, tools = rng.random() < 0.6, ([WEATHER, NOW] if rng.random() < 0.5 else None)
    msgs = [{"role": "system", "content": rng.choice(TEXTS)}] if rng.random() < 0.5 else []
    for r in range(rng.randrange(1, 4)):
        role = rng.choice(["user", "user", "developer"])
        msgs.append({"role": role, "content": rng.choice(TEXTS) or "go"})
        for s in range(rng.randrange(1, 4)):
            a = {"role": "assistant", "content": rng.choice(TEXTS),
                 "reasoning_content": f"R{r}.{s} " + rng.choice(TEXTS)}  # a marker unique to this turn
            final = s == 2 or rng.random() < 0.4
            if not final:
                a["tool_calls"] = _random_calls(rng)
            msgs.append(a)
            if final:
                break
            msgs += [{"role": "tool", "tool_call_id": c["id"], "content": rng.choice(TEXTS)} for c in a["tool_calls"]]
    return msgs, thinking, tools


@pytest.mark.parametrize("seed", range(16), ids=lambda s: f"seed{s}")
def test_round_trip_over_random_conversations(seed):
    msgs, thinking, tools = _random_conversation(random.Random(seed))
    full = render(msgs, tools=tools, thinking=thinking)
    for j, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        prompt, upto = render(msgs[:j], tools=tools, thinking=thinking), render(msgs[:j + 1], tools=tools,
                                                                                  thinking=thinking)
        assert upto.startswith(prompt), f"seed {seed}, message {j}"
        p = parse_completion(upto[len(prompt):], thinking=thinking)
        assert p.content == m["content"], f"seed {seed}, message {j}"
        assert p.reasoning == (m["reasoning_content"] if thinking else None), f"seed {seed}, message {j}"
        want = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in m.get("tool_calls", [])]
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in p.tool_calls] == want
        assert [c["id"] for c in p.tool_calls] == [f"call_{i}" for i in range(len(want))]
    # the drop-thinking rule over the whole conversation: only reasoning after the last user turn survives
    last = max(i for i, m in enumerate(msgs) if m["role"] in ("user", "developer"))
    for j, m in enumerate(msgs):
        if m["role"] == "assistant":
            assert (m["reasoning_content"] in full) == (thinking and j > last), f"seed {seed}, message {j}"
