"""``python -m vgutils``: the command line (:mod:`vgutils.cli`)."""

import sys

from vgutils.cli import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
