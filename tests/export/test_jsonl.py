"""JSONL export: NeMo Gym, slime and OpenRLHF rows read back, their reward hooks (on wrong
types too), the shared tool loop, and slime's multi-turn generate over a stand-in of the slime
API it calls. tests/trainers/test_jsonl_trainers.py runs the rows, hooks, the OpenRLHF agent
and the NeMo Gym server inside OpenRLHF 0.11.2 and nemo-gym 0.7.0."""

from __future__ import annotations

import ast
import asyncio
import enum
import importlib.util
import json
import re
import sys
import types
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from envfactory.factory.export.common import render

from .conftest import all_tasks, as_response, mutant


def _rows(path):
    return [json.loads(l) for l in path.read_text().splitlines()]


def _load(path, name):
    spec = importlib.util.spec_from_file_location(f"{name}_{abs(hash(str(path)))}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def rewards(exports):
    return _load(exports["jsonl"] / "rewards.py", "_jsonl_rewards_test")


def test_rows_and_rewards(exports, bundle, rewards):
    out = exports["jsonl"]
    tasks = {t["task_id"]: t for t in all_tasks(bundle)}
    seen = set()
    for split in ("train", "test"):
        nemo, slime, orl = (_rows(out / f / f"{split}.jsonl") for f in ("nemo_gym", "slime", "openrlhf"))
        assert len(nemo) == len(slime) == len(orl) > 0
        for n, s, o in zip(nemo, slime, orl):
            t = tasks[n["task_id"]]
            seen.add(t["task_id"])
            messages = [{"role": m["role"], "content": m["content"]} for m in t["messages"]]
            assert n["responses_create_params"]["input"] == messages == s["prompt"] == o["prompt"]
            tools = n["responses_create_params"]["tools"]
            assert [x["name"] for x in tools] == t["tools"]
            assert all(x["type"] == "function" and x["strict"] is True and "function" not in x for x in tools)
            assert [x["function"]["name"] for x in s["tools"]] == t["tools"]
            assert json.loads(o["tools"]) == s["tools"]  # JSON text: one arrow type for any schemas
            assert json.loads(n["expected_answer"]) == t["reference_answer"]
            assert n["verifier_metadata"] == {"task_id": t["task_id"], "env_id": t["env_id"], "level": t["level"]}
            assert s["metadata"] == {"source_name": t["env_id"], "task_id": t["task_id"], "level": t["level"]}
            assert json.loads(s["label"]) == json.loads(o["label"]) == {"task_id": t["task_id"],
                                                                         "reference_answer": t["reference_answer"]}
            assert o["datasource"] == t["env_id"]
            good, bad = as_response(t["reference_answer"]), as_response(mutant(t["reference_answer"]))
            assert rewards.nemo_gym_verify(n, good)["reward"] == 1.0
            verdict = rewards.nemo_gym_verify(n, bad)
            assert verdict["reward"] == 0.0 and "linked" in [c["name"] for c in verdict["checks"] if not c["passed"]]
            sample = SimpleNamespace(metadata=s["metadata"], label=s["label"], response=good)
            assert asyncio.run(rewards.custom_rm(None, sample)) == 1.0
            sample.response = bad
            assert asyncio.run(rewards.custom_rm(None, sample)) == 0.0
            assert asyncio.run(rewards.custom_rm(None, [sample, SimpleNamespace(metadata=s["metadata"],
                                                                                response=good)])) == [0.0, 1.0]
        refs = [tasks[json.loads(o["label"])["task_id"]]["reference_answer"] for o in orl]
        res = rewards.reward_func(["PROMPT" + as_response(r) for r in refs], ["PROMPT"] * len(orl),
                                  [o["label"] for o in orl])
        assert [float(x) for x in res["rewards"]] == [1.0] * len(orl)
        assert [float(x) for x in rewards.reward_func(["{}"] * len(orl), [""] * len(orl),
                                                      [o["label"] for o in orl])["scores"]] == [0.0] * len(orl)
    assert seen == set(tasks)


def test_responses_api_response_is_scored_by_its_last_message(bundle, rewards):
    t = all_tasks(bundle)[0]
    row = {"task_id": t["task_id"]}

    def response(*texts):
        return {"output": [{"type": "function_call", "name": "list_cities", "arguments": "{}"},
                           *({"type": "message", "content": [{"type": "output_text", "text": x}]} for x in texts)]}

    good, bad = as_response(t["reference_answer"]), as_response(mutant(t["reference_answer"]))
    assert rewards.nemo_gym_verify(row, response(good))["reward"] == 1.0
    assert rewards.nemo_gym_verify(row, response(good, bad))["reward"] == 0.0  # the last message counts
    assert rewards.nemo_gym_verify(row, response(bad, good))["reward"] == 1.0
    assert rewards.nemo_gym_verify(row, response())["reward"] == 0.0  # tool calls only, no message
    by_metadata = {"verifier_metadata": {"task_id": t["task_id"]}}
    assert rewards.nemo_gym_verify(by_metadata, good)["reward"] == 1.0


WRONG = [None, b"\xff\xfe{", bytearray(b"{}"), [], [None, 1], {}, {"days": None}, 5, 1.5, True, object(),
         "{" * 10000, '{"task_id": 5}', "[]"]


def _batch_len(x) -> int:
    """How many scores a batch hook owes for `x`: one per item of a list, none for None, else one."""
    return len(x) if isinstance(x, (list, tuple)) else 0 if x is None else 1


def test_hooks_never_raise_on_wrong_types(bundle, rewards):
    """Every hook over every wrong input in every slot: a float 0.0 and, where the hook
    returns checks, a failed one with a reason."""
    t = all_tasks(bundle)[0]
    label = json.dumps({"task_id": t["task_id"]})
    good = as_response(t["reference_answer"])
    for x in WRONG:
        for task_id in (x, t["task_id"]):
            v = rewards.verdict(task_id, x)
            assert v["score"] == 0.0 and any(not c["passed"] and c["reason"] for c in v["checks"]), (task_id, x)
        assert rewards.score(x, good) == 0.0
        assert rewards.task_of(x) is None
        for sample in (SimpleNamespace(metadata=x, label=x, response=x), SimpleNamespace(metadata=x, label=label,
                       response=x), SimpleNamespace()):
            assert asyncio.run(rewards.custom_rm(None, sample)) == 0.0
        # a list is slime's batch call: one score per item
        assert asyncio.run(rewards.custom_rm(None, x)) == ([0.0] * len(x) if isinstance(x, list) else 0.0)
        assert asyncio.run(rewards.batched_custom_rm(None, x)) == [0.0] * _batch_len(x)
        assert asyncio.run(rewards.custom_rm(None, [x, SimpleNamespace(response=x)], evaluation=True)) == [0.0, 0.0]
        for args in ((x, x, x), ([x], [x], [x]), ([good], [""], [x]), ([x], [""], [label])):
            scores = rewards.reward_func(*args)["rewards"]
            assert [float(s) for s in scores] == [0.0] * _batch_len(args[0]), args
        for row in (x, {"task_id": x}, {"verifier_metadata": x}, {"task_id": t["task_id"]}):
            v = rewards.nemo_gym_verify(row, x)
            assert v["reward"] == 0.0 and not all(c["passed"] for c in v["checks"]), (row, x)
    # a label given parsed, or as bytes, still names its task; missing prompts and labels count as none
    assert rewards.task_of(label.encode()) == rewards.task_of(json.loads(label)) == t["task_id"]
    res = rewards.reward_func([good, good, good], [""], [label])
    assert [float(s) for s in res["rewards"]] == [1.0, 0.0, 0.0]
    assert float(rewards.reward_func(good, None, label)["scores"][0]) == 1.0  # one query, not a batch


@pytest.fixture(scope="module")
def tool_loop(tmp_path_factory):
    """The shared tool-loop partial, rendered on its own (it expects json and re imported)."""
    path = tmp_path_factory.mktemp("tool_loop") / "tool_loop.py"
    render("tool_loop.py.j2", path)
    ns = {"json": json, "re": re}
    exec(compile(path.read_text(), str(path), "exec"), ns)
    return SimpleNamespace(**ns)


def test_tool_calls_parsed_from_a_turn(tool_loop):
    text = ('<think>maybe <tool_call>{"name": "ignored", "arguments": {}}</tool_call></think>I will look.\n'
            '<tool_call>\n{"name": "search_hotels", "arguments": {"city_id": "7"}}\n</tool_call>\n'
            '<tool_call>{"name": "list_cities", "arguments": "{}"}</tool_call>'
            '<tool_call>{"name": "x", "arguments": "not json"}</tool_call>'
            "<tool_call>[1, 2]</tool_call><tool_call>{broken</tool_call><|im_end|>")
    assert tool_loop.tool_calls(text) == [
        {"name": "search_hotels", "arguments": {"city_id": "7"}}, {"name": "list_cities", "arguments": {}},
        {"error": 'a tool call is {"name": <string>, "arguments": <object>}'},
        {"error": 'a tool call is {"name": <string>, "arguments": <object>}'},
        {"error": "the tool call is not JSON"}]
    assert tool_loop.tool_calls("no calls here") == tool_loop.tool_calls(None) == []
    one = '<tool_call>{"name": "a", "arguments": {}}</tool_call>'
    assert len(tool_loop.tool_calls(one * 20)) == tool_loop.MAX_CALLS_PER_TURN
    # a template that pre-fills "<think>" leaves only "</think>" in the turn: calls before it are reasoning
    assert tool_loop.tool_calls(one + "so I call</think>" + one.replace('"a"', '"b"')) == [
        {"name": "b", "arguments": {}}]


def test_tool_feedback_without_a_chat_template(tool_loop):
    calls = [{"name": "a", "arguments": {}}, {"error": "bad"}]
    plain = "\n<tool_response>\nR1\n</tool_response>\n<tool_response>\nR2\n</tool_response>\n"
    assert tool_loop.tool_feedback(None, calls, ["R1", "R2"]) == plain
    assert tool_loop.tool_feedback(SimpleNamespace(chat_template=None), calls, ["R1", "R2"]) == plain
    assert tool_loop.prompt_with_tools(None, [{"role": "user", "content": "q"}], [], "RENDERED") == "RENDERED"


def test_shipped_modules(exports, bundle):
    out = exports["jsonl"]
    settings = json.loads((out / "export.json").read_text())
    names = {"openrlhf_agent.py": {"AgentInstance", "AgentExecutor"}, "slime_generate.py": {"generate"},
             "nemo_gym_resources_server.py": {"EnvfactoryResourcesServer", "EnvfactoryResourcesServerConfig"},
             "rewards.py": {"reward_func", "custom_rm", "batched_custom_rm", "nemo_gym_verify"}}
    for name, wanted in names.items():
        tree = ast.parse((out / name).read_text(), name)
        defined = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))}
        assert wanted <= defined, (name, wanted - defined)
        if name in ("openrlhf_agent.py", "slime_generate.py"):
            turns = [n.value.value for n in tree.body if isinstance(n, ast.Assign)
                     and getattr(n.targets[0], "id", None) == "MAX_TURNS"]
            assert turns == [settings["max_turns"]], name
    assert settings["max_turns"] == 2 * max(t["min_tool_calls"] for t in all_tasks(bundle)) + 2
    assert "--train.agent_func_path openrlhf_agent.py" in (out / "README.md").read_text()


