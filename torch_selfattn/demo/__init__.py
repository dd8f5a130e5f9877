"""The demo, `python -m torch_selfattn.demo`: a character-level GPT trained on
torch-selfattn and on PyTorch's SDPA side by side (see __main__.py)."""
