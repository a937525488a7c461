"""The judging protocols end to end on one GPU, free against schema decoding, and EditScore 0.2 as its
users run it, on the same edit pairs and model shape (dummy weights), in one job.

    python benchmarks/protocol_bench.py --pairs 256 --size 512 --shape 8b \
        --modes es_schema,es_free_eq,editscore,es_free_vs_editscore,vie_schema,vie_free

Workload: `--pairs` edit pairs, each a distinct source and a distinct edited PNG of `--size`², and an
instruction; the protocol's two questions per pair (SC with both images, PQ with the edited one), 1 pass.
Random weights never write a readable answer, so decoding modes compare in output tokens/s and answer
lengths are forced where the comparison needs them equal (tokens/s grows with answer length):
- es_schema:   `score.run --protocol editscore --decoding schema` (the JSON grammar; its answers close
               where the grammar lets them: the capped reasoning, then the scores).
- es_free_eq:  `--protocol editscore --decoding free`, every answer exactly es_schema's mean length
               (--ignore-eos), one ask: the same tokens as es_schema, without the grammar.
- editscore:   `EditScore(backbone="qwen3vl_vllm", model_name_or_path=MODEL)` with its defaults
               (max_model_len 1536, max_num_seqs 32, max_num_batched_tokens 1536, prefix caching,
               temperature 0.7, top_p 0.9, top_k 20, 512 tokens), then one `batch_evaluate` over every
               pair, PIL images in memory: how its users run it. The only change: its `LLM` is given
               load_format="dummy" (random weights at the real size; no download).
- matched:     the same with our engine limits (max_model_len 4096, max_num_seqs 256, max_num_batched_tokens 8192).
- es_free_vs_editscore: `--protocol editscore` as published (free), every answer exactly EditScore's mean
               length in its own run (--ignore-eos), one ask (its batch_evaluate asks once): pairs/s at equal work.
- vie_schema / vie_free: `--protocol viescore`, the default edit protocol, end to end with each decoding at
               its natural lengths (free: re-asks as the protocol does, since random text never parses).
--model-runner v1|v2 and --max-model-len set our modes' engine (score.run's flags), to compare runners side by
side in one job on one machine (EditScore's modes keep their own engine).
Each mode reports pairs/s, output tokens per pair and per second, start-up and GPU busy; prints a JSON line
after each mode (the last one has everything). Needs a GPU, vLLM, and the `editscore`, `qwen-vl-utils`,
`peft` packages for the `editscore` modes.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from score_bench import SHAPES, Monitor, build_model_dir, write_images  # noqa: E402

INSTRUCTION = "Replace the background with a snowy mountain landscape and keep the subject unchanged."
MATCHED = dict(max_model_len=4096, max_num_seqs=256, max_num_batched_tokens=8192)


def write_pairs(folder: Path, pairs: int, size: int) -> Path:
    """`pairs` rows of {source_image, image_path, instruction}, every image distinct."""
    write_images(folder, 2 * pairs, size)
    records = [{"id": f"p{i:05d}", "source_image": f"{2 * i:05d}.png", "image_path": f"{2 * i + 1:05d}.png",
                "instruction": f"{INSTRUCTION} ({i})", "category": "bench"} for i in range(pairs)]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder / "pairs.jsonl"


def count_outputs(llm) -> list[int]:
    """The output lengths of every later `llm.generate` call (EditScore's results do not keep them)."""
    counts: list[int] = []
    generate = llm.generate

    def counting(*call_args, **kwargs):
        outputs = generate(*call_args, **kwargs)
        counts.extend(len(o.outputs[0].token_ids) for o in outputs)
        return outputs
    llm.generate = counting
    return counts


def run_editscore(model: str, pairs: Path, monitor: Monitor, engine: dict | None = None) -> dict:
    """EditScore's batch_evaluate as its users run it; `engine` overrides its vLLM settings."""
    import editscore.mllm_tools.qwen3vl_vllm as backend
    from editscore import EditScore
    from PIL import Image

    real_llm = backend.LLM
    backend.LLM = functools.partial(real_llm, load_format="dummy")  # the harness's one change
    start = time.time()
    scorer = EditScore(backbone="qwen3vl_vllm", model_name_or_path=model, **(engine or {}))
    startup = time.time() - start
    folder = pairs.parent
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    images = [[Image.open(folder / r["source_image"]).convert("RGB"), Image.open(folder / r["image_path"]).convert("RGB")]
              for r in rows]
    llm = scorer.model.model
    counts = count_outputs(llm)
    t0 = time.time()
    results = scorer.batch_evaluate(images, [r["instruction"] for r in rows])
    elapsed = time.time() - t0
    tokens = sum(counts)
    llm.llm_engine.engine_core.shutdown()
    backend.LLM = real_llm
    return {"images_per_s": len(results) / elapsed, "output_tokens_per_pair": tokens / len(results),
            "output_tokens_per_s": tokens / elapsed, "answer_tokens": tokens / len(counts), "startup_s": startup,
            **monitor.span(t0, t0 + elapsed)}


def run_ours(model: str, pairs: Path, out: Path, monitor: Monitor, device: str, **overrides) -> dict:
    """score.run on the pairs (protocol editscore unless overridden); answers per pair from the rows."""
    import pandas as pd

    from score.config import ScoreConfig
    from score.run import run

    config = ScoreConfig(**{**dict(task="edit", protocol="editscore", model=model, input=str(pairs),
                                   output_dir=str(out), load_format="dummy", devices=device, progress="none"),
                            **overrides})
    start = time.time()
    code = run(config)
    wall = time.time() - start
    frame = pd.read_parquet(out / "manifest")
    first, last = frame["started_at"].min(), (frame["started_at"] + frame["duration_s"]).max()
    tokens = frame["output_tokens"].fillna(0).sum()
    asks = frame["asks"].fillna(1).mean()
    return {"exit": code, "ok": int((frame["status"] == "ok").sum()), "images_per_s": len(frame) / (last - first),
            "output_tokens_per_pair": tokens / len(frame), "output_tokens_per_s": tokens / (last - first),
            "answer_tokens": tokens / len(frame) / 2 / asks, "asks_per_pair": asks,
            "startup_s": wall - (last - first), **monitor.span(first, last)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--shape", default="8b", choices=sorted(SHAPES))
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--modes", default="es_schema,es_free_eq,editscore,es_free_vs_editscore,vie_schema,vie_free")
    parser.add_argument("--editscore-answer-tokens", type=float, default=None,
                        help="es_free_vs_editscore without the editscore mode in this job: EditScore's mean answer "
                             "length measured in an earlier job on the same machine")
    parser.add_argument("--model", default=None, help="a model folder instead of the shape (tiny:qwen3vl on CPU "
                                                      "for a smoke run)")
    parser.add_argument("--model-runner", default="auto", choices=["auto", "v1", "v2"],
                        help="our modes: vLLM's model runner (score.run --model-runner)")
    parser.add_argument("--max-model-len", type=int, default=None,
                        help="our modes: score.run --max-model-len (default: the protocol's own sizing)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="editscore-bench-"))
    from data.models import resolve_model

    model = resolve_model(args.model) if args.model else str(
        build_model_dir(Path.home() / ".cache" / "genscore-bench" / f"qwen3-vl-{args.shape}-shape", shape=args.shape))
    pairs = write_pairs(work / "images", args.pairs, args.size)
    result: dict = {"workload": f"edit protocols, {args.pairs} pairs of {args.size}px images, 1 pass",
                    "model": args.model or f"qwen3-vl-{args.shape} shape, dummy weights"}
    modes = args.modes.split(",")
    monitor = Monitor()
    engine = {"model_runner": args.model_runner, **({"max_model_len": args.max_model_len} if args.max_model_len else {})}
    result["our_engine"] = engine
    ours = functools.partial(run_ours, model, pairs, monitor=monitor, device=args.device, **engine)
    equal = dict(decoding="free", ignore_eos=True, reask=False)  # a forced length, one ask
    try:
        for mode in modes:  # a line per mode as it ends: a run cut short still reports what it measured
            out = work / mode
            if mode == "es_schema":
                result[mode] = ours(out, decoding="schema")
            elif mode == "es_free_eq":
                result[mode] = ours(out, max_tokens=round(result["es_schema"]["answer_tokens"]), **equal)
            elif mode == "editscore":
                result[mode] = run_editscore(model, pairs, monitor)
            elif mode == "matched":
                result[mode] = run_editscore(model, pairs, monitor, MATCHED)
            elif mode == "es_free_vs_editscore":
                length = result["editscore"]["answer_tokens"] if "editscore" in result else args.editscore_answer_tokens
                result[mode] = ours(out, max_tokens=round(length), **equal)
            elif mode in ("vie_schema", "vie_free"):
                result[mode] = ours(out, protocol="viescore", decoding=mode.removeprefix("vie_"))
            print(json.dumps(result), flush=True)
    finally:
        monitor.close()
    ratios = {"free_vs_schema_tokens_per_s": ("es_free_eq", "es_schema", "output_tokens_per_s"),
              "free_vs_editscore_pairs_per_s": ("es_free_vs_editscore", "editscore", "images_per_s"),
              "vie_free_vs_schema_tokens_per_s": ("vie_free", "vie_schema", "output_tokens_per_s")}
    for name, (a, b, key) in ratios.items():
        if a in result and b in result:
            result[name] = result[a][key] / result[b][key]
    print(json.dumps(result), flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
