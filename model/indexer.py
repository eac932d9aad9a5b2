"""The lightning indexer, top-k token selection and the indexer's KL loss.

Index score of query token t for key token s (report Eq. 1, dsa.md §1.3):

    I[t, s] = Σ_j w[t, j] · ReLU(q[t, j] · k[s]) · d_I^-1/2,    w = weights_proj(x) · H_I^-1/2

- q[t, j] = wq_b(qr)[t, j]: from the *MLA query latent* qr, H_I heads of d_I channels.
- k[s] = LayerNorm(wk(x))[s]: one key per token, shared by every index head (MQA).
- RoPE, non-interleaved, on the *first* qk_rope_head_dim channels of q and k.
- A Walsh-Hadamard rotation on q and k (both, or neither).
- weights_proj runs in fp32 (commit 8631a81).
- Optional FP8: q per (token, head) and k per token quantised to e4m3 with one scale each.

The indexer reads *detached* inputs. In the sparse stage its only training signal is the KL
loss and the main model learns from the LM loss only (report §2.1); in the warm-up stage the
rest of the model is frozen anyway, so detaching is always right.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .fp8 import act_dequant, act_quant, fp8_index, straight_through
from .hadamard import hadamard_transform
from .rope import apply_rope


class Indexer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.n_heads, self.head_dim = cfg.index_n_heads, cfg.index_head_dim
        self.rope_dim = cfg.qk_rope_head_dim
        self.wq_b = nn.Linear(cfg.q_lora_rank, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, self.head_dim, bias=False)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=cfg.norm_eps)  # weight and bias
        self.weights_proj = nn.Linear(cfg.dim, self.n_heads, bias=False)  # used in fp32

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        pe, nope = x.split([self.rope_dim, self.head_dim - self.rope_dim], dim=-1)
        return torch.cat((apply_rope(pe, cos, sin, interleaved=False), nope), dim=-1)

    def forward(self, x: torch.Tensor, qr: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                start_pos: int = 0, cache=None) -> torch.Tensor:
        """Scores of S new queries against all T = start_pos + S keys.

        x [B, S, dim], qr [B, S, q_lora_rank], cos/sin [S, rope/2] -> [B, S, T] float32,
        unmasked (causality is applied by `select_topk` and the losses).
        `cache` is an `IndexKeyCache` holding the keys of positions < start_pos.
        """
        return self.scores(self.project(x, qr, cos, sin, start_pos, cache))

    def project(self, x: torch.Tensor, qr: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                start_pos: int = 0, cache=None) -> IndexerInputs:
        """The operands of the scores, without the [B, S, T] product: q, every key up to
        T = start_pos + S (the cache written first), the head weights with every constant
        folded in, and their FP8 forms when `index_fp8` (what `kernels.dsa_select` and
        `kernels.indexer_kl` take on the attn_impl="triton" path)."""
        B, S, _ = x.shape
        x, qr = x.detach(), qr.detach()
        q = self.wq_b(qr).view(B, S, self.n_heads, self.head_dim)  # (B, S, H, D)
        k = F.layer_norm(self.wk(x).float(), (self.head_dim,), self.k_norm.weight.float(),
                         self.k_norm.bias.float(), self.k_norm.eps).to(x.dtype)  # (B, S, D)
        q = self._rope(q, cos, sin)
        k = self._rope(k.unsqueeze(2), cos, sin).squeeze(2)
        if self.cfg.index_hadamard:
            q, k = hadamard_transform(q), hadamard_transform(k)
        with torch.autocast(x.device.type, enabled=False):  # fp32 even under bf16 autocast
            return self._operands(x, q, k, start_pos, cache)

    def _operands(self, x, q, k, start_pos, cache):
        """Head weights, optional FP8 and the cache write: all fp32."""
        w = F.linear(x.float(), self.weights_proj.weight.float()) * self.n_heads**-0.5  # (B, S, H)
        w = w * self.head_dim**-0.5  # fold the q·k scale into the head weights, as the reference
        if self.cfg.index_fp8:
            fmt = self.cfg.fp8_scale_fmt
            q8, q_s = act_quant(q.detach(), self.head_dim, fmt)  # (B, S, H, D) e4m3, (B, S, H, 1)
            k8, k_s = act_quant(k.detach(), self.head_dim, fmt)  # (B, S, D) e4m3, (B, S, 1)
            if cache is not None:
                k8, k_s = cache.update(start_pos, k8, k_s)
            ops = IndexerInputs(q, None, w, q8, q_s.squeeze(-1), k8, k_s.squeeze(-1))
            if cache is None and (q.requires_grad or k.requires_grad):
                # training: the dequantised values forward, the identity backward
                # (differentiating the casts would round the gradients to unscaled e4m3)
                ops.q_st = straight_through(q.float(), act_dequant(q8, q_s))
                ops.k_st = straight_through(k.float(), act_dequant(k8, k_s))
            return ops
        if cache is not None:
            k, _ = cache.update(start_pos, k)
        return IndexerInputs(q, k, w)

    @staticmethod
    def scores(ops: IndexerInputs) -> torch.Tensor:
        """The full [B, S, T] fp32 logits (unmasked) from `project`'s operands."""
        with torch.autocast(ops.w.device.type, enabled=False):
            if ops.q_st is not None:  # training through FP8: same values, usable gradients
                return index_scores(ops.q_st, ops.k_st, ops.w)
            if ops.q8 is not None:
                return fp8_index(ops.q8, ops.q_s, ops.k8, ops.k_s, ops.w)
            return index_scores(ops.q, ops.k, ops.w)


