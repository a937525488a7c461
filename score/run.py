"""`python -m score.run`: caption or judge images with Qwen3-VL on vLLM replicas.

With no arguments it scores the newest run under runs/ (the demo) with the tiny Qwen3-VL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
from pathlib import Path

from data.config import parse_config, to_dict
from data.manifest import SCORE_SCHEMA
from data.models import resolve_model
from data.rundir import COMPLETE, RunDirError
from data.sources import INDEX_IDS_NOTE, Columns, InputError, ids_from_index, only_categories
from pool.devices import Placement, gpu_memory_gib, physical_gpus, place, require_fp8_gpus
from pool.executor import die_with_parent
from pool.runner import RunSettings, StageSpec, run_stage
from pool.stage import FaultPolicy, FixedWork, PoolError, RunFault, Stage, Work
from score.api_backend import OpenAIStage, api_host, check_endpoint
from score.config import RUNTIME_FIELDS, ScoreConfig
from score.engine import VLLMStage
from score.hf_backend import TransformersStage
from score.inputs import FollowRun, default_output, is_layout, is_run_dir, newest_run, score_samples, wait_for_run
from score.judge import Judge, decoding, resolve_template
from score.model_info import check_fits, context_length, image_tokens
from score.templates import Template
from score.summary import print_summary

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "configs" / "score_demo.yaml"
STAGES = {"vllm": VLLMStage, "transformers": TransformersStage, "openai": OpenAIStage}
OPENAI_BASE = "https://api.openai.com/v1"


def start_gen(config: ScoreConfig) -> tuple[subprocess.Popen, str]:
    """The two-stage flow: `python -m gen.run --config <gen_config>` as a process of its own (score
    runs beside gen, never on top of it); with --gen-devices it runs there while scoring follows."""
    import yaml

    out = (yaml.safe_load(Path(config.gen_config).read_text()) or {}).get("output_dir")
    if not out:
        raise InputError(f"{config.gen_config}: the two-stage flow needs the gen YAML's output_dir")
    (Path(out) / COMPLETE).unlink(missing_ok=True)  # a finished earlier run must not end the follow at once
    devices = ["--devices", config.gen_devices] if config.gen_devices else []
    # it dies with us, however we die: a scorer killed while generation runs beside it leaves nothing running
    process = subprocess.Popen([sys.executable, "-m", "gen.run", "--config", config.gen_config, *devices],
                               preexec_fn=die_with_parent)
    return process, out


def run_gen_first(config: ScoreConfig) -> tuple[str, subprocess.Popen | None]:
    """The gen run's folder, and its process while it still runs (scoring then follows it)."""
    process, out = start_gen(config)
    if config.gen_devices:
        return out, process
    code = process.wait()
    if code != 0:
        raise InputError(f"generation stage failed (exit code {code}); not scoring")
    return out, None


class FollowedWork:
    """A followed run's new samples, kept to --categories and tagged with the task."""

    def __init__(self, work: Work, task: str, categories: str | None):
        self.work, self.task = work, task
        self.categories = {c.strip() for c in categories.split(",")} if categories else None

    def poll(self) -> tuple[list[dict], bool]:
        samples, last = self.work.poll()
        kept = [s for s in samples if self.categories is None or s["category"] in self.categories]
        return [{**s, "task": self.task} for s in kept], last


def pick_task(config: ScoreConfig, input_path: str, samples: list[dict]) -> str:
    """auto: a design layout is captioned; samples with source images are edits; else t2i."""
    if config.task != "auto":
        return config.task
    if Path(input_path).is_dir() and is_layout(Path(input_path)):
        return "caption"
    return "edit" if any(s.get("source_image") for s in samples) else "t2i"


def identity(config: ScoreConfig, template: Template | None = None) -> dict:
    """What makes scores comparable: the config's output-changing fields, the template version and the
    decoding mode it resolves to. Runs saved before `--decoding` existed decoded by schema."""
    fields = {k: v for k, v in to_dict(config).items() if k not in RUNTIME_FIELDS}
    if config.backend == "openai":  # the same model name at another endpoint is another judge
        fields["api_host"] = api_host(config.api_base)
    if config.template_file and Path(config.template_file).is_file():  # its text, not just its name
        fields["template_file_sha256"] = hashlib.sha256(Path(config.template_file).read_bytes()).hexdigest()[:16]
    if template is None:
        return {**fields, "decoding": "schema"}
    return {**fields, "template": f"{template.name} v{template.version}", "decoding": decoding(config, template)}


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


