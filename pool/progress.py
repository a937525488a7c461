"""Progress for a pool run: a bar per device and an overall bar (`bar`), periodic lines (`log`),
or nothing (`none`); in every mode a table per device at the end. A device's bar shows the steps of its
item in flight (a pipeline's denoising: `step=26/30`) and, where NVML is, its GPU's utilisation and memory;
the table adds their mean and peak."""

from __future__ import annotations

import os
import sys
import threading
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


class GpuMonitor:
    """Utilisation and memory of the GPUs the workers use, read through NVML (nvidia-ml-py) in the parent
    every `every_s`; empty and silent where there is no NVML or no GPU (CPU runs, a machine without the
    driver's library)."""

    def __init__(self, every_s: float = 1.0):
        self.samples: dict[str, list[tuple[float, float, float]]] = {}  # GPU -> [(monotonic s, util %, memory GiB)]
        self._handles: dict[str, object] = {}
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # noqa: BLE001 - no package, no driver library, no GPU: nothing to show
            self._nvml = None
            return
        self._nvml = pynvml
        threading.Thread(target=self._sample, args=(every_s,), daemon=True, name="gpu-monitor").start()

    def watch(self, device: str) -> list[str]:
        """Start sampling the GPUs of a worker's device string (`cuda:0`, `cuda:0+1`); returns their ids."""
        if self._nvml is None or not device.startswith("cuda:"):
            return []
        from pool.devices import physical_gpus

        gpus = physical_gpus(device)
        for gpu in gpus:
            if gpu not in self._handles:
                try:
                    by_uuid = gpu.startswith(("GPU-", "MIG-"))
                    get = self._nvml.nvmlDeviceGetHandleByUUID if by_uuid else self._nvml.nvmlDeviceGetHandleByIndex
                    self._handles[gpu] = get(gpu if by_uuid else int(gpu))
                except Exception:  # noqa: BLE001 - a GPU NVML cannot name: shown without its figures
                    continue
        return gpus

    def _sample(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            for gpu, handle in list(self._handles.items()):
                try:
                    util = self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu
                    used = self._nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**30
                except Exception:  # noqa: BLE001 - a GPU gone mid-run: its last figures stay
                    continue
                self.samples.setdefault(gpu, []).append((time.monotonic(), float(util), used))

    def now(self, gpus: list[str]) -> str:
        """`87% 41.2GiB` for the latest samples of these GPUs (the busiest, the memory summed), or ''."""
        last = [self.samples[g][-1] for g in gpus if self.samples.get(g)]
        return f"{max(u for _, u, _ in last):.0f}% {sum(m for _, _, m in last):.1f}GiB" if last else ""

    def summary(self, gpus: list[str], start: float = 0.0, end: float = float("inf")) -> tuple[float, float] | None:
        """(mean utilisation % from `start` to `end`, peak memory GiB over the run), or None without samples.
        The caller's span is its worker's working time: a model's load would pull the mean down."""
        series = [self.samples[g] for g in gpus if self.samples.get(g)]
        if not series:
            return None
        spans = [[u for t, u, _ in s if start <= t <= end] or [u for _, u, _ in s] for s in series]
        mean = sum(sum(u) / len(u) for u in spans) / len(spans)
        return mean, sum(max(m for _, _, m in s) for s in series)

    def close(self) -> None:
        self._stop.set()


@dataclass
class _Slot:
    device: str
    ok: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)
    last: float = 0.0
    ready: float = 0.0                              # when its stage had loaded (0: not reported)
    step: str = ""                                  # the item in flight: "26/30" denoising steps
    gpus: list[str] = field(default_factory=list)   # what the GPU monitor samples for it

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
        self.gpus = GpuMonitor()
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
            self.slots[slot] = _Slot(device, gpus=self.gpus.watch(device))
            if self.mode == "bar":
                self._bars[slot] = self._tqdm(
                    total=None, desc=f"[{slot}] {device}", unit=self.unit, position=slot + 1,
                    leave=False, dynamic_ncols=True,
                )

    def worker_ready(self, slot: int) -> None:
        """A worker has loaded its stage: its GPU's mean utilisation counts from here."""
        if slot in self.slots:
            self.slots[slot].ready = time.monotonic()

    def step(self, slot: int, done: int, total: int) -> None:
        """The item in flight on `slot` is `done` of `total` steps in (a pipeline's denoising)."""
        s = self.slots.setdefault(slot, _Slot("?"))
        s.step = f"{done}/{total}"
        self._show(slot, s)

    def row(self, slot: int, ok: bool) -> None:
        s = self.slots.setdefault(slot, _Slot("?"))
        s.ok, s.failed = s.ok + ok, s.failed + (not ok)
        s.last, s.step = time.monotonic(), ""  # the next item's steps are not known yet
        if self.mode == "bar":
            self._bars[slot].update(1)
            self._overall.update(1)
        self._show(slot, s)

    def _show(self, slot: int, s: _Slot) -> None:
        """The slot's figures on its bar, or every slot's in a periodic line (`log`)."""
        if self.mode == "bar" and slot in self._bars:
            figures = {"ok": s.ok, "failed": s.failed, "step": s.step, "gpu": self.gpus.now(s.gpus)}
            self._bars[slot].set_postfix({k: v for k, v in figures.items() if v != ""}, refresh=False)
            self._bars[slot].refresh()
        elif self.mode == "log" and time.monotonic() - self._last_log >= self.log_every_s:
            self._last_log = time.monotonic()
            done = sum(x.done for x in self.slots.values())
            rate = done / max(1e-9, self._last_log - self.start)
            each = "; ".join(", ".join(part for part in (f"[{n}] {x.device} {x.done} done",
                                                         f"step {x.step}" if x.step else "", self.gpus.now(x.gpus))
                                       if part)
                             for n, x in sorted(self.slots.items()))
            print(f"progress: {done}/{self.total} ({rate:.2f} {self.unit}/s) | {each}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.gpus.close()
        for bar in self._bars.values():
            bar.close()
        if self._overall is not None:
            self._overall.close()
            self._overall = None

    def table(self) -> str:
        """Per device: done, ok, failed, throughput; then the total."""
        gpu = {slot: self.gpus.summary(s.gpus, s.ready, s.last or float("inf")) for slot, s in self.slots.items()}
        shown = any(gpu.values())  # no GPU figures (CPU, no NVML): no empty columns either
        lines = [f"{'worker':<8}{'device':<14}{'done':>7}{'ok':>7}{'failed':>8}{self.unit + '/s':>10}"
                 + (f"{'gpu util':>10}{'peak mem':>10}" if shown else "")]
        for slot, s in sorted(self.slots.items()):
            rate = s.done / max(1e-9, (s.last or s.started) - s.started) if s.done else 0.0
            figures = f"{gpu[slot][0]:>9.0f}%{gpu[slot][1]:>7.1f}GiB" if gpu[slot] else f"{'-':>10}{'-':>10}"
            lines.append(f"{slot:<8}{s.device:<14}{s.done:>7}{s.ok:>7}{s.failed:>8}{rate:>10.2f}"
                         + (figures if shown else ""))
        done = sum(s.done for s in self.slots.values())
        ok = sum(s.ok for s in self.slots.values())
        elapsed = time.monotonic() - self.start
        lines.append(f"{'total':<22}{done:>7}{ok:>7}{done - ok:>8}{done / max(elapsed, 1e-9):>10.2f}")
        return "\n".join(lines)
