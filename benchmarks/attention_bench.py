"""Joint attention of one Qwen-Image forward, kernel by kernel: is there a faster exact kernel?

    python benchmarks/attention_bench.py                 # on a GPU with the vLLM bundle on PYTHONPATH

The Qwen-Image transformer attends over text and image tokens together, 24 heads of 128, batch 1,
no mask: 9592 tokens for a 1024x1024 edit (8192 image + 1400 text), 4196 for t2i (4096 + 100).
Each kernel runs the same bf16 q, k, v; it is timed over 20 calls after 3 warm-up calls, and its
output compared with float32 attention (max and mean absolute difference). Kernels:
- sdpa:         PyTorch's scaled_dot_product_attention as gen.run calls it (cuDNN's on Hopper)
- sdpa_flash:   the same, forced to its FlashAttention-2 kernel
- vllm_fa3:     FlashAttention-3, the build vLLM ships for Hopper (vllm.vllm_flash_attn, fa_version=3)
Prints one JSON line per shape: milliseconds, TFLOPS (4 * tokens^2 * heads * head_dim), differences.
"""

from __future__ import annotations

import argparse
import json
import time

SHAPES = {"edit": 8192 + 1400, "t2i": 4096 + 100}
HEADS, HEAD_DIM = 24, 128


def sdpa(q, k, v, backend=None):
    import torch
    from torch.nn.attention import sdpa_kernel

    run = lambda: torch.nn.functional.scaled_dot_product_attention(  # noqa: E731
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    if backend is None:
        return run()
    with sdpa_kernel(backend):
        return run()


def vllm_fa3(q, k, v):
    import torch
    from vllm.vllm_flash_attn import flash_attn_varlen_func

    tokens = q.shape[1]
    cu = torch.tensor([0, tokens], dtype=torch.int32, device=q.device)
    out = flash_attn_varlen_func(q[0], k[0], v[0], max_seqlen_q=tokens, cu_seqlens_q=cu, max_seqlen_k=tokens,
                                 cu_seqlens_k=cu, causal=False, fa_version=3)
    return out.unsqueeze(0)


def time_ms(call, repeats: int = 20) -> float:
    import torch

    for _ in range(3):
        call()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    import torch
    from torch.nn.attention import SDPBackend

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="edit,t2i")
    parser.add_argument("--device", default="cuda:0")
    args = parser.parse_args()
    kernels = {"sdpa": sdpa, "sdpa_flash": lambda q, k, v: sdpa(q, k, v, SDPBackend.FLASH_ATTENTION),
               "vllm_fa3": vllm_fa3}
    for shape in args.shapes.split(","):
        tokens = SHAPES[shape]
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, tokens, HEADS, HEAD_DIM, device=args.device, dtype=torch.bfloat16) for _ in range(3))
        reference = sdpa(q.float(), k.float(), v.float(), SDPBackend.MATH)
        flops = 4 * tokens * tokens * HEADS * HEAD_DIM
        result: dict = {"shape": shape, "tokens": tokens, "device": torch.cuda.get_device_name(args.device)}
        for name, kernel in kernels.items():
            try:
                out = kernel(q, k, v).float()
                ms = time_ms(lambda: kernel(q, k, v))
                diff = (out - reference).abs()
                result[name] = {"ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1),
                                "max_diff": float(diff.max()), "mean_diff": float(diff.mean())}
            except Exception as exc:  # noqa: BLE001 - a kernel this machine lacks is reported, not fatal
                result[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
