"""The judge as a library: `Scorer` starts the replicas once, then takes items and gives back rows.

    from score.scorer import Scorer

    with Scorer(model="Qwen/Qwen3-VL-8B-Instruct", protocol="viescore", devices="cuda:0,cuda:1") as scorer:
        rows = scorer.score([{"id": "a", "prompt": "make it blue", "image": edited, "source_image": source}])
        row = await scorer.ascore({"id": "b", "prompt": "a red cat", "image": "cat.png"})

The replicas are the ones `score.run` starts (the same placement, stage, executor and fault policy;
pool/executor.py), fed from a `RequestWork` (pool/stream.py) instead of a file: items submitted
from any thread or request join each replica's continuous batch as they come. Rows are the rows
`score.run` writes (data/manifest.py: SCORE_SCHEMA), `key` being the item's id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import itertools
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from data.config import load_yaml
from data.manifest import SCORE_SCHEMA, recover
from data.rundir import RunDir
from pool.executor import LocalExecutor
from pool.stage import ExecutorOptions, Output
from pool.stream import RequestWork
from score.config import ScoreConfig
from score.judge import resolve_template
from score.run import fault_policy, identity, judge_stage, prepare_judge

ID_FIELDS = ("id", "key", "sample_id")
PROMPT_FIELDS = ("prompt", "instruction")
IMAGE_FIELDS = ("image", "image_path", "output_image", "edited_image")
SOURCE_FIELDS = ("source_image", "input_image", "source")


class ItemError(ValueError):
    """An item that cannot be judged (no image, an undecodable one, too many pixels): said before it is queued."""


class Scorer:
    """Judge replicas started once; `score(items)` / `await ascore(item)` give back rows. Close it (or use
    it as a context manager) to stop every process."""

    def __init__(self, config: ScoreConfig | None = None, *, log_dir: str | None = None,
                 max_pending: int | None = None, **flags: Any):
        """`flags` are ScoreConfig fields (model=, protocol=, devices=, replicas=, ...) over `config`.
        `log_dir`: every row is also kept there, a manifest `score.report` reads. `max_pending`: items
        queued or in flight at most (more raise pool.stream.QueueFull)."""
        if multiprocessing.parent_process() is not None and sys.modules["__main__"].__name__ == "__mp_main__":
            raise RuntimeError("a replica process is re-running the script that starts the Scorer: start it under "
                               "`if __name__ == \"__main__\":` (each replica is a spawned process, which imports the "
                               "main script first)")
        config = dataclasses.replace(config or ScoreConfig(), **flags)
        if config.engine != "local":
            raise ValueError("the judge service runs its replicas on this machine (--engine local); "
                             "--engine ray is for batch runs")
        self.task = config.task if config.task != "auto" else "edit"  # sizes the context for two images
        template = resolve_template(config, self.task)
        self.config, self.placement = prepare_judge(config, template)
        self.stage = judge_stage(self.config, self.task)
        self.work = RequestWork(max_pending)
        self.replicas = Replicas(len(self.placement.devices))
        self.identity = identity(self.config, template)
        self._seq = itertools.count()
        self._tasks = {self.task}  # tasks whose questions exist for this protocol
        self._closed = False
        self._own_dir = log_dir is None
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="genscore-scorer-"))
        self._rundir = RunDir(self.log_dir, config_name="score.json")
        self._rundir.lock()  # one service per log folder
        try:
            self._rundir.check_config(self.identity, self.config.force, identity(ScoreConfig()))
            self._rundir.save_config(dataclasses.asdict(self.config), self.identity)
            recover(self.log_dir / "manifest", SCORE_SCHEMA)
        except BaseException:
            self._rundir.unlock()
            raise
        self._spill = spill_dir()
        self._thread = threading.Thread(target=self._run, name="genscore-replicas", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, path: str | Path, **flags: Any) -> "Scorer":
        """A Scorer from a score.run YAML (configs/qwen3vl_judge.yaml), `flags` on top."""
        return cls(ScoreConfig(**load_yaml(path, ScoreConfig)), **flags)

    def _run(self) -> None:
        logs = None if self.config.verbose else str(self.log_dir / "logs")
        executor = LocalExecutor(self.placement, fault_policy(self.config), ExecutorOptions(log_dir=logs))
        try:
            executor.run(self.stage, self.work, Output(str(self.log_dir / "manifest"), SCORE_SCHEMA), self.replicas)
        except BaseException as exc:  # noqa: BLE001 - every replica gone, a machine fault: no request may wait
            print(f"genscore: the judge replicas stopped: {exc}", file=sys.stderr, flush=True)
            self.replicas.error = str(exc)
            self.work.fail(exc)

    @property
    def ready(self) -> bool:
        """Every replica has loaded its judge and none has failed for good."""
        return self._thread.is_alive() and self.replicas.all_ready and not self._closed

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self.replicas.ready_event.wait(timeout) and self.ready

    def submit(self, items_in: Iterable[dict]) -> list[Future]:
        """Queue items; a Future per item, resolved with its row. Raises ItemError for an item that cannot
        be judged (nothing of the call is queued then), pool.stream.QueueFull past `max_pending`."""
        items = []
        try:
            for raw in items_in:
                items.append(self.item(raw))
            futures = self.work.put(items)
        except BaseException:
            for item in items:
                _unspill(item)
            raise
        return [_with_id(future, item) for future, item in zip(futures, items)]

    def score(self, items: Iterable[dict]) -> list[dict]:
        """The rows of `items`, in order (one per item: failed ones carry `status` failed and `error`)."""
        return [future.result() for future in self.submit(items)]

    async def ascore(self, item: dict) -> dict:
        return await asyncio.wrap_future(self.submit([item])[0])

    def item(self, raw: dict) -> dict:
        """A request's item as the stage's sample (see data/sources.py's shape), its images checked now."""
        if not isinstance(raw, dict):
            raise ItemError(f"an item is an object with an image and a prompt, not {type(raw).__name__}")
        seq = next(self._seq)
        sample_id = str(_first(raw, ID_FIELDS, self.config.id_column) or seq)
        image = _first(raw, IMAGE_FIELDS, self.config.image_column)
        source = _first(raw, SOURCE_FIELDS, self.config.source_column)
        task = self.config.task if self.config.task != "auto" else ("edit" if source is not None else "t2i")
        if task not in self._tasks:  # checked once per task; one without questions (editscore's t2i) each time
            try:
                resolve_template(self.config, task)
            except ValueError as exc:
                raise ItemError(f"item {sample_id}: {exc}") from None
            self._tasks.add(task)
        if image is None:
            raise ItemError(f"item {sample_id}: no image to judge (give it as `image`)")
        if task == "edit" and source is None:
            raise ItemError(f"item {sample_id}: an edit is judged against its source: give `source_image`")
        prompt = _first(raw, PROMPT_FIELDS, self.config.prompt_column)
        known = {*ID_FIELDS, *PROMPT_FIELDS, *IMAGE_FIELDS, *SOURCE_FIELDS, "category"}
        extra = {k: v for k, v in raw.items() if k not in known}
        item = {"key": f"{sample_id}#{seq}", "sample_id": sample_id, "index": seq, "task": task,
                "prompt": None if prompt is None else str(prompt), "category": raw.get("category"),
                "extra": json.dumps(extra, default=str, ensure_ascii=False) if extra else None}
        try:
            for role, value in (("image", image), ("source", source)):
                if value is not None:
                    item.update(_image_fields(role, value, sample_id, self._spill / f"{seq}-{role}"))
        except ItemError:
            _unspill(item)  # the image spilled before its source failed
            raise
        return item

    def close(self) -> None:
        """Answer what is pending, then stop every replica process; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.work.close()
        self._thread.join()
        recover(self.log_dir / "manifest", SCORE_SCHEMA)  # journals of replicas that were killed
        shutil.rmtree(self._spill, ignore_errors=True)
        self._rundir.unlock()
        if self._own_dir and self.replicas.error is None:
            shutil.rmtree(self.log_dir, ignore_errors=True)
        elif self._own_dir:  # the workers' logs say why the replicas stopped
            print(f"genscore: the replicas' logs are kept in {self.log_dir / 'logs'}", file=sys.stderr)

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Replicas:
    """The executor's progress hooks, kept as the service's view of its replicas: which have loaded, and
    why they stopped for good."""

    def __init__(self, count: int):
        self.count = count
        self.loaded: set[int] = set()
        self.error: str | None = None
        self.ready_event = threading.Event()

    @property
    def all_ready(self) -> bool:
        return len(self.loaded) == self.count and self.error is None

    def add_total(self, n: int) -> None:
        pass

    def worker_started(self, slot: int, device: str) -> None:
        self.loaded.discard(slot)  # a replacement for a replica that died: not ready until it loads

    def worker_ready(self, slot: int) -> None:
        self.loaded.add(slot)
        if self.all_ready:
            self.ready_event.set()

    def step(self, slot: int, done: int, total: int) -> None:
        pass

    def row(self, slot: int, ok: bool) -> None:
        pass  # serve.Metrics counts the rows it answers

    def close(self) -> None:
        self.loaded.clear()
        self.ready_event.set()  # nobody waits for a pool that has ended


def _first(raw: dict, names: tuple[str, ...], column: str | None) -> Any:
    for name in ((column,) if column else ()) + names:
        if raw.get(name) is not None:
            return raw[name]
    return None


def _image_fields(role: str, value: Any, sample_id: str, spill: Path) -> dict:
    """An image given as a path, encoded bytes, a PIL image or a numpy array, checked (decodable header,
    at most PIL's decompression-bomb limit of pixels) and kept as the stage reads it (judge.image_of):
    encoded bytes are written to `spill` (see spill_dir)."""
    from PIL import Image

    path_field = "image_path" if role == "image" else "source_image"
    try:
        if isinstance(value, (str, Path)):
            with Image.open(value) as image:
                _check_pixels(image.size)
            return {path_field: str(value)}
        if isinstance(value, (bytes, bytearray, memoryview)):
            with Image.open(io.BytesIO(value)) as image:
                _check_pixels(image.size)
            spill.write_bytes(value)
            return {f"{role}_data": spill}
        if not isinstance(value, Image.Image):
            value = Image.fromarray(_as_array(value))
        _check_pixels(value.size)
        return {f"{role}_data": value}
    except (OSError, ValueError, TypeError, Image.DecompressionBombError) as exc:
        what = "the image" if role == "image" else "the source image"
        raise ItemError(f"item {sample_id}: {what} cannot be read: {exc}") from None


def _check_pixels(size: tuple[int, int]) -> None:
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit and size[0] * size[1] > limit:
        raise ValueError(f"{size[0]}x{size[1]} is more pixels than the limit of {limit:,} (a decompression bomb?)")


def _as_array(value: Any):
    import numpy as np

    array = np.asarray(value)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise TypeError(f"an array image is HxW or HxWxC of uint8, not {array.shape} {array.dtype}")
    return array


def _with_id(future: Future, item: dict) -> Future:
    """The row as the caller knows it: `key` is the item's own id (the replicas ran it under a key unique
    among pending items). Its spilled images go once it has its row (retries in isolation read them too)."""
    out: Future = Future()

    def done(f: Future) -> None:
        _unspill(item)
        if f.exception() is not None:
            out.set_exception(f.exception())
        else:
            out.set_result({**f.result(), "key": item["sample_id"]})
    future.add_done_callback(done)
    return out


SPILL_ROOT = Path("/dev/shm")


def spill_dir() -> Path:
    """Where a request's encoded images wait for their replica: a file each in memory (tmpfs), so that the
    replica's decode threads read them and its queue carries only names. Pickled through the queue instead,
    they are read by the replica's engine loop (one H100, BENCHMARKS.md: a 576-item request took 7.0 rewards/s
    with its images pickled through the queue, 9.1 with the same images named by path).
    Folders left by a service that was killed are removed first."""
    root = SPILL_ROOT if SPILL_ROOT.is_dir() and os.access(SPILL_ROOT, os.W_OK) else Path(tempfile.gettempdir())
    for stale in root.glob("genscore-images-*"):
        pid = stale.name.split("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"genscore-images-{os.getpid()}-", dir=root))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def _unspill(item: dict) -> None:
    for role in ("image", "source"):
        if isinstance(item.get(f"{role}_data"), Path):
            item[f"{role}_data"].unlink(missing_ok=True)
