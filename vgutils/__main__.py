"""Command line: ``python -m vgutils COMMAND``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vgutils.report import figures_report


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run one command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m vgutils", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    report = commands.add_parser("report", help="list the figures a run produced")
    report.add_argument("folder", type=Path, help="figures/<profile>")
    report.add_argument("--notebooks", type=int, default=0, help="notebooks executed")

    args = parser.parse_args(argv)
    if args.command == "report":
        print(figures_report(args.folder, args.notebooks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
