"""Scoring throughput: genscore's `score.run` against raw `vllm.LLM.generate` and the transformers
baseline, on a Qwen3-VL-8B- or 30B-A3B-shaped model (--shape) with random (dummy) weights, in one job.

    python benchmarks/score_bench.py --images 512 --size 512 --hf-images 32

Workload: one image (read from disk through a JSONL manifest for genscore; pre-decoded in memory
for raw vLLM) + a ~150-character prompt per request, exactly 64 output tokens (ignore_eos).
- ours:  score.run end to end (a replica process, streaming input, background decode, shards
         written as results finish); images/s over the span from the first request to the
         last row, plus the wall time including engine start-up.
- raw:   one LLM.generate call over the same prompts with in-memory images, vLLM's own batch limit.
- raw1:  the same with one OpenMP thread (OMP_NUM_THREADS=1), as genscore's GPU replicas run.
- engine: the same engine fed requests rendered beforehand (all added at once, then stepped to the
         end): the GPU's ceiling with the front-end taken away; its render time is reported apart.
- hf:    score.run --backend transformers, batch 4 (what users run today), on --hf-images images.
--distinct-images N makes the requests cycle through N different images (default: all different);
repeats are cheap only with vLLM's processor cache on (--mm-processor-cache-gb 4): compare at equal N.
--quantize fp8 runs every mode with vLLM's float8 weights (lossy); --engine-kwargs '{...}' gives raw and
engine extra vLLM engine arguments, to try a setting before it becomes a score.run flag; --model-runner
v1|v2 sets ours (score.run --model-runner) while raw keeps vLLM's default, as users run it.
--layers N keeps N text layers and N vision blocks (real widths, real processor): the GPU then has
little to do, so one replica shows its front-end's ceiling, and --replicas-per-gpu 2 shows whether
two replicas' front-ends scale on one host without a second GPU.
Each mode also reports gpu_busy: the mean of nvidia-smi's utilization.gpu (share of time a kernel
was running) sampled every 200 ms over the measured span, for the busiest GPU (gpu_busy_each: every
GPU); near 100 means the GPU is the limit. cpu_cores_busy: how many of the host's cores were busy
on average over the span (from /proc/stat), to tell a CPU-bound front-end from a full host.
Start-up: ours reports `startup` (the parent's set-up, the worker's process start, vLLM's import,
`LLM(...)`, the rest of the load, the wait for the first request, the teardown after the last row,
and vLLM's own timed steps); raw reports its `LLM(...)` time and, apart, `python_and_import_s` (a
fresh `python -c "from vllm import LLM"`: `import vllm` alone defers the LLM class's imports), which a
user's script also pays.
Prints one JSON line of figures. Needs a GPU (or --device cpu with a tiny --model for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = ("Describe this picture in detail, paying attention to the colors, the shapes, the objects in "
          "the foreground and the background, and the overall style.")

# Qwen/Qwen3-VL-8B-Instruct's architecture (its config.json), for dummy weights at the real size.
QWEN3_VL_8B = {
    "text_config": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                        num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=262144,
                        rms_norm_eps=1e-6, tie_word_embeddings=False,
                        rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                         "mrope_section": [24, 20, 20], "mrope_interleaved": True}),
    "vision_config": dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                          patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                          deepstack_visual_indexes=[8, 16, 24], hidden_act="gelu_pytorch_tanh"),
}


# Qwen/Qwen3-VL-30B-A3B-Instruct's architecture (the seeds' judge): a mixture of 128 experts, 8 active.
QWEN3_VL_30B_A3B = {
    "text_config": dict(QWEN3_VL_8B["text_config"], hidden_size=2048, intermediate_size=6144, num_hidden_layers=48,
                        num_attention_heads=32, num_key_value_heads=4, num_experts=128, num_experts_per_tok=8,
                        moe_intermediate_size=768, decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True),
    "vision_config": dict(QWEN3_VL_8B["vision_config"], out_hidden_size=2048),
}
SHAPES = {"8b": (QWEN3_VL_8B, "Qwen3VLConfig", "Qwen3VLForConditionalGeneration"),
          "30b-a3b": (QWEN3_VL_30B_A3B, "Qwen3VLMoeConfig", "Qwen3VLMoeForConditionalGeneration")}


def build_model_dir(out: Path, layers: int | None = None, shape: str = "8b") -> Path:
    """A real Qwen3-VL config (8B or 30B-A3B) + the tiny tokenizer and a real-sized processor; no weights.

    layers: keep only this many text layers and vision blocks (same widths, same processor), so
    that the GPU's share of each request is small and the front-end and host become the limit.
    """
    import transformers

    from data import tiny

    spec, config_class, architecture = SHAPES[shape]
    tok = tiny.build_tokenizer(out)
    ids = tiny.token_ids(tok)
    text = dict(spec["text_config"], eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"],
                bos_token_id=ids["bos_token_id"])
    vision = dict(spec["vision_config"])
    if layers:
        # deepstack feeds one text layer per listed vision block, so at most `layers` of them
        text["num_hidden_layers"], vision["depth"] = layers, layers
        vision["deepstack_visual_indexes"] = list(range(layers))[-3:]
    config = getattr(transformers, config_class)(text_config=text, vision_config=vision, tie_word_embeddings=False,
                                                 **tiny.vision_token_ids(ids))
    config.architectures = [architecture]  # else vLLM picks the pooling model
    config.save_pretrained(out)
    tiny.save_qwen3vl_processor(out, tok, min_pixels=65536, max_pixels=16777216)  # Qwen3-VL-8B's own bounds
    return out


def write_images(folder: Path, n: int, size: int, distinct: int | None = None) -> Path:
    """n manifest rows over `distinct` different PNGs (all different by default), reused in turn."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    distinct = min(distinct or n, n)
    # PNG compression of noisy 1024px images takes ~0.2 s each; it releases the GIL, so save in threads.
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        saves = []
        for i in range(distinct):
            base = (ramp[None, :, None] * rng.uniform(0.3, 1.0, 3) + ramp[:, None, None] * rng.uniform(0, 0.7, 3)) / 1.7
            pixels = np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
            saves.append(pool.submit(Image.fromarray(pixels).save, folder / f"{i:05d}.png"))
        for save in saves:
            save.result()  # a failed write stops the bench here
    records = [{"id": f"{i:05d}", "image": f"{i % distinct:05d}.png", "category": "bench"} for i in range(n)]
    (folder / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder / "bench.jsonl"


class Monitor:
    """GPU and host CPU use, sampled every 200 ms and averaged over a span: `gpu_busy` (the busiest
    GPU's mean utilization.gpu; None without a GPU), `gpu_busy_each` (one per GPU) and
    `cpu_cores_busy` (how many of the host's cores were busy on average, from /proc/stat)."""

    def __init__(self):
        self.gpu: list[tuple[float, int, float]] = []  # (time, GPU index, utilization)
        self.cpu: list[tuple[float, int, int]] = []  # (time, busy jiffies, all jiffies)
        self.stopped = threading.Event()
        if Path("/proc/stat").exists():
            threading.Thread(target=self._read_cpu, daemon=True).start()
        try:  # one line per GPU per sample
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=index,utilization.gpu",
                                          "--format=csv,noheader,nounits", "-lms", "200"],
                                         stdout=subprocess.PIPE, text=True)
        except OSError:
            self.proc = None
            return
        threading.Thread(target=self._read_gpu, daemon=True).start()

    def _read_gpu(self) -> None:
        for line in self.proc.stdout:
            index, busy = line.split(",")
            self.gpu.append((time.time(), int(index), float(busy)))

    def _read_cpu(self) -> None:
        while not self.stopped.wait(0.2):
            # user nice system idle iowait irq softirq steal, in jiffies since boot
            jiffies = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
            self.cpu.append((time.time(), sum(jiffies) - jiffies[3] - jiffies[4], sum(jiffies)))

    def span(self, start: float, end: float) -> dict:
        per_gpu: dict[int, list[float]] = {}
        for t, index, busy in self.gpu:
            if start <= t <= end:
                per_gpu.setdefault(index, []).append(busy)
        each = [round(sum(v) / len(v), 1) for _, v in sorted(per_gpu.items())]
        cpu = [sample for sample in self.cpu if start <= sample[0] <= end]
        cores = None
        if len(cpu) >= 2 and cpu[-1][2] > cpu[0][2]:
            cores = round((cpu[-1][1] - cpu[0][1]) / (cpu[-1][2] - cpu[0][2]) * os.cpu_count(), 1)
        return {"gpu_busy": max(each, default=None), "gpu_busy_each": each, "cpu_cores_busy": cores}

    def close(self) -> None:
        self.stopped.set()
        if self.proc:
            self.proc.terminate()  # `nvidia-smi -lms` runs until stopped, past our own exit
            self.proc.wait()


