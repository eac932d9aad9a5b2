"""Validation loss, the indexer's recall@k metric, and time-budgeted training."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from envfactory.model.config import get_config
from envfactory.model.data import TokenBatches
from envfactory.model.evaluate import indexer_recall, recall_terms, val_loss, val_windows
from envfactory.model.indexer import causal_mask, index_kl
from envfactory.model.train import TrainConfig, planned_steps, train
from envfactory.model.transformer import Transformer

CFG = get_config("tiny")


def brute_recall(scores, p, k):
    """Sets and loops: the definition written out."""
    B, S, _ = scores.shape
    hits = local = mass = 0.0
    n = 0
    for b in range(B):
        for s in range(k, S):  # queries that see s + 1 > k keys
            vis = list(range(s + 1))
            ind = sorted(vis, key=lambda t: (-scores[b, s, t].item(), t))[:k]
            att = set(sorted(vis, key=lambda t: -p[b, s, t].item())[:k])
            hits += len(att & set(ind)) / k
            local += len(att & set(range(s - k + 1, s + 1))) / k
            mass += sum(p[b, s, t].item() for t in ind)
            n += 1
    return hits, local, mass, n


def random_target(B, S):
    logits = torch.randn(B, S, S) * 2 + causal_mask(S, S, 0)
    return torch.softmax(logits, dim=-1)


@pytest.mark.parametrize("k", [1, 4, 7])
def test_recall_terms_match_the_definition(k):
    p = random_target(2, 13)
    scores = torch.randn(2, 13, 13)
    t = recall_terms(scores, p, k)
    hits, local, mass, n = brute_recall(scores, p, k)
    assert t["n"] == n == 2 * (13 - k)
    assert t["hits"].item() == pytest.approx(hits, abs=1e-5)
    assert t["local"].item() == pytest.approx(local, abs=1e-5)
    assert t["mass"].item() == pytest.approx(mass, abs=1e-5)


def test_recall_is_one_for_a_perfect_ranking_and_low_for_a_reversed_one():
    p = random_target(2, 40)
    k = 8
    perfect = recall_terms(p.log(), p, k)  # any increasing function of p ranks the same
    assert perfect["hits"].item() / perfect["n"] == pytest.approx(1.0)
    top = p.topk(k, dim=-1).values[:, k:].sum()
    assert perfect["mass"].item() == pytest.approx(top.item(), rel=1e-5)
    reverse = recall_terms(-p + causal_mask(40, 40, 0).clamp(min=-1e4), p, k)
    assert reverse["hits"].item() / reverse["n"] < 0.2


def test_probe_sees_each_layers_input_and_reproduces_the_warmup_kl():
    """The recall hook must read the same attention and indexer scores the warm-up trains
    on: the KL computed from `probe` equals the model's own warm-up KL."""
    model = Transformer(CFG).eval()
    with torch.no_grad():
        for layer in model.layers:
            layer.self_attn.q_b_proj.weight.mul_(30.0)
    tokens = torch.randint(0, CFG.vocab_size, (2, 24))
    kls = []

    def hook(mod, args):
        scores, p = mod.probe(*args[:3])
        kls.append(index_kl(scores, causal_mask(24, 24, 0), p))

    hs = [layer.self_attn.register_forward_pre_hook(hook) for layer in model.layers]
    with torch.no_grad():
        _, kl = model(tokens, sparse=False, index_loss=True)
    for h in hs:
        h.remove()
    assert len(kls) == CFG.n_layers
    assert torch.stack(kls).mean().item() == pytest.approx(kl.item(), rel=1e-5)
    assert kl.item() > 1e-3  # a random indexer is far from the attention


def test_indexer_recall_reports_sane_fractions():
    model = Transformer(CFG)
    win = torch.randint(0, CFG.vocab_size, (3, 32))
    out = indexer_recall(model, win, [4, 16], batch_size=2)
    for k, r in out.items():
        assert r["queries"] == 3 * (32 - k)
        assert 0.0 <= r["recall"] <= r["recall_all"] <= 1.0
        assert 0.0 < r["mass"] <= 1.0 and 0.0 <= r["local_recall"] <= 1.0
        assert len(r["per_layer"]) == CFG.n_layers
    assert out[16]["recall"] > out[4]["recall"]  # half the keys vs an eighth, even at random
    with pytest.raises(ValueError):
        indexer_recall(model, win, [32])


def test_val_loss_matches_cross_entropy_and_topk_covering_all_equals_dense():
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, 200).astype(np.uint16)
    win = val_windows(tokens, 16)
    assert win.shape == (12, 17) and torch.equal(win[1, 0], torch.tensor(int(tokens[16])))
    model = Transformer(CFG)
    with torch.no_grad():
        logits, _ = model(win[:, :-1], sparse=False)
    ref = F.cross_entropy(logits.flatten(0, 1), win[:, 1:].flatten()).item()
    assert val_loss(model, win, sparse=False, batch_size=5) == pytest.approx(ref, rel=1e-5)
    wide = Transformer(get_config("tiny", index_topk=16))
    wide.load_state_dict(model.state_dict())
    assert val_loss(wide, win, sparse=True) == pytest.approx(ref, rel=1e-5)
    assert val_loss(model, win, sparse=True) != pytest.approx(ref, rel=1e-4)  # k=8 of 16 drops keys


def test_planned_steps_fit_the_budget():
    # 10 steps done in 12 s, the last 5 in 5 s (1 s each); 30 s budget: 18 s left -> 18 more
    assert planned_steps(9, 1000, 12.0, 5.0, 5, 30.0) == 28
    assert planned_steps(9, 20, 12.0, 5.0, 5, 30.0) == 20  # the ceiling holds
    assert planned_steps(9, 1000, 40.0, 5.0, 5, 30.0) == 10  # over budget: stop now


def test_train_with_a_time_budget_stops_early():
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, 2000).astype(np.uint16)
    model = Transformer(CFG)
    tcfg = TrainConfig(stage="pretrain", steps=40, batch_size=2, seq_len=16, lr=1e-3)
    assert len(train(model, TokenBatches(tokens, 2, 16), tcfg, time_budget=0.0)) == 9
    assert len(train(model, TokenBatches(tokens, 2, 16), tcfg, time_budget=1e6)) == 40
