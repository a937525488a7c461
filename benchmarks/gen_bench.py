"""Generation and editing time per image: genscore's `gen.run` against a bare diffusers call, on
Qwen-Image / Qwen-Image-Edit shaped pipelines with random (dummy) weights, in one job.

    python benchmarks/gen_bench.py --task t2i --images 2 --modes eager,default,bare
    python benchmarks/gen_bench.py --task edit --images 2 --modes eager,default,bare

Workload: 1024x1024, 50 steps, true CFG 4.0, batch 1; the 20.4 B transformer, the 16-channel VAE
and the Qwen2.5-VL-7B text encoder at their real sizes (built from configs, bf16, on the GPU).
Modes (each `gen.run` mode is a fresh worker process writing PNGs and manifest shards):
- bare:    the pipeline called in a loop in this process, each image saved as PNG (the user's script)
- eager:   gen.run --compile off (the same work as bare: the overhead of our stage)
- default: gen.run as shipped (regional torch.compile of the transformer blocks on GPUs)
- cudnn:   default + --attention-backend _native_cudnn
- fa3:     default + --attention-backend fa3 (FlashAttention-3 from vLLM's wheel, gen/fa3.py)
- fbcache: --cache-threshold 0.05 (first-block cache, which turns compile off: lossy)
- fp8:     default + --quantize fp8 (float8 linear layers, torchao: lossy)
Each mode runs --images + 1 images; the first is the warm-up (compile, autotune) and is reported
apart as time to first image. Seconds per image are the mean over the others. Outputs of every
mode are compared with eager's (same seeds): max and mean absolute pixel difference.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from score_bench import write_images  # noqa: E402 - benchmarks/ is the script's own folder

T2I_PROMPT = ("A cozy reading corner in a sunlit room, a green armchair beside a tall bookshelf, a cat asleep "
              "on a knitted blanket, warm afternoon light, photorealistic")
EDIT_PROMPT = "Replace the background with a sunset over the sea and add a small red boat on the left."

# Qwen/Qwen-Image's text encoder (Qwen2.5-VL-7B-Instruct) architecture, from its config.json.
QWEN25_VL_7B = {
    "text_config": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                        num_key_value_heads=4, vocab_size=152064, max_position_embeddings=128000,
                        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                                            "mrope_section": [16, 24, 24]}),
    "vision_config": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                          patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                          fullatt_block_indexes=[7, 15, 23, 31]),
}
MODES = {
    "eager": {"compile": "off"},
    "default": {},
    "cudnn": {"attention_backend": "_native_cudnn"},
    "fa3": {"attention_backend": "fa3"},
    "fbcache": {"cache_threshold": 0.05},
    "fp8": {"quantize": "fp8"},
}


def build_model_dir(task: str, out: Path) -> Path:
    """The tiny pipeline's folder (tokenizer, processor, scheduler) with real-size network configs."""
    import torch
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import AutoTokenizer, Qwen2_5_VLConfig

    from data import tiny

    shutil.copytree(tiny.ensure(task), out)
    with torch.device("meta"):  # configs only: the real sizes are the classes' defaults
        QwenImageTransformer2DModel().save_config(out / "transformer")
        AutoencoderKLQwenImage().save_config(out / "vae")
    ids = tiny.token_ids(AutoTokenizer.from_pretrained(out / "tokenizer"))
    text = dict(QWEN25_VL_7B["text_config"], eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"],
                bos_token_id=ids["bos_token_id"])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=QWEN25_VL_7B["vision_config"], **tiny.vision_token_ids(ids))
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    config.save_pretrained(out / "text_encoder")
    if (out / "processor").exists():  # edit: the real processor's pixel budget, not the tiny one's
        size = {"longest_edge": 12845056, "shortest_edge": 3136}  # Qwen-Image-Edit's max/min_pixels
        for path in (out / "processor").glob("*processor_config.json"):
            saved = json.loads(path.read_text())
            (saved.get("image_processor") or saved)["size"] = size
            path.write_text(json.dumps(saved, indent=2))
    for weights in out.glob("*/*.safetensors"):
        weights.unlink()
    return out


def write_inputs(task: str, folder: Path, n: int, size: int) -> Path:
    manifest = write_images(folder, n, size)
    prompt = EDIT_PROMPT if task == "edit" else T2I_PROMPT
    records = [dict(json.loads(line), prompt=prompt) for line in manifest.read_text().splitlines()]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    return manifest


