#!/usr/bin/env bash
# Full-size rehearsal of the NIH-CXR-LT pipeline (issue 12) on this machine: the real row counts
# (78,506 / 12,533 / 21,081 NIH images, 48,860 MIMIC external) as SYNTHETIC images at a small image
# size, a tiny ResNet config through the real extraction code, 8 training views; a CXR-19 CDL and
# DQC sweep with 5 seeds; the report. Extraction and the sweep are each killed with SIGKILL once in
# the middle and resumed. Writes a markdown table (wall time and peak memory per stage, store
# sizes) to bench/rehearsal-<machine>.md.
#
#   KILL_AFTER=1200 KILL_SWEEP_AFTER=180 bash bench/rehearsal.sh [WORK_DIR=/tmp/rehearsal] [EPOCHS=2] [SCALE=1]
#
# SCALE divides every row count (SCALE=100 is a 1/100 dry run of the same steps).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-/tmp/rehearsal}"
epochs="${2:-2}"
scale="${3:-1}"
mkdir -p "$work"
cd "$work"
n_train=$((78506 / scale)); n_val=$((12533 / scale)); n_test=$((21081 / scale)); n_ext=$((48860 / scale))
cpu="$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
cores="$(nproc)"
slug="$(echo "${cpu:-cpu}-${cores}c" | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '-' | sed 's/-$//')"
table="$work/rehearsal.md"
: > "$work/stages.tsv"

stage() {  # stage NAME CMD...: run under /usr/bin/time, record wall seconds and peak RSS;
  # with KILL=S in the environment the command is sent SIGKILL after S seconds (its rusage still counts)
  local name="$1"; shift
  local t0; t0=$(date +%s.%N)
  set +e
  /usr/bin/time -v -o "$work/$name.time" "$@" > "$work/$name.log" 2>&1 &
  local tp=$!
  if [[ -n "${KILL:-}" ]]; then
    for ((i = 0; i < KILL; i++)); do kill -0 "$tp" 2> /dev/null || break; sleep 1; done
    pkill -KILL -P "$tp" || true
  fi
  wait "$tp"
  local rc=$?
  set -e
  local t1; t1=$(date +%s.%N)
  local rss; rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/$name.time")
  printf '%s\t%.1f\t%s\t%s\n' "$name" "$(echo "$t1 - $t0" | bc)" "$((rss / 1024))" "$rc" >> "$work/stages.tsv"
  echo "$name: rc $rc, $(tail -1 "$work/stages.tsv" | cut -f2) s, $((rss / 1024)) MiB"
  return 0
}

stage synth cxrfeat synth data --n-train "$n_train" --n-val "$n_val" --n-test "$n_test" --n-external "$n_ext" --image-size 32

python - <<'EOF'
from transformers import ResNetConfig, ResNetModel
import torch
torch.manual_seed(0)
cfg = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 24], depths=[1, 1, 1, 1], layer_type="basic")
ResNetModel(cfg).save_pretrained("tiny-resnet")
EOF

ex=(cxrfeat extract --weights tiny-resnet --out features)
# Train split and sweep: killed with SIGKILL after KILL_AFTER and KILL_SWEEP_AFTER seconds (choose
# about half their time).
kill_after="${KILL_AFTER:-600}"
kill_sweep="${KILL_SWEEP_AFTER:-$kill_after}"
KILL="$kill_after" stage extract-train-killed "${ex[@]}" --split train --views 8 --data-dir data/nih-cxr-lt
stage extract-train-resumed "${ex[@]}" --split train --views 8 --data-dir data/nih-cxr-lt
stage extract-val "${ex[@]}" --split val --data-dir data/nih-cxr-lt
stage extract-test "${ex[@]}" --split test --data-dir data/nih-cxr-lt
stage extract-mimic "${ex[@]}" --split test --dataset mimic-cxr-lt --data-dir data/mimic-cxr-lt
stage verify cxrfeat verify features

sw=(heads sweep --tasks 19 --seeds 5 --features features --runs runs --name rehearsal --max-epochs "$epochs"
    --feature-norm standardize)
KILL="$kill_sweep" stage sweep-killed "${sw[@]}"
stage sweep-resumed "${sw[@]}"
stage report analysis report --runs runs/rehearsal --features features --out reports/rehearsal

{
  echo "# Full-size rehearsal (SYNTHETIC images, tiny random ResNet, 8 train views)"
  echo
  echo "Machine: $cpu, $cores cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%Y-%m-%d)."
  echo "Rows: train $n_train x 8 views, val $n_val, test $n_test, MIMIC external $n_ext (scale 1/$scale);"
  echo "sweep CXR-19 CDL + DQC, 5 seeds, at most $epochs epochs; SIGKILL after ${kill_after} s (extraction) and ${kill_sweep} s (sweep), then resumed."
  echo
  echo "| stage | wall s | peak RSS MiB | exit |"
  echo "| --- | ---: | ---: | ---: |"
  awk -F'\t' '{printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4}' "$work/stages.tsv"
  echo
  echo "Store sizes:"
  echo
  du -sh features/*/*.zarr | awk '{printf "- %s: %s\n", $2, $1}'
} > "$table"
cp "$table" "$here/rehearsal-$slug.md"
echo "wrote $here/rehearsal-$slug.md"
