"""Checkpoints in safetensors with the Hugging Face DeepSeek-V3.2 tensor names.

Names: our module paths plus a "model." prefix (`lm_head.weight` has none), e.g.
`model.layers.0.self_attn.q_a_proj.weight`, `model.layers.0.self_attn.indexer.wq_b.weight`,
`model.layers.3.mlp.experts.7.down_proj.weight`, `model.layers.3.mlp.gate.e_score_correction_bias`.

FP8 format (V3.2 HF `quantization_config`: e4m3, `weight_block_size` [128, 128]): each
linear weight of attention, indexer and MLP/experts is stored as e4m3 plus
`<name>.weight_scale_inv` [ceil(out/128), ceil(in/128)] fp32; w = w_fp8 * scale_inv.
Embeddings, lm_head, norms, the router gate and the indexer's `weights_proj` stay unquantised
(as in the released checkpoint). On load FP8 weights are dequantised to the model dtype:
there is no FP8 matmul in this model's linears.

`load_checkpoint` reads one file or a directory of shards, skips tensors of layers beyond
`n_layers` (the released checkpoint's layer 61 is the MTP module) and reports them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import ModelConfig
from .fp8 import weight_dequant, weight_quant

_FP8_LINEAR = re.compile(
    r"\.(q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj|indexer\.wq_b|indexer\.wk"
    r"|gate_proj|up_proj|down_proj)\.weight$"
)


def to_hf_name(name: str) -> str:
    return name if name.startswith("lm_head.") else "model." + name


def from_hf_name(name: str) -> str:
    return name.removeprefix("model.")


def is_fp8_weight(hf_name: str) -> bool:
    """True for the weights the released V3.2 checkpoint stores in block-scaled e4m3."""
    return bool(_FP8_LINEAR.search(hf_name))


def hf_state_dict(model: torch.nn.Module, fp8: bool = False, dtype=None) -> dict[str, torch.Tensor]:
    """The model's tensors under HF names; with fp8, eligible weights as e4m3 + scale_inv."""
    cfg: ModelConfig = model.cfg
    out = {}
    for name, t in model.state_dict().items():
        hf, t = to_hf_name(name), t.detach()
        if fp8 and is_fp8_weight(hf):
            w8, scale_inv = weight_quant(t, cfg.fp8_block, cfg.fp8_scale_fmt)
            out[hf] = w8
            out[hf.removesuffix(".weight") + ".weight_scale_inv"] = scale_inv
        elif dtype is not None and t.is_floating_point() and "e_score_correction_bias" not in hf:
            out[hf] = t.to(dtype)
        else:
            out[hf] = t
    return {k: v.contiguous() for k, v in out.items()}


