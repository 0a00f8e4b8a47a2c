"""Command line: ``python -m vgutils COMMAND`` (``--help`` on any command).

Every failure is one line ``error: ...`` on stderr naming the file (and line or field) or
the bad value with the valid choices. Exit status: 0 success, 1 a data or results problem
(missing, malformed or changed file; a run folder in use), 2 a usage problem (bad
argument value, unknown name, a folder holding another run). ``--debug`` (anywhere on the
line) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from vgutils import checks
from vgutils.errors import UsageError, VgError


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``error: ...`` line (exit status 2)."""

    def error(self, message: str):
        message = re.sub(r"^argument ([^:]+): (?=\1 )", "", message)  # said once
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())}\n")


def _arg(check, name: str):
    """An argparse ``type`` from a :mod:`vgutils.checks` function (its message kept)."""

    def convert(text: str):
        try:
            return check(text, name) if name else check(text)
        except UsageError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = name.lstrip("-") or check.__name__
    return convert


def _report(args) -> int:
    from vgutils.paths import BUILD, check_profile, figures_dir
    from vgutils.report import executed_notebooks, figures_report

    check_profile(args.profile)
    folder = args.folder or figures_dir(args.profile)
    notebooks = executed_notebooks(args.build_dir or BUILD, args.profile)
    print(figures_report(folder, len(notebooks)))
    return 0


def _validate(args) -> int:
    from vgutils.data import read_dataset, resolve_dataset

    dataset = resolve_dataset(
        args.dataset,
        image_root=args.image_root,
        bbox_format=args.bbox_format,
        root=args.data_root,
    )
    samples, problems = read_dataset(dataset)
    for problem in problems:
        print(problem)
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    print(f"{dataset.jsonl}: {len(samples)} good row(s), {errors} bad, {warnings} warning(s)")
    return 1 if errors else 0


def _data_pin(args) -> int:
    from vgutils.data.manifest import data_root, pin

    pinned = pin(data_root(args.data_root), args.names or None)
    print("\n".join(f"pinned {name}" for name in pinned) or "nothing to pin")
    return 0


def _data_verify(args) -> int:
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


def _data_samples(args) -> int:
    from vgutils.data.manifest import data_root
    from vgutils.data.samples import build_sample_sets

    for name, path in build_sample_sets(data_root(args.data_root)).items():
        print(f"{name}: {path}")
    return 0


def _data_coco(args) -> int:
    from vgutils.data.coco import write_coco_questions

    count = write_coco_questions(args.instances, args.out, args.min_area, args.max_area)
    print(f"wrote {count} question(s) to {args.out}")
    return 0


def _data_overlay(args) -> int:
    from vgutils.data import read_dataset, resolve_dataset
    from vgutils.data.overlay import contact_sheet

    dataset = resolve_dataset(args.dataset, image_root=args.image_root, root=args.data_root)
    samples, _ = read_dataset(dataset)
    print(contact_sheet(samples, args.out))
    return 0


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    try:
        shard = (int(index), int(count))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text}: expected I/N, e.g. 0/2") from None
    if not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"--shard {text}: expected I/N with 0 <= I < N")
    return shard


