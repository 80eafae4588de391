#!/usr/bin/env bash
# One command: a seeded synthetic benchmark set -> the offline pipeline (`stvg-ros eval run`) -> metrics.
#
#   bench/eval_synthetic.sh [OUT_DIR]
#
# Environment: LEVEL (easy|occlusion|distractors|crossing|mixed, default mixed), COUNT (videos, 8),
# SEED (0), PROTOCOL (tubedetr), BACKEND / MODEL (grounding model; default: the graph's parameters
# file), EXTRA (more `eval run` arguments, e.g. "-p grounding_node:num_frames=8").
# Prints one JSON object with the figures; everything else goes to OUT_DIR (default .cache/bench/eval-synthetic).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/.cache/bench/eval-synthetic}"
LEVEL="${LEVEL:-mixed}" COUNT="${COUNT:-8}" SEED="${SEED:-0}" PROTOCOL="${PROTOCOL:-tubedetr}"
run() { "$ROOT/scripts/run" "$@"; }
mkdir -p "$OUT"

t0=$(date +%s.%N)
run stvg-ros eval make-set --out "$OUT/set" --level "$LEVEL" --count "$COUNT" --seed "$SEED" --json > "$OUT/set.json"
t1=$(date +%s.%N)
# The ground truth scored as predictions: 1.0 everywhere, or the evaluation itself is broken.
run stvg-ros eval score --annotations "$OUT/set" --predictions "$OUT/set/gt_predictions.json" \
    --protocol "$PROTOCOL" --json > "$OUT/gt_check.json"
# shellcheck disable=SC2086
run stvg-ros eval run --videos "$OUT/set/bags" --annotations "$OUT/set" --out "$OUT/run" --protocol "$PROTOCOL" \
    ${BACKEND:+--backend "$BACKEND"} ${MODEL:+--model "$MODEL"} ${EXTRA:-} --no-progress --json > "$OUT/run.json"

run python - "$OUT" "$t0" "$t1" <<'PY'
import json, sys
from pathlib import Path
out, t0, t1 = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
gt = json.loads((out / "gt_check.json").read_text())
run = json.loads((out / "run.json").read_text())
figures = {
    "level": json.loads((out / "set.json").read_text())["level"],
    "n_queries": run["n_queries"],
    "protocol": run["protocol"],
    "make_set_s": round(t1 - t0, 2),
    "gt_as_predictions_m_vIoU": gt["m_vIoU"],
    **{k: run[k] for k in ("m_tIoU", "m_vIoU", "vIoU@0.3", "vIoU@0.5", "id_accuracy", "error_sources")},
    "perception_ceiling": run["perception_ceiling"],
    **{f"run_{k}": v for k, v in run["run"].items()},
    "report": str(out / "run" / "report.md"),
}
print(json.dumps(figures, indent=2))
PY
