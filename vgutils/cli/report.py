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
    parser.add_argument(
        "--runs",
        action="store_true",
        help="instead: every run under results/<profile>/ with the protocol and VGRefine "
        "heads it recorded, checked against the profile (exit 1 on a mismatch)",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from vgutils.paths import BUILD, check_profile, figures_dir
    from vgutils.report import executed_notebooks, figures_report

    check_profile(args.profile)
    if args.runs:
        return _runs(args.profile)
    folder = args.folder or figures_dir(args.profile)
    notebooks = executed_notebooks(args.build_dir or BUILD, args.profile)
    print(figures_report(folder, len(notebooks)))
    return 0


def _runs(profile: str) -> int:
    from vgutils.report import check_runs

    records, problems = check_runs(profile)
    for r in records:
        heads = f" heads {r['heads_source']} {len(r['heads'])}" if r["heads"] else ""
        layers = f" layers {r['layers']}" if r["layers"] else ""
        print(f"{r['folder']}: {r['status']}, protocol {r['protocol']}{heads}{layers}")
    for line in problems:
        print(f"problem: {line}")
    print(f"{len(records)} run(s), {len(problems)} problem(s)")
    return 1 if problems else 0
