"""A small-scale, faithful DeepSeek-V3.2 model with DeepSeek Sparse Attention (DSA).

Contract: token ids in, logits (or token ids, through `generate`) out. Text lives only in
`tokenizer`; files only in `checkpoint`, `data` and the two CLIs. Importing does no I/O.

    cfg = get_config("tiny")                       # or "small", "small-moe", "deepseek-v3.2"
    model = Transformer(cfg)
    logits, _ = model(tokens)                      # tokens [B, S] -> logits [B, S, vocab]
    logits, kl = model(tokens, sparse=False, index_loss=True)   # indexer warm-up signal
    new_ids = generate(model, [[1, 2, 3]], GenerationConfig(max_new_tokens=16))

Modules (shared/reference/dsa.md has every detail and its source):
- config: `ModelConfig` presets; `attn_impl` = "dense" (masked-dense oracle) | "sparse"
  (gather of the top-k latents) | "triton" (kernels/, plugged in at `attention._sparse_core`).
- rope (YaRN; interleaved for MLA, half-split on the first channels for the indexer),
  hadamard, fp8 (e4m3 block quantisation, `fp8_index`).
- indexer (lightning indexer, `select_topk`, KL loss), attention_ops (parameter-free cores),
  attention (MLA), moe, layers, transformer, cache (latent + indexer key caches).
- generate (prefill / decode / sampling), tokenizer (byte-level BPE), data (stdlib corpus),
  checkpoint (safetensors, V3.2 HF names, FP8 weights), train (pretrain / warmup / sparse),
  evaluate (validation loss; the indexer's recall@k of the dense attention's top-k).
"""

from .attention import MLA
from .cache import IndexKeyCache, LatentCache, LayerCache, make_caches
from .checkpoint import config_from_hf, config_to_hf, load_checkpoint, save_checkpoint
from .config import PRESETS, ModelConfig, get_config
from .generate import GenerationConfig, generate, sample
from .indexer import Indexer, index_kl, index_mask, select_topk
from .transformer import Transformer

__all__ = [
    "MLA",
    "PRESETS",
    "GenerationConfig",
    "IndexKeyCache",
    "Indexer",
    "LatentCache",
    "LayerCache",
    "ModelConfig",
    "Transformer",
    "config_from_hf",
    "config_to_hf",
    "generate",
    "get_config",
    "index_kl",
    "index_mask",
    "load_checkpoint",
    "make_caches",
    "sample",
    "save_checkpoint",
    "select_topk",
]