def placement(config: ScoreConfig) -> Placement:
    if config.backend == "openai":  # the judge is elsewhere: one worker here keeps --concurrency requests going
        return place(config.devices or ",".join(["cpu"] * (config.replicas or 1)), None, 1, None, 1,
                     on_cluster=config.engine == "ray")
    return place(config.devices, config.gpus, config.tp, config.replicas, config.replicas_per_gpu,
                 on_cluster=config.engine == "ray")


def check_lora(config: ScoreConfig) -> None:
    """A judge LoRA in a local folder loads from safetensors only (a pickled .bin runs code when loaded)."""
    if not config.judge_lora:
        return
    if config.backend != "vllm":
        raise ValueError("--judge-lora is served by vLLM's LoRA support: use it with --backend vllm")
    folder = Path(resolve_model(config.judge_lora))
    if folder.is_dir() and not (folder / "adapter_model.safetensors").is_file():
        raise ValueError(f"--judge-lora {config.judge_lora}: no adapter_model.safetensors there (a judge LoRA loads "
                         "from safetensors only, never a pickled .bin)")


def check_quantize(config: ScoreConfig, devices: list[str] | None) -> None:
    if config.quantize == "none":
        return
    if config.backend != "vllm":
        raise ValueError("--quantize fp8 is vLLM's float8 mode: use it with --backend vllm")
    require_fp8_gpus(devices)


PROMPT_TOKENS = 1024  # room for a question's text and chat markup (VIEScore's longest is about 450 tokens)


def fit_context(config: ScoreConfig, template: Template) -> ScoreConfig:
    """--max-model-len: room for a question's images at the most pixels the judge may see, its text and
    its answer, within the judge's own limit; said in one line when it falls short."""
    model = resolve_model(config.model)
    judge = Judge(config, template, tokenizer=None)
    per_image = image_tokens(model, judge.max_pixels)
    images = max(len(q.images) for q in template.questions)
    needed = images * per_image + PROMPT_TOKENS + judge.max_tokens if per_image else None
    length, note = context_length(model, config.max_model_len, needed)
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


def samples_of(config: ScoreConfig, input_path: str, out: Path) -> tuple[list[dict], str]:
    """The samples to score and their task."""
    columns = Columns(config.id_column, config.prompt_column, config.source_column, config.category_column,
                      config.image_column)
    samples = score_samples(input_path, columns, config.image_root, image_store=out / "inputs")
    samples = only_categories(samples, config.categories)
    end = None if config.num_samples is None else config.offset + config.num_samples
    samples = samples[config.offset:end]
    task = pick_task(config, input_path, samples)
    check_task(input_path, task, samples)
    if ids_from_index(samples) and not is_run_dir(Path(input_path)):
        print(f"score: {INDEX_IDS_NOTE}", file=sys.stderr)
    return [{**s, "task": task} for s in samples], task


def check_task(input_path: str, task: str, samples: list[dict]) -> None:
    """An input that cannot serve the task at all is refused before any worker starts."""
    if not samples:
        return
    if task == "edit" and not any(s.get("source_image") and s.get("image_path") for s in samples):
        raise InputError(f"{input_path}: --task edit judges an edited image against its source, and no row names "
                         "both. Sources with instructions are an input for `python -m gen.run --task edit`: generate "
                         "first, then score its run folder; or name the columns with --source-column and --image-column")
    if not any(s.get("image_path") for s in samples):
        raise InputError(f"{input_path}: no row names an image to judge; name its column with --image-column")


