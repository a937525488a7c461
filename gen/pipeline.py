"""Loading any diffusers pipeline, and calling it for a task (t2i or edit) on a batch.

The adapter reads the pipeline's `__call__` signature, so Qwen-Image (`true_cfg_scale`,
`negative_prompt`), Stable Diffusion / FLUX (`guidance_scale`) and InstructPix2Pix-style edit
pipelines (`image=`) go through the same code; a pipeline whose call does not fit the task is
refused with a clear message at load time.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data.models import torch_dtype

# Pipelines that take exactly one sample per call.
SINGLE_SAMPLE = {"QwenImageEditPlusPipeline"}


def check_model(model: str, task: str) -> None:
    """Fail fast, in the parent: a model that can be neither a local folder nor a hub id, or a
    pipeline that cannot do the task."""
    path = Path(model)
    if path.exists():
        if not (path / "model_index.json").exists():
            raise ValueError(f"{model} is not a diffusers pipeline folder (no model_index.json)")
    elif model.startswith(("/", ".", "~")) or model.count("/") != 1:
        raise ValueError(f"model not found: {model!r} is neither a local pipeline folder nor a hub id (org/name)")
    name = pipeline_class_name(model)
    if name is not None:
        check_task_by_name(name, task)


def load_pipeline(model: str, dtype: str, device: str, cpu_offload: bool = False,
                  scheduler: dict | None = None, load_format: str = "auto"):
    import torch
    from diffusers import DiffusionPipeline

    if load_format == "dummy":
        pipe = dummy_pipeline(model, torch_dtype(dtype, device), device)
    else:
        pipe = DiffusionPipeline.from_pretrained(model, dtype=torch_dtype(dtype, device), use_safetensors=True)
    if scheduler:
        pipe.scheduler = pipe.scheduler.__class__.from_config(pipe.scheduler.config, **scheduler)
    if cpu_offload and device.startswith("cuda"):
        pipe.enable_model_cpu_offload(device=torch.device(device))
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def _default_dtype(dtype):
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def dummy_pipeline(model: str, dtype, device: str):
    """The pipeline in `model` with random weights: every network built from its config.json,
    directly on `device` and in `dtype` (a 20 B transformer never exists in fp32 or on the host);
    tokenizers, processors and schedulers load as usual."""
    import torch
    from diffusers import DiffusionPipeline, ModelMixin
    from transformers import AutoConfig, PreTrainedModel

    folder = Path(model)
    index = json.loads((folder / "model_index.json").read_text())
    torch.manual_seed(0)  # the same random weights in every worker and run: outputs stay comparable
    parts = {}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        cls = getattr(importlib.import_module(spec[0]), spec[1])
        if issubclass(cls, ModelMixin):
            with torch.device(device), _default_dtype(dtype):
                parts[name] = cls.from_config(cls.load_config(folder / name))
        elif issubclass(cls, PreTrainedModel):
            with torch.device(device), _default_dtype(dtype):
                parts[name] = cls._from_config(AutoConfig.from_pretrained(folder / name), dtype=dtype)
        else:
            parts[name] = cls.from_pretrained(folder / name)
    pipeline_cls = getattr(importlib.import_module("diffusers"), index["_class_name"])
    assert issubclass(pipeline_cls, DiffusionPipeline)
    return pipeline_cls(**parts)


# Inductor already times a few block sizes for each reduction kernel; coordinate descent searches
# further. On edit's blocks (H100) it made the fused q/k norm and RoPE 1.5x faster and the forward
# 1% faster, for about 12 s more compile per shape. Regional compiles only: one block, tuned once.
INDUCTOR_OPTIONS = {"coordinate_descent_tuning": True}


def speed_up(pipe, compile: str, attention_backend: str | None, cache_threshold: float | None, device: str,
             quantize: str = "none") -> None:
    """Lossless: the attention kernel (by default FlashAttention-3 where it runs: `gen/fa3.py`),
    and regional compilation (each repeated transformer block
    compiled once, reused 60 times: seconds of compile instead of minutes), and with it Qwen-Image's
    rotary embedding made compilable (`gen/qwen_attention.py`) and GELU fused into its matmul
    (`gen/fused_gelu.py`). Lossy, only when asked:
    first-block caching and float8 weights and activations."""
    denoiser = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    if denoiser is None:
        return
    # diffusers' cache hooks are torch.compiler.disable'd, which fullgraph compilation refuses.
    if cache_threshold is not None and compile == "auto":
        compile = "off"
    compiling = compile == "on" or (compile == "auto" and device.startswith("cuda"))
    from gen.fa3 import unavailable_reason
    from gen.qwen_attention import has_qwen_attention, use_real_rope

    fa3 = attention_backend == "fa3"  # ours (gen/fa3.py); any other name is diffusers'
    if fa3 and not has_qwen_attention(denoiser):
        raise ValueError("--attention-backend fa3 is built for Qwen-Image transformers only")
    if fa3 or (attention_backend is None and compiling and has_qwen_attention(denoiser)):
        reason = unavailable_reason(device)
        if fa3 and reason:
            raise ValueError(f"--attention-backend fa3: {reason}")
        fa3 = not reason  # by default where it runs: lossless, 1.05x on a Qwen-Image-Edit image (H200)
    if compiling or fa3:
        use_real_rope(denoiser, fa3)  # before the backend is set: that setting lives on the processors
    if compiling and quantize == "none":  # cuBLASLt's GELU epilogue takes plain weights, not float8 ones
        from gen.fused_gelu import fuse_gelu

        fuse_gelu(denoiser)
    if attention_backend and not fa3:
        denoiser.set_attention_backend(attention_backend)
    if quantize == "fp8":
        quantize_fp8(denoiser)  # before compiling: the compiled blocks then fuse the scaling
    if cache_threshold is not None:
        from diffusers.hooks import FirstBlockCacheConfig

        denoiser.enable_cache(FirstBlockCacheConfig(threshold=cache_threshold))
    if compiling:
        if getattr(denoiser, "_repeated_blocks", None):
            denoiser.compile_repeated_blocks(fullgraph=True, options=INDUCTOR_OPTIONS)
        else:
            denoiser.compile(fullgraph=False)  # a whole UNet: tuning every kernel is not measured here


# Linear layers that see only the timestep or the text tokens (a few rows each): fp8 gains nothing
# there, and cuBLASLt's row-scaled fp8 matmul refused short inputs (16-33 rows) on an H100 with
# CUDA 13.0 (compare pytorch/ao#4582).
FP8_SKIP = ("add_", "context", "txt", "mod", "norm")


def fp8_filter(denoiser):
    """Which linear layers go to fp8: those of the repeated transformer blocks (all of them where
    the model names none) that work on the image tokens."""
    import torch

    blocks = set(getattr(denoiser, "_repeated_blocks", None) or [])
    inside = tuple(f"{name}." for name, m in denoiser.named_modules() if type(m).__name__ in blocks)

    def chosen(module, fqn: str) -> bool:
        return (isinstance(module, torch.nn.Linear) and not any(part in fqn for part in FP8_SKIP)
                and (not blocks or fqn.startswith(inside)))
    return chosen


def quantize_fp8(denoiser) -> None:
    """The chosen linear layers as float8 e4m3 weights with per-row scales, their inputs quantized
    the same way on the fly (torchao's dynamic float8), so the matmuls run on fp8 tensor cores."""
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError as exc:
        raise ImportError("--quantize fp8 needs torchao: pip install 'genscore[fp8]'") from exc
    # set_inductor_config would turn on inductor's coordinate-descent autotuning for the whole
    # process: minutes of compile before the first image (412 s for t2i on an H100).
    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
    quantize_(denoiser, config, filter_fn=fp8_filter(denoiser))


@dataclass
class Params:
    steps: int
    height: int | None
    width: int | None
    guidance_scale: float | None
    true_cfg_scale: float
    negative_prompt: str
    extra: dict[str, Any]


def parse_lora(spec: str) -> tuple[str, float]:
    """`PATH_OR_HUB_ID[:SCALE]` -> (where, scale); the scale defaults to 1."""
    where, _, tail = spec.rpartition(":")
    try:
        return (where, float(tail)) if where else (spec, 1.0)
    except ValueError:
        return spec, 1.0  # a colon that is part of the name (tiny:lora)


def check_lora(where: str) -> None:
    """Fail fast, in the parent, on a LoRA that is neither a local file/folder nor a hub id, or that is not
    safetensors (a pickled .bin runs code when loaded)."""
    path = Path(where)
    if not path.exists() and (where.startswith(("/", ".", "~")) or where.count("/") != 1):
        raise ValueError(f"LoRA not found: {where!r} is neither a local file or folder nor a hub id (org/name)")
    if (path.is_file() and path.suffix != ".safetensors") or (path.is_dir() and not any(path.glob("*.safetensors"))):
        raise ValueError(f"LoRA {where}: no .safetensors file there; LoRAs load from safetensors only, never a "
                         "pickled .bin")


def apply_loras(pipe, loras: list[tuple[str, float]]) -> None:
    """Load LoRAs through diffusers' `load_lora_weights`, then fuse them into the weights: the
    denoising loop then runs at the speed of the plain model (and compiles as it does)."""
    if not loras:
        return
    names = [f"lora{i}" for i in range(len(loras))]
    where = ""
    try:
        for name, (where, _) in zip(names, loras):
            pipe.load_lora_weights(where, adapter_name=name, use_safetensors=True)  # never a pickle (hub ids too)
        # a LoRA none of whose keys match is skipped by diffusers with a warning: it is missing here
        pipe.set_adapters(names, [scale for _, scale in loras])
    except Exception as exc:  # noqa: BLE001 - the message says which LoRA and why
        raise ValueError(f"LoRA {where} does not load into {type(pipe).__name__}: {exc}") from exc
    pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
    pipe.unload_lora_weights()  # the LoRA layers go; their product stays in the fused weights


def check_task(pipeline_class: type, task: str) -> set[str]:
    """The call's parameter names, once the pipeline is known to fit the task."""
    accepts = set(inspect.signature(pipeline_class.__call__).parameters)
    name = pipeline_class.__name__
    if task == "edit" and "image" not in accepts:
        raise ValueError(f"{name} takes no input image, so it cannot edit; use --task t2i")
    if task == "t2i" and "image" in accepts and name.endswith(("EditPipeline", "EditPlusPipeline")):
        raise ValueError(f"{name} edits images; use --task edit with a source image column")
    return accepts


# Pipeline class names that take an input image. The parent decides from the name alone (importing
# diffusers there costs 5-15 s per command); each worker then checks the call's real signature.
IMAGE_INPUT_MARKERS = ("Edit", "Img2Img", "InstructPix2Pix", "Kontext", "Inpaint", "Redux", "Variation")


def pipeline_class_name(model: str) -> str | None:
    """The `_class_name` a model folder (or a cached hub id) names in model_index.json; None when
    it cannot be read here without the network (then the worker decides)."""
    index = Path(model) / "model_index.json"
    if not index.exists():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "model_index.json")
        if not isinstance(cached, str):
            return None
        index = Path(cached)
    return json.loads(index.read_text()).get("_class_name")


