"""``extract``: per-layer grounding metrics of a model (:func:`vgutils.runner.extract`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vgutils import checks
from vgutils.cli import COMMANDS
from vgutils.cli.options import (
    _arg,
    _processor_kwargs,
    _protocol_settings,
    _shard,
    add_dataset_layout,
    add_device_dtype,
    add_limit,
    add_model,
    add_protocol,
    add_revision,
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("extract", help=COMMANDS["extract"].help)
    add_model(parser, help="Hub id, folder or tiny:<family>")
    parser.add_argument("--dataset", required=True, help="manifest name or .jsonl")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--strategy", choices=("last", "question", "all"), default="last")
    add_dataset_layout(parser)
    add_limit(parser, help="first N")
    parser.add_argument(
        "--shard",
        type=_shard,
        help="I/N: compute process I's share of the images (default: the launcher's "
        "RANK/WORLD_SIZE or SLURM variables); the last process to finish merges",
    )
    parser.add_argument(
        "--batch-size",
        type=_arg(checks.positive_int, "--batch-size"),
        default=8,
        help="question suffixes at once",
    )
    parser.add_argument(
        "--image-batch",
        type=_arg(checks.positive_int, "--image-batch"),
        default=1,
        help="images per prefix forward (GPU: try 8)",
    )
    parser.add_argument(
        "--loader-threads",
        type=_arg(checks.non_negative_int, "--loader-threads"),
        help="threads preparing the next images during a forward (default: 1 on GPU, 0 on CPU)",
    )
    parser.add_argument("--heads", action="store_true", help="also per-head metrics")
    parser.add_argument("--save-maps", action="store_true", help="keep per-sample maps")
    add_device_dtype(parser)
    add_revision(parser)
    parser.add_argument(
        "--retry-errors", action="store_true", help="compute the skipped samples again"
    )
    add_protocol(parser)
    parser.add_argument(
        "--box-mapping",
        choices=("processor", "scaled"),
        help="boxes onto the token grid: processor geometry, or the authors' scaling "
        "(default: the protocol's)",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from vgutils import launch
    from vgutils.runner import ExtractOptions, extract

    started = launch.start(launch.detect(shard=args.shard))
    options = ExtractOptions(
        model=args.model,
        dataset=args.dataset,
        strategy=args.strategy,
        image_root=str(args.image_root) if args.image_root else None,
        bbox_format=args.bbox_format,
        limit=args.limit,
        heads=args.heads,
        save_maps=args.save_maps,
        dtype=args.dtype,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        protocol=args.protocol,
        box_mapping=args.box_mapping,
        processor_kwargs=_processor_kwargs(args),
        **_protocol_settings(args),
    )
    summary = extract(
        options,
        args.out,
        batch_size=args.batch_size,
        image_batch=args.image_batch,
        loader_threads=args.loader_threads,
        device=args.device,
        retry_errors=args.retry_errors,
        shard=started.shard,
    )
    rate = summary.computed / summary.seconds if summary.seconds else 0.0
    if not summary.complete:
        print(
            f"{summary.out}: {started.describe()}: {summary.computed} computed now in "
            f"{summary.seconds:.1f} s ({rate:.2f} q/s); {summary.missing} samples of other "
            "processes missing (the last one to finish merges)"
        )
        return 0
    print(
        f"{summary.out}: {summary.done} done, {summary.skipped} skipped, "
        f"{summary.computed} computed now in {summary.seconds:.1f} s ({rate:.2f} q/s)"
        + ("" if summary.computed else " (results already complete: nothing recomputed)")
    )
    return 0
