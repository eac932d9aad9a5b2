"""JSONL export: NeMo Gym, slime and OpenRLHF rows read back, and their reward hooks."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from types import SimpleNamespace

from .conftest import all_tasks, as_response, mutant


def _rows(path):
    return [json.loads(l) for l in path.read_text().splitlines()]


def test_rows_and_rewards(exports, bundle):
    out = exports["jsonl"]
    spec = importlib.util.spec_from_file_location("_jsonl_rewards_test", out / "rewards.py")
    rewards = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rewards)
    tasks = {t["task_id"]: t for t in all_tasks(bundle)}
    for split in ("train", "test"):
        nemo, slime, orl = (_rows(out / f / f"{split}.jsonl") for f in ("nemo_gym", "slime", "openrlhf"))
        assert len(nemo) == len(slime) == len(orl) > 0
        for n, s, o in zip(nemo, slime, orl):
            t = tasks[n["task_id"]]
            messages = [{"role": m["role"], "content": m["content"]} for m in t["messages"]]
            assert n["responses_create_params"]["input"] == messages == s["prompt"] == o["prompt"]
            tools = n["responses_create_params"]["tools"]
            assert [x["name"] for x in tools] == t["tools"]
            assert all(x["type"] == "function" and x["strict"] is True and "function" not in x for x in tools)
            assert [x["function"]["name"] for x in s["tools"]] == t["tools"]
            assert json.loads(n["expected_answer"]) == t["reference_answer"]
            assert s["metadata"] == {"source_name": t["env_id"], "task_id": t["task_id"], "level": t["level"]}
            assert json.loads(s["label"]) == json.loads(o["label"]) == {"task_id": t["task_id"],
                                                                         "reference_answer": t["reference_answer"]}
            assert o["datasource"] == t["env_id"]
            good, bad = as_response(t["reference_answer"]), as_response(mutant(t["reference_answer"]))
            assert rewards.nemo_gym_verify(n, good)["reward"] == 1.0
            verdict = rewards.nemo_gym_verify(n, bad)
            assert verdict["reward"] == 0.0 and not all(c["passed"] for c in verdict["checks"])
            sample = SimpleNamespace(metadata=s["metadata"], label=s["label"], response=good)
            assert asyncio.run(rewards.custom_rm(None, sample)) == 1.0
            sample.response = bad
            assert asyncio.run(rewards.custom_rm(None, sample)) == 0.0
        refs = [tasks[json.loads(o["label"])["task_id"]]["reference_answer"] for o in orl]
        res = rewards.reward_func(["PROMPT" + as_response(r) for r in refs], ["PROMPT"] * len(orl),
                                  [o["label"] for o in orl])
        assert [float(x) for x in res["rewards"]] == [1.0] * len(orl)
        assert [float(x) for x in rewards.reward_func(["{}"] * len(orl), [""] * len(orl), [o["label"] for o in orl])["scores"]] \
            == [0.0] * len(orl)
