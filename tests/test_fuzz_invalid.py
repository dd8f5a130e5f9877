"""Bad input never takes the process down: the invalid calls that
fuzz_invalid_calls.py draws (every class of bad argument, on top of drawn
valid cases) run in a child process, which must exit cleanly (no signal, no
abort) with every call having raised a message that names the argument."""
import os
import re
import subprocess
import sys

import pytest

import torch_selfattn
from helpers import fuzz_invalid_calls
from helpers.fuzz_cases import SOAK_EXAMPLES

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.slow
def test_invalid_calls_raise_and_the_process_survives(device):
    # The child imports the torch_selfattn this process imported.
    package_root = os.path.dirname(os.path.dirname(torch_selfattn.__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    # Run as a module from tests/, so that it imports the helpers package.
    result = subprocess.run([sys.executable, "-W", "ignore", "-m", "helpers.fuzz_invalid_calls", "--device", device],
                            capture_output=True, text=True, timeout=1800, cwd=TESTS, env=env)
    output = result.stdout + result.stderr[-6000:]
    assert result.returncode >= 0, f"the child died of signal {-result.returncode}:\n{output}"
    assert result.returncode == 0, output
    summary = re.search(r"invalid calls: (\d+), classes: (\d+) of (\d+)", result.stdout)
    assert summary, output
    calls, classes, known = map(int, summary.groups())
    assert calls == (SOAK_EXAMPLES or fuzz_invalid_calls.CI_EXAMPLES), output
    assert classes == known == len(fuzz_invalid_calls.SPOILERS), output
