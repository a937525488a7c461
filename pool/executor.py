"""The local executor: one process per device, a shared work queue, fault handling.

This is the only code that knows about processes and devices. A stage is a class
`Stage(config, device)` whose `process(feed)` consumes items from `feed` and yields one result
row per item; it never sees queues or other workers.

Protocol: a worker loads its stage, says `ready`, then asks for work (`want`, n items); the
parent answers from the queue, so faster devices take more. Each result comes back as a `row`.
Work starts once every worker has loaded (a replica that loads first would otherwise fill its
whole window, possibly the whole run, while the others are still loading), and no worker holds
more than an even share of the work left.
Each worker talks back over its own pipe: a worker killed mid-write can only break its own
channel (a shared multiprocessing.Queue would stay locked and hang every other worker).
A worker that dies is replaced; the items it held are retried (`max_retries` times) and then
returned as failed rows, so every item ends with exactly one row.
"""

from __future__ import annotations

import ctypes
import importlib
import multiprocessing as mp
import os
import queue
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from multiprocessing.connection import Connection, wait
from dataclasses import dataclass, field
from typing import Any

from pool.devices import local_device, process_env
from pool.progress import Progress

MAX_RESTARTS = 3  # per device slot: a device that keeps dying is given up on
START_GRACE_S = 300  # after the first worker is ready, wait at most this long for the others


class PoolError(RuntimeError):
    """No worker could start (bad model path, missing library...): the message says why."""


class Feed:
    """A worker's view of the work queue: items arrive on request, `prefetch` ahead."""

    def __init__(self, wid: int, inbox: Any, send: Callable[[tuple], None], prefetch: int):
        self.wid, self.inbox, self.send = wid, inbox, send
        self.prefetch = max(1, prefetch)
        self.buffer: deque[dict] = deque()
        self.outstanding = 0
        self.exhausted = False

    def _request(self) -> None:
        want = self.prefetch - len(self.buffer) - self.outstanding
        if want > 0 and not self.exhausted:
            self.send(("want", self.wid, want))
            self.outstanding += want

    def _receive(self, block: bool) -> None:
        try:
            message = self.inbox.get(block=block)
        except queue.Empty:
            return
        if message is None:
            self.exhausted = True
            return
        self.outstanding -= message["asked"]
        self.buffer.extend(message["items"])

    def take(self, n: int, block: bool = True) -> list[dict]:
        """Up to `n` items; with `block`, wait until at least one arrives or the work ends."""
        self._request()
        while not self.buffer and not self.exhausted:
            if not block:
                self._receive(block=False)
                break
            self._receive(block=True)
            self._request()
        while not self.exhausted and not self.inbox.empty():
            self._receive(block=False)
        taken = [self.buffer.popleft() for _ in range(min(n, len(self.buffer)))]
        self._request()
        return taken

    def __iter__(self) -> Iterator[dict]:
        while True:
            items = self.take(1)
            if not items:
                return
            yield items[0]


