"""`python -m gen.run`: generate or edit images for a sample set on every device.

With no arguments it runs `configs/demo.yaml` (tiny offline model, bundled prompts).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from data.config import parse_config, to_dict
from data.manifest import GEN_SCHEMA, latest_status
from data.models import resolve_model
from data.rundir import RunDirError
from data.sources import INDEX_IDS_NOTE, Columns, InputError, ids_from_index, load_samples, only_categories
from gen.config import RUNTIME_FIELDS, GenConfig
from gen.pipeline import check_lora, check_model, parse_lora
from gen.worker import GenStage
from pool.devices import place, require_fp8_gpus
from pool.runner import RunSettings, StageSpec, run_stage
from pool.stage import FaultPolicy, FixedWork, PoolError

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
DEFAULT_MODELS = {"t2i": "tiny:t2i", "edit": "tiny:edit"}


def resolve_size(config: GenConfig) -> GenConfig:
    """t2i: 1024x1024 unless given. edit: --height/--width force a size, --area sets one per source
    image, and neither lets the pipeline follow the source (its own area, its own rounding)."""
    if (config.height is None) != (config.width is None):
        raise ValueError("give both --height and --width, or neither")
    if config.area is not None:
        if config.area <= 0:
            raise ValueError(f"--area takes a positive number of pixels (e.g. 1048576), not {config.area}")
        if config.task != "edit":
            raise ValueError("--area follows the source image's aspect ratio: it applies to --task edit")
        if config.height is not None:
            raise ValueError("--area sets the size from each source image; give it or --height/--width, not both")
    if config.task == "t2i" and config.height is None:
        return dataclasses.replace(config, height=1024, width=1024)
    return config


def check_task(config: GenConfig, samples: list[dict]) -> None:
    """An input that cannot serve the task at all is refused before any worker starts."""
    if not samples:
        return
    if config.task == "edit" and not any(s.get("source_image") for s in samples):
        raise InputError(f"{config.input}: --task edit needs a source image per row, and no row names one: name "
                         "its column with --image-column")
    if not any((s.get("prompt") or "").strip() for s in samples):
        raise InputError(f"{config.input}: no row has a prompt{' or instruction' * (config.task == 'edit')}: name "
                         "its column with --prompt-column")


def identity(config: GenConfig) -> dict:
    return {k: v for k, v in to_dict(config).items() if k not in RUNTIME_FIELDS}


def run(config: GenConfig, stage: type[GenStage] = GenStage) -> int:
    """Run generation; returns the process exit code. `stage` is what each worker runs: GenStage,
    or a subclass (tests use one to raise faults they cannot cause)."""
    config = resolve_size(dataclasses.replace(config, model=config.model or DEFAULT_MODELS[config.task]))
    check_model(resolve_model(config.model), config.task)
    for where, _ in map(parse_lora, config.lora or []):
        check_lora(resolve_model(where))
    columns = Columns(config.id_column, config.prompt_column, config.image_column, config.category_column)
    samples = load_samples(config.input, columns, config.num_samples, config.offset, config.image_root,
                           image_store=Path(config.output_dir) / "inputs")
    samples = only_categories(samples, config.categories)
    check_task(config, samples)
    if ids_from_index(samples):
        print(f"gen: {INDEX_IDS_NOTE}", file=sys.stderr)
    placement = place(config.devices, config.gpus, on_cluster=config.engine == "ray")
    if config.quantize == "fp8":
        require_fp8_gpus(placement.devices)
    spec = StageSpec("gen", stage(config), GEN_SCHEMA, to_dict(config), identity(config), identity(GenConfig()))
    settings = RunSettings(
        executor=config.engine, force=config.force, retry_failed=config.retry_failed, progress=config.progress,
        verbose=config.verbose, ray_address=config.ray_address, ray_batch_size=4 * config.batch_size,
        policy=FaultPolicy(max_retries=config.max_retries, serial_load=config.serial_load,
                           item_timeout_s=config.item_timeout, load_timeout_s=config.load_timeout),
    )
    run_stage(Path(config.output_dir), spec, FixedWork(samples), placement, settings)
    return report(config, samples)


def report(config: GenConfig, samples: list[dict]) -> int:
    status = latest_status(Path(config.output_dir) / "manifest")
    keys = [s["key"] for s in samples]
    ok = sum(status.get(k, ("",))[0] == "ok" for k in keys)
    failed = sum(status.get(k, ("",))[0] == "failed" for k in keys)
    out = Path(config.output_dir).resolve()
    print(f"gen: {ok} ok, {failed} failed of {len(samples)}")
    print(f"images:   {out / 'images'}")
    print(f"manifest: {out / 'manifest'}")
    if samples and failed == len(samples):
        return 1
    return 1 if (config.fail_on_error and failed) else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = parse_config(GenConfig, argv, "python -m gen.run", __doc__.splitlines()[0], default_config=str(DEMO_CONFIG))
    model = config.model or DEFAULT_MODELS[config.task]
    if argv and model.startswith("tiny:"):  # not the demo: say what the images are worth
        real = "Qwen/Qwen-Image (configs/qwen_image.yaml)" if config.task == "t2i" else \
            "Qwen/Qwen-Image-Edit-2509 (configs/qwen_image_edit_2509.yaml)"
        print(f"gen: {model} is a tiny test pipeline with random weights: its images are noise; pass --model {real} "
              "for real images", file=sys.stderr)
    try:
        return run(config)
    except (InputError, RunDirError, PoolError, ValueError, OSError) as exc:  # OSError: our own I/O (a full disk)
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
