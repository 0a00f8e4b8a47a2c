"""``vqa``: VQA accuracy, optionally with VGRefine: free-text VQA on a dataset
(:func:`vgutils.vqa.run_vqa`) or a multiple-choice benchmark (``--benchmark``,
:func:`vgutils.mc_eval.run_mc`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vgutils.cli import COMMANDS
from vgutils.cli.options import (
    _layers,
    _processor_kwargs,
    _shard,
    add_data_root,
    add_dataset_layout,
    add_device_dtype,
    add_limit,
    add_model,
    add_protocol,
    add_refine,
)
from vgutils.errors import UsageError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("vqa", help=COMMANDS["vqa"].help)
    add_model(parser)
    parser.add_argument("--dataset", help="free-text VQA: manifest name or .jsonl")
    parser.add_argument("--out", required=True, type=Path)
    add_refine(parser)
    add_protocol(parser)
    add_limit(parser)
    add_dataset_layout(parser)
    add_device_dtype(parser, documented=False)
    parser.add_argument(
        "--shard",
        type=_shard,
        help="I/N: answer process I's share of the images (default: the launcher's)",
    )
    group = parser.add_argument_group("multiple-choice benchmarks (instead of --dataset)")
    group.add_argument(
        "--benchmark", help="manifest benchmark (medical-mc, teach-mc) or its json / folder"
    )
    group.add_argument("--datasets", nargs="+", help="e.g. VQA-RAD_test SLAKE_test")
    group.add_argument("--subsets", nargs="+", help="keep only these subsets")
    group.add_argument(
        "--decoding",
        choices=("greedy-1", "huatuo-sample"),
        default="greedy-1",
        help="greedy-1: greedy, one new token (the authors' VGRefine runs); huatuo-sample: "
        "HuatuoGPT-Vision's evaluation (T 0.2, repetition penalty 1.2, <= 256 tokens)",
    )
    group.add_argument("--seed", type=int, default=42, help="sampling seed (+ record index)")
    group.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    add_data_root(group)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from vgutils import launch

    started = launch.start(launch.detect(shard=args.shard))
    if args.benchmark:
        return _run_benchmark(args, started)
    if not args.dataset:
        raise UsageError("vqa needs --dataset (free-text VQA) or --benchmark (multiple choice)")
    from vgutils.vqa import VQAOptions, run_vqa

    options = VQAOptions(
        model=args.model,
        dataset=args.dataset,
        refine=args.refine,
        heads_from=str(args.heads_from) if args.heads_from else None,
        top_k=args.top_k,
        layers=_layers(args.layers),
        percentile=args.percentile,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        image_root=str(args.image_root) if args.image_root else None,
        bbox_format=args.bbox_format,
        dtype=args.dtype,
        protocol=args.protocol,
        denominator=args.denominator,
        include_generated=args.include_generated,
        processor_kwargs=_processor_kwargs(args),
    )
    answers, table, seconds = run_vqa(options, args.out, device=args.device, shard=started.shard)
    if table is None:
        return _partial(args.out, started, len(answers), seconds)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"{args.out}: answers.parquet, accuracy.json ({seconds:.1f} s)")
    return 0


def _partial(out, started, answered: int, seconds: float) -> int:
    print(
        f"{out}: {started.describe()}: done ({answered} answers so far, {seconds:.1f} s); "
        "the last process to finish merges the run and writes accuracy.json"
    )
    return 0


def _run_benchmark(args: argparse.Namespace, started) -> int:
    """``vqa --benchmark``: the multiple-choice benchmarks (:mod:`vgutils.mc_eval`)."""
    from vgutils.mc_eval import MCOptions, run_mc

    options = MCOptions(
        model=args.model,
        benchmark=args.benchmark,
        datasets=tuple(args.datasets) if args.datasets else None,
        subsets=tuple(args.subsets) if args.subsets else None,
        decoding=args.decoding,
        seed=args.seed,
        refine=args.refine,
        heads_from=str(args.heads_from) if args.heads_from else None,
        protocol=args.protocol or "corrected",
        top_k=args.top_k,
        layers=_layers(args.layers),
        denominator=args.denominator,
        include_generated=args.include_generated,
        percentile=args.percentile,
        limit=args.limit,
        dtype=args.dtype,
    )
    answers, table, seconds = run_mc(
        options,
        args.out,
        device=args.device,
        data_root=args.data_root,
        n_boot=args.n_boot,
        shard=started.shard,
    )
    if table is None:
        return _partial(args.out, started, len(answers), seconds)
    shown = [c for c in table.columns if not c.endswith(("_low", "_high", "_correct"))]
    print(table[shown].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"{args.out}: answers.parquet, accuracy.json ({seconds:.1f} s)")
    return 0
