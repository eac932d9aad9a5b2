"""Safetensors checkpoints with V3.2 Hugging Face names, FP8 block-scaled weights included."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from envfactory.model.checkpoint import (
    config_from_hf,
    config_to_hf,
    is_fp8_weight,
    load_checkpoint,
    save_checkpoint,
)
from envfactory.model.config import get_config
from envfactory.model.fp8 import E4M3, weight_dequant, weight_quant
from envfactory.model.transformer import Transformer
from tests.model.conftest import rel_err

MOE = {"n_routed_experts": 4, "n_expert_groups": 2, "n_limited_groups": 1, "n_activated_experts": 2}


def test_fp8_round_trip_with_v32_names(tmp_path):
    cfg = get_config("tiny", **MOE)
    src = Transformer(cfg)
    save_checkpoint(src, tmp_path, fp8=True)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        q_a = f.get_tensor("model.layers.0.self_attn.q_a_proj.weight")
        wq_b_scale = f.get_tensor("model.layers.1.self_attn.indexer.wq_b.weight_scale_inv")
        assert f.get_tensor("model.layers.0.self_attn.indexer.weights_proj.weight").dtype == torch.float32
        assert f.get_tensor("model.layers.1.mlp.experts.3.down_proj.weight").dtype == E4M3
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
                 "model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv",
                 "model.layers.0.self_attn.indexer.k_norm.bias",
                 "model.layers.0.mlp.gate_proj.weight",
                 "model.layers.1.mlp.gate.e_score_correction_bias",
                 "model.layers.1.mlp.shared_experts.up_proj.weight_scale_inv"):
        assert name in keys, name
    assert q_a.dtype == E4M3 and wq_b_scale.shape == (1, 1)

    dst = Transformer(cfg)
    assert load_checkpoint(dst, tmp_path) == []
    ref = src.state_dict()
    for name, t in dst.state_dict().items():
        hf = name if name.startswith("lm_head") else "model." + name
        if is_fp8_weight(hf):  # exactly the dequantised e4m3 weight
            assert torch.equal(t, weight_dequant(*weight_quant(ref[name]), 128)), name
            assert rel_err(t, ref[name]) < 0.05
        else:
            assert torch.equal(t, ref[name]), name
    tokens = torch.randint(0, 512, (1, 13))
    with torch.no_grad():
        assert rel_err(dst(tokens)[0], src(tokens)[0]) < 0.1  # unrelated weights give ~1.4
    assert config_from_hf(json.loads((tmp_path / "config.json").read_text())) == cfg


def test_plain_round_trip_is_exact_and_mtp_layers_are_skipped(tmp_path):
    cfg = get_config("tiny")
    src = Transformer(cfg)
    save_checkpoint(src, tmp_path)
    extra = {"model.layers.2.eh_proj.weight": torch.randn(4, 4)}  # an MTP layer beyond n_layers
    save_file(extra, str(tmp_path / "model-extra.safetensors"))
    dst = Transformer(cfg)
    assert load_checkpoint(dst, tmp_path) == ["model.layers.2.eh_proj.weight"]
    for (n, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), n


def test_sharded_save_caps_every_file_and_loads_exactly(tmp_path):
    cfg = get_config("tiny")
    src = Transformer(cfg)
    save_checkpoint(src, tmp_path)  # a single-file save first: the sharded one must replace it
    cap = 200_000
    save_checkpoint(src, tmp_path, max_shard_bytes=cap)
    files = sorted(tmp_path.glob("*.safetensors"))
    assert len(files) > 2 and not (tmp_path / "model.safetensors").exists()
    assert files[0].name == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {f.name for f in files}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            keys = list(h.keys())
            size = sum(h.get_tensor(k).numel() * h.get_tensor(k).element_size() for k in keys)
        assert size <= cap or len(keys) == 1, (f.name, size)
        assert all(index["weight_map"][k] == f.name for k in keys)
    dst = Transformer(cfg)
    assert load_checkpoint(dst, tmp_path) == []
    for (n, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), n


def test_missing_and_misshapen_tensors_are_errors(tmp_path):
    save_checkpoint(Transformer(get_config("tiny")), tmp_path)
    with pytest.raises(ValueError):
        load_checkpoint(Transformer(get_config("tiny", kv_lora_rank=16)), tmp_path)
    with pytest.raises(KeyError):
        load_checkpoint(Transformer(get_config("tiny", **MOE)), tmp_path)


def test_real_v32_config_and_names_build_on_meta_device():
    cfg = get_config("deepseek-v3.2")
    with torch.device("meta"):  # 4 of 61 layers: 3 dense + 1 MoE (all 61 take ~30 s to build)
        model = Transformer(get_config("deepseek-v3.2", n_layers=4))
    shapes = {n: tuple(p.shape) for n, p in model.state_dict().items()}
    assert shapes["layers.0.self_attn.q_a_proj.weight"] == (1536, 7168)
    assert shapes["layers.0.self_attn.q_b_proj.weight"] == (128 * 192, 1536)
    assert shapes["layers.0.self_attn.kv_a_proj_with_mqa.weight"] == (576, 7168)
    assert shapes["layers.0.self_attn.kv_b_proj.weight"] == (128 * 256, 512)
    assert shapes["layers.0.self_attn.indexer.wq_b.weight"] == (64 * 128, 1536)
    assert shapes["layers.0.self_attn.indexer.wk.weight"] == (128, 7168)
    assert shapes["layers.0.self_attn.indexer.weights_proj.weight"] == (64, 7168)
    assert shapes["layers.2.mlp.gate_proj.weight"] == (18432, 7168)
    assert shapes["layers.3.mlp.gate.weight"] == (256, 7168)
    assert shapes["layers.3.mlp.experts.255.down_proj.weight"] == (7168, 2048)
    assert shapes["layers.3.mlp.shared_experts.up_proj.weight"] == (2048, 7168)
    assert "layers.3.mlp.gate_proj.weight" not in shapes
    assert model.num_params() == model.cfg.num_params()
    assert 671e9 < cfg.num_params() < 690e9  # 671B main model + ~0.85B indexer (dsa.md §1.3)
    hf = config_to_hf(cfg, fp8=True)
    assert hf["first_k_dense_replace"] == 3 and hf["index_topk"] == 2048
    released = {k: v for k, v in hf.items() if k != "dsa_local"}
    assert config_from_hf(released) == cfg
