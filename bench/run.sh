#!/usr/bin/env bash
# Run every benchmark once and print the figures (JSON per benchmark). Usage: bench/run.sh [SECONDS]
# Figures are medians/ratios measured within one run; compare runs only on the same machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_PER_BENCH="${1:-20}"
OUT="${BENCH_OUT:-$ROOT/.cache/bench}"
mkdir -p "$OUT"

echo "== setup re-run (must rebuild nothing, goal < 60 s)"
start=$(date +%s.%N)
"$ROOT/scripts/setup.sh" 2>"$OUT/setup_rerun.log"
python3 -c "import sys; print('{\"setup_rerun_s\": %.1f}' % (float(sys.argv[2]) - float(sys.argv[1])))" "$start" "$(date +%s.%N)" | tee "$OUT/setup.json"

echo "== perception (640x480 @ 30 FPS, ${SECONDS_PER_BENCH} s per run; tracker alone, graph in one process and"
echo "   one process per node, each graph also while grounding queries run on the tiny VLM)"
"$ROOT/scripts/run" stvg-ros bench perception --seconds "$SECONDS_PER_BENCH" --json | tee "$OUT/perception.json"

echo "== grounding (tiny models: llama.cpp and transformers)"
"$ROOT/scripts/run" stvg-ros bench grounding --json | tee "$OUT/grounding.json"

echo "== evaluation (seeded synthetic set: offline pipeline and rosbag replay through the graph)"
"$ROOT/bench/eval_synthetic.sh" "$OUT/eval-synthetic" | tee "$OUT/eval.json"

echo "figures written to $OUT"
