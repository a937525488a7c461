"""Joint attention of one Qwen-Image forward, kernel by kernel: is there a faster exact kernel?

    python benchmarks/attention_bench.py                 # on a GPU with the vLLM bundle on PYTHONPATH

The Qwen-Image transformer attends over text and image tokens together, 24 heads of 128, batch 1,
no mask: 9592 tokens for a 1024x1024 edit (8192 image + 1400 text), 4196 for t2i (4096 + 100).
Each kernel runs the same bf16 q, k, v; it is timed over 20 calls after 3 warm-up calls, and its
output compared with float32 attention (max and mean absolute difference). Kernels:
- sdpa:         PyTorch's scaled_dot_product_attention as gen.run calls it (cuDNN's on Hopper)
- sdpa_flash:   the same, forced to its FlashAttention-2 kernel
- vllm_fa3:     FlashAttention-3, the build vLLM ships for Hopper, as gen.run calls it (gen/fa3.py)
Prints one JSON line per shape: milliseconds, TFLOPS (4 * tokens^2 * heads * head_dim), differences.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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

    from gen.fa3 import fa3_attention

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="edit,t2i")
    parser.add_argument("--device", default="cuda:0")
    args = parser.parse_args()
    kernels = {"sdpa": sdpa, "sdpa_flash": lambda q, k, v: sdpa(q, k, v, SDPBackend.FLASH_ATTENTION),
               "vllm_fa3": fa3_attention}
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
