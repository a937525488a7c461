"""One runner for every command: a run's lifecycle around a stage.

gen.run and score.run build their samples (a `Work`) and a `StageSpec`; `run_stage` does the
rest, the same way for both: take the run folder's lock, refuse a changed config, seal what a
killed run left, pick what is still to do, start the executor, seal again, mark the run complete.
Executors are looked up by name in `EXECUTORS`; a new one is a module plus a line there.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from data.manifest import latest_status, recover
from data.rundir import RunDir
from pool.devices import Placement
from pool.progress import Progress, ProgressMode
from pool.stage import ExecutorOptions, FaultPolicy, Output, Stage, Work

EXECUTORS = {
    "local": "pool.executor:LocalExecutor",
    "ray": "pool.ray_executor:RayExecutor",
}


@dataclass
class StageSpec:
    """What a command runs and how its run folder is kept."""

    name: str                 # "gen" / "score": the prefix of the runner's lines
    stage: Stage              # not loaded: each worker loads its own copy
    schema: pa.Schema
    config: dict              # the resolved config, saved in the run folder
    identity: dict            # the fields that change the rows: a folder never mixes two
    default_identity: dict    # the identity of the defaults (for runs saved before a field existed)
    config_file: str = "run.json"
    unit: str = "img"


@dataclass
class RunSettings:
    """The runtime flags every command shares."""

    executor: str = "local"
    force: bool = False
    retry_failed: bool = False
    progress: ProgressMode = "bar"
    verbose: bool = False
    policy: FaultPolicy = field(default_factory=FaultPolicy)
    ray_address: str = "auto"
    ray_batch_size: int = 16


def select_todo(samples: list[dict], done: dict[str, tuple[str, int]], retry_failed: bool) -> list[dict]:
    """Samples still to run, each with its attempt number."""
    todo = []
    for sample in samples:
        status, attempt = done.get(sample["key"], (None, 0))
        if status == "ok" or (status == "failed" and not retry_failed):
            continue
        todo.append({**sample, "attempt": attempt + 1})
    return todo


class Todo:
    """The items of `work` still to run; remembers every sample it saw, for the summary."""

    def __init__(self, work: Work, done: dict[str, tuple[str, int]], retry_failed: bool):
        self.work, self.done, self.retry_failed = work, done, retry_failed
        self.samples: list[dict] = []
        self.first: tuple[list[dict], bool] | None = None

    def poll(self) -> tuple[list[dict], bool]:
        if self.first is not None:
            first, self.first = self.first, None
            return first
        samples, last = self.work.poll()
        self.samples += samples
        return select_todo(samples, self.done, self.retry_failed), last

    def peek(self) -> tuple[list[dict], bool]:
        """The first poll, kept for the executor: the start line counts it."""
        self.first = self.poll()
        return self.first


def make_executor(name: str, placement: Placement, policy: FaultPolicy, options: ExecutorOptions):
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; choose from {', '.join(EXECUTORS)}")
    module, cls = EXECUTORS[name].split(":")
    return getattr(importlib.import_module(module), cls)(placement, policy, options)


def run_stage(run_dir: Path, spec: StageSpec, work: Work, placement: Placement, settings: RunSettings) -> list[dict]:
    """Run `spec.stage` over `work` into `run_dir`; returns every sample the work held."""
    rundir = RunDir(run_dir, config_name=spec.config_file)
    rundir.lock()
    try:
        rundir.check_config(spec.identity, settings.force, spec.default_identity)
        rundir.save_config(spec.config, spec.identity)
        rundir.clear_complete()
        manifest = Path(run_dir) / "manifest"
        recover(manifest, spec.schema)  # what a killed run left in its journals
        done = latest_status(manifest)
        todo = Todo(work, done, settings.retry_failed)
        items, last = todo.peek()
        if last:  # the whole input is known: a sample changed under its key is refused, like a changed config
            changed = rundir.check_inputs(todo.samples, settings.force)
            if changed:  # --force: those are done again, with their new input, as new attempts
                done.update({key: ("changed", done[key][1]) for key in changed if key in done})
                todo.first = (select_todo(todo.samples, done, settings.retry_failed), True)
                items = todo.first[0]
        so_far = "" if last else " so far"
        print(f"{spec.name}: {len(todo.samples)} samples{so_far}, {len(todo.samples) - len(items)} already done, "
              f"{len(items)} to run on {placement.describe()}", file=sys.stderr)
        progress = Progress(0, settings.progress, unit=spec.unit)
        if items or not last:
            options = ExecutorOptions(log_dir=None if settings.verbose else str(Path(run_dir) / "logs"),
                                      ray_address=settings.ray_address, ray_batch_size=settings.ray_batch_size)
            executor = make_executor(settings.executor, placement, settings.policy, options)
            try:
                executor.run(spec.stage, todo, Output(str(manifest), spec.schema), progress)
            finally:
                recover(manifest, spec.schema)  # journals of workers that were killed or torn down
        rundir.mark_complete(len(todo.samples))
        if progress.slots:
            print(progress.table(), file=sys.stderr)
        return todo.samples
    finally:
        rundir.unlock()
