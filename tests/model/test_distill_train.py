"""`model.distill` end to end on the CPU with a tiny model: decision records and tool-use
trajectories prepared together (one tokenizer, per-kind held-out sets, masks that train the
assistant's tokens only), the four stages run, and the checkpoint loads and serves."""

import json
from pathlib import Path

import torch

from envfactory.factory.agents.distill import read_records, solve_records
from envfactory.model.checkpoint import load_pretrained
from envfactory.model.config import get_config
from envfactory.model.distill import ExampleBatches, prepare, train_prepared
from envfactory.model.engine import Engine, SamplingParams
from tests.conftest import env_dirs

DECISIONS = Path(__file__).parent / "data" / "trip_decisions.jsonl"


def test_decisions_and_trajectories_train_into_a_loadable_checkpoint(bundle, tmp_path):
    records = read_records([DECISIONS]) * 10
    for env in env_dirs(bundle):
        records += solve_records(env)[:2]  # levels 0 and 1: the shortest trajectories
    cfg = get_config("tiny", vocab_size=1024, max_seq_len=8192, index_topk=64)
    meta = prepare(records, tmp_path / "data", cfg, log=lambda m: None)
    n_solve = sum(r["decision"] == "solve" for r in records)
    assert meta["decisions"]["solve"] == n_solve == 6 and meta["dropped"] == 0
    assert meta["held_out"] == {"decision": 1, "solve": 1}
    blob = torch.load(tmp_path / "data" / "examples.pt")
    # the loss sees assistant tokens only: every target is a trained token or ignored
    x, y = next(ExampleBatches(blob["examples"], 16_384, True, 1, device=None))
    for row_x, row_y in zip(x, y):
        keep = row_y != -100
        assert keep.any() and keep.sum() < (row_x != 1).sum() / 2  # answers are the small part
    metrics = train_prepared(tmp_path / "data", tmp_path / "ckpt", time_budget=4.0, batch_tokens=6_000,
                             log=lambda m: None, warmup_steps=1)
    assert list(metrics["stages"]) == ["pretrain", "sft", "warmup", "sparse"]
    for st in metrics["stages"].values():
        assert st["steps"] >= 1 and set(st["held_out_answer_accuracy"]) == {"decision", "solve"}
    assert json.loads((tmp_path / "ckpt" / "distill.json").read_text())["decisions"]["solve"] == n_solve
    model, tok = load_pretrained(tmp_path / "ckpt")
    assert model.cfg.max_seq_len == 8192
    out = Engine(model, tok).generate(tok.encode("<｜begin▁of▁sentence｜>Plan"), SamplingParams(max_tokens=4))
    assert 1 <= len(out.ids) <= 4
