"""``vqa``: VQA accuracy, optionally with VGRefine: free-text VQA on a dataset
(:func:`vgutils.vqa.run_vqa`) or a multiple-choice benchmark (``--benchmark``,
:func:`vgutils.mc_eval.run_mc`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vgutils.cli import COMMANDS
from vgutils.cli.options import (
    _processor_kwargs,
    _protocol_settings,
    _refine_settings,
    _shard,
    add_data_root,
    add_dataset_layout,
    add_device_dtype,
    add_limit,
    add_model,
    add_protocol,
    add_refine,
    add_revision,
)
from vgutils.errors import UsageError
from vgutils.protocols import DECODINGS


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
    add_revision(parser)
    parser.add_argument(
        "--decoding",
        choices=tuple(DECODINGS),
        help="greedy (free text: 16 tokens), greedy-1 (one new token: the authors' "
        "HuatuoGPT-Vision runs), checkpoint-64 (the authors' Qwen path: the checkpoint's "
        "generation config, <= 64 tokens), huatuo-sample (HuatuoGPT-Vision's evaluation: "
        "T 0.2, repetition penalty 1.2, <= 256 tokens). Default: the protocol's for the "
        "model's family, else greedy (free text) / greedy-1 (--benchmark)",
    )
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
    parser.add_argument(
        "--seed",
        type=int,
        default=42,
        help="sampling seed (--benchmark: + record index); --triage random: its draws' "
        "seed (+ the sample id)",
    )
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
        refine=_refine_settings(args),
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        image_root=str(args.image_root) if args.image_root else None,
        bbox_format=args.bbox_format,
        dtype=args.dtype,
        protocol=args.protocol,
        processor_kwargs=_processor_kwargs(args),
        decoding=args.decoding,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        **_protocol_settings(args),
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

    settings = _protocol_settings(args)
    if settings.pop("box_overhang"):
        raise UsageError("--box-overhang: the multiple-choice benchmarks have no boxes")
    if args.max_new_tokens is not None:
        raise UsageError("--max-new-tokens: the multiple-choice benchmarks use --decoding")
    options = MCOptions(
        model=args.model,
        benchmark=args.benchmark,
        datasets=tuple(args.datasets) if args.datasets else None,
        subsets=tuple(args.subsets) if args.subsets else None,
        decoding=args.decoding,
        seed=args.seed,
        refine=_refine_settings(args),
        protocol=args.protocol or "corrected",
        limit=args.limit,
        dtype=args.dtype,
        processor_kwargs=_processor_kwargs(args),
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        **settings,
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
