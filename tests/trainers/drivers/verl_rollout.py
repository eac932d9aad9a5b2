"""verl 0.9.1 rolls out envfactory tasks against a scripted model: verl's `AgentLoopWorker`
runs `ToolAgentLoop` on the rows its `RLHFDataset` yields, with the shipped config, tools and
reward; only the model is replaced.

    python verl_rollout.py EXPORT_DIR MODEL_DIR DATA_JSON WORK_DIR

The model is a loopback HTTP server (127.0.0.1, a free port) that replays each task's
reference trajectory: hermes `<tool_call>` JSON for every reference call, then a final answer
(DATA_JSON gives, per task, the calls and the final texts of each mode). It finds the task
from the user prompt inside the token ids it is sent and the turn from the number of
`<tool_response>` blocks already in them, so the prompt verl builds decides what it answers.
verl's `LLMServerClient.generate` reaches it through the one thing replaced, the Ray handle
of a rollout replica (`_acquire_server`): its `generate.remote(...)` posts to the server.
Rewards run in verl's `RewardLoopWorker` (a Ray actor in training, called directly here),
which loads `reward.custom_reward_function` from the config. Also scores fixed texts through
`load_reward_manager` alone.

Prints one JSON object (last line): per mode and task, what verl's output batch holds.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import verl_common

TOOLS_BLOCK = re.compile(r"<tools>\n(.*?)\n</tools>", re.DOTALL)  # the tiny template's tool list, one per line
TOOL_RESPONSE = re.compile(r"<tool_response>\n(.*?)\n</tool_response>", re.DOTALL)
END = "<|im_end|>"  # the tiny model's end of turn (its eos), as a model's last token


class ScriptedModel:
    """Token ids in, token ids out, like a rollout server; the reply is the script's next turn."""

    def __init__(self, tokenizer, tasks: list[dict]):
        self.tokenizer, self.tasks, self.mode = tokenizer, tasks, "reference"
        self.requests: list[dict] = []
        model = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                try:
                    status, reply = 200, model.reply(body["prompt_ids"])
                except LookupError as e:
                    status, reply = 404, {"error": str(e)}
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def turns(self, task: dict) -> list[str]:
        calls = [f"<tool_call>\n{json.dumps({'name': c['name'], 'arguments': c['arguments']})}\n</tool_call>"
                 for c in task["reference_tool_calls"]]
        return [t + END for t in (*calls, task["final"][self.mode])]

    def reply(self, prompt_ids: list[int]) -> dict:
        text = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        found = [t for t in self.tasks if t["user_prompt"] in text]
        if len(found) != 1:
            raise LookupError(f"{len(found)} tasks match the prompt")
        task, done = found[0], text.count("<tool_response>")
        turns = self.turns(task)
        if done >= len(turns):
            raise LookupError(f"{task['task_id']}: asked for turn {done + 1} of {len(turns)}")
        ids = self.tokenizer.encode(turns[done], add_special_tokens=False)
        self.requests.append({"task_id": task["task_id"], "turn": done, "prompt_tokens": len(prompt_ids)})
        return {"token_ids": ids, "log_probs": [0.0] * len(ids)}  # scripted: every token has probability 1


class _RemoteMethod:
    """A Ray actor method's shape: `handle.method.remote(...)` gives an awaitable."""

    def __init__(self, fn):
        self.remote = fn


class HttpReplica:
    """Stands where verl's rollout replica actor handle stands; `generate` posts to a server."""

    def __init__(self, url: str):
        self.url = url
        self.generate = _RemoteMethod(self._generate)

    async def _generate(self, *, request_id, prompt_ids, sampling_params, **kwargs):
        import aiohttp
        from verl.workers.rollout.replica import TokenOutput

        payload = {"request_id": request_id, "prompt_ids": list(prompt_ids), "sampling_params": sampling_params}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{self.url}/generate", json=payload) as resp:
                body = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"scripted model: {body}")
        return TokenOutput(token_ids=body["token_ids"], log_probs=body["log_probs"], stop_reason="completed",
                           extra_fields={"global_steps": 1})


def _client(config, url: str):
    from verl.workers.rollout.llm_server import LLMServerClient

    class LoopbackClient(LLMServerClient):
        """verl's LLM client with one replica and no load balancer actor."""

        async def _acquire_server(self, request_id, **extra):
            return "loopback", replica

        def _release_server(self, server_id, request_id=None):
            pass

    replica = HttpReplica(url)
    return LoopbackClient(config)


def _segments(ids: list[int], mask: list[int]) -> list[tuple[int, list[int]]]:
    """Runs of equal mask value: [(mask, token ids), ...]."""
    out = []
    for i, m in zip(ids, mask):
        if out and out[-1][0] == m:
            out[-1][1].append(i)
        else:
            out.append((m, [i]))
    return out


