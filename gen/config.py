"""`python -m gen.run` flags: one field per flag, YAML files hold the same keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from data.config import check_numbers


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class GenConfig:
    task: Literal["t2i", "edit"] = _f("t2i", "text-to-image, or edit (source image + instruction)")
    model: str | None = _f(None, "diffusers pipeline: hub id, local path, or tiny:t2i / tiny:edit (default: the "
                                 "tiny one for the task)")
    input: str = _f("data/samples/prompts.jsonl", "CSV, JSONL, Parquet, datasets folder/name, or image folder")
    id_column: str | None = _f(None, "column with the sample id (default: id/sample_id, else the row index)")
    prompt_column: str | None = _f(None, "column with the prompt or instruction")
    image_column: str | None = _f(None, "column with the source image path (edit)")
    category_column: str | None = _f(None, "column with the category")
    categories: str | None = _f(None, "run only these categories, comma-separated, as the input spells them "
                                      "(e.g. 物理,环境)")
    image_root: str | None = _f(None, "folder that relative image paths resolve under (default: the input's)")
    num_samples: int | None = _f(None, "run only this many samples")
    offset: int = _f(0, "skip this many samples first (seeds keep their input position)")
    output_dir: str = _f("runs/gen", "run folder: images/, manifest/, run.json")

    devices: str | None = _f(None, "comma-separated worker devices, e.g. cpu,cpu or cuda:0,cuda:1")
    gpus: list[int] | None = _f(None, "GPU ids to use (default: every visible GPU)")
    serial_load: bool = _f(False, "load the model on one device at a time (tight host memory)")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = _f("auto", "weights dtype; auto = bf16 on GPU, fp32 on CPU")
    cpu_offload: bool = _f(False, "diffusers model CPU offload (slower, far less GPU memory)")
    batch_size: int = _f(1, "samples per pipeline call (one generator per sample)")
    compile: Literal["auto", "on", "off"] = _f(
        "auto", "regional torch.compile of the transformer's repeated blocks; auto = on for GPUs")
    attention_backend: str | None = _f(None, "attention kernel: fa3 (FlashAttention-3 from vLLM's wheel, Hopper GPUs, "
                                             "Qwen-Image), or a diffusers backend (native = PyTorch's SDPA, "
                                             "_native_cudnn, flash, ...); default: fa3 where it runs and the "
                                             "blocks are compiled, else native")
    cache_threshold: float | None = _f(
        None, "first-block cache: skip the other blocks while the first block's output changes less "
              "than this (lossy; e.g. 0.05; turns --compile auto off). Default off")
    quantize: Literal["none", "fp8"] = _f(
        "none", "fp8 = the image-stream linear layers of the transformer's blocks in float8 with per-row "
                "scales (torchao; lossy; GPUs of compute capability 8.9+, e.g. H100). Default none")
    load_format: Literal["auto", "dummy"] = _f("auto", "weights: auto, or dummy = random weights built "
                                                       "from the folder's configs (benchmarks at real size)")

    steps: int = _f(50, "denoising steps")
    guidance_scale: float | None = _f(None, "guidance scale for pipelines that take one")
    true_cfg_scale: float = _f(4.0, "classifier-free guidance scale (Qwen-Image); <= 1 turns CFG off")
    negative_prompt: str = _f(" ", "negative prompt for CFG")
    height: int | None = _f(None, "output height (default: t2i 1024; edit: the source's aspect ratio at the "
                                  "pipeline's own area, e.g. about 1024x1024 pixels for Qwen-Image-Edit)")
    width: int | None = _f(None, "output width (default: t2i 1024; edit: see --height)")
    area: int | None = _f(None, "edit: about this many output pixels at the source's aspect ratio, sides rounded "
                                "to multiples of 32 (e.g. 262144 for 512x512-sized outputs)")
    seed_start: int = _f(0, "seed = seed_start + index in the input")
    lora: list[str] | None = _f(None, "LoRA weights to fuse into the pipeline: hub id or local path, each "
                                      "optionally PATH:SCALE (default 1), e.g. --lora org/Qwen-Image-Lightning:1.0")
    scheduler: dict | None = _f(None, "scheduler config overrides, e.g. {\"shift\": 3.0}")
    pipeline_kwargs: dict | None = _f(None, "extra keyword arguments for every pipeline call")

    retry_failed: bool = _f(False, "also re-run samples whose last row is failed")
    force: bool = _f(False, "continue a run folder made with another config")
    fail_on_error: bool = _f(False, "exit 1 if any sample failed")
    max_retries: int = _f(1, "retries of a sample whose worker died")
    item_timeout: float | None = _f(None, "seconds a worker may hold work without writing a row before it is "
                                          "stopped as stuck (its samples are retried alone, a stuck one fails); "
                                          "default: 20x the worker's own seconds per row, at least 900")
    load_timeout: float = _f(3600, "seconds a worker may take to load its model (downloads included) before it "
                                   "is stopped as stuck")
    engine: Literal["local", "ray"] = _f("local", "local processes, or ray: a Ray Data actor pool over a cluster")
    ray_address: str = _f("auto", "Ray cluster to join (--engine ray); local = start a private one here")
    progress: Literal["bar", "log", "none"] = _f("bar", "bar for terminals, log for files and CI, none")
    verbose: bool = _f(False, "show the workers' own output (engine and library logs) live instead of keeping it "
                              "in <run>/logs/worker-N.log")

    def __post_init__(self) -> None:
        check_numbers(self, positive=("batch_size", "steps", "height", "width", "num_samples", "item_timeout",
                                      "load_timeout"),
                      non_negative=("offset", "seed_start", "max_retries"))


# Settings that change how a run goes, not what it produces: free to change on resume.
RUNTIME_FIELDS = {
    "devices", "gpus", "serial_load", "cpu_offload", "batch_size", "compile", "attention_backend",
    "num_samples", "offset",
    "output_dir", "retry_failed", "force", "fail_on_error", "max_retries", "item_timeout", "load_timeout", "progress", "engine", "ray_address", "verbose", "categories",
}
