"""``report``: list the figures a run produced."""

from __future__ import annotations

import argparse
from pathlib import Path

from vgutils.cli import COMMANDS


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("report", help=COMMANDS["report"].help)
    parser.add_argument("folder", type=Path, nargs="?", help="default: figures/<profile>")
    parser.add_argument("--profile", default="default", help="its notebooks are counted")
    parser.add_argument("--build-dir", type=Path, help="default: build/ (executed notebooks)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from vgutils.paths import BUILD, check_profile, figures_dir
    from vgutils.report import executed_notebooks, figures_report

    check_profile(args.profile)
    folder = args.folder or figures_dir(args.profile)
    notebooks = executed_notebooks(args.build_dir or BUILD, args.profile)
    print(figures_report(folder, len(notebooks)))
    return 0
