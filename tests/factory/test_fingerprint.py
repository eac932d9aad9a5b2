"""Near-duplicate fingerprints, lineage and splits of a run (factory.fingerprint)."""

import json

from envfactory.factory.fingerprint import (data_digest, normalise_constraints, run_index, split_of,
                                            task_fingerprint, template_of)
from tests.factory.test_resume import whole  # noqa: F401  (the 4-environment run, built once)

BUDGET = {"kind": "total_budget", "name": "total_budget", "params": {"max": 218, "costs": {"hotel": "p"}}}
DIFF = {"kind": "all_different", "name": "all_different_city", "params": {"slot": "city"}}


def test_normalisation_ignores_names_order_and_small_number_changes():
    data = data_digest("trip", ["b", "a", "c"])
    assert data == data_digest("trip", ["c", "b", "a"]) != data_digest("trip", ["a", "b", "d"])
    assert data != data_digest("tour", ["a", "b", "c"])
    near = dict(BUDGET, name="budget_2", params={"costs": {"hotel": "p"}, "max": 218.4})
    assert task_fingerprint(data, [BUDGET, DIFF]) == task_fingerprint(data, [DIFF, near])
    far = dict(BUDGET, params={"costs": {"hotel": "p"}, "max": 214})  # a tightening step
    assert task_fingerprint(data, [BUDGET, DIFF]) != task_fingerprint(data, [DIFF, far])
    assert normalise_constraints([BUDGET])[0]["params"]["max"] == normalise_constraints([near])[0]["params"]["max"]
    assert template_of("trip", [BUDGET, DIFF, DIFF]) == "trip:all_different+total_budget"


def test_run_index_groups_duplicates_and_splits_every_task_once():
    envs = []
    for i in range(40):
        data = data_digest("trip", [str(i % 30)])  # envs 30..39 repeat the data of 0..9
        tasks = [{"task_id": f"e{i}-L{lv}", "fingerprint": task_fingerprint(data, [BUDGET] * (lv + 1)),
                  "template": f"trip:t{lv}"} for lv in range(3)]
        envs.append({"env_id": f"e{i}", "data": data, "tasks": tasks})
    idx = run_index(envs)
    assert set(map(frozenset, idx["duplicates"]["envs"])) == {frozenset((f"e{i}", f"e{i + 30}")) for i in range(10)}
    assert len(idx["duplicates"]["tasks"]) == 30 and all(len(g) == 2 for g in idx["duplicates"]["tasks"])
    # two levels of one environment that normalise alike are not duplicates of each other
    same = [{"env_id": "x", "data": "d", "tasks": [{"task_id": f"x-L{i}", "fingerprint": "f", "template": "t"}
                                                   for i in range(2)]}]
    assert run_index(same)["duplicates"]["tasks"] == []
    everything = sorted(t["task_id"] for e in envs for t in e["tasks"])
    for kind in ("env", "template"):
        assert sorted(sum(idx["splits"][kind].values(), [])) == everything
    # an environment's tasks stay together; a template's tasks stay together
    where = {t: s for s, ts in idx["splits"]["env"].items() for t in ts}
    assert all(len({where[t["task_id"]] for t in e["tasks"]}) == 1 for e in envs)
    assert {split_of(f"e{i}") for i in range(40)} == {"train", "val", "test"}
    assert split_of("e7") == split_of("e7")


def test_a_run_records_lineage_duplicates_and_splits(whole):  # noqa: F811
    batch = json.loads((whole / "batch.json").read_text())
    assert batch["duplicates"]["n_envs"] == 0 and batch["duplicates"]["envs"] == []
    splits = json.loads((whole / "splits.json").read_text())
    task_ids = []
    for e in batch["envs"]:
        m = json.loads((whole / e["path"] / "manifest.json").read_text())
        tasks = [json.loads(line) for line in (whole / e["path"] / "tasks" / "tasks.jsonl").open()]
        levels = [m["levels"][str(t["level"])] for t in tasks]
        assert [lv["task_id"] for lv in levels] == [t["task_id"] for t in tasks]
        assert levels[0]["parent"] is None and levels[0]["move"] == tasks[0]["move"]
        assert [lv["parent"] for lv in levels[1:]] == [t["task_id"] for t in tasks[:-1]]
        assert [lv["move"] for lv in levels] == [t["move"] for t in tasks]
        assert m["data_digest"] == e["data"]
        task_ids += [t["task_id"] for t in tasks]
    for kind in ("env", "template"):
        assert sorted(sum(splits[kind].values(), [])) == sorted(task_ids)
