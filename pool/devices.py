"""Which devices a run uses: `--devices cpu,cpu`, `--gpus 0 1`, or every visible GPU.

A device string names one worker's hardware: `cpu`, `cuda:3`, or a tensor-parallel group
`cuda:0+1`. Indexes count the GPUs the parent may see: under CUDA_VISIBLE_DEVICES=2,3 (Slurm,
a shared node) `cuda:0` is physical GPU 2. Only the executor turns these into process environments.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass


def visible_gpus() -> list[str] | None:
    """The parent's CUDA_VISIBLE_DEVICES entries (ids, UUIDs or MIG names), None when unset."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return None
    return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]


def physical_gpus(device: str) -> list[str]:
    """What a worker's `cuda:i+j` means on this host: our indexes count the GPUs this process may
    see, so with CUDA_VISIBLE_DEVICES=2,3 (a scheduler's choice) `cuda:0` is GPU 2."""
    indexes = [int(i) for i in device.removeprefix("cuda:").split("+")]
    visible = visible_gpus()
    if visible is None:
        return [str(i) for i in indexes]
    missing = [i for i in indexes if i >= len(visible)]
    if missing:
        raise ValueError(f"GPU index {missing[0]} is not among the {len(visible)} visible GPUs "
                         f"(CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}); --gpus counts from 0 "
                         "within that list")
    return [visible[i] for i in indexes]


def describe(devices: list[str]) -> str:
    """The device plan as users read it: `cuda:0 (GPU 2), cuda:1 (GPU 3)`."""
    return ", ".join(f"{d} (GPU {'+'.join(physical_gpus(d))})" if d.startswith("cuda:") else d for d in devices)


def gpu_memory_gib(gpu: str) -> float | None:
    """Total memory of one physical GPU (id or UUID), from nvidia-smi: no CUDA in the parent."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", gpu],
                             capture_output=True, text=True, timeout=30)
        return float(out.stdout.split()[0]) / 1024
    except (FileNotFoundError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None


def visible_gpu_count() -> int:
    """GPUs this process may use, without initialising CUDA in the parent."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return len([d for d in env.split(",") if d.strip() and d.strip() != "-1"])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def plan_devices(devices: str | None, gpus: list[int] | None, group_size: int = 1,
                 replicas: int | None = None) -> list[str]:
    """Worker device strings. `group_size` GPUs per worker (tensor parallelism)."""
    if devices:
        listed = [d.strip() for d in devices.split(",") if d.strip()]
        if replicas and len(listed) == 1:
            return listed * replicas  # `--devices cpu --replicas 2`: two CPU replicas
        if replicas and replicas != len(listed):
            raise ValueError(f"--replicas {replicas} does not match --devices {devices}")
        return listed
    ids = list(gpus) if gpus else list(range(visible_gpu_count()))
    for device in (f"cuda:{i}" for i in ids):
        physical_gpus(device)  # an index outside the visible set is an error now, not in a worker
    if not ids:
        # No GPU: one CPU worker (a run on a laptop, or CI) rather than an error.
        return ["cpu"] * (replicas or 1)
    groups = [ids[i:i + group_size] for i in range(0, len(ids) - group_size + 1, group_size)]
    if not groups:
        raise ValueError(f"--tp {group_size} needs at least {group_size} GPUs; have {ids}")
    if replicas:
        if replicas > len(groups):
            raise ValueError(f"--replicas {replicas} with --tp {group_size} needs {replicas * group_size} GPUs; "
                             f"have {len(ids)} ({ids})")
        groups = groups[:replicas]
    return ["cuda:" + "+".join(str(g) for g in group) for group in groups]


@dataclass(frozen=True)
class Placement:
    """Where a run's workers go, decided once. `devices` holds one device string per worker; None
    leaves the count to the executor's cluster (Ray with no --devices or --gpus): `replicas`
    workers, or as many as its GPUs allow, of `gpus_per_replica` GPUs each."""

    devices: list[str] | None
    gpus_per_replica: int = 1
    replicas: int | None = None

    def describe(self) -> str:
        if self.devices is not None:
            return describe(self.devices)
        each = f" of {self.gpus_per_replica} GPUs" if self.gpus_per_replica > 1 else ""
        return f"{self.replicas or 'every'} replica(s){each} over the Ray cluster's GPUs"


def place(devices: str | None = None, gpus: list[int] | None = None, gpus_per_replica: int = 1,
          replicas: int | None = None, replicas_per_gpu: int = 1, on_cluster: bool = False) -> Placement:
    """The placement of a run's flags. `on_cluster`: the executor spans machines (Ray), so with no
    --devices or --gpus its own cluster decides how many workers there are."""
    if replicas_per_gpu < 1 or (replicas_per_gpu > 1 and on_cluster):
        raise ValueError("--replicas-per-gpu takes a number >= 1, and more than 1 only with --engine local")
    if on_cluster and not devices and not gpus:
        return Placement(None, gpus_per_replica, replicas)
    planned = plan_devices(devices, gpus, group_size=gpus_per_replica, replicas=replicas)
    return Placement([d for d in planned for _ in range(replicas_per_gpu)], gpus_per_replica, replicas)


def require_fp8_gpus(devices: list[str] | None) -> None:
    """`--quantize fp8` before any worker starts: float8 matmuls exist on recent GPUs only."""
    if any(not d.startswith("cuda") for d in devices or []):
        raise ValueError(f"--quantize fp8 runs on GPUs only (float8 matmuls need compute capability 8.9+, "
                         f"e.g. H100), not on {', '.join(devices)}")


def process_env(device: str, cpu_slot: int, cpu_workers: int) -> dict[str, str]:
    """Environment for a worker process on `device`, set before torch is imported there."""
    if device.startswith("cuda:"):
        # One OpenMP thread unless the user chose: a GPU worker's CPU work (vLLM's renderer, image
        # codecs) runs on threads of its own, and each opened a team of every core; a scoring
        # replica on a 16-core H100 host did 51.6 images/s that way, 64.2-66.7 with one.
        return {"CUDA_VISIBLE_DEVICES": ",".join(physical_gpus(device)),
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if device != "cpu":
        raise ValueError(f"unknown device {device!r}: use cpu, cuda:N or cuda:N+M")
    # CPU workers split the cores between them instead of fighting over all of them.
    cores = os.cpu_count() or 1
    per = max(1, cores // max(1, cpu_workers))
    first = (cpu_slot * per) % cores
    last = min(cores - 1, first + per - 1)
    return {
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": str(per),
        "GENSCORE_CPU_THREADS": str(per),
        "VLLM_CPU_OMP_THREADS_BIND": f"{first}-{last}" if last > first else str(first),
    }


def local_device(device: str) -> str:
    """The device as the worker sees it once CUDA_VISIBLE_DEVICES is set."""
    return "cuda" if device.startswith("cuda:") else "cpu"


def group_size(device: str) -> int:
    return len(device.removeprefix("cuda:").split("+")) if device.startswith("cuda:") else 1
