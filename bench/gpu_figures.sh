#!/bin/bash
# Every GPU figure the throughput targets ask for, in one pass under the device tool's budget (one H200, 16 cores,
# a few minutes of device time in all): each part in turn under its own timeout, results as JSON in $OUT as they come.
#
#   bash ../shared/gpu-kit/prepare.sh                          # here, once: .gpu-kit/ (ignored by git)
#   run: source .gpu-kit/install.sh && bash bench/gpu_figures.sh   (carry .gpu-kit; OUT is set by the tool)
#   then copy $OUT/*.json to bench/results/gpu/ and record the figures in docs/measurements.md
#
# Parts, most wanted first (each skips when the time left cannot hold it):
#   agent      mmaze train step B4 x T1024 in float32 and bfloat16 (target: bf16 <= 0.07 s)   ~4 min
#   loop       mmaze9x9 through the real loop, 16 env processes, ratio 64 (target >= 400 env steps/s) ~4 min
#   exactness  two processes, same mmaze step bits (the compile cache shared, as jobs share it) ~3 min
#   resume     a Memory Maze run with the mmaze agent stopped and resumed in a new process: same bits   ~4 min
# One at a time: a part running beside a timed one would slow the GPU or the cores it times.
# GPU_FIGURES_SMOKE=1 runs the same parts with tiny presets (a CPU check of this script, ~3 min on 2 cores).
set -u
OUT=${OUT:-bench/results/gpu}
BUDGET_S=${BUDGET_S:-540}
mkdir -p "$OUT"
START=$(date +%s)
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/r2i-jax-cache}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_deterministic_ops=true"
PY=${PY:-python3}

if [ "${GPU_FIGURES_SMOKE:-0}" = 1 ]; then
  AGENT=(--presets tiny_image --batch 2 --length 16 --quick)
  EXACT=(--preset tiny --batch 2 --length 16 --parts processes)
  LOOP=(--presets cpu --quick)
  RESUME=(--preset tiny --parts resume --loop-steps 200)
else
  AGENT=(--presets mmaze --batch 4 --length 1024)
  EXACT=(--preset mmaze --batch 4 --length 1024 --parts processes)
  LOOP=(--presets gpu)
  RESUME=(--preset mmaze --parts resume)
fi

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "no nvidia-smi"
  nproc; $PY -c "import jax; print(jax.__version__, jax.devices())" 2>&1 | tail -1; } > "$OUT/machine.txt"

left() { echo $((BUDGET_S - ($(date +%s) - START))); }

# part NAME SECONDS CMD...: run CMD under a timeout of SECONDS (less when less is left); log and rc in $OUT
part() {
  local name=$1 limit=$2
  shift 2
  local l
  l=$(left)
  if [ "$l" -lt 60 ]; then echo "$name skipped: ${l}s left" | tee -a "$OUT/parts.txt"; return; fi
  [ "$limit" -gt "$l" ] && limit=$l
  local t0=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$? ${limit}s limit, $(( $(date +%s) - t0 ))s" | tee -a "$OUT/parts.txt"
}

part agent 270 $PY -m bench.bench_agent "${AGENT[@]}" --precisions float32,bfloat16 --out "$OUT/agent.json"
part loop 270 $PY -m bench.bench_loop "${LOOP[@]}" --out "$OUT/loop.json"
part exactness 240 $PY -m bench.exactness "${EXACT[@]}" --out "$OUT/exactness.json"
part resume 300 $PY -m bench.exactness "${RESUME[@]}" --out "$OUT/exactness_resume.json"
echo "total $(( $(date +%s) - START ))s" | tee -a "$OUT/parts.txt"
