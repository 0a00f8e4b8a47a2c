"""``validate``: check every row of a dataset (exit 1 when a row is bad)."""

from __future__ import annotations

import argparse

from vgutils.cli import COMMANDS
from vgutils.cli.options import add_data_root, add_dataset_layout


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("validate", help=COMMANDS["validate"].help)
    add_data_root(parser)
    parser.add_argument("dataset", help="manifest name or .jsonl")
    add_dataset_layout(parser)
    parser.add_argument(
        "--box-overhang",
        choices=("drop", "clamp"),
        default="drop",
        help="a box overhanging the image: drop (rows over 1 px are bad; default) or clamp "
        "(kept, clamped: the authors' protocol)",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from vgutils.data import read_dataset, resolve_dataset

    dataset = resolve_dataset(
        args.dataset,
        image_root=args.image_root,
        bbox_format=args.bbox_format,
        root=args.data_root,
    )
    samples, problems = read_dataset(dataset, box_overhang=args.box_overhang)
    for problem in problems:
        print(problem)
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    print(f"{dataset.jsonl}: {len(samples)} good row(s), {errors} bad, {warnings} warning(s)")
    return 1 if errors else 0
