"""gen.run under faults and bad inputs: every sample ends with exactly one row, nothing else is lost.

Real processes and files throughout. The only fake is `FaultyStage`, for the two faults that
cannot be caused on demand with a tiny CPU model: an exception inside the pipeline and a CUDA
out-of-memory error. It raises them from inside the real pipeline call, so they take the same
path as the real ones.
"""

import signal
from pathlib import Path

import pytest
import torch
from PIL import Image

from gen.config import GenConfig
from gen.run import run
from gen.worker import GenStage
from helpers import final_rows, run_cli, start_cli, wait_until, write_jsonl
from pool.stage import PoolError

T2I = ["--model", "tiny:t2i", "--steps", "2", "--height", "32", "--width", "32", "--true-cfg-scale", "1",
       "--progress", "none"]


class FaultyStage(GenStage):
    """GenStage whose pipeline raises for prompts containing OUT-OF-MEMORY (a CUDA OOM), RAISE, or STICKY
    (a CUDA error that leaves the GPU unusable)."""

    def load(self, device: str) -> None:
        super().load(device)
        real_call = self.adapter.pipe.__call__

        def call(*args, **kwargs):
            prompts = kwargs["prompt"]
            if any("OUT-OF-MEMORY" in p for p in prompts):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            if any("RAISE" in p for p in prompts):
                raise RuntimeError("boom inside the pipeline")
            if any("STICKY" in p for p in prompts):  # what a lost CUDA context raises from then on
                raise RuntimeError("CUDA error: an illegal memory access was encountered\nCompile with "
                                   "`TORCH_USE_CUDA_DSA` to enable device-side assertions.")
            return real_call(*args, **kwargs)

        self.adapter.pipe = type("Wrapped", (), {"__call__": staticmethod(call)})()


def assert_clean(run_dir: Path, n: int) -> None:
    """Exactly one final row per sample, every ok image decodes, no temporary files."""
    final = final_rows(run_dir)
    assert len(final) == n
    for path in final[final["status"] == "ok"]["image_path"]:
        with Image.open(run_dir / path) as image:
            image.load()
    assert not list(run_dir.rglob(".*.tmp")) and not list((run_dir / "manifest").glob(".journal-*"))
    assert not [p for p in (run_dir / "manifest").iterdir() if p.name.startswith(".")]


def test_exception_and_oom_in_one_sample_fail_only_that_sample(tmp_path, tiny_models, capsys):
    prompts = [f"a red circle {i}" for i in range(6)]
    prompts[1] += " OUT-OF-MEMORY"
    prompts[4] += " RAISE"
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"p{i}", "prompt": p} for i, p in enumerate(prompts)])
    config = GenConfig(input=str(src), output_dir=str(tmp_path / "run"), steps=2, height=32, width=32,
                       true_cfg_scale=1.0, devices="cpu", batch_size=3, progress="none")
    assert run(config, stage=FaultyStage) == 0
    assert "gen: 4 ok, 2 failed of 6" in capsys.readouterr().out
    final = final_rows(tmp_path / "run")
    assert final.loc["p1", "status"] == "failed" and final.loc["p1", "error"].startswith("OutOfMemoryError: CUDA out")
    assert final.loc["p4", "status"] == "failed" and "boom inside the pipeline" in final.loc["p4", "error"]
    # the batch that raised was re-run one by one: its other samples still succeeded
    assert (final.drop(["p1", "p4"])["status"] == "ok").all()
    assert_clean(tmp_path / "run", 6)
    config.fail_on_error = True
    config.retry_failed = True
    assert run(config, stage=FaultyStage) == 1  # they fail again; --fail-on-error says so


def test_a_gpu_in_an_error_state_stops_the_run_and_charges_no_sample(tmp_path, tiny_models):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"p{i}", "prompt": f"a red circle {i}" + " STICKY" * (i == 2)}
                                              for i in range(4)])
    config = GenConfig(input=str(src), output_dir=str(tmp_path / "run"), steps=2, height=32, width=32,
                       true_cfg_scale=1.0, devices="cpu", batch_size=1, progress="none")
    with pytest.raises(PoolError, match=r"^the GPU is in an error state \(CUDA error: an illegal memory access"):
        run(config, stage=FaultyStage)
    final = final_rows(tmp_path / "run")
    assert "p2" not in final.index and (final["status"] == "ok").all()  # rows before it stay; none charged


