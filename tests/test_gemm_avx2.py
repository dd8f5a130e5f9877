"""The AVX2 tile products (csrc/cpu/gemm_avx2.cpp) on their own: the check
program tests/cpp/gemm_avx2_check.cpp is compiled with gemm_avx2.cpp and
softmax_avx2.cpp (whose CPU check it shares), no torch headers, and run.
The attention tests cover the products through the kernels; this covers the
shapes they rarely reach (k in the thousands, columns past one packed
block) and the header's promise that an element's bits do not depend on
the product's extent."""
import os
import shutil
import subprocess

import pytest

import torch_selfattn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the check program")
@pytest.mark.skipif(torch_selfattn.build_info()["tile_gemm"] != "avx2",
                    reason="this CPU runs other tile products (build_info()['tile_gemm'])")
def test_avx2_products_match_a_double_sum_in_every_layout(tmp_path):
    program = tmp_path / "gemm_avx2_check"
    sources = [os.path.join(ROOT, path) for path in
               ("tests/cpp/gemm_avx2_check.cpp", "csrc/cpu/gemm_avx2.cpp", "csrc/cpu/softmax_avx2.cpp")]
    subprocess.run(["g++", "-O2", "-std=c++17", "-I", os.path.join(ROOT, "csrc"), *sources, "-o", str(program)],
                   check=True, capture_output=True, text=True, timeout=300)
    result = subprocess.run([str(program)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 failures" in result.stdout and "SKIP" not in result.stdout
