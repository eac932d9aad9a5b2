"""Serving engine throughput: prefill and decode tokens/s at batch 1 and 32, with and
without CUDA graphs, for the shipped agent model and a V3.2-shaped layer stack.

    python benchmarks/dsa_engine.py [--models agent,v32] [--batches 1,32] [--steps 64] [--json FILE]
    python benchmarks/dsa_engine.py --cpu            # the shipped model on this machine's CPU

Models (bf16 on CUDA, fp32 on CPU):
- agent: `model/checkpoints/agent` (10.2M parameters, 6 layers), prompts of 2,048 tokens
  (an agent decision's prompt averages about 1,900 of our tokens); attention on the
  PyTorch gather path (its head sizes are not the kernels').
- v32: DeepSeek-V3.2's attention and dense-layer shapes (dim 7168, 128 heads, latent 512 +
  RoPE 64, indexer 64 x 128 in FP8 with top-2048, FP8 latent, dense MLP 18432; V3.2's
  first three layers are dense) for 4 layers with V3.2's vocabulary, random weights;
  prompts of 4,096 tokens, so top-2048 is really sparse; prefill through the Triton
  kernels (`attn_impl="triton"`).

Rows:
- prefill: `BatchDecoder.prefill` of B equal prompts (one forward pass), prompt tokens/s;
- decode, model forward: the model's own forward per token with growing cache views (what
  `Engine.generate` runs; on CUDA with v32 the Triton split-K decode kernel), B aligned rows;
- batched decode, eager and CUDA graph: `BatchDecoder.step` with the argmax fed back on the
  device (no host sync), B x steps / time. Speed-up = graph / eager.

Correctness first (exits non-zero on a failure): the eager step against the model's own
forward on the same tokens, and the graph replay against the eager step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from envfactory.model.checkpoint import load_pretrained  # noqa: E402
from envfactory.model.config import get_config  # noqa: E402
from envfactory.model.decode import BatchDecoder  # noqa: E402
from envfactory.model.cache import make_caches  # noqa: E402
from envfactory.model.transformer import Transformer  # noqa: E402

AGENT = Path(__file__).resolve().parent.parent / "model" / "checkpoints" / "agent"


def build(name: str, device: str, dtype):
    """(model, prompt length)."""
    if name == "agent":
        model, _ = load_pretrained(AGENT, device, dtype)
        return _with(model, attn_impl="sparse"), 2048
    if name == "v32":
        cfg = get_config("deepseek-v3.2", n_layers=4, n_dense_layers=4, max_seq_len=8192,
                         original_seq_len=4096, attn_impl="triton" if device == "cuda" else "sparse")
        torch.manual_seed(0)
        with torch.device(device):
            model = Transformer(cfg).to(dtype).eval()
        return model, 4096
    raise SystemExit(f"unknown model {name!r} (agent, v32)")


def _with(model: Transformer, **kw) -> Transformer:
    other = Transformer(replace(model.cfg, **kw)).to(next(model.parameters()))
    other.load_state_dict(model.state_dict())
    return other.eval()


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def prompts_for(model, batch: int, length: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    row = torch.randint(4, model.cfg.vocab_size, (length,), generator=g).tolist()
    return [row] * batch


@torch.no_grad()
def check(model, device, length: int) -> list[str]:
    """Eager step vs the model's forward; graph vs eager. Returns failures."""
    bad = []
    lens = [length // 2 + 3, length // 3 + 1]
    prompts = [prompts_for(model, 1, n, seed=i)[0] for i, n in enumerate(lens)]
    dec = BatchDecoder(model, 2, length + 8)
    dec.prefill(prompts)
    nxt = torch.tensor([5, 9], device=device)
    pos = torch.tensor(lens, device=device)
    eager = dec.step(nxt, pos).clone()
    for b, p in enumerate(prompts):
        ref, _ = model(torch.tensor([p + [int(nxt[b])]], device=device), 0, None, sparse=True)
        err = (eager[b] - ref[0, -1]).abs().max().item()
        scale = ref[0, -1].abs().max().item()
        agree = int(eager[b].argmax()) == int(ref[0, -1].argmax())
        print(f"  check row {b}: step vs forward max|diff| {err:.3g} (logits up to {scale:.3g}), "
              f"argmax {'same' if agree else 'DIFFERENT'}")
        if err > 0.05 * scale + 1e-3:
            bad.append(f"row {b}: eager step differs from the forward by {err:.3g}")
    if device == "cuda":
        dec2 = BatchDecoder(model, 2, length + 8)
        dec2.prefill(prompts)
        dec2.capture()
        graph = dec2.step(nxt, pos).clone()
        err = (graph - eager).abs().max().item()
        print(f"  check: graph replay vs eager step max|diff| {err:.3g}")
        if err > 1e-3 * eager.abs().max().item() + 1e-4:
            bad.append(f"graph replay differs from the eager step by {err:.3g}")
    return bad


@torch.no_grad()
def time_prefill(model, device, batch: int, length: int, steps: int) -> float:
    dec = BatchDecoder(model, batch, length + steps + 1)
    prompts = prompts_for(model, batch, length)
    dec.prefill(prompts)  # warm-up (Triton compiles here)
    _sync(device)
    t0 = time.perf_counter()
    dec.prefill(prompts)
    _sync(device)
    return batch * length / (time.perf_counter() - t0)


@torch.no_grad()
def time_decode(model, device, batch: int, length: int, steps: int, graphs: bool) -> float:
    dec = BatchDecoder(model, batch, length + steps + 8)
    logits = dec.prefill(prompts_for(model, batch, length))
    if graphs:
        dec.capture()
    tok = logits.argmax(-1)
    pos = torch.full((batch,), length, dtype=torch.long, device=device)
    for _ in range(3):  # warm-up at the first positions, then rewind: same shapes, same work
        tok = dec.step(tok, pos).argmax(-1)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        tok = dec.step(tok, pos + i).argmax(-1)
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


@torch.no_grad()
def time_forward(model, device, batch: int, length: int, steps: int) -> float:
    """The model's own forward per token (what `Engine.generate` runs, here for B aligned
    rows): growing cache views, on CUDA with v32 the Triton split-K decode kernel."""
    caches = make_caches(model.cfg, batch, length + steps + 8, next(model.parameters()).dtype, device)
    x = torch.tensor(prompts_for(model, batch, length), device=device)
    logits, _ = model(x, 0, caches, sparse=True, last_only=True)
    tok = logits[:, -1].argmax(-1, keepdim=True)
    for i in range(3):
        tok = model(tok, length + i, caches, sparse=True)[0][:, -1].argmax(-1, keepdim=True)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        tok = model(tok, length + i, caches, sparse=True)[0][:, -1].argmax(-1, keepdim=True)
    _sync(device)
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="agent,v32")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--cpu", action="store_true", help="the shipped model on the CPU, batch 1 and 4")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    device = "cpu" if a.cpu or not torch.cuda.is_available() else "cuda"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    models = ["agent"] if device == "cpu" else a.models.split(",")
    batches = [1, 4] if device == "cpu" else [int(b) for b in a.batches.split(",")]
    steps = min(a.steps, 32) if device == "cpu" else a.steps
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(f"{name}; torch {torch.__version__}; {steps} decode steps\n")
    rows, failures = [], []
    for m in models:
        model, length = build(m, device, dtype)
        if device == "cpu":
            length = 512
        print(f"{m}: {model.num_params() / 1e6:.1f}M parameters, prompts of {length} tokens")
        failures += [f"{m}: {f}" for f in check(model, device, min(length, 1024))]
        if failures:
            continue
        for b in batches:
            r = {"model": m, "batch": b, "prompt": length,
                 "prefill": time_prefill(model, device, b, length, steps),
                 "forward": time_forward(model, device, b, length, steps),
                 "eager": time_decode(model, device, b, length, steps, graphs=False),
                 "graph": time_decode(model, device, b, length, steps, graphs=True) if device == "cuda" else None}
            rows.append(r)
            print(f"  batch {b}: {r}", flush=True)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures))
        raise SystemExit(1)

    def f(x):
        return "—" if x is None else f"{x:,.0f}"

    print("\n| model | batch | prompt | prefill tok/s | decode tok/s, model forward | batched decode tok/s (eager) | "
          "batched decode tok/s (CUDA graph) | graph / eager |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['graph'] / r['eager']:.1f}x" if r["graph"] else "—"
        print(f"| {r['model']} | {r['batch']} | {r['prompt']} | {f(r['prefill'])} | {f(r['forward'])} | "
              f"{f(r['eager'])} | {f(r['graph'])} | {ratio} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": name, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
