"""Shipping: the sdist carries every source and honest metadata, the import
refuses a torch other than the one the library was built against, setup.py
says what it builds (and warns when torch has CUDA but nvcc is missing), and
release builds carry no debug info."""
import email.parser
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch

import torch_selfattn
from torch_selfattn import _build_record

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- the torch version check ----------------------------------------------------------------------------------

def test_build_info_reports_the_torch_it_was_built_against():
    assert torch_selfattn.build_info()["built_with_torch"] == _build_record.read()["torch_version"]
    # This process imported the package, so the versions agree up to the local label.
    assert torch_selfattn.build_info()["built_with_torch"].split("+")[0] == torch.__version__.split("+")[0]


def test_import_with_another_torch_raises_import_error_naming_both_versions():
    built = _build_record.read()["torch_version"]
    result = subprocess.run(
        [sys.executable, "-c", "import torch; torch.__version__ = '2.99.0+cpu'; import torch_selfattn"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError: torch_selfattn was built against torch")
    assert built in last_line and "torch 2.99.0+cpu is installed" in last_line
    assert "pip install --no-build-isolation" in last_line and "build_ext --inplace" in last_line


@pytest.mark.parametrize("installed, ok", [("2.13.0+cu128", True), ("2.13.0", True), ("2.13.1+cpu", False),
                                           ("2.12.0+cpu", False), ("2.14.0.dev20260101+cpu", False)])
def test_version_check_ignores_only_the_local_label(installed, ok):
    record = {"torch_version": "2.13.0+cpu"}
    if ok:
        _build_record.check_torch_version(record, installed)
    else:
        message = f"built against torch 2.13.0+cpu, but torch {installed} is installed"
        with pytest.raises(ImportError, match=re.escape(message)):
            _build_record.check_torch_version(record, installed)


def test_cuda_archs_come_from_the_recorded_nvcc_flags():
    flags = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a"]
    assert _build_record.cuda_archs({"cuda_arch_flags": flags}) == ["sm_80", "sm_90a"]
    assert _build_record.cuda_archs({"cuda_arch_flags": []}) == []


# --- setup.py: what it builds -----------------------------------------------------------------------------------

@pytest.fixture
def setup_module(monkeypatch):
    """setup.py as a module (its setup() runs only as __main__), in a
    clean environment."""
    for name in ("TORCH_SELFATTN_CPU_ONLY", "TORCH_SELFATTN_REQUIRE_CUDA", "TORCH_SELFATTN_CUTLASS_INCLUDE"):
        monkeypatch.delenv(name, raising=False)
    spec = importlib.util.spec_from_file_location("torch_selfattn_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_setup_warns_loudly_when_torch_has_cuda_but_nvcc_is_missing(setup_module, monkeypatch, capsys):
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(setup_module, "find_nvcc", lambda: None)
    use_cuda, why = setup_module.cuda_plan()
    assert not use_cuda and "has CUDA 12.8, but nvcc was not found" in why
    err = capsys.readouterr().err
    assert "WARNING" in err and "CPU kernels only" in err and "TORCH_SELFATTN_REQUIRE_CUDA=1" in err

    monkeypatch.setenv("TORCH_SELFATTN_REQUIRE_CUDA", "1")
    with pytest.raises(SystemExit, match="TORCH_SELFATTN_REQUIRE_CUDA=1, but the CUDA kernels cannot be built: "
                                         ".*nvcc was not found"):
        setup_module.cuda_plan()


def test_setup_builds_cuda_when_torch_has_cuda_and_nvcc_is_found(setup_module, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(setup_module, "find_nvcc", lambda: "/opt/cuda/bin/nvcc")
    assert setup_module.cuda_plan() == (True, f"torch {torch.__version__} has CUDA 12.8; nvcc is /opt/cuda/bin/nvcc")
    monkeypatch.setenv("TORCH_SELFATTN_CPU_ONLY", "1")
    assert setup_module.cuda_plan() == (False, "TORCH_SELFATTN_CPU_ONLY=1")


def test_setup_require_cuda_fails_with_a_torch_without_cuda(setup_module, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    assert setup_module.cuda_plan() == (False, f"torch {torch.__version__} was built without CUDA")
    monkeypatch.setenv("TORCH_SELFATTN_REQUIRE_CUDA", "1")
    with pytest.raises(SystemExit, match="was built without CUDA"):
        setup_module.cuda_plan()


def test_cuda_build_without_cutlass_headers_says_what_to_install(setup_module, monkeypatch, tmp_path):
    """The Hopper kernels are built on CuTe: a CUDA build that finds no
    CUTLASS headers stops with the pinned pip command."""
    monkeypatch.setenv("TORCH_SELFATTN_CUTLASS_INCLUDE", str(tmp_path))
    with pytest.raises(SystemExit, match=re.escape("pip install nvidia-cutlass==4.2.0.0")):
        setup_module.cutlass_include_dir()
    (tmp_path / "cute").mkdir()
    (tmp_path / "cute" / "tensor.hpp").write_text("")
    assert setup_module.cutlass_include_dir() == str(tmp_path)


def test_cpu_only_build_never_looks_for_cutlass(setup_module, monkeypatch):
    def fail():
        raise AssertionError("a CPU-only build looked for the CUTLASS headers")

    monkeypatch.setattr(setup_module, "cutlass_include_dir", fail)
    ext = setup_module.extension(False, [], debug=False)
    assert not any(source.endswith(".cu") for source in ext.sources)


def test_cutlass_pin_matches_ci_and_the_docs():
    """setup.py's pin is the one .ci/run installs and README.md gives."""
    with open(os.path.join(ROOT, "setup.py")) as f:
        pin = re.search(r'CUTLASS_REQUIREMENT = "([^"]+)"', f.read()).group(1)
    for path in (".ci/run", "README.md", "docs/cuda.md"):
        with open(os.path.join(ROOT, path)) as f:
            assert pin in f.read(), f"{path} does not name {pin}"


def test_release_build_carries_no_debug_info():
    if _build_record.read().get("debug_info", True):
        pytest.skip("this library was built with TORCH_SELFATTN_DEBUG=1")
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is not installed")
    sections = subprocess.run(["readelf", "-S", "-W", torch_selfattn.build_info()["library"]],
                              capture_output=True, text=True, check=True).stdout
    assert ".text" in sections and ".debug_info" not in sections


# --- the sdist ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    pytest.importorskip("build", reason="the sdist check needs the `build` package (pip install build)")
    out = tmp_path_factory.mktemp("sdist")
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), ROOT],
                   check=True, capture_output=True, timeout=600)
    (path,) = out.glob("torch_selfattn-*.tar.gz")
    with tarfile.open(path) as tar:
        names = tar.getnames()
        top = names[0].split("/")[0]
        pkg_info = tar.extractfile(f"{top}/PKG-INFO").read().decode()
    return {name.split("/", 1)[1] for name in names if "/" in name}, email.parser.Parser().parsestr(pkg_info)


def test_sdist_carries_every_file_under_csrc(sdist):
    files, _ = sdist
    csrc = {os.path.relpath(os.path.join(d, f), ROOT) for d, _, fs in os.walk(os.path.join(ROOT, "csrc")) for f in fs}
    assert len(csrc) > 50
    assert csrc - files == set()


def test_sdist_carries_what_the_build_tests_and_demo_need_and_no_build_output(sdist):
    files, _ = sdist
    needed = {"setup.py", "pyproject.toml", "LICENSE", "README.md", "CMakeLists.txt",
              "cmake/torch_selfattnConfig.cmake.in", "data/kjv_genesis_exodus.txt", "data/README.md",
              "tests/conftest.py", "tests/test_packaging.py", "tests/cpp/attention_test.cpp",
              "tests/cpp/CMakeLists.txt", "torch_selfattn/__init__.py", "torch_selfattn/_cli/main.py"}
    assert needed - files == set()
    assert not [f for f in files if f.endswith((".so", ".o", ".pyc")) or f.endswith("_build_record.json")]


def test_sdist_metadata(sdist):
    _, meta = sdist
    assert meta["Name"] == "torch-selfattn" and meta["Version"] == torch_selfattn.__version__
    assert meta["License-Expression"] == "BSD-3-Clause" and meta["Requires-Python"] == ">=3.10"
    assert meta["Summary"] and meta["Author"] and "# torch-selfattn" in meta.get_payload()
    requires = meta.get_all("Requires-Dist")
    assert "torch>=2.13" in requires and any("extra == \"test\"" in r for r in requires)
    assert "Operating System :: POSIX :: Linux" in meta.get_all("Classifier")


# --- torch.export: loading needs the ops registered --------------------------------------------------------------

EXPORT = """
import sys, torch
import torch_selfattn

class Attention(torch.nn.Module):
    def forward(self, q, k, v):
        return torch_selfattn.scaled_dot_product_attention(q, k, v, is_causal=True)

q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
torch.export.save(torch.export.export(Attention(), (q, k, v)), sys.argv[1])
torch.save((q, k, v), sys.argv[2])
"""

LOAD = """
import sys, torch
if sys.argv[3] == "import":
    import torch_selfattn
program = torch.export.load(sys.argv[1])
q, k, v = torch.load(sys.argv[2])
expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
torch.testing.assert_close(program.module()(q, k, v), expected)
print("loaded and ran")
"""


def test_exported_program_loads_in_a_fresh_process_only_after_import_torch_selfattn(tmp_path):
    program, inputs = str(tmp_path / "attention.pt2"), str(tmp_path / "inputs.pt")

    def python(code, *args):
        return subprocess.run([sys.executable, "-c", code, program, inputs, *args], capture_output=True, text=True,
                              timeout=300)

    exported = python(EXPORT)
    assert exported.returncode == 0, exported.stderr
    without = python(LOAD, "no-import")
    assert without.returncode != 0 and "SerializeError" in without.stderr and "selfattn" in without.stderr
    with_import = python(LOAD, "import")
    assert with_import.returncode == 0 and "loaded and ran" in with_import.stdout, with_import.stderr
