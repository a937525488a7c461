"""The Ray executor: the same stages as the local executor, as a Ray Data actor pool.

One actor per worker (a GPU, a tensor-parallel group of GPUs, or a CPU slot), anywhere in the
cluster; each loads one stage (a diffusers pipeline, a vLLM replica) for the whole job and gets
batches of items through `map_batches`. Each actor writes its own rows to the run's manifest, as
a local worker does, a journal per batch sealed into a shard before its acks go back, and sends the
driver only each row's key and status; the journal of an actor killed mid-batch is sealed by the
runner once no process holds it. The output folder must be on a filesystem every node sees.

The fault policy is the local one: a batch whose stage raises is re-run one item at a time inside
the actor, so only the item at fault gets a failed row. A batch whose actor dies is retried by Ray
(`max_retries` task retries; the actor restarts up to `max_restarts` times); a batch that still
fails is skipped, not fatal (`max_errored_blocks`), and its items run again one per batch, so
batch-mates of a sample that kills its worker are not blamed; what dies alone gets a failed row,
written by the driver. Start gating and even shares have no Ray counterpart: Ray Data hands batches
to actors as they come up.
Items cross Ray as JSON strings: Arrow then never has to guess a column's type from a batch that
happens to hold only None. A run that follows another runs one Ray job per batch of new items.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator

from data.manifest import ManifestWriter
from pool.devices import Placement, group_size
from pool.progress import Progress, say
from pool.stage import (ITEM_TIMEOUT_FLOOR_S, ExecutorOptions, FaultPolicy, ListFeed, Output, PoolError, RunFault,
                        Stage, Work)

POLL_S = 5.0


class Slots:
    """Numbers the run's workers as the local executor does, one per device: the same GPU of the
    same node keeps its number when Ray restarts its actor. CPU actors share the node's cores, so
    each process gets its own."""

    def __init__(self):
        self.slots: dict[str, int] = {}

    def slot(self, key: str) -> int:
        return self.slots.setdefault(key, len(self.slots))


def actor_device(ray, gpus: int) -> str:
    """The local executor's device string: `cuda:2`, `cuda:0+1` (the node's GPUs Ray assigned), `cpu`."""
    return "cuda:" + "+".join(str(i) for i in ray.get_gpu_ids()) if gpus else "cpu"


class StageActor:
    """Holds one loaded stage for the actor's life; turns a batch of items into rows on disk."""

    def __init__(self, stage: Stage, output: Output, gpus: int, slots):
        import ray

        if not gpus:  # Ray sets CUDA_VISIBLE_DEVICES for GPU actors; CPU actors share the cores politely
            os.environ.update({"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "GENSCORE_CPU_THREADS": "1",
                               "VLLM_CPU_OMP_THREADS_BIND": "nobind"})
        else:
            os.environ.setdefault("OMP_NUM_THREADS", "1")  # as pool.devices.process_env does locally
        self.device = actor_device(ray, gpus)
        node = ray.get_runtime_context().get_node_id()
        self.slot = ray.get(slots.slot.remote(f"{node}/{self.device}" if gpus else f"{node}/{os.getpid()}"))
        stage.load("cuda" if gpus else "cpu")
        self.stage, self.output = stage, output

    def __call__(self, batch: dict) -> dict:
        items = [json.loads(text) for text in batch["item"]]
        try:
            rows = self._rows(items)
        except RunFault as exc:  # not the items' fault: the driver stops the run with this line
            return {"ack": [json.dumps({"abort": str(exc)})]}
        # a journal of its own per batch, sealed into a shard before the acks go back: between batches the
        # actor holds no journal, so a driver ending the job (or a run after it) never seals one under it
        writer = ManifestWriter(self.output.folder, self.output.schema,
                                tag=f"ray-{socket.gethostname()}-{os.getpid()}")
        acks = []
        for row in rows:
            row.update(device=self.device, worker=self.slot)
            writer.add(row)
            acks.append(json.dumps([row["key"], row.get("status") == "ok", self.stage.line(row)]))
        writer.close()
        return {"ack": acks}

    def _rows(self, items: list[dict]) -> list[dict]:
        try:
            return list(self.stage.process(ListFeed(items)))
        except RunFault:
            raise
        except Exception:  # noqa: BLE001 - find the item at fault: one at a time
            return [self._one(item) for item in items]

    def _one(self, item: dict) -> dict:
        try:
            return list(self.stage.process(ListFeed([item])))[0]
        except RunFault:
            raise
        except Exception as exc:  # noqa: BLE001 - this item breaks the stage: its own failed row
            return self.stage.failed_row(item, f"{type(exc).__name__}: {exc}")


