"""The local executor: one process per device, a shared work queue, fault handling.

This is the only code that knows about local processes and devices. Each worker loads its copy
of the stage (pool/stage.py), pulls items through a `Feed` and writes its rows itself (its own
journal and shards in the run's manifest); it tells the parent only which key finished.

Protocol: a worker loads its stage, says `ready`, then asks for work (`want`, n items); the
parent answers from the queue, so faster devices take more. Each finished item comes back as a
`done` message. Work starts once every worker has loaded (a replica that loads first would
otherwise fill its whole window, possibly the whole run, while the others are still loading),
and no worker holds more than an even share of the work left.
Each worker talks back over its own pipe: a worker killed mid-write can only break its own
channel (a shared multiprocessing.Queue would stay locked and hang every other worker).
A worker that dies is replaced. Which of its items killed it is not known, so they are not blamed
yet: they are split in halves, each run alone on a worker (bisection), until the one that kills its
worker alone is found; only that one is charged a retry (`max_retries`, each retry a new attempt)
and then written by the parent as a failed row. Every item ends with a row, and its batch-mates
with theirs. Deaths while running such suspects alone do not count against a device's restarts.
Items can keep arriving while the run goes (`Work.poll`): a run that follows another one.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import multiprocessing.util as mp_util
import os
import queue
import signal
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from multiprocessing.connection import Connection, wait
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from data.manifest import ManifestWriter
from data.rundir import file_lock
from pool.devices import Placement, local_device, process_env
from pool.progress import Progress, say
from pool.stage import (ITEM_TIMEOUT_FLOOR_S, ITEM_TIMEOUT_PACES, ExecutorOptions, FaultPolicy, Output, PoolError,
                        RunFault, Stage, Work, environment_fault)

POLL_S = 2.0  # how often a run that follows another looks for new items


class QueueFeed:
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


def die_with_parent() -> None:
    """In a child process: the kernel sends it SIGTERM when its parent dies, however the parent died
    (a SIGKILL included). Usable as Popen's preexec_fn."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the parent's own shutdown is all there is
    if os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGTERM)  # the parent died before prctl took effect


def _own_process_group() -> None:
    """Lead a process group (so the parent can kill engine subprocesses with us) and die with
    the parent: on its death the kernel sends SIGTERM, and we take the whole group down."""
    os.setpgrp()
    signal.signal(signal.SIGTERM, lambda *_: os.killpg(0, signal.SIGKILL))
    die_with_parent()


def _kill_group(pid: int) -> None:
    """Kill a worker's process group (its engine's processes with it), and the worker itself: one
    just spawned may not lead its own group yet."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _to_log(path: str) -> None:
    """Send this process's output (and its engine subprocesses') to `path`: the terminal keeps
    genscore's own lines, the library warnings and tracebacks stay with the run."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _worker_main(wid: int, slot: int, device: str, env: dict[str, str], stage: Stage, output: Output,
                 inbox: Any, outbox: Connection, load_lock: str | None, log_path: str | None,
                 spawned_at: float, rows_back: bool) -> None:
    up = time.time()  # the interpreter has started and imported the stage's modules (to unpickle it)
    _own_process_group()
    os.environ.update(env)
    if log_path:
        _to_log(log_path)
    try:
        with file_lock(load_lock) if load_lock else nullcontext():  # --serial-load: one loader at a time
            stage.load(local_device(device))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
        traceback.print_exc()  # into the worker's log (or the terminal with --verbose)
        outbox.send(("fatal", wid, one_line(f"{type(exc).__name__}: {exc}"), log_path or "the output above"))
        return
    stage.steps = StepSender(wid, outbox.send)
    writer = ManifestWriter(output.folder, output.schema, tag=f"worker{slot}")
    # Where a start went, in the worker's log (benchmarks/score_bench.py reads it back).
    now = datetime.now()
    print(f"{now.isoformat(timespec='milliseconds')} genscore: worker {slot} ({device}): process up in "
          f"{up - spawned_at:.1f} s, stage loaded in {now.timestamp() - up:.1f} s", file=sys.stderr, flush=True)
    outbox.send(("ready", wid))
    try:
        for row in stage.process(QueueFeed(wid, inbox, outbox.send, stage.prefetch)):
            row.update(device=device, worker=slot)
            with _machine_faults(writer):
                writer.add(row)  # on disk before the parent hears of it: a finished row is never lost
            outbox.send(("done", wid, row["key"], row.get("status") == "ok", stage.line(row), row if rows_back else None))
        with _machine_faults(writer):
            writer.close()  # the last rows into a shard
    except RunFault as exc:  # not the items' fault: the parent stops the run with this line
        with suppress(OSError):
            writer.close()
        outbox.send(("abort", wid, one_line(str(exc))))
        return
    stage.close()
    outbox.send(("exit", wid))
    # Every row is on disk and the parent told: skip the interpreter's teardown of torch, vLLM and
    # their native libraries, seconds of freeing memory that the kernel reclaims at once anyway.
    # multiprocessing's own finalizers (named semaphores) still run, as after any child's target.
    mp_util._exit_function()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class StepSender:
    """A stage's `steps` in a worker: the item in flight's progress to the parent, at most every STEP_EVERY_S
    (a tiny model's steps take milliseconds) and always its last step."""

    def __init__(self, wid: int, send: Callable[[tuple], None]):
        self.wid, self.send, self.last = wid, send, 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < STEP_EVERY_S:
            return
        self.last = now
        self.send(("step", self.wid, done, total))


