"""`python -m trl_attention ...`: the `trl-attention` command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
