#!/usr/bin/env bash
# GPU readiness check for dualattn: one prepared script, < 8 minutes on one GPU.
#
#   1. environment (nvidia-smi, torch/CUDA versions)                      timeout  20 s
#   2. the CUDA-marked tests:  pytest -m gpu                               timeout  90 s
#   3. attention benchmark fwd+bwd, N = 1K..16K, {float16, bfloat16} x
#      {flash, efficient} SDPA backends (dualattn bench attention)         timeout  60 s each
#   4. one short training run on CUDA (ViT on digits, BN+SH, bf16-mixed)   timeout 100 s
#
# Every step has its own timeout; a failed or timed-out step is recorded and the next one runs.
# Outputs go to $OUT (if set) or --out DIR (default benchmarks/results/gpu_check): one log per
# step, the benchmark CSV/PNG/MD per (dtype, backend), the run directory, and summary.md with a
# markdown table of the steps, the benchmark tables and the training result.
#
# Usage: benchmarks/gpu_check.sh [--out DIR] [--python PY] [--dry-run | --cpu-smoke]
#   --dry-run    no GPU needed: validates every step's options (benchmark configs, training
#                config and overrides) and writes the plan to plan.md; runs nothing.
#   --cpu-smoke  no GPU needed: runs the same steps on the CPU at toy sizes (N=64,128, bfloat16,
#                flash/math backends, 1 epoch) to check the script itself end to end.
# Exit status: 0 all steps passed (dry run: options valid), 1 a step failed, 2 no GPU / bad usage.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
OUT_DIR="${OUT:-$REPO/benchmarks/results/gpu_check}"
PY="${PYTHON:-}"
DRY_RUN=0
SMOKE=0

while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT_DIR="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --cpu-smoke) SMOKE=1; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

if [[ -z "$PY" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"; else PY="$(command -v python3 || command -v python)"; fi
fi
if [[ -z "$PY" ]] || ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is None)" >/dev/null 2>&1; then
  echo "gpu_check: no Python with torch found (tried '${PY:-python3}'); pass --python PY or set PYTHON" >&2
  exit 2
fi
# check this checkout's code, whatever copy of dualattn the interpreter has installed
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
mkdir -p "$OUT_DIR"
cd "$REPO" || exit 2

# ------------------------------------------------------------------ the plan (shared by both modes)
T_ENV=20; T_TESTS=90; T_BENCH=60; T_TRAIN=100  # 450 s in all, under the 8-minute goal
DEVICE=cuda
SEQ_LENS="1024,4096,16384"
BENCH_METHODS="sdpa,softmax,linear,bn,sh,bn+sh"
DTYPES=(float16 bfloat16)
BACKENDS=(flash efficient)
TRAIN_CONFIG="configs/vit-digits.yaml"
TRAIN_OVERRIDES=(model.variant=bn+sh trainer.accelerator=gpu trainer.precision=bf16-mixed
                 trainer.max_epochs=3 trainer.patience=null trainer.progress=none data.num_workers=2)
if [[ $SMOKE == 1 ]]; then  # same steps, toy sizes, on the CPU (efficient attention is CUDA-only)
  DEVICE=cpu; SEQ_LENS="64,128"; DTYPES=(bfloat16); BACKENDS=(flash math); T_TESTS=180; T_BENCH=180; T_TRAIN=180
  TRAIN_OVERRIDES=(model.variant=bn+sh trainer.accelerator=cpu trainer.max_epochs=1
                   trainer.patience=null trainer.progress=none trainer.redundancy_samples=8)
fi

bench_cmd() {  # dtype backend
  echo "$PY -m dualattn.cli bench attention --device $DEVICE --dtype $1 --sdpa-backend $2" \
       "--seq-lens $SEQ_LENS --methods $BENCH_METHODS --batch 1 --heads 8 --head-dim 64" \
       "--repeats 5 --min-repeats 3 --budget-s 1 --in-process --out $OUT_DIR/bench/$1-$2"
}
TEST_CMD="$PY -m pytest -m gpu -q -p no:cacheprovider tests"
TRAIN_CMD="$PY -m dualattn.cli train $TRAIN_CONFIG ${TRAIN_OVERRIDES[*]} --run-dir $OUT_DIR/train --no-report"

if [[ $DRY_RUN == 1 ]]; then
  {
    echo "# gpu_check plan (dry run, $(date -u +%Y-%m-%dT%H:%M:%SZ))"
    echo
    echo "| step | timeout (s) | command |"
    echo "|---|---|---|"
    echo "| env | $T_ENV | nvidia-smi; torch.cuda device/version |"
    echo "| tests | $T_TESTS | \`$TEST_CMD\` |"
    for dt in "${DTYPES[@]}"; do for be in "${BACKENDS[@]}"; do
      echo "| bench $dt/$be | $T_BENCH | \`$(bench_cmd "$dt" "$be")\` |"
    done; done
    echo "| train | $T_TRAIN | \`$TRAIN_CMD\` |"
    echo
    echo "Total timeout budget: $((T_ENV + T_TESTS + 4 * T_BENCH + T_TRAIN)) s."
  } > "$OUT_DIR/plan.md"
  # validate the benchmark options and the training config without a GPU
  "$PY" - "$DEVICE" "$SEQ_LENS" "$BENCH_METHODS" "$TRAIN_CONFIG" "${DTYPES[*]}" "${BACKENDS[*]}" "${TRAIN_OVERRIDES[@]}" <<'EOF' || exit 1
import sys
from dualattn.bench.cli import parse_int_list, parse_methods
from dualattn.bench.runner import BenchConfig
from dualattn.train.config import load_config

device, seq, methods, config, dtypes, backends, *overrides = sys.argv[1:]
for dt in dtypes.split():
    for be in backends.split():
        BenchConfig(seq_lens=parse_int_list(seq, "seq-lens"), methods=parse_methods(methods), device=device,
                    dtype=dt, sdpa_backend=be, isolate=False)
cfg = load_config(config, overrides)
assert cfg.trainer.accelerator == ("gpu" if device == "cuda" else "cpu"), cfg.trainer.accelerator
print(f"gpu_check dry run: {len(dtypes.split()) * len(backends.split())} benchmark configs and "
      f"{config} {' '.join(overrides)} are valid")
EOF
  echo "gpu_check dry run: plan written to $OUT_DIR/plan.md"
  exit 0
fi

# ------------------------------------------------------------------ GPU required from here on
if [[ $SMOKE == 0 ]] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  echo "gpu_check: no CUDA GPU visible to torch (torch.cuda.is_available() is False); nothing run." >&2
  echo "gpu_check: run it on a machine with an NVIDIA GPU, or use --dry-run to validate the plan." >&2
  exit 2
fi

STEPS=()   # "name|status|seconds|log"
FAILED=0
run_step() {  # name timeout log cmd...
  local name="$1" limit="$2" log="$3"; shift 3
  local t0=$SECONDS status
  echo "== [$name] (timeout ${limit}s) $*"
  timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
  local rc=$?
  case $rc in
    0) status="ok" ;;
    124|137) status="TIMEOUT (${limit} s)"; FAILED=1 ;;
    *) status="FAILED (exit $rc)"; FAILED=1 ;;
  esac
  local dt=$((SECONDS - t0))
  echo "   -> $status in ${dt}s (log: $log)"
  STEPS+=("$name|$status|$dt|${log#"$OUT_DIR"/}")
}