def test_stale_lock_from_a_killed_run_is_taken_over(prompts16, tmp_path, tiny_models):
    out = tmp_path / "run"
    proc = start_cli("gen.run", "--input", str(prompts16), "--output-dir", str(out), *T2I, "--devices", "cpu")
    wait_until((out / ".lock").exists, timeout=120)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / ".lock").exists()  # the file stays; the kernel released the lock with the process
    proc = run_cli("gen.run", "--input", str(prompts16), "--output-dir", str(out), *T2I, "--devices", "cpu")
    assert "16 ok, 0 failed of 16" in proc.stdout


def test_bad_prompts_and_ids_become_rows_not_crashes(tmp_path, tiny_models):
    csv = tmp_path / "in.csv"
    csv.write_bytes(
        b'id,prompt,category\n'
        b'a/b,"a ""quoted"" red circle, with a comma",shapes\n'
        b'../up,"a prompt\nover two lines",shapes\n'
        b'caf\xe9,not utf-8 \xff bytes,shapes\n'
        b'nul\x00id,an empty one next,shapes\n'
        b'empty,,shapes\n'
        b'long,' + b"very long prompt " * 600 + b',shapes\n'
    )
    before = {p: p.stat().st_mtime for p in tmp_path.rglob("*")}
    proc = run_cli("gen.run", "--input", str(csv), "--output-dir", str(tmp_path / "run"), *T2I, "--devices", "cpu",
                   check=False)
    assert proc.returncode == 0, proc.stderr
    final = final_rows(tmp_path / "run")
    by_id = final.set_index("sample_id")
    assert set(by_id.index) == {"a/b", "../up", "caf\ufffd", "nul\x00id", "empty", "long"}
    assert by_id.loc["empty", "status"] == "failed" and by_id.loc["empty", "error"] == "ValueError: empty prompt"
    assert by_id.loc["a/b", "prompt"] == 'a "quoted" red circle, with a comma'
    assert by_id.loc["../up", "prompt"] == "a prompt\nover two lines"
    assert (by_id.drop("empty")["status"] == "ok").all()  # the long prompt is truncated by the tokenizer
    images = sorted(p.name for p in (tmp_path / "run" / "images").iterdir())
    assert len(images) == 5 and all("/" not in n and not n.startswith(".") for n in images)
    assert_clean(tmp_path / "run", 6)
    after = {p: p.stat().st_mtime for p in tmp_path.rglob("*") if not p.is_relative_to(tmp_path / "run")}
    assert after == {p: t for p, t in before.items()}  # nothing written outside the run folder


def test_duplicate_ids_are_a_clear_error(tmp_path, tiny_models):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "x", "prompt": "a"}, {"id": "x", "prompt": "b"}])
    proc = run_cli("gen.run", "--input", str(src), "--output-dir", str(tmp_path / "run"), *T2I, check=False)
    assert proc.returncode == 2 and "duplicate" in proc.stderr and "'x'" in proc.stderr
    assert not (tmp_path / "run" / "manifest").exists()


def test_pickled_weights_are_refused(tmp_path, tiny_models):
    from safetensors.torch import load_file

    model = tmp_path / "model"
    import shutil

    shutil.copytree(tiny_models["t2i"], model)
    for weights in model.glob("transformer/*.safetensors"):
        torch.save(load_file(weights), weights.with_name("diffusion_pytorch_model.bin"))
        weights.unlink()
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "x", "prompt": "a red circle"}])
    proc = run_cli("gen.run", "--input", str(src), "--output-dir", str(tmp_path / "run"), *T2I, "--model",
                   str(model), "--devices", "cpu", check=False)
    assert proc.returncode == 2 and "safetensors" in proc.stderr.lower(), proc.stderr[-2000:]
    lora = tmp_path / "lora"  # a LoRA saved as a pickle: refused before any worker starts
    lora.mkdir()
    for weights in tiny_models["lora"].glob("*.safetensors"):
        torch.save(load_file(weights), lora / "pytorch_lora_weights.bin")
    proc = run_cli("gen.run", "--input", str(src), "--output-dir", str(tmp_path / "run2"), *T2I, "--lora", str(lora),
                   "--devices", "cpu", check=False)
    assert proc.returncode == 2 and "LoRAs load from safetensors only" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "run2").exists()


