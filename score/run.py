"""`python -m score.run`: caption or judge images with Qwen3-VL on vLLM replicas.

With no arguments it scores the newest run under runs/ (the demo) with the tiny Qwen3-VL.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from data.config import load_yaml, parse_config, to_dict
from data.manifest import SCORE_SCHEMA, ManifestWriter, latest_status
from data.rundir import RunDir, RunDirError
from data.sources import Columns, InputError, only_categories
from gen.config import GenConfig
from gen.run import select_todo
from pool.devices import describe, gpu_memory_gib, physical_gpus, plan_devices, require_fp8_gpus
from pool.executor import PoolError, make_executor
from pool.progress import Progress
from score.config import RUNTIME_FIELDS, ScoreConfig
from score.inputs import default_output, is_layout, newest_run, score_samples
from data.tiny import resolve_model
from score.judge import Judge, resolve_template
from score.model_info import check_fits, context_length
from score.templates import Template
from score.summary import print_summary

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "configs" / "score_demo.yaml"
STAGES = {"vllm": "score.engine:VLLMStage", "transformers": "score.hf_backend:TransformersStage"}


def run_gen_first(config: ScoreConfig) -> str:
    """The two-stage flow: run gen with its YAML, then score what it wrote."""
    from gen.run import run as run_gen

    gen_config = GenConfig(**load_yaml(config.gen_config, GenConfig))
    code = run_gen(gen_config)
    if code != 0:
        raise InputError(f"generation stage failed (exit code {code}); not scoring")
    return gen_config.output_dir


def pick_task(config: ScoreConfig, input_path: str, samples: list[dict]) -> str:
    """auto: a design layout is captioned; samples with source images are edits; else t2i."""
    if config.task != "auto":
        return config.task
    if Path(input_path).is_dir() and is_layout(Path(input_path)):
        return "caption"
    return "edit" if any(s.get("source_image") for s in samples) else "t2i"


def identity(config: ScoreConfig, template: Template | None = None) -> dict:
    """What makes scores comparable: the config's output-changing fields and the template version."""
    fields = {k: v for k, v in to_dict(config).items() if k not in RUNTIME_FIELDS}
    return {**fields, "template": f"{template.name} v{template.version}"} if template else fields


def print_prompts(template: Template, sample: dict) -> None:
    """The exact messages of each question for one sample: what the judge is asked, word for word."""
    judge = Judge(ScoreConfig(), template, tokenizer=None)
    paths = {"source": sample.get("source_image"), "image": sample.get("image_path")}
    print(f"template {template.name} v{template.version}, sample {sample['sample_id']}")
    for q in template.questions:
        print(f"\n=== question {q.name} ===")
        for message in judge.messages(q, sample.get("prompt") or ""):
            print(f"--- {message['role']} ---")
            if isinstance(message["content"], str):
                print(message["content"])
                continue
            slots = iter(q.images)
            for part in message["content"]:
                if part["type"] == "image":
                    role = next(slots)
                    print(f"<image: {role} = {paths[role]}>")
                else:
                    print(part["text"])


def replica_devices(config: ScoreConfig) -> list[str] | None:
    """One device string per replica; None lets Ray use every GPU of its cluster."""
    if config.replicas_per_gpu < 1 or (config.replicas_per_gpu > 1 and config.engine == "ray"):
        raise ValueError("--replicas-per-gpu takes a number >= 1, and more than 1 only with --engine local")
    if config.engine == "ray" and not config.devices and not config.gpus:
        if config.replicas:  # N replicas of tp GPUs each, wherever Ray places them
            return ["cuda:" + "+".join(map(str, range(config.tp)))] * config.replicas
        return None
    devices = plan_devices(config.devices, config.gpus, group_size=config.tp, replicas=config.replicas)
    return [d for d in devices for _ in range(config.replicas_per_gpu)]


def check_quantize(config: ScoreConfig, devices: list[str] | None) -> None:
    if config.quantize == "none":
        return
    if config.backend != "vllm":
        raise ValueError("--quantize fp8 is vLLM's float8 mode: use it with --backend vllm")
    require_fp8_gpus(devices)


def fit_context(config: ScoreConfig) -> ScoreConfig:
    """--max-model-len within the judge's own limit, said in one line when lowered."""
    length, note = context_length(resolve_model(config.model), config.max_model_len)
    if note:
        print(f"score: {note}", file=sys.stderr)
    return dataclasses.replace(config, max_model_len=length)


