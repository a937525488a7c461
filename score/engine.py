"""The vLLM judge replica: one engine per process, kept full by a stream of samples.

Continuous batching: samples are pulled from the feed into a bounded window, decoded, resized
and rendered (vLLM's HF processor: pixels to patches, prompt to tokens) on background threads,
and their requests added to the engine as soon as they are ready; `engine.step()` runs one
scheduler step and returns what finished, and each sample's row is yielded the moment its last
answer arrives, never waiting for a chunk. Rendering off the stepping thread matters: done
inline it stalls the loop that feeds the GPU for several milliseconds per image.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from data.models import resolve_model
from pool.stage import Feed
from score.config import ScoreConfig
from score.judge import Judge, Prepared, Request, engine_dtype, processor_kwargs
from score.model_info import adapter_rank
from score.stage import ScoreStage


# vLLM's default max_num_seqs (1024 on an H100/H200) is above its largest CUDA-graph batch (512), so
# larger decode batches run eagerly and the engine turns CPU-bound: the 30B-A3B judge did 47 images/s
# at 1024, 74 at 512, 79 at 256 (engine alone, one H200; BENCHMARKS.md). GPUs default to 256.
GPU_MAX_NUM_SEQS = 256


def max_num_seqs(config: ScoreConfig, device: str) -> int | None:
    return config.max_num_seqs or (GPU_MAX_NUM_SEQS if device == "cuda" else None)


def model_runner(config: ScoreConfig, device: str, template) -> str:
    """The vLLM model runner of a replica: the flag, else v2 on GPUs where the judge samples. v1 draws each
    seeded request's noise with a kernel launch of its own (a Python loop over the batch every step), which
    left the GPU idle a quarter of the time on the editscore protocol; v2 draws them in one kernel: 1.28x
    the output tokens/s at 93.5% busy (BENCHMARKS.md). Greedy judges: vLLM's own choice (no difference)."""
    if config.model_runner == "v2" and device != "cuda":
        raise ValueError("--model-runner v2 needs a GPU: vLLM's v2 runner samples with Triton kernels")
    if config.model_runner != "auto" or device != "cuda":
        return config.model_runner
    return "v2" if Judge(config, template, tokenizer=None).sampling()["temperature"] > 0 else "auto"


def engine_args(config: ScoreConfig, device: str, tp: int, template) -> dict:
    model = resolve_model(config.model)
    lora = resolve_model(config.judge_lora) if config.judge_lora else None
    return dict(
        model=model, dtype=engine_dtype(config, model, device), tensor_parallel_size=tp,
        max_model_len=config.max_model_len,
        **({"enable_lora": True, "max_lora_rank": adapter_rank(lora), "max_loras": 1} if lora else {}),
        **({"max_num_seqs": max_num_seqs(config, device)} if max_num_seqs(config, device) else {}),
        enforce_eager=device == "cpu" if config.enforce_eager is None else config.enforce_eager, seed=0,
        **({"quantization": "fp8"} if config.quantize == "fp8" else {}),
        limit_mm_per_prompt={"image": 2, "video": 0}, mm_processor_cache_gb=config.mm_processor_cache_gb,
        mm_processor_kwargs=processor_kwargs(config, model, template),
        # no free whitespace in the JSON: even a random tiny model then emits valid JSON.
        structured_outputs_config={"backend": config.structured_backend, "disable_any_whitespace": True},
        # "auto" would fall back to pickled .bin/.pt weights; we load safetensors only.
        load_format="safetensors" if config.load_format == "auto" else config.load_format,
        **({"gpu_memory_utilization": config.gpu_memory_utilization} if device == "cuda" else {}),
    )


