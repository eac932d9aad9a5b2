"""Distillation: a DSA model learns the specialist's decisions from generation's records.

    python -m envfactory.model.train distill --records DIR [DIR ...] --out CKPT [--time-budget S]

Records come from `factory generate SEED --agent-option record=DIR`
(`factory/agents/distill.py`): the conversation a model agent is sent for a decision and
the specialist's answer, with the ladder's verdict. Each accepted record becomes one
example: the V3.2 rendering of the conversation (`chat_format.render`, non-thinking, with
the generation prompt), then the answer as compact JSON with its keys in the schema's
order (the order constrained decoding enforces, `constrain.py`), then EOS.

Stages, each a share of the time budget (`train.train` runs them):
1. `pretrain` (dense attention): next-token loss over whole examples, prompts included: the
   model learns the prompts' language and the numbers in them;
2. `sft` (dense): loss on the answer tokens only;
3. `warmup`: only the indexer trains, on the KL to the dense attention;
4. `sparse`: top-k attention, everything trains, answer loss plus the indexer KL.

The checkpoint directory gets `config.json`, `model.safetensors` (bf16) and the
`tokenizer.json` trained here on the records' text, so `model.serve` can load it alone.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

from .chat_format import render
from .config import SMALL, ModelConfig
from .tokenizer import EOS, Tokenizer, train_bpe

# ~10M parameters: 20 MB in bf16, under the 25 MB a committed checkpoint may take; an 8192
# window holds the longest decision prompt (about 3k tokens) and a trip task's reference
# trajectory (4k to 5.5k: the prompt and tools, 10 to 16 calls and their results, the answer)
AGENT = replace(SMALL, vocab_size=4096, dim=320, n_layers=6, n_heads=8, inter_dim=864, q_lora_rank=192,
                kv_lora_rank=128, qk_nope_head_dim=32, qk_rope_head_dim=32, v_head_dim=32, index_n_heads=4,
                index_head_dim=64, index_topk=256, max_seq_len=8192, original_seq_len=8192, n_dense_layers=6)
SHARES = {"pretrain": 0.35, "sft": 0.35, "warmup": 0.1, "sparse": 0.2}


def in_schema_order(value, schema: dict | None):
    """`value` with every object's keys in its schema's `properties` order (others after,
    in their own order); anyOf/oneOf resolved to the first branch that accepts the value."""
    import jsonschema

    if not isinstance(schema, dict):
        return value
    for key in ("anyOf", "oneOf"):
        if key in schema:
            for branch in schema[key]:
                if jsonschema.Draft202012Validator(branch).is_valid(value):
                    return in_schema_order(value, branch)
            return value
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        keys = [k for k in props if k in value] + [k for k in value if k not in props]
        return {k: in_schema_order(value[k], props.get(k, extra if isinstance(extra, dict) else None))
                for k in keys}
    if isinstance(value, list):
        return [in_schema_order(v, schema.get("items")) for v in value]
    return value


def answer_text(rec: dict) -> str:
    return json.dumps(in_schema_order(rec["answer"], rec.get("schema")), separators=(",", ":"),
                      ensure_ascii=False)


def conversation_segments(messages: list[dict], tools: list[dict] | None) -> list[tuple[str, bool]]:
    """A conversation as (text, trained) segments: every assistant turn (what the model
    writes: tool calls, the final answer, EOS) is trained; the prompt, the generation
    prompts and the tool results are not. The segments join to `render(messages, tools)`."""
    segs, done = [], ""
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        prefix = render(messages[:i], tools=tools, add_generation_prompt=True)
        full = render(messages[: i + 1], tools=tools, add_generation_prompt=False)
        if not prefix.startswith(done) or not full.startswith(prefix):
            raise ValueError(f"turn {i} does not extend the rendering of the turns before it")
        segs += [(prefix[len(done):], False), (full[len(prefix):], True)]
        done = full
    if not segs:
        raise ValueError("the conversation has no assistant turn")
    return segs


def example_segments(rec: dict) -> list[tuple[str, bool]]:
    """A record as (text, trained) segments: a decision is its rendered conversation then
    the answer (compact JSON in schema order) and EOS; a tool-use trajectory (`solve`) is
    its conversation with every assistant turn trained."""
    if rec.get("decision") == "solve":
        return conversation_segments(rec["messages"], rec.get("tools"))
    return [(render(rec["messages"], thinking=False), False), (answer_text(rec) + EOS, True)]


def train_tokenizer(examples: list[list[tuple[str, bool]]], vocab_size: int) -> Tokenizer:
    return train_bpe(["".join(t for t, _ in segs) for segs in examples], vocab_size)


def encode_examples(tok: Tokenizer, examples, max_len: int):
    """([(ids int32 [n], trained bool [n])], how many were too long to keep)."""
    out, dropped = [], 0
    for segs in examples:
        ids, mask = [], []
        for text, trained in segs:
            part = tok.encode(text)
            ids += part
            mask += [trained] * len(part)
        if len(ids) > max_len:
            dropped += 1
            continue
        out.append((torch.tensor(ids, dtype=torch.int32), torch.tensor(mask, dtype=torch.bool)))
    return out, dropped


class ExampleBatches:
    """Endless batches (x, y) [B, S] of whole examples, padded to the batch's longest; y is
    -100 (ignored) on padding, and on every untrained token when `answers_only`."""

    def __init__(self, examples, batch_tokens: int, answers_only: bool, pad_id: int, seed: int = 0,
                 device=None):
        self.ex = sorted(examples, key=lambda e: len(e[0]))  # similar lengths batch together
        self.batch_tokens, self.answers_only, self.pad = batch_tokens, answers_only, pad_id
        self.rng, self.device = random.Random(seed), device

    def __iter__(self):
        return self

    def __next__(self):
        i = self.rng.randrange(len(self.ex))
        longest = len(self.ex[i][0])
        n = max(1, self.batch_tokens // longest)
        group = self.ex[max(0, i - n + 1): i + 1]
        S = max(len(ids) for ids, _ in group) - 1
        x = torch.full((len(group), S), self.pad, dtype=torch.long)
        y = torch.full((len(group), S), -100, dtype=torch.long)
        for r, (ids, trained) in enumerate(group):
            t = torch.as_tensor(ids, dtype=torch.long)
            x[r, : len(ids) - 1] = t[:-1]
            # position j predicts token j + 1
            y[r, : len(ids) - 1] = torch.where(trained[1:], t[1:], -100) if self.answers_only else t[1:]
        if self.device is not None:
            x, y = x.to(self.device), y.to(self.device)
        return x, y


def answer_accuracy(model, examples, device, sparse: bool, n: int = 64) -> float:
    """Share of trained tokens (answers, tool calls) predicted exactly, teacher-forced, on up
    to n examples."""
    model.eval()
    hit = total = 0
    with torch.no_grad():
        for ids, trained in examples[:n]:
            ids = torch.as_tensor(ids, dtype=torch.long)
            logits, _ = model(ids[None, :-1].to(device), sparse=sparse)
            pred = logits[0].argmax(-1).cpu()
            sel = trained[1:]
            hit += int((pred[sel] == ids[1:][sel]).sum())
            total += int(sel.sum())
    model.train()
    return hit / max(total, 1)


def prepare(records: list[dict], out: Path, cfg: ModelConfig = AGENT, seed: int = 0, log=print) -> dict:
    """Records -> `out/` with tokenizer.json (trained on them), examples.pt and meta.json:
    everything training needs, so the GPU run needs no records, schemas or tokenizer
    training. 5% of each kind (decisions, tool-use trajectories) is held out."""
    if not records:
        raise ValueError("no accepted records to learn from")
    records = list(records)
    random.Random(seed).shuffle(records)
    kinds = {"decision": [r for r in records if r.get("decision") != "solve"],
             "solve": [r for r in records if r.get("decision") == "solve"]}
    segs = {k: [example_segments(r) for r in rs] for k, rs in kinds.items()}
    tok = train_tokenizer(segs["decision"] + segs["solve"], cfg.vocab_size)
    cfg = replace(cfg, vocab_size=tok.vocab_size)
    train_ex, held, dropped, lengths = [], {}, 0, []
    for k, ss in segs.items():
        ex, d = encode_examples(tok, ss, cfg.max_seq_len)
        dropped += d
        n_held = max(1, len(ex) // 20) if ex else 0
        held[k] = ex[:n_held]
        train_ex += ex[n_held:]
        lengths += [len(e[0]) for e in ex]
    if not train_ex:
        raise ValueError("every example is longer than the model's window")
    lengths.sort()
    meta = {"config": cfg.to_dict(), "examples": len(train_ex), "held_out": {k: len(v) for k, v in held.items()},
            "dropped": dropped, "median_tokens": lengths[len(lengths) // 2], "max_tokens": lengths[-1],
            "decisions": {d: sum(r.get("decision") == d for r in records) for d in ("data", "base", "move", "solve")}}
    out.mkdir(parents=True, exist_ok=True)
    tok.save(out / "tokenizer.json")
    if tok.vocab_size <= 1 << 15:  # int16 ids: the prepared data travels to the GPU machine
        train_ex = [(ids.to(torch.int16), m) for ids, m in train_ex]
        held = {k: [(ids.to(torch.int16), m) for ids, m in v] for k, v in held.items()}
    torch.save({"examples": train_ex, "held": held}, out / "examples.pt")
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    log(f"distill: {meta['examples']} examples ({meta['decisions']}; held out {meta['held_out']}, {dropped} too "
        f"long), tokens per example median {meta['median_tokens']}, max {meta['max_tokens']}; model "
        f"{cfg.num_params() / 1e6:.1f}M parameters")
    return meta


def train_prepared(data: Path, out: Path, time_budget: float = 600.0, batch_tokens: int = 32_768,
                   device: str = "cpu", log=print, seed: int = 0, warmup_steps: int = 20) -> dict:
    """Train on `prepare`'s output; writes the checkpoint directory; returns metrics."""
    import shutil

    from .checkpoint import save_checkpoint
    from .train import TrainConfig, train
    from .transformer import Transformer

    meta = json.loads((data / "meta.json").read_text())
    blob = torch.load(data / "examples.pt")
    examples, held = blob["examples"], blob["held"]
    known = {f.name for f in fields(ModelConfig)}
    cfg = ModelConfig(**{k: v for k, v in meta["config"].items() if k in known})
    eos = Tokenizer.from_file(data / "tokenizer.json").eos_id
    torch.manual_seed(seed)
    model = Transformer(cfg).to(device)
    metrics = dict(meta, stages={})
    for stage, share in SHARES.items():
        t0 = time.time()
        base = "pretrain" if stage == "sft" else stage
        tcfg = TrainConfig(stage=base, steps=100_000, lr={"pretrain": 1e-3, "sft": 5e-4, "warmup": 1e-3,
                                                           "sparse": 2e-4}[stage], warmup_steps=warmup_steps, seed=seed)
        batches = ExampleBatches(examples, batch_tokens, answers_only=stage != "pretrain", pad_id=eos,
                                 seed=seed, device=device)
        hist = train(model, batches, tcfg, None, time_budget * share)
        acc = {k: answer_accuracy(model, ex, device, sparse=stage in ("warmup", "sparse"))
               for k, ex in held.items() if ex}
        metrics["stages"][stage] = {"steps": len(hist), "loss": hist[-1]["loss"], "seconds": time.time() - t0,
                                    "held_out_answer_accuracy": acc}
        log(f"distill: {stage}: {len(hist)} steps, loss {hist[-1]['loss']:.3f}, held-out trained tokens exact: "
            + ", ".join(f"{k} {v:.1%}" for k, v in acc.items()) + f", {time.time() - t0:.0f}s")
    out.mkdir(parents=True, exist_ok=True)
    # shards under 15 MB: the files travel back from the GPU machine and into git one by one
    save_checkpoint(model.cpu(), out, dtype=torch.bfloat16, max_shard_bytes=15_000_000)
    shutil.copyfile(data / "tokenizer.json", out / "tokenizer.json")
    (out / "distill.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m envfactory.model.train distill", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", nargs="+", help="record files or directories of them (prepares DATA first)")
    ap.add_argument("--bundles", nargs="+", default=[],
                    help="bundles whose tasks become tool-use trajectories (reference calls replayed)")
    ap.add_argument("--data", default=None, help="prepared data directory (written when --records is given)")
    ap.add_argument("--prepare-only", action="store_true", help="write DATA and stop (for training elsewhere)")
    ap.add_argument("--out", default=None, help="checkpoint directory to write")
    ap.add_argument("--time-budget", type=float, default=600.0, help="seconds for all stages together")
    ap.add_argument("--batch-tokens", type=int, default=32_768)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    if not args.records and not args.bundles and not args.data:
        ap.error("give --records and/or --bundles (and optionally --data) or a prepared --data")
    if not args.prepare_only and not args.out:
        ap.error("--out is required unless --prepare-only")
    try:
        data = Path(args.data) if args.data else Path(args.out) / "data"
        if args.records or args.bundles:
            from envfactory.factory.agents.distill import read_records, solve_records
            from envfactory.factory.solve import _env_dirs

            records = read_records(args.records or [])
            for b in args.bundles:
                for env in _env_dirs(Path(b)):
                    records += solve_records(env)
            prepare(records, data, log=lambda m: print(m, flush=True))
        if args.prepare_only:
            return 0
        train_prepared(data, Path(args.out), args.time_budget, args.batch_tokens, args.device,
                       log=lambda m: print(m, flush=True))
    except (OSError, ValueError, KeyError) as e:
        print(f"distill: error: {e}", file=sys.stderr)
        return 1
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
