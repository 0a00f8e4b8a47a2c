"""``numbers``: every number README quotes, from a run's files (:mod:`vgutils.numbers`)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from vgutils.cli import COMMANDS


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("numbers", help=COMMANDS["numbers"].help)
    parser.add_argument("--profile", default="default")
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--readme",
        action="store_true",
        help="rewrite README's generated blocks from the numbers file (default profile: "
        "and copy it to docs/numbers/default.json, the record the tests compare with)",
    )
    what.add_argument(
        "--check", action="store_true", help="exit 1 when README's blocks differ from the file"
    )
    parser.add_argument(
        "--file",
        type=Path,
        help="the numbers file for --readme / --check (default: figures/<profile>/numbers.json)",
    )
    parser.add_argument(
        "--no-snippet", action="store_true", help="collect without running README's snippet"
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from vgutils import numbers
    from vgutils.paths import check_profile, figures_dir

    check_profile(args.profile)
    path = args.file or figures_dir(args.profile) / numbers.NUMBERS_FILE
    if not (args.readme or args.check):
        document = numbers.collect(args.profile, snippet=False if args.no_snippet else None)
        print(f"numbers: {len(document['numbers'])} values -> {path}")
        if args.profile == "default":
            stale = numbers.differences(numbers.README.read_text(), document)
            if stale:
                names = [line.split("'")[1] for line in stale]
                print(
                    f"numbers: README's block(s) {', '.join(names)} differ from this run "
                    "(python -m vgutils numbers --check shows how; --readme rewrites them)"
                )
        return 0
    document = numbers.load(path)
    text = numbers.README.read_text()
    if args.check:
        problems = numbers.differences(text, document)
        for line in problems:
            print(line)
        print(f"README: {'differs from' if problems else 'agrees with'} {path}")
        return 1 if problems else 0
    numbers.README.write_text(numbers.rewrite(text, numbers.render_blocks(document)))
    print(f"README: blocks rewritten from {path}")
    if args.profile == "default" and path.resolve() != numbers.COMMITTED.resolve():
        numbers.COMMITTED.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, numbers.COMMITTED)
        print(f"copied to {numbers.COMMITTED}")
    return 0
