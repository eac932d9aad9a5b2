"""Training stages of a DSA model (DeepSeek-V3.2 report §2.1, dsa.md §2).

    python -m envfactory.model.train pretrain --config small --tokenizer out/tok.json --out out/pre
    python -m envfactory.model.train warmup   --config small --tokenizer out/tok.json --init out/pre --out out/warm
    python -m envfactory.model.train sparse   --config small --tokenizer out/tok.json --init out/warm --out out/dsa

- `pretrain`: a dense-attention LM (no indexer involved) trained on next-token loss.
- `warmup`: only the indexer trains, everything else frozen; loss = KL(p ‖ softmax(I)) with
  p the main attention summed over heads and L1-normalised, over all causal positions.
- `sparse`: top-k attention, all parameters train; loss = LM + KL restricted to the selected
  set S_t. The indexer reads detached inputs and p is detached, so the indexer learns only
  from the KL and the rest only from the LM loss, as the report prescribes.

In MoE models every step of `pretrain` and `sparse` ends with the auxiliary-loss-free bias
update of the router (`moe.balance_experts`, speed `--bias-update-speed`, 0 = off); the
warm-up leaves the biases alone, as it does every other non-indexer parameter. The metrics
then carry `load_ratio`, the worst layer's max/mean expert load over the step.

`--time-budget SECONDS` fits a stage to a wall-clock budget (steps become a ceiling and the
schedule is laid over the steps that fit). Runs on CPU (tests) or CUDA (bf16 autocast). The default corpus is the Python standard
library sources of the running interpreter (`data.py`).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoint import load_checkpoint, save_checkpoint
from .config import ModelConfig, get_config
from .moe import balance_experts, gates
from .transformer import Transformer

STAGES = ("pretrain", "warmup", "sparse")
# Learning rates: the report's 1e-3 for the warm-up; the other two are small-model choices
# (the report's 7.3e-6 sparse-stage rate belongs to a 671B model and 480-sequence batches).
DEFAULT_LR = {"pretrain": 1e-3, "warmup": 1e-3, "sparse": 3e-4}


@dataclass(frozen=True)
class TrainConfig:
    stage: str = "pretrain"
    steps: int = 100
    batch_size: int = 8
    seq_len: int = 128
    lr: float | None = None  # None: DEFAULT_LR[stage]
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    warmup_steps: int = 0
    index_loss_weight: float = 1.0
    # gamma of the MoE router's bias update after each step (DeepSeek-V3: 0.001; 0 = off)
    bias_update_speed: float = 0.001
    seed: int = 0

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.stage]


def set_trainable(model: Transformer, stage: str) -> list[torch.nn.Parameter]:
    """Freeze per stage; returns the parameters the optimizer updates."""
    for name, p in model.named_parameters():
        is_indexer = ".indexer." in name
        fixed = name.endswith("e_score_correction_bias")  # balanced by counts, not gradients
        train = {"pretrain": not is_indexer, "warmup": is_indexer, "sparse": True}[stage]
        p.requires_grad_(train and not fixed)
    return [p for p in model.parameters() if p.requires_grad]


def stage_loss(model: Transformer, x: torch.Tensor, y: torch.Tensor, tcfg: TrainConfig):
    """(loss to minimise, metrics) for one batch x, y [B, S]."""
    if tcfg.stage == "pretrain":
        logits, _ = model(x, sparse=False)
        lm = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        return lm, {"lm": lm.item()}
    if tcfg.stage == "warmup":
        _, kl = model(x, sparse=False, index_loss=True)
        return kl, {"kl": kl.item()}
    logits, kl = model(x, sparse=True, index_loss=True)
    lm = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    return lm + tcfg.index_loss_weight * kl, {"lm": lm.item(), "kl": kl.item()}


def lr_at(step: int, tcfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    peak = tcfg.learning_rate
    if step < tcfg.warmup_steps:
        return peak * (step + 1) / tcfg.warmup_steps
    frac = (step - tcfg.warmup_steps) / max(1, tcfg.steps - tcfg.warmup_steps)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def planned_steps(step: int, steps: int, elapsed: float, timed: float, n_timed: int,
                  time_budget: float) -> int:
    """Total steps that fit `time_budget` seconds: `step + 1` done after `elapsed` seconds,
    the last `n_timed` of them in `timed` seconds (the first ones include warm-up costs).
    Never more than `steps`, never fewer than the steps already done."""
    per_step = timed / max(n_timed, 1)
    fit = step + 1 + int(max(time_budget - elapsed, 0.0) / max(per_step, 1e-9))
    return min(steps, fit)


def train(model: Transformer, batches, tcfg: TrainConfig, log=None,
          time_budget: float | None = None) -> list[dict]:
    """Run tcfg.steps optimizer steps of tcfg.stage; returns one metrics dict per step.

    With `time_budget` (seconds), tcfg.steps is a ceiling: after a few steps the step time is
    measured and the run shortened to fit the budget (re-planned every 25 steps), and the
    learning-rate schedule is laid over the planned length so it still decays fully.
    """
    params = set_trainable(model, tcfg.stage)
    opt = torch.optim.AdamW(params, lr=tcfg.learning_rate, betas=(0.9, 0.95),
                            weight_decay=tcfg.weight_decay)
    device = next(model.parameters()).device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    model.train()
    moe = gates(model)
    gamma = 0.0 if tcfg.stage == "warmup" else tcfg.bias_update_speed
    for gate in moe:  # loads counted before this run (an earlier stage, a probe) are stale
        gate.expert_load.zero_()
    history = []
    t_start = time.perf_counter()
    t_mark, mark_step = None, 0
    step = 0
    while step < tcfg.steps:
        if time_budget is not None and step == 3:  # steps 0-2 carry allocation and warm-up
            t_mark, mark_step = time.perf_counter(), step
        x, y = next(batches)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, tcfg)
        with autocast:
            loss, metrics = stage_loss(model, x.to(device), y.to(device), tcfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip).item()
        opt.step()
        if moe:
            ratio = balance_experts(model, gamma)  # gamma 0 still clears this step's counts
            if ratio is not None:
                metrics["load_ratio"] = ratio
        metrics.update(step=step, loss=loss.item(), lr=opt.param_groups[0]["lr"])
        history.append(metrics)
        if log is not None:
            log(metrics)
        if t_mark is not None and (step == 8 or (step > 8 and step % 25 == 0)):
            now = time.perf_counter()
            steps = planned_steps(step, tcfg.steps, now - t_start, now - t_mark,
                                  step + 1 - mark_step, time_budget)
            tcfg = replace(tcfg, steps=max(steps, min(tcfg.warmup_steps + 1, tcfg.steps)))
        step += 1
    return history


def build_model(cfg: ModelConfig, init: str | None, device) -> Transformer:
    model = Transformer(cfg).to(device)
    if init:
        load_checkpoint(model, init)
    return model


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["distill"]:  # learning the specialist's decisions: its own options (distill.py)
        from .distill import main as distill_main

        return distill_main(argv[1:])
    from .data import (
        TokenBatches,
        corpus_files,
        read_texts,
        split_files,
        tokenize_texts,
    )
    from .tokenizer import Tokenizer

    ap = argparse.ArgumentParser(prog="python -m envfactory.model.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=STAGES, help="or `distill` (python -m envfactory.model.train distill -h)")
    ap.add_argument("--config", default="small", help="preset: tiny, small, small-moe")
    ap.add_argument("--attn-impl", default=None, choices=("dense", "sparse", "triton"))
    ap.add_argument("--tokenizer", required=True, help="tokenizer.json (python -m envfactory.model.tokenizer train)")
    ap.add_argument("--corpus", default="stdlib")
    ap.add_argument("--max-bytes", type=int, default=None, help="read at most this much text")
    ap.add_argument("--init", default=None, help="checkpoint directory to start from")
    ap.add_argument("--out", required=True, help="checkpoint directory to write")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--warmup-steps", type=int, default=50)
    ap.add_argument("--bias-update-speed", type=float, default=TrainConfig.bias_update_speed,
                    help="MoE router bias update speed gamma per step (0: no load balancing)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds: shorten the run (and its schedule) to fit; --steps is a ceiling")
    args = ap.parse_args(argv)
    try:
        tok = Tokenizer.from_file(args.tokenizer)
        overrides = {"vocab_size": tok.vocab_size}
        if args.attn_impl:
            overrides["attn_impl"] = args.attn_impl
        cfg = get_config(args.config, **overrides)
        train_files, _ = split_files(corpus_files(args.corpus))
        tokens = tokenize_texts(tok, read_texts(train_files, args.max_bytes), tok.eos_id)
        print(f"corpus: {len(train_files)} files, {len(tokens):,} tokens; "
              f"model: {cfg.num_params():,} params", flush=True)
        model = build_model(cfg, args.init, args.device)
        tcfg = TrainConfig(stage=args.stage, steps=args.steps, batch_size=args.batch_size,
                           seq_len=args.seq_len, lr=args.lr, warmup_steps=args.warmup_steps,
                           bias_update_speed=args.bias_update_speed)
        batches = TokenBatches(tokens, tcfg.batch_size, tcfg.seq_len, tcfg.seed, args.device)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    t0 = time.time()

    def log(m: dict) -> None:
        if m["step"] % args.log_every == 0 or m["step"] == tcfg.steps - 1:
            shown = " ".join(f"{k} {v:.4g}" for k, v in m.items() if k not in ("step",))
            print(f"step {m['step']:5d} | {shown} | {time.time() - t0:.0f}s", flush=True)

    history = train(model, batches, tcfg, log, args.time_budget)
    print(f"{len(history)} steps, {len(history) * tcfg.batch_size * tcfg.seq_len:,} tokens, "
          f"{time.time() - t0:.0f}s")
    save_checkpoint(model, Path(args.out))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
