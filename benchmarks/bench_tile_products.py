"""The CPU tile products alone: MKL's sgemm (through libtorch_cpu) against our
AVX2 products (csrc/cpu/gemm_avx2.cpp), one thread, on the shapes the
attention kernels give them, with the core's FMA peak measured in the same
run. It builds benchmarks/tile_products.cpp with g++ and runs it.

    python benchmarks/bench_tile_products.py
    python benchmarks/bench_tile_products.py --markdown benchmarks/results/tile_products.md
"""
import argparse
import os
import subprocess
import sys
import tempfile

import torch

import torch_selfattn
from torch_selfattn._cli.info import cpu_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    if torch_selfattn.build_info()["tile_gemm"] != "avx2":
        print("this CPU runs other tile products (build_info()['tile_gemm']); nothing to compare", file=sys.stderr)
        return 1
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    sources = [os.path.join(ROOT, "benchmarks/tile_products.cpp"), os.path.join(ROOT, "csrc/cpu/gemm_avx2.cpp"),
               os.path.join(ROOT, "csrc/cpu/softmax_avx2.cpp")]
    with tempfile.TemporaryDirectory() as tmp:
        program = os.path.join(tmp, "tile_products")
        subprocess.run(["g++", "-O3", "-std=c++17", "-I", os.path.join(ROOT, "csrc"), *sources, "-o", program,
                        f"-L{torch_lib}", "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{torch_lib}"], check=True)
        table = subprocess.run([program], check=True, capture_output=True, text=True).stdout
    lines = ["# CPU tile products: MKL against our AVX2 products", "",
             f"Machine: {cpu_model()}, one thread; torch {torch.__version__} (its MKL). Best of 5 timings, operands "
             "in cache, as in the kernels' loops.", "", table]
    print("\n".join(lines))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
