"""benchmarks/gpu_check.sh without a GPU: its argument parsing, the commands
its --dry-run prints (the build, every pytest run with a per-test timeout,
the sanitizers, the benchmark) and their budget, and, with fake steps that
fail, run out of time, outlast the per-test timeout and crash, the
summary.md it writes and the rerun command it proposes."""
import os
import re
import subprocess
import sys
import tarfile
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")


def gpu_check(*args, env=None):
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})


def test_dry_run_prints_every_step_within_eight_minutes():
    result = gpu_check("--dry-run", "all")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "MAX_JOBS=16" in out and "-gencode=arch=compute_90a,code=sm_90a" in out
    assert "TORCH_SELFATTN_NVCC_FLAGS=-DTORCH_SELFATTN_DEBUG_HANGS" in out
    pytest_lines = [line for line in out.splitlines() if "-m pytest" in line]
    assert pytest_lines and all(re.search(r"--timeout=\d+|faulthandler_timeout=\d+", line) for line in pytest_lines)
    for name in os.listdir(os.path.join(ROOT, "tests")):
        if name.startswith("test_cuda") and name.endswith(".py"):
            assert f"tests/{name}" in out
    assert re.search(r"tests/test_fuzz_differential\.py tests/test_fuzz_invalid\.py -k cuda", out)
    assert "tests/test_errors.py::test_bad_input_raises_naming_the_argument" in out
    for prefix in ("sanitize", "hopper"):
        for tool in ("memcheck", "racecheck", "initcheck"):
            assert f"[{prefix}.{tool}.log]" in out and f"--tool {tool}" in out
    assert "bench_gpu.py" in out and "--quick --dtypes bf16" in out
    budget = int(re.search(r"budget: at most (\d+) s in all", out).group(1))
    assert budget <= 8 * 60


def test_default_steps_and_unknown_steps():
    default = gpu_check("--dry-run")
    assert default.returncode == 0
    assert "steps build tests fuzz errors sanitize bench;" in default.stdout
    assert "hopper (budget" not in default.stdout
    unknown = gpu_check("--dry-run", "tests", "benchmark")
    assert unknown.returncode == 2
    assert "unknown step 'benchmark'" in unknown.stderr and "build tests fuzz" in unknown.stderr


FAKE_TESTS = """
import ctypes
import time


def test_fails():
    assert 1 + 1 == 3, "the fake failure"


def test_sleeps():
    time.sleep(60)


def test_crashes():
    ctypes.string_at(0)
"""


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    (tmp / "fake_test.py").write_text(FAKE_TESTS)
    fake = tmp / "fake_test.py"
    driver = textwrap.dedent(f"""
        source {SCRIPT}
        BUDGET[fakefail]=60 BUDGET[fakehang]=4 BUDGET[fakepertest]=30 BUDGET[fakepass]=60 BUDGET[errors]=60
        step_fakefail() {{ pytest_command 1; run_logged "$LOGS/fakefail.pytest.log" "${{PYTEST[@]}}" {fake}::test_fails; }}
        step_fakehang() {{ run_logged "$LOGS/fakehang.log" "$PYTHON" -c "import time; time.sleep(60)"; }}
        step_fakepertest() {{ pytest_command 1; run_logged "$LOGS/fakepertest.pytest.log" "${{PYTEST[@]}}" \\
          {fake}::test_sleeps; }}
        step_fakepass() {{ run_logged "$LOGS/fakepass.log" true; }}
        ERRORS_TEST={fake}::test_crashes
        main fakefail fakehang fakepertest fakepass errors
    """)
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp / "out"), "LOGS": str(tmp / "logs"),
           "TEST_TIMEOUT": "3"}
    result = subprocess.run(["bash", "-c", driver], capture_output=True, text=True, timeout=120, env=env)
    summary = (tmp / "out" / "summary.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| (\w+) \| ([^|]*) \|", summary, re.MULTILINE)}
    return result, summary, rows, tmp


def section(summary, step):
    match = re.search(rf"^## {step}: .*?(?=^## |\Z)", summary, re.MULTILINE | re.DOTALL)
    assert match, f"no section for {step} in\n{summary}"
    return match.group(0)


def test_a_failing_step_shows_its_counts_and_traceback(fake_run):
    result, summary, rows, _ = fake_run
    assert result.returncode != 0
    assert rows["fakefail"].strip() == "FAILED"
    assert re.search(r"^\| fakefail \| FAILED \| 1 failed \|", summary, re.MULTILINE)
    assert "assert 1 + 1 == 3" in section(summary, "fakefail") and "the fake failure" in section(summary, "fakefail")
    assert rows["fakepass"].strip() == "passed"


def test_a_step_past_its_budget_is_stopped_and_shows_where(fake_run):
    _, summary, rows, _ = fake_run
    assert rows["fakehang"].strip() == "TIMED OUT"
    seconds = int(re.search(r"^\| fakehang \|[^|]*\|[^|]*\| (\d+) s \| 4 s \|", summary, re.MULTILINE).group(1))
    assert seconds <= 4 + 2
    assert "time.sleep(60)" in section(summary, "fakehang") and "KeyboardInterrupt" in section(summary, "fakehang")


def test_a_test_past_the_per_test_timeout_is_dumped(fake_run):
    _, summary, rows, _ = fake_run
    # pytest-timeout ends the test's process; without it, pytest's
    # faulthandler_timeout dumps the stacks and the step's budget ends it.
    assert rows["fakepertest"].strip() in ("FAILED", "TIMED OUT")
    text = section(summary, "fakepertest")
    assert "Timeout" in text and "test_sleeps" in text


def test_a_crashed_case_is_named_and_run_again_under_cuda_gdb(fake_run):
    _, summary, rows, tmp = fake_run
    assert rows["errors"].strip() == "FAILED"
    text = section(summary, "errors")
    assert "Segmentation fault" in text
    gdb_log = (tmp / "logs" / "errors.cuda-gdb.log").read_text()
    assert re.search(r"cuda-gdb .*--args \S*python\S* -m pytest .*test_crashes", gdb_log)


def test_rerun_names_the_build_and_every_step_that_did_not_pass(fake_run):
    _, summary, _, tmp = fake_run
    assert "`bash benchmarks/gpu_check.sh build errors fakefail fakehang fakepertest`" in summary
    with tarfile.open(tmp / "out" / "logs.tar.gz") as tar:
        names = {os.path.basename(n) for n in tar.getnames()}
    assert {"fakefail.pytest.log", "fakehang.log", "errors.pytest.log", "plan.txt", "env.txt"} <= names