def set_cpu_engine(config: ScoreConfig) -> None:
    """vLLM's CPU backend sizes its KV cache from the environment, not from an engine argument.
    Its engine core runs in this process: a replica is already its own process, and vLLM's split
    into a front-end, an engine-core and a worker process costs two more interpreters importing
    torch and vLLM, about 30 s of every start on a 2-core machine. The environment can still ask
    for the split (VLLM_ENABLE_V1_MULTIPROCESSING=1); GPU replicas keep it, where it overlaps
    rendering with the GPU's work."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_gb))
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


class VLLMStage(ScoreStage):
    def load(self, device: str) -> None:
        config = self.config
        if device == "cpu":
            set_cpu_engine(config)
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # our progress, not vLLM's INFO stream
        runner = model_runner(config, device, self.template)
        if runner != "auto":  # read by the engine core process that LLM(...) spawns
            os.environ["VLLM_USE_V2_MODEL_RUNNER"] = "1" if runner == "v2" else "0"
        started = time.time()
        from vllm import LLM

        imported = time.time()
        tp = max(1, len([d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d])) if device == "cuda" else 1
        self.llm = LLM(**engine_args(config, device, tp, self.template))
        self.engine = self.llm.llm_engine
        self.tokenizer = self.llm.get_tokenizer()
        self.lora = self._lora_request()
        scheduler = self.engine.vllm_config.scheduler_config
        print(f"genscore: vLLM imported in {imported - started:.1f} s, engine up in {time.time() - imported:.1f} s "
              f"(model runner {'v2' if getattr(self.engine.vllm_config, 'use_v2_model_runner', False) else 'v1'}, "
              f"async scheduling {'on' if getattr(scheduler, 'async_scheduling', False) else 'off'}, "
              f"max_num_batched_tokens {scheduler.max_num_batched_tokens}, max_model_len {self.config.max_model_len})",
              file=sys.stderr, flush=True)
        self.window = config.window or 2 * (max_num_seqs(config, device) or 512)
        self.prefetch = self.window
        self.threads = ThreadPoolExecutor(config.preprocess_threads, thread_name_prefix="decode")
        # vLLM's processor cache is not thread-safe, and mirrors the engine's: with it on, one render
        # at a time, queued in render order. Without it the threads render side by side, as vLLM's
        # own API server does with --renderer-num-workers.
        cached = config.mm_processor_cache_gb > 0
        self.render_lock = threading.Lock() if cached else contextlib.nullcontext()
        self.ready: queue.SimpleQueue[Prepared] = queue.SimpleQueue()  # rendered, in render order

    def close(self) -> None:
        """Stop the engine's processes now rather than at interpreter exit."""
        self.threads.shutdown(wait=False)
        self.engine.engine_core.shutdown()

    def _lora_request(self):
        """The judge's LoRA, sent with every request (vLLM applies it per request)."""
        if not self.config.judge_lora:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest("judge", 1, resolve_model(self.config.judge_lora))

    def _params(self, judge: Judge, request: Request):
        """The protocol's sampling (with the flags set on top), its grammar under schema decoding."""
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = StructuredOutputsParams(json=request.schema) if request.schema else None
        fixed = self.config.ignore_eos  # benchmarks: every answer exactly max_tokens long
        sampling = {**judge.sampling(), "seed": request.seed}
        return SamplingParams(**sampling, structured_outputs=structured, ignore_eos=fixed,
                              min_tokens=sampling["max_tokens"] if fixed else 0)

    def rows(self, feed: Feed) -> Iterator[dict]:
        running: dict[str, _Running] = {}  # engine request id -> the sample it belongs to
        in_flight = 0                      # samples with requests in the engine
        preparing = 0                      # samples on the threads or waiting in self.ready
        alias: dict[str, str] = {}          # internal request id -> ours
        rid = 0
        while True:
            room = self.window - in_flight - preparing
            if room > 0 and not feed.exhausted:
                for item in feed.take(room, block=not in_flight and not preparing):
                    self.threads.submit(self._prepare, item)
                    preparing += 1
            while preparing and (not self.ready.empty() or not in_flight):
                prepared = self.ready.get()  # blocks only while the engine has nothing to do
                preparing -= 1
                judge = self.judge(prepared.item["task"])
                if prepared.error:
                    yield judge.failed(prepared.item, prepared.error, prepared.started_at)
                    continue
                state = _Running(prepared, judge)
                try:
                    rid = self._add(state, running, alias, rid)
                except ValueError as exc:  # e.g. a prompt longer than max_model_len
                    yield self._drop(state, running, judge.failed(prepared.item, f"rejected by vLLM: {exc}",
                                                                  prepared.started_at))
                    continue
                in_flight += 1
            if not in_flight:
                if feed.exhausted and not preparing:
                    return
                continue
            for output in self.engine.step():
                if not output.finished:
                    continue
                request_id = alias.pop(output.request_id, output.request_id)
                state = running.pop(request_id)
                state.record(request_id, output)
                if not state.pending and state.judge.ask_again(state.prepared, state.texts):
                    rid = self._add(state, running, alias, rid)  # the protocol asks both questions again
                elif not state.pending:
                    in_flight -= 1
                    yield state.finish()

    def _add(self, state: "_Running", running: dict, alias: dict, rid: int) -> int:
        """Add a sample's requests to the engine; returns the last request id used."""
        for request, engine_input in zip(state.prepared.requests, state.prepared.engine_inputs):
            rid += 1
            running[str(rid)] = state
            state.pending[str(rid)] = request.question
            internal = self.engine.add_request(str(rid), engine_input, self._params(state.judge, request),
                                               lora_request=self.lora)
            if isinstance(internal, str) and internal != str(rid):
                alias[internal] = str(rid)  # some vLLM versions report the internal id
        return rid

    def _prepare(self, item: dict) -> None:
        """Decode and render one sample (on a thread), then queue it for the engine loop."""
        try:
            prepared = self.judge(item["task"]).prepare(item)
        except Exception as exc:  # noqa: BLE001 - e.g. a bad template: the sample must still come back
            prepared = Prepared(item, error=f"{type(exc).__name__}: {exc}")
        prompts = [{"prompt": r.prompt, "multi_modal_data": {"image": r.images}} for r in prepared.requests]
        with self.render_lock:
            if not prepared.error:
                try:
                    prepared.engine_inputs = self.engine.renderer.render_cmpl(prompts)
                except Exception as exc:  # noqa: BLE001 - an input the processor refuses: a failed row
                    prepared.error = f"{type(exc).__name__}: {exc}"
            self.ready.put(prepared)

    def _drop(self, state: "_Running", running: dict, row: dict) -> dict:
        """Abort a sample's requests that did get in, so a half-added sample leaves no work behind."""
        added = list(state.pending)
        for request_id in added:
            running.pop(request_id, None)
        if added:
            self.engine.abort_request(added)
        return row


class _Running:
    """A sample's requests in the engine, and its answers so far."""

    def __init__(self, prepared: Prepared, judge: Judge):
        self.prepared, self.judge = prepared, judge
        self.pending: dict[str, str] = {}  # engine request id -> question name
        self.texts: dict[str, str] = {}
        self.prompt_tokens = 0
        self.output_tokens = 0

    def record(self, request_id: str, output) -> None:
        self.texts[self.pending.pop(request_id)] = output.outputs[0].text
        self.prompt_tokens += len(output.prompt_token_ids or [])
        self.output_tokens += len(output.outputs[0].token_ids)

    def finish(self) -> dict:
        return self.judge.finish(self.prepared, self.texts, self.prompt_tokens, self.output_tokens)
