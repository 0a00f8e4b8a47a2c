"""One forward: eager attention with ``output_attentions`` (the reference pipeline's way)
against the capture path (sdpa + only the needed rows), on the same model and prompt.

    python benchmarks/forward_capture.py [--device cpu|cuda] [--layers 2] [--repeats 3]

Prints, per model, seconds and peak memory of both paths and their ratios, after checking
that both give the same ``last``-token attention on the image tokens.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from measure import measure
from PIL import Image

from vgutils.models import load_model
from vgutils.models.shaped import llava_1_5_7b
from vgutils.models.tiny import TINY_FAMILIES


def compare(vlm, image: Image.Image, device: str, repeats: int) -> dict:
    prepared = vlm.prepare(image, "Is there a lesion in the liver?")
    text_config = vlm.model.config.get_text_config()

    def capture_path():
        return vlm.attention(prepared, "last")

    def eager_path():
        with torch.no_grad():
            return vlm.model(**prepared.inputs, output_attentions=True)

    ours = capture_path()
    fast = measure(capture_path, device, repeats)
    vlm.model.set_attn_implementation({"text_config": "eager"})
    try:
        reference = eager_path()
        slow = measure(eager_path, device, repeats)
    finally:
        vlm.model.set_attn_implementation({"text_config": "vgutils"})
    rows = torch.stack([a[0, :, -1, prepared.image_positions] for a in reference.attentions])
    diff = float(np.abs(rows.float().cpu().numpy() - ours).max())
    return {
        "model": vlm.source,
        "layers": text_config.num_hidden_layers,
        "tokens": int(prepared.inputs["input_ids"].shape[1]),
        "image_tokens": len(prepared.image_positions),
        "eager_s": slow.seconds,
        "capture_s": fast.seconds,
        "eager_mib": slow.peak_mib,
        "capture_mib": fast.peak_mib,
        "max_abs_diff": diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=2, help="language layers, 7B-shaped")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-tiny", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    image = Image.fromarray((np.random.default_rng(0).random((480, 640, 3)) * 255).astype("uint8"))
    models = [] if args.skip_tiny else [f"tiny:{family}" for family in TINY_FAMILIES]
    rows = [
        compare(load_model(name, device=args.device), image, args.device, args.repeats)
        for name in models
    ]
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    big = llava_1_5_7b(num_layers=args.layers, dtype=dtype, device=args.device)
    rows.append(compare(big, image, args.device, args.repeats))
    header = (
        f"{'model':26} {'L':>3} {'seq':>5} {'N':>4} {'eager s':>9} {'capture s':>9} "
        f"{'speed-up':>8} {'eager MiB':>10} {'capt. MiB':>10} {'max|diff|':>9}"
    )
    print(f"device: {args.device}, dtype: {dtype}")
    print(header)
    for r in rows:
        print(
            f"{r['model']:26} {r['layers']:3d} {r['tokens']:5d} {r['image_tokens']:4d} "
            f"{r['eager_s']:9.4f} {r['capture_s']:9.4f} {r['eager_s'] / r['capture_s']:7.2f}x "
            f"{r['eager_mib']:10.1f} {r['capture_mib']:10.1f} {r['max_abs_diff']:9.1e}"
        )


if __name__ == "__main__":
    main()
