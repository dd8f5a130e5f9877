"""Makes the shared helpers in tests/reference.py importable as
``from reference import ...`` whatever directory pytest is started from."""
import os
import sys

_TESTS = os.path.dirname(os.path.abspath(__file__))
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)
