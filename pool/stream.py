"""Work that arrives while the pool runs and whose rows go back to whoever asked: the Python API's
and the HTTP service's requests (score/scorer.py, score/serve.py).

An executor runs a `RequestWork` like any other `Work` (it polls for items), and also:
- waits on `wakeup` beside its workers' pipes, so a request reaches a replica at once, not at the
  next poll;
- hands every finished row, the failed rows of items whose worker died included, to `finished`,
  which resolves the future of the item it belongs to.
The work ends (`poll` says last) once `close()` was called and nothing is pending.
"""

from __future__ import annotations

import socket
import threading
from concurrent.futures import Future


class QueueFull(RuntimeError):
    """More items pending than the work's bound: try again later (HTTP 429)."""


class RequestWork:
    """Items put by any thread; each gets a Future resolved with its row."""

    def __init__(self, max_pending: int | None = None):
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._new: list[dict] = []
        self._futures: dict[str, Future] = {}  # key -> the future of an item with no row yet
        self._closed = False
        self._failed: BaseException | None = None
        self.wakeup, self._ring = socket.socketpair()  # the executor waits on `wakeup`
        for end in (self.wakeup, self._ring):
            end.setblocking(False)

    @property
    def pending(self) -> int:
        """Items put and not answered yet (queued or on a replica)."""
        return len(self._futures)

    def put(self, items: list[dict]) -> list[Future]:
        """Queue items (each with a `key` unique among pending items); raises QueueFull past the bound,
        and RuntimeError once closed or failed, so no future is left waiting on a pool that is gone."""
        with self._lock:
            if self._failed is not None:
                raise RuntimeError(f"the judge pool stopped: {self._failed}")
            if self._closed:
                raise RuntimeError("the judge pool is shutting down")
            if self.max_pending is not None and len(self._futures) + len(items) > self.max_pending:
                raise QueueFull(f"{len(self._futures)} items pending, at most {self.max_pending}")
            futures = []
            for item in items:
                if item["key"] in self._futures:
                    raise ValueError(f"item key {item['key']!r} is already pending")
                futures.append(self._futures.setdefault(item["key"], Future()))
            self._new.extend(items)
        self._ring_bell()
        return futures

    def poll(self) -> tuple[list[dict], bool]:
        with self._lock:
            items, self._new = self._new, []
            return items, self._closed and not self._futures

    def drain_wakeup(self) -> None:
        """Called by the executor when `wakeup` is readable."""
        try:
            while self.wakeup.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def finished(self, row: dict) -> None:
        with self._lock:
            future = self._futures.pop(row["key"], None)
            last = self._closed and not self._futures
        if future is not None and not future.done():
            future.set_result(row)
        if last:
            self._ring_bell()

    def close(self) -> None:
        """No more items: the executor ends once every pending one has its row."""
        with self._lock:
            self._closed = True
        self._ring_bell()

    def fail(self, exc: BaseException) -> None:
        """The pool stopped (every replica gone, a fault of the machine): every pending future raises."""
        with self._lock:
            self._failed, self._closed = exc, True
            futures, self._futures, self._new = list(self._futures.values()), {}, []
        for future in futures:
            if not future.done():
                future.set_exception(RuntimeError(f"the judge pool stopped: {exc}"))

    def _ring_bell(self) -> None:
        try:
            self._ring.send(b"x")
        except (BlockingIOError, OSError):
            pass  # the buffer is full of bells already (or the pool is gone): the executor is awake anyway
