"""Questions per second: the reference pipeline against our runner, same model, same
samples, same process; then capture memory against sequence length.

    make bench                      # quick (--quick): about 2 minutes on 2 CPU cores
    make bench-full                 # all parts, more questions
    make bench DEVICE=cuda          # GPU: full 32-layer LLaVA-1.5-7B shape in bf16, plus
                                    # the image-batch sweep (1, 2, 4, 8, 16 images a forward)

Part 1 runs both paths on the first ``--samples`` questions of ``sample-natural`` with
(a) the tiny LLaVA and (b) a random LLaVA-1.5-7B-shaped model (hidden 4096, 32 heads,
576 image tokens; ``--layers`` language layers, ``--vision-layers`` vision layers),
checks that both give the same metrics (within 1e-4 in float32 on the CPU, 1e-3 on the GPU,
2e-2 in bfloat16), and prints questions/s, the speed-up and peak memory. Part 2 runs one
forward of a Qwen2.5-VL-7B-shaped model at growing image-token counts, eager +
output_attentions against capture, and prints peak memory.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from measure import measure
from reference import eager_everywhere, reference_question

from vgutils.data import load_dataset, load_image
from vgutils.metrics import gt_mask
from vgutils.models import load_model
from vgutils.models.shaped import llava_1_5_7b, qwen2_5_vl_7b
from vgutils.runner import batch_attention, group_by_image, image_batches, prepare_group
from vgutils.scoring import layer_scores


def reference_run(vlm, samples) -> list[dict]:
    scores = []
    with eager_everywhere(vlm):
        for sample in samples:
            image = load_image(sample.image_path)
            question, generic, layout = reference_question(vlm, image, sample.question)
            scores.append(layer_scores(question, generic, gt_mask(layout, sample.boxes)))
    return scores


def our_run(vlm, samples, batch_size: int, image_batch: int = 1) -> list[dict]:
    """The runner's path: images prepared once each, ``image_batch`` image prefixes per
    forward, ``batch_size`` question suffixes at once; metrics in the samples' order."""
    scores = {}
    prepared = (prepare_group(vlm, group) for group in group_by_image(samples))
    for batch in image_batches(prepared, image_batch):
        maps = batch_attention(vlm, batch, "last", batch_size, prefix_sharing=True)
        for group, (group_maps, generic) in zip(batch, maps, strict=True):
            for (order, sample), question, raw in zip(
                group.kept, group.prompts, group_maps, strict=True
            ):
                mask = gt_mask(question.layout, sample.boxes)
                scores[order] = layer_scores(raw, generic, mask)
    return [scores[order] for order in sorted(scores)]


def largest_difference(reference: list[dict], ours: list[dict], rtol: float) -> tuple[float, bool]:
    """The largest absolute difference over every metric, and whether all are within
    ``rtol`` (relative and absolute)."""
    worst, within = 0.0, True
    for a, b in zip(reference, ours, strict=True):
        for key in a:
            worst = max(worst, float(np.max(np.abs(b[key] - a[key]))))
            within &= bool(np.allclose(b[key], a[key], rtol=rtol, atol=rtol))
    return worst, within


def compare(name, vlm, samples, device, batch_size, rtol, image_batch: int = 1) -> dict:
    reference_run(vlm, samples[:1])  # warm-up
    our_run(vlm, samples[:1], batch_size)
    timed = {}
    for label, fn in (
        ("reference", lambda: reference_run(vlm, samples)),
        ("ours", lambda: our_run(vlm, samples, batch_size, image_batch)),
    ):
        result = {}
        measurement = measure(lambda fn=fn, result=result: result.update(out=fn()), device, 1)
        timed[label] = (measurement, result["out"])
    worst, within = largest_difference(timed["reference"][1], timed["ours"][1], rtol)
    n = len(samples)
    ref, ours = timed["reference"][0], timed["ours"][0]
    return {
        "model": name,
        "questions": n,
        "ref_qps": n / ref.seconds,
        "our_qps": n / ours.seconds,
        "ref_mib": ref.peak_mib,
        "our_mib": ours.peak_mib,
        "max_diff": worst,
        "within": within,
    }


def image_batch_sweep(vlm, samples, device, batch_size, sizes) -> list[dict]:
    """Our runner at several images per prefix forward: questions/s and peak memory."""
    our_run(vlm, samples[:2], batch_size)  # warm-up
    rows = []
    for size in sizes:
        measurement = measure(lambda s=size: our_run(vlm, samples, batch_size, s), device, 1)
        rows.append(
            {
                "image_batch": size,
                "qps": len(samples) / measurement.seconds,
                "peak_mib": measurement.peak_mib,
            }
        )
    return rows


