"""Generation: cached batched decoding equals naive recomputation; sampling filters."""

import pytest
import torch

from envfactory.model.config import get_config
from envfactory.model.generate import GenerationConfig, generate, logits_to_probs, sample
from envfactory.model.transformer import Transformer


def naive_greedy(model, prompt, n, stop=()):
    seq, new = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([seq]))[0][0, -1].argmax())
            new.append(nxt)
            seq.append(nxt)
            if nxt in stop:
                break
    return new


@pytest.mark.parametrize("impl", ["dense", "sparse"])
def test_batched_greedy_equals_naive_recomputation(impl):
    model = Transformer(get_config("tiny", attn_impl=impl)).eval()
    prompts = [[5, 9, 200, 7, 1, 3, 3, 8, 100, 2, 4], [17, 4], [300, 301, 302, 303, 304, 305, 306]]
    got = generate(model, prompts, GenerationConfig(max_new_tokens=9, temperature=0))
    assert got == [naive_greedy(model, p, 9) for p in prompts]


def test_stop_ids_end_a_row_and_keep_the_stop_token():
    model = Transformer(get_config("tiny")).eval()
    free = naive_greedy(model, [1, 2, 3], 12)
    stop = free[4]
    got = generate(model, [[1, 2, 3]], GenerationConfig(max_new_tokens=12, temperature=0, stop_ids=(stop,)))
    assert got == [free[: free.index(stop) + 1]]


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    probs = logits_to_probs(logits, 1.0, 0.7)
    assert torch.allclose(probs, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    probs = logits_to_probs(logits, 1.0, 0.85)
    assert torch.allclose(probs, torch.tensor([[0.5, 0.3, 0.15, 0.0]]) / 0.95)


def test_sampling_is_seeded_and_follows_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.0]]).expand(4000, 3)
    g = torch.Generator().manual_seed(0)
    draws = sample(logits, 1.0, 1.0, g)
    freq = torch.bincount(draws, minlength=3) / 4000
    assert torch.allclose(freq, torch.softmax(torch.tensor([2.0, 1.0, 0.0]), 0), atol=0.03)
    cold = sample(logits, 0.05, 1.0, torch.Generator().manual_seed(0))
    assert (cold == 0).all()
    model = Transformer(get_config("tiny")).eval()
    gen = GenerationConfig(max_new_tokens=6, temperature=1.0, top_p=0.9, seed=3)
    assert generate(model, [[1, 2], [3]], gen) == generate(model, [[1, 2], [3]], gen)
