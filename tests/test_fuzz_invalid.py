"""Bad input never takes the process down: the invalid calls that
fuzz_invalid_calls.py draws (every class of bad argument, on top of drawn
valid cases) run in a child process, which must exit cleanly (no signal, no
abort) with every call having raised a message that names the argument."""
import os
import re
import subprocess
import sys

import pytest

import fuzz_invalid_calls
import torch_selfattn
from fuzz_cases import SOAK_EXAMPLES
from test_cuda import cuda_kernels_missing

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(cuda_kernels_missing() is not None,
                                                  reason=str(cuda_kernels_missing()))),
])
def test_invalid_calls_raise_and_the_process_survives(device):
    script = os.path.join(TESTS, "fuzz_invalid_calls.py")
    # The child imports the torch_selfattn this process imported.
    package_root = os.path.dirname(os.path.dirname(torch_selfattn.__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-W", "ignore", script, "--device", device], capture_output=True,
                            text=True, timeout=1800, cwd=TESTS, env=env)
    output = result.stdout + result.stderr[-6000:]
    assert result.returncode >= 0, f"the child died of signal {-result.returncode}:\n{output}"
    assert result.returncode == 0, output
    summary = re.search(r"invalid calls: (\d+), classes: (\d+) of (\d+)", result.stdout)
    assert summary, output
    calls, classes, known = map(int, summary.groups())
    assert calls == (SOAK_EXAMPLES or fuzz_invalid_calls.CI_EXAMPLES), output
    assert classes == known == len(fuzz_invalid_calls.SPOILERS), output
