"""The checkpoint that ships (`model/checkpoints/agent`) does its job through the real path:
our server (continuous batching, as `--agent dsa` runs it), the factory's chat client and `decide`, a trip environment's recorded prompts.
The data choice must be the specialist's; the level-0 task must meet the decision's
grounded schema and use only the kinds the prompt offers. (The records are from
`factory generate trip_planning --agent-option record=DIR`.)"""

import json
from pathlib import Path

import jsonschema
import pytest

from envfactory.factory.agents.chat import ChatClient, ChatConfig, Conversation, decide
from envfactory.model.checkpoint import load_pretrained
from envfactory.factory.agents.local import SLOTS
from envfactory.model.scheduler import Scheduler
from envfactory.model.serve import ModelServer

CKPT = Path(__file__).resolve().parents[2] / "model" / "checkpoints" / "agent"
RECORDS = [json.loads(x) for x in (Path(__file__).parent / "data" / "trip_decisions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def server():
    model, tok = load_pretrained(CKPT)
    srv = ModelServer(Scheduler(model, tok, slots=SLOTS), name="agent").start()  # as --agent dsa serves it
    yield srv
    srv.stop()


def _ask(server, rec):
    client = ChatClient(ChatConfig(server.base_url, max_tokens=400, temperature=0, retries=0, timeout_s=300))
    conv = Conversation()
    for m in rec["messages"]:
        getattr(conv, m["role"])(m["content"])
    return decide(client, conv, rec["schema"], attempts=1)


def test_the_shipped_model_makes_the_specialists_data_choice(server):
    rec = next(r for r in RECORDS if r["decision"] == "data")
    d = _ask(server, rec)
    assert d.malformed == 0 and d.value is not None, d.errors
    assert d.value["tables"] == rec["answer"]["tables"] and d.value["columns"] == {}


def test_the_shipped_model_proposes_a_well_formed_level_zero_task(server):
    rec = next(r for r in RECORDS if r["decision"] == "base")
    d = _ask(server, rec)
    assert d.malformed == 0 and d.value is not None, d.errors
    jsonschema.validate(d.value, rec["schema"])
    offered = {b["properties"]["kind"]["const"] for b in rec["schema"]["properties"]["constraints"]["items"]["anyOf"]}
    kinds = [c["kind"] for c in d.value["constraints"]]
    assert kinds and set(kinds) <= offered
    assert "total_budget" in kinds  # what the specialist's level 0 always bounds on a trip
