"""``convert``: an original-format checkpoint (LLaVA's or InternVL-Chat's) into a
transformers folder (:func:`vgutils.models.original.convert`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vgutils.cli import COMMANDS

DESCRIPTION = """Convert an original-format checkpoint into a transformers folder.

Original formats: LLaVA's, a config.json with model_type llava_qwen2 (HuatuoGPT-Vision-7B,
FreedomIntelligence/HuatuoGPT-Vision-7B), llava_mistral (LLaVA-Med v1.5,
microsoft/llava-med-v1.5-mistral-7b) or llava_llama (LLaVA-Tri, UCSC-VLAA/LLaVA-Med-pp/SLAKE,
with S2), keys model.layers.N.*, model.mm_projector.0/2.*,
model.vision_tower.vision_tower.vision_model.*, lm_head.weight; and InternVL-Chat's,
model_type internvl_chat (MedRegA, Luxuriant16/medrega; its remote code is not run), keys
vision_model.*, mlp1.*, language_model.*. A LLaVA output is a LlavaConfig (CLIP vision +
Qwen2 / Mistral / Llama text, vision layer -2 without CLS, exact-GELU projector; with S2 the
vgutils_llava_s2 class), the model's own preprocessing (pad to square with the CLIP-mean
colour, then CLIP resize and centre crop; load it with backend="pil"), a tokenizer with one
added <image> token and a chat template rendering the model's own prompt; an InternVL-Chat
output is transformers' InternVL (ps_version v2) or the vgutils_internvl_v1 class (v1), one
resized tile, the Hermes-2 prompt. Tensors are streamed shard by shard (no GPU, no second
copy of the model in memory); vgutils_conversion.json records the source, revision, sha256
of the source files and converter version. A dropped, renamed or wrongly shaped key stops
the conversion with the key's name. load_model does the same automatically, once, into its
cache."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "convert",
        help=COMMANDS["convert"].help,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="checkpoint folder or Hub id, org/name[/subfolder] (SRC)")
    parser.add_argument("out", type=Path, help="new output folder (OUT)")
    parser.add_argument(
        "--vision-tower",
        metavar="DIR",
        help="CLIP folder to take the vision tower (weights, config, preprocessing) from "
        "(LLaVA formats); default: the config's mm_vision_tower, with the weights from the "
        "checkpoint for llava_qwen2 and from that folder for llava_mistral and llava_llama, "
        "as the authors' code does",
    )
    parser.add_argument("--revision", help="Hub revision (commit) of SRC")
    parser.add_argument("--shard-gb", type=float, default=2.0, help="output shard size")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from vgutils.models.original import ConversionError, convert, hub_snapshot

    source = args.source
    try:
        folder = source if Path(source).is_dir() else hub_snapshot(source, args.revision)
        out = convert(
            folder,
            args.out,
            vision_tower=args.vision_tower,
            source_name=str(source),
            shard_bytes=int(args.shard_gb * 2**30),
        )
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{out}: converted (load it with load_model or --model {out})")
    return 0
