"""`python -m torch_selfattn`: the command line (torch_selfattn/_cli/)."""
import sys

from torch_selfattn._cli.main import main

sys.exit(main())
