"""The internals of the command line, `python -m torch_selfattn ...`: not part
of the package's API."""
