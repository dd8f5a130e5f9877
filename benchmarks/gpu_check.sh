#!/usr/bin/env bash
# Everything that needs a GPU, in one call on a CUDA machine, from the
# repository root (bash benchmarks/gpu_check.sh). Steps, each logged under
# $OUT (default ./gpu_check_out) and timed:
#   build     the extension with its CUDA kernels, in place      build.log
#   tests     tests/test_cuda*.py, then the rest of the suite    tests.log
#   sanitize  compute-sanitizer memcheck and racecheck on
#             benchmarks/sanitize_case.py                        sanitizer.log
#   bench     benchmarks/bench_gpu.py                            bench.log, gpu_table.md
#   hopper    the Hopper forward, opt-in with TORCH_SELFATTN_HOPPER=1 until it
#             is verified (needs an sm_90 device): tests/test_cuda_hopper.py,
#             then tests/test_cuda*.py with the switch on, memcheck and
#             racecheck, and bench_gpu.py labelled as the Hopper run
#                                                                hopper.log, hopper_sanitizer.log,
#                                                                gpu_table_hopper.md
#             (not in the default STEPS: STEPS="build hopper" runs it)
# Environment:
#   STEPS          the steps to run, in order (default "build tests sanitize bench")
#   BENCH_ARGS     extra flags for bench_gpu.py, e.g. "--quick" or "--dtypes bf16"
#   TORCH_SELFATTN_CUDA_ARCH_FLAGS   nvcc -gencode flags (default sm_90a only: H100)
#   TESTS_TIMEOUT  seconds each pytest run may take (default 300)
# Stops at the first failing step and prints the tail of its log.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-./gpu_check_out}"
mkdir -p "$OUT"
STEPS="${STEPS:-build tests sanitize bench}"
TESTS_TIMEOUT="${TESTS_TIMEOUT:-300}"
export PYTHONUNBUFFERED=1
# The scripts in benchmarks/ import torch_selfattn from the in-place build.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

fail() {  # log message
  echo "FAILED: $2" >&2
  if [[ -f "$1" ]]; then
    echo "---- last 80 lines of $1 ----" >&2
    tail -n 80 "$1" >&2
  fi
  exit 1
}

# Runs a command with its output appended to a log; fails the script with the log's tail.
logged() {  # log command...
  local log=$1
  shift
  echo "\$ $*" >>"$log"
  "$@" >>"$log" 2>&1 || fail "$log" "$* (exit $?)"
}

# Without this, a build that silently fell back to CPU only would turn every CUDA test into a skip.
require_cuda_library() {  # log
  logged "$1" python3 -c "
import sys, torch, torch_selfattn
info = torch_selfattn.build_info()
print('torch', torch.__version__, '| build_info:', info)
if 'CUDA' not in info['backends']:
    sys.exit('torch_selfattn has no CUDA kernels: was nvcc found at build time?')
print('device:', torch.cuda.get_device_name())"
}

step_build() {
  local log="$OUT/build.log"
  : >"$log"
  logged "$log" env MAX_JOBS=16 \
    TORCH_SELFATTN_CUDA_ARCH_FLAGS="${TORCH_SELFATTN_CUDA_ARCH_FLAGS:--gencode=arch=compute_90a,code=sm_90a}" \
    python3 setup.py build_ext --inplace
  require_cuda_library "$log"
  tail -n 1 "$log"
}

step_tests() {
  local log="$OUT/tests.log"
  : >"$log"
  require_cuda_library "$log"
  # SIGINT first so that pytest prints what it has; KILL if a kernel hangs.
  logged "$log" timeout -s INT -k 20 "$TESTS_TIMEOUT" \
    python3 -m pytest tests/test_cuda.py tests/test_cuda_runtime.py tests/test_cuda_features.py -q -rs \
      --durations=10
  logged "$log" timeout -s INT -k 20 "$TESTS_TIMEOUT" \
    python3 -m pytest tests -q -x --ignore-glob='tests/test_cuda*.py'
  grep -E "^[0-9]+ (passed|failed|skipped)|^=+ .*(passed|failed)" "$log" || true
}

find_sanitizer() {
  command -v compute-sanitizer && return
  local candidate="${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer"
  [[ -x "$candidate" ]] && echo "$candidate" && return
  return 1
}

# memcheck and racecheck on benchmarks/sanitize_case.py.
sanitize() {  # log
  local log=$1 sanitizer
  : >"$log"
  sanitizer=$(find_sanitizer) ||
    fail "$log" "compute-sanitizer not found on PATH nor in \${CUDA_HOME:-/usr/local/cuda}/bin"
  # Without PyTorch's caching allocator every tensor is its own allocation,
  # so memcheck sees a read past a tensor's end instead of into a pooled neighbour.
  for tool in memcheck racecheck; do
    logged "$log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
      "$sanitizer" --tool "$tool" --error-exitcode 1 --print-limit 20 python3 benchmarks/sanitize_case.py
  done
  grep -E "SUMMARY" "$log" || true
}

step_sanitize() {
  sanitize "$OUT/sanitizer.log"
}

# bench_gpu.py with BENCH_ARGS and any further flags given, its table in `table`.
bench() {  # log table [bench_gpu.py flags...]
  local log=$1 table=$2 bench_args
  shift 2
  : >"$log"
  read -r -a bench_args <<<"${BENCH_ARGS:-}"
  logged "$log" python3 benchmarks/bench_gpu.py --out "$table" "$@" ${bench_args[@]+"${bench_args[@]}"}
  cat "$table"
}

step_bench() {
  bench "$OUT/bench.log" "$OUT/gpu_table.md"
}

# In a subshell, so that the switch stays off for the steps after it.
step_hopper() (
  export TORCH_SELFATTN_HOPPER=1
  local log="$OUT/hopper.log"
  : >"$log"
  require_cuda_library "$log"
  # The Hopper tests skip on any other device; here that would hide the path.
  logged "$log" python3 -c "
import sys, torch
capability = torch.cuda.get_device_capability()
if capability != (9, 0):
    sys.exit(f'the hopper step needs a compute capability 9.0 device (H100, H200); this one is {capability}')"
  logged "$log" timeout -s INT -k 20 "$TESTS_TIMEOUT" \
    python3 -m pytest tests/test_cuda_hopper.py -q -rs --durations=10
  if grep -qE "[0-9]+ skipped" "$log"; then
    fail "$log" "tests/test_cuda_hopper.py skipped tests on an sm_90 device (the reasons are above)"
  fi
  logged "$log" timeout -s INT -k 20 "$TESTS_TIMEOUT" python3 -m pytest tests/test_cuda.py tests/test_cuda_runtime.py -q -rs
  grep -E "^[0-9]+ (passed|failed|skipped)|^=+ .*(passed|failed)" "$log" || true
  sanitize "$OUT/hopper_sanitizer.log"
  bench "$OUT/hopper_bench.log" "$OUT/gpu_table_hopper.md" \
    --label "forward on the Hopper kernels (TORCH_SELFATTN_HOPPER=1), backward on the sm_80 kernels"
)

for step in $STEPS; do
  case "$step" in
    build | tests | sanitize | bench | hopper) ;;
    *) fail "" "unknown step '$step' in STEPS (known: build tests sanitize bench hopper)" ;;
  esac
  start=$SECONDS
  echo "== $step"
  "step_$step"
  echo "== $step: ok, $((SECONDS - start)) s"
done
