"""Peak memory and time of converting a HuatuoGPT-Vision-7B-shaped original-format checkpoint.

Writes a random checkpoint with the real shapes (Qwen2-7B text model: hidden 3584, MLP
18944, 28 heads, 4 KV heads, vocabulary 152064, untied; CLIP ViT-L/14-336 tower, 24
layers; mlp2x_gelu projector), ``--layers`` text layers (28 in the real model), bf16,
several safetensors shards, then converts it in a fresh process and reports the peak RSS
of that process against the checkpoint's size. The tokenizer is the tiny one (its ids
are far below the 152064 rows, as the real tokenizer's are).

    python benchmarks/convert_memory.py --layers 2
    python benchmarks/convert_memory.py --layers 28 --work /big/disk   # ~15 GB on disk
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from vgutils.models.published import REAL_MODELS

HUATUO = REAL_MODELS["FreedomIntelligence/HuatuoGPT-Vision-7B"]  # the published sizes
TEXT = {k: v for k, v in HUATUO.text.items() if k != "num_hidden_layers"}
VISION = HUATUO.vision


def shapes(layers: int) -> dict[str, tuple[int, ...]]:
    """Original key names and shapes of the checkpoint."""
    h, m, v = TEXT["hidden_size"], TEXT["intermediate_size"], TEXT["vocab_size"]
    kv = h // TEXT["num_attention_heads"] * TEXT["num_key_value_heads"]
    out = {"model.embed_tokens.weight": (v, h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out.update(
            {
                p + "self_attn.q_proj.weight": (h, h),
                p + "self_attn.q_proj.bias": (h,),
                p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.k_proj.bias": (kv,),
                p + "self_attn.v_proj.weight": (kv, h),
                p + "self_attn.v_proj.bias": (kv,),
                p + "self_attn.o_proj.weight": (h, h),
                p + "mlp.gate_proj.weight": (m, h),
                p + "mlp.up_proj.weight": (m, h),
                p + "mlp.down_proj.weight": (h, m),
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
            }
        )
    out["model.norm.weight"] = (h,)
    vh, vm = VISION["hidden_size"], VISION["intermediate_size"]
    out.update(
        {
            "model.mm_projector.0.weight": (h, vh),
            "model.mm_projector.0.bias": (h,),
            "model.mm_projector.2.weight": (h, h),
            "model.mm_projector.2.bias": (h,),
        }
    )
    vp = "model.vision_tower.vision_tower.vision_model."
    side = VISION["image_size"] // VISION["patch_size"]
    out.update(
        {
            vp + "embeddings.class_embedding": (vh,),
            vp + "embeddings.patch_embedding.weight": (vh, 3, 14, 14),
            vp + "embeddings.position_embedding.weight": (side * side + 1, vh),
            vp + "pre_layrnorm.weight": (vh,),
            vp + "pre_layrnorm.bias": (vh,),
            vp + "post_layernorm.weight": (vh,),
            vp + "post_layernorm.bias": (vh,),
        }
    )
    for i in range(VISION["num_hidden_layers"]):
        p = f"{vp}encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[f"{p}self_attn.{name}.weight"] = (vh, vh)
            out[f"{p}self_attn.{name}.bias"] = (vh,)
        out.update(
            {
                p + "mlp.fc1.weight": (vm, vh),
                p + "mlp.fc1.bias": (vm,),
                p + "mlp.fc2.weight": (vh, vm),
                p + "mlp.fc2.bias": (vh,),
                p + "layer_norm1.weight": (vh,),
                p + "layer_norm1.bias": (vh,),
                p + "layer_norm2.weight": (vh,),
                p + "layer_norm2.bias": (vh,),
            }
        )
    out["lm_head.weight"] = (v, h)
    return out


def write_checkpoint(folder: Path, layers: int, shard_bytes: int) -> int:
    """The original-format folder, tensors generated and written shard by shard."""
    from vgutils.models.tiny import build_tiny

    folder.mkdir(parents=True)
    tiny = build_tiny("llava_qwen2", folder.parent / "tiny-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny / name, folder / name)
    config = json.loads((tiny / "config.json").read_text())
    config.update(TEXT, num_hidden_layers=layers, max_window_layers=layers)
    config.update(torch_dtype="bfloat16", mm_hidden_size=VISION["hidden_size"])
    config["mm_vision_tower"] = "./vit/clip_vit_large_patch14_336"
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    vit = folder / "vit" / "clip_vit_large_patch14_336"
    vit.mkdir(parents=True)
    (vit / "config.json").write_text(json.dumps({"model_type": "clip_vision_model", **VISION}))
    preprocessor = json.loads(
        (tiny / "vit" / "clip_vit_tiny_patch8_64" / "preprocessor_config.json").read_text()
    )
    preprocessor.update(size=336, crop_size=336)
    (vit / "preprocessor_config.json").write_text(json.dumps(preprocessor))

    groups: list[dict[str, torch.Tensor]] = [{}]
    size = total = 0
    names = []

    def flush():
        name = f"model-part{len(names)}.safetensors"
        save_file(groups[-1], folder / name, {"format": "pt"})
        names.append((name, list(groups[-1])))
        groups[-1] = {}

    generator = torch.Generator().manual_seed(0)
    for key, shape in shapes(layers).items():
        tensor = torch.empty(shape, dtype=torch.bfloat16)
        tensor.normal_(std=0.02, generator=generator)
        groups[-1][key] = tensor
        nbytes = tensor.numel() * 2
        size, total = size + nbytes, total + nbytes
        if size >= shard_bytes:
            flush()
            size = 0
    if groups[-1]:
        flush()
    weight_map = {}
    for i, (name, keys) in enumerate(names, start=1):
        final = f"model-{i:05d}-of-{len(names):05d}.safetensors"
        (folder / name).rename(folder / final)
        weight_map.update(dict.fromkeys(keys, final))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return total


# Peak memory from /proc/self/status, sampled in the converting process: VmHWM (peak RSS;
# getrusage's ru_maxrss survives exec on Linux and would report the parent's peak) and the
# peak of RssAnon (memory the process owns, without the file pages that safe_open's
# memory map brings in and the kernel can drop at any time).
CHILD = """
import json, sys, threading, time