def _processor_kwargs(args) -> dict | None:
    """``--max-pixels`` / ``--min-pixels`` / ``--processor-kwarg KEY=VALUE`` as one dict
    (None when none is given: the protocol decides)."""
    from vgutils.protocols import parse_processor_kwarg

    kwargs = dict(parse_processor_kwarg(text) for text in args.processor_kwarg or [])
    for key in ("max_pixels", "min_pixels"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    return kwargs or None


def _protocol_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every protocol setting of the images has (extract and vqa)."""
    from vgutils.protocols import PROTOCOLS

    parser.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default="corrected",
        help="preset of the settings (METHOD.md): authors | corrected (default)",
    )
    parser.add_argument("--max-pixels", type=int, help="processor max_pixels (Qwen family)")
    parser.add_argument("--min-pixels", type=int, help="processor min_pixels (Qwen family)")
    parser.add_argument(
        "--processor-kwarg",
        action="append",
        metavar="KEY=VALUE",
        help="processor setting, e.g. do_pad=true (repeatable; value read as YAML)",
    )


def _extract(args) -> int:
    from vgutils.runner import ExtractOptions, extract

    options = ExtractOptions(
        model=args.model,
        dataset=args.dataset,
        strategy=args.strategy,
        image_root=str(args.image_root) if args.image_root else None,
        bbox_format=args.bbox_format,
        limit=args.limit,
        shard=args.shard,
        heads=args.heads,
        save_maps=args.save_maps,
        dtype=args.dtype,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        protocol=args.protocol,
        box_mapping=args.box_mapping,
        processor_kwargs=_processor_kwargs(args),
    )
    summary = extract(
        options,
        args.out,
        batch_size=args.batch_size,
        image_batch=args.image_batch,
        loader_threads=args.loader_threads,
        device=args.device,
        retry_errors=args.retry_errors,
    )
    rate = summary.computed / summary.seconds if summary.seconds else 0.0
    print(
        f"{summary.out}: {summary.done} done, {summary.skipped} skipped, "
        f"{summary.computed} computed now in {summary.seconds:.1f} s ({rate:.2f} q/s)"
        + ("" if summary.computed else " (results already complete: nothing recomputed)")
    )
    return 0


def _merge(args) -> int:
    from vgutils.results import merge_runs

    folders = args.folders
    out = args.out
    if len(folders) == 1 and out is None:
        out = folders[0]
        folders = sorted(p for p in folders[0].glob("shard-*-of-*") if p.is_dir())
        if not folders:
            raise UsageError(f"{out} has no shard-*-of-* folders to merge")
    if out is None:
        raise UsageError("give --out when merging several folders")
    print(merge_runs(folders, out))
    return 0


def _layers(values: list[str] | None):
    """``--layers``: numbers, or one word ``best`` / ``heads``; None: the protocol's."""
    if not values:
        return None
    if len(values) == 1 and values[0] in ("best", "heads"):
        return values[0]
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise UsageError(f"--layers {' '.join(values)}: expected numbers, best or heads") from None


def _vqa(args) -> int:
    if args.benchmark:
        return _vqa_benchmark(args)
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
    _, table, seconds = run_vqa(options, args.out, device=args.device)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"{args.out}: answers.parquet, accuracy.json ({seconds:.1f} s)")
    return 0


# --- vqa --benchmark: the multiple-choice benchmarks (vgutils.mc_eval) ---
def _vqa_benchmark(args) -> int:
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
    _, table, seconds = run_mc(
        options, args.out, device=args.device, data_root=args.data_root, n_boot=args.n_boot
    )
    shown = [c for c in table.columns if not c.endswith(("_low", "_high", "_correct"))]
    print(table[shown].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"{args.out}: answers.parquet, accuracy.json ({seconds:.1f} s)")
    return 0


def _add_benchmark_arguments(vqa: argparse.ArgumentParser) -> None:
    group = vqa.add_argument_group("multiple-choice benchmarks (instead of --dataset)")
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
    group.add_argument("--data-root", type=Path, help="default: $VGUTILS_DATA or data/")


def _teach_train(args) -> int:
    from dataclasses import replace

    from vgutils.teach.train import SMOKE, Recipe, train_teaching_model

    recipe = SMOKE if args.smoke else Recipe()
    changes = {
        k: v
        for k, v in (
            ("medical_share", args.medical_share),
            ("steps", args.steps),
            ("seed", args.seed),
        )
        if v is not None
    }
    print(train_teaching_model(args.out, replace(recipe, **changes), device=args.device))
    return 0


def _teach_data(args) -> int:
    from vgutils.data.manifest import data_root
    from vgutils.teach.datasets import build_teach_sets

    for name, path in build_teach_sets(data_root(args.data_root)).items():
        print(f"{name}: {path}")
    return 0


