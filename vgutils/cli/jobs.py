"""``jobs``: run a profile's extraction jobs, cached (:func:`vgutils.jobs.ensure_results`);
``--rehearsal`` runs them offline on stand-ins (:mod:`vgutils.rehearsal`)."""

from __future__ import annotations

import argparse

from vgutils.cli import COMMANDS
from vgutils.errors import UsageError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("jobs", help=COMMANDS["jobs"].help)
    parser.add_argument(
        "profile",
        help="smoke, default, paper (notebooks/params/*.yaml), or a rehearsal such as "
        "paper-rehearsal",
    )
    parser.add_argument(
        "--rehearsal",
        nargs="?",
        const="small",
        choices=("small", "full"),
        help="rehearse the profile offline: its models as random stand-ins with the real "
        "image geometry (small: few narrow layers, CPU; full: real sizes, GPU), synthetic "
        "data in the real layout; results under results/<profile>-rehearsal[-full]/",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from vgutils.jobs import ensure_results

    profile = args.profile
    if args.rehearsal:  # paper -> paper-rehearsal: the same YAML, offline stand-ins
        from vgutils.rehearsal import SUFFIXES, split_profile

        if split_profile(profile)[1]:
            raise UsageError(f"jobs {profile} --rehearsal: {profile!r} is a rehearsal already")
        suffix = {scale: suffix for suffix, scale in SUFFIXES.items()}[args.rehearsal]
        profile += suffix
    ensure_results(profile)
    return 0