def run_ours(task: str, model: Path, manifest: Path, out: Path, args, **overrides) -> dict:
    import pandas as pd

    from gen.config import GenConfig
    from gen.run import run

    config = GenConfig(task=task, model=str(model), input=str(manifest), output_dir=str(out), load_format="dummy",
                       steps=args.steps, height=args.size, width=args.size, true_cfg_scale=4.0,
                       devices=args.device, progress="none", **overrides)
    start = time.time()
    code = run(config)
    frame = pd.read_parquet(out / "manifest").sort_values("started_at")
    frame["ended_at"] = frame["started_at"] + frame["duration_s"]
    warm_up = frame.groupby("worker").head(1)  # each worker's first image: compile, autotune
    rest = frame.drop(warm_up.index)
    steady_from = warm_up["ended_at"].max()
    steady = frame[frame["ended_at"] > steady_from]
    return {"exit": code, "ok": int((frame["status"] == "ok").sum()), "workers": int(frame["worker"].nunique()),
            "s_per_image": float(rest["duration_s"].mean()),
            "images_per_s": len(steady) / (frame["ended_at"].max() - steady_from) if len(steady) else None,
            "first_image_s": float(warm_up["ended_at"].min() - start), "wall_s": time.time() - start,
            "errors": sorted(set(frame["error"].dropna()))[:3]}


def run_bare(task: str, model: Path, manifest: Path, out: Path, args) -> dict:
    """What a user's script does: load, then call the pipeline and save a PNG per sample."""
    import torch
    from PIL import Image

    from data.models import torch_dtype
    from gen.pipeline import dummy_pipeline

    start = time.time()
    device = args.device.split(",")[0]
    pipe = dummy_pipeline(str(model), torch_dtype("auto", device), device)
    pipe.set_progress_bar_config(disable=True)
    out.mkdir(parents=True, exist_ok=True)
    times = []
    for index, line in enumerate(manifest.read_text().splitlines()):
        record = json.loads(line)
        kwargs = dict(prompt=record["prompt"], negative_prompt=" ", true_cfg_scale=4.0, num_inference_steps=args.steps,
                      height=args.size, width=args.size, generator=torch.Generator("cpu").manual_seed(index))
        if task == "edit":
            kwargs["image"] = [Image.open(manifest.parent / record["image"]).convert("RGB")]
        t0 = time.time()
        image = pipe(**kwargs).images[0]
        image.save(out / f"{record['id']}_seed{index}.png")
        times.append(time.time() - t0)
        if index == 0:
            first = time.time() - start
    del pipe
    gc.collect()  # the pipeline sits in reference cycles: without this its 40 GB outlive `del`
    torch.cuda.empty_cache()
    return {"s_per_image": sum(times[1:]) / len(times[1:]), "first_image_s": first}


def compare(a: Path, b: Path) -> dict:
    """Pixel difference between two runs' images of the same samples and seeds."""
    import numpy as np
    from PIL import Image

    diffs = []
    for image in sorted(a.glob("*.png")):
        other = b / image.name
        if other.exists():
            x = np.asarray(Image.open(image), dtype=np.int16)
            y = np.asarray(Image.open(other), dtype=np.int16)
            diffs.append(np.abs(x - y))
    if not diffs:
        return {}
    return {"max_abs_diff": int(max(d.max() for d in diffs)), "mean_abs_diff": float(np.mean([d.mean() for d in diffs]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["t2i", "edit"], default="t2i")
    parser.add_argument("--images", type=int, default=2, help="measured images per mode (+1 warm-up)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--device", default="cuda:0", help="gen.run --devices (bare: the first)")
    parser.add_argument("--modes", default="eager,default,bare")
    parser.add_argument("--tiny", action="store_true", help="the tiny pipeline itself (a CPU smoke run)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gen-bench-"))
    if args.tiny:
        from data import tiny

        model = Path(shutil.copytree(tiny.ensure(args.task), work / "model"))
    else:
        model = build_model_dir(args.task, work / "model")
    manifest = write_inputs(args.task, work / "inputs", args.images + 1, args.size)
    result: dict = {"workload": f"{args.task} {args.size}px {args.steps} steps cfg 4.0, {args.images}+1 images",
                    "model": "qwen-image-edit-shape" if args.task == "edit" else "qwen-image-shape"}
    for mode in args.modes.split(","):
        if mode == "bare":
            result["bare"] = run_bare(args.task, model, manifest, work / "bare", args)
        else:
            result[mode] = run_ours(args.task, model, manifest, work / mode, args, **MODES[mode])
        print(json.dumps({mode: result[mode]}), file=sys.stderr, flush=True)
    modes = args.modes.split(",")
    images = {m: work / "bare" if m == "bare" else work / m / "images" for m in modes}
    reference = "eager" if "eager" in modes else "bare"
    for mode in modes:
        if mode != reference and reference in modes:
            result[mode].update(compare(images[reference], images[mode]))
        if "bare" in modes and mode != "bare":
            result[mode]["speedup_vs_bare"] = result["bare"]["s_per_image"] / result[mode]["s_per_image"]
    print(json.dumps(result), flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