T_START=$SECONDS
run_step env "$T_ENV" "$OUT_DIR/env.log" bash -c \
  "'$PY' -c 'import torch; c = torch.cuda.is_available(); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(0) if c else \"(no GPU: CPU smoke run)\")'; nvidia-smi || echo 'nvidia-smi not available'"
# shellcheck disable=SC2086
run_step tests "$T_TESTS" "$OUT_DIR/tests.log" $TEST_CMD
for dt in "${DTYPES[@]}"; do
  for be in "${BACKENDS[@]}"; do
    # shellcheck disable=SC2046
    run_step "bench $dt/$be" "$T_BENCH" "$OUT_DIR/bench-$dt-$be.log" $(bench_cmd "$dt" "$be")
  done
done
# shellcheck disable=SC2086
run_step train "$T_TRAIN" "$OUT_DIR/train.log" $TRAIN_CMD
TOTAL=$((SECONDS - T_START))

# ------------------------------------------------------------------ summary.md
{
  echo "# dualattn GPU check ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
  echo
  echo "\`benchmarks/gpu_check.sh\` on: $(grep -m1 '^torch' "$OUT_DIR/env.log" 2>/dev/null || echo unknown)"
  echo
  echo "| step | status | seconds | log |"
  echo "|---|---|---|---|"
  for s in "${STEPS[@]}"; do IFS='|' read -r n st sec lg <<< "$s"; echo "| $n | $st | $sec | $lg |"; done
  echo "| **total** | $([[ $FAILED == 0 ]] && echo ok || echo 'FAILED') | $TOTAL | |"
  echo
  echo "## CUDA-marked tests"
  echo
  echo '```'
  tail -n 5 "$OUT_DIR/tests.log" 2>/dev/null
  echo '```'
  for dt in "${DTYPES[@]}"; do
    for be in "${BACKENDS[@]}"; do
      echo
      echo "## Attention fwd+bwd on $DEVICE, $dt, SDPA backend $be (B=1, H=8, D=64)"
      echo
      echo "Command: \`$(bench_cmd "$dt" "$be")\`"
      echo
      cat "$OUT_DIR/bench/$dt-$be/attention_speed.md" 2>/dev/null || echo "(no table: see bench-$dt-$be.log)"
    done
  done
  echo
  echo "## Training run"
  echo
  echo "Command: \`$TRAIN_CMD\`"
  echo
  "$PY" - "$OUT_DIR/train/summary.json" <<'EOF' 2>/dev/null || echo "(no summary.json: see train.log)"
import json, sys
s = json.load(open(sys.argv[1]))
keys = ["status", "device", "precision", "epochs", "test_acc", "val_acc", "time_per_epoch_s", "peak_mem_mb"]
print("| " + " | ".join(keys) + " |")
print("|" + "---|" * len(keys))
print("| " + " | ".join(f"{s.get(k):.4g}" if isinstance(s.get(k), float) else str(s.get(k)) for k in keys) + " |")
EOF
} > "$OUT_DIR/summary.md"

echo "gpu_check: total ${TOTAL}s; summary in $OUT_DIR/summary.md"
exit $FAILED
