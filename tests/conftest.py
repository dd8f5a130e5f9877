"""Fixtures shared by the test files. The helpers they import live in
tests/helpers/, importable through pytest's ``pythonpath`` setting
(pyproject.toml)."""
import pytest

from helpers.cuda import DEVICES


@pytest.fixture(scope="module", params=DEVICES)
def device(request):
    """The device a test runs on: "cpu", then "cuda", which skips with the
    reason where there is no GPU or the library lacks its CUDA kernels.
    Module-scoped, so that hypothesis' tests may take it too."""
    return request.param
