"""DeepSeek-V3.2's chat encoding: OpenAI-style messages in, prompt text out, and completions
back into content, reasoning and tool calls.

The format is the one V3.2 ships (`encoding/encoding_dsv32.py` of the model repository, as
copied into SGLang at `python/sglang/srt/entrypoints/openai/encoding_dsv32.py`; dsa.md §1.5):

- the prompt opens with BOS; a system message is its content, then `\\n\\n` and the tools block
  when tools are offered; a user turn is `<｜User｜>{content}<｜Assistant｜>` followed by
  `<think>` when it is the last user turn in thinking mode, else by `</think>`; a developer
  turn is a user turn whose content is the tools block (if it carries them), then
  `\\n\\n# The user's message is: {content}`;
- an assistant turn is `{reasoning}</think>` (thinking mode, after the last user turn only),
  then its content, then its tool calls as a DSML block, then EOS; a parameter is marked
  `string="true"` and written raw when its value is a string, else `string="false"` and JSON;
- the results of one turn's tool calls form one block: `\\n\\n<function_results>`, one
  `\\n<result>…</result>` each, `\\n</function_results>`, then `\\n\\n<think>` (thinking mode,
  after the last user turn) or `\\n\\n</think>`;
- the drop-thinking rule: reasoning is removed from every assistant turn before the last user
  or developer turn, and kept after it.

`render(messages, tools, thinking, add_generation_prompt)` writes the prompt; the text that
opens the next assistant turn (`<｜Assistant｜>` and its think token after a user turn, the
think token after tool results) is the generation prompt. `parse_completion(text, thinking)`
reads an assistant turn back; for any assistant message, the text `render` writes for it
parses back to that message's content, reasoning and tool calls.

Where this module differs from V3.2, and why:
- tools come as an argument and are written into the first system or developer message (an
  empty system message is made when there is neither); V3.2 reads them off the message;
- a requested response format is not written into the prompt (V3.2 appends a
  "## Response Format" section): our server enforces it with a grammar (`constrain.py`) and
  our model was trained on prompts without it;
- an assistant turn after the last user turn in thinking mode may have empty reasoning and no
  tool calls (V3.2 refuses it), and `reasoning` is accepted for `reasoning_content`;
- a developer message before the last user turn is kept (V3.2's drop-thinking pass loses it);
- tool results must match their turn's tool calls one to one (V3.2 leaves the block open when
  some are missing);
- the parser is at least as strict as V3.2's: malformed DSML, a special token inside content,
  reasoning or a parameter value, or anything but whitespace after the tool calls is a
  `ChatFormatError`, never a guess; unlike V3.2 it also takes a completion stopped without EOS.
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
CALLS_END = f"</{DSML}function_calls>"
INVOKE_END = f"</{DSML}invoke>"
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
    reasoning: str | None = None  # None outside thinking mode
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


def _name(name, what: str) -> str:
    # the parser reads names up to a quote, so one holding a quote or newline could not come back
    if not isinstance(name, str) or not name or '"' in name or "\n" in name:
        raise ChatFormatError(f"bad {what} name {name!r}")
    return name


def _parameter(key: str, value) -> str:
    key = _name(key, "parameter")
    is_str = isinstance(value, str)
    return (f'<{DSML}parameter name="{key}" string="{"true" if is_str else "false"}">'
            f"{value if is_str else _json(value)}</{DSML}parameter>")


def render_tool_calls(calls: list[dict]) -> str:
    invokes = []
    for c in calls:
        name = _name((c.get("function") or {}).get("name"), "function")
        params = "\n".join(_parameter(k, v) for k, v in _arguments(c).items())
        invokes.append(f'<{DSML}invoke name="{name}">\n{params}\n{INVOKE_END}')
    return f"{CALLS_START}>\n" + "\n".join(invokes) + f"\n{CALLS_END}"


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


def render_assistant(content: str = "", reasoning: str | None = None, tool_calls: list[dict] | None = None,
                     thinking: bool = False) -> str:
    """One assistant turn, EOS included; `thinking` means it follows the last user turn in thinking mode."""
    head = f"{reasoning or ''}{END_THINK}" if thinking else ""
    return f"{head}{content}{render_tool_calls(tool_calls) if tool_calls else ''}{EOS}"


def _results(msgs: list[dict], start: int) -> tuple[str, int]:
    """The function_results block of the tool messages from `start` on, and the index after them."""
    end = start
    while end < len(msgs) and msgs[end].get("role") == "tool":
        end += 1
    prev = msgs[start - 1] if start else {}
    wanted = len(prev.get("tool_calls") or []) if prev.get("role") == "assistant" else 0
    if not wanted:
        raise ChatFormatError(f"tool results at message {start} follow no assistant tool call")
    if wanted != end - start:
        raise ChatFormatError(f"{end - start} tool results at message {start} answer {wanted} tool calls")
    body = "".join(f"\n<result>{_text(t)}</result>" for t in msgs[start:end])
    return f"\n\n<function_results>{body}\n</function_results>", end


def render(messages: list[dict], tools: list[dict] | None = None, thinking: bool = False,
           add_generation_prompt: bool = True) -> str:
    """The prompt: with the generation prompt it ends where the next assistant turn's text begins."""
    msgs = drop_thinking(messages)
    host = next((i for i, m in enumerate(msgs) if m.get("role") in ("system", "developer")), None)
    if tools and host is None:
        msgs, host = [{"role": "system", "content": ""}, *msgs], 0
    block = "\n\n" + tools_block(tools) if tools else ""
    last = _last_user(msgs)
    out, i = [BOS], 0
    while i < len(msgs):
        m, role, opener, nxt = msgs[i], msgs[i].get("role"), "", i + 1
        if role == "system":
            out.append(_text(m) + (block if i == host else ""))
        elif role in ("user", "developer"):
            text = _text(m)
            if role == "developer":
                if not text:
                    raise ChatFormatError(f"the developer message at {i} has no content")
                text = f"{block if i == host else ''}\n\n# The user's message is: {text}"
            out.append(f"{USER}{text}")
            opener = ASSISTANT + (THINK if thinking and i == last else END_THINK)
        elif role == "assistant":
            reasoning = m.get("reasoning_content") or m.get("reasoning")
            out.append(render_assistant(_text(m), reasoning, m.get("tool_calls"), thinking and i > last))
        elif role == "tool":
            text, nxt = _results(msgs, i)
            out.append(text)
            opener = "\n\n" + (THINK if thinking and i > last else END_THINK)
        else:
            raise ChatFormatError(f"unknown role {role!r} at message {i}")
        i = nxt
        if opener and (i < len(msgs) or add_generation_prompt):
            out.append(opener)
    return "".join(out)


