#!/usr/bin/env bash
# One command: a seeded synthetic benchmark set -> the offline pipeline (`stvg-ros eval run`) and the
# same bags replayed through the ROS graph (`stvg-ros eval replay --start-graph`) -> metrics.
#
#   bench/eval_synthetic.sh [OUT_DIR]
#
# Environment: LEVEL (easy|occlusion|distractors|crossing|mixed, default mixed), COUNT (videos, 8),
# SEED (0), PROTOCOL (tubedetr), MODEL (grounding model, manifest name or GGUF path; default the
# tiny random-weight test model qwen25vl-tiny-random, whose answers are meaningless: the figures
# then measure the pipeline, not a model), DETECTOR (yolo-synth-tiny), REPLAY (1: also replay, 0: no),
# EXTRA (more node parameters, e.g. "-p grounding_node:num_frames=8").
# Prints one JSON object with the figures; everything else goes to OUT_DIR (default .cache/bench/eval-synthetic).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/.cache/bench/eval-synthetic}"
LEVEL="${LEVEL:-mixed}" COUNT="${COUNT:-8}" SEED="${SEED:-0}" PROTOCOL="${PROTOCOL:-tubedetr}"
MODEL="${MODEL:-qwen25vl-tiny-random}" DETECTOR="${DETECTOR:-yolo-synth-tiny}" REPLAY="${REPLAY:-1}"
run() { "$ROOT/scripts/run" "$@"; }
mkdir -p "$OUT"

# Local models are built on first use (no download); a path is used as it is.
for name in "$MODEL" "$DETECTOR"; do
    case "$name" in */*|*.gguf|*.onnx|*.pt) ;; *) run stvg-ros models pull "$name" >&2 ;; esac
done
# The same node parameters for both runs; the detector on every frame so the tracker's work does
# not depend on timing and the two runs can be compared frame by frame.
PARAMS=(-p "tracker_node:detector=$DETECTOR" -p tracker_node:detect_every=1 -p "grounding_node:model=$MODEL")
# shellcheck disable=SC2206
PARAMS+=(${EXTRA:-})

t0=$(date +%s.%N)
run stvg-ros eval make-set --out "$OUT/set" --level "$LEVEL" --count "$COUNT" --seed "$SEED" --json > "$OUT/set.json"
t1=$(date +%s.%N)
# The ground truth scored as predictions: 1.0 everywhere, or the evaluation itself is broken.
run stvg-ros eval score --annotations "$OUT/set" --predictions "$OUT/set/gt_predictions.json" \
    --protocol "$PROTOCOL" --json > "$OUT/gt_check.json"
run stvg-ros eval run --videos "$OUT/set/bags" --annotations "$OUT/set" --out "$OUT/run" --protocol "$PROTOCOL" \
    "${PARAMS[@]}" --no-progress --json > "$OUT/run.json"
if [ "$REPLAY" = 1 ]; then
    mapfile -t SIDECARS < <(ls "$OUT"/set/sidecars/*.json)
    run stvg-ros eval replay --sidecar "${SIDECARS[0]}" --more-sidecars "${SIDECARS[@]:1}" \
        --out "$OUT/replay" --protocol "$PROTOCOL" --start-graph "${PARAMS[@]}" --no-progress --json > "$OUT/replay.json"
fi

run python - "$OUT" "$t0" "$t1" "$MODEL" <<'PY'
import json, sys
from pathlib import Path
out, t0, t1, model = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
gt = json.loads((out / "gt_check.json").read_text())
run = json.loads((out / "run.json").read_text())
figures = {
    "level": json.loads((out / "set.json").read_text())["level"],
    "n_queries": run["n_queries"],
    "protocol": run["protocol"],
    "model": model,
    "model_meaningful": model != "qwen25vl-tiny-random",
    "make_set_s": round(t1 - t0, 2),
    "gt_as_predictions_m_vIoU": gt["m_vIoU"],
    **{k: run[k] for k in ("m_tIoU", "m_vIoU", "vIoU@0.3", "vIoU@0.5", "id_accuracy", "error_sources")},
    "perception_ceiling": run["perception_ceiling"],
    **{f"run_{k}": v for k, v in run["run"].items()},
    "report": str(out / "run" / "report.md"),
}
replay_file = out / "replay.json"
if replay_file.exists():
    replay = json.loads(replay_file.read_text())
    stats = replay["replay"]
    figures.update({
        "replay_m_vIoU": replay["m_vIoU"],
        "replay_perception_ceiling": replay["perception_ceiling"],
        "replay_same_ceiling": replay["perception_ceiling"] == run["perception_ceiling"],
        "replay_wall_s": stats["wall_s"],
        "replay_frames_per_s": round(stats["frames_published"] / stats["wall_s"], 1) if stats["wall_s"] else None,
        "replay_frames_without_tracks": stats["frames_without_tracks"],
        "replay_peak_rss_mb": stats["peak_rss_mb"],
        "replay_graph_rss_mb": stats.get("final_graph_rss_mb"),
    })
print(json.dumps(figures, indent=2))
PY