def _teach_evaluate(args) -> int:
    from vgutils.models import load_model
    from vgutils.teach.evaluate import CRITERIA, acceptance, passes

    measures = acceptance(load_model(args.model, device=args.device), args.scenes)
    verdict = passes(measures)
    print(f"{args.model}: acceptance on {args.scenes} held-out scenes per domain")
    for name, value in measures.items():
        op, limit = CRITERIA.get(name, ("", None))
        check = f"  (criterion {op} {limit:g}: {'ok' if verdict[name] else 'FAILS'})" if op else ""
        print(f"  {name:17s} {value:8.3f}{check}")
    print(f"acceptance: {'passes' if all(verdict.values()) else 'FAILS'}")
    return 0


def _convert(args) -> int:
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


CONVERT_HELP = """Convert an original-format LLaVA checkpoint into a transformers
LlavaForConditionalGeneration folder.

Original format: config.json with model_type llava_qwen2 (HuatuoGPT-Vision-7B,
FreedomIntelligence/HuatuoGPT-Vision-7B) or llava_mistral (LLaVA-Med v1.5,
microsoft/llava-med-v1.5-mistral-7b), keys model.layers.N.*, model.mm_projector.0/2.*,
model.vision_tower.vision_tower.vision_model.*, lm_head.weight. The output has
safetensors shards written while the source shards are read (no GPU, no second copy of
the model in memory), a LlavaConfig (CLIP vision + Qwen2 / Mistral text, vision layer -2
without CLS, exact-GELU projector), the model's own preprocessing (pad to square with
the CLIP-mean colour, then CLIP resize and centre crop; load it with backend="pil"), a
tokenizer with one added <image> token, a chat template rendering the model's own prompt,
and vgutils_conversion.json (source, revision, sha256 of the source files, converter
version). A dropped, renamed or wrongly shaped key stops the conversion with the key's
name. load_model does the same automatically, once, into its cache."""