# A stand-in for the parts of slime (THUDM/slime @ 624b824) that slime_generate calls, written
# from that source: slime is not on PyPI. `generate` answers scripted turns the way slime's
# does (text appended, status from the finish reason, PENDING or ABORTED required).
class _Status(enum.Enum):
    PENDING, COMPLETED, TRUNCATED, ABORTED = "pending", "completed", "truncated", "aborted"


@dataclass
class _Sample:
    Status = _Status
    prompt: str = ""
    tokens: list = field(default_factory=list)
    response: str = ""
    response_length: int = 0
    label: str | None = None
    reward: float | None = None
    loss_mask: list | None = None
    status: _Status = _Status.PENDING
    metadata: dict = field(default_factory=dict)

    def append_response_tokens(self, args=None, *, tokens=None, log_probs=None, trainable=True, meta_info=None,
                               text=None):
        tokens = list(tokens or [])
        self.response += text or ""
        self.tokens += tokens
        self.response_length += len(tokens)
        self.loss_mask = (self.loss_mask or []) + [int(trainable)] * len(tokens)


class _Tokenizer:
    chat_template = None

    def encode(self, text, add_special_tokens=False):
        return list(text.encode("utf-8"))


@pytest.fixture
def slime(exports, monkeypatch):
    turns = []

    async def generate(args, sample, sampling_params):
        assert sample.status in (_Status.PENDING, _Status.ABORTED), sample.status
        text, reason = turns.pop(0)
        sample.append_response_tokens(args, tokens=list(text.encode()), log_probs=[0.0] * len(text.encode()),
                                      trainable=True, text=text)
        sample.status = {"stop": _Status.COMPLETED, "length": _Status.TRUNCATED}[reason]
        return sample

    rollout = types.ModuleType("slime.rollout.sglang_rollout")
    rollout.GenerateState = lambda args: SimpleNamespace(tokenizer=_Tokenizer())
    rollout.generate = generate
    types_mod = types.ModuleType("slime.utils.types")
    types_mod.Sample = _Sample
    for name, mod in {"slime": types.ModuleType("slime"), "slime.rollout": types.ModuleType("slime.rollout"),
                      "slime.utils": types.ModuleType("slime.utils"), "slime.rollout.sglang_rollout": rollout,
                      "slime.utils.types": types_mod}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return SimpleNamespace(module=_load(exports["jsonl"] / "slime_generate.py", "_slime_generate"), turns=turns)


