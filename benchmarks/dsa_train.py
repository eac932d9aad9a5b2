r"""The three DSA training stages end to end, with the two figures issue 5 asks for.

    # once, on any machine: BPE tokenizer + token streams of the local Python stdlib
    # (plus, for training only, installed packages' sources)
    .venv/bin/python benchmarks/dsa_train.py prepare --out .dsa_data \
        --extra .venv/lib/python3.11/site-packages --extra-bytes 40000000
    # on the GPU (time budgets in seconds per stage; steps are ceilings)
    python3 benchmarks/dsa_train.py run --data .dsa_data --preset small --seq-len 1024 \
        --pretrain-s 140 --warmup-s 55 --sparse-s 60 --pretrain-lr 1.5e-3 --warmup-lr 2e-3 \
        --control --json benchmarks/results/dsa_train_h200.json

Stages (model/train.py): pretrain (dense attention, indexer frozen) -> warmup (indexer only,
KL to the head-summed L1-normalised dense attention) -> sparse (top-k attention, all
parameters, indexer on detached inputs with the KL restricted to the selected set).

Reported:
- dense val loss of the pre-trained model (full causal attention);
- after the warm-up, the indexer's recall@k of the dense attention's top-k at each context
  and k asked for (`model/evaluate.py` defines it; queries that see <= k keys are excluded
  from `recall`, counted as 1 in `recall_all`), with a sliding-window baseline;
- after the sparse stage, val loss with top-k attention (masked-dense and gather paths),
  and its relative gap to the dense model's;
- with --control, the dense model trained further for the sparse stage's steps at the same
  learning rate on the same batches, so the comparison does not favour the sparse model
  for its extra training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envfactory.model.config import get_config
from envfactory.model.data import (
    TokenBatches,
    corpus_files,
    read_texts,
    split_files,
    tokenize_texts,
)
from envfactory.model.evaluate import indexer_recall, val_loss, val_windows
from envfactory.model.fp8 import act_quant, fp8_index
from envfactory.model.tokenizer import train_bpe
from envfactory.model.train import TrainConfig, train
from envfactory.model.transformer import Transformer


# ---------------------------------------------------------------------------------------
# prepare: tokenizer and token streams (CPU, once)
# ---------------------------------------------------------------------------------------
def prepare(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = corpus_files(args.corpus)
    train_files, val_files = split_files(files)
    extra = []
    if args.extra:  # more code for training only: whole files, in a stable hashed order
        import hashlib
        cand = [f for f in corpus_files(args.extra) if f.suffix == ".py"
                and f.stat().st_size <= args.extra_max_file and "test" not in f.name]
        cand.sort(key=lambda f: hashlib.sha256(str(f.relative_to(args.extra)).encode()).digest())
        total = 0
        for f in cand:
            if total >= args.extra_bytes:
                break
            extra.append(f)
            total += f.stat().st_size
        train_files = train_files + extra
    t0 = time.time()
    tok = train_bpe(read_texts(train_files, args.max_bytes), args.vocab_size)  # train split only
    tok.save(out / "tokenizer.json")
    t1 = time.time()
    meta = {"corpus": args.corpus, "extra": str(args.extra) if args.extra else None,
            "extra_files": len(extra), "python": platform.python_version(),
            "vocab_size": tok.vocab_size, "tokenizer_s": round(t1 - t0, 1)}
    for name, fs in (("train", train_files), ("val", val_files)):
        texts = list(read_texts(fs, args.max_bytes))
        toks = tokenize_texts(tok, texts, tok.eos_id)
        dtype = np.uint16 if tok.vocab_size <= 65536 else np.uint32
        np.savez_compressed(out / f"{name}.npz", tokens=toks.astype(dtype))
        meta[name] = {"files": len(texts), "chars": sum(len(t) for t in texts), "tokens": len(toks)}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps(meta, indent=1))
    return 0


# ---------------------------------------------------------------------------------------
# run: the three stages and the evaluations
# ---------------------------------------------------------------------------------------
def parse_recall(spec: str) -> tuple[int, list[int]]:
    """'512:64,128,256' -> (512, [64, 128, 256])."""
    ctx, ks = spec.split(":")
    return int(ctx), [int(k) for k in ks.split(",")]


def fp8_cuda_check(device) -> dict:
    """On a GPU of capability >= 8.9, fp8_index runs on tensor cores (torch._scaled_mm):
    compare it with the same formula on dequantised values in float64."""
    if device.type != "cuda":
        return {"skipped": "cpu"}
    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(2, 64, 8, 64, generator=g).to(device)
    k = torch.randn(2, 128, 64, generator=g).to(device)
    w = torch.randn(2, 64, 8, generator=g).to(device)
    q8, qs = act_quant(q, 64)
    k8, ks = act_quant(k, 64)
    got = fp8_index(q8, qs.squeeze(-1), k8, ks.squeeze(-1), w)
    qd = q8.double() * qs.double()
    kd = k8.double() * ks.double()
    ref = torch.einsum("bshd,btd->bsht", qd, kd).relu()
    ref = torch.einsum("bsht,bsh->bst", ref, w.double())
    err = ((got.double() - ref).norm() / ref.norm()).item()
    cap = torch.cuda.get_device_capability(device)
    return {"capability": f"{cap[0]}.{cap[1]}", "rel_err_vs_float64": err}


class Run:
    def __init__(self, args):
        self.args = args
        self.t0 = time.time()
        self.result: dict = {"args": vars(args), "stages": {}, "eval": {}}
        self.paths = [Path(args.json)]
        if os.environ.get("OUT"):
            self.paths.append(Path(os.environ["OUT"]) / Path(args.json).name)

    def save(self) -> None:
        self.result["elapsed_s"] = round(time.time() - self.t0, 1)
        for p in self.paths:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(self.result, indent=1))

    def log(self, msg: str) -> None:
        print(f"[{time.time() - self.t0:6.1f}s] {msg}", flush=True)


def run_stage(run: Run, name: str, model, tokens, stage: str, seed: int, budget: float | None,
              steps: int, lr: float | None = None) -> dict:
    a = run.args
    tcfg = TrainConfig(stage=stage, steps=steps, batch_size=a.batch_size, seq_len=a.seq_len,
                       lr=lr, warmup_steps=a.warmup_steps, seed=seed)
    batches = TokenBatches(tokens, a.batch_size, a.seq_len, seed, None)

    def log(m):
        if m["step"] % a.log_every == 0:
            shown = " ".join(f"{k} {v:.4g}" for k, v in m.items() if k not in ("step", "grad_norm"))
            run.log(f"{name} step {m['step']:5d} | {shown}")

    t = time.time()
    hist = train(model, batches, tcfg, log, budget)
    secs = time.time() - t
    key = "lm" if stage != "warmup" else "kl"
    head = [h[key] for h in hist[:10]]
    tail = [h[key] for h in hist[-10:]]
    info = {"stage": stage, "steps": len(hist), "tokens": len(hist) * a.batch_size * a.seq_len,
            "seconds": round(secs, 1), "lr": tcfg.learning_rate,
            f"{key}_first10": float(np.mean(head)), f"{key}_last10": float(np.mean(tail))}
    if stage == "sparse":
        info["kl_last10"] = float(np.mean([h["kl"] for h in hist[-10:]]))
    run.result["stages"][name] = info
    run.log(f"{name}: {info}")
    run.save()
    return info


def with_impl(model: Transformer, impl: str) -> Transformer:
    """The same weights under another attn_impl."""
    other = Transformer(replace(model.cfg, attn_impl=impl)).to(next(model.parameters()).device)
    other.load_state_dict(model.state_dict())
    return other


def recall_after_warmup(run: Run, model, val_tokens, recalls) -> None:
    a, ev = run.args, run.result["eval"]
    for ctx, ks in recalls:
        win = val_windows(val_tokens, ctx, a.recall_windows)[:, :-1]
        r = indexer_recall(model, win, ks, batch_size=a.eval_batch)
        ev["recall_after_warmup"][str(ctx)] = {str(k): v for k, v in r.items()}
        for k, v in r.items():
            run.log(f"recall@{k} ctx {ctx}: {v['recall']:.4f} (all queries {v['recall_all']:.4f}, "
                    f"mass {v['mass']:.4f}, window baseline {v['local_recall']:.4f})")
        run.save()


def run_all(args) -> int:
    run = Run(args)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 attention einsums on tensor cores
        torch.backends.cudnn.allow_tf32 = True
        run.result["gpu"] = torch.cuda.get_device_name(device)
    run.result["torch"] = torch.__version__
    data = Path(args.data)
    meta = json.loads((data / "meta.json").read_text())
    train_tokens = np.load(data / "train.npz")["tokens"]
    val_tokens = np.load(data / "val.npz")["tokens"]
    run.result["corpus"] = meta
    cfg = get_config(args.preset, vocab_size=meta["vocab_size"], attn_impl="dense")
    recalls = [parse_recall(s) for s in args.recall]
    for ctx, ks in recalls:
        if ctx > cfg.max_seq_len:
            raise SystemExit(f"recall context {ctx} exceeds max_seq_len {cfg.max_seq_len}")
    run.result["config"] = cfg.to_dict()
    run.result["params"] = cfg.num_params()
    run.log(f"{args.preset}: {cfg.num_params():,} params, index_topk {cfg.index_topk}; "
            f"train {len(train_tokens):,} tokens, val {len(val_tokens):,} tokens; {run.result.get('gpu', 'cpu')}")
    try:
        run.result["fp8_check"] = fp8_cuda_check(device)
    except Exception as e:  # noqa: BLE001 - a check, not the run: record and go on
        run.result["fp8_check"] = {"error": repr(e)}
    run.log(f"fp8 check: {run.result['fp8_check']}")

    val = val_windows(val_tokens, args.seq_len, args.val_windows)
    short_ctx = recalls[0][0] if recalls[0][0] < args.seq_len else None
    val_short = val_windows(val_tokens, short_ctx, args.val_windows) if short_ctx else None

    def short_loss(m, sparse):  # also at the first recall context (k of fewer keys)
        return val_loss(m, val_short, sparse=sparse, batch_size=args.eval_batch) if short_ctx else None

    run.result["eval"]["val_tokens_scored"] = int(val[:, 1:].numel())
    model = Transformer(cfg).to(device)

    # 1. dense pre-training
    run_stage(run, "pretrain", model, train_tokens, "pretrain", args.seed, args.pretrain_s,
              args.max_steps, args.pretrain_lr)
    ev = run.result["eval"]
    ev["dense_val_loss"] = val_loss(model, val, sparse=False, batch_size=args.eval_batch)
    ev["short_context"] = short_ctx
    ev["dense_val_loss_short"] = short_loss(model, False)
    run.log(f"dense val loss {ev['dense_val_loss']:.4f} (context {short_ctx}: {ev['dense_val_loss_short']})")
    pretrained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    run.save()

    # 2. indexer warm-up, then recall@k and top-k val loss before any sparse training
    run_stage(run, "warmup", model, train_tokens, "warmup", args.seed + 1, args.warmup_s,
              args.max_steps, args.warmup_lr)
    ev["recall_after_warmup"] = {}
    try:
        recall_after_warmup(run, model, val_tokens, recalls)
    except Exception as e:  # noqa: BLE001 - keep the stages that follow
        ev["recall_error"] = repr(e)
        run.log(f"recall failed: {e!r}")
    ev["topk_val_loss_after_warmup"] = val_loss(model, val, sparse=True, batch_size=args.eval_batch)
    run.log(f"top-k val loss after warm-up {ev['topk_val_loss_after_warmup']:.4f}")
    run.save()

    # 3. sparse training
    sp = run_stage(run, "sparse", model, train_tokens, "sparse", args.seed + 2, args.sparse_s,
                   args.max_steps, args.sparse_lr)
    ev["sparse_val_loss"] = val_loss(model, val, sparse=True, batch_size=args.eval_batch)
    ev["sparse_model_dense_attn_val_loss"] = val_loss(model, val, sparse=False, batch_size=args.eval_batch)
    ev["sparse_vs_dense_rel_gap"] = ev["sparse_val_loss"] / ev["dense_val_loss"] - 1
    ev["sparse_val_loss_short"] = short_loss(model, True)
    run.log(f"sparse val loss {ev['sparse_val_loss']:.4f}; gap to dense {100 * ev['sparse_vs_dense_rel_gap']:+.2f}%")
    run.save()
    try:
        gather = with_impl(model, "sparse")
        ev["sparse_val_loss_gather_path"] = val_loss(gather, val, sparse=True, batch_size=args.eval_batch)
        del gather
        run.log(f"gather path: {ev['sparse_val_loss_gather_path']:.4f}")
        ctx, ks = recalls[0]
        win = val_windows(val_tokens, ctx, args.recall_windows)[:, :-1]
        ev["recall_after_sparse"] = {str(ctx): {str(k): v for k, v in indexer_recall(
            model, win, ks, batch_size=args.eval_batch).items()}}
    except Exception as e:  # noqa: BLE001 - keep the stages that follow
        ev["after_sparse_error"] = repr(e)
        run.log(f"after-sparse evaluation failed: {e!r}")
    run.save()

    # 4. control: the dense model trained for as many steps at the sparse stage's rate
    elapsed = time.time() - run.t0
    if args.control and elapsed + sp["seconds"] > args.deadline_s:
        run.result["control_skipped"] = f"{elapsed:.0f}s elapsed + ~{sp['seconds']:.0f}s > {args.deadline_s}s"
        run.log(f"control skipped: {run.result['control_skipped']}")
    elif args.control:
        model.load_state_dict(pretrained)
        run_stage(run, "control", model, train_tokens, "pretrain", args.seed + 2, None,
                  sp["steps"], sp["lr"])
        ev["control_dense_val_loss"] = val_loss(model, val, sparse=False, batch_size=args.eval_batch)
        ev["control_dense_val_loss_short"] = short_loss(model, False)
        ev["sparse_vs_control_rel_gap"] = ev["sparse_val_loss"] / ev["control_dense_val_loss"] - 1
        run.log(f"control dense val loss {ev['control_dense_val_loss']:.4f}; sparse gap "
                f"{100 * ev['sparse_vs_control_rel_gap']:+.2f}%")
    run.save()
    try:
        table = format_table(run.result)
    except Exception as e:  # noqa: BLE001 - the JSON is already saved
        table = f"table failed: {e!r}"
    print(table)
    for p in run.paths:
        p.with_suffix(".txt").write_text(table + "\n")
    return 0


def format_table(r: dict) -> str:
    ev, st, c = r["eval"], r["stages"], r["corpus"]
    extra = f" + {c['extra_files']} files of {c['extra']}" if c.get("extra") else ""
    lines = [
        (f"DSA three-stage run: preset {r['args']['preset']} ({r['params'] / 1e6:.1f}M params), "
         f"{r.get('gpu', 'cpu')}, torch {r['torch']}, total {r['elapsed_s']:.0f}s"),
        (f"corpus: Python {c['python']} stdlib{extra}, train {c['train']['files']} files / "
         f"{c['train']['tokens']:,} tokens, val {c['val']['files']} files / {c['val']['tokens']:,} tokens, "
         f"BPE vocab {c['vocab_size']}"),
        "",
        "| stage | steps | tokens | seconds | lr | loss first10 -> last10 |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in st.items():
        key = "kl" if s["stage"] == "warmup" else "lm"
        lines.append(f"| {name} | {s['steps']} | {s['tokens']:,} | {s['seconds']} | {s['lr']:g} | "
                     f"{key} {s[key + '_first10']:.4f} -> {s[key + '_last10']:.4f} |")
    lines += ["", "recall@k after warm-up (indexer top-k vs dense attention top-k; queries with > k keys)", "",
              "| context | k | recall@k | recall (all queries) | attention mass kept | sliding-window recall |",
              "|---|---|---|---|---|---|"]
    for ctx, per_k in ev.get("recall_after_warmup", {}).items():
        for k, v in per_k.items():
            lines.append(f"| {ctx} | {k} | {v['recall']:.4f} | {v['recall_all']:.4f} | {v['mass']:.4f} | "
                         f"{v['local_recall']:.4f} |")
    for ctx, per_k in ev.get("recall_after_sparse", {}).items():
        lines.append("")
        lines.append("after the sparse stage: " + ", ".join(
            f"recall@{k} ctx {ctx} {v['recall']:.4f}" for k, v in per_k.items()))
    lines += ["", (f"validation loss (nats/token, {ev.get('val_tokens_scored', 0):,} tokens, "
                   f"context {r['args']['seq_len']})"), "", "| model | attention | val loss | vs dense |",
              "|---|---|---|---|"]
    d = ev.get("dense_val_loss")

    def row(name, attn, key):
        if key in ev:
            lines.append(f"| {name} | {attn} | {ev[key]:.4f} | {100 * (ev[key] / d - 1):+.2f}% |")

    row("pre-trained (dense)", "full", "dense_val_loss")
    row("after warm-up", "top-k", "topk_val_loss_after_warmup")
    row("after sparse stage", "top-k (masked dense)", "sparse_val_loss")
    row("after sparse stage", "top-k (gather)", "sparse_val_loss_gather_path")
    row("after sparse stage", "full", "sparse_model_dense_attn_val_loss")
    row("control: dense + same steps", "full", "control_dense_val_loss")
    if ev.get("short_context"):
        ds, ss, cs = (ev.get(k) for k in ("dense_val_loss_short", "sparse_val_loss_short",
                                             "control_dense_val_loss_short"))
        lines.append(f"\nat context {ev['short_context']}: dense {ds:.4f}"
                     + (f", sparse {ss:.4f} ({100 * (ss / ds - 1):+.2f}%)" if ss else "")
                     + (f", control {cs:.4f} (sparse vs control {100 * (ss / cs - 1):+.2f}%)" if cs and ss else ""))
    if "sparse_vs_control_rel_gap" in ev:
        lines.append(f"\nsparse vs control: {100 * ev['sparse_vs_control_rel_gap']:+.2f}%")
    lines.append(f"fp8 check: {r.get('fp8_check')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("prepare", help="train the tokenizer and tokenize the corpus")
    pr.add_argument("--corpus", default="stdlib")
    pr.add_argument("--vocab-size", type=int, default=8192)
    pr.add_argument("--max-bytes", type=int, default=None)
    pr.add_argument("--out", default=".dsa_data")
    pr.add_argument("--extra", default=None, help="a directory of more .py files, for training only")
    pr.add_argument("--extra-bytes", type=int, default=40_000_000)
    pr.add_argument("--extra-max-file", type=int, default=200_000, help="skip larger (generated) files")
    ru = sub.add_parser("run", help="pretrain -> warmup -> sparse, then evaluate")
    ru.add_argument("--data", default=".dsa_data")
    ru.add_argument("--preset", default="small")
    ru.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ru.add_argument("--seq-len", type=int, default=1024)
    ru.add_argument("--batch-size", type=int, default=16)
    ru.add_argument("--max-steps", type=int, default=100000, help="ceiling per stage")
    ru.add_argument("--pretrain-s", type=float, default=150)
    ru.add_argument("--warmup-s", type=float, default=55)
    ru.add_argument("--sparse-s", type=float, default=60)
    ru.add_argument("--pretrain-lr", type=float, default=1.5e-3)
    ru.add_argument("--warmup-lr", type=float, default=None, help="default: the report's 1e-3")
    ru.add_argument("--sparse-lr", type=float, default=None)
    ru.add_argument("--warmup-steps", type=int, default=100, help="lr warm-up steps per stage")
    ru.add_argument("--control", action="store_true")
    ru.add_argument("--deadline-s", type=float, default=340,
                    help="skip the control when it would end after this many seconds")
    ru.add_argument("--recall", nargs="+", default=["512:64,128,256", "1024:128,256,512"],
                    help="CONTEXT:K,K,... ; the first is also measured after the sparse stage")
    ru.add_argument("--recall-windows", type=int, default=32)
    ru.add_argument("--val-windows", type=int, default=None)
    ru.add_argument("--eval-batch", type=int, default=8)
    ru.add_argument("--log-every", type=int, default=100)
    ru.add_argument("--seed", type=int, default=0)
    ru.add_argument("--json", default="benchmarks/results/dsa_train.json")
    args = ap.parse_args(argv)
    return prepare(args) if args.cmd == "prepare" else run_all(args)


if __name__ == "__main__":
    sys.exit(main())