@pytest.mark.parametrize("value, message", [("../outside.png", "leaves"), ("/etc/hostname", "leaves")])
def test_image_paths_stay_under_the_given_folders(tmp_path, tiny_models, value, message):
    (tmp_path / "data").mkdir()
    src = write_jsonl(tmp_path / "data" / "in.jsonl", [{"id": "x", "image": value, "instruction": "make it blue"}])
    proc = run_cli("gen.run", "--task", "edit", "--model", "tiny:edit", "--input", str(src), "--image-root",
                   str(tmp_path / "data"), "--output-dir", str(tmp_path / "run"), "--progress", "none", check=False)
    assert proc.returncode == 2 and message in proc.stderr and value in proc.stderr


def test_pickle_inputs_are_refused(tmp_path, tiny_models):
    import pickle

    src = tmp_path / "in.pkl"
    src.write_bytes(pickle.dumps([{"id": "x", "prompt": "a"}]))
    proc = run_cli("gen.run", "--input", str(src), "--output-dir", str(tmp_path / "run"), *T2I, check=False)
    assert proc.returncode == 2 and "unsupported input format '.pkl'" in proc.stderr


def test_fp8_on_a_cpu_is_refused_before_any_work(tmp_path, tiny_models):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "x", "prompt": "a red circle"}])
    proc = run_cli("gen.run", "--input", str(src), "--output-dir", str(tmp_path / "run"), *T2I, "--devices",
                   "cpu,cpu", "--quantize", "fp8", check=False)
    assert proc.returncode == 2 and "--quantize fp8 runs on GPUs only" in proc.stderr and "cpu, cpu" in proc.stderr
    assert not (tmp_path / "run" / "manifest").exists()


class FullDiskStage(GenStage):
    """GenStage whose image writes meet a file-size limit below one PNG: each fails for real with EFBIG,
    as on a full disk with ENOSPC. The limit holds only while an image is written (the worker's log,
    perhaps the test runner's capture file, must stay writable)."""

    def _save(self, row: dict, output) -> None:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200, limit[1]))
        try:
            super()._save(row, output)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limit)


def test_a_full_disk_stops_the_run_and_charges_no_sample(tmp_path, tiny_models):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"p{i}", "prompt": f"a red circle {i}"} for i in range(4)])
    config = GenConfig(input=str(src), output_dir=str(tmp_path / "run"), steps=2, height=32, width=32,
                       true_cfg_scale=1.0, devices="cpu", batch_size=2, progress="none")
    with pytest.raises(PoolError, match=r"^File too large \(.*/images/\..*\.png\.tmp\): the machine's fault"):
        run(config, stage=FullDiskStage)
    manifest = tmp_path / "run" / "manifest"
    assert not list(manifest.glob("*.parquet")) and not list(manifest.glob(".journal-*"))  # no sample charged
    assert run(config) == 0  # the same command with room on disk finishes every sample
    assert (final_rows(tmp_path / "run")["status"] == "ok").all()
    assert_clean(tmp_path / "run", 4)


def test_a_resume_refuses_samples_whose_input_changed_under_their_key(tmp_path, tiny_models):
    """Ids from the row index: a row inserted at the top shifts every later id onto another prompt. The
    rerun says so at start, refuses the changed samples, and with --force redoes them as new attempts."""
    src = tmp_path / "in.csv"
    src.write_text("prompt\na red circle\na blue square\n")
    args = ["--input", str(src), "--output-dir", str(tmp_path / "run"), *T2I, "--devices", "cpu"]
    first = run_cli("gen.run", *args)
    assert "sample ids are the rows' positions" in first.stderr
    src.write_text("prompt\na green star\na red circle\na blue square\n")
    proc = run_cli("gen.run", *args, check=False)
    assert proc.returncode == 2 and "holds 2 sample(s) whose input has changed since (e.g. 000000, 000001)" in proc.stderr
    run_cli("gen.run", *args, "--force")
    final = final_rows(tmp_path / "run")
    assert dict(zip(final.index, final["prompt"])) == {"000000": "a green star", "000001": "a red circle",
                                                       "000002": "a blue square"}
    assert dict(zip(final.index, final["attempt"])) == {"000000": 2, "000001": 2, "000002": 1}
    assert (final["status"] == "ok").all()
