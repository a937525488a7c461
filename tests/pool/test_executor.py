"""The executors with a toy stage (no model), through the stage contract alone: sharing, worker
death, start-up failure, rows written by the workers themselves, work that arrives while running.

The stages here are real classes run in real spawned processes; only the work is trivial.
"""

import errno
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.manifest import ManifestReader, latest_of, recover
from pool.devices import Placement
from pool.progress import Progress
from pool.runner import make_executor
from pool.stage import ExecutorOptions, FaultPolicy, FixedWork, Output, PoolError, RunFault, Stage, items_of

SCHEMA = pa.schema([("key", pa.string()), ("attempt", pa.int32()), ("status", pa.string()), ("error", pa.string()),
                    ("device", pa.string()), ("worker", pa.int32()), ("pid", pa.int64())])


class SleepStage(Stage):
    """Returns each item after `seconds`; with `die_on` set, SIGKILLs itself on that key."""

    def __init__(self, **config):
        self.config = config

    def load(self, device: str) -> None:
        if self.config.get("fail_start"):
            raise RuntimeError("cannot load model /no/such/path")
        if self.config.get("hang_load"):
            time.sleep(3600)
        self.device = device

    def failed_row(self, item: dict, reason: str) -> dict:
        return {"key": item["key"], "attempt": item["attempt"], "status": "failed", "error": reason}

    def process(self, feed):
        for item in items_of(feed):
            marker = Path(self.config["dir"]) / f"died-{item['key']}"
            if item["key"] in self.config.get("die_on", ()) and not marker.exists():
                marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)
            if item["key"] in self.config.get("always_die_on", ()):
                os.kill(os.getpid(), signal.SIGKILL)
            if item["key"] in self.config.get("hang_on", ()):
                time.sleep(3600)  # stuck: no exception, no exit, no row
            if item["key"] in self.config.get("fault_on", ()):
                raise RunFault(f"the endpoint refused our key at {item['key']}")
            time.sleep(self.config.get("seconds", 0.0))
            yield {"key": item["key"], "attempt": item["attempt"], "status": "ok", "pid": os.getpid()}


def run_pool(stage: Stage, n_items: int, devices: list[str], executor: str = "local", work=None,
             policy: FaultPolicy = FaultPolicy(max_retries=1)) -> list[dict]:
    """Every row the workers wrote (journals of killed workers sealed, as the runner does)."""
    folder = Path(stage.config["dir"]) / "manifest"
    work = work or FixedWork([{"key": f"k{i}", "attempt": 1} for i in range(n_items)])
    options = ExecutorOptions(ray_address="local", ray_batch_size=4)
    make_executor(executor, Placement(devices), policy, options).run(
        stage, work, Output(str(folder), SCHEMA), Progress(0, "none"))
    recover(folder, SCHEMA)
    return ManifestReader(folder).rows()