def _own_process_group() -> None:
    """Lead a process group (so the parent can kill engine subprocesses with us) and die with
    the parent: on its death the kernel sends SIGTERM, and we take the whole group down."""
    os.setpgrp()
    signal.signal(signal.SIGTERM, lambda *_: os.killpg(0, signal.SIGKILL))
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the parent's shutdown still kills the group
    if os.getppid() == 1:
        os.killpg(0, signal.SIGKILL)  # the parent died before prctl took effect


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _to_log(path: str) -> None:
    """Send this process's output (and its engine subprocesses') to `path`: the terminal keeps
    genscore's own lines, the library warnings and tracebacks stay with the run."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _worker_main(wid: int, device: str, env: dict[str, str], stage_path: str, config: Any,
                 inbox: Any, outbox: Connection, load_lock: Any, log_path: str | None) -> None:
    _own_process_group()
    os.environ.update(env)
    if log_path:
        _to_log(log_path)
    try:
        module, name = stage_path.split(":")
        with load_lock if load_lock is not None else nullcontext():
            stage = getattr(importlib.import_module(module), name)(config, local_device(device))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
        traceback.print_exc()  # into the worker's log (or the terminal with --verbose)
        outbox.send(("fatal", wid, one_line(f"{type(exc).__name__}: {exc}"), log_path or "the output above"))
        return
    outbox.send(("ready", wid))
    feed = Feed(wid, inbox, outbox.send, getattr(stage, "prefetch", 1))
    for row in stage.process(feed):
        outbox.send(("row", wid, row))
    if hasattr(stage, "close"):
        stage.close()
    outbox.send(("exit", wid))


def one_line(message: str, limit: int = 400) -> str:
    """An error as one terminal line (vLLM's validation errors span several)."""
    text = " ".join(message.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass
class _Worker:
    wid: int
    device: str
    slot: int
    process: Any
    inbox: Any
    conn: Connection  # the worker's messages to us
    held: dict[str, dict] = field(default_factory=dict)  # key -> item sent, no row yet
    asked: int = 0
    ready: bool = False
    done: bool = False


@dataclass
class Executor:
    """Runs `stage_path` ("module:Class") over items on `devices`, calling `on_row` per result."""

    stage_path: str
    config: Any
    devices: list[str]
    on_row: Callable[[dict], None]
    failed_row: Callable[[dict, str], dict]  # (item, reason) -> the failed row for that item
    max_retries: int = 1
    serial_load: bool = False
    progress: Progress | None = None
    log_dir: str | None = None  # each worker's output goes to <log_dir>/worker-<slot>.log; None: the terminal

    def run(self, items: list[dict]) -> None:
        ctx = mp.get_context("spawn")
        self._ctx = ctx
        self._lock = ctx.Lock() if self.serial_load else None
        self._queue: deque[dict] = deque(items)
        self._remaining = len(items)
        self._workers: dict[int, _Worker] = {}
        self._restarts = [0] * len(self.devices)
        self._next_wid = 0
        self._errors: list[str] = []
        self._causes: dict[str, str] = {}  # each distinct start failure -> where its traceback is
        self._ever_ready = False
        self._first_ready_at: float | None = None
        self._started = False  # every worker loaded (or the grace period ran out): work flows
        self._last_check = time.monotonic()
        cpu_workers = sum(d == "cpu" for d in self.devices)
        self._envs = [process_env(d, slot, cpu_workers) for slot, d in enumerate(self.devices)]
        graceful = False
        try:
            for slot in range(len(self.devices)):
                self._spawn(slot)
            while self._remaining > 0:
                self._step()
            graceful = True
        finally:
            self._shutdown(graceful)

    def _spawn(self, slot: int) -> None:
        wid, self._next_wid = self._next_wid, self._next_wid + 1
        inbox = self._ctx.Queue()
        receive, send = self._ctx.Pipe(duplex=False)
        log_path = None
        if self.log_dir:
            os.makedirs(self.log_dir, exist_ok=True)
            log_path = os.path.join(self.log_dir, f"worker-{slot}.log")
        process = self._ctx.Process(
            target=_worker_main, name=f"genscore-worker-{wid}", daemon=False,
            args=(wid, self.devices[slot], self._envs[slot], self.stage_path, self.config, inbox, send, self._lock,
                  log_path),
        )
        process.start()
        send.close()  # the child holds the write end; EOF then means it is gone
        self._workers[wid] = _Worker(wid, self.devices[slot], slot, process, inbox, receive)
        if self.progress:
            self.progress.worker_started(slot, self.devices[slot])

    def _step(self) -> None:
        if time.monotonic() - self._last_check > 1.0:
            self._check_workers()
        by_conn = {w.conn: w for w in self._workers.values()}
        for conn in wait(list(by_conn), timeout=0.5):
            self._drain(by_conn[conn])

    def _drain(self, worker: _Worker) -> None:
        """Handle every message waiting on a worker's pipe."""
        try:
            while worker.wid in self._workers and worker.conn.poll():
                self._handle(worker.conn.recv())
        except (EOFError, OSError):  # the worker exited: its pipe is closed
            worker.process.join(timeout=5)
            if worker.wid in self._workers and not worker.done:
                self._on_death(worker)

    def _handle(self, message: tuple) -> None:
        kind, wid = message[0], message[1]
        worker = self._workers.get(wid)
        if worker is None:
            return  # a message from a worker already given up on
        if kind == "ready":
            worker.ready = self._ever_ready = True
            self._first_ready_at = self._first_ready_at or time.monotonic()
            self._dispatch()
        elif kind == "want":
            worker.asked += message[2]
            self._dispatch()
        elif kind == "row":
            self._finish(worker, message[2])
        elif kind == "fatal":
            self._fatal(worker, message[2], message[3])
        elif kind == "exit":
            worker.done = True

    def _dispatch(self) -> None:
        if not self._started:
            waited = time.monotonic() - (self._first_ready_at or time.monotonic())
            self._started = all(w.ready for w in self._workers.values()) or waited > START_GRACE_S
            if not self._started:
                return
        outstanding = len(self._queue) + sum(len(w.held) for w in self._workers.values())
        share = -(-outstanding // max(1, len(self._workers)))  # ceil of an even share of the work left
        for worker in self._workers.values():
            n = min(worker.asked, len(self._queue), share - len(worker.held))
            if n <= 0:
                continue
            items = [self._queue.popleft() for _ in range(n)]
            worker.asked -= n
            worker.held.update({item["key"]: item for item in items})
            worker.inbox.put({"items": items, "asked": n})

    def _finish(self, worker: _Worker, row: dict) -> None:
        worker.held.pop(row["key"], None)
        row.update(device=worker.device, worker=worker.slot)
        self.on_row(row)
        self._remaining -= 1
        if self.progress:
            self.progress.row(worker.slot, row.get("status") == "ok")
        self._dispatch()  # asks held back by the even-share cap are served as work drains

    def _fatal(self, worker: _Worker, message: str, where: str) -> None:
        self._errors.append(f"{worker.device}: {message}")
        self._causes[message] = where
        worker.done = True
        _kill_group(worker.process.pid)
        self._requeue_or_fail(worker, f"worker on {worker.device} failed: {message}")
        del self._workers[worker.wid]
        if not self._ever_ready and not self._workers:
            raise PoolError("\n".join(f"no worker could start: {cause} (traceback: {where})"
                                       for cause, where in self._causes.items()))
        self._dispatch()

    def _check_workers(self) -> None:
        self._last_check = time.monotonic()
        for worker in list(self._workers.values()):
            if not worker.process.is_alive() and not worker.done:
                self._drain(worker)  # its last messages first: rows, or why it could not start
                if worker.wid in self._workers and not worker.done:
                    self._on_death(worker)
        if not self._workers and self._remaining > 0:
            raise PoolError("every worker died; last errors: " + "; ".join(self._errors[-3:]))
        self._dispatch()  # the start grace period may have run out

    def _on_death(self, worker: _Worker) -> None:
        """Retry or fail what a dead worker held, and start a replacement on its device."""
        code = worker.process.exitcode
        _kill_group(worker.process.pid)  # its engine subprocesses go with it
        del self._workers[worker.wid]
        self._errors.append(f"{worker.device}: exit code {code}")
        self._requeue_or_fail(worker, f"worker on {worker.device} died (exit code {code})")
        if self._restarts[worker.slot] < MAX_RESTARTS:
            self._restarts[worker.slot] += 1
            self._spawn(worker.slot)
        self._dispatch()

    def _requeue_or_fail(self, worker: _Worker, reason: str) -> None:
        for item in list(worker.held.values()):
            item["_tries"] = item.get("_tries", 0) + 1
            if item["_tries"] <= self.max_retries:
                self._queue.appendleft(item)
            else:
                self._finish(worker, self.failed_row(item, reason))
        worker.held.clear()
        self._dispatch()

    def _shutdown(self, graceful: bool) -> None:
        """Let workers finish (their engines shut down cleanly), then kill what is left."""
        for worker in self._workers.values():
            if worker.process.is_alive():
                worker.inbox.put(None)
        deadline = time.monotonic() + (30 if graceful else 0)
        for worker in self._workers.values():
            worker.process.join(timeout=max(0.1, deadline - time.monotonic()))
            _kill_group(worker.process.pid)  # stragglers: a stuck worker, its engine processes
        if self.progress:
            self.progress.close()


def make_executor(engine: str, ray_address: str, ray_batch_size: int, gpus_per_worker: int, **kwargs):
    """The local executor, or with `engine="ray"` the Ray Data one, which keeps the same contract."""
    if engine == "ray":
        from pool.ray_executor import RayExecutor

        kwargs.pop("serial_load", None)
        kwargs.pop("log_dir", None)  # Ray keeps each actor's output in its own session logs
        return RayExecutor(address=ray_address, batch_size=ray_batch_size, gpus_per_worker=gpus_per_worker, **kwargs)
    return Executor(**kwargs)