def _split_by_bytes(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Tensors in name order, packed greedily into groups of at most `max_bytes` (a tensor larger
    than the cap gets a group of its own)."""
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(state):
        n = state[name].numel() * state[name].element_size()
        if groups[-1] and size + n > max_bytes:
            groups.append({})
            size = 0
        groups[-1][name] = state[name]
        size += n
    return groups


def save_checkpoint(model: torch.nn.Module, path: str | Path, fp8: bool = False, dtype=None,
                    max_shard_bytes: int | None = None) -> Path:
    """Write the weights and `config.json` into the directory `path`: one `model.safetensors`, or
    with `max_shard_bytes` the Hugging Face layout `model-0000i-of-0000n.safetensors` plus
    `model.safetensors.index.json` (weight name -> file). Old weight files there are removed so a
    reader never mixes two saves."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = hf_state_dict(model, fp8, dtype)
    for old in list(path.glob("model*.safetensors")) + list(path.glob("model.safetensors.index.json")):
        old.unlink()
    groups = [state] if max_shard_bytes is None else _split_by_bytes(state, max_shard_bytes)
    if len(groups) == 1:
        save_file(groups[0], str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, group in enumerate(groups, 1):
            name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
            save_file(group, str(path / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in group})
        total = sum(t.numel() * t.element_size() for t in state.values())
        (path / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True))
    (path / "config.json").write_text(json.dumps(config_to_hf(model.cfg, fp8), indent=2))
    return path


def _shards(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {path}")
    return files


def load_checkpoint(model: torch.nn.Module, path: str | Path, strict: bool = True) -> list[str]:
    """Load HF-named tensors (FP8 dequantised) into `model`; returns the skipped names."""
    cfg: ModelConfig = model.cfg
    own = model.state_dict()
    loaded, skipped = set(), []
    for shard in _shards(Path(path)):
        with safe_open(str(shard), framework="pt") as f:
            keys = set(f.keys())
            for hf in sorted(keys):
                if hf.endswith(".weight_scale_inv"):
                    continue
                name = from_hf_name(hf)
                if name not in own:
                    skipped.append(hf)
                    continue
                t = f.get_tensor(hf)
                if t.dtype == torch.float8_e4m3fn:
                    scale_key = hf.removesuffix(".weight") + ".weight_scale_inv"
                    if scale_key not in keys:  # the HF index keeps a weight and its scale together
                        raise KeyError(f"{hf} is FP8 but {scale_key} is missing in {shard.name}")
                    t = weight_dequant(t, f.get_tensor(scale_key), cfg.fp8_block)
                if t.shape != own[name].shape:
                    raise ValueError(f"{hf}: checkpoint {tuple(t.shape)} vs model {tuple(own[name].shape)}")
                with torch.no_grad():
                    own[name].copy_(t.to(own[name].dtype))
                loaded.add(name)
    missing = sorted(set(own) - loaded)
    if strict and missing:
        raise KeyError(f"{len(missing)} tensors missing from checkpoint, e.g. {missing[:3]}")
    return skipped


def config_to_hf(cfg: ModelConfig, fp8: bool = False) -> dict:
    """A V3.2-style HF config.json; our own fields ride along under their own names."""
    d = {
        "architectures": ["DeepseekV32ForCausalLM"],
        "model_type": "deepseek_v32",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.dim,
        "intermediate_size": cfg.inter_dim, "moe_intermediate_size": cfg.moe_inter_dim,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
        "q_lora_rank": cfg.q_lora_rank, "kv_lora_rank": cfg.kv_lora_rank,
        "qk_nope_head_dim": cfg.qk_nope_head_dim, "qk_rope_head_dim": cfg.qk_rope_head_dim,
        "v_head_dim": cfg.v_head_dim,
        "n_routed_experts": cfg.n_routed_experts or None, "n_shared_experts": cfg.n_shared_experts,
        "num_experts_per_tok": cfg.n_activated_experts, "n_group": cfg.n_expert_groups,
        "topk_group": cfg.n_limited_groups, "routed_scaling_factor": cfg.route_scale,
        "first_k_dense_replace": cfg.n_dense_layers if cfg.n_routed_experts else cfg.n_layers,
        "scoring_func": "sigmoid", "topk_method": "noaux_tc", "norm_topk_prob": True,
        "index_n_heads": cfg.index_n_heads, "index_head_dim": cfg.index_head_dim,
        "index_topk": cfg.index_topk,
        "max_position_embeddings": cfg.max_seq_len, "rope_theta": cfg.rope_theta,
        "rope_scaling": {"type": "yarn", "factor": cfg.rope_factor,
                         "original_max_position_embeddings": cfg.original_seq_len,
                         "beta_fast": cfg.beta_fast, "beta_slow": cfg.beta_slow,
                         "mscale": cfg.mscale, "mscale_all_dim": cfg.mscale},
        "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": False,
        "dsa_local": cfg.to_dict(),
    }
    if fp8:
        d["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                    "weight_block_size": [cfg.fp8_block, cfg.fp8_block]}
    return d


def config_from_hf(d: dict) -> ModelConfig:
    """Read a V3.2 HF config.json (ours or the released one) into a ModelConfig."""
    if "dsa_local" in d:
        return ModelConfig(**d["dsa_local"])
    rs = d.get("rope_scaling") or {}
    n_exp = d.get("n_routed_experts") or 0
    return ModelConfig(
        vocab_size=d["vocab_size"], dim=d["hidden_size"], n_layers=d["num_hidden_layers"],
        n_heads=d["num_attention_heads"], inter_dim=d["intermediate_size"],
        q_lora_rank=d["q_lora_rank"], kv_lora_rank=d["kv_lora_rank"],
        qk_nope_head_dim=d["qk_nope_head_dim"], qk_rope_head_dim=d["qk_rope_head_dim"],
        v_head_dim=d["v_head_dim"], index_n_heads=d["index_n_heads"],
        index_head_dim=d["index_head_dim"], index_topk=d["index_topk"],
        index_fp8="quantization_config" in d,
        n_dense_layers=d.get("first_k_dense_replace", 0), n_routed_experts=n_exp,
        n_shared_experts=d.get("n_shared_experts") or 0,
        n_activated_experts=d.get("num_experts_per_tok") or 1,
        n_expert_groups=d.get("n_group") or 1, n_limited_groups=d.get("topk_group") or 1,
        moe_inter_dim=d.get("moe_intermediate_size") or 1,
        route_scale=d.get("routed_scaling_factor", 1.0),
        max_seq_len=d["max_position_embeddings"], rope_theta=d.get("rope_theta", 10000.0),
        original_seq_len=rs.get("original_max_position_embeddings", d["max_position_embeddings"]),
        rope_factor=rs.get("factor", 1.0), beta_fast=rs.get("beta_fast", 32),
        beta_slow=rs.get("beta_slow", 1), mscale=rs.get("mscale_all_dim", 1.0),
        norm_eps=d.get("rms_norm_eps", 1e-6),
        fp8_scale_fmt="ue8m0" if "quantization_config" in d else None,
        kv_fp8="quantization_config" in d,
    )


def load_pretrained(path: str | Path, device: str = "cpu", dtype=None):
    """(model, tokenizer) from a checkpoint directory."""
    from .tokenizer import Tokenizer
    from .transformer import Transformer

    path = Path(path)
    for name in ("config.json", "tokenizer.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} is not a checkpoint: no {name}")
    if not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"{path} is not a checkpoint: no .safetensors weights")
    cfg = config_from_hf(json.loads((path / "config.json").read_text()))
    model = Transformer(cfg).to(device=device, dtype=dtype or torch.float32)
    load_checkpoint(model, path)
    return model.eval(), Tokenizer.from_file(path / "tokenizer.json")
