"""Drive a jsonl export's OpenRLHF rows, reward hook and agent module through OpenRLHF's own code.

    python jsonl_openrlhf.py EXPORT_DIR DATA_JSON WORK_DIR

DATA_JSON: {"tasks": {task_id: {"good", "bad" (single-turn responses: the reference and a
mutant in a realistic transcript), "answer", "mutant" (the plans), "calls": [{name, arguments}],
"tools": [the task's tool names]}}, "foreign_tool": a tool outside the first task's tools or null}.

OpenRLHF's training loop needs GPUs (vLLM, DeepSpeed); what runs here is its data and rollout
code on CPU, with a real tokenizer (tests/trainers/drivers/tiny_model.py, ChatML with hermes
tool calls, trained on the rows' text) and, standing in for the vLLM engine, a scripted policy
that replays a task's reference tool calls one per turn and then answers:

- `openrlhf.datasets.utils.blending_datasets` + `PromptDataset` (the `--prompt_data` path with
  `--data.input_key prompt --data.label_key label --data.apply_chat_template`);
- `SingleTurnAgentExecutor(remote_rm_url=["rewards.py"])` (its own `reward_func` loader) and
  its `execute()`, which decodes prompt + response and calls the hook;
- `openrlhf.trainer.ray.vllm_engine._load_agent_executor("openrlhf_agent.py")` (the
  `--train.agent_func_path` loader; `vllm` is replaced by an empty stand-in module, as
  OpenRLHF's own tests do, since it is never called here) and the loaded executor's
  `execute()`: OpenRLHF's `MultiTurnAgentExecutor` loop over our `AgentInstance`;
- `SamplesGenerator._process_response_into_experience` on that output (the training sample:
  action mask over the model's tokens only).

Prints one JSON line with the measurements.
"""

from __future__ import annotations

import asyncio
import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent


def stub_vllm() -> None:
    """`vllm` (CUDA only) as an empty module with the three names OpenRLHF imports from it."""
    vllm = types.ModuleType("vllm")
    vllm.__version__ = "0.29.0"
    vllm.SamplingParams = SimpleNamespace
    inputs, utils = types.ModuleType("vllm.inputs"), types.ModuleType("vllm.utils")
    inputs.TokensPrompt = dict
    utils.random_uuid = lambda: "0"
    vllm.inputs, vllm.utils = inputs, utils
    sys.modules.update({"vllm": vllm, "vllm.inputs": inputs, "vllm.utils": utils})


def tokenizer_for(out: Path, work: Path):
    """A tiny_model tokenizer trained on the export's rows, loaded as trainers load it."""
    sys.path.insert(0, str(HERE))
    import tiny_model
    from transformers import AutoTokenizer

    corpus = work / "corpus.txt"
    corpus.write_text("\n".join(p.read_text(encoding="utf-8") for p in sorted((out / "openrlhf").glob("*.jsonl"))),
                      encoding="utf-8")
    tiny_model.build(work / "tiny", corpus=[corpus])
    return AutoTokenizer.from_pretrained(work / "tiny")


class ScriptedEngine:
    """Stands in for OpenRLHF's vLLM engine: `generate(token_ids, params)` answers the next
    scripted turn, tokenized, ending with the EOS token as a chat model's turn does."""

    def __init__(self, tokenizer, turns: list[str]):
        self.tokenizer, self.turns, self.prompts = tokenizer, list(turns), []

    async def generate(self, token_ids, params, **kwargs):
        self.prompts.append(list(token_ids))
        text = self.turns.pop(0) if self.turns else "(nothing more to say)"
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        return SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, text=self.tokenizer.decode(ids),
                                                        finish_reason="stop", logprobs=None)])


def dataset(out: Path, tokenizer):
    from openrlhf.datasets import PromptDataset
    from openrlhf.datasets.utils import blending_datasets

    data_args = SimpleNamespace(input_key="prompt", label_key="label", apply_chat_template=True, image_key="images")
    strategy = SimpleNamespace(args=SimpleNamespace(data=data_args, use_ms=False), print=lambda *a: None,
                               is_rank_0=lambda: True)
    rows, prompts = [], []
    for path in sorted((out / "openrlhf").glob("*.jsonl")):
        ds = PromptDataset(blending_datasets(str(path), strategy=strategy), tokenizer, strategy)
        prompts += [ds[i] for i in range(len(ds))]
        rows += [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines()]
    expected = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in rows]
    return rows, prompts, {
        "rows": len(rows), "prompts_match": sum(p[1] == e for p, e in zip(prompts, expected)),
        "labels_match": sum(p[2] == r["label"] for p, r in zip(prompts, rows)),
        "datasources_match": sum(p[0] == r["datasource"] for p, r in zip(prompts, rows))}


