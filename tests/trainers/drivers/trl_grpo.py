"""Driver: a TRL export through TRL's own GRPOTrainer (run with the trl venv's Python).

    python trl_grpo.py EXPORT_DIR DATA_JSON WORK_DIR

DATA_JSON (written by tests/trainers/test_trl.py): {"tasks": {task_id: {"reference_tool_calls",
"reference_answer", "mutant"}}, "steps": N, "sft_steps": N}. Prints one JSON object (last line):

- "requirements": each line of the export's requirements.txt, the installed version, and
  whether it satisfies the line;
- "schemas": the tool schemas TRL derives from the generated methods (transformers'
  `get_json_schema`, what `apply_chat_template(tools=...)` renders), "env_tools": the tool names
  TRL exposes per `environment` key;
- "rewards": `envfactory_reward` on reference and junk completions in several shapes;
- "snippet": the README's Python block run as written (model and path substituted, no
  `train()`): the GRPOConfig it builds and the factory it hands to GRPOTrainer;
- "tiny": the local model (tiny_model.py), fine-tuned on one train task per tool set (its
  first reference tool call, that call's real output, the answer) so that it emits hermes
  tool calls; "reference_tokens": each train task's whole reference episode in its tokens;
- "train": GRPOTrainer(environment_factory=ENVIRONMENTS, reward_funcs=[envfactory_reward]) for
  N steps on train.parquet. An observer reward function of weight 0 sees, like the real one,
  every rollout's completion and environment instance; from it: the tool messages TRL
  appended (their JSON), the episodes' call logs, the rewards; from a recording wrapper on the
  tokenizer's `apply_chat_template`: the tool names each prompt was rendered with.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Message:
    """A pydantic-like message: attributes, no dict access (verifiers >= 0.1.11 style)."""

    def __init__(self, role, content, tool_calls=None):
        self.role, self.content, self.tool_calls = role, content, tool_calls


def check_requirements(export: Path) -> list[dict]:
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    out = []
    for line in (export / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        try:
            got = version(req.name)
        except PackageNotFoundError:
            got = None
        ok = got is not None and req.specifier.contains(got, prereleases=True)
        out.append({"line": line, "installed": got, "ok": ok})
    return out


def reward_cases(mod, tasks: dict) -> dict:
    """Scores of reference and junk completions, through task_id and through environments."""
    ref_ids = list(tasks)
    good, bad, bad_ids = [], [], []
    for tid in ref_ids:
        t = tasks[tid]
        answer = json.dumps(t["reference_answer"])
        call = {"type": "function", "function": t["reference_tool_calls"][0]}
        good += [
            [{"role": "assistant", "content": "", "tool_calls": [call]},
             {"role": "tool", "name": call["function"]["name"], "content": '{"results": [{"city_id": "1"}]}'},
             {"role": "assistant", "content": "Here is the plan:\n" + answer}],
            [Message("assistant", "", [call]), Message("tool", '{"results": []}'), Message("assistant", answer)],
            [{"role": "assistant", "content": [{"type": "text", "text": "Plan: "}, {"type": "text", "text": answer}]}],
            "<think>checking {\"days\": []}</think>" + answer,
        ]
        junk = [
            [{"role": "assistant", "content": json.dumps(t["mutant"])}],
            [Message("assistant", json.dumps(t["mutant"]))],
            [{"role": "assistant", "content": [{"type": "text", "text": json.dumps(t["mutant"])}]}],
            [{"role": "assistant", "content": ""}], [], "no plan here", None, 42, b"\xff\xfe",
            [{"role": "user", "content": answer}],  # the answer, but not said by the assistant
            [{"role": "assistant", "content": "{" * 10000}],
            [{"role": "assistant", "content": {"days": "not a list"}}],
        ]
        bad += junk
        bad_ids += [tid] * len(junk)
    n = len(good) // len(ref_ids)
    good_ids = [tid for tid in ref_ids for _ in range(n)]
    envs = []
    for tid in good_ids:
        env = mod.EnvfactoryEnv()
        env.reset(task_id=tid)
        envs.append(env)
    extras, metrics = {}, {}
    by_id = mod.envfactory_reward(good, task_id=good_ids, log_extra=lambda k, v: extras.setdefault(k, v),
                                  log_metric=metrics.__setitem__)
    by_env = mod.envfactory_reward(good, environments=envs)
    junk = mod.envfactory_reward(bad, task_id=bad_ids)
    no_task = mod.envfactory_reward(good[:2])
    return {"reference_by_task_id": by_id, "reference_by_environment": by_env, "junk": junk,
            "no_task": no_task, "reasons": extras.get("envfactory_reason", [])[:3],
            "junk_reasons": mod._reason(
                mod._runtime().score_text(bad_ids[0], json.dumps(tasks[bad_ids[0]]["mutant"])))}


def build_model(mod, export: Path, tasks: dict, work: Path, sft_steps: int) -> tuple[Path, dict, list]:
    """The tiny model, fine-tuned on one train task per tool set: the prompt, the first
    reference tool call, the tool's real output and the reference answer, with the tools as
    TRL renders them. The tokenizer is trained on every train task's reference outputs."""
    import pyarrow.parquet as pq
    from transformers.utils import get_json_schema

    sys.path.insert(0, str(HERE))
    import tiny_model

    rows = pq.read_table(export / "train.parquet").to_pylist()
    sft_rows = {}
    for row in rows:  # one task per tool set (the prompts' tool blocks differ) keeps the SFT cheap
        sft_rows.setdefault(row["environment"], row)
    conversations, corpus = [], []
    for row in rows:
        t = tasks[row["task_id"]]
        cls = mod.ENVIRONMENTS[row["environment"]]
        env = cls()
        env.reset(**row)
        outputs = [getattr(env, c["name"])(**c["arguments"]) for c in t["reference_tool_calls"]]
        corpus += [m["content"] for m in row["prompt"]] + outputs
        if sft_rows[row["environment"]] is not row:
            continue
        first = t["reference_tool_calls"][0]
        conversations.append({"tools": [get_json_schema(getattr(cls, name)) for name in cls.TOOLS], "messages": [
            *row["prompt"],
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": first}]},
            {"role": "tool", "name": first["name"], "content": outputs[0]},
            {"role": "assistant", "content": json.dumps(t["reference_answer"])}]})
    (work / "sft.jsonl").write_text("".join(json.dumps(c) + "\n" for c in conversations))
    (work / "corpus.txt").write_text("\n".join(corpus))
    t0 = time.monotonic()
    info = tiny_model.build(work / "model", [work / "corpus.txt"], seed=0, sft_file=work / "sft.jsonl",
                            steps=sft_steps)
    info["seconds"] = round(time.monotonic() - t0, 1)
    return work / "model", info, rows