_INVOKE = re.compile(rf'<{DSML}invoke name="([^"\n]+)">\n')
_PARAM = re.compile(rf'<{DSML}parameter name="([^"\n]+)" string="(true|false)">(.*?)</{DSML}parameter>\n',
                    re.DOTALL)


def _found(text: str, pos: int) -> str:
    return repr(text[pos:pos + 40]) if pos < len(text) else "the end of the text"


def _check_no_specials(part: str, where: str) -> None:
    bad = next((s for s in SPECIALS if s in part), None)
    if bad:
        raise ChatFormatError(f"special token {bad} inside the {where}")


def _parse_parameters(text: str, pos: int, name: str) -> tuple[dict, int]:
    """The parameters of one invoke from `pos` (just after its opening tag) through its closing tag."""
    if text.startswith(f"\n{INVOKE_END}\n", pos):  # no parameters: V3.2's join leaves an empty line
        return {}, pos + len(INVOKE_END) + 2
    args: dict = {}
    while not text.startswith(f"{INVOKE_END}\n", pos):
        if pos >= len(text):
            raise ChatFormatError(f"malformed DSML: the invoke of {name} is never closed")
        p = _PARAM.match(text, pos)
        if not p:
            raise ChatFormatError(f"malformed DSML: expected a parameter of {name} or {INVOKE_END}, "
                                  f"found {_found(text, pos)}")
        key, is_str, raw = p[1], p[2], p[3]
        _check_no_specials(raw, f"value of parameter {key} of {name}")
        if key in args:
            raise ChatFormatError(f"parameter {key} given twice to {name}")
        if is_str == "true":
            args[key] = raw
        else:
            try:
                args[key] = json.loads(raw)
            except json.JSONDecodeError:
                raise ChatFormatError(f"parameter {key} of {name} is marked non-string but is not JSON: "
                                      f"{raw!r}") from None
        pos = p.end()
    return args, pos + len(INVOKE_END) + 1


def _parse_calls(text: str) -> list[dict]:
    """The tool calls in `text`, which starts just after CALLS_START; only whitespace may follow them."""
    if not text.startswith(">\n"):
        raise ChatFormatError(f"malformed function_calls tag: found {_found(text, 0)}")
    pos, calls = 2, []
    while not text.startswith(CALLS_END, pos):
        if pos >= len(text):
            raise ChatFormatError("malformed DSML: the function_calls block is never closed")
        m = _INVOKE.match(text, pos)
        if not m:
            raise ChatFormatError(f"malformed DSML: expected an invoke or {CALLS_END}, found {_found(text, pos)}")
        args, pos = _parse_parameters(text, m.end(), m[1])
        calls.append({"id": f"call_{len(calls)}", "type": "function",
                      "function": {"name": m[1], "arguments": _json(args)}})
    if not calls:
        raise ChatFormatError("a function_calls block with no invoke")
    tail = text[pos + len(CALLS_END):]
    if tail.strip():
        raise ChatFormatError(f"text after the tool calls: {tail[:40]!r}")
    return calls


def parse_completion(text: str, thinking: bool = False) -> ParsedCompletion:
    """A completion of an assistant turn -> content, reasoning, tool calls (strict)."""
    if text.endswith(EOS):
        text = text[: -len(EOS)]
    reasoning = None
    if thinking:
        reasoning, closed, text = text.partition(END_THINK)
        if not closed:
            raise ChatFormatError("thinking mode: the reasoning never ends (no </think>)")
        _check_no_specials(reasoning, "reasoning")
    content, opened, rest = text.partition(CALLS_START)
    _check_no_specials(content, "content")
    return ParsedCompletion(content, reasoning, _parse_calls(rest) if opened else [])


__all__ = ["render", "render_assistant", "render_tool_calls", "parse_completion", "drop_thinking", "tools_block",
           "ParsedCompletion", "ChatFormatError", "USER", "ASSISTANT", "THINK", "END_THINK", "DSML"]
