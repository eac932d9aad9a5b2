"""MLA: the masked-dense oracle, the gather path, the absorbed form, cached decoding and
full attention through SDPA against the einsum oracle."""

import math

import pytest
import torch

from envfactory.model import attention
from envfactory.model.attention_ops import (
    absorbed_attention,
    mha_attention,
    sdpa_attention,
    sparse_attention,
)
from envfactory.model.cache import make_caches
from envfactory.model.config import get_config
from envfactory.model.indexer import causal_mask, index_mask, select_topk
from envfactory.model.rope import rope_tables
from envfactory.model.transformer import Transformer
from tests.model.conftest import rel_err

MOE = {"n_routed_experts": 4, "n_expert_groups": 2, "n_limited_groups": 1, "n_activated_experts": 2}


def model_pair(**kw):
    """The same weights under attn_impl 'dense' and 'sparse'."""
    dense = Transformer(get_config("tiny", attn_impl="dense", **kw)).eval()
    sparse = Transformer(get_config("tiny", attn_impl="sparse", **kw)).eval()
    sparse.load_state_dict(dense.state_dict())
    return dense, sparse


@pytest.mark.parametrize("kw", [{}, {"index_fp8": True, "kv_fp8": True}, MOE], ids=["plain", "fp8", "moe"])
def test_masked_dense_and_gather_paths_agree(kw):
    dense, sparse = model_pair(**kw)
    tokens = torch.randint(0, 512, (2, 37))
    with torch.no_grad():
        a, _ = dense(tokens)
        b, _ = sparse(tokens)
        full, _ = dense(tokens, sparse=False)
    assert rel_err(b, a) < 1e-5
    assert rel_err(full, a) > 1e-3  # k=8 of up to 37 tokens: top-k really drops keys


def test_topk_covering_everything_equals_full_attention():
    dense, sparse = model_pair(index_topk=64)
    tokens = torch.randint(0, 512, (2, 37))
    with torch.no_grad():
        full, _ = dense(tokens, sparse=False)
        for m in (dense, sparse):
            assert rel_err(m(tokens)[0], full) < 1e-5


@pytest.mark.parametrize("impl", ["dense", "sparse"])
@pytest.mark.parametrize("kw", [{}, {"index_fp8": True, "kv_fp8": True}, MOE], ids=["plain", "fp8", "moe"])
def test_decode_with_caches_equals_full_forward(impl, kw):
    cfg = get_config("tiny", attn_impl=impl, **kw)
    model = Transformer(cfg).eval()
    tokens = torch.randint(0, 512, (2, 37))
    with torch.no_grad():
        full, _ = model(tokens)
        caches = make_caches(cfg, 2, 40)
        parts = [model(tokens[:, :11], 0, caches)[0], model(tokens[:, 11:20], 11, caches)[0]]
        parts += [model(tokens[:, t:t + 1], t, caches)[0] for t in range(20, 37)]
    assert rel_err(torch.cat(parts, 1), full) < 1e-5


def test_mha_and_absorbed_forms_agree():
    B, S, T, H, dn, dp, dv, R = 2, 5, 13, 3, 16, 8, 12, 20
    q_nope, q_pe = torch.randn(B, S, H, dn), torch.randn(B, S, H, dp)
    kv, pe = torch.randn(B, T, R), torch.randn(B, T, dp)
    w_uk, w_uv = torch.randn(H, dn, R) / 4, torch.randn(H, dv, R) / 4
    idx = select_topk(torch.randn(B, S, T), 6, T - S)
    mask = index_mask(idx, T)
    k = torch.cat((torch.einsum("btr,hdr->bthd", kv, w_uk), pe[:, :, None].expand(-1, -1, H, -1)), -1)
    v = torch.einsum("btr,hvr->bthv", kv, w_uv)
    ref = mha_attention(torch.cat((q_nope, q_pe), -1), k, v, mask, 0.2)
    q_lat = torch.einsum("bshd,hdr->bshr", q_nope, w_uk)
    for o_lat in (absorbed_attention(q_lat, q_pe, kv, pe, mask, 0.2),
                  sparse_attention(q_lat, q_pe, kv, pe, idx, 0.2)):
        assert rel_err(torch.einsum("bshr,hvr->bshv", o_lat, w_uv), ref) < 1e-5


