#!/usr/bin/env bash
# The main job on a small batch: set up, generate 3 trip-planning environments (4 levels
# each), then score every task's reference answer through `factory verify`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-out/demo}
.venv/bin/factory generate trip_planning --envs "${ENVS:-3}" --out "$OUT" --seed "${SEED:-7}" --force
pass=0; fail=0
while IFS=$'\t' read -r env task answer; do
  if printf '%s' "$answer" | .venv/bin/factory verify "$env" "$task" - >/dev/null; then
    pass=$((pass + 1))
  else
    fail=$((fail + 1)); echo "reference answer FAILED: $task" >&2
  fi
done < <(.venv/bin/python - "$OUT" <<'PY'
import json, sys, pathlib
for tasks in sorted(pathlib.Path(sys.argv[1]).glob("*/tasks/tasks.jsonl")):
    for line in tasks.read_text().splitlines():
        t = json.loads(line)
        print(tasks.parent.parent, t["task_id"], json.dumps(t["reference_answer"]), sep="\t")
PY
)
echo "reference answers: $pass passed, $fail failed (factory verify)"
[ "$fail" = 0 ] && [ "$pass" -gt 0 ]
