"""Where one transformer forward of generation spends its GPU time: attention, matmuls, the rest.

    python benchmarks/gen_profile.py --task edit
    python benchmarks/gen_profile.py --task t2i --modes eager,default,fp8

The Qwen-Image transformer (20.4 B, 60 blocks, random weights, bf16) is called on the tokens of
one 1024x1024 sample: 4096 image tokens for t2i, 8192 for edit (the source image's latents are
appended), and the prompt's text tokens (about 100 for t2i, 1400 for edit, where the prompt
carries the source image through the vision encoder). Each mode is set up by `gen.pipeline.speed_up`
as `gen.run` would (eager = --compile off); after three warm-up calls, five forwards are timed and
one is traced with torch.profiler (mode stock: diffusers' own `compile_repeated_blocks`, without
gen.run's attention processor). CUDA kernel time is summed per kind:
- attention: the fused attention kernels (cuDNN / flash / memory-efficient SDPA),
- matmul:    cuBLAS / CUTLASS GEMMs (fp8 ones included),
- other:     everything else (norms, modulation, RoPE, GELU, copies), what compile can shrink.
Prints one JSON line. A denoising image costs 2 x steps forwards (true CFG), so 100 at 50 steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gen_bench import MODES  # noqa: E402 - benchmarks/ is the script's own folder

# fbcache is left out: its hook needs the pipeline's per-step cache context, not a bare forward.
# stock: diffusers' own regional compile, its attention processors as shipped (complex RoPE).
PROFILED = [mode for mode in MODES if mode != "fbcache"] + ["stock"]
ATTENTION = ("sdpa", "fmha", "flash_fwd", "flash_fprop", "attention_kernel")
MATMUL = ("gemm", "nvjet", "cutlass", "xmma", "_scaled_mm", "matmul")


def kind(kernel: str) -> str:
    name = kernel.lower()
    if name.startswith("triton"):  # inductor's fused pointwise/reduction kernels, whatever they are named for
        return "other"
    if any(word in name for word in ATTENTION):
        return "attention"
    return "matmul" if any(word in name for word in MATMUL) else "other"


def build(task: str, mode: str, device: str, tiny: bool):
    import torch
    from diffusers import QwenImageTransformer2DModel

    from data import tiny as tiny_models
    from gen.config import GenConfig
    from gen.pipeline import speed_up, torch_dtype

    torch.manual_seed(0)
    config = QwenImageTransformer2DModel.load_config(tiny_models.ensure(task) / "transformer") if tiny else {}
    with torch.device(device):
        transformer = QwenImageTransformer2DModel.from_config(config).to(torch_dtype("auto", device)).eval()
    if mode == "stock":
        transformer.compile_repeated_blocks(fullgraph=True)
        return transformer
    mode_config = dataclasses.replace(GenConfig(), **MODES[mode])  # gen.run's defaults, then the mode's flags
    speed_up(SimpleNamespace(transformer=transformer), mode_config.compile, mode_config.attention_backend,
             mode_config.cache_threshold, device, mode_config.quantize)
    return transformer


def inputs(transformer, task: str, size: int, text_tokens: int, device: str) -> dict:
    import torch

    config = transformer.config
    side = size // 16  # 8x VAE, then 2x2 patches
    images = 2 if task == "edit" else 1
    dtype = next(transformer.parameters()).dtype
    return dict(hidden_states=torch.randn(1, images * side * side, config.in_channels, device=device, dtype=dtype),
                encoder_hidden_states=torch.randn(1, text_tokens, config.joint_attention_dim, device=device,
                                                  dtype=dtype),
                encoder_hidden_states_mask=None, timestep=torch.tensor([0.5], device=device, dtype=dtype),
                img_shapes=[[(1, side, side)] * images], return_dict=False)


def profile_mode(task: str, mode: str, args) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    transformer = build(task, mode, args.device, args.tiny)
    kwargs = inputs(transformer, task, args.size, args.text_tokens or (1400 if task == "edit" else 100), args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        for _ in range(3):
            transformer(**kwargs)
        sync()
        start = time.perf_counter()
        for _ in range(5):
            transformer(**kwargs)
        sync()
        forward_ms = (time.perf_counter() - start) / 5 * 1000
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as trace:
            transformer(**kwargs)
            sync()
    del transformer, kwargs
    torch._dynamo.reset()  # compiled blocks hold the weights: 41 GB per mode otherwise
    gc.collect()
    torch.cuda.empty_cache()
    kernels = [e for e in trace.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_kind = {"attention": 0.0, "matmul": 0.0, "other": 0.0}
    for event in kernels:
        by_kind[kind(event.key)] += event.self_device_time_total / 1000
    total = sum(by_kind.values())
    top = sorted(kernels, key=lambda e: -e.self_device_time_total)[:8]
    return {"forward_ms": round(forward_ms, 1), "kernel_ms": round(total, 1),
            "share": {k: round(v / total, 3) for k, v in by_kind.items()} if total else {},
            "top": [[e.key[:60], round(e.self_device_time_total / 1000, 1), e.count] for e in top]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["t2i", "edit"], default="edit")
    parser.add_argument("--modes", default="eager,default", help=f"any of {','.join(PROFILED)}")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--text-tokens", type=int, default=None, help="default: 100 (t2i), 1400 (edit)")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--tiny", action="store_true", help="the tiny transformer (a CPU smoke run)")
    args = parser.parse_args()
    if unknown := set(args.modes.split(",")) - set(PROFILED):
        parser.error(f"--modes: {', '.join(sorted(unknown))} not profiled here; any of {','.join(PROFILED)}")
    result: dict = {"workload": f"{args.task} {args.size}px, one transformer forward"}
    for mode in args.modes.split(","):
        result[mode] = profile_mode(args.task, mode, args)
        print(json.dumps({mode: result[mode]}), file=sys.stderr, flush=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
