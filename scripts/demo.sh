#!/usr/bin/env bash
# The main job on a small batch: set up, generate 3 trip-planning environments (6 levels
# each), validate every task in the Docker sandbox (reference reruns, mutants, other
# feasible plans, tool calls, manifest), score one reference answer by hand, and export
# the batch for every trainer target (OUT/exports/TARGET).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-out/demo}
.venv/bin/factory generate trip_planning --envs "${ENVS:-3}" --out "$OUT" --seed "${SEED:-7}" --force
.venv/bin/factory validate "$OUT"
env=$(dirname "$(dirname "$(ls "$OUT"/*/tasks/tasks.jsonl | head -1)")")
read -r task answer < <(.venv/bin/python -c '
import json, sys
t = json.loads(open(sys.argv[1] + "/tasks/tasks.jsonl").readline())
print(t["task_id"], json.dumps(t["reference_answer"]))' "$env")
printf '%s' "$answer" | .venv/bin/factory verify "$env" "$task" - | .venv/bin/python -c '
import json, sys
r = json.load(sys.stdin)
print("factory verify", sys.argv[1] + ": score", r["score"], "with", len(r["checks"]), "checks")' "$task"
for target in $(.venv/bin/python -c "from envfactory.factory.export import TARGETS; print(*TARGETS)"); do
  .venv/bin/factory export "$OUT" --to "$target"
done
