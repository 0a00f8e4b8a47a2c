"""Command line: ``python -m vgutils COMMAND`` (``--help`` on any command).

Every failure is one line ``error: ...`` on stderr naming the file (and line or field) or
the bad value with the valid choices. Exit status: 0 success, 1 a data or results problem
(missing, malformed or changed file; a run folder in use), 2 a usage problem (bad
argument value, unknown name, a folder holding another run). ``--debug`` (anywhere on the
line) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
from collections.abc import Sequence
from typing import NamedTuple, NoReturn

from vgutils.errors import VgError, did_you_mean


class Command(NamedTuple):
    """One command: the module with its ``add_parser`` and ``run``, its line in ``--help``."""

    module: str
    help: str


# in the order of --help; a command's module is imported only when the command is given
COMMANDS: dict[str, Command] = {
    "report": Command("vgutils.cli.report", "list the figures a run produced"),
    "validate": Command("vgutils.cli.validate", "check every row of a dataset"),
    "extract": Command("vgutils.cli.extract", "per-layer grounding metrics of a model"),
    "vqa": Command("vgutils.cli.vqa", "VQA accuracy, optionally with VGRefine"),
    "teach": Command("vgutils.cli.teach", "the teaching model: train, data, evaluate"),
    "convert": Command(
        "vgutils.cli.convert",
        "original-format LLaVA / InternVL-Chat (HuatuoGPT-Vision-7B, LLaVA-Med, "
        "LLaVA-Tri, MedRegA) -> transformers",
    ),
    "jobs": Command(
        "vgutils.cli.jobs",
        "run a profile's extraction jobs and benchmark runs (cached; under any launcher)",
    ),
    "merge": Command("vgutils.cli.merge", "merge a run its processes left unmerged"),
    "data": Command("vgutils.cli.data", "manifest, hashes and the sample sets"),
    "numbers": Command(
        "vgutils.cli.numbers", "every number README quotes, from a run's files; README's blocks"
    ),
}


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``error: ...`` line (exit status 2); a mistyped
    subcommand gets the closest one (``; did you mean 'extract'?``)."""

    def error(self, message: str) -> NoReturn:
        message = re.sub(r"^argument ([^:]+): (?=\1 )", "", message)  # said once
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())}\n")

    def _check_value(self, action: argparse.Action, value: object) -> None:
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as err:
            hint = ""
            if isinstance(action, argparse._SubParsersAction):
                hint = did_you_mean(str(value), action.choices)
            if not hint:
                raise
            raise argparse.ArgumentError(action, err.message + hint) from None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``python -m vgutils`` argument parser. Given ``argv``, only the command it names
    gets its options (its module imported); the others are listed with their help."""
    parser = Parser(
        prog="python -m vgutils",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="tracebacks instead of one line")
    subparsers = parser.add_subparsers(dest="command", required=True)
    # the top level has no option taking a value: its first word is the command
    named = None if argv is None else next((a for a in argv if not a.startswith("-")), None)
    for name, command in COMMANDS.items():
        if argv is None or name == named:
            importlib.import_module(command.module).add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=command.help)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run one command; returns the exit status (0 ok, 1 data, 2 usage).
    Failures are one ``error: ...`` line; ``--debug`` raises them with their traceback."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        args = build_parser(argv).parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed in one line
        return done.code if isinstance(done.code, int) else 2
    try:
        _load_plugins()
        return args.run(args)
    except Exception as err:
        if debug:
            raise
        code, message = _one_line(err)
        print(f"error: {message}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        return 130


def _load_plugins() -> None:
    """Load the plug-ins, so every command knows their virtual profiles (the rehearsal's
    ``paper-rehearsal``), and turn on again those that a context inherited from a parent
    process names (``rehearsal:<scale>``: its stand-ins for Hub ids,
    :func:`vgutils.rehearsal.resume`)."""
    from vgutils import context, rehearsal

    if any(p.startswith("rehearsal:") for p in context.current().plugins):
        rehearsal.resume()


def _one_line(err: Exception) -> tuple[int, str]:
    """The exit status and the one-line message of an exception."""
    if isinstance(err, VgError):
        code, text = err.exit_code, str(err)
    elif isinstance(err, OSError) and err.filename is not None:
        code, text = 1, f"{err.filename}: {err.strerror or err}"
    elif isinstance(err, OSError):
        code, text = 1, str(err)
    else:  # not foreseen: say so, keep it one line
        code = 1
        text = f"{type(err).__name__}: {err} (rerun with --debug for the traceback)"
    return code, " ".join(text.split())
