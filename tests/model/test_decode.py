"""The fixed-shape batched decoder against the model's own forward: rows of different
lengths, each step's logits equal a fresh recomputation of that row alone; MoE layers, FP8
index keys and full attention too; and `Engine.generate_batch` equals `generate` row by row.
Seeds are printed; sizes are odd on purpose."""

import random

import pytest
import torch

from envfactory.model.config import get_config
from envfactory.model.constrain import Constraint
from envfactory.model.decode import BatchDecoder
from envfactory.model.engine import Engine, SamplingParams
from envfactory.model.transformer import Transformer
from tests.model.test_engine import tok  # noqa: F401  (the module's tokenizer fixture)

VARIANTS = {
    "sparse": dict(attn_impl="sparse"),
    "dense-masked": dict(attn_impl="dense"),
    "moe": dict(attn_impl="sparse", n_routed_experts=6, n_activated_experts=2, n_dense_layers=1,
                moe_inter_dim=24, n_expert_groups=2, n_limited_groups=1),
    "fp8-index": dict(attn_impl="sparse", index_fp8=True),
}


def _model(seed: int, **kw) -> Transformer:
    torch.manual_seed(seed)
    cfg = get_config("tiny", vocab_size=301, max_seq_len=64, index_topk=7, **kw)
    return Transformer(cfg).double().eval()  # the model's attention cores are fp32 all the same


def _recompute(model, ids: list[int], sparse: bool) -> torch.Tensor:
    logits, _ = model(torch.tensor([ids]), 0, None, sparse=sparse)
    return logits[0, -1]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("sparse", [True, False])
def test_each_step_equals_recomputing_the_row_alone(variant, sparse):
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    model = _model(seed, **VARIANTS[variant])
    rng = random.Random(seed)
    lens = [5, 13, 13, 1, 9]  # rows 1 and 2 prefill together; row 3 holds one token
    prompts = [[rng.randrange(301) for _ in range(n)] for n in lens]
    dec = BatchDecoder(model, len(prompts), 40, sparse=sparse)
    with torch.no_grad():
        first = dec.prefill(prompts)
        for b, p in enumerate(prompts):
            torch.testing.assert_close(first[b], _recompute(model, p, sparse), rtol=1e-5, atol=1e-5)
        seqs = [list(p) for p in prompts]
        for _ in range(6):
            nxt = [rng.randrange(301) for _ in prompts]
            pos = torch.tensor([len(s) for s in seqs])
            got = dec.step(torch.tensor(nxt), pos)
            for b, s in enumerate(seqs):
                s.append(nxt[b])
                torch.testing.assert_close(got[b], _recompute(model, s, sparse), rtol=1e-5, atol=1e-5,
                                           msg=f"row {b} at position {len(s) - 1}")


def test_rows_past_the_top_k_select_as_the_model_does():
    """Long rows (past index_topk) exercise the selection: the stable sort's ties and the
    masked future must pick the same keys as `select_topk`, or the logits differ."""
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    model = _model(seed, attn_impl="sparse")
    rng = random.Random(seed)
    prompts = [[rng.randrange(301) for _ in range(n)] for n in (30, 22)]
    dec = BatchDecoder(model, 2, 48)
    with torch.no_grad():
        dec.prefill(prompts)
        for _ in range(10):
            nxt = [rng.randrange(301) for _ in prompts]
            got = dec.step(torch.tensor(nxt), torch.tensor([len(p) for p in prompts]))
            for b, p in enumerate(prompts):
                p.append(nxt[b])
                torch.testing.assert_close(got[b], _recompute(model, p, True), rtol=1e-5, atol=1e-5)


def test_generate_batch_equals_generate_per_row(tok):  # noqa: F811
    torch.manual_seed(3)
    model = Transformer(get_config("tiny", vocab_size=tok.vocab_size, attn_impl="sparse",
                                   max_seq_len=256)).eval()
    eng = Engine(model, tok)
    texts = ["def add(a, b):\n    return", "import os\n", "class Stack:\n    def push(self, x):\n        self.", "x"]
    prompts = [tok.encode(t, bos=True) for t in texts]
    params = SamplingParams(max_tokens=14, temperature=0, stop=("\n\n",))
    batch = eng.generate_batch(prompts, params)
    for p, got in zip(prompts, batch):
        want = Engine(model, tok).generate(p, params)
        assert (got.ids, got.text, got.finish_reason) == (want.ids, want.text, want.finish_reason)
        assert got.prompt_tokens == len(p)


def test_generate_batch_holds_each_rows_grammar_under_random_weights(tok):  # noqa: F811
    import json

    torch.manual_seed(5)
    model = Transformer(get_config("tiny", vocab_size=tok.vocab_size, attn_impl="sparse",
                                   max_seq_len=256)).eval()
    schemas = [{"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
                "additionalProperties": False},
               {"type": "object", "properties": {"k": {"enum": ["a", "bb"]}}, "required": ["k"],
                "additionalProperties": False}]
    prompts = [tok.encode("Answer:", bos=True), tok.encode("A longer prompt, then the answer:", bos=True)]
    out = Engine(model, tok).generate_batch(
        prompts, SamplingParams(max_tokens=60, temperature=1.0, seed=9),
        [Constraint.json(tok, s) for s in schemas])
    a, b = (json.loads(o.text) for o in out)
    assert isinstance(a["n"], int) and b["k"] in ("a", "bb")
    assert all(o.finish_reason == "stop" for o in out)


def test_bad_batches_are_refused(tok):  # noqa: F811
    model = Transformer(get_config("tiny", vocab_size=tok.vocab_size, max_seq_len=32)).eval()
    eng = Engine(model, tok)
    with pytest.raises(ValueError, match="at least one token"):
        eng.generate_batch([[1, 2], []])
    with pytest.raises(ValueError, match="leaves no room"):
        eng.generate_batch([[1] * 40])
    with pytest.raises(ValueError, match="one constraint"):
        eng.generate_batch([[1, 2]], constraints=[None, None])
    with pytest.raises(RuntimeError, match="CUDA"):
        BatchDecoder(model, 1, 16).capture()
