"""``data``: the data manifest (``pin`` and ``verify`` hashes), the embedded ``samples``
sets, ``coco-questions`` from COCO instances, an ``overlay`` contact sheet
(:mod:`vgutils.data`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vgutils.cli import COMMANDS
from vgutils.cli.options import add_data_root, add_dataset_layout


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("data", help=COMMANDS["data"].help)
    commands = parser.add_subparsers(dest="data_command", required=True)
    pin = commands.add_parser("pin", help="record unpinned hashes")
    add_data_root(pin)
    pin.add_argument("names", nargs="*", help="registry names to (re)pin; default: unpinned")
    pin.set_defaults(run=run_pin)
    verify = commands.add_parser("verify", help="check files against their hashes (1: bad/missing)")
    add_data_root(verify)
    verify.add_argument("names", nargs="*", help="registry names or prefixes (default: all)")
    verify.set_defaults(run=run_verify)
    samples = commands.add_parser("samples", help="build the embedded sample sets")
    add_data_root(samples)
    samples.set_defaults(run=run_samples)
    coco = commands.add_parser("coco-questions", help="questions from COCO instances")
    coco.add_argument("instances", type=Path, help="COCO instances_*.json")
    coco.add_argument("out", type=Path, help="output .jsonl")
    coco.add_argument("--min-area", type=float, default=0.02, help="min box / image area")
    coco.add_argument("--max-area", type=float, default=0.5, help="max box / image area")
    coco.set_defaults(run=run_coco_questions)
    overlay = commands.add_parser("overlay", help="contact sheet of images with boxes")
    add_data_root(overlay)
    overlay.add_argument("dataset")
    overlay.add_argument("out", type=Path, help="output .png")
    add_dataset_layout(overlay, bbox_format=False)
    overlay.set_defaults(run=run_overlay)
    return parser


def run_pin(args: argparse.Namespace) -> int:
    from vgutils.data.manifest import data_root, pin

    pinned = pin(data_root(args.data_root), args.names or None)
    print("\n".join(f"pinned {name}" for name in pinned) or "nothing to pin")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from vgutils.data.manifest import data_root, verify

    statuses = verify(data_root(args.data_root), args.names or None)
    for name, status in statuses:
        print(f"{status:10} {name}" if len(status) <= 10 else f"{name}: {status}")
    bad = sum(s.startswith("MISMATCH") for _, s in statuses)
    missing = sum(s == "missing" for _, s in statuses)
    if bad or missing:
        print(
            f"error: {bad} file(s) differ from their pinned hash, {missing} missing",
            file=sys.stderr,
        )
        return 1
    return 0


def run_samples(args: argparse.Namespace) -> int:
    from vgutils.data.manifest import data_root
    from vgutils.data.samples import build_sample_sets

    for name, path in build_sample_sets(data_root(args.data_root)).items():
        print(f"{name}: {path}")
    return 0


def run_coco_questions(args: argparse.Namespace) -> int:
    from vgutils.data.coco import write_coco_questions

    count = write_coco_questions(args.instances, args.out, args.min_area, args.max_area)
    print(f"wrote {count} question(s) to {args.out}")
    return 0


def run_overlay(args: argparse.Namespace) -> int:
    from vgutils.data import read_dataset, resolve_dataset
    from vgutils.data.overlay import contact_sheet

    dataset = resolve_dataset(args.dataset, image_root=args.image_root, root=args.data_root)
    samples, _ = read_dataset(dataset)
    print(contact_sheet(samples, args.out))
    return 0