@dataclass
class IndexerInputs:
    """What the indexer scores are made of (`Indexer.project`).

    q [B, S, H, D] (RoPE'd, rotated), k [B, T, D] (None with FP8: only k8 is cached),
    w [B, S, H] fp32 (H_I^-1/2 · d_I^-1/2 folded in); with FP8 also q8 [B, S, H, D] e4m3,
    q_s [B, S, H] fp32, k8 [B, T, D] e4m3, k_s [B, T] fp32.
    """

    q: torch.Tensor
    k: torch.Tensor | None
    w: torch.Tensor
    q8: torch.Tensor | None = None
    q_s: torch.Tensor | None = None
    k8: torch.Tensor | None = None
    k_s: torch.Tensor | None = None
    q_st: torch.Tensor | None = None  # training with FP8: dequantised q8 / k8 (fp32) whose
    k_st: torch.Tensor | None = None  # gradient passes straight through to q / k

    def rows(self, start: int) -> "IndexerInputs":
        """The same operands for query rows start.. only (keys unchanged)."""
        cut = lambda t: None if t is None else t[:, start:]  # noqa: E731
        return IndexerInputs(cut(self.q), self.k, cut(self.w), cut(self.q8), cut(self.q_s),
                             self.k8, self.k_s, cut(self.q_st), self.k_st)

    def dequantised(self):
        """(q, k, w) whose plain logits Σ_j w·ReLU(q·k) equal the scores: the FP8 values
        times their scales when FP8 (scales are positive and commute with the ReLU), built
        through the same autograd graph as `fp8_index`, so gradients match it."""
        if self.q8 is None:
            return self.q, self.k, self.w
        if self.q_st is not None:
            return self.q_st, self.k_st, self.w
        return (self.q8.float() * self.q_s.unsqueeze(-1), self.k8.float() * self.k_s.unsqueeze(-1),
                self.w)


def index_scores(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Σ_j w[b,s,j] · ReLU(q[b,s,j] · k[b,t]) in fp32.

    q [B, S, H, D], k [B, T, D], w [B, S, H] -> [B, S, T].
    """
    logits = torch.einsum("bshd,btd->bsht", q.float(), k.float()).relu()  # (B, S, H, T)
    return torch.einsum("bsht,bsh->bst", logits, w.float())


def causal_mask(S: int, T: int, start_pos: int, device=None) -> torch.Tensor:
    """Additive mask [1, S, T]: 0 where key t <= query position start_pos + s, else -inf."""
    q_pos = torch.arange(start_pos, start_pos + S, device=device)
    visible = torch.arange(T, device=device)[None, :] <= q_pos[:, None]  # (S, T)
    zero = torch.zeros((), device=device)
    return torch.where(visible, zero, float("-inf")).unsqueeze(0)


def select_topk(scores: torch.Tensor, k: int, start_pos: int = 0) -> torch.Tensor:
    """Top-k visible keys per query: scores [B, S, T] -> indices [B, S, min(k, T)] int64.

    Row s keeps min(k, start_pos + s + 1) indices, best first; the remaining slots are -1
    (Megatron's convention, dsa.md §1.3 step 8; FlashMLA reads -1 as "no token").
    """
    _, S, T = scores.shape
    K = min(k, T)
    masked = scores + causal_mask(S, T, start_pos, scores.device)
    # A stable sort instead of topk: ties (exact zeros, when every head's ReLU is 0, are
    # common) go to the earlier token, so prefill and decode select the same set.
    idx = masked.sort(dim=-1, descending=True, stable=True).indices[..., :K]  # (B, S, K)
    n_valid = (torch.arange(start_pos, start_pos + S, device=scores.device) + 1).clamp(max=k)
    slot = torch.arange(K, device=scores.device)
    return idx.masked_fill(slot[None, :] >= n_valid[:, None], -1)


def index_mask(idx: torch.Tensor, T: int) -> torch.Tensor:
    """Additive mask [B, S, T] from top-k indices: 0 at selected keys, -inf elsewhere."""
    B, S, _ = idx.shape
    safe = torch.where(idx < 0, T, idx)  # -1 goes to a spare column that is then dropped
    hit = torch.zeros(B, S, T + 1, dtype=torch.bool, device=idx.device)
    hit.scatter_(-1, safe, True)
    zero = torch.zeros((), device=idx.device)
    return torch.where(hit[..., :T], zero, float("-inf"))


def index_kl(scores: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over query tokens of KL(target ‖ softmax(scores + mask)).

    scores [B, S, T] (indexer logits), mask [B or 1, S, T] additive (causal in the warm-up,
    the top-k mask in the sparse stage, so the KL is restricted to S_t), target [B, S, T]
    (detached, L1-normalised over the same support). The report sums over tokens; the mean
    keeps the loss scale independent of sequence length.
    """
    log_p = torch.log_softmax(scores + mask, dim=-1)
    pos = target > 0
    terms = torch.where(pos, target * (target.clamp_min(1e-30).log() - log_p), 0.0)
    return terms.sum(-1).mean()
