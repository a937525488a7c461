"""`python -m score.run` flags: one field per flag, YAML files hold the same keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class ScoreConfig:
    task: Literal["auto", "caption", "edit", "t2i", "custom"] = _f(
        "auto", "what to ask: auto = edit if inputs have source images, else t2i")
    model: str = _f("tiny:qwen3vl", "Qwen3-VL judge: hub id, local path, or tiny:qwen3vl")
    input: str | None = _f(None, "gen run folder, Parquet/CSV/JSONL, image folder or layout folder "
                                 "(default: the newest run under runs/)")
    output_dir: str | None = _f(None, "score folder (default: <input run>/scores, or <input>-scores)")
    gen_config: str | None = _f(None, "a gen YAML to run first; its output is then scored (two-stage flow)")
    template_file: str | None = _f(None, "custom template YAML (task custom)")
    prompt: str | None = _f(None, "caption instruction (task caption)")
    id_column: str | None = _f(None, "column with the sample id")
    image_column: str | None = _f(None, "column with the image to judge")
    source_column: str | None = _f(None, "column with the source image (edit)")
    prompt_column: str | None = _f(None, "column with the prompt or instruction")
    category_column: str | None = _f(None, "column with the category")
    image_root: str | None = _f(None, "folder that relative image paths resolve under")
    num_samples: int | None = _f(None, "score only this many samples")
    offset: int = _f(0, "skip this many samples first")

    backend: Literal["vllm", "transformers"] = _f("vllm", "vllm (fast), or transformers generate (baseline)")
    replicas: int | None = _f(None, "judge replicas (default: visible GPUs / tp)")
    tp: int = _f(1, "tensor-parallel GPUs per replica")
    replicas_per_gpu: int = _f(1, "replicas sharing each GPU (or --tp group), each with its own front-end "
                                  "process: more image preprocessing in parallel when the CPU, not the GPU, "
                                  "is the limit; they split --gpu-memory-utilization")
    gpus: list[int] | None = _f(None, "GPU ids to use (default: every visible GPU)")
    devices: str | None = _f(None, "comma-separated replica devices, e.g. cpu,cpu or cuda:0+1,cuda:2+3")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = _f("auto", "weights dtype; auto = bf16 on GPU, fp32 on CPU")
    quantize: Literal["none", "fp8"] = _f(
        "none", "fp8 = vLLM's dynamic float8 weights and activations for the judge's linear layers (lossy: "
                "answers may change; GPUs of compute capability 8.9+, e.g. H100). Default none")
    max_pixels: int = _f(1024 * 1024, "image pixel cap: larger images are downscaled before the processor")
    min_pixels: int = _f(32 * 32, "smallest image size in pixels (smaller ones are upscaled)")
    max_model_len: int = _f(8192, "vLLM context length")
    max_num_seqs: int | None = _f(None, "vLLM concurrent sequences per replica (default: vLLM's, 1024 on "
                                        "an H100)")
    gpu_memory_utilization: float = _f(0.9, "vLLM share of GPU memory")
    enforce_eager: bool = _f(False, "skip CUDA graphs / torch.compile (faster start, slower run)")
    max_tokens: int = _f(512, "output tokens per answer")
    temperature: float = _f(0.0, "sampling temperature (0 = greedy)")
    window: int | None = _f(None, "samples in flight per replica (default: 2 x max_num_seqs, or 1024)")
    preprocess_threads: int = _f(8, "image decode and render threads per replica")
    mm_processor_cache_gb: float = _f(0, "vLLM's cache of processed images, GiB. 0 (default): the preprocess "
                                         "threads render in parallel; > 0 reuses a repeated image's features "
                                         "but renders on one thread (the cache is not thread-safe)")
    batch_size: int = _f(4, "transformers backend: requests per generate call")
    kv_cache_gb: int = _f(1, "CPU replicas: KV cache size in GiB")
    load_format: str = _f("auto", "weights: auto (safetensors only, never pickle), or dummy for random weights "
                                          "at real size (benchmarks)")
    ignore_eos: bool = _f(False, "always generate max_tokens (benchmarks: a fixed output length)")

    print_samples: bool = _f(False, "print [Sample N] Score: x | Response: ... lines as they finish")
    write_txt: bool = _f(False, "caption: also write <image name>.txt beside each image")
    retry_failed: bool = _f(False, "also re-score samples whose last row is failed")
    force: bool = _f(False, "continue a score folder made with another config")
    fail_on_error: bool = _f(False, "exit 1 if any sample failed")
    max_retries: int = _f(1, "retries of a sample whose replica died")
    engine: Literal["local", "ray"] = _f("local", "local processes, or ray: a Ray Data actor pool over a cluster")
    ray_address: str = _f("auto", "Ray cluster to join (--engine ray); local = start a private one here")
    progress: Literal["bar", "log", "none"] = _f("bar", "bar for terminals, log for files and CI, none")


RUNTIME_FIELDS = {
    "output_dir", "gen_config", "num_samples", "offset", "backend", "replicas", "tp", "gpus", "devices",
    "replicas_per_gpu",
    "max_model_len", "max_num_seqs", "gpu_memory_utilization", "enforce_eager", "window",
    "preprocess_threads", "mm_processor_cache_gb", "batch_size", "kv_cache_gb", "print_samples", "write_txt",
    "retry_failed", "force", "fail_on_error", "max_retries", "progress", "engine", "ray_address",
}