def _call(c):
    return "<tool_call>" + json.dumps({"name": c["name"], "arguments": c["arguments"]}) + "</tool_call>"


def test_slime_generate_runs_the_tool_loop(bundle, slime):
    t = all_tasks(bundle)[0]
    calls = t["reference_tool_calls"]
    slime.turns += [(_call(c), "stop") for c in calls] + [(json.dumps(t["reference_answer"]), "stop")]
    sample = _Sample(label=json.dumps({"task_id": t["task_id"]}), metadata={"task_id": t["task_id"]})
    sample = asyncio.run(slime.module.generate(None, sample, {"max_new_tokens": 10**6}))
    assert sample.reward == 1.0 and sample.status == _Status.COMPLETED and not slime.turns
    outputs = re.findall(r"<tool_response>\n(.*?)\n</tool_response>", sample.response, re.DOTALL)
    assert len(outputs) == len(calls) and all(json.loads(o).get("results") for o in outputs)
    # tool tokens carry loss mask 0, the policy's turns 1
    assert len(sample.loss_mask) == sample.response_length
    assert sum(sample.loss_mask) == sum(len(_call(c).encode()) for c in calls) + len(json.dumps(t["reference_answer"]))

    slime.turns += [(_call(calls[0]), "stop"), (json.dumps(mutant(t["reference_answer"])), "stop")]
    sample = asyncio.run(slime.module.generate(None, _Sample(metadata={"task_id": t["task_id"]}), {}))
    assert sample.reward == 0.0

    slime.turns += [(_call(calls[0]), "stop"), ("cut off mid-", "length")]
    sample = asyncio.run(slime.module.generate(None, _Sample(metadata={"task_id": t["task_id"]}), {}))
    assert sample.reward is None and sample.status == _Status.TRUNCATED  # left to the reward model

    slime.turns += [("a plain turn", "stop")]
    sample = asyncio.run(slime.module.generate(None, _Sample(label="not ours"), {}))
    assert sample.reward is None and sample.response == "a plain turn"
