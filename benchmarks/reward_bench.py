"""The judge as an RL reward service: our `score.serve` against EditScore 0.2's reward server, on the same
edit pairs and model shape (dummy weights), in one job.

    python benchmarks/reward_bench.py --prompts 48 --edits 12 --size 512 --clients 64 \
        --modes editscore_server,serve_single,serve_batch,file_batch

Workload (EditScore's RL config): `--prompts` x `--edits` items per step, each a distinct edited PNG of
`--size`² judged against its prompt's distinct source PNG and instruction; protocol editscore, 1 pass.
Random weights never write a readable answer, so every answer is forced to EditScore's own mean length in its
run (--ignore-eos, one ask): equal work on both sides.
- editscore_server: EditScore's `reward_server.py` loop (examples/OmniGen2-RL): one `EditScore` with its
  server config's engine settings (max_num_seqs 64, max_model_len 1536, max_num_batched_tokens 98304,
  temperature 0.7), one worker thread taking one request at a time from a queue and running its samples
  through `batch_evaluate`; `--clients` client threads send single-sample requests. In process, without its
  Flask layer (which only adds time to its side); its `LLM` gets load_format="dummy". Over the first
  `--editscore-items` items only: it runs one sample at a time, so more would only take longer.
- serve_single: `python -m score.serve` as a process; `--clients` asyncio tasks send one item per HTTP request
  (base64 PNGs, as verl-omni's scorers send them) until every item is answered.
- serve_batch: the same server, every item of a second workload (other images, so that nothing hits the
  caches the first one filled) in one request.
- serve_paths: as serve_batch on a third workload, the images named by path (--allow-paths) instead of sent:
  what moving the images costs.
- file_batch: `score.run` over the same items as a JSONL file.
Reported per mode: rewards/s (per GPU: one GPU here), exposed reward time (last item sent -> last reward
back), p50/p99 latency of a group of `--edits` (first item of the group sent -> its last reward back), GPU busy.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import os
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocol_bench import count_outputs  # noqa: E402
from score_bench import Monitor, build_model_dir, write_images  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
INSTRUCTION = "Replace the background with a snowy mountain landscape and keep the subject unchanged"
EDITSCORE_SERVER = dict(max_num_seqs=64, max_model_len=1536, max_num_batched_tokens=98304, temperature=0.7, seed=42)


def write_items(folder: Path, prompts: int, edits: int, size: int, sets: int = 2) -> list[list[dict]]:
    """`sets` workloads of prompts x edits items: a distinct source per prompt, a distinct edited image per
    item, no image shared between sets (a second run over the same server must not hit vLLM's caches)."""
    per_set = prompts * (edits + 1)
    write_images(folder, sets * per_set, size)
    workloads = []
    for k in range(sets):
        items = []
        for p in range(prompts):
            first = k * per_set + p * (edits + 1)
            for e in range(edits):
                items.append({"id": f"s{k}p{p:03d}e{e:02d}", "group": p, "instruction": f"{INSTRUCTION} ({k}, {p})",
                              "source_image": str(folder / f"{first:05d}.png"),
                              "image_path": str(folder / f"{first + e + 1:05d}.png")})
        workloads.append(items)
    return workloads


def timings(items: list[dict], sent: dict, back: dict, t0: float, monitor: Monitor) -> dict:
    """Rewards/s, exposed time, group latency percentiles and GPU busy from per-item send/receive times."""
    groups: dict[int, list[str]] = {}
    for item in items:
        if item["id"] in back:
            groups.setdefault(item["group"], []).append(item["id"])
    latency = sorted(max(back[i] for i in ids) - min(sent[i] for i in ids) for ids in groups.values())
    end = max(back.values())
    p99 = latency[min(len(latency) - 1, round(0.99 * (len(latency) - 1)))]
    return {"items": len(back), "rewards_per_s": len(back) / (end - t0), "exposed_s": end - max(sent.values()),
            "group_p50_s": statistics.median(latency), "group_p99_s": p99, "wall_s": end - t0,
            **monitor.span(t0, end)}


def run_editscore_server(model: str, items: list[dict], clients: int, monitor: Monitor) -> dict:
    """EditScore's reward server loop, single-sample requests from `clients` threads."""
    import editscore.mllm_tools.qwen3vl_vllm as backend
    from editscore import EditScore
    from PIL import Image

    real_llm = backend.LLM
    backend.LLM = functools.partial(real_llm, load_format="dummy")  # the harness's one change
    start = time.time()
    scorer = EditScore(backbone="qwen3vl_vllm", model_name_or_path=model, score_range=25, num_pass=1,
                       **EDITSCORE_SERVER)
    startup = time.time() - start
    llm = scorer.model.model
    counts = count_outputs(llm)
    requests: queue.Queue = queue.Queue()

    def worker() -> None:  # reward_server.py's vlm_worker: one request at a time
        while True:
            task = requests.get()
            if task is None:
                return
            sample, done = task
            pair = [[Image.open(sample["source_image"]).convert("RGB"), Image.open(sample["image_path"]).convert("RGB")]]
            done.put(scorer.batch_evaluate(pair, [sample["instruction"]]))

    todo: queue.Queue = queue.Queue()
    for item in items:
        todo.put(item)
    sent, back = {}, {}

    def client() -> None:
        while True:
            try:
                item = todo.get_nowait()
            except queue.Empty:
                return
            done: queue.Queue = queue.Queue()
            sent[item["id"]] = time.time()
            requests.put((item, done))
            done.get()
            back[item["id"]] = time.time()

    threading.Thread(target=worker, daemon=True).start()
    t0 = time.time()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    requests.put(None)
    result = {**timings(items, sent, back, t0, monitor), "startup_s": startup,
              "answer_tokens": sum(counts) / len(counts)}
    llm.llm_engine.engine_core.shutdown()
    backend.LLM = real_llm
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m score.serve` as a process, ready when /health says so."""

    def __init__(self, flags: list[str], log: Path):
        import httpx

        self.url = f"http://127.0.0.1:{free_port()}"
        start = time.time()
        with open(log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "score.serve", *flags, "--port", self.url.rsplit(":", 1)[1]],
                                         cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        while self.proc.poll() is None:
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        if self.proc.poll() is not None:
            raise SystemExit(f"score.serve exited:\n{log.read_text()[-3000:]}")
        self.startup_s = time.time() - start

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(120)


def encoded(items: list[dict], paths: bool = False) -> list[dict]:
    """The requests' items, images as base64 PNG (encoded before the clock starts, as a trainer holds them),
    or with `paths` as the files' paths (the server reads them: --allow-paths)."""
    def b64(path: str) -> str:
        return path if paths else base64.b64encode(Path(path).read_bytes()).decode()
    sources: dict[str, str] = {}
    return [{"id": i["id"], "prompt": i["instruction"], "image": b64(i["image_path"]),
             "source_image": sources.setdefault(i["source_image"], b64(i["source_image"]))} for i in items]


async def send_single(url: str, items: list[dict], payloads: list[dict], clients: int) -> tuple[dict, dict, float]:
    import httpx

    sent, back, todo = {}, {}, list(zip(items, payloads))
    todo.reverse()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=3600, limits=limits) as client:
        async def one_client() -> None:
            while todo:
                item, payload = todo.pop()
                sent[item["id"]] = time.time()
                answer = await client.post(f"{url}/v1/score", json={"items": [payload]})
                answer.raise_for_status()
                back[item["id"]] = time.time()
        t0 = time.time()
        await asyncio.gather(*(one_client() for _ in range(clients)))
    return sent, back, t0


async def send_batch(url: str, items: list[dict], payloads: list[dict]) -> tuple[dict, dict, float]:
    import httpx

    async with httpx.AsyncClient(timeout=3600) as client:
        t0 = time.time()
        answer = await client.post(f"{url}/v1/score", json={"items": payloads})
        answer.raise_for_status()
    end = time.time()
    return {i["id"]: t0 for i in items}, {i["id"]: end for i in items}, t0


def judge_flags(model: str, device: str, answer_tokens: int) -> list[str]:
    return ["--model", model, "--protocol", "editscore", "--decoding", "free", "--load-format", "dummy",
            "--devices", device, "--ignore-eos", "--max-tokens", str(answer_tokens), "--no-reask", "--progress", "none", *os.environ.get("BENCH_FLAGS", "").split()]


def run_file_batch(flags: list[str], items: list[dict], work: Path, monitor: Monitor) -> dict:
    import pandas as pd

    records = [{"id": i["id"], "instruction": i["instruction"], "source_image": i["source_image"],
                "image_path": i["image_path"]} for i in items]
    source = work / "file.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    start = time.time()
    # its exit code is 1 here: random weights never write a readable answer, so every row is failed
    subprocess.run([sys.executable, "-m", "score.run", *flags, "--task", "edit", "--input", str(source),
                    "--output-dir", str(work / "file-scores")], cwd=ROOT)
    wall = time.time() - start
    frame = pd.read_parquet(work / "file-scores" / "manifest")
    first, last = frame["started_at"].min(), (frame["started_at"] + frame["duration_s"]).max()
    return {"items": len(frame), "ok": int((frame["status"] == "ok").sum()), "rewards_per_s": len(frame) / (last - first),
            "wall_s": last - first, "startup_s": wall - (last - first), **monitor.span(first, last)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--edits", type=int, default=12)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--shape", default="8b", choices=["8b", "30b-a3b"])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--editscore-items", type=int, default=48)
    parser.add_argument("--answer-tokens", type=int, default=None,
                        help="our answers' forced length without the editscore_server mode in this job (EditScore's "
                             "mean, measured in an earlier job)")
    parser.add_argument("--modes", default="editscore_server,serve_single,serve_batch,file_batch")
    parser.add_argument("--model", default=None, help="a model folder instead of the shape (tiny:qwen3vl on CPU)")
    args = parser.parse_args()
    from data.models import resolve_model

    work = Path(tempfile.mkdtemp(prefix="reward-bench-"))
    model = resolve_model(args.model) if args.model else str(
        build_model_dir(Path.home() / ".cache" / "genscore-bench" / f"qwen3-vl-{args.shape}-shape", shape=args.shape))
    items, other_items, third = write_items(work / "images", args.prompts, args.edits, args.size, sets=3)
    modes = args.modes.split(",")
    result: dict = {"workload": f"{args.prompts} prompts x {args.edits} edits, {args.size}px, {args.clients} clients",
                    "model": args.model or f"qwen3-vl-{args.shape} shape, dummy weights"}
    monitor = Monitor()
    try:
        if "editscore_server" in modes:
            result["editscore_server"] = run_editscore_server(model, items[:args.editscore_items], args.clients, monitor)
            print(json.dumps(result), flush=True)
        length = round(result["editscore_server"]["answer_tokens"]) if "editscore_server" in result else args.answer_tokens
        flags = judge_flags(model, args.device, length or 512)
        result["answer_tokens"] = length
        if {"serve_single", "serve_batch", "serve_paths"} & set(modes):
            server = Server([*flags, "--allow-paths", str(work), "--max-body-mb", "4096"], work / "serve.log")
            result["serve_startup_s"] = server.startup_s
            try:
                for mode, workload in (("serve_single", items), ("serve_batch", other_items), ("serve_paths", third)):
                    if mode in modes:
                        payloads = encoded(workload, paths=mode == "serve_paths")
                        send = send_single(server.url, workload, payloads, args.clients) if mode == "serve_single" \
                            else send_batch(server.url, workload, payloads)
                        sent, back, t0 = asyncio.run(send)
                        result[mode] = timings(workload, sent, back, t0, monitor)
                        print(json.dumps(result), flush=True)
            finally:
                server.stop()
        if "file_batch" in modes:
            result["file_batch"] = run_file_batch(flags, items, work, monitor)
    finally:
        monitor.close()
    for name, (a, b) in {"single_vs_editscore_server": ("serve_single", "editscore_server"),
                         "single_vs_file_batch": ("serve_single", "file_batch"),
                         "batch_request_vs_file_batch": ("serve_batch", "file_batch")}.items():
        if a in result and b in result:
            result[name] = result[a]["rewards_per_s"] / result[b]["rewards_per_s"]
    print(json.dumps(result), flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