def check_memory(config: ScoreConfig, devices: list[str] | None) -> None:
    """A judge too large for a replica's share of its GPU: a clear message now, not a vLLM traceback."""
    if config.backend != "vllm" or not devices or not devices[0].startswith("cuda:"):
        return
    gib = gpu_memory_gib(physical_gpus(devices[0])[0])
    if gib:
        check_fits(resolve_model(config.model), gib, replica_config(config).gpu_memory_utilization, config.tp,
                   config.max_model_len, config.quantize == "fp8")


def replica_config(config: ScoreConfig) -> ScoreConfig:
    """What one replica sees: replicas sharing a GPU split its memory share."""
    share = config.gpu_memory_utilization / config.replicas_per_gpu
    return dataclasses.replace(config, gpu_memory_utilization=share)


def run(config: ScoreConfig) -> int:
    input_path = run_gen_first(config) if config.gen_config else (config.input or str(newest_run()))
    columns = Columns(config.id_column, config.prompt_column, config.source_column, config.category_column,
                      config.image_column)
    out = Path(config.output_dir or default_output(input_path))
    samples = score_samples(input_path, columns, config.image_root, image_store=out / "inputs")
    samples = only_categories(samples, config.categories)
    end = None if config.num_samples is None else config.offset + config.num_samples
    samples = samples[config.offset:end]
    task = pick_task(config, input_path, samples)
    template = resolve_template(config, task)
    for s in samples:
        s["task"] = task
    if config.print_prompts:
        if not samples:
            raise InputError(f"{input_path}: no samples to show prompts for")
        print_prompts(template, samples[0])
        return 0
    config = fit_context(config)
    devices = replica_devices(config)
    check_quantize(config, devices)
    check_memory(config, devices)
    rundir = RunDir(out, config_name="score.json")
    rundir.lock()
    try:
        rundir.check_config(identity(config, template), config.force, identity(ScoreConfig()))
        rundir.save_config(to_dict(config), identity(config, template))
        manifest = out / "manifest"
        writer = ManifestWriter(manifest, SCORE_SCHEMA)
        todo = select_todo(samples, latest_status(manifest), config.retry_failed)
        where = describe(devices) if devices else "every GPU of the Ray cluster"
        print(f"score: {len(samples)} samples from {input_path} ({task}, {template.name} v{template.version}), "
              f"{len(samples) - len(todo)} already done, {len(todo)} to score on {where}", file=sys.stderr)
        progress = Progress(len(todo), config.progress, unit="sample")
        on_row = _row_handler(config, writer)
        failed_judge = Judge(config, template, tokenizer=None)
        try:
            if todo:
                make_executor(config.engine, config.ray_address, ray_batch_size=config.window or 256,
                              gpus_per_worker=config.tp, stage_path=STAGES[config.backend],
                              config=replica_config(config), devices=devices, on_row=on_row,
                              failed_row=failed_judge.failed, max_retries=config.max_retries, progress=progress,
                              serial_load=config.replicas_per_gpu > 1,
                              log_dir=None if config.verbose else str(out / "logs")).run(todo)
        finally:
            writer.close()
        if progress.slots:
            print(progress.table(), file=sys.stderr)
        return print_summary(out, samples, config, template)
    finally:
        rundir.unlock()


def _row_handler(config: ScoreConfig, writer: ManifestWriter):
    def on_row(row: dict) -> None:
        writer.add(row)
        if config.print_samples:
            print(sample_line(row), flush=True)
        if config.write_txt and row.get("status") == "ok" and row.get("caption") is not None:
            Path(row["image_path"]).with_suffix(".txt").write_text(row["caption"] + "\n", encoding="utf-8")
    return on_row


def sample_line(row: dict) -> str:
    """The seeds' per-sample line: `[Sample    3] Score: 8.50 | Response: <the judge's reasoning>`."""
    score = row.get("overall")
    shown = f"{score:.2f}" if isinstance(score, float) else "-"
    response = row.get("reasoning") or row.get("caption") or f"failed: {row.get('error')}"
    return f"[Sample {row['index']:>4}] Score: {shown} | Response: {' '.join(str(response).split())}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = parse_config(ScoreConfig, argv, "python -m score.run", __doc__.splitlines()[0],
                          default_config=str(DEMO_CONFIG))
    try:
        return run(config)
    except (InputError, RunDirError, PoolError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