def _jobs(args) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m vgutils`` argument parser."""
    parser = Parser(
        prog="python -m vgutils",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="tracebacks instead of one line")
    commands = parser.add_subparsers(dest="command", required=True)

    report = commands.add_parser("report", help="list the figures a run produced")
    report.add_argument("folder", type=Path, nargs="?", help="default: figures/<profile>")
    report.add_argument("--profile", default="default", help="its notebooks are counted")
    report.add_argument("--build-dir", type=Path, help="default: build/ (executed notebooks)")
    report.set_defaults(run=_report)

    data_root = argparse.ArgumentParser(add_help=False)
    data_root.add_argument("--data-root", type=Path, help="default: $VGUTILS_DATA or data/")

    validate = commands.add_parser(
        "validate", parents=[data_root], help="check every row of a dataset"
    )
    validate.add_argument("dataset", help="manifest name or .jsonl")
    validate.add_argument("--image-root", type=Path)
    validate.add_argument("--bbox-format", choices=("xyxy", "xywh"))
    validate.set_defaults(run=_validate)

    extract = commands.add_parser("extract", help="per-layer grounding metrics of a model")
    extract.add_argument("--model", required=True, help="Hub id, folder or tiny:<family>")
    extract.add_argument("--dataset", required=True, help="manifest name or .jsonl")
    extract.add_argument("--out", required=True, type=Path)
    extract.add_argument("--strategy", choices=("last", "question", "all"), default="last")
    extract.add_argument("--image-root", type=Path)
    extract.add_argument("--bbox-format", choices=("xyxy", "xywh"))
    extract.add_argument("--limit", type=_arg(checks.positive_int, "--limit"), help="first N")
    extract.add_argument("--shard", type=_shard, help="I/N: this process's slice of images")
    extract.add_argument(
        "--batch-size",
        type=_arg(checks.positive_int, "--batch-size"),
        default=8,
        help="question suffixes at once",
    )
    extract.add_argument(
        "--image-batch",
        type=_arg(checks.positive_int, "--image-batch"),
        default=1,
        help="images per prefix forward (GPU: try 8)",
    )
    extract.add_argument(
        "--loader-threads",
        type=_arg(checks.non_negative_int, "--loader-threads"),
        help="threads preparing the next images during a forward (default: 1 on GPU, 0 on CPU)",
    )
    extract.add_argument("--heads", action="store_true", help="also per-head metrics")
    extract.add_argument("--save-maps", action="store_true", help="keep per-sample maps")
    extract.add_argument(
        "--device", type=_device, default="auto", help="auto, cpu, cuda, cuda:1, balanced"
    )
    extract.add_argument(
        "--dtype", type=_dtype, default="auto", help="auto, float32, bfloat16, float16"
    )
    extract.add_argument("--revision", help="model revision (commit hash)")
    extract.add_argument("--trust-remote-code", action="store_true")
    extract.add_argument(
        "--retry-errors", action="store_true", help="compute the skipped samples again"
    )
    _protocol_arguments(extract)
    extract.add_argument(
        "--box-mapping",
        choices=("processor", "scaled"),
        help="boxes onto the token grid: processor geometry, or the authors' scaling "
        "(default: the protocol's)",
    )
    extract.set_defaults(run=_extract)

    vqa = commands.add_parser("vqa", help="VQA accuracy, optionally with VGRefine")
    vqa.add_argument("--model", required=True)
    vqa.add_argument("--dataset", help="free-text VQA: manifest name or .jsonl")
    vqa.add_argument("--out", required=True, type=Path)
    vqa.add_argument("--refine", action="store_true", help="also answer with VGRefine")
    vqa.add_argument("--heads-from", type=Path, help="run folder of `extract --heads`")
    vqa.add_argument(
        "--top-k",
        type=_arg(checks.positive_int, "--top-k"),
        default=20,
        help="visually sensitive heads",
    )
    vqa.add_argument(
        "--layers",
        nargs="+",
        help="knockout layers: numbers, 'best' (the single most visually sensitive layer: "
        "the one holding the most top heads, ties to the best mean metric; printed) or "
        "'heads' (every layer holding a top head). Default: the protocol's",
    )
    vqa.add_argument(
        "--percentile", type=_arg(checks.percentile, ""), default=80.0, help="low-relevance cut"
    )
    vqa.add_argument(
        "--max-new-tokens",
        type=_arg(checks.positive_int, "--max-new-tokens"),
        help="default: the protocol's (1 | 16)",
    )
    vqa.add_argument(
        "--denominator",
        choices=("layer", "head"),
        help="triage: each top head over its layer's mean generic map (authors) or its "
        "own (default: the protocol's)",
    )
    vqa.add_argument(
        "--include-generated",
        action=argparse.BooleanOptionalAction,
        help="knockout also blocks the generated tokens (default: the protocol's)",
    )
    _protocol_arguments(vqa)
    vqa.add_argument("--limit", type=_arg(checks.positive_int, "--limit"))
    vqa.add_argument("--image-root", type=Path)
    vqa.add_argument("--bbox-format", choices=("xyxy", "xywh"))
    vqa.add_argument("--device", type=_device, default="auto")
    vqa.add_argument("--dtype", type=_dtype, default="auto")
    _add_benchmark_arguments(vqa)
    vqa.set_defaults(run=_vqa)

    teach = commands.add_parser("teach", help="the teaching model: train, data, evaluate")
    teach_commands = teach.add_subparsers(dest="teach_command", required=True)
    train = teach_commands.add_parser("train", help="train the teaching model (minutes on CPU)")
    train.add_argument("--out", required=True, type=Path)
    train.add_argument("--smoke", action="store_true", help="the seconds-long CI recipe")
    train.add_argument("--medical-share", type=float, help="share of medical scenes")
    train.add_argument("--steps", type=int, help="LLaVA-stage steps")
    train.add_argument("--seed", type=int)
    train.add_argument("--device", default="cpu", help="cpu (the recipe's target) or cuda")
    train.set_defaults(run=_teach_train)
    teach_commands.add_parser(
        "data", parents=[data_root], help="write the held-out teach-* datasets"
    ).set_defaults(run=_teach_data)
    evaluate = teach_commands.add_parser(
        "evaluate", help="acceptance: accuracy, best-layer ratios, query following"
    )
    evaluate.add_argument("--model", default="tiny:teach")
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--scenes", type=int, default=60, help="held-out scenes per domain")
    evaluate.set_defaults(run=_teach_evaluate)

    convert = commands.add_parser(
        "convert",
        help="original-format LLaVA (HuatuoGPT-Vision-7B, LLaVA-Med) -> transformers",
        description=CONVERT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    convert.add_argument("source", help="checkpoint folder or Hub id (SRC)")
    convert.add_argument("out", type=Path, help="new output folder (OUT)")
    convert.add_argument(
        "--vision-tower",
        metavar="DIR",
        help="CLIP folder to take the vision tower (weights, config, preprocessing) from; "
        "default: the config's mm_vision_tower, with the weights from the checkpoint for "
        "llava_qwen2 and from that folder for llava_mistral, as the authors' code does",
    )
    convert.add_argument("--revision", help="Hub revision (commit) of SRC")
    convert.add_argument("--shard-gb", type=float, default=2.0, help="output shard size")
    convert.set_defaults(run=_convert)

    jobs = commands.add_parser("jobs", help="run a profile's extraction jobs (cached)")
    jobs.add_argument(
        "profile",
        help="smoke, default, paper (notebooks/params/*.yaml), or a rehearsal such as "
        "paper-rehearsal",
    )
    jobs.add_argument(
        "--rehearsal",
        nargs="?",
        const="small",
        choices=("small", "full"),
        help="rehearse the profile offline: its models as random stand-ins with the real "
        "image geometry (small: few narrow layers, CPU; full: real sizes, GPU), synthetic "
        "data in the real layout; results under results/<profile>-rehearsal[-full]/",
    )
    jobs.set_defaults(run=_jobs)

    merge = commands.add_parser("merge", help="combine shard runs")
    merge.add_argument("folders", nargs="+", type=Path, help="run folder(s)")
    merge.add_argument("--out", type=Path, help="default: the single folder given")
    merge.set_defaults(run=_merge)

    data = commands.add_parser("data", help="manifest, hashes and the sample sets")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    pin = data_commands.add_parser("pin", parents=[data_root], help="record unpinned hashes")
    pin.add_argument("names", nargs="*", help="registry names to (re)pin; default: unpinned")
    pin.set_defaults(run=_data_pin)
    verify = data_commands.add_parser(
        "verify", parents=[data_root], help="check files against their hashes (1: bad/missing)"
    )
    verify.add_argument("names", nargs="*", help="registry names or prefixes (default: all)")
    verify.set_defaults(run=_data_verify)
    data_commands.add_parser(
        "samples", parents=[data_root], help="build the embedded sample sets"
    ).set_defaults(run=_data_samples)
    coco = data_commands.add_parser("coco-questions", help="questions from COCO instances")
    coco.add_argument("instances", type=Path, help="COCO instances_*.json")
    coco.add_argument("out", type=Path, help="output .jsonl")
    coco.add_argument("--min-area", type=float, default=0.02, help="min box / image area")
    coco.add_argument("--max-area", type=float, default=0.5, help="max box / image area")
    coco.set_defaults(run=_data_coco)
    overlay = data_commands.add_parser(
        "overlay", parents=[data_root], help="contact sheet of images with boxes"
    )
    overlay.add_argument("dataset")
    overlay.add_argument("out", type=Path, help="output .png")
    overlay.add_argument("--image-root", type=Path)
    overlay.set_defaults(run=_data_overlay)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run one command; returns the exit status (0 ok, 1 data, 2 usage).
    Failures are one ``error: ...`` line; ``--debug`` raises them with their traceback."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed in one line
        return done.code if isinstance(done.code, int) else 2
    try:
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


def _device(text: str) -> str:
    return _arg(checks.device, "")(text)


def _dtype(text: str) -> str:
    return _arg(checks.dtype, "")(text)


if __name__ == "__main__":
    sys.exit(main())
