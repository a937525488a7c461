"""What a model flag means: a local folder, a hub id, or `tiny:NAME` (a test model built here);
and what a dtype flag means to torch. Shared by gen and score."""

from __future__ import annotations

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def resolve_model(spec: str) -> str:
    """`tiny:NAME` names a tiny model (built on demand, offline); anything else passes through."""
    if spec.startswith("tiny:"):
        from data import tiny  # only test and demo runs need the builders

        return str(tiny.ensure(spec.removeprefix("tiny:")))
    return spec


def torch_dtype(name: str, device: str):
    """The torch dtype of a --dtype flag; `auto` is bf16 on GPUs and fp32 on CPUs."""
    import torch

    if name == "auto":
        name = "bf16" if device.startswith("cuda") else "fp32"
    return getattr(torch, DTYPES[name])