def score_config(model: str, manifest: Path, out: Path, args, **overrides):
    from score.config import ScoreConfig

    values = dict(task="caption", prompt=PROMPT, model=model, input=str(manifest), output_dir=str(out),
                  max_tokens=64, ignore_eos=True, load_format=args.load_format, max_model_len=4096,
                  max_num_seqs=args.max_num_seqs, devices=args.device, progress="none", max_pixels=args.size ** 2,
                  mm_processor_cache_gb=args.mm_processor_cache_gb, quantize=args.quantize,
                  model_runner=args.model_runner)
    values.update(overrides)
    return ScoreConfig(**values)


def run_ours(model: str, manifest: Path, out: Path, args, monitor: Monitor, **overrides) -> dict:
    import pandas as pd

    from score.run import run

    os.environ["VLLM_LOGGING_LEVEL"] = "INFO"  # the worker log then says where its start-up went
    start = time.time()
    code = run(score_config(model, manifest, out, args, **overrides))
    wall = time.time() - start
    frame = pd.read_parquet(out / "manifest")
    ok = frame[frame["status"] == "ok"]
    frame["ended_at"] = frame["started_at"] + frame["duration_s"]
    first, last = frame["started_at"].min(), frame["ended_at"].max()
    span = last - first
    # per replica: its rows over its own span, and when it began and ended relative to the run
    replicas = {}
    for (device, worker), rows in frame.groupby(["device", "worker"]):
        begin, end = rows["started_at"].min(), rows["ended_at"].max()
        replicas[f"{device} #{worker}"] = {"images_per_s": round(len(rows) / (end - begin), 1),
                                           "from_s": round(begin - first, 1), "to_s": round(end - first, 1)}
    return {"exit": code, "ok": len(ok), "images_per_s": len(frame) / span, "wall_s": wall,
            **monitor.span(first, last), "replicas": replicas,
            "startup_s": wall - span, "startup": startup_phases(out / "logs" / "worker-0.log", start, first, last,
                                                                start + wall),
            "prompt_tokens": float(ok["prompt_tokens"].mean()), "output_tokens": float(ok["output_tokens"].mean())}