def _describe(output, inputs: list[dict], tokenizer, schemas: dict) -> list[dict]:
    """What the output batch holds for each sample, read back from its tensors."""
    batch, nt = output.batch, output.non_tensor_batch
    width = batch["prompts"].shape[1]
    rows = []
    for i, item in enumerate(inputs):
        attention = batch["attention_mask"][i]
        prompt = batch["prompts"][i][attention[:width] == 1].tolist()
        valid = attention[width:] == 1
        response = batch["responses"][i][valid].tolist()
        mask = batch["response_mask"][i][valid].tolist()
        decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False)
        expected_prompt = tokenizer.apply_chat_template(
            list(item["raw_prompt"]), tools=[schemas[n] for n in item["extra_info"].get("tool_selection") or schemas],
            add_generation_prompt=True, tokenize=False)
        prompt_text = decode(prompt)
        tools_block = TOOLS_BLOCK.search(prompt_text)
        rows.append({
            "task_id": item["extra_info"]["task_id"],
            "prompt_tokens": len(prompt), "prompt_is_full_render": prompt_text == expected_prompt,
            "prompt_tools": [json.loads(line)["function"]["name"]
                             for line in (tools_block[1].splitlines() if tools_block else [])],
            "response_tokens": len(response), "response_limit": batch["responses"].shape[1],
            "model_text": decode([t for t, m in zip(response, mask) if m == 1]),
            "tool_responses": [r for m, ids in _segments(response, mask) if m == 0
                               for r in TOOL_RESPONSE.findall(decode(ids))],
            "tool_text_in_model_tokens": "<tool_response>" in decode([t for t, m in zip(response, mask) if m]),
            "num_turns": int(nt["__num_turns__"][i]),
            "envfactory_tool_calls": nt["envfactory_tool_calls"][i],
            "rm_score": float(batch["rm_scores"][i].sum()),
            "reward_extra_info": {k: float(nt[k][i]) for k in ("score", "answer_found", "checks_passed")},
            "rollout_log_probs": "rollout_log_probs" in batch.keys(),
        })
    return rows


async def _rollouts(config, model: ScriptedModel) -> dict:
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.experimental.reward_loop import RewardLoopWorker
    from verl.protocol import DataProto
    from verl.trainer.ppo.utils import create_rl_dataset
    from verl.utils.dataset.rl_dataset import collate_fn

    reward_worker = RewardLoopWorker(config)  # a Ray actor in training: its method is called here
    reward_handle = type("RewardHandle", (), {"compute_score": _RemoteMethod(reward_worker.compute_score)})()
    worker = AgentLoopWorker(config, _client(config, model.url), reward_loop_worker_handles=[reward_handle])
    schemas = {t.name: t.tool_schema.model_dump(exclude_unset=True, exclude_none=True) for t in worker.tools}
    files = [config.data.train_files, config.data.val_files]
    dataset = create_rl_dataset(files, config.data, worker.tokenizer, None, is_train=False)
    inputs = [dataset[i] for i in range(len(dataset))]
    out = {"dataset_rows": len(inputs), "tools_loaded": sorted(schemas), "modes": {}}
    for mode in ("reference", "mutant"):
        model.mode = mode
        batch = DataProto.from_single_dict(collate_fn(inputs), meta_info={"global_steps": 1, "validate": False})
        output = await worker.generate_sequences(batch)
        out["modes"][mode] = _describe(output, inputs, worker.tokenizer, schemas)
    out["requests"] = len(model.requests)
    return out


async def _reward_manager(config, texts: list[dict]) -> list[dict]:
    """`load_reward_manager` (what RewardLoopWorker uses) with the shipped config, on fixed texts."""
    import numpy as np
    import torch
    from verl.protocol import DataProto
    from verl.trainer.ppo.reward import get_custom_reward_fn, load_reward_manager
    from verl.utils import hf_tokenizer

    tokenizer = hf_tokenizer(config.actor_rollout_ref.model.path)
    manager = load_reward_manager(config, tokenizer)
    fn = get_custom_reward_fn(config)
    out = []
    for t in texts:
        prompt = tokenizer.encode("plan a trip", add_special_tokens=False)
        response = tokenizer.encode(t["text"], add_special_tokens=False)
        ids = torch.tensor([prompt + response])
        data = DataProto.from_dict(
            tensors={"prompts": ids[:, :len(prompt)], "responses": ids[:, len(prompt):],
                     "attention_mask": torch.ones_like(ids), "input_ids": ids},
            non_tensors={"data_source": np.array([t["data_source"]], dtype=object),
                         "reward_model": np.array([{"ground_truth": t["ground_truth"]}], dtype=object),
                         "extra_info": np.array([dict(t["extra_info"])], dtype=object)})
        result = await manager.run_single(data)
        out.append({"name": t["name"], "reward_score": result["reward_score"],
                    "reward_extra_info": result["reward_extra_info"],
                    "function": fn(t["data_source"], t["text"], t["ground_truth"], dict(t["extra_info"]))})
    return out


def main(argv: list[str]) -> int:
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    export, model_dir, data_file, work = (Path(a).resolve() for a in argv)
    data = json.loads(data_file.read_text(encoding="utf-8"))
    config, _ = verl_common.main_ppo_config(export, [f"actor_rollout_ref.model.path={model_dir}"], work)
    OmegaConf.resolve(config)
    model = ScriptedModel(AutoTokenizer.from_pretrained(model_dir), data["tasks"])
    try:
        result = asyncio.run(_rollouts(config, model))
    finally:
        model.server.shutdown()
    result["reward_manager"] = asyncio.run(_reward_manager(config, data["texts"]))
    result["server_manager_class"] = type(_client(config, model.url)).__mro__[1].__module__
    verl_common.emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
