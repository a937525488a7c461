"""Helpers the tests share: run the CLIs as users do, read manifests, make small images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT.parent / "shared" / "reference"  # upstream files, beside the clone in CI (not in a user's clone)


# vLLM's own process layout (front-end, engine core, worker processes), as GPU replicas run it;
# CPU replicas run the engine core in their own process unless asked (score/engine.py).
ENGINE_PROCESSES = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}


# The shared scored run's settings (conftest.scored_run); a test that reruns them elsewhere compares with it.
TINY_GEN = ["--model", "tiny:t2i", "--steps", "2", "--height", "32", "--width", "32", "--true-cfg-scale", "1",
            "--progress", "none"]
TINY_SCORE = ["--model", "tiny:qwen3vl", "--decoding", "schema", "--max-model-len", "2048", "--max-num-seqs", "8", "--max-tokens", "256",
              "--enforce-eager", "--max-pixels", "16384", "--devices", "cpu", "--progress", "none"]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **(extra or {})}


def run_cli(module: str, *args: str, timeout: float = 600, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m module args` as our users do, from the repository root."""
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=cli_env(env),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr[-6000:]}")
    return proc


def start_cli(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=cli_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _family(proc: subprocess.Popen) -> list:
    import psutil

    try:
        parent = psutil.Process(proc.pid)
        return [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_run(proc: subprocess.Popen) -> None:
    """SIGKILL a run: its process, its workers and their engines, as a host's OOM killer or a
    scheduler's cancel would; returns when they are gone (60 s at most)."""
    import psutil

    family = _family(proc)
    for member in family:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    psutil.wait_procs(family, timeout=60)


def pause_run(proc: subprocess.Popen, pause: bool = True) -> None:
    """SIGSTOP (or SIGCONT) a run and every process under it: a run held mid-way, whatever its speed."""
    import psutil

    for member in _family(proc):
        try:
            member.send_signal(signal.SIGSTOP if pause else signal.SIGCONT)
        except psutil.NoSuchProcess:
            pass


def rows_on_disk(folder: Path) -> int:
    """Samples with a row on disk, journaled or in a shard: what a resumed run must not redo."""
    from data.manifest import ManifestReader, latest_of

    return len(latest_of(ManifestReader(folder).rows())) if folder.is_dir() else 0


def rows(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder)


def final_rows(run_dir: Path) -> pd.DataFrame:
    """Each sample's latest attempt in a run's manifest, indexed by key."""
    from data.manifest import latest_rows

    return latest_rows(rows(run_dir / "manifest")).set_index("key")


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> None:
    """Poll `condition` until it holds or `timeout` seconds pass (the caller asserts what it needs)."""
    deadline = time.time() + timeout
    while not condition() and time.time() < deadline:
        time.sleep(interval)


def shape_image(path: Path, color: tuple[int, int, int], size: int = 64, shape: str = "circle") -> Path:
    image = Image.new("RGB", (size, size), (240, 240, 240))
    draw = ImageDraw.Draw(image)
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=color)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def transformer_inputs(config, device: str = "cpu") -> dict:
    """One forward's inputs for a Qwen-Image transformer: 8x8 image tokens and a padded 7-token prompt."""
    import torch

    generator = torch.Generator().manual_seed(1)
    return dict(hidden_states=torch.randn(1, 64, config.in_channels, generator=generator).to(device),
                encoder_hidden_states=torch.randn(1, 7, config.joint_attention_dim, generator=generator).to(device),
                encoder_hidden_states_mask=torch.tensor([[1, 1, 1, 1, 1, 0, 0]], device=device),
                timestep=torch.tensor([0.5], device=device), img_shapes=[[(1, 8, 8)]], return_dict=False)