class RayExecutor:
    """Runs a stage over a Ray cluster: `options.ray_address` ("local" starts a private instance)."""

    def __init__(self, placement: Placement, policy: FaultPolicy, options: ExecutorOptions):
        self.placement, self.policy, self.options = placement, policy, options

    def _actors(self, ray) -> tuple[int, int]:
        """(actors, GPUs per actor): the placement's devices, or the cluster's GPUs when it names none."""
        devices = self.placement.devices
        if devices:
            return len(devices), group_size(devices[0]) if devices[0].startswith("cuda") else 0
        gpus = self.placement.gpus_per_replica
        actors = self.placement.replicas or int(ray.cluster_resources().get("GPU", 0)) // gpus
        if not actors:
            raise RuntimeError(f"the Ray cluster at {self.options.ray_address!r} has no GPUs; "
                               "pass --devices cpu to run on CPUs")
        return actors, gpus

    def run(self, stage: Stage, work: Work, output: Output, progress: Progress | None = None) -> None:
        import ray

        if not ray.is_initialized():
            address = None if self.options.ray_address == "local" else self.options.ray_address
            ray.init(address=address, log_to_driver=False)
        actors, gpus = self._actors(ray)
        self.slots = ray.remote(num_cpus=0)(Slots).remote()
        if progress:
            progress.worker_started(0, f"ray x{actors}")
        last = False
        while not last:
            items, last = work.poll()
            if items:
                self._job(ray, stage, items, output, progress, actors, gpus)
            elif not last:
                time.sleep(POLL_S)
        if progress:
            progress.close()

    def _job(self, ray, stage: Stage, items: list[dict], output: Output, progress: Progress | None,
             actors: int, gpus: int) -> None:
        """Every item's row: a pass in batches, then the items of batches that failed, one per batch,
        then failed rows for those that still killed their worker alone."""
        if progress:
            progress.add_total(len(items))
        missing = self._pass(ray, stage, items, output, progress, actors, gpus, self.options.ray_batch_size)
        if missing and self.options.ray_batch_size > 1:
            retry = [{**item, "attempt": item.get("attempt", 1) + 1} for item in missing]  # rows may exist
            missing = self._pass(ray, stage, retry, output, progress, actors, gpus, 1)
        if missing:
            writer = ManifestWriter(output.folder, output.schema, tag="driver")
            for item in missing:
                row = stage.failed_row(item, "its Ray worker died on it (alone, after retries)")
                row.update(device=None, worker=-1)  # Ray does not say which actor died
                writer.add(row)
                if progress:
                    progress.row(0, False)
            writer.close()

    def _pass(self, ray, stage: Stage, items: list[dict], output: Output, progress: Progress | None,
              actors: int, gpus: int, batch_size: int) -> list[dict]:
        """Run `items` in batches; returns those whose batch failed for good."""
        ray.data.DataContext.get_current().max_errored_blocks = -1  # a failed batch is skipped, not fatal
        data = ray.data.from_items([{"item": json.dumps(item, default=str)} for item in items])
        # One item per batch isolates: then an actor holds one batch at a time, so its death
        # charges the item that caused it, not items queued behind it on the same actor.
        pool = ray.data.ActorPoolStrategy(size=min(actors, len(items)),
                                          max_tasks_in_flight_per_actor=1 if batch_size == 1 else None)
        acks = data.map_batches(
            StageActor, batch_size=batch_size, batch_format="numpy",
            compute=pool, num_gpus=gpus or None, num_cpus=1,
            fn_constructor_kwargs=dict(stage=stage, output=output, gpus=gpus, slots=self.slots),
            max_restarts=self.policy.max_restarts, max_task_retries=self.policy.max_retries,
        )
        done: set[str] = set()
        try:
            for record in self._watched(acks):
                ack = json.loads(record["ack"])
                if isinstance(ack, dict):
                    raise RunFault(ack["abort"])
                key, ok, line = ack
                done.add(key)
                if line:
                    say(line)
                if progress:
                    progress.row(0, ok)
        except RunFault as exc:
            raise PoolError(str(exc)) from None
        except Stalled as exc:
            raise PoolError(f"no Ray worker could process a batch: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - every actor gone: what is left is retried or failed
            if not done:
                raise PoolError(f"no Ray worker could process a batch: {exc}") from exc
        return [item for item in items if item["key"] not in done]

    def _watched(self, acks) -> Iterator[dict]:
        """The job's acks as they come, or Stalled when none comes for --item-timeout: once Ray has spent
        its restarts on actors that die, its job waits for actors that never come."""
        timeout = self.policy.item_timeout_s or ITEM_TIMEOUT_FLOOR_S
        inbox: queue.Queue = queue.Queue()

        def pump() -> None:
            try:
                for record in acks.iter_rows():
                    inbox.put(("row", record))
                inbox.put(("end", None))
            except BaseException as exc:  # noqa: BLE001 - handed to the driver's thread
                inbox.put(("error", exc))

        threading.Thread(target=pump, daemon=True, name="ray-acks").start()
        while True:
            try:
                kind, value = inbox.get(timeout=timeout)
            except queue.Empty:
                raise Stalled(f"no row for {timeout:g} s (--item-timeout): its actors keep dying or cannot start, "
                              "and Ray has spent its restarts; see Ray's logs") from None
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value


class Stalled(RuntimeError):
    """A Ray job that gives no row any more."""