STEP = re.compile(r"(took|takes|finished in|loaded in) [\d.]+ ?(s|secs|seconds)\b", re.I)
STAMP = re.compile(r"(INFO|WARNING) (\d\d-\d\d \d\d:\d\d:\d\d) \[[^]]*\] (.*)")
READY = re.compile(r"^(\S+) genscore: worker \d+ .*process up in ([\d.]+) s, stage loaded in ([\d.]+) s", re.M)
LOADED = re.compile(r"genscore: vLLM imported in ([\d.]+) s, engine up in ([\d.]+) s")


def startup_phases(log: Path, start: float, first: float, last: float, end: float) -> dict:
    """Where a replica's time outside the scoring span goes, from the first replica's log (our
    worker's own timed lines, and vLLM's timed steps) and the rows' own timestamps:
    - setup_s: the parent, from the run's start to the worker's spawn (config, samples, checks);
    - process_s: the worker's interpreter start and the imports its stage needs to unpickle;
    - vllm_import_s, engine_s: `from vllm import LLM`, then `LLM(...)` and its tokenizer;
    - load_rest_s: the rest of the stage's load;
    - to_first_request_s: from the worker's ready to the first sample taken (the parent's dispatch);
    - teardown_s: from the last row to the end of the run (engine shutdown, sealing, summary)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    steps = [f"{m[2]} {m[3][:140]}" for m in STAMP.finditer(text) if STEP.search(m[3])]
    phases: dict = {"first_request_s": round(first - start, 1), "teardown_s": round(end - last, 1), "vllm_steps": steps}
    ready, loaded = READY.search(text), LOADED.search(text)
    if ready:
        ready_at = datetime.fromisoformat(ready[1]).timestamp()
        process, load = float(ready[2]), float(ready[3])
        phases.update(setup_s=round(ready_at - load - process - start, 1), process_s=process,
                      to_first_request_s=round(first - ready_at, 1))
        if loaded:
            phases.update(vllm_import_s=float(loaded[1]), engine_s=float(loaded[2]),
                          load_rest_s=round(load - float(loaded[1]) - float(loaded[2]), 1))
    return phases


def raw_engine(model: str, manifest: Path, args, as_users_run_it: bool = False):
    """A bare vLLM engine with our engine settings, the in-memory images, and our prompt; with
    `as_users_run_it`, vLLM's own max_num_seqs unless --max-num-seqs names one."""
    from PIL import Image
    from vllm import LLM, SamplingParams

    from score.engine import engine_args, set_cpu_engine
    from score.judge import Judge
    from score.templates import caption_template

    folder = manifest.parent
    images = [Image.open(folder / json.loads(line)["image"]).convert("RGB") for line in manifest.read_text().splitlines()]
    config = score_config(model, manifest, folder, args)
    device = "cuda" if args.device.startswith("cuda") else "cpu"
    if device == "cpu":
        set_cpu_engine(config)  # as our replica does
    start = time.time()
    kwargs = engine_args(config, device, 1, caption_template(PROMPT))
    if as_users_run_it and not args.max_num_seqs:
        kwargs.pop("max_num_seqs", None)
    llm = LLM(**{**kwargs, **args.engine_kwargs})
    startup = time.time() - start
    judge = Judge(config, caption_template(PROMPT), llm.get_tokenizer())
    prompt = judge.prepare({"image_path": str(folder / "00000.png")}).requests[0].prompt  # ours, word for word
    params = SamplingParams(max_tokens=64, min_tokens=64, ignore_eos=True, temperature=0.0)
    requests = [{"prompt": prompt, "multi_modal_data": {"image": [im]}} for im in images]
    return llm, requests, params, startup


