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
from .tokenizer import Tokenizer, train_bpe

# ~10M parameters: 20 MB in bf16, under the 25 MB a committed checkpoint may take; a 4096
# window holds the longest decision prompt (about 3k tokens with this tokenizer)
AGENT = replace(SMALL, vocab_size=4096, dim=320, n_layers=6, n_heads=8, inter_dim=864, q_lora_rank=192,
                kv_lora_rank=128, qk_nope_head_dim=32, qk_rope_head_dim=32, v_head_dim=32, index_n_heads=4,
                index_head_dim=64, index_topk=256, max_seq_len=4096, original_seq_len=4096, n_dense_layers=6)
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


def example_texts(records: list[dict]) -> list[tuple[str, str]]:
    """(prompt text, answer text) per record."""
    return [(render(r["messages"], thinking=False), answer_text(r)) for r in records]


def train_tokenizer(pairs: list[tuple[str, str]], vocab_size: int) -> Tokenizer:
    texts = [p + a for p, a in pairs]
    return train_bpe(texts, vocab_size)


def encode_examples(tok: Tokenizer, pairs, max_len: int) -> tuple[list[tuple[list[int], int]], int]:
    """([(ids, answer start)], how many were too long to keep)."""
    out, dropped = [], 0
    for prompt, answer in pairs:
        p, a = tok.encode(prompt), tok.encode(answer) + [tok.eos_id]
        if len(p) + len(a) > max_len:
            dropped += 1
            continue
        out.append((torch.tensor(p + a, dtype=torch.int32), len(p)))
    return out, dropped


class ExampleBatches:
    """Endless batches (x, y) [B, S] of whole examples, padded to the batch's longest; y is
    -100 (ignored) on padding, and on the prompt when `answers_only`."""

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
        for r, (ids, start) in enumerate(group):
            t = torch.as_tensor(ids, dtype=torch.long)
            x[r, : len(ids) - 1] = t[:-1]
            y[r, : len(ids) - 1] = t[1:]
            if self.answers_only:
                y[r, : start - 1] = -100  # position start-1 predicts the answer's first token
        if self.device is not None:
            x, y = x.to(self.device), y.to(self.device)
        return x, y


def answer_accuracy(model, examples, device, sparse: bool, n: int = 64) -> float:
    """Share of answer tokens predicted exactly (teacher-forced), on up to n examples."""
    model.eval()
    hit = total = 0
    with torch.no_grad():
        for ids, start in examples[:n]:
            ids = torch.as_tensor(ids, dtype=torch.long)
            logits, _ = model(ids[None, :-1].to(device), sparse=sparse)
            pred = logits[0, start - 1:].argmax(-1).cpu()
            want = ids[start:]
            hit += int((pred == want).sum())
            total += len(want)
    model.train()
    return hit / max(total, 1)


def prepare(records: list[dict], out: Path, cfg: ModelConfig = AGENT, seed: int = 0, log=print) -> dict:
    """Records -> `out/` with tokenizer.json (trained on them), examples.pt and meta.json:
    everything training needs, so the GPU run needs no records, schemas or tokenizer
    training."""
    if not records:
        raise ValueError("no accepted records to learn from")
    records = list(records)
    random.Random(seed).shuffle(records)
    pairs = example_texts(records)
    tok = train_tokenizer(pairs, cfg.vocab_size)
    cfg = replace(cfg, vocab_size=tok.vocab_size)
    examples, dropped = encode_examples(tok, pairs, cfg.max_seq_len)
    held = max(1, len(examples) // 20)
    lengths = sorted(len(e[0]) for e in examples)
    meta = {"config": cfg.to_dict(), "examples": len(examples) - held, "held_out": held, "dropped": dropped,
            "median_tokens": lengths[len(lengths) // 2], "max_tokens": lengths[-1],
            "decisions": {d: sum(r["decision"] == d for r in records) for d in ("data", "base", "move")}}
    out.mkdir(parents=True, exist_ok=True)
    tok.save(out / "tokenizer.json")
    torch.save({"examples": examples[held:], "held": examples[:held]}, out / "examples.pt")
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    log(f"distill: {meta['examples']} examples (+{held} held out, {dropped} too long), tokens per example median "
        f"{meta['median_tokens']}, max {meta['max_tokens']}; model {cfg.num_params() / 1e6:.1f}M parameters")
    return meta


def train_prepared(data: Path, out: Path, time_budget: float = 600.0, batch_tokens: int = 32_768,
                   device: str = "cpu", log=print, seed: int = 0) -> dict:
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
                                                           "sparse": 2e-4}[stage], warmup_steps=20, seed=seed)
        batches = ExampleBatches(examples, batch_tokens, answers_only=stage != "pretrain", pad_id=eos,
                                 seed=seed, device=device)
        hist = train(model, batches, tcfg, None, time_budget * share)
        acc = answer_accuracy(model, held, device, sparse=stage in ("warmup", "sparse"))
        metrics["stages"][stage] = {"steps": len(hist), "loss": hist[-1]["loss"], "seconds": time.time() - t0,
                                    "held_out_answer_accuracy": acc}
        log(f"distill: {stage}: {len(hist)} steps, loss {hist[-1]['loss']:.3f}, held-out answer tokens "
            f"{acc:.1%} exact, {time.time() - t0:.0f}s")
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model.cpu(), out, dtype=torch.bfloat16)
    shutil.copyfile(data / "tokenizer.json", out / "tokenizer.json")
    (out / "distill.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m envfactory.model.train distill", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", nargs="+", help="record files or directories of them (prepares DATA first)")
    ap.add_argument("--data", default=None, help="prepared data directory (written when --records is given)")
    ap.add_argument("--prepare-only", action="store_true", help="write DATA and stop (for training elsewhere)")
    ap.add_argument("--out", default=None, help="checkpoint directory to write")
    ap.add_argument("--time-budget", type=float, default=600.0, help="seconds for all stages together")
    ap.add_argument("--batch-tokens", type=int, default=32_768)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    if not args.records and not args.data:
        ap.error("give --records (and optionally --data) or a prepared --data")
    if not args.prepare_only and not args.out:
        ap.error("--out is required unless --prepare-only")
    try:
        data = Path(args.data) if args.data else Path(args.out) / "data"
        if args.records:
            from envfactory.factory.agents.distill import read_records

            prepare(read_records(args.records), data, log=lambda m: print(m, flush=True))
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
