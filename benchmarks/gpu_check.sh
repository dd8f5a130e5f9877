#!/usr/bin/env bash
# Everything that needs a GPU, in one call on a CUDA machine, from the
# repository root:
#
#   bash benchmarks/gpu_check.sh [--dry-run] [STEP...]
#
# STEP names a step below; `all` is every step; none means the default
# steps (build tests fuzz errors sanitize bench). Whatever order they are
# named in, the steps run in three phases: build alone, then the checks
# side by side (each is mostly Python and host work on small problems, and
# the machine has 16 cores), then the benchmarks alone, so that nothing else
# runs while they time.
#
#   phase 1  build     the extension in place (MAX_JOBS=16); with `hopper`
#                      also its hang-debug library, built with
#                      TORCH_SELFATTN_NVCC_FLAGS=-DTORCH_SELFATTN_DEBUG_HANGS
#                      into build/hang_debug/ (in place it would replace the
#                      library the other steps load)
#   phase 2  tests     tests/test_cuda*.py (test_cuda_large.py beside the
#                      rest, in one process: it needs up to 48 GiB free)
#            fuzz      the CUDA half of tests/test_fuzz_*.py
#            errors    tests/test_errors.py::test_bad_input_raises_naming_the_argument
#                      alone (it segfaulted once on the device's torch 2.11);
#                      a case that crashes its process is run again under
#                      cuda-gdb for a native backtrace
#            sanitize  compute-sanitizer memcheck, racecheck and initcheck,
#                      side by side, on benchmarks/sanitize_case.py and
#                      $SANITIZE_FUZZ fuzzer-drawn calls
#            hopper    with TORCH_SELFATTN_HOPPER=1 and the hang-debug library
#                      (a stuck mbarrier wait prints itself and traps):
#                      test_cuda_hopper.py (no skips allowed), test_cuda.py and
#                      test_cuda_runtime.py, beside the three sanitizers
#   phase 3  bench     benchmarks/bench_gpu.py $BENCH_ARGS (--quick: bf16,
#                      head dims 64 and 128); on an sm_90 device also with
#                      TORCH_SELFATTN_HOPPER=1 (the normal library)
#
# Each step has a budget in seconds (BUDGET below; the whole run stays under
# TOTAL_BUDGET); each command in it gets what is left, then SIGINT (pytest
# then prints what it has) and 15 s later SIGKILL. Every pytest run also has
# a per-test timeout (pytest-timeout, thread method: it dumps every thread's
# stack and ends the process even inside a CUDA call; installed from .whl/
# when the machine lacks it; otherwise pytest's faulthandler_timeout dumps
# the stacks and the step budget ends the run). A failed step does not stop
# the others.
#
# Output, in $OUT (default ./gpu_check_out): summary.md (each step's result,
# counts, time and budget, its first failure with the traceback, and the
# command that reruns what did not pass), logs.tar.gz (every log, rewritten
# after each step), gpu_table.md and gpu_table_hopper.md (the benchmarks).
# The logs themselves are in $LOGS (default build/gpu_check_logs).
#
# Environment: OUT, LOGS, PYTHON (python3), GIT_COMMIT (for the summary, where
# the copy of the tree has no .git), TOTAL_BUDGET (470), TEST_TIMEOUT
# (per test, 120), SANITIZE_FUZZ (30), HOPPER_SANITIZE_FUZZ (10),
# SANITIZE_SERIAL (set: one sanitizer at a time instead of three side by
# side), BENCH_ARGS ("--quick --dtypes bf16"), TORCH_SELFATTN_CUDA_ARCH_FLAGS
# (default sm_90a only: H100/H200), BUILD_JOBS (16).
set -uo pipefail

STEPS_IN_ORDER=(build tests fuzz errors sanitize hopper bench)
DEFAULT_STEPS=(build tests fuzz errors sanitize bench)
declare -A BUDGET=([build]=150 [tests]=180 [fuzz]=150 [errors]=90 [sanitize]=180 [hopper]=180 [bench]=75)
declare -A PHASE=([build]=1 [tests]=2 [fuzz]=2 [errors]=2 [sanitize]=2 [hopper]=2 [bench]=3)
HANG_DEBUG_FLAGS="-DTORCH_SELFATTN_DEBUG_HANGS"
ERRORS_TEST="tests/test_errors.py::test_bad_input_raises_naming_the_argument"