def naive_mla(attn, x):
    """Full causal MLA for one sequence with loops over heads and keys (no indexer)."""
    c = attn.cfg
    S = x.shape[0]
    P = c.qk_rope_head_dim
    inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, P, 2, dtype=torch.float64) / P))

    def rope_interleaved(v, pos):  # pairs (2i, 2i+1)
        z = torch.complex(v[0::2], v[1::2]) * torch.exp(1j * pos * inv_freq)
        return torch.stack((z.real, z.imag), -1).flatten()

    def rms(v, w):
        return v / torch.sqrt((v * v).mean() + c.norm_eps) * w.double()

    W = {n: p.double() for n, p in attn.named_parameters()}
    x = x.double()
    lat = [W["kv_a_proj_with_mqa.weight"] @ x[t] for t in range(S)]
    kv = [rms(l[: c.kv_lora_rank], W["kv_a_layernorm.weight"]) for l in lat]
    kpe = [rope_interleaved(l[c.kv_lora_rank:], t) for t, l in enumerate(lat)]
    kvb = [(W["kv_b_proj.weight"] @ z).view(c.n_heads, -1) for z in kv]
    out = torch.zeros(S, c.dim, dtype=torch.float64)
    for s in range(S):
        qr = rms(W["q_a_proj.weight"] @ x[s], W["q_a_layernorm.weight"])
        q = (W["q_b_proj.weight"] @ qr).view(c.n_heads, -1)
        heads = []
        for h in range(c.n_heads):
            qn, qp = q[h, : c.qk_nope_head_dim], rope_interleaved(q[h, c.qk_nope_head_dim:], s)
            logits = torch.stack([qn @ kvb[t][h, : c.qk_nope_head_dim] + qp @ kpe[t]
                                  for t in range(s + 1)]) * c.softmax_scale
            p = torch.softmax(logits, 0)
            heads.append(sum(p[t] * kvb[t][h, c.qk_nope_head_dim:] for t in range(s + 1)))
        out[s] = W["o_proj.weight"] @ torch.cat(heads)
    return out


def test_mla_full_attention_matches_naive():
    cfg = get_config("tiny")
    model = Transformer(cfg)
    attn = model.layers[0].self_attn
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(1, 13, cfg.dim)
    cos, sin = rope_tables(cfg, 13)
    with torch.no_grad():
        got, _ = attn(x, cos, sin, sparse=False)
    assert rel_err(got[0], naive_mla(attn, x[0])) < 1e-5


def test_yarn_model_runs_with_scaled_softmax():
    cfg = get_config("tiny", original_seq_len=64, max_seq_len=128, rope_factor=4.0)
    assert cfg.yarn and cfg.softmax_scale > 24**-0.5
    model = Transformer(cfg).eval()
    tokens = torch.randint(0, 512, (1, 100))
    with torch.no_grad():
        full, _ = model(tokens)
        caches = make_caches(cfg, 1, 100)
        inc = torch.cat([model(tokens[:, :90], 0, caches)[0]]
                        + [model(tokens[:, t:t + 1], t, caches)[0] for t in range(90, 100)], 1)
    assert torch.isfinite(full).all() and rel_err(inc, full) < 1e-5
    assert math.isclose(cfg.softmax_scale, 24**-0.5 * (0.1 * math.log(4) + 1) ** 2)


def _grads(out, leaves, g):
    return torch.autograd.grad(out, leaves, g)


