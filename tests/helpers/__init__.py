"""Helpers the test files share: the float64 yardstick (reference.py), its
form for the options beyond PyTorch's SDPA (feature_reference.py), CUDA
inputs and skip conditions (cuda.py), the fuzzers' cases (fuzz_cases.py,
fuzz_invalid_calls.py), the ring-attention ranks (ring_ranks.py) and small
models (models.py). Importable as ``helpers.*`` through pytest's
``pythonpath`` setting (pyproject.toml); no test file imports another."""
