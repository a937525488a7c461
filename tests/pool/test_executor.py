"""The device pool with a plain stage (no model): sharing, worker death, start-up failure.

The stages here are real classes run in real spawned processes; only the work is trivial.
"""

import os
import signal
import time
from pathlib import Path

import pytest

from pool.executor import Executor, PoolError


class SleepStage:
    """Returns each item after `seconds`; with `die_on` set, SIGKILLs itself on that key."""

    def __init__(self, config: dict, device: str):
        self.config, self.device = config, device
        if config.get("fail_start"):
            raise RuntimeError("cannot load model /no/such/path")
        self.prefetch = 1

    def process(self, feed):
        for item in feed:
            marker = Path(self.config["dir"]) / f"died-{item['key']}"
            if item["key"] in self.config.get("die_on", ()) and not marker.exists():
                marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)
            if item["key"] in self.config.get("always_die_on", ()):
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(self.config.get("seconds", 0.0))
            yield {"key": item["key"], "status": "ok", "pid": os.getpid()}


def run_pool(config: dict, n_items: int, devices: list[str]) -> list[dict]:
    out: list[dict] = []
    Executor(f"{__name__}:SleepStage", config, devices, on_row=out.append,
             failed_row=lambda item, reason: {"key": item["key"], "status": "failed", "error": reason},
             max_retries=1).run([{"key": f"k{i}"} for i in range(n_items)])
    return out


def test_every_item_once_and_both_workers_share(tmp_path):
    out = run_pool({"dir": str(tmp_path), "seconds": 0.05}, 40, ["cpu", "cpu"])
    assert sorted(r["key"] for r in out) == sorted(f"k{i}" for i in range(40))
    assert {r["worker"] for r in out} == {0, 1} and {r["device"] for r in out} == {"cpu"}


def test_dead_worker_is_replaced_and_its_item_retried(tmp_path):
    out = run_pool({"dir": str(tmp_path), "die_on": ["k3"]}, 10, ["cpu"])
    assert sorted(r["key"] for r in out) == sorted(f"k{i}" for i in range(10))
    assert all(r["status"] == "ok" for r in out)
    assert len({r["pid"] for r in out}) == 2  # a second process took over


def test_item_that_always_kills_its_worker_becomes_failed(tmp_path):
    out = run_pool({"dir": str(tmp_path), "always_die_on": ["k2"]}, 5, ["cpu"])
    by_key = {r["key"]: r for r in out}
    assert len(out) == 5 and by_key["k2"]["status"] == "failed"
    assert "died (exit code -9)" in by_key["k2"]["error"]
    assert all(by_key[k]["status"] == "ok" for k in ("k0", "k1", "k3", "k4"))


def test_start_failure_is_reported_not_hung(tmp_path):
    with pytest.raises(PoolError, match="cannot load model /no/such/path"):
        run_pool({"dir": str(tmp_path), "fail_start": True}, 3, ["cpu", "cpu"])


class GreedyStage(SleepStage):
    """Asks for a large window at once, like a vLLM replica; the second instance loads slowly."""

    def __init__(self, config: dict, device: str):
        super().__init__(config, device)
        self.prefetch = 100
        try:
            (Path(config["dir"]) / "first-loaded").touch(exist_ok=False)
        except FileExistsError:
            time.sleep(3)


def test_a_slow_loading_worker_still_gets_its_share(tmp_path):
    out: list[dict] = []
    Executor(f"{__name__}:GreedyStage", {"dir": str(tmp_path), "seconds": 0.05}, ["cpu", "cpu"], on_row=out.append,
             failed_row=lambda item, reason: {"key": item["key"], "status": "failed"}).run(
        [{"key": f"k{i}"} for i in range(40)])
    per_worker = [sum(r["worker"] == w for r in out) for w in (0, 1)]
    assert sorted(r["key"] for r in out) == sorted(f"k{i}" for i in range(40))
    assert min(per_worker) >= 8, per_worker  # without the start gate the first loaded takes all 40