def reference_tokens(mod, rows: list[dict], tasks: dict, model_dir: Path) -> dict:
    """Completion tokens of each train task's whole reference episode (every tool call, its real
    output, the answer) with the tiny model's tokenizer, counted as TRL counts a completion:
    everything after the rendered prompt."""
    from transformers import AutoTokenizer
    from transformers.utils import get_json_schema

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    out = {}
    for row in rows:
        cls = mod.ENVIRONMENTS[row["environment"]]
        tools = [get_json_schema(getattr(cls, name)) for name in cls.TOOLS]
        env = cls()
        env.reset(**row)
        episode = []
        for c in tasks[row["task_id"]]["reference_tool_calls"]:
            episode += [{"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": c}]},
                        {"role": "tool", "name": c["name"], "content": getattr(env, c["name"])(**c["arguments"])}]
        episode.append({"role": "assistant", "content": json.dumps(tasks[row["task_id"]]["reference_answer"])})
        prompt = tokenizer.apply_chat_template(row["prompt"], tools=tools, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
        full = tokenizer.apply_chat_template(row["prompt"] + episode, tools=tools, tokenize=True,
                                             return_dict=True)["input_ids"]
        out[row["task_id"]] = {"prompt": len(prompt), "completion": len(full) - len(prompt)}
    return out


def run_snippet(export: Path, model_dir: Path) -> dict:
    """The README's Python block, as a user would paste it, minus `trainer.train()`."""
    readme = (export / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", readme, re.S)[0]
    code = code.replace('"PATH/TO/THIS/EXPORT"', json.dumps(str(export)))
    code = code.replace('"Qwen/Qwen3-0.6B"', json.dumps(str(model_dir))).replace("trainer.train()", "")
    code = code.replace("GRPOConfig(", "GRPOConfig(use_cpu=True, ")  # this machine has no GPU
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    trainer = scope["trainer"]
    return {"max_completion_length": trainer.args.max_completion_length,
            "max_tool_calling_iterations": trainer.args.max_tool_calling_iterations,
            "remove_unused_columns": trainer.args.remove_unused_columns,
            "factories": sorted(trainer.environment_factories), "uses_ENVIRONMENTS":
                trainer.environment_factories is sys.modules["envfactory_trl_env"].ENVIRONMENTS,
            "train_rows": len(trainer.train_dataset)}


def train(mod, export: Path, model_dir: Path, work: Path, steps: int) -> dict:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    settings = json.loads((export / "trl_config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rendered = []  # (first user message, tool names) per rendered prompt
    original = tokenizer.apply_chat_template

    def recording(conversation=None, *args, tools=None, **kwargs):
        conv = conversation if conversation is not None else kwargs.get("messages")
        if kwargs.get("add_generation_prompt") and conv and isinstance(conv[0], list):
            user = next((m["content"] for m in conv[0] if m["role"] == "user"), None)
            rendered.append((user, sorted(getattr(t, "__name__", str(t)) for t in tools or [])))
        return original(conversation, *args, tools=tools, **kwargs)

    tokenizer.apply_chat_template = recording
    seen = {"completions": [], "calls": [], "task_ids": []}

    def observer(completions, environments=None, task_id=None, **kwargs):
        seen["completions"] += [list(c) for c in completions]
        seen["task_ids"] += list(task_id or [])
        for env in environments or []:
            ep = env._episode
            seen["calls"].append([{"name": c["name"], "error": c["error"], "chars": c["chars"]} for c in ep.calls]
                                 if ep is not None else None)
        return [0.0] * len(completions)

    data = load_dataset("parquet", data_files={"train": str(export / "train.parquet")})["train"]
    args = GRPOConfig(**settings, output_dir=str(work / "grpo"), max_steps=steps, per_device_train_batch_size=4,
                      num_generations=2, learning_rate=1e-4, logging_steps=1, report_to="none", use_cpu=True,
                      save_strategy="no", seed=0, reward_weights=[1.0, 0.0], dataloader_num_workers=0)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), processing_class=tokenizer,
                          train_dataset=data, environment_factory=mod.ENVIRONMENTS,
                          reward_funcs=[mod.envfactory_reward, observer], args=args)
    step_rewards = []  # envfactory_reward's values of each step's rollouts, as TRL logged them

    class Rewards(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_rewards.append(list(trainer._logs["rewards"]["envfactory_reward"]))

    trainer.add_callback(Rewards())
    t0 = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - t0
    tool_messages = []
    for c in seen["completions"]:
        for m in c:
            if isinstance(m, dict) and m.get("role") == "tool":
                try:
                    body = json.loads(m["content"])
                except (TypeError, ValueError):
                    body = {"unparsed": str(m["content"])[:200]}
                tool_messages.append({"name": m.get("name"), "keys": sorted(body) if isinstance(body, dict) else None,
                                      "results": len(body.get("results") or []) if isinstance(body, dict) else 0,
                                      "error": body.get("error") if isinstance(body, dict) else None})
    logs = [h for h in trainer.state.log_history if "loss" in h or "reward" in h]
    rewards = [h.get("rewards/envfactory_reward/mean") for h in logs]
    by_prompt = {}
    for user, names in rendered:
        by_prompt.setdefault(user, set()).add(tuple(names))
    return {"global_step": trainer.state.global_step, "seconds": round(seconds, 1),
            "rollouts": len(seen["completions"]),
            "tool_messages": tool_messages, "episode_calls": seen["calls"], "task_ids": seen["task_ids"],
            "rendered": [[u, sorted(map(list, s))] for u, s in by_prompt.items()],
            "env_tools": {k: sorted(f.__name__ for f in v) for k, v in trainer._env_tools.items()},
            "step_rewards": step_rewards, "reward_means": rewards,
            "log_keys": sorted({k for h in logs for k in h}),
            "metrics": {k: [h.get(k) for h in logs] for k in ("tools/call_frequency", "tools/failure_frequency",
                                                              "envfactory/tool_error_rate", "completions/max_length",
                                                              "loss", "grad_norm", "reward_std")},
            "max_completion_length": trainer.max_completion_length,
            "sample_completion": seen["completions"][0] if seen["completions"] else None}


def main() -> None:
    export, data_file, work = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    data = json.loads(data_file.read_text())
    tasks = data["tasks"]
    sys.path.insert(0, str(export))
    import envfactory_trl_env as mod
    from transformers.utils import get_json_schema

    t0 = time.monotonic()

    def stage(name):
        print(f"trl_grpo: {name} at {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)

    out = {"requirements": check_requirements(export)}
    out["schemas"] = {n: get_json_schema(getattr(mod.EnvfactoryEnv, n)) for n in mod.EnvfactoryEnv.TOOLS}
    out["classes"] = {k: sorted(n for n in vars(c) if callable(vars(c)[n]) and not n.startswith("_"))
                      for k, c in mod.ENVIRONMENTS.items()}
    out["rewards"] = reward_cases(mod, tasks)
    stage("tiny model")
    model_dir, out["tiny"], rows = build_model(mod, export, tasks, work, data["sft_steps"])
    out["reference_tokens"] = reference_tokens(mod, rows, tasks, model_dir)
    stage("README snippet")
    out["snippet"] = run_snippet(export, model_dir)
    stage("training")
    out["train"] = train(mod, export, model_dir, work, data["steps"])
    out["train_rows"] = {r["task_id"]: {"environment": r["environment"], "tools": r["tools"],
                                        "user": next(m["content"] for m in r["prompt"] if m["role"] == "user")}
                         for r in rows}
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