usage() {
  sed -n '2,/^set -uo pipefail/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

setup() {
  cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
  ROOT=$PWD
  PYTHON="${PYTHON:-python3}"
  OUT="${OUT:-./gpu_check_out}"
  LOGS="${LOGS:-build/gpu_check_logs}"
  TOTAL_BUDGET="${TOTAL_BUDGET:-470}"
  TEST_TIMEOUT="${TEST_TIMEOUT:-120}"
  SANITIZE_FUZZ="${SANITIZE_FUZZ:-30}"
  HOPPER_SANITIZE_FUZZ="${HOPPER_SANITIZE_FUZZ:-10}"
  BENCH_ARGS="${BENCH_ARGS---quick --dtypes bf16}"
  ARCH_FLAGS="${TORCH_SELFATTN_CUDA_ARCH_FLAGS:--gencode=arch=compute_90a,code=sm_90a}"
  BUILD_JOBS="${BUILD_JOBS:-16}"
  HANG_DEBUG_LIB="$ROOT/build/hang_debug"
  DEADLINE=$((SECONDS + TOTAL_BUDGET))
  export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
  # The scripts in benchmarks/ import torch_selfattn from the in-place build.
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  # Many processes share the 16 cores in phase 2; their CPU work is small.
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
}

selected() { [[ " ${SELECTED[*]} " == *" $1 "* ]]; }

# Runs a command with its output appended to a log, under what is left of the
# step's budget (STEP_DEADLINE). Marks a failure or timeout in the log for
# gpu_check_summary.py. With --dry-run, prints the command instead.
run_logged() {  # log command...
  local log=$1 left start rc
  shift
  if [[ -n "${DRY_RUN:-}" ]]; then
    local shown="$*"
    echo "    [${log##*/}] ${shown//$'\n'/\\n}"
    return 0
  fi
  left=$((STEP_DEADLINE - SECONDS))
  echo "\$ $*" >>"$log"
  if ((left <= 0)); then
    echo "[gpu_check] TIMED OUT: no time left in the step's budget to start this command" >>"$log"
    return 124
  fi
  start=$SECONDS
  timeout -s INT -k 15 "$left" "$@" </dev/null >>"$log" 2>&1
  rc=$?
  if ((rc == 124 || rc == 137)); then
    echo "[gpu_check] TIMED OUT after $((SECONDS - start)) s (the step's budget ran out): $*" >>"$log"
  elif ((rc != 0)); then
    echo "[gpu_check] FAILED (exit $rc) after $((SECONDS - start)) s: $*" >>"$log"
  fi
  return "$rc"
}

# Waits for background commands; returns the first nonzero status.
wait_all() {  # pid...
  local pid status rc=0
  for pid in "$@"; do
    wait "$pid"
    status=$?
    ((rc == 0)) && rc=$status
  done
  return "$rc"
}

# pytest with the per-test timeout and, given a worker count and
# pytest-xdist, that many worker processes.
PYTEST=()
pytest_command() {  # workers
  PYTEST=("$PYTHON" -m pytest -p no:cacheprovider -v -rfEs --durations=5 "${TIMEOUT_ARGS[@]}")
  if [[ -n "$XDIST" && $1 -gt 1 ]]; then
    PYTEST+=(-n "$1")
  fi
}

# Without this, a build that silently fell back to CPU only would turn every
# CUDA test into a skip.
CHECK_CUDA_LIBRARY='
import sys, torch, torch_selfattn
info = torch_selfattn.build_info()
print("torch", torch.__version__, "| build_info:", info)
if "CUDA" not in info["backends"]:
    sys.exit("torch_selfattn has no CUDA kernels: was nvcc found at build time?")
print("device:", torch.cuda.get_device_name())'

find_tool() {  # name
  command -v "$1" && return
  local candidate="${CUDA_HOME:-/usr/local/cuda}/bin/$1"
  [[ -x "$candidate" ]] && echo "$candidate" && return
  echo "$1"  # not found: the command fails and its log says so
}

# The CUTLASS/CuTe headers the CUDA build needs (setup.py's pin), from the
# machine, else from a wheel carried in .whl/ (the device machine has no
# network; benchmarks/gpu_run.md says how to download it): the wheel is only
# unpacked, and setup.py pointed at its headers.
use_carried_cutlass() {
  "$PYTHON" -c "import setup; setup.cutlass_include_dir()" >/dev/null 2>&1 && return
  compgen -G ".whl/nvidia_cutlass-*.whl" >/dev/null || return 0
  "$PYTHON" -m pip install -q --no-index --no-deps --target "$ROOT/build/cutlass_site" .whl/nvidia_cutlass-*.whl &&
    export TORCH_SELFATTN_CUTLASS_INCLUDE="$ROOT/build/cutlass_site/cutlass_library/source/include"
}

step_build() {
  local log="$LOGS/build.log" file
  use_carried_cutlass
  run_logged "$log" env MAX_JOBS="$BUILD_JOBS" TORCH_SELFATTN_CUDA_ARCH_FLAGS="$ARCH_FLAGS" \
    "$PYTHON" setup.py build_ext --inplace || return
  run_logged "$log" "$PYTHON" -c "$CHECK_CUDA_LIBRARY" || return
  selected hopper || return 0
  # The same build folder: only the nvcc objects see the new flag and are rebuilt.
  run_logged "$log" env MAX_JOBS="$BUILD_JOBS" TORCH_SELFATTN_CUDA_ARCH_FLAGS="$ARCH_FLAGS" \
    TORCH_SELFATTN_NVCC_FLAGS="$HANG_DEBUG_FLAGS" "$PYTHON" setup.py build_ext --build-lib "$HANG_DEBUG_LIB" || return
  # The package's Python files beside the debug library make a second
  # torch_selfattn, which PYTHONPATH puts first for the hopper step; a pytest
  # plugin there fails the run if a pytest setting puts the tree's first.
  if [[ -z "${DRY_RUN:-}" ]]; then
    for file in torch_selfattn/*; do
      [[ "$file" == torch_selfattn/_C* ]] || ln -sfn "$ROOT/$file" "$HANG_DEBUG_LIB/$file"
    done
    cat >"$HANG_DEBUG_LIB/hang_debug_library.py" <<EOF
def pytest_configure(config):
    import torch_selfattn
    library = torch_selfattn.build_info()["library"]
    if not library.startswith("$HANG_DEBUG_LIB/"):
        raise RuntimeError(f"the hopper step loaded {library}, not the hang-debug library")
EOF
  fi
  run_logged "$log" env PYTHONPATH="$HANG_DEBUG_LIB:$PYTHONPATH" "$PYTHON" -P -c "$CHECK_CUDA_LIBRARY
if not info['library'].startswith('$HANG_DEBUG_LIB/'):
    sys.exit('the hang-debug torch_selfattn did not load its own library')"
}

step_tests() {
  local files=() file pids=()
  # Without the CUDA kernels every test here would skip, and the step pass.
  run_logged "$LOGS/tests.pytest.log" "$PYTHON" -c "$CHECK_CUDA_LIBRARY" || return
  for file in tests/test_cuda*.py; do
    [[ "$file" == tests/test_cuda_large.py ]] || files+=("$file")
  done
  pytest_command 4
  run_logged "$LOGS/tests.pytest.log" "${PYTEST[@]}" "${files[@]}" &
  pids+=($!)
  pytest_command 1
  run_logged "$LOGS/tests_large.pytest.log" "${PYTEST[@]}" tests/test_cuda_large.py &
  pids+=($!)
  wait_all "${pids[@]}"
}

step_fuzz() {
  run_logged "$LOGS/fuzz.pytest.log" "$PYTHON" -c "$CHECK_CUDA_LIBRARY" || return
  pytest_command 3
  run_logged "$LOGS/fuzz.pytest.log" "${PYTEST[@]}" tests/test_fuzz_differential.py tests/test_fuzz_invalid.py -k cuda
}

step_errors() {
  local log="$LOGS/errors.pytest.log" rc crashed
  # One worker per case where pytest-xdist is there: a crash then fails
  # that case alone, and every case still runs.
  pytest_command 4
  run_logged "$log" "${PYTEST[@]}" "$ERRORS_TEST"
  rc=$?
  if [[ -n "${DRY_RUN:-}" ]]; then
    echo "    (only if a case crashed its process: that case again under cuda-gdb, for a native backtrace)"
    crashed="$ERRORS_TEST[CASE]"
  else
    crashed=$("$PYTHON" benchmarks/gpu_check_summary.py crashed-test "$log")
  fi
  if [[ -n "$crashed" ]]; then
    run_logged "$LOGS/errors.cuda-gdb.log" "$(find_tool cuda-gdb)" -nx -batch -ex run -ex bt \
      --args "$PYTHON" -m pytest -p no:cacheprovider -p no:xdist -q "${TIMEOUT_ARGS[@]}" "$crashed"
  fi
  return "$rc"
}

# The three sanitizers side by side on sanitize_case.py, logs PREFIX.TOOL.log.
# Without PyTorch's caching allocator every tensor is its own allocation, so
# memcheck sees a read past a tensor's end instead of into a pooled
# neighbour; initcheck finds reads of memory nothing wrote.
sanitize() {  # prefix fuzz-calls [env assignments...]
  local prefix=$1 fuzz=$2 tool pids=() sanitizer
  shift 2
  sanitizer=$(find_tool compute-sanitizer)
  for tool in memcheck racecheck initcheck; do
    run_logged "$LOGS/$prefix.$tool.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$@" \
      "$sanitizer" --tool "$tool" --error-exitcode 1 --print-limit 20 \
      "$PYTHON" benchmarks/sanitize_case.py --fuzz "$fuzz" &
    pids+=($!)
    if [[ -n "${SANITIZE_SERIAL:-}" ]]; then wait_all "${pids[@]}" || return; pids=(); fi
  done
  wait_all ${pids[@]+"${pids[@]}"}
}

step_sanitize() {
  sanitize sanitize "$SANITIZE_FUZZ"
}

step_hopper() {
  local log="$LOGS/hopper.pytest.log" debug=(PYTHONPATH="$HANG_DEBUG_LIB:$PYTHONPATH" PYTHONSAFEPATH=1
    TORCH_SELFATTN_HOPPER=1) pids=() rc
  # The Hopper tests skip on any other device; here that would hide the path.
  run_logged "$log" env "${debug[@]}" "$PYTHON" -c "$CHECK_CUDA_LIBRARY
if torch.cuda.get_device_capability() != (9, 0):
    sys.exit(f'the hopper step needs a compute capability 9.0 device (H100, H200)')
if not info['library'].startswith('$HANG_DEBUG_LIB/'):
    sys.exit('no hang-debug library in $HANG_DEBUG_LIB: run the build step with the hopper step')" || return
  pytest_command 3
  run_logged "$log" env "${debug[@]}" "${PYTEST[@]}" -p hang_debug_library tests/test_cuda_hopper.py \
    tests/test_cuda.py tests/test_cuda_runtime.py &
  pids+=($!)
  sanitize hopper "$HOPPER_SANITIZE_FUZZ" "${debug[@]}" &
  pids+=($!)
  wait_all "${pids[@]}"
  rc=$?
  if [[ -z "${DRY_RUN:-}" ]] && grep -qE "SKIPPED.*test_cuda_hopper\.py|test_cuda_hopper\.py.*SKIPPED" "$log"; then
    echo "[gpu_check] FAILED: tests/test_cuda_hopper.py skipped tests on an sm_90 device (reasons above)" >>"$log"
    return 1
  fi
  return "$rc"
}

step_bench() {
  local bench_args=()
  read -r -a bench_args <<<"$BENCH_ARGS"
  run_logged "$LOGS/bench.log" "$PYTHON" benchmarks/bench_gpu.py --out "$OUT/gpu_table.md" \
    ${bench_args[@]+"${bench_args[@]}"} || return
  [[ -n "${DRY_RUN:-}" ]] && echo "    (on an sm_90 device with an sm_90a build, also:)"
  if [[ -n "${DRY_RUN:-}" ]] || "$PYTHON" -c "
import sys, torch
from torch_selfattn.info import compiled_cuda_archs
sys.exit(torch.cuda.get_device_capability() != (9, 0) or 'sm_90a' not in compiled_cuda_archs())"; then
    run_logged "$LOGS/bench_hopper.log" env TORCH_SELFATTN_HOPPER=1 "$PYTHON" benchmarks/bench_gpu.py \
      --out "$OUT/gpu_table_hopper.md" \
      --label "forward on the Hopper kernels (TORCH_SELFATTN_HOPPER=1), backward on the sm_80 kernels" \
      ${bench_args[@]+"${bench_args[@]}"}
  fi
}

write_status() {  # step status [rc seconds note]
  printf 'status=%s\nrc=%s\nseconds=%s\nnote=%s\n' "$2" "${3:-}" "${4:-}" "${5:-}" >"$LOGS/$1.status.tmp"
  mv -f "$LOGS/$1.status.tmp" "$LOGS/$1.status"
}

write_summary() {  # [--console]
  "$PYTHON" benchmarks/gpu_check_summary.py write "$LOGS" "$OUT/summary.md" "$@"
  tar -czf "$OUT/logs.tar.gz.$BASHPID" -C "$(dirname "$LOGS")" "$(basename "$LOGS")" 2>/dev/null
  mv -f "$OUT/logs.tar.gz.$BASHPID" "$OUT/logs.tar.gz"
}

# Runs step_STEP under its budget (cut to what is left of TOTAL_BUDGET) and
# records the result.
run_step() {  # step
  local step=$1 budget start rc status note=""
  # 20 s of TOTAL_BUDGET stay for the last kill's grace and the summary.
  budget=$((DEADLINE - SECONDS - 20))
  ((budget > BUDGET[$step])) && budget=${BUDGET[$step]}
  if [[ -n "${DRY_RUN:-}" ]]; then
    echo "  $step (budget ${BUDGET[$step]} s):"
    STEP_DEADLINE=$DEADLINE "step_$step"
    return 0
  fi
  if [[ -n "${BUILD_FAILED:-}" ]]; then
    write_status "$step" "not run" "" "" "the build failed"
    return 1
  fi
  if ((budget < BUDGET[$step] && budget < 10)); then
    write_status "$step" "not run" "" "" "no time left of TOTAL_BUDGET=$TOTAL_BUDGET s"
    return 1
  fi
  echo "== $step: started (budget $budget s)"
  write_status "$step" running
  start=$SECONDS
  STEP_DEADLINE=$((SECONDS + budget)) "step_$step"
  rc=$?
  if ((rc == 0)); then
    status=passed
  elif ((rc == 124 || rc == 137)); then
    status="TIMED OUT"
  else
    status=FAILED
  fi
  write_status "$step" "$status" "$rc" "$((SECONDS - start))" "$note"
  echo "== $step: $status in $((SECONDS - start)) s"
  write_summary
  [[ $status == passed ]]
}

record_environment() {
  {
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1 ||
      echo 'no nvidia-smi')"
    echo "torch=$("$PYTHON" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)' 2>&1 | tail -n 1)"
    echo "nvcc=$("$(find_tool nvcc)" --version 2>/dev/null | grep -o 'release [0-9.]*' || echo 'not found')"
    echo "commit=${GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo 'unknown (no git here)')}"
    echo "test_timeout=$TIMEOUT_TEXT"
    echo "xdist=${XDIST:-no (pytest-xdist missing: one process per pytest run)}"
  } >"$LOGS/env.txt"
}

# pytest-timeout and pytest-xdist from the machine, else from wheels carried
# in .whl/ (benchmarks/gpu_run.md says how to download them).
choose_pytest_plugins() {
  if ! "$PYTHON" -c "import pytest_timeout, xdist" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --target "$ROOT/build/gpu_check_site" .whl/*.whl &&
      export PYTHONPATH="$PYTHONPATH:$ROOT/build/gpu_check_site"
  fi
  if "$PYTHON" -c "import pytest_timeout" 2>/dev/null; then
    TIMEOUT_ARGS=(--timeout="$TEST_TIMEOUT" --timeout-method=thread)
    TIMEOUT_TEXT="$TEST_TIMEOUT s (pytest-timeout, thread method)"
  else
    TIMEOUT_ARGS=(-o "faulthandler_timeout=$TEST_TIMEOUT")
    TIMEOUT_TEXT="none: pytest-timeout missing; stacks dumped after $TEST_TIMEOUT s (faulthandler_timeout), the step's budget ends the run"
  fi
  XDIST=""
  "$PYTHON" -c "import xdist" 2>/dev/null && XDIST="pytest-xdist"
}

parse_arguments() {
  DRY_RUN=""
  SELECTED=()
  local arg step wanted=()
  for arg in "$@"; do
    case "$arg" in
      -h | --help) usage; exit 0 ;;
      --dry-run) DRY_RUN=1 ;;
      all) wanted+=("${STEPS_IN_ORDER[@]}") ;;
      -*) echo "gpu_check.sh: unknown option '$arg' (see --help)" >&2; exit 2 ;;
      *)
        if [[ -z "${BUDGET[$arg]:-}" ]] || ! declare -F "step_$arg" >/dev/null; then
          echo "gpu_check.sh: unknown step '$arg' (steps: ${STEPS_IN_ORDER[*]} all)" >&2
          exit 2
        fi
        wanted+=("$arg") ;;
    esac
  done
  ((${#wanted[@]})) || wanted=("${DEFAULT_STEPS[@]}")
  for step in "${!BUDGET[@]}"; do
    if [[ " ${wanted[*]} " == *" $step "* ]]; then SELECTED+=("$step"); fi
  done
  # Phase, then the order of STEPS_IN_ORDER (steps added to BUDGET come last).
  mapfile -t SELECTED < <(for step in "${SELECTED[@]}"; do
    local rank=99 i
    for i in "${!STEPS_IN_ORDER[@]}"; do [[ ${STEPS_IN_ORDER[$i]} == "$step" ]] && rank=$i; done
    echo "${PHASE[$step]:-2} $rank $step"
  done | sort -n -k1,1 -k2,2 | cut -d' ' -f3)
}

main() {
  parse_arguments "$@"
  setup
  choose_pytest_plugins
  local phase step pids budget_sum=0
  if [[ -n "$DRY_RUN" ]]; then
    echo "gpu_check.sh --dry-run: steps ${SELECTED[*]}; OUT=$OUT LOGS=$LOGS; per-test timeout: $TIMEOUT_TEXT;" \
      "parallel pytest: ${XDIST:-no}"
  else
    rm -rf "$LOGS"
    mkdir -p "$LOGS" "$OUT"
    rm -f "$OUT/summary.md" "$OUT/logs.tar.gz"
    record_environment
    for step in "${SELECTED[@]}"; do echo "$step ${BUDGET[$step]}"; done >"$LOGS/plan.txt"
  fi
  for phase in 1 2 3; do
    local in_phase=() longest=0
    for step in "${SELECTED[@]}"; do
      [[ "${PHASE[$step]:-2}" == "$phase" ]] || continue
      in_phase+=("$step")
      ((BUDGET[$step] > longest)) && longest=${BUDGET[$step]}
    done
    ((${#in_phase[@]})) || continue
    budget_sum=$((budget_sum + longest))
    if [[ -n "$DRY_RUN" ]]; then
      ((${#in_phase[@]} > 1)) && echo "phase $phase: ${in_phase[*]} side by side, at most $longest s" ||
        echo "phase $phase: ${in_phase[*]}, at most $longest s"
    fi
    pids=()
    for step in "${in_phase[@]}"; do
      if ((${#in_phase[@]} > 1)) && [[ -z "$DRY_RUN" ]]; then
        run_step "$step" &
        pids+=($!)
      else
        run_step "$step" || { [[ $step == build ]] && BUILD_FAILED=1; }
      fi
    done
    ((${#pids[@]})) && wait "${pids[@]}"
  done
  if [[ -n "$DRY_RUN" ]]; then
    echo "budget: at most $budget_sum s in all (the phases' longest budgets; TOTAL_BUDGET=$TOTAL_BUDGET s caps the run)"
    return 0
  fi
  echo
  write_summary --console
  grep -q "Every step passed" "$OUT/summary.md"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
