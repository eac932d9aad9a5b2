"""Constrained decoding: a token mask per step that keeps a completion inside a grammar.

Token ids in, allowed token ids out. A `Constraint` follows one sequence: `allowed()` gives a
bool mask over the vocabulary for the next token, `advance(token)` moves it on, and `done`
says the grammar has ended (its EOS was consumed). The engine applies the mask to the
logits before sampling, so whatever the weights are, random ones included, the text parses.

`completion_lark` writes the grammar of one V3.2 assistant completion (`chat_format.py`):
optional reasoning then `</think>` in thinking mode, then a structured decision (JSON that a
JSON Schema accepts, compact), or DSML tool calls whose names are the offered tools and
whose parameters follow each tool's JSON Schema, or plain content; never a stray special
token.

Backend: llguidance. Chosen over xgrammar and outlines-core because it
- has no Python dependencies (xgrammar's wheel pulls transformers, triton and a TVM FFI;
  outlines-core's index is built per regex ahead of time, slow for large JSON schemas);
- reads our `tokenizer.json` directly, special tokens included, so the grammar can name the
  DSML and EOS tokens by id (`<[id]>`): the model emits the same ids it was trained on,
  never the same text spelled in bytes;
- computes a mask lazily per step (Earley parser over a lexer), tens of microseconds per
  token at our vocabulary sizes, so no ahead-of-time compilation per request.

What a grammar cannot say (numeric bounds are kept; some formats, cross-field rules) is
still checked by whoever reads the output: constrained output parses, it is not trusted.
"""

from __future__ import annotations

import json

import torch
from llguidance import LLMatcher, LLTokenizer

from .tokenizer import Tokenizer

DSML = "｜DSML｜"
_BIT = torch.arange(32, dtype=torch.int32)


class ConstraintError(ValueError):
    """A grammar that does not compile, or a token the grammar refused."""


def ll_tokenizer(tok: Tokenizer) -> LLTokenizer:
    """The llguidance view of our tokenizer, built once per tokenizer (it walks the vocabulary)."""
    lt = getattr(tok, "_llg", None)
    if lt is None:
        lt = tok._llg = LLTokenizer(tok.tok.to_str(), eos_token=tok.eos_id)
    return lt


MAX_STRING = 120   # characters, for a string the schema leaves unbounded
MAX_ITEMS = 16     # items, for an unbounded array
MAX_CALLS = 4      # tool calls in one reply: bounded for the same reason


def bounded(schema, max_string: int = MAX_STRING, max_items: int = MAX_ITEMS):
    """A copy of `schema` whose strings and arrays have an upper bound.

    An unbounded string under random or weak weights rarely closes (a quote is a few tokens
    of thousands), so the output would hit max_tokens and not parse; with every string and
    array bounded, a finite-depth schema has a finite longest output.
    """
    if isinstance(schema, list):
        return [bounded(s, max_string, max_items) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bounded(v, max_string, max_items) if k not in ("enum", "const", "default", "examples") else v
           for k, v in schema.items()}
    types = schema.get("type")
    types = types if isinstance(types, list) else [types]
    if "string" in types and "maxLength" not in schema and not any(k in schema for k in ("enum", "const", "pattern")):
        out["maxLength"] = max_string
    if "array" in types and "maxItems" not in schema:
        out["maxItems"] = max(max_items, schema.get("minItems", 0))
    return out


def _json_sub(schema: dict) -> str:
    s = bounded(dict(schema))
    s.setdefault("x-guidance", {"whitespace_flexible": False})
    return "%json " + json.dumps(s, ensure_ascii=False)


def _special(tok: Tokenizer, text: str) -> str:
    tid = tok.tok.token_to_id(text)
    if tid is None:
        raise ConstraintError(f"the tokenizer has no {text} token")
    return f"<[{tid}]>"


def _param_rule(name: str, schema: dict, d: str) -> str:
    """One `<｜DSML｜parameter ...>VALUE</｜DSML｜parameter>` line in Lark."""
    head = f'"<" {d} "parameter name=\\"{name}\\" string='
    tail = f'"</" {d} "parameter>\\n"'
    if schema.get("type") == "string" and not any(k in schema for k in ("enum", "const")):
        # a raw string: V3.2 writes it unquoted, so it cannot hold the closing tag's "<"
        n = schema.get("maxLength", MAX_STRING)
        return f'{head}\\"true\\">" /[^<｜]{{0,{n}}}/ {tail}'
    return f'{head}\\"false\\">" {_json_sub(schema)} {tail}'


