"""`python -m score.run` flags: one field per flag, YAML files hold the same keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from data.config import check_numbers


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class ScoreConfig:
    task: Literal["auto", "caption", "edit", "t2i", "custom"] = _f(
        "auto", "what to ask: auto = edit if inputs have source images, else t2i")
    model: str = _f("tiny:qwen3vl", "judge: any vLLM multimodal chat model by hub id or local path (Qwen3-VL, "
                                    "Qwen2.5-VL, ...), or tiny:qwen3vl / tiny:qwen25vl")
    input: str | None = _f(None, "gen run folder, Parquet/CSV/JSONL, image folder or layout folder "
                                 "(default: the newest run under runs/)")
    output_dir: str | None = _f(None, "score folder (default: <input run>/scores, or <input>-scores)")
    gen_config: str | None = _f(None, "a gen YAML to run first; its output is then scored (two-stage flow)")
    gen_devices: str | None = _f(None, "with --gen-config: run generation on these devices (e.g. cuda:0) while "
                                       "scoring follows it on --devices/--gpus; default: generate, then score")
    follow: bool = _f(False, "score a gen run's rows as they land, until the run is complete")
    follow_timeout_s: float = _f(1800, "with --follow: give up after this long without a new row from an "
                                       "unfinished run")
    protocol: Literal["viescore", "editscore", "genscore"] = _f(
        "viescore", "judging protocol for edit and t2i: viescore (VIEScore as GEdit-Bench runs it), editscore "
                    "(EditScore's 0-25 scale, sampled passes; edits only), genscore (genscore's own v1 prompts)")
    num_pass: int = _f(1, "editscore: passes per sample (temperature 0.7, seeds 42, 43, ...), averaged")
    reduction: Literal["average_last", "average_first"] = _f(
        "average_last", "editscore: overall = mean of the passes' overall scores (average_last), or from the "
                        "averaged prompt-following and quality scores (average_first)")
    decoding: Literal["auto", "free", "schema"] = _f(
        "auto", "how answers are decoded: free = the judge writes free text, read by the protocol's reference parser "
                "(VIEScore's mllm_output_to_dict, EditScore's json_repair parser), as published; schema = forced into "
                "the question's JSON schema by vLLM's grammar engine (our own templates; tiny random judges). auto: "
                "free for viescore and editscore, schema otherwise and for the tiny random judges tiny:qwen3vl / "
                "tiny:qwen25vl")
    reask: bool = _f(True, "ask an unreadable answer's questions again as the protocol does (--no-reask: once "
                           "only, e.g. a throughput benchmark with random weights)")
    judge_lora: str | None = _f(None, "a LoRA adapter of the judge (folder or hub id, safetensors), served through "
                                      "vLLM's LoRA support, e.g. EditScore's released judges")
    template_file: str | None = _f(None, "custom template YAML (task custom)")
    prompt: str | None = _f(None, "caption instruction (task caption)")
    id_column: str | None = _f(None, "column with the sample id")
    image_column: str | None = _f(None, "column with the image to judge")
    source_column: str | None = _f(None, "column with the source image (edit)")
    prompt_column: str | None = _f(None, "column with the prompt or instruction")
    category_column: str | None = _f(None, "column with the category")
    categories: str | None = _f(None, "score only these categories, comma-separated, as the input spells them")
    image_root: str | None = _f(None, "folder that relative image paths resolve under")
    num_samples: int | None = _f(None, "score only this many samples")
    offset: int = _f(0, "skip this many samples first")

    backend: Literal["vllm", "transformers", "openai"] = _f(
        "vllm", "vllm replicas we load (fast), transformers generate (baseline), or openai: a judge behind an "
                "OpenAI-compatible chat-completions API (OpenAI, Azure, vllm serve, SGLang) at --api-base")
    api_base: str | None = _f(None, "--backend openai: the API's base URL (default https://api.openai.com/v1; "
                                    "e.g. http://host:8000/v1 for vllm serve)")
    api_key_env: str | None = _f(None, "--backend openai: the environment variable holding the API key (default "
                                       "OPENAI_API_KEY; none needed for a local server). The key is never written")
    concurrency: int = _f(32, "--backend openai: requests in flight at once")
    request_timeout: float = _f(120.0, "--backend openai: seconds to wait for one answer before retrying it")
    api_retries: int = _f(5, "--backend openai: retries of a request on 408/429/5xx/timeouts (exponential backoff "
                             "with jitter, honouring Retry-After) before the sample is a failed row")
    api_image_format: Literal["png", "jpeg"] = _f(
        "png", "--backend openai: how images are sent (data URLs): png, lossless; jpeg, as GEdit-Bench's and "
               "EditScore's GPT paths encode them (PIL's default quality)")
    api_layout: Literal["reference", "images-first"] = _f(
        "reference", "--backend openai: message layout. reference: the text, then the images, as the protocols' "
                     "GPT paths send them; images-first: as the protocols ask judges they load (a Qwen judge "
                     "behind vllm serve)")
    price_in: float | None = _f(None, "--backend openai: price per million prompt tokens, for the run's cost")
    price_out: float | None = _f(None, "--backend openai: price per million completion tokens, for the run's cost")
    replicas: int | None = _f(None, "judge replicas (default: visible GPUs / tp)")
    tp: int = _f(1, "tensor-parallel GPUs per replica")
    replicas_per_gpu: int = _f(1, "replicas sharing each GPU (or --tp group), each with its own front-end "
                                  "process: more image preprocessing in parallel when the CPU, not the GPU, "
                                  "is the limit; they split --gpu-memory-utilization")
    gpus: list[int] | None = _f(None, "GPU ids to use (default: every visible GPU)")
    devices: str | None = _f(None, "comma-separated replica devices, e.g. cpu,cpu or cuda:0+1,cuda:2+3")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = _f(
        "auto", "weights dtype; auto = the checkpoint's own (its config's torch_dtype: fp16 for "
                "Qwen2.5-VL-72B-Instruct-AWQ, bf16 for Qwen3-VL), else bf16 on GPU and fp32 on CPU")
    quantize: Literal["none", "fp8"] = _f(
        "none", "fp8 = vLLM's dynamic float8 weights and activations for the judge's linear layers (lossy: "
                "answers may change; GPUs of compute capability 8.9+, e.g. H100). Default none")
    max_pixels: int | None = _f(None, "largest image in pixels the judge sees (larger ones are downscaled first). "
                                      "Default: the protocol's own (viescore, editscore: qwen-vl-utils' 12,845,056 "
                                      "at sides of multiples of 28, then the judge's processor's own range), else 1 MP")
    min_pixels: int | None = _f(None, "smallest image in pixels (smaller ones are upscaled). Default: the protocol's "
                                      "own (3,136 for viescore and editscore), else 1,024")
    mm_processor_kwargs: str | None = _f(
        None, "JSON passed to the model's HF processor; default: its own settings for the protocols; Qwen-VL "
              "processors get --min/--max-pixels as `size` when those are given, or for other templates")
    max_model_len: int | None = _f(None, "vLLM context length (default: the judge's own limit, at most 8192; a "
                                         "larger value is lowered to the judge's limit)")
    max_num_seqs: int | None = _f(None, "vLLM concurrent sequences per replica (default on GPUs: 256, within "
                                        "vLLM's CUDA-graph batch sizes; on CPU: vLLM's)")
    gpu_memory_utilization: float = _f(0.9, "vLLM share of GPU memory")
    structured_backend: Literal["guidance", "xgrammar"] = _f(
        "guidance", "vLLM's engine for schema-bound answers (both enforce the same JSON schema; part of the "
                    "run's identity, since their token masks may differ)")
    model_runner: Literal["auto", "v1", "v2"] = _f(
        "auto", "vLLM's model runner on GPUs: auto = v2 where the judge samples (editscore: v2 draws every seeded "
                "request's noise in one kernel, v1 loops over them), else vLLM's own choice (v1 for Qwen-VL in "
                "vLLM 0.24). Part of the run's identity: the two draw different samples from one seed. CPU: v1")
    enforce_eager: bool | None = _f(None, "skip CUDA graphs / torch.compile (faster start, slower run); default: "
                                          "on CPU, where vLLM compiles afresh at every start, off on GPUs")
    max_tokens: int | None = _f(None, "output tokens per answer (default: the protocol's own: 512 for viescore and "
                                      "editscore on judges we load, 1400 for viescore's GPT judges; 512 otherwise)")
    max_reasoning_chars: int | None = _f(
        None, "--decoding schema: cap on an answer's reasoning string, so that it closes within --max-tokens "
              "instead of being cut off (default: max tokens - 32; 0 = no cap)")
    temperature: float | None = _f(None, "sampling temperature (default: the protocol's own: 0, greedy, for viescore; "
                                         "0.7 for editscore; the API's default for GPT judges)")
    window: int | None = _f(None, "samples in flight per replica (default: 2 x max_num_seqs, or 1024)")
    preprocess_threads: int = _f(8, "image decode and render threads per replica")
    mm_processor_cache_gb: float = _f(0, "vLLM's cache of processed images, GiB. 0 (default): the preprocess "
                                         "threads render in parallel; > 0 reuses a repeated image's features "
                                         "but renders on one thread (the cache is not thread-safe)")
    batch_size: int = _f(4, "transformers backend: requests per generate call")
    kv_cache_gb: int = _f(1, "CPU replicas: KV cache size in GiB")
    load_format: Literal["auto", "safetensors", "fastsafetensors", "runai_streamer", "dummy"] = _f(
        "auto", "weights: auto = safetensors (never pickled .bin/.pt), vLLM's other safetensors readers, or dummy "
                "for random weights at real size (benchmarks)")
    ignore_eos: bool = _f(False, "always generate max_tokens (benchmarks: a fixed output length)")

    print_prompts: bool = _f(False, "print the exact messages of each question for the first sample, then exit "
                                    "(the judge is not loaded)")
    print_samples: bool = _f(False, "print [Sample N] Score: x | Response: ... lines as they finish")
    write_txt: bool = _f(False, "caption: also write <image name>.txt beside each image")
    retry_failed: bool = _f(False, "also re-score samples whose last row is failed")
    force: bool = _f(False, "continue a score folder made with another config")
    fail_on_error: bool = _f(False, "exit 1 if any sample failed")
    max_retries: int = _f(1, "retries of a sample whose replica died")
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
        check_numbers(self, positive=("num_pass", "replicas", "tp", "replicas_per_gpu", "max_pixels", "min_pixels",
                                      "max_model_len", "max_num_seqs", "max_tokens", "window", "preprocess_threads",
                                      "batch_size", "kv_cache_gb", "concurrency", "request_timeout", "num_samples",
                                      "follow_timeout_s", "item_timeout", "load_timeout"),
                      non_negative=("offset", "temperature", "max_reasoning_chars", "mm_processor_cache_gb",
                                    "max_retries", "api_retries", "price_in", "price_out"),
                      fraction=("gpu_memory_utilization",))
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(f"--min-pixels {self.min_pixels} is above --max-pixels {self.max_pixels}")


RUNTIME_FIELDS = {
    "output_dir", "gen_config", "gen_devices", "follow", "follow_timeout_s", "num_samples", "offset", "replicas", "tp", "gpus", "devices",
    "api_base", "api_key_env", "concurrency", "request_timeout", "api_retries", "price_in", "price_out",
    "replicas_per_gpu",
    "max_model_len", "max_num_seqs", "gpu_memory_utilization", "enforce_eager", "window",
    "preprocess_threads", "mm_processor_cache_gb", "batch_size", "kv_cache_gb", "print_samples", "write_txt",
    "retry_failed", "force", "print_prompts", "fail_on_error", "max_retries", "item_timeout", "load_timeout", "progress", "engine", "ray_address", "verbose", "categories",
}
