"""Model configuration: one frozen dataclass and three named presets.

Field names follow the official `inference/model.py` `ModelArgs` of DeepSeek-V3.2-Exp
(`shared/reference/dsa.md` §1.1); `checkpoint.py` maps them to Hugging Face config keys.

Presets:
- `tiny`: a few hundred thousand parameters, for CPU tests that run in seconds.
- `small`: tens of millions of parameters, trainable on one H200 in minutes.
- `deepseek_v32`: the real 671B shapes (`config_671B_v3.2.json` plus the `ModelArgs`
  YaRN defaults). It builds on the meta device for shape checks; running it needs a cluster.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

ATTN_IMPLS = ("dense", "sparse", "triton")
FULL_ATTN_IMPLS = ("sdpa", "oracle")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 512
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    # Dense MLP width; `moe_inter_dim` is each expert's width.
    inter_dim: int = 128
    # MLA (dsa.md §1.2). The query always has a latent: the indexer reads it.
    q_lora_rank: int = 48
    kv_lora_rank: int = 32
    qk_nope_head_dim: int = 16
    qk_rope_head_dim: int = 8
    v_head_dim: int = 16
    # Lightning indexer (dsa.md §1.3).
    index_n_heads: int = 4
    index_head_dim: int = 32
    index_topk: int = 8
    index_hadamard: bool = True  # on both q and k, never one side only (dsa.md §1.3 step 4)
    index_fp8: bool = False  # e4m3 q and k with block scales, as the reference kernels do
    # MoE (dsa.md §1.1). n_routed_experts == 0 gives a dense MLP in every layer.
    n_dense_layers: int = 1
    n_routed_experts: int = 0
    n_shared_experts: int = 1
    n_activated_experts: int = 2
    n_expert_groups: int = 1
    n_limited_groups: int = 1
    moe_inter_dim: int = 64
    route_scale: float = 1.0
    # YaRN RoPE (ModelArgs defaults). Scaling applies only when max_seq_len > original_seq_len.
    max_seq_len: int = 256
    original_seq_len: int = 4096
    rope_theta: float = 10000.0
    rope_factor: float = 40.0
    beta_fast: int = 32
    beta_slow: int = 1
    mscale: float = 1.0
    # Numerics.
    norm_eps: float = 1e-6
    fp8_block: int = 128
    fp8_scale_fmt: str | None = None  # "ue8m0": power-of-two scales (V3.2 `scale_fmt`)
    # Simulate the FP8 latent cache of deployment (commit 8631a81: act_quant + dequant of kv).
    kv_fp8: bool = False
    # How top-k attention is computed: "dense" = masked-dense oracle (reference semantics),
    # "sparse" = gather of the selected latents, "triton" = the kernels/ pipeline (indexer +
    # blocked top-k, sparse MLA, fused indexer KL in the sparse stage).
    attn_impl: str = "dense"
    # How full causal attention (`sparse=False`: pre-training, the indexer warm-up, perplexity)
    # is computed: "sdpa" = torch's fused scaled_dot_product_attention (no [B, S, H, T] scores,
    # so long contexts fit), "oracle" = the fp32 einsum of attention_ops (reference, tests).
    full_attn_impl: str = "sdpa"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {self.attn_impl!r}")
        if self.full_attn_impl not in FULL_ATTN_IMPLS:
            raise ValueError(f"full_attn_impl must be one of {FULL_ATTN_IMPLS}, "
                             f"got {self.full_attn_impl!r}")
        if self.index_head_dim & (self.index_head_dim - 1):
            raise ValueError("index_head_dim must be a power of two (Walsh-Hadamard rotation)")
        if self.qk_rope_head_dim % 2 or self.qk_rope_head_dim > self.index_head_dim:
            raise ValueError("qk_rope_head_dim must be even and fit in index_head_dim")
        if self.n_routed_experts:
            if self.n_routed_experts % self.n_expert_groups:
                raise ValueError("n_routed_experts must divide into n_expert_groups")
            if self.n_activated_experts > self.n_routed_experts:
                raise ValueError("n_activated_experts exceeds n_routed_experts")

    # ---- derived sizes -------------------------------------------------------------
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def yarn(self) -> bool:
        return self.max_seq_len > self.original_seq_len

    @property
    def softmax_scale(self) -> float:
        """qk_head_dim^-1/2, times mscale^2 under YaRN (ModelArgs: 0.1*mscale*ln(factor)+1)."""
        scale = self.qk_head_dim**-0.5
        if self.yarn:
            m = 0.1 * self.mscale * math.log(self.rope_factor) + 1.0
            scale = scale * m * m
        return scale

    def is_moe_layer(self, layer_id: int) -> bool:
        return self.n_routed_experts > 0 and layer_id >= self.n_dense_layers

    def num_params(self) -> int:
        """Parameter count computed from shapes (no allocation, so it works for 671B)."""
        d, h = self.dim, self.n_heads
        attn = (
            d * self.q_lora_rank + self.q_lora_rank  # q_a_proj, q_a_layernorm
            + self.q_lora_rank * h * self.qk_head_dim  # q_b_proj
            + d * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank
            + self.kv_lora_rank * h * (self.qk_nope_head_dim + self.v_head_dim)  # kv_b_proj
            + h * self.v_head_dim * d  # o_proj
        )
        indexer = (
            self.q_lora_rank * self.index_n_heads * self.index_head_dim  # wq_b
            + d * self.index_head_dim + 2 * self.index_head_dim  # wk, k_norm
            + d * self.index_n_heads  # weights_proj
        )
        dense_mlp = 3 * d * self.inter_dim
        moe = (
            self.n_routed_experts * (d + 1)  # gate weight + correction bias
            + (self.n_routed_experts + self.n_shared_experts) * 3 * d * self.moe_inter_dim
        )
        total = 2 * self.vocab_size * d + d  # embed_tokens, lm_head, final norm
        for i in range(self.n_layers):
            total += attn + indexer + 2 * d + (moe if self.is_moe_layer(i) else dense_mlp)
        return total

    def to_dict(self) -> dict:
        return asdict(self)


TINY = ModelConfig()

SMALL = ModelConfig(
    vocab_size=8192,
    dim=512,
    n_layers=8,
    n_heads=8,
    inter_dim=1408,
    q_lora_rank=256,
    kv_lora_rank=128,
    qk_nope_head_dim=64,
    qk_rope_head_dim=32,
    v_head_dim=64,
    index_n_heads=8,
    index_head_dim=64,
    index_topk=128,
    max_seq_len=1024,
    n_dense_layers=8,
)

# Same architecture with a small MoE, to exercise routing at a trainable size.
SMALL_MOE = replace(
    SMALL, n_dense_layers=1, n_routed_experts=16, n_shared_experts=1, n_activated_experts=4,
    n_expert_groups=4, n_limited_groups=2, moe_inter_dim=256, route_scale=2.5,
)

DEEPSEEK_V32 = ModelConfig(
    vocab_size=129280,
    dim=7168,
    n_layers=61,
    n_heads=128,
    inter_dim=18432,
    q_lora_rank=1536,
    kv_lora_rank=512,
    qk_nope_head_dim=128,
    qk_rope_head_dim=64,
    v_head_dim=128,
    index_n_heads=64,
    index_head_dim=128,
    index_topk=2048,
    index_fp8=True,
    n_dense_layers=3,
    n_routed_experts=256,
    n_shared_experts=1,
    n_activated_experts=8,
    n_expert_groups=8,
    n_limited_groups=4,
    moe_inter_dim=2048,
    route_scale=2.5,
    # HF config.json: max_position_embeddings 163840 with YaRN factor 40 over 4096.
    max_seq_len=163840,
    fp8_scale_fmt="ue8m0",
    kv_fp8=True,
)

PRESETS: dict[str, ModelConfig] = {
    "tiny": TINY,
    "small": SMALL,
    "small-moe": SMALL_MOE,
    "deepseek-v3.2": DEEPSEEK_V32,
}


def get_config(name: str, **overrides) -> ModelConfig:
    """A preset by name (`tiny`, `small`, `small-moe`, `deepseek-v3.2`), with field overrides."""
    key = name.replace("_", "-").replace("deepseek-v32", "deepseek-v3.2")
    if key not in PRESETS:
        raise KeyError(f"unknown config {name!r}; presets: {', '.join(PRESETS)}")
    return replace(PRESETS[key], **overrides)
