"""EditScore side by side: its own `EditScore.batch_evaluate` against `score.run --protocol editscore`
on the same edit pairs and model shape (dummy weights), in one job.

    python benchmarks/editscore_bench.py --pairs 512 --size 512 --shape 8b --modes editscore,matched,ours

Workload: `--pairs` edit pairs, each a distinct source and a distinct edited PNG of `--size`², and an
instruction; EditScore's two questions per pair (prompt following with both images, quality with the
edited one), 1 pass.
- editscore: `EditScore(backbone="qwen3vl_vllm", model_name_or_path=MODEL)` with its defaults
             (max_model_len 1536, max_num_seqs 32, max_num_batched_tokens 1536, prefix caching,
             temperature 0.7, top_p 0.9, top_k 20, 512 tokens), then one `batch_evaluate` over every pair,
             PIL images in memory: how its users run it. The only change: its `LLM` is given
             load_format="dummy" (random weights at the real size; no download).
- matched:   the same with our engine limits (max_model_len 4096, max_num_seqs 256,
             max_num_batched_tokens 8192): what its settings cost.
- ours:      `score.run --task edit --protocol editscore` over a JSONL of the same pairs (images read
             from disk, rows written as they finish).
- ours_free: the same questions word for word as a custom template without a schema (free text, as
             EditScore decodes), every answer exactly 512 tokens (--ignore-eos), temperature 0.7: the
             same tokens per pair as EditScore's runs, so its output tokens/s compares with theirs
             directly and, against `ours`, shows what the schema-bound decoding costs.
- ours_xgrammar: `ours` with `--structured-backend xgrammar` instead of guidance.
Random weights answer at random: EditScore's free text runs to its 512-token limit, while ours stops
where the JSON answer (schema-bound reasoning, capped) closes. So each mode reports output tokens per
pair beside images/s, and output tokens/s, which does not depend on answer length.
Prints a JSON line after each mode (the last one has everything). Needs a GPU, vLLM, and the `editscore`, `qwen-vl-utils`, `peft` packages.
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
    llm, counts = scorer.model.model, []
    generate = llm.generate

    def counting(*call_args, **kwargs):  # output lengths, which its results do not keep
        outputs = generate(*call_args, **kwargs)
        counts.extend(len(o.outputs[0].token_ids) for o in outputs)
        return outputs

    llm.generate = counting
    t0 = time.time()
    results = scorer.batch_evaluate(images, [r["instruction"] for r in rows])
    elapsed = time.time() - t0
    tokens = sum(counts)
    llm.llm_engine.engine_core.shutdown()
    backend.LLM = real_llm
    return {"images_per_s": len(results) / elapsed, "output_tokens_per_pair": tokens / len(results),
            "output_tokens_per_s": tokens / elapsed, "startup_s": startup, **monitor.span(t0, t0 + elapsed)}


def run_ours(model: str, pairs: Path, out: Path, monitor: Monitor, device: str, **overrides) -> dict:
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
    return {"exit": code, "ok": int((frame["status"] == "ok").sum()), "images_per_s": len(frame) / (last - first),
            "output_tokens_per_pair": tokens / len(frame), "output_tokens_per_s": tokens / (last - first),
            "startup_s": wall - (last - first), **monitor.span(first, last)}


def free_template(folder: Path) -> Path:
    """EditScore's two questions, word for word, as a custom template with no schema: free text, as
    EditScore itself decodes (for `ours_free`)."""
    import yaml

    from score.templates import editscore_edit

    def text(question) -> str:
        return question.text.replace("{", "{{").replace("}", "}}").replace(question.placeholder, "{prompt}")

    spec = {"name": "editscore-free", "version": 1, "system": None,
            "questions": [{"name": q.name, "text": text(q), "images": list(q.images)} for q in editscore_edit().questions]}
    path = folder / "editscore_free.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--shape", default="8b", choices=sorted(SHAPES))
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--modes", default="editscore,matched,ours")
    parser.add_argument("--model", default=None, help="a model folder instead of the shape (tiny:qwen3vl on CPU "
                                                      "for a smoke run)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="editscore-bench-"))
    from data.models import resolve_model

    model = resolve_model(args.model) if args.model else str(
        build_model_dir(Path.home() / ".cache" / "genscore-bench" / f"qwen3-vl-{args.shape}-shape", shape=args.shape))
    pairs = write_pairs(work / "images", args.pairs, args.size)
    result: dict = {"workload": f"EditScore protocol, {args.pairs} pairs of {args.size}px images, 1 pass",
                    "model": args.model or f"qwen3-vl-{args.shape} shape, dummy weights"}
    modes = args.modes.split(",")
    monitor = Monitor()
    try:
        for mode in modes:  # a line per mode as it ends: a run cut short still reports what it measured
            if mode == "ours":
                result["ours"] = run_ours(model, pairs, work / "ours", monitor, args.device)
            elif mode == "ours_free":
                result["ours_free"] = run_ours(model, pairs, work / "ours_free", monitor, args.device,
                                               task="custom", template_file=str(free_template(work)),
                                               ignore_eos=True, max_tokens=512, temperature=0.7)
            elif mode == "ours_xgrammar":
                result["ours_xgrammar"] = run_ours(model, pairs, work / "ours_xg", monitor, args.device,
                                                   structured_backend="xgrammar")
            elif mode == "editscore":
                result["editscore"] = run_editscore(model, pairs, monitor)
            elif mode == "matched":
                result["editscore_matched"] = run_editscore(model, pairs, monitor, MATCHED)
            print(json.dumps(result), flush=True)
    finally:
        monitor.close()
    for base in ("editscore", "editscore_matched"):
        if "ours" in result and base in result:
            result[f"ours_vs_{base}"] = result["ours"]["images_per_s"] / result[base]["images_per_s"]
    print(json.dumps(result), flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