def _tool_rules(tools: list[dict], d: str) -> list[str]:
    invokes, rules = [], []
    for i, t in enumerate(tools):
        fn = t.get("function", t) if isinstance(t, dict) else {}
        name = fn.get("name")
        if not isinstance(name, str) or not name or '"' in name or "<" in name:
            raise ConstraintError(f"tool {i}: a name is required and may not contain '\"' or '<'")
        params = fn.get("parameters") or {}
        props = params.get("properties") or {}
        required = set(params.get("required") or [])
        names = []
        for j, (pname, pschema) in enumerate(props.items()):
            rules.append(f"p{i}_{j}: {_param_rule(pname, pschema or {}, d)}")
            names.append((f"p{i}_{j}", pname in required))
        if any(req for _, req in names):
            body = " ".join(n + ("" if req else "?") for n, req in names)
        else:  # no parameter required: some first one, or none (V3.2 then leaves a blank line)
            body = " | ".join(['"\\n"'] + [" ".join([names[j][0]] + [n + "?" for n, _ in names[j + 1:]])
                                            for j in range(len(names))])
            body = f"( {body} )"
        rules.append(f'inv{i}: "<" {d} "invoke name=\\"{name}\\">\\n" {body} "</" {d} "invoke>\\n"')
        invokes.append(f"inv{i}")
    if not invokes:
        raise ConstraintError("no tools to call")
    more = " invoke?" * (MAX_CALLS - 1)
    return [f'calls: {d} "function_calls>\\n" invoke{more} "</" {d} "function_calls>"',
            f"invoke: {' | '.join(invokes)}", *rules]


def completion_lark(tok: Tokenizer, *, schema: dict | None = None, tools: list[dict] | None = None,
                    require_tool: bool = False, thinking: bool = False, max_reasoning: int = 2000) -> str:
    """The grammar of one V3.2 assistant completion (what follows the generation prompt),
    in Lark:

    - thinking: first the reasoning (no special tokens, at most `max_reasoning` characters),
      then the `</think>` token;
    - then, with `schema`: JSON that the schema accepts; with `tools`: plain content, or
      content then tool calls (tool calls only if `require_tool`) whose names are the
      offered tools' and whose parameters follow each tool's schema, in the schema's order;
      otherwise plain content without special tokens.

    Special tokens are named by id (`<[id]>`), never spelled in bytes.
    """
    head = f"REASON {_special(tok, '</think>')} " if thinking else ""
    lines = [f"REASON: /[^｜]{{0,{max_reasoning}}}/"] if thinking else []
    if schema is not None:
        lines.insert(0, f"start: {head}{_json_sub(schema)}")
    elif tools is not None:
        d = _special(tok, DSML)
        if require_tool:
            lines.insert(0, f'start: {head}"\\n\\n<" calls')
        else:
            lines.insert(0, f"start: {head}PLAIN | {head}LEAD calls")
            lines += ["PLAIN: /[^｜]*/", "LEAD: /[^｜]*\\n\\n</"]
        lines += _tool_rules(tools, d)
    else:
        lines.insert(0, f"start: {head}PLAIN")
        lines.append("PLAIN: /[^｜]*/")
    return "\n".join(lines)


def compile_lark(lark: str) -> str:
    try:
        return LLMatcher.grammar_from_lark(lark)
    except Exception as e:  # llguidance raises ValueError or RuntimeError by case
        raise ConstraintError(f"grammar does not compile: {e}") from None


class Constraint:
    """One sequence's grammar state: mask, advance, done."""

    def __init__(self, tok: Tokenizer, grammar: str):
        """grammar: llguidance's compiled form (`compile_lark`)."""
        self.vocab = tok.vocab_size
        self._m = LLMatcher(ll_tokenizer(tok), grammar)
        if self._m.is_error():
            raise ConstraintError(f"grammar does not compile: {self._m.get_error()}")
        self._bits = torch.zeros((self.vocab + 31) // 32, dtype=torch.int32)

    @classmethod
    def completion(cls, tok: Tokenizer, **how) -> Constraint:
        """The grammar of `completion_lark(tok, **how)`."""
        return cls(tok, compile_lark(completion_lark(tok, **how)))

    @classmethod
    def json(cls, tok: Tokenizer, schema: dict) -> Constraint:
        return cls.completion(tok, schema=schema)

    @classmethod
    def tool_calls(cls, tok: Tokenizer, tools: list[dict], require: bool = False) -> Constraint:
        return cls.completion(tok, tools=tools, require_tool=require)

    @property
    def done(self) -> bool:
        return self._m.is_stopped()

    def allowed(self) -> torch.Tensor:
        """bool [vocab]: the tokens the grammar accepts next."""
        self._m.unsafe_compute_mask_ptr(self._bits.data_ptr(), self._bits.numel() * 4)
        bits = (self._bits.repeat_interleave(32) >> _BIT.repeat(self._bits.numel())) & 1
        return bits[: self.vocab].bool()

    def advance(self, token: int) -> None:
        if not self._m.consume_token(int(token)):
            raise ConstraintError(f"token {token} refused: {self._m.get_error()}")


def mask_logits(logits: torch.Tensor, constraints: list[Constraint | None]) -> torch.Tensor:
    """logits [B, V] with each constrained row's refused tokens set to -inf (in place)."""
    for i, c in enumerate(constraints):
        if c is not None and not c.done:
            allowed = c.allowed().to(logits.device)
            row = logits[i, : allowed.shape[0]]
            row.masked_fill_(~allowed, float("-inf"))
            if logits.shape[1] > allowed.shape[0]:  # padded vocabulary rows are never real tokens
                logits[i, allowed.shape[0]:] = float("-inf")
    return logits


__all__ = ["Constraint", "ConstraintError", "bounded", "completion_lark", "compile_lark", "mask_logits",
           "ll_tokenizer"]
