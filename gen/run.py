"""`python -m gen.run`: generate or edit images for a sample set on every device.

With no arguments it runs `configs/demo.yaml` (tiny offline model, bundled prompts).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from data.config import parse_config, to_dict
from data.manifest import GEN_SCHEMA, ManifestWriter, latest_status
from data.rundir import RunDir, RunDirError
from data.sources import Columns, InputError, load_samples, only_categories
from data.tiny import resolve_model
from gen.config import RUNTIME_FIELDS, GenConfig
from gen.pipeline import check_lora, check_model, parse_lora
from gen.worker import failed_row
from pool.devices import describe, plan_devices, require_fp8_gpus
from pool.executor import PoolError, make_executor
from pool.progress import Progress

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
DEFAULT_MODELS = {"t2i": "tiny:t2i", "edit": "tiny:edit"}


def select_todo(samples: list[dict], done: dict[str, tuple[str, int]], retry_failed: bool) -> list[dict]:
    """Samples still to run, each with its attempt number."""
    todo = []
    for sample in samples:
        status, attempt = done.get(sample["key"], (None, 0))
        if status == "ok" or (status == "failed" and not retry_failed):
            continue
        todo.append({**sample, "attempt": attempt + 1})
    return todo


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


def identity(config: GenConfig) -> dict:
    return {k: v for k, v in to_dict(config).items() if k not in RUNTIME_FIELDS}


def run(config: GenConfig, stage: str = "gen.worker:GenStage") -> int:
    """Run generation; returns the process exit code. `stage` ("module:Class") is what each
    worker runs: GenStage, or a subclass (tests use one to raise faults they cannot cause)."""
    config = resolve_size(dataclasses.replace(config, model=config.model or DEFAULT_MODELS[config.task]))
    check_model(resolve_model(config.model), config.task)
    for where, _ in map(parse_lora, config.lora or []):
        check_lora(resolve_model(where))
    columns = Columns(config.id_column, config.prompt_column, config.image_column, config.category_column)
    samples = load_samples(config.input, columns, config.num_samples, config.offset, config.image_root,
                           image_store=Path(config.output_dir) / "inputs")
    samples = only_categories(samples, config.categories)
    # Ray without --devices: every GPU of the cluster, counted there rather than on this machine
    ray_cluster = config.engine == "ray" and not config.devices
    devices = None if ray_cluster else plan_devices(config.devices, config.gpus)
    if config.quantize == "fp8":
        require_fp8_gpus(devices)
    rundir = RunDir(config.output_dir)
    rundir.lock()
    try:
        rundir.check_config(identity(config), config.force, identity(GenConfig()))
        rundir.save_config(to_dict(config), identity(config))
        manifest = Path(config.output_dir) / "manifest"
        writer = ManifestWriter(manifest, GEN_SCHEMA)
        todo = select_todo(samples, latest_status(manifest), config.retry_failed)
        print(f"gen: {len(samples)} samples, {len(samples) - len(todo)} already done, "
              f"{len(todo)} to run on {describe(devices) if devices else 'every GPU of the Ray cluster'}", file=sys.stderr)
        progress = Progress(len(todo), config.progress, unit="img")
        if todo:
            executor = make_executor(
                config.engine, config.ray_address, ray_batch_size=4 * config.batch_size, gpus_per_worker=1,
                stage_path=stage, config=config, devices=devices, on_row=writer.add,
                failed_row=lambda item, reason: failed_row(item, config, reason),
                max_retries=config.max_retries, serial_load=config.serial_load, progress=progress,
                log_dir=None if config.verbose else str(Path(config.output_dir) / "logs"),
            )
            try:
                executor.run(todo)
            finally:
                writer.close()
        else:
            writer.close()
        return report(config, samples, progress)
    finally:
        rundir.unlock()


def report(config: GenConfig, samples: list[dict], progress: Progress) -> int:
    status = latest_status(Path(config.output_dir) / "manifest")
    keys = [s["key"] for s in samples]
    ok = sum(status.get(k, ("",))[0] == "ok" for k in keys)
    failed = sum(status.get(k, ("",))[0] == "failed" for k in keys)
    if progress.slots:
        print(progress.table(), file=sys.stderr)
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
    try:
        return run(config)
    except (InputError, RunDirError, PoolError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