def test_no_run_waits_forever_on_a_stuck_item_or_a_stuck_load(tmp_path):
    """--item-timeout: a worker with no row for that long is killed; its items are isolated as after any
    death, so only the stuck one fails (alone, twice) and the run goes on. --load-timeout: a worker that
    never finishes loading is a start failure."""
    started = time.monotonic()
    policy = FaultPolicy(max_retries=1, item_timeout_s=2)
    rows = {r["key"]: r for r in run_pool(SleepStage(dir=str(tmp_path), hang_on=("k3",)), 8, ["cpu"],
                                           policy=policy)}
    assert sorted(rows) == [f"k{i}" for i in range(8)] and time.monotonic() - started < 200
    assert rows["k3"]["status"] == "failed" and "no row within 2 s (--item-timeout)" in rows["k3"]["error"]
    assert all(rows[f"k{i}"]["status"] == "ok" for i in range(8) if i != 3)
    with pytest.raises(PoolError, match="did not load within 2 s"):
        run_pool(SleepStage(dir=str(tmp_path / "b"), hang_load=True), 4, ["cpu"],
                 policy=FaultPolicy(load_timeout_s=2))


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_run_fault_ends_the_run_with_its_line_and_charges_no_item(tmp_path, executor):
    """Not an item's fault (a revoked key): no failed row, no restart, no bisection; the run stops with
    the stage's own line, and the rows written before stay."""
    stage = SleepStage(dir=str(tmp_path), fault_on=("k5",))
    started = time.monotonic()
    with pytest.raises(PoolError, match="^the endpoint refused our key at k5$"):
        run_pool(stage, 12, ["cpu"], executor)
    recover(tmp_path / "manifest", SCHEMA)
    rows = ManifestReader(tmp_path / "manifest").rows()
    assert {r["status"] for r in rows} <= {"ok"} and "k5" not in {r["key"] for r in rows}
    if executor == "local":
        assert {r["key"] for r in rows} == {f"k{i}" for i in range(5)}  # one worker, in order: those before it
    assert time.monotonic() - started < 120


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_toy_stage_runs_on_every_executor_through_the_contract(tmp_path, executor):
    rows = run_pool(SleepStage(dir=str(tmp_path), seconds=0.05), 12, ["cpu", "cpu"], executor)
    assert sorted(r["key"] for r in rows) == sorted(f"k{i}" for i in range(12))
    assert all(r["status"] == "ok" for r in rows)
    shards = list((tmp_path / "manifest").glob("*.parquet"))
    assert shards and not list((tmp_path / "manifest").glob(".*"))  # every journal sealed
    # the columns mean the same on both: the worker's device, and its number among the run's workers
    assert {r["device"] for r in rows} == {"cpu"} and {r["worker"] for r in rows} <= {0, 1}
    if executor == "local":
        # each worker wrote its own shard: no row went through the parent
        assert {r["worker"] for r in rows} == {0, 1}
        assert sorted(len(set(pq.read_table(s)["worker"].to_pylist())) for s in shards) == [1, 1]


def test_dead_worker_is_replaced_and_its_item_retried(tmp_path):
    rows = run_pool(SleepStage(dir=str(tmp_path), die_on=["k3"]), 10, ["cpu"])
    final = latest_of(rows)
    assert sorted(final) == sorted(f"k{i}" for i in range(10))
    assert all(r["status"] == "ok" for r in final.values())
    assert final["k3"]["attempt"] == 2  # the retry is a new attempt: it wins over anything the dead one wrote
    assert len({r["pid"] for r in final.values()}) == 2  # a second process took over


def test_item_that_always_kills_its_worker_becomes_failed(tmp_path):
    rows = run_pool(SleepStage(dir=str(tmp_path), always_die_on=["k2"]), 5, ["cpu"])
    final = latest_of(rows)
    assert len(final) == 5 and final["k2"]["status"] == "failed"
    assert "died (exit code -9)" in final["k2"]["error"]
    assert all(final[k]["status"] == "ok" for k in ("k0", "k1", "k3", "k4"))


def tracker(process: psutil.Process) -> bool:
    """multiprocessing's resource tracker: started once per session, lives on."""
    try:
        return "resource_tracker" in " ".join(process.cmdline())
    except psutil.Error:  # a zombie: a worker already dead
        return False


class RoomyStage(SleepStage):
    """A worker with no file-size limit: only its parent is short of room."""

    def load(self, device: str) -> None:
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        super().load(device)


