"""The contract between a stage (generation, judging) and whatever runs it.

A stage is built in the driver from its config alone, so the driver can make failed rows and
describe it without loading a model. Each worker then gets its own copy and calls `load(device)`
once, `process(feed)` to turn items into rows, and `close()`. A stage never sees processes,
queues or other workers: executors (pool/executor.py, pool/ray_executor.py) own those, and
stages import only this module and data/.

Work reaches a run through `Work.poll()`: a fixed list hands everything over at once; a run that
follows another (`score.run --follow`) hands over rows as they land.
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa


class PoolError(RuntimeError):
    """No worker could start (bad model path, missing library...), or a stage stopped the run: the
    message says why."""


class RunFault(RuntimeError):
    """An error of the setup or the environment, not of the item (a rejected API key, an endpoint that
    does not serve the model, a full disk): raised from `Stage.process`, it stops the run with its
    message as one line. Rows already written stay; the items in flight get none, so a rerun does them."""


# The machine's, not the sample's: a full disk, a quota, a read-only or failing disk, a file-size limit.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG}


def environment_fault(exc: BaseException) -> RunFault | None:
    """The RunFault an exception amounts to when it is the environment's (see ENVIRONMENT_ERRNOS, and a
    GPU left in an error state, after which every call fails), else None: the item's own error."""
    if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
        where = f" ({exc.filename})" if exc.filename else ""
        return RunFault(f"{exc.strerror or exc}{where}: the machine's fault, not a sample's; free the space or lift "
                        "the limit and run the same command again to finish the rest")
    text = str(exc)
    if "CUDA error" in text and "out of memory" not in text:  # sticky: the context is lost until the process ends
        return RunFault(f"the GPU is in an error state ({text.splitlines()[0]}); run the same command again")
    return None


class Feed(Protocol):
    """A worker's view of its work: items arrive on request."""

    exhausted: bool  # no item will come any more

    def take(self, n: int, block: bool = True) -> list[dict]:
        """Up to `n` items; with `block`, wait until at least one arrives or the work ends."""
        ...


class Stage(Protocol):
    """What a worker runs. Subclass it: the optional members have their defaults here."""

    prefetch: int = 1  # items a worker asks for ahead of what it is processing

    def load(self, device: str) -> None:
        """Load the model on `device` (`cpu` or `cuda`: the executor has set CUDA_VISIBLE_DEVICES)."""
        ...

    def process(self, feed: Feed) -> Iterator[dict]:
        """One row per item taken from `feed`, each as soon as it is finished."""
        ...

    def failed_row(self, item: dict, reason: str) -> dict:
        """The row of an item that could not be processed (its worker died, its batch broke)."""
        ...

    def steps(self, done: int, total: int) -> None:
        """Called by the stage on its way through the item in flight (a diffusion pipeline's denoising
        steps). A no-op here; an executor that shows progress replaces it on its worker's copy."""

    def line(self, row: dict) -> str | None:
        """A line the driver prints for a finished row (e.g. --print-samples), or None."""
        return None

    def close(self) -> None:
        """Release the model (an engine's subprocesses) before the worker exits."""


class ListFeed:
    """A Feed over a fixed list: a Ray batch, or a stage driven in-process."""

    def __init__(self, items: list[dict]):
        self.buffer = deque(items)
        self.exhausted = not self.buffer

    def take(self, n: int, block: bool = True) -> list[dict]:
        taken = [self.buffer.popleft() for _ in range(min(n, len(self.buffer)))]
        self.exhausted = not self.buffer
        return taken


def items_of(feed: Feed) -> Iterator[dict]:
    """A feed's items one at a time, for stages that take them singly."""
    while items := feed.take(1):
        yield items[0]


class Work(Protocol):
    """Where a run's items come from."""

    def poll(self) -> tuple[list[dict], bool]:
        """Items not handed out before, and whether these are the last."""
        ...


class FixedWork:
    """A list of items known at the start."""

    def __init__(self, items: list[dict]):
        self.items = items

    def poll(self) -> tuple[list[dict], bool]:
        items, self.items = self.items, []
        return items, True


@dataclass(frozen=True)
class Output:
    """Where workers write their rows: a manifest folder and its schema (see data/manifest.py)."""

    folder: str
    schema: pa.Schema


@dataclass(frozen=True)
class FaultPolicy:
    """How every executor treats failures, so that local and Ray runs end the same way."""

    max_retries: int = 1        # an item whose worker died is retried this often, then gets a failed row
    max_restarts: int = 3       # per worker slot: a device that keeps dying is given up on
    start_grace_s: float = 300  # work starts when every worker has loaded, or this long after the first
    serial_load: bool = False   # load one worker at a time (replicas sharing a GPU, tight host memory)
    item_timeout_s: float | None = None  # a worker holding items with no row for this long is stuck: killed,
    #                                      its items isolated; None: ITEM_TIMEOUT_FLOOR_S or 20x its pace so far
    load_timeout_s: float = 3600         # a worker not loaded after this long is stuck: killed, a start failure


ITEM_TIMEOUT_FLOOR_S = 900  # the automatic --item-timeout never goes below this (a first row may compile)
ITEM_TIMEOUT_PACES = 20     # ... and is this many times the worker's mean seconds per row


@dataclass(frozen=True)
class ExecutorOptions:
    """Settings only some executors read (each executor says which)."""

    log_dir: str | None = None   # each worker's output goes to <log_dir>/worker-<slot>.log; None: the terminal
    ray_address: str = "auto"
    ray_batch_size: int = 16


class Executor(Protocol):
    """Turns a placement into workers, feeds them work and applies the fault policy.
    Constructed as `Executor(placement, policy, options)`; registered in pool/runner.py."""

    def run(self, stage: Stage, work: Work, output: Output, progress: Any) -> None:
        """Process every item `work` hands out; every item ends with exactly one row in `output`."""
        ...