STEP_EVERY_S = 0.2


@contextmanager
def _machine_faults(writer: ManifestWriter) -> Iterator[None]:
    """A worker's journal or shard that cannot be written is the machine's fault, not its items'."""
    try:
        yield
    except OSError as exc:
        raise environment_fault(exc) or RunFault(f"cannot write rows to {writer.folder}: {exc}") from None


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
    isolating: bool = False  # holds one group of suspects and nothing else
    started: float = field(default_factory=time.monotonic)
    progress_at: float = field(default_factory=time.monotonic)  # its last row, or when it got work while idle
    rows: int = 0
    busy_s: float = 0.0  # time spent holding work, for its pace
    killed_for: str | None = None  # why we killed it (a timeout), for the rows of what it held


class LocalExecutor:
    """Runs a stage on this machine, one process per device of the placement."""

    def __init__(self, placement: Placement, policy: FaultPolicy, options: ExecutorOptions):
        if placement.devices is None:
            raise ValueError("the local executor needs its devices planned (pool.devices.place)")
        self.devices, self.policy, self.log_dir = placement.devices, policy, options.log_dir

    def run(self, stage: Stage, work: Work, output: Output, progress: Progress | None = None) -> None:
        ctx = mp.get_context("spawn")
        self._ctx, self._stage, self._output, self._progress, self._work = ctx, stage, output, progress, work
        # A work that takes its rows back (pool/stream.py: requests) rings `wakeup` when items arrive.
        self._rows_back = callable(getattr(work, "finished", None))
        self._wakeup = getattr(work, "wakeup", None)
        self._lock = tempfile.mkstemp(prefix="genscore-load-")[1] if self.policy.serial_load else None
        self._queue: deque[dict] = deque()
        self._suspects: deque[list[dict]] = deque()  # items of dead workers, each group to run alone
        self._remaining = 0  # items handed to us that have no row yet
        self._last_items = False
        self._last_poll = 0.0
        self._writer: ManifestWriter | None = None  # the parent's rows: items of workers that died
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
            self._poll()
            if self._remaining or not self._last_items:
                for slot in range(len(self.devices)):
                    self._spawn(slot)
            while self._remaining > 0 or not self._last_items:
                self._step()
            graceful = True
        finally:
            self._shutdown(graceful)

    def _poll(self) -> None:
        """Take the items that arrived since the last look (all of them at once for a fixed list)."""
        if self._last_items or (self._wakeup is None and time.monotonic() - self._last_poll < POLL_S):
            return
        self._last_poll = time.monotonic()
        items, self._last_items = self._work.poll()
        self._queue.extend(items)
        self._remaining += len(items)
        if items and self._progress:
            self._progress.add_total(len(items))
        self._dispatch()

    def _spawn(self, slot: int) -> None:
        wid, self._next_wid = self._next_wid, self._next_wid + 1
        inbox = self._ctx.Queue()
        # This process must not wait at exit to feed a worker's queue: a worker that died leaves the items it
        # never read in the pipe, and images sent in memory fill it. A live worker is sent its end (None) and
        # waited for in _shutdown, while the queue's thread still runs.
        inbox.cancel_join_thread()
        receive, send = self._ctx.Pipe(duplex=False)
        log_path = None
        if self.log_dir:
            os.makedirs(self.log_dir, exist_ok=True)
            log_path = os.path.join(self.log_dir, f"worker-{slot}.log")
        process = self._ctx.Process(
            target=_worker_main, name=f"genscore-worker-{wid}", daemon=False,
            args=(wid, slot, self.devices[slot], self._envs[slot], self._stage, self._output, inbox, send,
                  self._lock, log_path, time.time(), self._rows_back),
        )
        process.start()
        send.close()  # the child holds the write end; EOF then means it is gone
        self._workers[wid] = _Worker(wid, self.devices[slot], slot, process, inbox, receive)
        if self._progress:
            self._progress.worker_started(slot, self.devices[slot])

    def _step(self) -> None:
        self._poll()
        if time.monotonic() - self._last_check > 1.0:
            self._check_workers()
        by_conn = {w.conn: w for w in self._workers.values()}
        bell = [self._wakeup] if self._wakeup is not None else []
        for conn in wait(list(by_conn) + bell, timeout=0.5):
            if conn is self._wakeup:
                self._work.drain_wakeup()
                self._poll()
            else:
                self._drain(by_conn[conn])

    def _drain(self, worker: _Worker) -> None:
        """Handle every message waiting on a worker's pipe. Only the pipe's own errors mean the
        worker is gone: an error of ours while handling a message (a full disk) stops the run."""
        while worker.wid in self._workers:
            try:
                if not worker.conn.poll():
                    return
                message = worker.conn.recv()
            except (EOFError, OSError):  # the worker exited: its pipe is closed
                worker.process.join(timeout=5)
                if worker.wid in self._workers and not worker.done:
                    self._on_death(worker)
                return
            self._handle(message)

    def _handle(self, message: tuple) -> None:
        kind, wid = message[0], message[1]
        worker = self._workers.get(wid)
        if worker is None:
            return  # a message from a worker already given up on
        if kind == "ready":
            worker.ready = self._ever_ready = True
            self._first_ready_at = self._first_ready_at or time.monotonic()
            if self._progress:
                self._progress.worker_ready(worker.slot)
            self._dispatch()
        elif kind == "want":
            worker.asked += message[2]
            self._dispatch()
        elif kind == "done":
            self._finish(worker, message[2], message[3], message[4], message[5])
        elif kind == "fatal":
            self._fatal(worker, message[2], message[3])
        elif kind == "abort":
            raise PoolError(message[2])
        elif kind == "step":
            if self._progress:
                self._progress.step(worker.slot, message[2], message[3])
        elif kind == "exit":
            worker.done = True

    def _dispatch(self) -> None:
        if not self._workers:
            return
        if not self._started:
            waited = time.monotonic() - (self._first_ready_at or time.monotonic())
            self._started = all(w.ready for w in self._workers.values()) or waited > self.policy.start_grace_s
            if not self._started:
                return
        for worker in self._workers.values():
            if self._suspects and worker.asked and not worker.held:
                worker.isolating = True
                self._send(worker, self._suspects.popleft())
        outstanding = (len(self._queue) + sum(map(len, self._suspects))
                       + sum(len(w.held) for w in self._workers.values()))
        share = -(-outstanding // max(1, len(self._workers)))  # ceil of an even share of the work left
        for worker in sorted(self._workers.values(), key=lambda w: len(w.held)):  # the least loaded first
            n = min(worker.asked, len(self._queue), share - len(worker.held))
            if n > 0 and not worker.isolating:
                self._send(worker, [self._queue.popleft() for _ in range(n)])

    def _send(self, worker: _Worker, items: list[dict]) -> None:
        if not worker.held:
            worker.progress_at = time.monotonic()  # the clock of --item-timeout starts with work in hand
        asked = min(worker.asked, len(items))
        worker.asked -= asked
        worker.held.update({item["key"]: item for item in items})
        worker.inbox.put({"items": items, "asked": asked})

    def _finish(self, worker: _Worker, key: str, ok: bool, line: str | None, row: dict | None = None) -> None:
        now = time.monotonic()
        worker.busy_s += now - worker.progress_at
        worker.progress_at, worker.rows = now, worker.rows + 1
        worker.held.pop(key, None)
        worker.isolating = worker.isolating and bool(worker.held)
        self._remaining -= 1
        if line:
            say(line)
        if self._progress:
            self._progress.row(worker.slot, ok)
        if row is not None:
            self._work.finished(row)
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

    def _item_timeout(self, worker: _Worker) -> float:
        if self.policy.item_timeout_s:
            return self.policy.item_timeout_s
        pace = worker.busy_s / worker.rows if worker.rows else 0.0
        return max(ITEM_TIMEOUT_FLOOR_S, ITEM_TIMEOUT_PACES * pace)

    def _check_stuck(self) -> None:
        """Kill a worker that holds items but has written no row for --item-timeout, or that has not
        loaded within --load-timeout: a run never waits forever on one stuck process."""
        now = time.monotonic()
        for worker in list(self._workers.values()):
            if worker.done or worker.killed_for:
                continue
            if not worker.ready and now - worker.started > self.policy.load_timeout_s:
                worker.killed_for = f"did not load within {self.policy.load_timeout_s:g} s (--load-timeout)"
            elif worker.held and now - worker.progress_at > self._item_timeout(worker):
                worker.killed_for = f"no row within {self._item_timeout(worker):g} s (--item-timeout)"
            if worker.killed_for:
                say(f"genscore: worker {worker.slot} ({worker.device}) {worker.killed_for}: stopped")
                _kill_group(worker.process.pid)

    def _check_workers(self) -> None:
        self._last_check = time.monotonic()
        self._check_stuck()
        for worker in list(self._workers.values()):
            if not worker.process.is_alive() and not worker.done:
                self._drain(worker)  # its last messages first: rows, or why it could not start
                if worker.wid in self._workers and not worker.done:
                    self._on_death(worker)
        if not self._workers and (self._remaining > 0 or not self._last_items):
            raise PoolError("every worker died; last errors: " + "; ".join(self._errors[-3:]))
        self._dispatch()  # the start grace period may have run out

    def _on_death(self, worker: _Worker) -> None:
        """Retry or fail what a dead worker held, and start a replacement on its device."""
        code = worker.process.exitcode
        _kill_group(worker.process.pid)  # its engine subprocesses go with it
        if not worker.ready and worker.killed_for:  # stuck loading: a start failure, not a sample's
            self._fatal(worker, f"worker {worker.killed_for}", "its log")
            return
        del self._workers[worker.wid]
        why = worker.killed_for or f"died (exit code {code})"
        self._errors.append(f"{worker.device}: {why}")
        self._requeue_or_fail(worker, f"worker on {worker.device} {why}")
        if self._restarts[worker.slot] < self.policy.max_restarts:
            self._restarts[worker.slot] += 0 if worker.isolating else 1  # a suspect's fault, not the device's
            self._spawn(worker.slot)
        self._dispatch()

    def _requeue_or_fail(self, worker: _Worker, reason: str) -> None:
        # A new attempt each: the dead worker may have journaled a row for some of them already.
        held = [{**item, "attempt": item.get("attempt", 1) + 1} for item in worker.held.values()]
        worker.held.clear()
        if len(held) > 1:  # one of them may be guilty: halves, each run alone, until it is found
            self._suspects.extend([held[:len(held) // 2], held[len(held) // 2:]])
        for item in held[:1] if len(held) == 1 else []:  # alone, so guilty: charged a retry
            item["_tries"] = item.get("_tries", 0) + 1
            if item["_tries"] <= self.policy.max_retries:
                self._suspects.append([item])
            else:
                self._write_failed(worker, item, reason)
        self._dispatch()

    def _write_failed(self, worker: _Worker, item: dict, reason: str) -> None:
        if self._writer is None:
            self._writer = ManifestWriter(self._output.folder, self._output.schema, tag="driver")
        row = self._stage.failed_row(item, reason)
        row.update(device=worker.device, worker=worker.slot)
        self._writer.add(row)
        self._finish(worker, row["key"], False, self._stage.line(row), row if self._rows_back else None)

    def _shutdown(self, graceful: bool) -> None:
        """Let workers finish (their engines shut down cleanly), then kill what is left."""
        for worker in self._workers.values():
            if worker.process.is_alive():
                worker.inbox.put(None)
        deadline = time.monotonic() + (30 if graceful else 0)
        for worker in self._workers.values():
            worker.process.join(timeout=max(0.1, deadline - time.monotonic()))
            _kill_group(worker.process.pid)  # stragglers: a stuck worker, its engine processes
        if self._writer is not None:
            self._writer.close()
        if self._lock:
            os.unlink(self._lock)
        if self._progress:
            self._progress.close()
