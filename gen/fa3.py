"""FlashAttention-3 for the generation transformer's joint attention, from the build vLLM ships.

diffusers' own `_flash_3` backend needs the `flash_attn_interface` package (FlashAttention-3 built
from source: no wheel on PyPI). vLLM's wheel carries the same Hopper kernels
(`vllm.vllm_flash_attn`, `fa_version=3`). At Qwen-Image's shapes on an H200 they ran at 710 TFLOPS
against 630 for PyTorch's default (cuDNN) at a 1024x1024 edit's 9592 tokens, and 590 against 316 at
t2i's 4196, with the same distance from float32 attention (`benchmarks/attention_bench.py`).

The kernel is wrapped as a torch custom op with a shape-only fake, so the regionally compiled
blocks keep it as one opaque call (`fullgraph=True` holds).
"""

from __future__ import annotations

import torch


def unavailable_reason(device: str) -> str | None:
    """None when FlashAttention-3 can run on `device`, else why not (in words for an error)."""
    if not device.startswith("cuda"):
        return f"it needs a CUDA GPU, not {device}"
    if torch.cuda.get_device_capability(torch.device(device))[0] != 9:
        return f"its kernels are built for Hopper GPUs (H100, H200); this is {torch.cuda.get_device_name(device)}"
    try:
        from vllm.vllm_flash_attn import is_fa_version_supported
    except ImportError as exc:
        return f"it comes with vLLM's wheel (pip install vllm), which does not import here: {exc}"
    return None if is_fa_version_supported(3) else "this vLLM build has no FlashAttention-3 kernels"


@torch.library.custom_op("genscore::fa3_attention", mutates_args=())
def fa3_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Full (non-causal, unmasked) attention over (batch, tokens, heads, head_dim) tensors."""
    from vllm.vllm_flash_attn import flash_attn_varlen_func

    batch, tokens = query.shape[:2]
    bounds = torch.arange(0, (batch + 1) * tokens, tokens, dtype=torch.int32, device=query.device)
    out = flash_attn_varlen_func(*(t.reshape(batch * tokens, *t.shape[2:]) for t in (query, key, value)),
                                 max_seqlen_q=tokens, cu_seqlens_q=bounds, max_seqlen_k=tokens,
                                 cu_seqlens_k=bounds, causal=False, fa_version=3)
    return out.view(query.shape)


@fa3_attention.register_fake
def _(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(query)