def follow_work(config: ScoreConfig, input_path: str, gen_process=None) -> tuple[Work, str]:
    """A gen run's rows as they land; the task is the run's own unless --task says."""
    if config.num_samples is not None or config.offset:
        raise ValueError("--follow scores every row as it lands: --num-samples and --offset do not apply")
    task = config.task
    if task == "auto":  # the run's own task, once it has started
        task = wait_for_run(Path(input_path), config.follow_timeout_s)["task"]
    follow = FollowRun(Path(input_path), config.follow_timeout_s, gen_process)
    return FollowedWork(follow, task, config.categories), task


def prepare_judge(config: ScoreConfig, template: Template) -> tuple[ScoreConfig, Placement]:
    """The config as the replicas run it (the API's base URL, the context length) and where they run,
    after the checks that refuse a judge before any worker starts. Every door (score.run, the Python API,
    the HTTP service) starts its judge through here."""
    if config.backend == "openai":
        config = dataclasses.replace(config, api_base=config.api_base or OPENAI_BASE)
        check_endpoint(config)
    else:
        config = fit_context(config, template)
    where = placement(config)
    check_lora(config)
    check_quantize(config, where.devices)
    check_memory(config, where.devices)
    return config, where


def judge_stage(config: ScoreConfig, task: str) -> Stage:
    """The stage one replica runs (`task` sets its engine; each sample's own task picks its questions)."""
    return STAGES[config.backend](replica_config(config), task)


def fault_policy(config: ScoreConfig) -> FaultPolicy:
    return FaultPolicy(max_retries=config.max_retries, serial_load=config.replicas_per_gpu > 1,
                       item_timeout_s=config.item_timeout, load_timeout_s=config.load_timeout)


def run(config: ScoreConfig) -> int:
    gen_process = None
    if config.gen_config:
        input_path, gen_process = run_gen_first(config)
    else:
        input_path = config.input or str(newest_run())
    try:
        return score(config, input_path, gen_process)
    finally:
        if gen_process is not None and gen_process.poll() is None:  # scoring stopped early: so does generation
            gen_process.terminate()
            gen_process.wait()


def score(config: ScoreConfig, input_path: str, gen_process: subprocess.Popen | None) -> int:
    """Score `input_path` (a gen run while `gen_process` still writes it, when given)."""
    following = config.follow or gen_process is not None
    out = Path(config.output_dir or (Path(input_path) / "scores" if following else default_output(input_path)))
    if following:
        work, task = follow_work(config, input_path, gen_process)
        first = None
    else:
        samples, task = samples_of(config, input_path, out)
        work, first = FixedWork(samples), samples[0] if samples else None
    template = resolve_template(config, task)
    if config.print_prompts:
        if first is None:
            raise InputError(f"{input_path}: no samples to show prompts for")
        print_prompts(template, first)
        return 0
    config, where = prepare_judge(config, template)
    spec = StageSpec("score", judge_stage(config, task), SCORE_SCHEMA, to_dict(config),
                     identity(config, template), identity(ScoreConfig()), config_file="score.json", unit="sample")
    settings = RunSettings(
        executor=config.engine, force=config.force, retry_failed=config.retry_failed, progress=config.progress,
        verbose=config.verbose, ray_address=config.ray_address, ray_batch_size=config.window or 256,
        policy=fault_policy(config),
    )
    print(f"score: {input_path} ({task}, {template.name} v{template.version}, {decoding(config, template)} decoding)"
          + (", following it as it is generated" if following else ""), file=sys.stderr)
    samples = run_stage(out, spec, work, where, settings)
    if gen_process is not None and gen_process.wait() != 0:
        print(f"score: the generation stage exited with code {gen_process.returncode}", file=sys.stderr)
    return print_summary(out, samples, config, template)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = parse_config(ScoreConfig, argv, "python -m score.run", __doc__.splitlines()[0],
                          default_config=str(DEMO_CONFIG))
    if argv and config.model.startswith("tiny:"):  # not the demo: say what the scores are worth
        print(f"score: {config.model} is a tiny test judge with random weights: its scores mean nothing; pass "
              "--model Qwen/Qwen3-VL-8B-Instruct (or --config configs/qwen3vl_judge.yaml) for real scores",
              file=sys.stderr)
    try:
        return run(config)
    except (InputError, RunDirError, PoolError, RunFault, ValueError, OSError) as exc:  # OSError: our own I/O
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