@pytest.mark.parametrize("S,T", [(37, 37), (11, 37), (1, 37)], ids=["prefill", "after-cache", "decode"])
@pytest.mark.parametrize("form", ["mha", "absorbed"])
def test_sdpa_core_equals_the_einsum_oracle(form, S, T):
    """Forward and backward of sdpa_attention against the fp32 einsum cores, causal with the
    queries at positions T-S.. (the start_pos offset), on fresh data of awkward sizes."""
    gen = torch.Generator().manual_seed(20 + S)
    B, H, dn, dp, dv, R = 2, 3, 16, 8, 12, 20
    rnd = lambda *s: torch.randn(*s, generator=gen).requires_grad_()
    mask = causal_mask(S, T, T - S, torch.device("cpu"))
    if form == "mha":
        q, k, v = rnd(B, S, H, dn + dp), rnd(B, T, H, dn + dp), rnd(B, T, H, dv)
        leaves = [q, k, v]
        ref = mha_attention(q, k, v, mask, 0.3)
        got = sdpa_attention(q, k, v, 0.3)
    else:  # queries [q_lat; q_pe] against one shared head: keys [kv; pe], values kv
        q_lat, q_pe, kv, pe = rnd(B, S, H, R), rnd(B, S, H, dp), rnd(B, T, R), rnd(B, T, dp)
        leaves = [q_lat, q_pe, kv, pe]
        ref = absorbed_attention(q_lat, q_pe, kv, pe, mask, 0.3)
        got = sdpa_attention(torch.cat((q_lat, q_pe), -1), torch.cat((kv, pe), -1)[:, :, None],
                             kv[:, :, None], 0.3)
    assert got.shape == ref.shape
    assert rel_err(got, ref) < 1e-5  # measured <= 2.4e-7
    g = torch.randn(ref.shape, generator=gen)
    for a, b in zip(_grads(got, leaves, g), _grads(ref, leaves, g)):
        assert rel_err(a, b) < 1e-5  # measured <= 5e-7


def sdpa_and_oracle_models(**kw):
    sdpa = Transformer(get_config("tiny", full_attn_impl="sdpa", **kw))
    oracle = Transformer(get_config("tiny", full_attn_impl="oracle", **kw))
    oracle.load_state_dict(sdpa.state_dict())
    for m in (sdpa, oracle):
        with torch.no_grad():  # attention far from uniform, so a wrong mask would show
            for layer in m.layers:
                layer.self_attn.q_b_proj.weight.mul_(100.0)
    return sdpa, oracle


def test_full_attention_by_sdpa_equals_the_oracle_forward_and_backward():
    sdpa, oracle = sdpa_and_oracle_models()
    tokens = torch.randint(0, 512, (2, 37))
    grads = []
    for m in (sdpa, oracle):
        logits, _ = m(tokens, sparse=False)
        logits.square().mean().backward()
        grads.append({n: p.grad for n, p in m.named_parameters() if p.grad is not None})
        m.zero_grad()
        grads[-1]["logits"] = logits.detach()
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert rel_err(grads[0][n], grads[1][n]) < 1e-5, n  # measured <= 1.1e-6
    # the warm-up: same KL (the PyTorch KL target still comes from the einsum scores)
    kls = [m(tokens, sparse=False, index_loss=True)[1] for m in (sdpa, oracle)]
    assert abs(kls[0].item() - kls[1].item()) < 1e-5 * kls[1].item()


def test_full_attention_by_sdpa_over_a_cache_equals_the_oracle():
    sdpa, oracle = sdpa_and_oracle_models()
    tokens = torch.randint(0, 512, (2, 37))
    outs = []
    with torch.no_grad():
        for m in (sdpa, oracle):
            caches = make_caches(m.cfg, 2, 40)
            parts = [m(tokens[:, :11], 0, caches, sparse=False)[0],
                     m(tokens[:, 11:20], 11, caches, sparse=False)[0]]
            parts += [m(tokens[:, t:t + 1], t, caches, sparse=False)[0] for t in range(20, 37)]
            outs.append(torch.cat(parts, 1))
        full = oracle(tokens, sparse=False)[0]
    assert rel_err(outs[0], outs[1]) < 1e-5 and rel_err(outs[0], full) < 1e-5


def test_plain_full_attention_never_touches_the_oracle(monkeypatch):
    """No [B, S, H, T] scores and no [S, T] mask on the pre-training path."""
    cfg = get_config("tiny")
    assert cfg.full_attn_impl == "sdpa"
    model = Transformer(cfg)
    tokens = torch.randint(0, 512, (2, 37))

    def banned(*a, **k):
        raise AssertionError("the einsum oracle ran")

    for name in ("mha_attention", "absorbed_attention", "causal_mask"):
        monkeypatch.setattr(attention, name, banned)
    model(tokens, sparse=False)[0].sum().backward()
    with torch.no_grad():
        caches = make_caches(cfg, 2, 40)
        model(tokens[:, :30], 0, caches, sparse=False)
        model(tokens[:, 30:31], 30, caches, sparse=False)
