"""The DSA transformer: token ids in, next-token logits out.

Notable features (what differs from a GPT-2 block):
- pre-norm RMSNorm blocks, SwiGLU MLP, untied embedding and LM head;
- MLA attention with a query latent and decoupled YaRN RoPE (attention.py);
- the lightning indexer and top-k token selection in every layer (indexer.py);
- MoE after `n_dense_layers` dense layers when `n_routed_experts > 0` (moe.py).

Module names equal the Hugging Face V3.2 names minus the leading "model." (`checkpoint.py`).
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import MLA
from .cache import LayerCache
from .config import ModelConfig
from .layers import MLP, RMSNorm
from .moe import Gate, MoE
from .rope import rope_tables


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = MLA(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MoE(cfg) if cfg.is_moe_layer(layer_id) else MLP(cfg.dim, cfg.inter_dim)

    def forward(self, x, cos, sin, start_pos, cache, sparse, index_loss):
        h, kl = self.self_attn(self.input_layernorm(x), cos, sin, start_pos, cache, sparse, index_loss)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, kl


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)  # (max_seq_len, rope/2)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module) -> None:
        std = self.cfg.init_std
        if isinstance(m, (nn.Linear, nn.Embedding, Gate)):
            nn.init.normal_(m.weight, mean=0.0, std=std)

    def forward(self, tokens: torch.Tensor, start_pos: int = 0,
                caches: list[LayerCache] | None = None, sparse: bool = True,
                index_loss: bool = False, last_only: bool = False):
        """tokens [B, S] at positions start_pos.. -> (logits [B, S, vocab] float32, KL or None).

        last_only: logits of the last position only ([B, 1, vocab]; what a prefill needs:
        at V3.2's vocabulary all positions of a 32 x 4096 batch would take 63 GiB).

        sparse: top-k attention chosen by the indexer (False: full causal attention).
        index_loss: also return the indexer KL loss, averaged over layers.
        caches: from `make_caches`; positions < start_pos must already be in them.
        """
        S = tokens.shape[1]
        if start_pos + S > self.cfg.max_seq_len:
            raise ValueError(f"positions up to {start_pos + S} exceed max_seq_len {self.cfg.max_seq_len}")
        cos = self.rope_cos[start_pos:start_pos + S]
        sin = self.rope_sin[start_pos:start_pos + S]
        x = self.embed_tokens(tokens)  # (B, S, dim)
        kls = []
        for i, layer in enumerate(self.layers):
            cache = caches[i] if caches is not None else None
            x, kl = layer(x, cos, sin, start_pos, cache, sparse, index_loss)
            kls.append(kl)
        if last_only:
            x = x[:, -1:]
        logits = self.lm_head(self.norm(x)).float()
        kl = torch.stack(kls).mean() if index_loss else None
        return logits, kl

    def indexer_parameters(self):
        return [p for n, p in self.named_parameters() if ".indexer." in n]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