def run_raw(model: str, manifest: Path, args, monitor: Monitor, omp_threads: int | None = None) -> dict:
    """One LLM.generate call as users run it; omp_threads=1: with one OpenMP thread, as our replicas run."""
    if omp_threads:  # the engine core process is spawned after this, with this environment
        import torch

        os.environ["OMP_NUM_THREADS"] = str(omp_threads)
        torch.set_num_threads(omp_threads)
    llm, requests, params, startup = raw_engine(model, manifest, args, as_users_run_it=True)
    t0 = time.time()
    outputs = llm.generate(requests, params, use_tqdm=False)
    elapsed = time.time() - t0
    llm.llm_engine.engine_core.shutdown()
    return {"images_per_s": len(outputs) / elapsed, "startup_s": startup, **monitor.span(t0, t0 + elapsed),
            "prompt_tokens": sum(len(o.prompt_token_ids) for o in outputs) / len(outputs)}


def run_engine_only(model: str, manifest: Path, args, monitor: Monitor) -> dict:
    llm, requests, params, startup = raw_engine(model, manifest, args)
    engine = llm.llm_engine
    t0 = time.time()
    rendered = [engine.renderer.render_cmpl([r])[0] for r in requests]
    t1 = time.time()
    for i, engine_input in enumerate(rendered):
        engine.add_request(str(i), engine_input, params)
    done = 0
    while engine.has_unfinished_requests():
        done += sum(o.finished for o in engine.step())
    t2 = time.time()
    engine.engine_core.shutdown()
    return {"images_per_s": done / (t2 - t1), "render_ms_per_image": 1000 * (t1 - t0) / len(requests),
            "startup_s": startup, **monitor.span(t1, t2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--hf-images", type=int, default=32)
    parser.add_argument("--max-num-seqs", type=int, default=None,
                        help="all modes (default: score.run's own for ours and engine, vLLM's for raw)")
    parser.add_argument("--shape", default="8b", choices=sorted(SHAPES),
                        help="the bench's own model: Qwen3-VL-8B or Qwen3-VL-30B-A3B (the seeds' judge)")
    parser.add_argument("--mm-processor-cache-gb", type=float, default=0,
                        help="score.run's flag, also given to raw and engine (>0: one rendering thread in ours)")
    parser.add_argument("--quantize", default="none", choices=["none", "fp8"],
                        help="score.run's flag, also given to raw and engine (fp8: lossy, GPUs only)")
    parser.add_argument("--engine-kwargs", type=json.loads, default={},
                        help="raw and engine modes: extra vLLM engine arguments as JSON, to try a setting before "
                             "making it a score.run flag, e.g. '{\"max_num_batched_tokens\": 32768}'")
    parser.add_argument("--distinct-images", type=int, default=None,
                        help="how many different images the requests cycle through (default: all different); "
                             "1 shows what vLLM's prefix and multimodal caches make of one image repeated")
    parser.add_argument("--model", default=None, help="model folder (default: Qwen3-VL-8B shape, dummy weights)")
    parser.add_argument("--layers", type=int, default=None,
                        help="keep only N text layers and N vision blocks of the 8B shape (default: all 36 / 27): "
                             "the GPU's share then is small, so the front-end and host are the limit")
    parser.add_argument("--load-format", default="dummy")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--modes", default="ours,raw,hf")
    parser.add_argument("--replicas", type=int, default=1, help="ours only: replicas (one GPU each)")
    parser.add_argument("--replicas-per-gpu", type=int, default=1, help="ours only: replicas sharing each GPU")
    parser.add_argument("--model-runner", default="auto", choices=["auto", "v1", "v2"],
                        help="ours only: vLLM's model runner (raw and engine run vLLM's default, as users do)")
    args = parser.parse_args()
    if args.model and args.layers:
        parser.error("--layers shapes the bench's own model; it cannot change a --model folder")
    work = Path(tempfile.mkdtemp(prefix="score-bench-"))
    # A fixed folder, not a temporary one: vLLM's compile cache is keyed by the model path, so a
    # second run then measures a warm start, as a user's second run on the same model would.
    shape = f"qwen3-vl-{args.shape}-shape" + (f"-{args.layers}-layers" if args.layers else "")
    model = args.model or str(build_model_dir(Path.home() / ".cache" / "genscore-bench" / shape, args.layers,
                                              args.shape))
    manifest = write_images(work / "images", args.images, args.size, args.distinct_images)
    result: dict = {"workload": f"score {args.images} x {args.size}px, 64 output tokens",
                    "distinct_images": args.distinct_images or args.images, "model": args.model or shape,
                    "quantize": args.quantize, "engine_kwargs": args.engine_kwargs, "model_runner": args.model_runner}
    modes = args.modes.split(",")
    monitor = Monitor()
    try:
        run_modes(modes, model, manifest, work, args, monitor, result)
    finally:
        monitor.close()
    print(json.dumps(result), flush=True)
    shutil.rmtree(work, ignore_errors=True)


def run_modes(modes: list[str], model: str, manifest: Path, work: Path, args, monitor: Monitor, result: dict) -> None:
    if "ours" in modes:
        overrides = {"devices": None, "replicas": args.replicas} if args.replicas > 1 else {}
        overrides["replicas_per_gpu"] = args.replicas_per_gpu
        result["ours"] = run_ours(model, manifest, work / "ours", args, monitor, **overrides)
    if "raw" in modes:
        result["raw_vllm"] = run_raw(model, manifest, args, monitor)
        # a user's script also starts Python and imports vLLM's LLM before LLM(...): timed apart, warm
        started = time.time()
        subprocess.run([sys.executable, "-c", "from vllm import LLM"], check=True, capture_output=True)
        result["raw_vllm"]["python_and_import_s"] = round(time.time() - started, 1)
    if "raw1" in modes:  # last among the raw modes: it sets this process's OpenMP threads to 1
        result["raw_vllm_omp1"] = run_raw(model, manifest, args, monitor, omp_threads=1)
    if "engine" in modes:
        result["engine_only"] = run_engine_only(model, manifest, args, monitor)
    if "hf" in modes:
        hf_manifest = manifest.with_name("hf.jsonl")
        hf_manifest.write_text("".join(manifest.read_text().splitlines(keepends=True)[: args.hf_images]))
        result["transformers"] = run_ours(model, hf_manifest, work / "hf", args, monitor, backend="transformers",
                                          batch_size=4)
    for raw in ("raw_vllm", "raw_vllm_omp1"):
        if "ours" in result and raw in result:
            result[f"ours_vs_{raw.removeprefix('raw_vllm').strip('_') or 'raw'}"] = \
                result["ours"]["images_per_s"] / result[raw]["images_per_s"]
    if "ours" in result and "transformers" in result:
        result["ours_vs_transformers"] = result["ours"]["images_per_s"] / result["transformers"]["images_per_s"]


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