@pytest.mark.timeout(120)
def test_an_io_error_of_the_parent_ends_the_run_with_that_error(tmp_path):
    """The parent must write k2's failed row when k2 has killed its worker twice, and cannot: a
    file-size limit makes the write fail with EFBIG, as a full disk fails it with ENOSPC. That is
    the parent's own error, not one more worker death to retry: the run ends at once with it, its
    workers are stopped, and what they wrote stays."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    ignored = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error from write(), not a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, limit[1]))
    try:
        with pytest.raises(OSError) as error:
            run_pool(RoomyStage(dir=str(tmp_path), always_die_on=["k2"], seconds=0.2), 8, ["cpu", "cpu"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, ignored)
    assert error.value.errno == errno.EFBIG
    workers = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and not tracker(p)]
    assert not psutil.wait_procs(workers, timeout=10)[1]  # stopped on the way out: gone in moments
    written = latest_of(ManifestReader(tmp_path / "manifest").rows())
    assert {k for k, r in written.items() if r["status"] == "ok"} >= {"k0", "k1"}  # journaled by the worker
    assert "k2" not in written


def test_start_failure_is_reported_not_hung(tmp_path):
    with pytest.raises(PoolError, match="cannot load model /no/such/path"):
        run_pool(SleepStage(dir=str(tmp_path), fail_start=True), 3, ["cpu", "cpu"])


class GreedyStage(SleepStage):
    """Asks for a large window at once, like a vLLM replica; the second instance loads slowly."""

    prefetch = 100

    def load(self, device: str) -> None:
        super().load(device)
        try:
            (Path(self.config["dir"]) / "first-loaded").touch(exist_ok=False)
        except FileExistsError:
            time.sleep(3)


def test_a_slow_loading_worker_still_gets_its_share(tmp_path):
    rows = run_pool(GreedyStage(dir=str(tmp_path), seconds=0.05), 40, ["cpu", "cpu"])
    per_worker = [sum(r["worker"] == w for r in rows) for w in (0, 1)]
    assert sorted(r["key"] for r in rows) == sorted(f"k{i}" for i in range(40))
    assert min(per_worker) >= 8, per_worker  # without the start gate the first loaded takes all 40


class Trickle:
    """Work that arrives in three parts, a second apart: what a followed run hands out."""

    def __init__(self):
        self.parts = [[{"key": f"k{p}{i}", "attempt": 1} for i in range(3)] for p in range(3)]
        self.next_at = 0.0

    def poll(self):
        if time.monotonic() < self.next_at:
            return [], False
        self.next_at = time.monotonic() + 1.0
        return self.parts.pop(0), not self.parts


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_work_that_arrives_while_running_is_all_done(tmp_path, executor):
    """What `score.run --follow` hands an executor: items in polls, the last one marked; on Ray each poll's
    items are a job of their own."""
    rows = run_pool(SleepStage(dir=str(tmp_path)), 0, ["cpu", "cpu"], executor, work=Trickle())
    assert sorted(r["key"] for r in rows) == sorted(f"k{p}{i}" for p in range(3) for i in range(3))
    assert len({(r["key"], r["attempt"]) for r in rows}) == len(rows)  # none twice


class DyingLoader(SleepStage):
    """Killed while loading the first time (as the OOM killer does to a loader), fine after that."""

    def load(self, device: str) -> None:
        marker = Path(self.config["dir"]) / "killed-while-loading"
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        super().load(device)


@pytest.mark.timeout(120)  # a loader's lock that outlives it hangs every replacement: fail, don't hang
def test_serial_load_survives_a_loader_killed_while_holding_the_lock(tmp_path):
    folder = tmp_path / "manifest"
    make_executor("local", Placement(["cpu", "cpu"]), FaultPolicy(serial_load=True), ExecutorOptions()).run(
        DyingLoader(dir=str(tmp_path)), FixedWork([{"key": f"k{i}", "attempt": 1} for i in range(6)]),
        Output(str(folder), SCHEMA), Progress(0, "none"))
    assert sorted(r["key"] for r in ManifestReader(folder).rows()) == [f"k{i}" for i in range(6)]


class Talker(SleepStage):
    def line(self, row: dict) -> str:
        return f"done {row['key']}"


def test_a_closed_stdout_stops_the_printing_not_the_run(tmp_path):
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_executor as t; "
              f"t.run_pool(t.Talker(dir={str(tmp_path)!r}, seconds=0.05), 20, ['cpu'])")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout.readline().startswith(b"done ")
    proc.stdout.close()  # as `| head -1` does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert len(ManifestReader(tmp_path / "manifest").rows()) == 20


class BatchKiller(SleepStage):
    """Takes items four at a time, like a pipeline batch, and dies on the poison one before any row."""

    prefetch = 4

    def process(self, feed):
        while batch := feed.take(4):
            if any(item["key"] == "k5" for item in batch):
                os.kill(os.getpid(), signal.SIGKILL)
            for item in batch:
                yield {"key": item["key"], "attempt": item["attempt"], "status": "ok", "pid": os.getpid()}


@pytest.mark.timeout(300)
def test_only_the_sample_that_kills_its_worker_fails_not_its_batch_mates(tmp_path):
    final = latest_of(run_pool(BatchKiller(dir=str(tmp_path)), 12, ["cpu"]))
    assert final["k5"]["status"] == "failed" and "died (exit code -9)" in final["k5"]["error"]
    assert [k for k, r in final.items() if r["status"] != "ok"] == ["k5"]  # its batch-mates were not blamed


@pytest.mark.timeout(600)
def test_on_ray_too_only_the_sample_that_kills_its_worker_fails(tmp_path):
    final = latest_of(run_pool(BatchKiller(dir=str(tmp_path)), 12, ["cpu", "cpu"], "ray"))
    assert sorted(final) == sorted(f"k{i}" for i in range(12))
    assert [k for k, r in final.items() if r["status"] != "ok"] == ["k5"]  # the job lived; batch-mates are ok
    # the driver wrote k5's row: Ray does not say which actor died on it
    assert final["k5"]["worker"] == -1 and final["k5"]["device"] is None
    assert all(r["device"] == "cpu" and r["worker"] >= 0 for k, r in final.items() if k != "k5")


class Raiser(SleepStage):
    """Takes items four at a time and raises (a Python exception, the worker lives) on k6's batch."""

    prefetch = 4

    def process(self, feed):
        while batch := feed.take(4):
            if any(item["key"] == "k6" for item in batch):
                raise ValueError("this batch holds an image the pipeline cannot take")
            for item in batch:
                yield {"key": item["key"], "attempt": item["attempt"], "status": "ok", "pid": os.getpid()}


