"""What both judge backends (vLLM, transformers) share as a stage: judges per task, failed rows
made without a model, the --print-samples line and the --write-txt caption files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from data.manifest import fsync_dir, open_new
from data.models import resolve_model
from pool.stage import Feed, Stage, environment_fault
from score.config import ScoreConfig
from score.judge import Judge, pixel_range, processor_range_applies, resolve_template
from score.model_info import processor_pixels


def sample_line(row: dict) -> str:
    """The seeds' per-sample line: `[Sample    3] Score: 8.50 | Response: <the judge's reasoning>`."""
    score = row.get("overall")
    shown = f"{score:.2f}" if isinstance(score, float) else "-"
    response = row.get("reasoning") or row.get("caption") or f"failed: {row.get('error')}"
    return f"[Sample {row['index']:>4}] Score: {shown} | Response: {' '.join(str(response).split())}"


class ScoreStage(Stage):
    """A judge stage; subclasses load a model and yield rows from `rows(feed)`."""

    def __init__(self, config: ScoreConfig, task: str | None = None):
        self.config = config
        self.task = task or (config.task if config.task != "auto" else "t2i")  # the run's task: engine settings
        self.template = resolve_template(config, self.task)
        self.tokenizer = None  # set by load(): Judge renders prompts with it
        self.judges: dict[str, Judge] = {}

    def judge(self, task: str) -> Judge:
        if task not in self.judges:
            self.judges[task] = self._judge(task, self.tokenizer)
        return self.judges[task]

    def _judge(self, task: str, tokenizer) -> Judge:
        """A judge for `task`; it records the most pixels its images keep: ours, or fewer where the
        judge's processor runs with its own range and that is smaller."""
        template = resolve_template(self.config, task)
        own = processor_range_applies(self.config, template) and pixel_range(self.config, template)
        processor = processor_pixels(resolve_model(self.config.model)) if own else None
        return Judge(self.config, template, tokenizer, seen_max_pixels=processor[1] if processor else None)

    def failed_row(self, item: dict, reason: str) -> dict:
        return self._judge(item["task"], None).failed(item, reason)

    def line(self, row: dict) -> str | None:
        return sample_line(row) if self.config.print_samples else None

    def rows(self, feed: Feed) -> Iterator[dict]:
        raise NotImplementedError

    def process(self, feed: Feed) -> Iterator[dict]:
        for row in self.rows(feed):
            if self.config.write_txt and row.get("status") == "ok" and row.get("caption") is not None \
                    and row.get("image_path"):  # an image sent in memory has no folder to write beside
                write_caption(row)
            yield row


def write_caption(row: dict) -> None:
    """The caption beside its image, whole or not at all, before the row is journaled: a row on
    disk means its file is there too. A file that cannot be written fails that row, not the run."""
    path = Path(row["image_path"]).with_suffix(".txt")
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open_new(tmp, "w") as handle:
            handle.write(row["caption"] + "\n")
            handle.flush()
            os.fsync(handle.fileno())  # the caption on disk before the row that says it is there
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        fault = environment_fault(exc)
        if fault:  # a full disk is not this caption's fault: the run stops, and a rerun writes it
            raise fault from exc
        row.update(status="failed", error=f"could not write the caption file {path}: {exc}")
