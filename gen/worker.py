"""The generation stage: one pipeline per process, samples in, manifest rows out.

Each sample gets its own generator seeded with `seed_start + index`, so its image is the same
whichever device or batch it lands in. A batch that raises is re-run one sample at a time, so
only the sample at fault becomes a failed row.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data.images import open_rgb
from data.manifest import GEN_SCHEMA, empty_row, fsync_dir, open_new
from data.models import resolve_model
from gen.config import GenConfig
from gen.pipeline import Params, TaskAdapter, apply_loras, load_pipeline, parse_lora, speed_up
from pool.stage import Feed, Stage, environment_fault


def image_name(key: str, seed: int) -> str:
    return f"{key}_seed{seed}.png"


def base_row(sample: dict, config: GenConfig) -> dict:
    """The manifest row of a sample before it runs: inputs and generation parameters."""
    row = empty_row(GEN_SCHEMA)
    row.update({k: sample.get(k) for k in ("key", "sample_id", "index", "category", "prompt", "source_image", "extra")})
    row.update(
        task=config.task, model=config.model, seed=config.seed_start + sample["index"], steps=config.steps,
        guidance_scale=config.guidance_scale, true_cfg_scale=config.true_cfg_scale,
        negative_prompt=config.negative_prompt, height=config.height, width=config.width, dtype=config.dtype,
        attempt=sample.get("attempt", 1),
    )
    return row


def failed_row(sample: dict, config: GenConfig, reason: str) -> dict:
    row = base_row(sample, config)
    row.update(status="failed", error=reason, started_at=time.time(), duration_s=0.0)
    return row


class GenStage(Stage):
    def __init__(self, config: GenConfig):
        self.config = config
        self.prefetch = 2 * config.batch_size

    def failed_row(self, item: dict, reason: str) -> dict:
        return failed_row(item, self.config, reason)

    def load(self, device: str) -> None:
        import torch

        config = self.config
        if device == "cpu":
            torch.set_num_threads(int(os.environ.get("GENSCORE_CPU_THREADS", "1")))
        self.device = device
        self.pipe = load_pipeline(resolve_model(config.model), config.dtype, device, config.cpu_offload,
                                  config.scheduler, config.load_format)
        apply_loras(self.pipe, [(resolve_model(w), scale) for w, scale in map(parse_lora, config.lora or [])])
        speed_up(self.pipe, config.compile, config.attention_backend, config.cache_threshold, device,
                 config.quantize)
        self.adapter = TaskAdapter(self.pipe, config.task)
        self.batch_size = min(config.batch_size, self.adapter.max_batch or config.batch_size)
        self.prefetch = 2 * self.batch_size
        self.params = Params(
            steps=config.steps, height=config.height, width=config.width, guidance_scale=config.guidance_scale,
            true_cfg_scale=config.true_cfg_scale, negative_prompt=config.negative_prompt,
            extra=config.pipeline_kwargs or {},
        )
        self.images_dir = Path(config.output_dir) / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)

    def process(self, feed: Feed) -> Iterator[dict]:
        # take() hands over what is there (at least one): a last, short batch runs at once
        # instead of waiting for samples that will never come.
        while batch := feed.take(self.batch_size):
            rows, call_failed = self._run(batch)
            if call_failed and len(batch) > 1:
                rows = [self._run([sample])[0][0] for sample in batch]  # isolate the sample at fault
            yield from rows

    def _run(self, batch: list[dict]) -> tuple[list[dict], bool]:
        """Rows for a batch, and whether the pipeline call itself failed."""
        import torch

        rows = [base_row(s, self.config) for s in batch]
        start = time.time()
        ready, images = [], []
        for sample, row in zip(batch, rows):
            try:
                image = open_rgb(sample.get("source_image")) if self.config.task == "edit" else None
                if not (sample.get("prompt") or "").strip():
                    raise ValueError("empty prompt")
            except Exception as exc:  # noqa: BLE001 - a bad input becomes its own failed row
                row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
                continue
            ready.append(row)
            images.append(image)
        call_failed = False
        sizes = {area_size(image.size, self.config.area) for image in images} if self.config.area else {None}
        if ready and len(sizes) > 1:  # one call makes one size: sources of other shapes go one by one
            return [self._run([s])[0][0] for s in batch], False
        params = self.params
        if self.config.area and ready:
            width, height = sizes.pop()
            params = dataclasses.replace(self.params, height=height, width=width)
        if ready:
            try:
                generators = [torch.Generator("cpu").manual_seed(r["seed"]) for r in ready]
                clock = PhaseClock(self.steps)
                outputs = self.adapter([r["prompt"] for r in ready], images if self.config.task == "edit" else None,
                                       generators, params, on_step=clock.step)
                phases = clock.phases(len(ready))
                for row, output in zip(ready, outputs):
                    saving = time.time()
                    self._save(row, output)
                    row.update(phases, save_s=time.time() - saving)
            except Exception as exc:  # noqa: BLE001 - out of memory, pipeline errors: failed rows
                fault = environment_fault(exc)
                if fault:  # a full disk, a lost GPU: no sample's fault, so none is charged with it
                    raise fault from exc
                _free_memory(exc)
                call_failed = True
                for row in ready:
                    row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        duration = (time.time() - start) / len(batch)
        for row in rows:
            row.update(started_at=start, duration_s=duration)
        return rows, call_failed

    def _save(self, row: dict, output: np.ndarray) -> None:
        from PIL import Image

        if not np.isfinite(output).all():
            row.update(status="failed", error="NaN or inf in the pipeline output")
            return
        pixels = (np.clip(output, 0, 1) * 255).round().astype(np.uint8)
        name = image_name(row["key"], row["seed"])
        tmp = self.images_dir / f".{name}.tmp"
        try:
            with open_new(tmp) as handle:
                Image.fromarray(pixels).save(handle, format="PNG")
                handle.flush()
                os.fsync(handle.fileno())  # the pixels on disk before the row that points at them
        except OSError as exc:  # PIL's errors do not say which file: a full disk's message should
            tmp.unlink(missing_ok=True)
            raise OSError(exc.errno, exc.strerror, str(tmp)) from exc
        os.replace(tmp, self.images_dir / name)  # a reader never sees half an image
        fsync_dir(self.images_dir)
        row.update(status="ok", image_path=f"images/{name}", height=pixels.shape[0], width=pixels.shape[1])


class PhaseClock:
    """Where a pipeline call's time goes, from the host clock at its step callbacks: encoding until the first
    step ends (less one step), the steps, decoding after the last. Each step is also passed on to `steps`
    (the live view). A pipeline without step callbacks leaves the phases unknown."""

    def __init__(self, steps):
        self.forward, self.start, self.ticks = steps, time.time(), []

    def step(self, done: int, total: int) -> None:
        self.ticks.append(time.time())
        self.forward(done, total)

    def phases(self, images: int) -> dict:
        if not self.ticks:
            return {}
        first, last = self.ticks[0], self.ticks[-1]
        per_step = (last - first) / (len(self.ticks) - 1) if len(self.ticks) > 1 else first - self.start
        share = {"encode_s": max(0.0, first - self.start - per_step), "denoise_s": per_step * len(self.ticks),
                 "decode_s": time.time() - last}
        return {k: v / images for k, v in share.items()}


def area_size(size: tuple[int, int], area: int) -> tuple[int, int]:
    """(width, height) of about `area` pixels at the aspect ratio of `size`, sides multiples of 32
    (as the Qwen-Image edit pipelines round their own default size)."""
    ratio = size[0] / size[1]
    width = max(32, round(math.sqrt(area * ratio) / 32) * 32)
    height = max(32, round(width / ratio / 32) * 32)
    return width, height


def _free_memory(exc: Exception) -> None:
    import torch

    if isinstance(exc, torch.OutOfMemoryError) and torch.cuda.is_available():
        torch.cuda.empty_cache()