@pytest.mark.timeout(600)
def test_on_ray_a_batch_that_raises_is_run_one_item_at_a_time(tmp_path):
    final = latest_of(run_pool(Raiser(dir=str(tmp_path)), 12, ["cpu"], "ray"))
    assert sorted(final) == sorted(f"k{i}" for i in range(12))
    assert [k for k, r in final.items() if r["status"] != "ok"] == ["k6"]
    assert "ValueError: this batch holds an image" in final["k6"]["error"]


@pytest.mark.timeout(600)
def test_on_ray_a_job_whose_restarts_run_out_ends_with_a_clear_error(tmp_path):
    """Every actor dies on every batch: once Ray's restarts are spent the run ends with one line, not a hang."""
    stage = SleepStage(dir=str(tmp_path), always_die_on=tuple(f"k{i}" for i in range(6)))
    started = time.monotonic()
    with pytest.raises(PoolError, match="no Ray worker could process a batch"):
        run_pool(stage, 6, ["cpu"], "ray", policy=FaultPolicy(max_retries=1, max_restarts=1, item_timeout_s=20))
    assert time.monotonic() - started < 300


@pytest.mark.long
@pytest.mark.timeout(600)
def test_ctrl_c_of_a_ray_driver_stops_its_cluster_and_a_rerun_finishes(tmp_path, tiny_models):
    import psutil

    from helpers import kill_run, rows_on_disk, start_cli, wait_until, write_jsonl

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": f"p{i}", "prompt": f"a red circle {i}"} for i in range(40)])
    args = ["--input", str(prompts), "--output-dir", str(tmp_path / "run"), "--model", "tiny:t2i", "--steps", "16",
            "--height", "64", "--width", "64", "--true-cfg-scale", "1", "--progress", "none", "--devices", "cpu",
            "--engine", "ray", "--ray-address", "local"]
    proc = start_cli("gen.run", *args)
    driver = psutil.Process(proc.pid)
    wait_until(lambda: rows_on_disk(tmp_path / "run" / "manifest") >= 2, timeout=300)
    family = driver.children(recursive=True)
    proc.send_signal(signal.SIGINT)  # Ctrl+C
    try:
        proc.wait(timeout=120)
    finally:
        kill_run(proc)
    _, alive = psutil.wait_procs(family, timeout=60)
    assert not alive, [p.cmdline()[:3] for p in alive]  # Ray's own processes went with the driver
    partial = rows_on_disk(tmp_path / "run" / "manifest")
    assert 2 <= partial < 40
    rerun = subprocess.run([sys.executable, "-m", "gen.run", *args], cwd=Path(__file__).resolve().parents[2],
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rows_on_disk(tmp_path / "run" / "manifest") == 40