def memory_scaling(device, dtype, sides) -> list[dict]:
    vlm = qwen2_5_vl_7b(
        dtype=dtype, device=device, max_image_tokens=max(1600, (max(sides) // 28) ** 2)
    )
    rows = []
    for side in sides:
        image = load_image_array(side)
        prepared = vlm.prepare(image, "Is there a lesion in the liver?")
        capture = measure(lambda p=prepared: vlm.attention(p, "last"), device, 1)
        vlm.model.set_attn_implementation({"text_config": "eager"})
        try:

            def eager(p=prepared):
                with torch.no_grad():
                    vlm.model(**p.inputs, output_attentions=True)

            reference = measure(eager, device, 1)
        finally:
            vlm.model.set_attn_implementation({"text_config": "vgutils"})
        rows.append(
            {
                "side": side,
                "n": len(prepared.image_positions),
                "seq": int(prepared.inputs["input_ids"].shape[1]),
                "eager_mib": reference.peak_mib,
                "capture_mib": capture.peak_mib,
            }
        )
    return rows


def load_image_array(side: int):
    from PIL import Image

    pixels = (np.random.default_rng(side).random((side, side, 3)) * 255).astype(np.uint8)
    return Image.fromarray(pixels)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="6 questions, no memory part")
    parser.add_argument("--samples", type=int, default=None, help="default: 8, 6 with --quick")
    parser.add_argument("--layers", type=int, default=None, help="default: 2 (cpu), 32 (cuda)")
    parser.add_argument(
        "--vision-layers", type=int, default=None, help="default: 2 (cpu), 24 (cuda)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--image-batches",
        default=None,
        help="image-batch sweep, e.g. 1,2,4,8,16 (default: that on cuda, none on cpu)",
    )
    parser.add_argument(
        "--memory-sides",
        default=None,
        help="image sides (px) for the memory part (default 448,672,896,1120; none with --quick)",
    )
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    layers = args.layers or (32 if cuda else 2)
    vision_layers = args.vision_layers or (24 if cuda else 2)
    dtype = torch.bfloat16 if cuda else torch.float32
    rtol = 2e-2 if cuda else 1e-4
    samples = load_dataset("sample-natural")[: args.samples or (6 if args.quick else 8)]
    memory_sides = args.memory_sides
    if memory_sides is None:
        memory_sides = "" if args.quick else "448,672,896,1120"
    sweep = args.image_batches if args.image_batches is not None else ("1,2,4,8,16" if cuda else "")
    started = time.perf_counter()
    rows = [
        compare(
            "tiny:llava",
            load_model("tiny:llava", device=args.device),
            samples,
            args.device,
            args.batch_size,
            1e-3 if cuda else 1e-4,  # GPU kernels differ with batch shape in float32 too
        )
    ]
    big = llava_1_5_7b(layers, vision_layers, dtype=dtype, device=args.device)
    big_name = f"llava-1.5-7b shape, {layers}+{vision_layers} layers"
    rows.append(compare(big_name, big, samples, args.device, args.batch_size, rtol))
    sizes = [int(s) for s in sweep.split(",") if s]
    swept = image_batch_sweep(big, samples, args.device, args.batch_size, sizes) if sizes else []
    del big
    print(
        f"\nPart 1: {len(samples)} questions on {len({s.image_path for s in samples})} images, "
        f"device {args.device}, {dtype}; largest metric difference shown"
    )
    print(
        f"{'model':36} {'ref q/s':>8} {'our q/s':>8} {'speed-up':>8} "
        f"{'ref MiB':>8} {'our MiB':>8} {'max|diff|':>9}"
    )
    for r in rows:
        print(
            f"{r['model']:36} {r['ref_qps']:8.3f} {r['our_qps']:8.3f} "
            f"{r['our_qps'] / r['ref_qps']:7.2f}x {r['ref_mib']:8.0f} {r['our_mib']:8.0f} "
            f"{r['max_diff']:9.1e}{'' if r['within'] else '  OUTSIDE TOLERANCE'}"
        )
    if swept:
        print(f"\nImage-batch sweep, {big_name}: images per prefix forward")
        print(f"{'images':>6} {'q/s':>8} {'vs 1':>6} {'peak MiB':>9}")
        for r in swept:
            print(
                f"{r['image_batch']:6d} {r['qps']:8.3f} {r['qps'] / swept[0]['qps']:5.2f}x "
                f"{r['peak_mib']:9.0f}"
            )
    sides = [int(s) for s in memory_sides.split(",") if s]
    if sides:
        print(
            "\nPart 2: one forward, Qwen2.5-VL-7B shape (2 language + 2 vision layers), "
            "peak memory above the loaded model"
        )
        print(f"{'image px':>8} {'N':>5} {'seq':>5} {'eager MiB':>10} {'capture MiB':>11}")
        for r in memory_scaling(args.device, dtype, sides):
            print(
                f"{r['side']:8d} {r['n']:5d} {r['seq']:5d} {r['eager_mib']:10.0f} "
                f"{r['capture_mib']:11.0f}"
            )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if not all(r["within"] for r in rows):
        raise SystemExit("metrics differ between the reference and our runner (see above)")


if __name__ == "__main__":
    main()