def status():
    values = {}
    for line in open("/proc/self/status"):
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            values[key] = int(rest.split()[0]) * 1024
    return values

peak_anon = 0
done = threading.Event()

def sample():
    global peak_anon
    while not done.is_set():
        peak_anon = max(peak_anon, status()["RssAnon"])
        time.sleep(0.005)

from vgutils.models.original import convert
import transformers.models.llava.modeling_llava
after_import = status()
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
start = time.perf_counter()
if len(sys.argv) > 1:
    convert(sys.argv[1], sys.argv[2], shard_bytes=int(float(sys.argv[3]) * 2**30))
seconds = time.perf_counter() - start
done.set()
sampler.join()
end = status()
print(json.dumps({
    "seconds": seconds,
    "peak_rss_bytes": end["VmHWM"],
    "peak_anon_bytes": max(peak_anon, end["RssAnon"]),
    "baseline_anon_bytes": after_import["RssAnon"],
}))
"""


def run_child(*args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, *args], check=True, capture_output=True, text=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2, help="text layers (28 in the 7B)")
    parser.add_argument("--source-shard-gb", type=float, default=1.0)
    parser.add_argument("--shard-gb", type=float, nargs="+", default=[2.0, 0.5])
    parser.add_argument("--work", type=Path, help="folder for the checkpoints (default: tmp)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vgutils-convert-bench-", dir=args.work))
    gib = 2**30
    try:
        start = time.perf_counter()
        total = write_checkpoint(work / "original", args.layers, int(args.source_shard_gb * gib))
        shards = len(list((work / "original").glob("*.safetensors")))
        print(
            f"checkpoint: {args.layers} Qwen2-7B layers + embeddings + CLIP-L/14-336, bf16, "
            f"{total / gib:.2f} GiB in {shards} shards ({time.perf_counter() - start:.0f} s)"
        )
        base = run_child()["baseline_anon_bytes"]
        print(f"baseline after imports: {base / gib:.2f} GiB anonymous memory")
        for shard_gb in args.shard_gb:
            out = work / f"converted-{shard_gb}"
            measured = run_child(str(work / "original"), str(out), str(shard_gb))
            peak, anon = measured["peak_rss_bytes"], measured["peak_anon_bytes"]
            print(
                f"output shards {shard_gb:g} GiB: {measured['seconds']:.1f} s "
                f"({total / gib / measured['seconds']:.2f} GiB/s); peak RSS {peak / gib:.2f} GiB "
                f"({peak / total:.2f} x the checkpoint, file pages of the memory-mapped source "
                f"included); peak anonymous {anon / gib:.2f} GiB "
                f"({(anon - base) / gib:.2f} GiB above the baseline)"
            )
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
