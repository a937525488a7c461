"""The Ray executor: the same stages as the local executor, as a Ray Data actor pool.

One actor per worker (a GPU, a tensor-parallel group of GPUs, or a CPU slot), anywhere in the
cluster; each holds one stage (a diffusers pipeline, a vLLM replica) for the whole run and gets
batches of items through `map_batches`. Rows stream back to the driver, which writes the
manifest exactly as the local engine does, so resume, reports and the notebook do not change.
The output folder must be on a filesystem every node sees (images are written by the actors).

Items and rows cross Ray as JSON strings: Arrow then never has to guess a column's type from a
batch that happens to hold only None. A batch whose stage raises comes back as failed rows, and
Ray restarts an actor that dies and re-runs its batch, so the job itself does not die.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pool.devices import group_size
from pool.progress import Progress


class ListFeed:
    """A Feed over one batch of items: what the stages read from, without a parent process."""

    def __init__(self, items: list[dict]):
        self.buffer = deque(items)
        self.exhausted = not self.buffer

    def take(self, n: int, block: bool = True) -> list[dict]:
        taken = [self.buffer.popleft() for _ in range(min(n, len(self.buffer)))]
        self.exhausted = not self.buffer
        return taken

    def __iter__(self) -> Iterator[dict]:
        while self.buffer:
            yield self.take(1)[0]


class StageActor:
    """Holds one stage for the actor's life; turns a batch of items into a batch of rows."""

    def __init__(self, stage_path: str, config: Any, gpus: int, failed_row: Callable[[dict, str], dict]):
        if not gpus:  # Ray sets CUDA_VISIBLE_DEVICES for GPU actors; CPU actors share the cores politely
            os.environ.update({"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "GENSCORE_CPU_THREADS": "1",
                               "VLLM_CPU_OMP_THREADS_BIND": "nobind"})
        module, name = stage_path.split(":")
        self.device = "cuda" if gpus else "cpu"
        self.stage = getattr(importlib.import_module(module), name)(config, self.device)
        self.failed_row = failed_row
        self.label = f"ray:{socket.gethostname()}:{self.device}"

    def __call__(self, batch: dict) -> dict:
        items = [json.loads(text) for text in batch["item"]]
        try:
            rows = list(self.stage.process(ListFeed(items)))
        except Exception as exc:  # noqa: BLE001 - a broken batch becomes failed rows, not a dead job
            rows = [self.failed_row(item, f"{type(exc).__name__}: {exc}") for item in items]
        for row in rows:
            row.update(device=self.label, worker=os.getpid())
        return {"row": [json.dumps(row, default=str) for row in rows]}


@dataclass
class RayExecutor:
    """Runs `stage_path` over items on a Ray cluster, calling `on_row` per result in the driver."""

    stage_path: str
    config: Any
    devices: list[str] | None  # one per actor (cpu, cuda:N, cuda:N+M); None = every GPU in the cluster
    on_row: Callable[[dict], None]
    failed_row: Callable[[dict, str], dict]
    gpus_per_worker: int = 1  # with devices None: the tensor-parallel group size
    address: str = "auto"
    batch_size: int = 16
    max_retries: int = 1
    progress: Progress | None = None

    def run(self, items: list[dict]) -> None:
        import ray

        if not ray.is_initialized():
            # "local" starts a private instance (tests, one machine); otherwise join a cluster
            ray.init(address=None if self.address == "local" else self.address, log_to_driver=False)
        if self.devices:
            workers = len(self.devices)
            gpus = group_size(self.devices[0]) if self.devices[0].startswith("cuda") else 0
        else:
            gpus = self.gpus_per_worker
            workers = int(ray.cluster_resources().get("GPU", 0)) // gpus
            if not workers:
                raise RuntimeError(f"the Ray cluster at {self.address!r} has no GPUs; pass --devices cpu to run on CPUs")
        data = ray.data.from_items([{"item": json.dumps(item, default=str)} for item in items])
        rows = data.map_batches(
            StageActor, batch_size=self.batch_size, batch_format="numpy", concurrency=workers,
            num_gpus=gpus or None, num_cpus=1,
            fn_constructor_kwargs=dict(stage_path=self.stage_path, config=self.config, gpus=gpus,
                                       failed_row=self.failed_row),
            max_restarts=self.max_retries, max_task_retries=self.max_retries,
        )
        if self.progress:
            self.progress.worker_started(0, f"ray x{workers}")
        for record in rows.iter_rows():
            row = json.loads(record["row"])
            self.on_row(row)
            if self.progress:
                self.progress.row(0, row.get("status") == "ok")
        if self.progress:
            self.progress.close()
