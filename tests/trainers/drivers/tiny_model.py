"""A tiny chat model built locally, for trainer tests that must run a real model on CPU.

    python tiny_model.py OUT_DIR [--corpus FILE ...] [--seed N] [--sft FILE [--steps N]]

Nothing comes from a hub. What it writes into OUT_DIR, loadable with `from_pretrained`:

- a byte-level BPE tokenizer trained here with `tokenizers` on the corpus files plus a
  built-in text of JSON and tool-call punctuation (byte-level, so any text encodes);
  special tokens `<|endoftext|>` (pad), `<|im_start|>`, `<|im_end|>` (eos, end of turn) and
  the atomic but non-special `<tool_call>`, `</tool_call>`, `<tool_response>`,
  `</tool_response>`, `<think>`, `</think>` (kept by `decode(skip_special_tokens=True)`, as
  Qwen's tokenizers keep them, so tool-call parsers see them);
- a ChatML chat template written here (`CHAT_TEMPLATE`): `tools` listed in the system turn,
  assistant `tool_calls` as hermes `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
  blocks, consecutive `tool` messages as `<tool_response>` blocks in one user turn,
  `add_generation_prompt`, content given as a string or as text parts, assistant turns inside
  `{% generation %}` markers (assistant-token masks). It is prefix-preserving: a conversation
  renders as a prefix of any longer one. With transformers >= 5.13 the tokenizer also carries
  a `response_template` (RESPONSE_TEMPLATE) so `parse_response` splits out the tool calls;
- a Qwen2 causal LM of 2 layers, hidden size 64 (about 0.4M parameters with a 4K vocabulary),
  randomly initialised from `--seed`, context 32768 positions (tool outputs are long).

`--sft FILE` (JSON lines of {"messages": [...], "tools": [schemas]}) then trains the model for
`--steps` AdamW steps on those conversations, loss on assistant tokens only: how a test makes
a random model emit a real tool call, by teaching it one task's reference trajectory.

Works with transformers 5.10 (verl's pin, < 5.11) and 5.24 (TRL 1.16's venv). Prints one JSON
line: {"out", "vocab_size", "parameters", "sft_loss": [first, last] or null}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL = (PAD, IM_START, IM_END)
MARKUP = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>")
VOCAB_SIZE = 4096
MAX_POSITIONS = 32768
# `AutoTokenizer` loads a tokenizer beside a qwen2 config as `Qwen2Tokenizer`, which rebuilds
# the pre-tokenizer (this split pattern, then byte-level) and an NFC normalizer whatever
# tokenizer.json says (transformers 5.x models/qwen2/tokenization_qwen2.py). Training with the
# same two keeps one tokenization however the directory is loaded; `build` checks it.
SPLIT_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                 r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

# Text the tokenizer always sees besides the corpus, so JSON and tool-call framing get merges
# of their own even when the corpus lacks them.
BASE_TEXT = """{"name": "tool", "arguments": {}} {"results": [], "error": null} {"type": "function"}
{"type": "object", "properties": {}, "required": []} "string" "integer" "number" "boolean"
[{"id": 1, "value": 2.5}, {"id": "a", "ok": true, "none": null}] ": " ", " "}, {" "]}" 0123456789
system user assistant tool You are a helpful assistant. # Tools <tools></tools> function description parameters
"""

# ChatML, hermes tool calls. `tojson` keeps key order (transformers' filter does not sort).
CHAT_TEMPLATE = """\
{%- macro text(content) -%}
{%- if content is string -%}{{ content }}
{%- elif content is iterable -%}{% for part in content %}{% if part.type == 'text' %}{{ part.text }}{% endif %}{% endfor %}
{%- endif -%}
{%- endmacro -%}
{%- set first_is_system = messages and messages[0].role == 'system' -%}
{%- if tools -%}
{{ '<|im_start|>system\\n' }}{% if first_is_system %}{{ text(messages[0].content) }}{{ '\\n\\n' }}{% endif -%}
{{ '# Tools\\n\\nYou may call functions. Their signatures are in <tools></tools>:\\n<tools>' }}
{%- for tool in tools %}{{ '\\n' }}{{ tool | tojson }}{% endfor -%}
{{ '\\n</tools>\\n\\nCall one by answering <tool_call>{"name": <name>, "arguments": <object>}</tool_call>.<|im_end|>\\n' }}
{%- elif first_is_system -%}
{{ '<|im_start|>system\\n' }}{{ text(messages[0].content) }}{{ '<|im_end|>\\n' }}
{%- endif -%}
{%- for message in messages -%}
{%- if message.role == 'system' and loop.first -%}
{%- elif message.role == 'assistant' -%}
{{ '<|im_start|>assistant\\n' }}{% generation %}{{ text(message.content) }}
{%- for call in message.tool_calls or [] -%}
{%- set fn = call.function if call.function is defined else call -%}
{{ '<tool_call>\\n{"name": "' }}{{ fn.name }}{{ '", "arguments": ' }}
{%- if fn.arguments is string %}{{ fn.arguments }}{% else %}{{ fn.arguments | tojson }}{% endif -%}
{{ '}\\n</tool_call>' }}
{%- endfor -%}
{{ '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}
{%- elif message.role == 'tool' -%}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{ '<|im_start|>user' }}{% endif -%}
{{ '\\n<tool_response>\\n' }}{{ text(message.content) }}{{ '\\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{ '<|im_end|>\\n' }}{% endif -%}
{%- else -%}
{{ '<|im_start|>' }}{{ message.role }}{{ '\\n' }}{{ text(message.content) }}{{ '<|im_end|>\\n' }}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif -%}
"""


# How transformers (>= 5.13, `tokenizer.parse_response`) splits a generated assistant turn of
# CHAT_TEMPLATE into content and hermes tool calls; saved in tokenizer_config.json. Trainers
# that parse tool calls through transformers (TRL) need it for a template they do not know.
RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {"open": "<tool_call>", "close_pattern": r"</tool_call>\s*", "repeats": True,
                       "content": "json", "transform": {"type": "function", "function": "{content}"}},
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}


def train_tokenizer(texts: list[str]):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `texts`, with the chat template."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=list(SPECIAL),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([BASE_TEXT, *texts], trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKUP])
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=IM_END, pad_token=PAD, unk_token=None,
                                  bos_token=None, chat_template=CHAT_TEMPLATE, model_max_length=MAX_POSITIONS)
    if hasattr(out, "response_template"):  # transformers >= 5.13; older ones have no such parser
        out.response_template = RESPONSE_TEMPLATE
    return out


def build_model(tokenizer, seed: int):
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    eos, pad = tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(PAD)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
                         tie_word_embeddings=True, bos_token_id=None, eos_token_id=eos, pad_token_id=pad)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, bos_token_id=None)
    return model


def sft(model, tokenizer, conversations: list[dict], steps: int, lr: float = 3e-3) -> list[float]:
    """Train on the assistant tokens of `conversations` (full batch: they are few). Returns the
    first and last loss."""
    import torch

    rows = [tokenizer.apply_chat_template(c["messages"], tools=c.get("tools") or None, tokenize=True,
                                          return_dict=True, return_assistant_tokens_mask=True)
            for c in conversations]
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        if not any(r["assistant_masks"]):
            raise ValueError("an SFT conversation has no assistant turn")
        ids[i, :n] = torch.tensor(r["input_ids"])
        attention[i, :n] = 1
        mask = torch.tensor(r["assistant_masks"], dtype=torch.bool)
        labels[i, :n] = torch.where(mask, ids[i, :n], torch.tensor(-100))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return [losses[0], losses[-1]] if losses else []


def build(out: Path, corpus: list[Path] = (), seed: int = 0, sft_file: Path | None = None, steps: int = 300) -> dict:
    texts = [p.read_text(encoding="utf-8") for p in corpus]
    conversations = []
    if sft_file is not None:
        conversations = [json.loads(l) for l in sft_file.read_text(encoding="utf-8").splitlines() if l.strip()]
        texts += [json.dumps(c, ensure_ascii=False) for c in conversations]
    from transformers import AutoTokenizer

    trained = train_tokenizer(texts)
    model = build_model(trained, seed)
    out.mkdir(parents=True, exist_ok=True)
    trained.save_pretrained(out)
    model.config.save_pretrained(out)  # AutoTokenizer reads the model type from config.json
    tokenizer = AutoTokenizer.from_pretrained(out)  # what trainers will load
    probe = BASE_TEXT + "".join(texts[:3]) + CHAT_TEMPLATE + " Ünïcode\r\n\t x"
    if tokenizer(probe)["input_ids"] != trained(probe)["input_ids"]:
        raise RuntimeError(f"{type(tokenizer).__name__} from {out} tokenizes differently from the trained tokenizer")
    losses = sft(model, tokenizer, conversations, steps) if conversations else None
    model.save_pretrained(out)
    return {"out": str(out), "vocab_size": len(tokenizer),
            "parameters": sum(p.numel() for p in model.parameters()), "sft_loss": losses}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--corpus", type=Path, nargs="*", default=[])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sft", type=Path, default=None, help="JSON lines of {messages, tools} to train on")
    ap.add_argument("--steps", type=int, default=300)
    a = ap.parse_args(argv)
    print(json.dumps(build(a.out, a.corpus, a.seed, a.sft, a.steps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
