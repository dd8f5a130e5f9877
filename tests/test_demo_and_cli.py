"""The demo (python -m torch_selfattn.demo) on a tiny configuration, its exit
status when the runs disagree, and the command line: info, bench, --version
and --help."""
import os
import re
import subprocess
import sys

import pytest
import torch

import torch_selfattn
import torch_selfattn.demo.__main__ as demo
from torch_selfattn._cli.main import main as cli_main
from torch_selfattn.demo.text import text_path

pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

TINY = ["--steps", "6", "--layers", "1", "--heads", "2", "--embed-dim", "32", "--block-size", "64",
        "--batch-size", "2", "--sample-chars", "20"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_demo_trains_agrees_and_writes_both_pictures(tmp_path, capsys):
    status = demo.main(TINY + ["--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "verdict         OK" in out and "agreement of the loss curves" in out
    assert "ratio" in out and "tokens/s" in out and "sampled from the torch-selfattn model" in out
    for name in ("losses.png", "attention_map.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG


@pytest.mark.slow
def test_demo_exits_1_when_the_curves_disagree(tmp_path, capsys, monkeypatch):
    # PyTorch's run replaced by attention that ignores the keys: its losses must drift away.
    monkeypatch.setattr(demo, "PYTORCH_SDPA", lambda q, k, v, **kwargs: v.expand(q.shape[:-1] + v.shape[-1:]))
    status = demo.main(TINY + ["--out-dir", str(tmp_path), "--tolerance", "1e-6"])
    out = capsys.readouterr().out
    assert status == 1
    assert "verdict         MISMATCH" in out and "done in" in out


@pytest.mark.parametrize("argv, message", [
    (["--embed-dim", "30", "--heads", "4"], "--embed-dim \\(30\\) must be a multiple of --heads \\(4\\)"),
    (["--steps", "0"], "must be positive"),
    (["--block-size", "16"], "--block-size must be at least"),
    (["--device", "meta"], "unsupported device 'meta'"),
    (["--device", "tpu"], "unknown device 'tpu'"),
])
def test_demo_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.parse_args(argv)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_demo_refuses_cuda_without_our_cuda_kernels():
    if "CUDA" in torch_selfattn_backends():
        pytest.skip("this build has CUDA kernels")
    with pytest.raises(ValueError, match="needs a CUDA device and torch-selfattn built with CUDA kernels"):
        demo.pick_device("cuda")


def torch_selfattn_backends():
    import torch_selfattn

    return torch_selfattn.build_info()["backends"]


@pytest.mark.slow
def test_info_prints_versions_isa_kernels_and_cuda_archs():
    result = subprocess.run([sys.executable, "-m", "torch_selfattn", "info"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"torch {torch.__version__}" in out
    assert f"CPU ISA in use   {torch.backends.cpu.get_cpu_capability()}" in out
    assert "kernels for    CPU" in out and "CUDA archs" in out
    assert f"built with     torch {torch_selfattn.build_info()['built_with_torch']}" in out


def test_bench_prints_a_row_per_case_with_the_speed_ratio(capsys):
    assert cli_main(["bench", "--seq-len", "32", "--dtype", "float32", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "speed-up" in lines[1]
    rows = lines[2:]
    assert [r.split()[:5] for r in rows] == [["B1", "H8", "L32", "E64", "float32"]] * 2
    assert rows[1].split()[5] == "causal"
    for row in rows:
        ratios = [float(field[:-1]) for field in row.split() if field.endswith("x")]
        assert len(ratios) == 2 and all(r > 0 for r in ratios)


def test_cli_needs_a_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main([])
    assert exit_info.value.code == 2


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"torch-selfattn {torch_selfattn.__version__}\n"


def test_bench_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        cli_main(["bench", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for default in ("(default: [256, 1024])", "(default: ['float32', 'bfloat16'])", "(default: 5)",
                    "(default: cpu)", f"(default: {torch.get_num_threads()})"):
        assert default in out


@pytest.mark.parametrize("device, message", [
    ("tpu", "unknown device 'tpu'"),
    ("meta", "unsupported device 'meta'"),
    ("cuda", "--device cuda needs a CUDA device and torch-selfattn built with CUDA kernels"),
])
def test_bench_on_an_unavailable_device_is_a_one_line_error(device, message):
    if device == "cuda" and "CUDA" in torch_selfattn_backends() and torch.cuda.is_available():
        pytest.skip("CUDA is available to this build")
    result = subprocess.run([sys.executable, "-m", "torch_selfattn", "bench", "--device", device],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("python -m torch_selfattn bench: error: ") and message in result.stderr


def test_demo_text_is_outside_the_import_package():
    package = os.path.dirname(os.path.abspath(torch_selfattn.__file__))
    path = text_path()
    assert os.path.getsize(path) > 300_000
    assert not os.path.abspath(path).startswith(package + os.sep)