def check_task_by_name(name: str, task: str) -> None:
    """check_task's verdict from a pipeline's class name, for the parent."""
    takes_image = any(marker in name for marker in IMAGE_INPUT_MARKERS)
    if task == "edit" and not takes_image:
        raise ValueError(f"{name} takes no input image, so it cannot edit; use --task t2i")
    if task == "t2i" and name.endswith(("EditPipeline", "EditPlusPipeline")):
        raise ValueError(f"{name} edits images; use --task edit with a source image column")


class TaskAdapter:
    """Maps a batch of samples onto one call of a pipeline for `task`."""

    def __init__(self, pipe, task: str):
        self.pipe = pipe
        self.task = task
        self.accepts = check_task(type(pipe), task)
        self.max_batch = 1 if type(pipe).__name__ in SINGLE_SAMPLE else None

    def __call__(self, prompts: list[str], images: list | None, generators: list, params: Params,
                 on_step: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
        kwargs: dict[str, Any] = {
            "prompt": prompts, "generator": generators, "num_inference_steps": params.steps, "output_type": "np",
        }
        if on_step is not None and "callback_on_step_end" in self.accepts:
            def step_end(pipe, step: int, timestep, tensors: dict) -> dict:
                on_step(step + 1, params.steps)
                return tensors
            kwargs["callback_on_step_end"] = step_end
        if images is not None:
            kwargs["image"] = images  # always a list: a single image is resized differently
        if params.height and params.width and "height" in self.accepts:
            kwargs.update(height=params.height, width=params.width)
        if "true_cfg_scale" in self.accepts:
            kwargs["true_cfg_scale"] = params.true_cfg_scale
            if params.true_cfg_scale > 1:
                kwargs["negative_prompt"] = [params.negative_prompt] * len(prompts)
        elif "negative_prompt" in self.accepts and params.negative_prompt.strip():
            kwargs["negative_prompt"] = [params.negative_prompt] * len(prompts)
        if params.guidance_scale is not None and "guidance_scale" in self.accepts:
            kwargs["guidance_scale"] = params.guidance_scale
        kwargs.update(params.extra)
        output = self.pipe(**kwargs)
        return list(output.images)
