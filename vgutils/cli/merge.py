"""``merge``: merge a run whose processes all finished but that nobody merged
(:func:`vgutils.results.merge_run`), or combine the ``shard-I-of-N`` folders an older
version wrote (:func:`vgutils.results.merge_runs`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vgutils.cli import COMMANDS
from vgutils.errors import UsageError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("merge", help=COMMANDS["merge"].help)
    parser.add_argument("folders", nargs="+", type=Path, help="run folder(s)")
    parser.add_argument("--out", type=Path, help="default: the single folder given")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from vgutils.results import merge_runs

    folders = args.folders
    out = args.out
    if len(folders) == 1 and out is None:
        out = folders[0]
        folders = sorted(p for p in folders[0].glob("shard-*-of-*") if p.is_dir())
        if not folders and (out / "run.json").exists():  # one folder written by ranks
            from vgutils.cli.jobs import describe
            from vgutils.results import merge_run

            state = merge_run(out)
            print(f"{out}: {describe(state)}")
            return 0 if state.status == "complete" else 1
        if not folders:
            raise UsageError(f"{out} has no shard-*-of-* folders to merge")
    if out is None:
        raise UsageError("give --out when merging several folders")
    print(merge_runs(folders, out))
    return 0
