"""Progress for a pool run: a bar per device and an overall bar (`bar`), periodic lines (`log`),
or nothing (`none`); in every mode a table per device at the end."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Literal


def say(line: str) -> None:
    """Print a line; a reader that went away (`| head -1`) stops the printing, not the run."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # later prints, and the one at exit, go nowhere
        os.close(devnull)


ProgressMode = Literal["bar", "log", "none"]


@dataclass
class _Slot:
    device: str
    ok: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)
    last: float = 0.0

    @property
    def done(self) -> int:
        return self.ok + self.failed


class Progress:
    def __init__(self, total: int, mode: ProgressMode = "bar", unit: str = "img", log_every_s: float = 10.0):
        self.total, self.mode, self.unit, self.log_every_s = total, mode, unit, log_every_s
        self.slots: dict[int, _Slot] = {}
        self.start = time.monotonic()
        self._last_log = self.start
        self._bars: dict[int, object] = {}
        self._overall = None
        if mode == "bar":
            from tqdm import tqdm

            self._tqdm = tqdm
            self._overall = tqdm(total=total, desc="overall", unit=unit, position=0, dynamic_ncols=True)

    def add_total(self, n: int) -> None:
        """More items to do than counted at the start (a run following another)."""
        self.total += n
        if self._overall is not None:
            self._overall.total = self.total
            self._overall.refresh()

    def worker_started(self, slot: int, device: str) -> None:
        if slot not in self.slots:
            self.slots[slot] = _Slot(device)
            if self.mode == "bar":
                self._bars[slot] = self._tqdm(
                    total=None, desc=f"[{slot}] {device}", unit=self.unit, position=slot + 1,
                    leave=False, dynamic_ncols=True,
                )

    def worker_ready(self, slot: int) -> None:
        """A worker has loaded its stage (a service counts these for its health)."""

    def row(self, slot: int, ok: bool) -> None:
        s = self.slots.setdefault(slot, _Slot("?"))
        s.ok, s.failed = s.ok + ok, s.failed + (not ok)
        s.last = time.monotonic()
        if self.mode == "bar":
            self._bars[slot].update(1)
            self._bars[slot].set_postfix(ok=s.ok, failed=s.failed, refresh=False)
            self._overall.update(1)
        elif self.mode == "log" and time.monotonic() - self._last_log >= self.log_every_s:
            self._last_log = time.monotonic()
            done = sum(x.done for x in self.slots.values())
            rate = done / max(1e-9, self._last_log - self.start)
            print(f"progress: {done}/{self.total} ({rate:.2f} {self.unit}/s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        if self._overall is not None:
            self._overall.close()
            self._overall = None

    def table(self) -> str:
        """Per device: done, ok, failed, throughput; then the total."""
        lines = [f"{'worker':<8}{'device':<14}{'done':>7}{'ok':>7}{'failed':>8}{self.unit + '/s':>10}"]
        for slot, s in sorted(self.slots.items()):
            rate = s.done / max(1e-9, (s.last or s.started) - s.started) if s.done else 0.0
            lines.append(f"{slot:<8}{s.device:<14}{s.done:>7}{s.ok:>7}{s.failed:>8}{rate:>10.2f}")
        done = sum(s.done for s in self.slots.values())
        ok = sum(s.ok for s in self.slots.values())
        elapsed = time.monotonic() - self.start
        lines.append(f"{'total':<22}{done:>7}{ok:>7}{done - ok:>8}{done / max(elapsed, 1e-9):>10.2f}")
        return "\n".join(lines)