def params():
    return SimpleNamespace(max_tokens=None, logprobs=None)


async def single_turn(out: Path, tokenizer, prompt: str, label: str, text: str) -> dict:
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    executor = SingleTurnAgentExecutor(remote_rm_url=[str(out / "rewards.py")])
    result = await executor.execute(prompt, label, params(), 400000, tokenizer, ScriptedEngine(tokenizer, [text]))
    return {"reward": float(result["reward"][0]), "scores": float(result["scores"][0])}


def final_text(answer: dict) -> str:
    return "<think>I have what I need.</think>\nThe plan:\n```json\n" + json.dumps(answer) + "\n```"


def call_text(call: dict) -> str:
    return "<tool_call>\n" + json.dumps({"name": call["name"], "arguments": call["arguments"]}) + "\n</tool_call>"


async def multi_turn(out: Path, tokenizer, executor, prompt: str, label: str, calls: list[dict], final: str,
                     tools: list[str] = ()):
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

    engine = ScriptedEngine(tokenizer, [*map(call_text, calls), final])
    result = await executor.execute(prompt, label, params(), 400000, tokenizer, engine)
    seen = [tokenizer.decode(p) for p in engine.prompts]  # what the policy saw before each turn
    # the last tool turn before policy turn i + 1 holds call i's output
    responses = [json.loads(s.rsplit("<tool_response>\n", 1)[1].split("\n</tool_response>", 1)[0])
                 for s in seen[1:len(calls) + 1] if "<tool_response>\n" in s]
    experience = SamplesGenerator.__new__(SamplesGenerator)._process_response_into_experience(result, max_len=400000)
    action_tokens = sum(e - s for s, e in result["action_ranges"])
    return {
        "reward": float(result["reward"]), "scores": float(result["scores"]), "turns": len(result["action_ranges"]),
        "tools_in_prompt": [n for n in tools if f'"name": "{n}"' in seen[0].split("<|im_start|>user")[0]],
        "prompt_has_tools_block": "<tools>" in seen[0] and seen[0].endswith("<|im_start|>assistant\n"),
        "turn_openings_ok": sum(s.endswith("</tool_response><|im_end|>\n<|im_start|>assistant\n") for s in seen[1:]),
        "responses_with_results": sum(bool(r.get("results")) for r in responses),
        "responses_with_error": sum("error" in r for r in responses),
        "extra_logs": result["extra_logs"],
        "experience_action_tokens": int(experience.action_mask.sum()), "action_tokens": action_tokens,
        "experience_reward": float(experience.rewards[0]), "tokens": len(result["observation_tokens"])}


async def run(out: Path, data: dict, work: Path) -> dict:
    stub_vllm()
    from openrlhf.trainer.ray.vllm_engine import _load_agent_executor

    tokenizer = tokenizer_for(out, work)
    rows, prompts, ds = dataset(out, tokenizer)
    by_task = {json.loads(r["label"])["task_id"]: (p[1], p[2]) for r, p in zip(rows, prompts)}
    executor = _load_agent_executor(str(out / "openrlhf_agent.py"))
    result = {"dataset": ds, "executor": type(executor).__name__, "single_turn": {}, "multi_turn": {}}
    for task_id, t in data["tasks"].items():
        prompt, label = by_task[task_id]
        result["single_turn"][task_id] = {k: await single_turn(out, tokenizer, prompt, label, t[k])
                                          for k in ("good", "bad")}
        result["multi_turn"][task_id] = {
            "good": await multi_turn(out, tokenizer, executor, prompt, label, t["calls"], final_text(t["answer"]),
                                     t["tools"]),
            "bad": await multi_turn(out, tokenizer, executor, prompt, label, t["calls"][:2], final_text(t["mutant"])),
            "junk": await multi_turn(out, tokenizer, executor, prompt, label, [], "I cannot plan this trip.")}
    first = next(iter(data["tasks"]))
    if data.get("foreign_tool"):
        prompt, label = by_task[first]
        result["foreign"] = await multi_turn(out, tokenizer, executor, prompt, label,
                                             [{"name": data["foreign_tool"], "arguments": {}}], "{}")
    prompt, _ = by_task[first]
    result["unknown_label"] = await multi_turn(out, tokenizer, executor, prompt, "not a label", [],
                                               final_text(data["tasks"][first]["answer"]))
    return result


if __name__ == "__main__":
    out, data, work = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text(encoding="utf-8")), Path(sys.argv[3])
    print(json.dumps(asyncio.run(run(out, data, work))))
