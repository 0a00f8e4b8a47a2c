"""The options several commands share, each defined once, and the argparse converters.

Each ``add_*`` function adds its options where it is called, so a command keeps its own
order of options in ``--help``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from vgutils import checks
from vgutils.errors import UsageError


def _arg(check: Callable, name: str) -> Callable[[str], object]:
    """An argparse ``type`` from a :mod:`vgutils.checks` function (its message kept)."""

    def convert(text: str):
        try:
            return check(text, name) if name else check(text)
        except UsageError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = name.lstrip("-") or check.__name__
    return convert


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    try:
        shard = (int(index), int(count))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text}: expected I/N, e.g. 0/2") from None
    if not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"--shard {text}: expected I/N with 0 <= I < N")
    return shard


def _device(text: str) -> str:
    return _arg(checks.device, "")(text)


def _dtype(text: str) -> str:
    return _arg(checks.dtype, "")(text)


def _layers(values: list[str] | None) -> tuple[int, ...] | str | None:
    """``--layers``: numbers, or one word ``best`` / ``heads``; None: the protocol's."""
    if not values:
        return None
    if len(values) == 1 and values[0] in ("best", "heads"):
        return values[0]
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise UsageError(f"--layers {' '.join(values)}: expected numbers, best or heads") from None


def _processor_kwargs(args: argparse.Namespace) -> dict | None:
    """``--max-pixels`` / ``--min-pixels`` / ``--processor-kwarg KEY=VALUE`` as one dict
    (None when none is given: the protocol decides)."""
    from vgutils.protocols import parse_processor_kwarg

    kwargs = dict(parse_processor_kwarg(text) for text in args.processor_kwarg or [])
    for key in ("max_pixels", "min_pixels"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    return kwargs or None


def add_model(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--model`` (required): what :func:`vgutils.models.load_model` loads."""
    parser.add_argument("--model", required=True, help=help)


def add_revision(parser: argparse.ArgumentParser) -> None:
    """``--revision`` and ``--trust-remote-code`` of the model (the latter needs the former
    pinned to a commit: :func:`vgutils.checks.remote_code`)."""
    parser.add_argument("--revision", help="model revision (commit hash)")
    parser.add_argument("--trust-remote-code", action="store_true")


def add_dataset_layout(parser: argparse.ArgumentParser, bbox_format: bool = True) -> None:
    """``--image-root`` and (unless ``bbox_format`` is false) ``--bbox-format``: how a
    dataset's rows are read."""
    parser.add_argument("--image-root", type=Path)
    if bbox_format:
        parser.add_argument("--bbox-format", choices=("xyxy", "xywh"))


def add_limit(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--limit N``: the first N samples."""
    parser.add_argument("--limit", type=_arg(checks.positive_int, "--limit"), help=help)


def add_device_dtype(parser: argparse.ArgumentParser, documented: bool = True) -> None:
    """``--device`` and ``--dtype`` of the model (their valid values in the help unless
    ``documented`` is false)."""
    parser.add_argument(
        "--device",
        type=_device,
        default="auto",
        help="auto, cpu, cuda, cuda:1, balanced" if documented else None,
    )
    parser.add_argument(
        "--dtype",
        type=_dtype,
        default="auto",
        help="auto, float32, bfloat16, float16" if documented else None,
    )


def add_protocol(parser: argparse.ArgumentParser) -> None:
    """The options every protocol setting of the images and the attention has (extract
    and vqa); read them with :func:`_processor_kwargs` and :func:`_protocol_settings`."""
    from vgutils.protocols import (
        ATTENTION_PRECISIONS,
        BOX_OVERHANGS,
        IMAGE_MODES,
        IMAGE_RESIZES,
        PROTOCOLS,
    )

    parser.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default="corrected",
        help="preset of the settings (docs/METHOD.md): authors | corrected (default)",
    )
    parser.add_argument("--max-pixels", type=int, help="processor max_pixels (Qwen family)")
    parser.add_argument("--min-pixels", type=int, help="processor min_pixels (Qwen family)")
    parser.add_argument(
        "--processor-kwarg",
        action="append",
        metavar="KEY=VALUE",
        help="processor setting, e.g. do_pad=true (repeatable; value read as YAML)",
    )
    parser.add_argument(
        "--image-resize",
        choices=IMAGE_RESIZES,
        help="qwen_vl_utils: the authors' Qwen pre-resize before the processor; processor: "
        "one processor resize (default: the protocol's)",
    )
    parser.add_argument(
        "--image-mode",
        choices=IMAGE_MODES,
        help="transparent and 16-bit images: composite (onto white, 16-bit rescaled), "
        "convert (PIL: alpha dropped, 16-bit clipped), qwen_vl_utils (default: the "
        "protocol's for the model's family)",
    )
    parser.add_argument(
        "--attention-precision",
        choices=ATTENTION_PRECISIONS,
        help="model: eager weights in the model dtype, head mean in it (the authors'); "
        "float32: rows recomputed in float32 (default: the protocol's)",
    )
    parser.add_argument(
        "--box-overhang",
        choices=BOX_OVERHANGS,
        help="a box overhanging the image: clamp (kept, the authors') or drop (rows over "
        "1 px reported; default: the protocol's)",
    )


def _protocol_settings(args: argparse.Namespace) -> dict:
    """The protocol settings given on the command line (``None``: the protocol's)."""
    keys = ("image_resize", "image_mode", "attention_precision", "box_overhang")
    return {key: getattr(args, key, None) for key in keys}


def add_data_root(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--data-root``: where the registry's files are."""
    parser.add_argument("--data-root", type=Path, help="default: $VGUTILS_DATA or data/")


def _heads(text: str):
    from vgutils.refine import parse_heads

    return _arg(parse_heads, "")(text)


def add_refine(parser: argparse.ArgumentParser) -> None:
    """vqa's VGRefine options and ``--max-new-tokens`` (free-text VQA; the multiple-choice
    benchmarks use the VGRefine ones); read them with :func:`_refine_settings`."""
    parser.add_argument("--refine", action="store_true", help="also answer with VGRefine")
    parser.add_argument(
        "--heads",
        type=_heads,
        metavar="L:H,...",
        help="the VGRefine heads given, e.g. the authors' 15:4,16:5,... (instead of ranking)",
    )
    parser.add_argument(
        "--heads-from", type=Path, help="run folder of `extract --heads` (heads ranked there)"
    )
    parser.add_argument(
        "--top-k",
        type=_arg(checks.positive_int, "--top-k"),
        help="visually sensitive heads ranked (default: the protocol's, 20)",
    )
    parser.add_argument(
        "--layers",
        nargs="+",
        help="knockout layers: numbers (the authors' for HuatuoGPT-Vision-7B: 16), 'best' "
        "(the layer holding the most ranked heads, ties to the best mean metric; needs "
        "--heads-from) or 'heads' (every layer holding a head). Default: the protocol's",
    )
    parser.add_argument(
        "--refine-prompt-suffix",
        help="text appended to the prompt VGRefine answers (default: the protocol's; the "
        "authors': ' Answer the question using a single word or phrase.')",
    )
    parser.add_argument(
        "--percentile", type=_arg(checks.percentile, ""), default=80.0, help="low-relevance cut"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=_arg(checks.positive_int, "--max-new-tokens"),
        help="default: the protocol's (1 | 16)",
    )
    parser.add_argument(
        "--denominator",
        choices=("layer", "head"),
        help="triage: each top head over its layer's mean generic map (authors) or its "
        "own (default: the protocol's)",
    )
    parser.add_argument(
        "--include-generated",
        action=argparse.BooleanOptionalAction,
        help="knockout also blocks the generated tokens (default: the protocol's)",
    )
    parser.add_argument(
        "--triage",
        choices=("heads", "oracle", "random", "anti-oracle"),
        help="which tokens VGRefine knocks out, always as many as the heads triage at "
        "--percentile: heads (the method, default), oracle (outside the ground-truth boxes "
        "first), random (seeded by --seed and the sample id, --draws times, scores "
        "averaged), anti-oracle (the box tokens first). oracle and anti-oracle need "
        "boxes: not for --benchmark",
    )
    parser.add_argument(
        "--draws",
        type=_arg(checks.positive_int, "--draws"),
        help="--triage random: draws per question (default 5)",
    )


def _refine_settings(args: argparse.Namespace):
    """The :class:`vgutils.refine.RefineSettings` of ``--refine`` (``None`` without it;
    a VGRefine option without ``--refine`` is a usage error)."""
    from vgutils.refine import RefineSettings

    names = ("heads", "heads_from", "top_k", "layers", "refine_prompt_suffix", "triage", "draws")
    given = [name for name in names if getattr(args, name, None) is not None]
    if not args.refine:
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise UsageError(f"{flags} without --refine: add --refine (VGRefine answers)")
        return None
    return RefineSettings(
        heads=args.heads,
        heads_from=str(args.heads_from) if args.heads_from else None,
        top_k=args.top_k,
        layers=_layers(args.layers),
        percentile=args.percentile,
        denominator=args.denominator,
        include_generated=args.include_generated,
        prompt_suffix=args.refine_prompt_suffix,
        triage=args.triage or "heads",
        draws=args.draws,
        seed=getattr(args, "seed", None),
    )
