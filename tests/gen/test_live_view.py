"""The live view (pool/progress.py): each worker's denoising steps reach its bar, through the real tiny
pipeline on two CPU workers; no GPU figures and no noise where there is no NVML; each row's time by phase."""

from __future__ import annotations

from data.manifest import GEN_SCHEMA, read_manifest
from gen.config import GenConfig
from gen.worker import GenStage
from pool.devices import Placement
from pool.executor import LocalExecutor
from pool.progress import Progress
from pool.stage import ExecutorOptions, FaultPolicy, FixedWork, Output


class Recorded(Progress):
    """The log view, with every step it was told kept."""

    def __init__(self):
        super().__init__(0, "log", unit="img")
        self.steps: list[tuple[int, int, int]] = []

    def step(self, slot: int, done: int, total: int) -> None:
        self.steps.append((slot, done, total))
        super().step(slot, done, total)


def test_denoising_steps_reach_each_workers_bar(tmp_path, tiny_models, capfd):
    config = GenConfig(model="tiny:t2i", steps=6, height=32, width=32, true_cfg_scale=1.0,
                       output_dir=str(tmp_path / "run"), progress="log")
    samples = [{"key": f"s{i}", "sample_id": f"s{i}", "index": i, "prompt": f"a red circle {i}", "category": None,
                "source_image": None, "extra": None} for i in range(6)]
    progress = Recorded()
    executor = LocalExecutor(Placement(["cpu", "cpu"]), FaultPolicy(), ExecutorOptions(log_dir=str(tmp_path / "logs")))
    executor.run(GenStage(config), FixedWork(samples), Output(str(tmp_path / "run" / "manifest"), GEN_SCHEMA), progress)
    slots = {slot for slot, _, _ in progress.steps}
    assert slots == {0, 1}, "both workers' steps reach the parent"
    assert all(total == 6 for _, _, total in progress.steps)
    for slot in slots:
        assert (slot, 6, 6) in progress.steps, "an image's last step is always shown"
    rows = read_manifest(tmp_path / "run" / "manifest").to_pylist()
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    for row in rows:  # the phases of each image, from the same step callbacks
        phases = [row[k] for k in ("encode_s", "denoise_s", "decode_s", "save_s")]
        assert all(p is not None and p >= 0 for p in phases) and row["denoise_s"] > 0
        assert sum(phases) <= row["duration_s"] * 1.05 + 0.01
    table = progress.table()
    assert "gpu util" not in table and "peak mem" not in table  # no GPU: no empty columns
    assert "nvml" not in capfd.readouterr().err.lower()
