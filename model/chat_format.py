"""DeepSeek-V3.2's chat encoding: OpenAI-style messages in, prompt text out, and completions
back into content, reasoning and tool calls.

The format is the one V3.2 ships (`encoding/encoding_dsv32.py` of the model repository, as
copied into SGLang at `python/sglang/srt/entrypoints/openai/encoding_dsv32.py`; dsa.md §1.5):

- the prompt opens with BOS; a system message is its content, then the tools block when
  tools are offered; a user turn is `<｜User｜>{content}<｜Assistant｜>` followed by `<think>`
  when it is the last user turn in thinking mode, else by `</think>`; a developer turn is a
  user turn whose content carries the tools block and ends with "# The user's message is: ";
- an assistant turn is `{reasoning}</think>` (thinking mode, after the last user turn only),
  then its content, then its tool calls as a DSML block, then EOS;
- tool results are grouped after the turn that called them: `\\n\\n<function_results>`, one
  `\\n<result>…</result>` each, `\\n</function_results>`, then `\\n\\n<think>` (thinking, after
  the last user turn) or `\\n\\n</think>`;
- reasoning is dropped from every assistant turn before the last user or developer turn.

Where this module differs: a requested response format is not written into the prompt
(V3.2 appends a "## Response Format" section); our server enforces it with a grammar
(`constrain.py`) and our model was trained on prompts without it. An assistant turn after
the last user turn in thinking mode may have empty reasoning (V3.2 refuses one with
neither reasoning nor tool calls).

`parse_completion` is strict, like V3.2's parser: malformed DSML, a special token inside
content, or anything after the tool calls is a `ChatFormatError`, never a guess.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from .tokenizer import BOS, EOS

USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
THINK, END_THINK = "<think>", "</think>"
DSML = "｜DSML｜"
CALLS_START = f"\n\n<{DSML}function_calls"
SPECIALS = (BOS, EOS, USER, ASSISTANT, THINK, END_THINK, DSML)

TOOLS_BLOCK = f"""## Tools
You have access to a set of tools you can use to answer the user's question.
You can invoke functions by writing a "<{DSML}function_calls>" block like the following as part of your reply to the user:
<{DSML}function_calls>
<{DSML}invoke name="$FUNCTION_NAME">
<{DSML}parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</{DSML}parameter>
...
</{DSML}invoke>
<{DSML}invoke name="$FUNCTION_NAME2">
...
</{DSML}invoke>
</{DSML}function_calls>
String and scalar parameters should be specified as is without any escaping or quotes, while lists and objects should use JSON format. The "string" attribute should be set to "true" for string type parameters and "false" for other types (numbers, booleans, arrays, objects).
If the thinking_mode is enabled, then after function results you should strongly consider outputting a thinking block. Here is an example:
<{DSML}function_calls>
...
</{DSML}function_calls>
<function_results>
...
</function_results>
{THINK}...thinking about results{END_THINK}
Here are the functions available in JSONSchema format:
<functions>
{{schemas}}
</functions>
"""


class ChatFormatError(ValueError):
    """Messages that cannot be rendered, or a completion that is not well-formed V3.2."""


@dataclass(frozen=True)
class ParsedCompletion:
    content: str
    reasoning: str | None = None
    tool_calls: list[dict] = field(default_factory=list)  # OpenAI form, arguments as JSON text


def _json(v) -> str:
    return json.dumps(v, ensure_ascii=False)


def tools_block(tools: list[dict]) -> str:
    fns = [t.get("function", t) for t in tools]
    return TOOLS_BLOCK.replace("{schemas}", "\n".join(_json(f) for f in fns))


def _arguments(call: dict) -> dict:
    raw = (call.get("function") or {}).get("arguments", {})
    try:
        args = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as e:
        raise ChatFormatError(f"tool call arguments are not JSON: {e}") from None
    if not isinstance(args, dict):
        raise ChatFormatError("tool call arguments must be a JSON object")
    return args


def render_tool_calls(calls: list[dict]) -> str:
    invokes = []
    for c in calls:
        name = (c.get("function") or {}).get("name")
        if not isinstance(name, str) or not name:
            raise ChatFormatError("a tool call needs a function name")
        params = "\n".join(
            f'<{DSML}parameter name="{k}" string="{"true" if isinstance(v, str) else "false"}">'
            f"{v if isinstance(v, str) else _json(v)}</{DSML}parameter>" for k, v in _arguments(c).items())
        invokes.append(f'<{DSML}invoke name="{name}">\n{params}\n</{DSML}invoke>')
    return f"{CALLS_START}>\n" + "\n".join(invokes) + f"\n</{DSML}function_calls>"


def _last_user(messages: list[dict]) -> int:
    return max((i for i, m in enumerate(messages) if m.get("role") in ("user", "developer")), default=-1)


def drop_thinking(messages: list[dict]) -> list[dict]:
    """Reasoning removed from assistant turns before the last user/developer turn."""
    last = _last_user(messages)
    return [({k: v for k, v in m.items() if k not in ("reasoning_content", "reasoning")}
             if m.get("role") == "assistant" and i < last else m) for i, m in enumerate(messages)]


def _text(m: dict) -> str:
    c = m.get("content")
    if c is None:
        return ""
    if isinstance(c, list):  # OpenAI content parts: the text ones
        return "".join(p.get("text", "") for p in c if isinstance(p, dict))
    if not isinstance(c, str):
        raise ChatFormatError(f"a {m.get('role')} message's content must be text")
    return c


def render(messages: list[dict], tools: list[dict] | None = None, thinking: bool = False) -> str:
    """The prompt for the next assistant turn (it ends where that turn's text begins)."""
    msgs = drop_thinking(messages)
    if tools and not any(m.get("role") in ("system", "developer") for m in msgs):
        msgs = [{"role": "system", "content": ""}, *msgs]
    last = _last_user(msgs)
    out, tools_done, i = [BOS], False, 0
    while i < len(msgs):
        m, role = msgs[i], msgs[i].get("role")
        if role == "system":
            text = _text(m)
            if tools and not tools_done:
                text, tools_done = text + "\n\n" + tools_block(tools), True
            out.append(text)
        elif role in ("user", "developer"):
            text = _text(m)
            if role == "developer":
                block = "\n\n" + tools_block(tools) if tools and not tools_done else ""
                tools_done = tools_done or bool(block)
                text = f"{block}\n\n# The user's message is: {text}"
            out.append(f"{USER}{text}{ASSISTANT}{THINK if thinking and i == last else END_THINK}")
        elif role == "assistant":
            reasoning = m.get("reasoning_content", m.get("reasoning"))
            head = f"{reasoning or ''}{END_THINK}" if thinking and i > last else ""
            calls = render_tool_calls(m["tool_calls"]) if m.get("tool_calls") else ""
            out.append(f"{head}{_text(m)}{calls}{EOS}")
        elif role == "tool":
            prev = msgs[i - 1] if i else {}
            wanted = len(prev.get("tool_calls") or []) if prev.get("role") == "assistant" else 0
            group = []
            while i < len(msgs) and msgs[i].get("role") == "tool":
                group.append(msgs[i])
                i += 1
            if not wanted:
                raise ChatFormatError(f"tool results at message {i - len(group)} follow no assistant tool call")
            body = "".join(f"\n<result>{_text(t)}</result>" for t in group)
            out.append(f"\n\n<function_results>{body}\n</function_results>\n\n"
                       f"{THINK if thinking and i - 1 > last else END_THINK}")
            continue
        else:
            raise ChatFormatError(f"unknown role {role!r} at message {i}")
        i += 1
    return "".join(out)


def render_assistant(content: str = "", reasoning: str | None = None, tool_calls: list[dict] | None = None,
                     thinking: bool = False) -> str:
    """What a completion of the next assistant turn holds (EOS included)."""
    head = f"{reasoning or ''}{END_THINK}" if thinking else ""
    return f"{head}{content}{render_tool_calls(tool_calls) if tool_calls else ''}{EOS}"


_INVOKE = re.compile(rf'<{DSML}invoke name="([^"<]+)">\n')
_PARAM = re.compile(rf'<{DSML}parameter name="([^"<]+)" string="(true|false)">(.*?)</{DSML}parameter>\n',
                    re.DOTALL)


def _parse_calls(text: str) -> list[dict]:
    """text after CALLS_START (through the closing tag, nothing after)."""
    if not text.startswith(">\n"):
        raise ChatFormatError("malformed function_calls tag")
    pos, calls = 2, []
    end = f"</{DSML}function_calls>"
    while not text.startswith(end, pos):
        m = _INVOKE.match(text, pos)
        if not m:
            raise ChatFormatError(f"expected an invoke or the closing tag at offset {pos}")
        pos, args = m.end(), {}
        while not text.startswith(f"</{DSML}invoke>\n", pos):
            if not args and pos == m.end() and text.startswith(f"\n</{DSML}invoke>\n", pos):
                # no parameters: V3.2's join leaves a blank line
                pos += 1
                continue
            p = _PARAM.match(text, pos)
            if not p:
                raise ChatFormatError(f"malformed parameter of {m[1]} at offset {pos}")
            key, is_str, raw = p[1], p[2], p[3]
            if key in args:
                raise ChatFormatError(f"parameter {key} given twice to {m[1]}")
            if is_str == "true":
                args[key] = raw
            else:
                try:
                    args[key] = json.loads(raw)
                except json.JSONDecodeError:
                    raise ChatFormatError(f"parameter {key} of {m[1]} is marked non-string but is not JSON") from None
            pos = p.end()
        pos += len(f"</{DSML}invoke>\n")
        calls.append({"id": f"call_{len(calls)}", "type": "function",
                      "function": {"name": m[1], "arguments": _json(args)}})
    if not calls:
        raise ChatFormatError("a function_calls block with no invoke")
    if text[pos + len(end):].strip():
        raise ChatFormatError("text after the tool calls")
    return calls


def parse_completion(text: str, thinking: bool = False) -> ParsedCompletion:
    """A completion of an assistant turn -> content, reasoning, tool calls (strict)."""
    if text.endswith(EOS):
        text = text[: -len(EOS)]
    reasoning = None
    if thinking:
        if END_THINK not in text:
            raise ChatFormatError("thinking mode: the reasoning never ends (no </think>)")
        reasoning, text = text.split(END_THINK, 1)
    content, calls = text, []
    if CALLS_START in text:
        content, rest = text.split(CALLS_START, 1)
        calls = _parse_calls(rest)
    for part in (content, reasoning or ""):
        bad = [s for s in SPECIALS if s in part]
        if bad:
            raise ChatFormatError(f"special token {bad[0]} inside the content")
    return ParsedCompletion(content, reasoning, calls)


__all__ = ["render", "render_assistant", "render_tool_calls", "parse_completion", "drop_thinking", "tools_block",
           "ParsedCompletion", "ChatFormatError", "USER", "ASSISTANT", "THINK", "END_THINK", "DSML"]
