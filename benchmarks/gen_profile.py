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

--cfg also times one true-CFG step both ways: two forwards as diffusers runs them (the prompt, then
the shorter negative prompt, --negative-tokens), and one forward over a batch of the two with the
negative prompt padded and masked out (`encoder_hidden_states_mask`); batched CFG is worth building
only if the second is faster. It reports how far the batched outputs are from the separate ones.
--cudagraphs replays the compiled blocks as CUDA graphs (a probe of what launch overhead costs).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
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
    from data.models import torch_dtype
    from gen.pipeline import speed_up

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


def cfg_inputs(cond: dict, negative_tokens: int) -> tuple[dict, dict]:
    """The unconditional forward's inputs (a shorter prompt, the same latents), and both forwards as
    one batch of two: the shorter prompt padded to the longer one and masked out."""
    import torch

    text = cond["encoder_hidden_states"]
    negative = torch.randn(1, negative_tokens, text.shape[2], device=text.device, dtype=text.dtype)
    uncond = dict(cond, encoder_hidden_states=negative)
    length = max(text.shape[1], negative_tokens)
    mask = torch.zeros(2, length, dtype=torch.bool, device=text.device)
    mask[0, :text.shape[1]] = mask[1, :negative_tokens] = True
    padded = [torch.nn.functional.pad(t, (0, 0, 0, length - t.shape[1])) for t in (text, negative)]
    batched = dict(cond, hidden_states=cond["hidden_states"].repeat(2, 1, 1), timestep=cond["timestep"].repeat(2),
                   encoder_hidden_states=torch.cat(padded), encoder_hidden_states_mask=mask,
                   img_shapes=cond["img_shapes"] * 2)
    return uncond, batched


def time_ms(call, sync, repeats: int = 5) -> float:
    for _ in range(3):  # warm-up: compile, autotune
        call()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    sync()
    return (time.perf_counter() - start) / repeats * 1000


def cfg_step(transformer, cond: dict, negative_tokens: int, sync) -> dict:
    import torch

    uncond, batched = cfg_inputs(cond, negative_tokens)
    separate_ms = time_ms(lambda: (transformer(**cond), transformer(**uncond)), sync)
    batched_ms = time_ms(lambda: transformer(**batched), sync)
    together = transformer(**batched)[0].float()
    apart = torch.cat([transformer(**cond)[0], transformer(**uncond)[0]]).float()
    return {"separate_ms": round(separate_ms, 1), "batched_ms": round(batched_ms, 1),
            "batched_speedup": round(separate_ms / batched_ms, 3),
            "max_abs_diff": float((together - apart).abs().max()), "output_abs_mean": float(apart.abs().mean())}


def profile_mode(task: str, mode: str, args) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    transformer = build(task, mode, args.device, args.tiny)
    kwargs = inputs(transformer, task, args.size, args.text_tokens or (1400 if task == "edit" else 100), args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    result = {}
    with torch.no_grad():
        forward_ms = time_ms(functools.partial(transformer, **kwargs), sync)
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as trace:
            transformer(**kwargs)
            sync()
        if args.cfg:
            negative = args.negative_tokens or (1380 if task == "edit" else 10)
            result["cfg_step"] = cfg_step(transformer, kwargs, negative, sync)
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
            "top": [[e.key[:60], round(e.self_device_time_total / 1000, 1), e.count] for e in top], **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["t2i", "edit"], default="edit")
    parser.add_argument("--modes", default="eager,default", help=f"any of {','.join(PROFILED)}")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--text-tokens", type=int, default=None, help="default: 100 (t2i), 1400 (edit)")
    parser.add_argument("--cfg", action="store_true", help="also time a true-CFG step: two forwards vs one batch of two")
    parser.add_argument("--negative-tokens", type=int, default=None,
                        help="--cfg: the negative prompt's tokens (default: 10 for t2i, 1380 for edit, where the "
                             "negative prompt carries the source image too)")
    parser.add_argument("--cudagraphs", action="store_true",
                        help="compiled modes: replay the compiled blocks as CUDA graphs (inductor's triton.cudagraphs)")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--tiny", action="store_true", help="the tiny transformer (a CPU smoke run)")
    args = parser.parse_args()
    if unknown := set(args.modes.split(",")) - set(PROFILED):
        parser.error(f"--modes: {', '.join(sorted(unknown))} not profiled here; any of {','.join(PROFILED)}")
    if args.cudagraphs:  # a probe, not a gen.run option; inductor reads it beside the options gen.run passes
        import torch

        torch._inductor.config.triton.cudagraphs = True
    result: dict = {"workload": f"{args.task} {args.size}px, one transformer forward", "cudagraphs": args.cudagraphs}
    for mode in args.modes.split(","):
        result[mode] = profile_mode(args.task, mode, args)
        print(json.dumps({mode: result[mode]}), file=sys.stderr, flush=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
