"""Distillation records: the specialist's decisions as a model agent is asked for them, with
the ladder's verdicts, matching the bundle the same run wrote."""

import json
import subprocess
import sys

import jsonschema

from envfactory.factory.agents.distill import read_records


def test_records_match_the_ladder_and_the_schema(tmp_path):
    out, rec = tmp_path / "out", tmp_path / "rec"
    r = subprocess.run([sys.executable, "-m", "envfactory.factory.cli", "generate", "car_fleet", "--envs", "2",
                        "--out", str(out), "--workers", "1", "--agent-option", f"record={rec}"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    files = sorted(rec.glob("*.jsonl"))
    assert len(files) == 2
    for f in files:
        recs = read_records([f], accepted_only=False)
        tasks = [json.loads(x) for x in (out / f.stem / "tasks" / "tasks.jsonl").read_text().splitlines()]
        assert [x["decision"] for x in recs[:2]] == ["data", "base"]
        assert recs[1]["answer"]["constraints"] == [{"kind": c["kind"], "params": c["params"]}
                                                    for c in tasks[0]["constraints"]]
        moves = [x for x in recs if x["decision"] == "move"]
        took = [x for x in moves if x["accepted"]]
        # one accepted move per level above 0, and it is the change between the levels' constraints
        assert [x["level"] for x in took] == list(range(1, len(tasks)))
        for x in took:
            item = x["answer"]["moves"][0]
            now = {c["name"]: c for c in tasks[x["level"]]["constraints"]}
            before = {c["name"]: c for c in tasks[x["level"] - 1]["constraints"]}
            changed = [c for n, c in now.items() if before.get(n) != c]
            assert [{"kind": c["kind"], "params": c["params"]} for c in changed] == \
                   [{"kind": item["kind"], "params": item["params"]}]
            assert ("replaces" in item) == (changed[0]["name"] in before)
        # the prompt a model would get: the system line, the level it builds on, earlier verdicts
        for x in recs:
            jsonschema.validate(x["answer"], x["schema"])
            assert x["messages"][0]["role"] == "system" and x["messages"][1]["role"] == "user"
        later = [x for x in moves if x["level"] == 2][1:]
        assert later and all("The ladder's verdicts on your earlier proposals" in x["messages"][1]["content"]
                             for x in later)
        assert sum(not x["accepted"] for x in moves) > 0 and all(x["reason"] for x in moves)


def test_tool_use_trajectories_replay_the_reference_and_train_only_the_assistant(bundle, tmp_path):
    """Each task becomes its reference episode: one call per assistant turn, the runtime's
    real result after it, the reference answer last (which the verifier scores 1). Training
    sees the rendered conversation with exactly the assistant turns marked."""
    from envfactory.factory.export.runtime.envfactory_runtime import Runtime
    from envfactory.factory.agents.distill import solve_records
    from envfactory.model.chat_format import parse_completion, render
    from envfactory.model.distill import conversation_segments, encode_examples
    from envfactory.model.tokenizer import Tokenizer
    from tests.conftest import env_dirs, tasks_of

    env = env_dirs(bundle)[0]
    recs = solve_records(env)
    tasks = tasks_of(env)
    assert [r["task_id"] for r in recs] == [t["task_id"] for t in sorted(tasks, key=lambda t: t["level"])]
    rt = Runtime(str(env))
    for rec, task in zip(recs, sorted(tasks, key=lambda t: t["level"])):
        msgs = rec["messages"]
        calls = [m for m in msgs if m["role"] == "assistant" and m.get("tool_calls")]
        assert [(c["tool_calls"][0]["function"]["name"], json.loads(c["tool_calls"][0]["function"]["arguments"]))
                for c in calls] == [(c["name"], c["arguments"]) for c in task["reference_tool_calls"]]
        results = [m["content"] for m in msgs if m["role"] == "tool"]
        assert len(results) == len(calls) and not any('"error"' in r for r in results)
        ep = rt.start("check", task["task_id"])
        assert ep.submit(json.loads(msgs[-1]["content"]))["score"] == 1.0
        rt.release("check")
        segs = conversation_segments(msgs, rec["tools"])
        assert "".join(t for t, _ in segs) == render(msgs, tools=rec["tools"], add_generation_prompt=False)
        trained = [t for t, on in segs if on]
        assert len(trained) == len(calls) + 1
        for text, c in zip(trained, calls):
            assert parse_completion(text).tool_calls[0]["function"]["name"] == c["tool_calls"][0]["function"]["name"]
        assert json.loads(parse_completion(trained[-1]).content) == task["reference_answer"]
    tok = Tokenizer.from_file("model/checkpoints/agent/tokenizer.json")
    segs = conversation_segments(recs[0]["messages"], recs[0]["tools"])
    (ids, mask), = encode_examples(tok, [segs], 10 ** 6)[0]
    assert mask.sum() == sum(len(tok.encode(t)) for t, on in segs if on)
    assert int((ids[mask] == tok.eos_id).sum()) == sum(on for _, on in segs)  # every trained turn ends with EOS
    assert not mask[: len(tok.encode(render(recs[0]["messages"][:2], tools=recs[0]["tools"])))].any()
