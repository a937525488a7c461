"""gen.run end to end: real processes, the tiny pipelines, real files."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import kill_run, rows, rows_on_disk, run_cli, shape_image, start_cli, wait_until, write_jsonl

T2I = ["--model", "tiny:t2i", "--steps", "2", "--height", "32", "--width", "32", "--true-cfg-scale", "1",
       "--progress", "none"]


def gen(input_path, out, *extra, check=True):
    return run_cli("gen.run", "--input", str(input_path), "--output-dir", str(out), *T2I, *extra, check=check)


def image_bytes(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / "images").glob("*.png"))}


def test_images_do_not_depend_on_worker_count(prompts16, tmp_path, tiny_models):
    gen(prompts16, tmp_path / "one", "--devices", "cpu")
    proc = gen(prompts16, tmp_path / "two", "--devices", "cpu,cpu")
    assert "to run on cpu, cpu" in proc.stderr  # which worker takes what is up to timing: tests/pool
    one, two = image_bytes(tmp_path / "one"), image_bytes(tmp_path / "two")
    assert len(one) == 16 and one == two
    frame = rows(tmp_path / "two" / "manifest")
    assert len(frame) == 16 and (frame["status"] == "ok").all()
    assert set(frame["worker"]) <= {0, 1}
    assert (frame["seed"] == frame["index"]).all()  # seed = seed_start (0) + index
    assert set(frame["image_path"]) == {f"images/{k}_seed{s}.png" for k, s in zip(frame["key"], frame["seed"])}


def test_seed_start_and_offset_keep_seeds_tied_to_input_position(prompts16, tmp_path, tiny_models):
    gen(prompts16, tmp_path / "run", "--devices", "cpu", "--seed-start", "100", "--offset", "10",
        "--num-samples", "3")
    frame = rows(tmp_path / "run" / "manifest").sort_values("index")
    assert frame["index"].tolist() == [10, 11, 12]
    assert frame["seed"].tolist() == [110, 111, 112]


def test_sigkill_then_resume_gives_one_row_per_sample_and_same_images(prompts16, tmp_path, tiny_models):
    gen(prompts16, tmp_path / "clean", "--devices", "cpu")
    run = tmp_path / "killed"
    proc = start_cli("gen.run", "--input", str(prompts16), "--output-dir", str(run), *T2I, "--devices", "cpu,cpu")
    wait_until(lambda: rows_on_disk(run / "manifest") >= 4, timeout=120)
    kill_run(proc)
    done_before = rows_on_disk(run / "manifest")
    assert 4 <= done_before < 16, "the kill should land part-way"
    rerun = gen(prompts16, run, "--devices", "cpu,cpu")
    # every journaled row was recovered: the rerun redid exactly the others
    assert f"{done_before} already done, {16 - done_before} to run" in rerun.stderr
    frame = rows(run / "manifest")
    assert sorted(frame["key"]) == sorted(set(frame["key"])) and len(frame) == 16
    assert (frame["status"] == "ok").all()
    assert image_bytes(run) == image_bytes(tmp_path / "clean")
    assert not list(run.rglob(".*.tmp")) and not list((run / "manifest").glob(".journal-*"))


def test_rerun_skips_done_samples_and_retry_failed_retries(tmp_path, tiny_models):
    records = [{"id": "a", "prompt": "a red circle"}, {"id": "b", "prompt": "  "}, {"id": "c", "prompt": "a cat"}]
    src = write_jsonl(tmp_path / "p.jsonl", records)
    proc = gen(src, tmp_path / "run", "--devices", "cpu")
    assert "2 ok, 1 failed of 3" in proc.stdout
    proc = gen(src, tmp_path / "run", "--devices", "cpu")
    assert "3 already done, 0 to run" in proc.stderr
    gen(src, tmp_path / "run", "--devices", "cpu", "--retry-failed")
    frame = rows(tmp_path / "run" / "manifest")
    b = frame[frame["key"] == "b"].sort_values("attempt")
    assert b["attempt"].tolist() == [1, 2] and (b["status"] == "failed").all()
    assert "empty prompt" in b["error"].iloc[0]
    assert len(frame[frame["key"] != "b"]) == 2


def test_changed_config_is_refused_unless_forced(prompts16, tmp_path, tiny_models):
    gen(prompts16, tmp_path / "run", "--devices", "cpu", "--num-samples", "2")
    proc = gen(prompts16, tmp_path / "run", "--devices", "cpu", "--num-samples", "2", "--steps", "3", check=False)
    assert proc.returncode == 2 and "steps: 2 -> 3" in proc.stderr
    gen(prompts16, tmp_path / "run", "--devices", "cpu", "--num-samples", "2", "--steps", "3", "--force")


def test_a_run_from_before_a_new_setting_resumes(prompts16, tmp_path, tiny_models):
    gen(prompts16, tmp_path / "run", "--devices", "cpu", "--num-samples", "2")
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    del saved["identity"]["quantize"]  # as written by a genscore that had no --quantize yet
    (tmp_path / "run" / "run.json").write_text(json.dumps(saved))
    proc = gen(prompts16, tmp_path / "run", "--devices", "cpu", "--num-samples", "3", "--steps", "3", check=False)
    assert proc.returncode == 2 and "steps: 2 -> 3" in proc.stderr and "quantize" not in proc.stderr
    proc = gen(prompts16, tmp_path / "run", "--devices", "cpu", "--num-samples", "3")
    assert "2 already done, 1 to run" in proc.stderr


def test_edit_with_missing_and_corrupt_sources(tmp_path, tiny_models):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    records = [
        {"id": "good1", "image": str(shape_image(tmp_path / "g1.png", (200, 0, 0)).name), "instruction": "make it blue",
         "category": "physical"},
        {"id": "missing", "image": "nope.png", "instruction": "make it blue", "category": "physical"},
        {"id": "corrupt", "image": "corrupt.png", "instruction": "make it blue", "category": "causal"},
        {"id": "good2", "image": str(shape_image(tmp_path / "g2.png", (0, 200, 0)).name), "instruction": "add a star",
         "category": "social"},
    ]
    src = write_jsonl(tmp_path / "tasks.jsonl", records)
    proc = run_cli("gen.run", "--task", "edit", "--model", "tiny:edit", "--input", str(src), "--output-dir",
                   str(tmp_path / "run"), "--steps", "1", "--height", "32", "--width", "32", "--true-cfg-scale", "1",
                   "--devices", "cpu", "--progress", "none")
    assert proc.returncode == 0
    frame = rows(tmp_path / "run" / "manifest").set_index("key")
    assert frame.loc["good1", "status"] == "ok" and frame.loc["good2", "status"] == "ok"
    assert frame.loc["missing", "status"] == "failed" and "not found" in frame.loc["missing", "error"]
    assert frame.loc["corrupt", "status"] == "failed" and "UnidentifiedImageError" in frame.loc["corrupt", "error"]
    assert frame.loc["good2", "category"] == "social" and frame.loc["good1", "task"] == "edit"
    assert (tmp_path / "run" / frame.loc["good1", "image_path"]).is_file()


def _formats(tmp_path: Path) -> dict[str, Path]:
    records = [{"uid": "x1", "text": "a blue star", "kind": "shapes", "note": "kept"},
               {"uid": "x2", "text": "a red heart", "kind": "shapes", "note": "also kept"}]
    frame = pd.DataFrame(records)
    out = {"csv": tmp_path / "in.csv", "jsonl": tmp_path / "in.jsonl", "parquet": tmp_path / "in.parquet",
           "datasets": tmp_path / "ds"}
    frame.to_csv(out["csv"], index=False)
    write_jsonl(out["jsonl"], records)
    frame.to_parquet(out["parquet"])
    import datasets

    datasets.Dataset.from_pandas(frame).save_to_disk(str(out["datasets"]))
    return out


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet", "datasets"])
def test_input_formats(fmt, tmp_path, tiny_models):
    src = _formats(tmp_path)[fmt]
    gen(src, tmp_path / "run", "--devices", "cpu", "--id-column", "uid", "--prompt-column", "text",
        "--category-column", "kind")
    frame = rows(tmp_path / "run" / "manifest").set_index("key")
    assert list(frame.sort_values("index").index) == ["x1", "x2"]
    assert frame.loc["x2", "prompt"] == "a red heart" and frame.loc["x1", "category"] == "shapes"
    assert json.loads(frame.loc["x2", "extra"]) == {"note": "also kept"}


def test_image_folder_input_for_edit(tmp_path, tiny_models):
    folder = tmp_path / "folder"
    shape_image(folder / "one.png", (10, 200, 10))
    write_jsonl(folder / "instructions.jsonl", [{"file_name": "one.png", "instruction": "make it red"}])
    run_cli("gen.run", "--task", "edit", "--model", "tiny:edit", "--input", str(folder), "--output-dir",
            str(tmp_path / "run"), "--steps", "1", "--height", "32", "--width", "32", "--true-cfg-scale", "1",
            "--devices", "cpu", "--progress", "none")
    frame = rows(tmp_path / "run" / "manifest")
    assert frame["status"].tolist() == ["ok"] and frame["source_image"][0] == str(folder / "one.png")


def test_unknown_model_is_a_clear_error(prompts16, tmp_path):
    proc = gen(prompts16, tmp_path / "run", "--model", "/no/such/model", check=False)
    assert proc.returncode == 2 and "model not found" in proc.stderr


def test_batches_match_single_calls_and_sizes(prompts16, tmp_path, tiny_models):
    gen(prompts16, tmp_path / "b4", "--devices", "cpu", "--batch-size", "4", "--num-samples", "8")
    frame = rows(tmp_path / "b4" / "manifest")
    assert len(frame) == 8 and (frame["status"] == "ok").all()
    assert (frame["height"] == 32).all() and (frame["width"] == 32).all()


def test_second_run_on_the_same_folder_is_refused(prompts16, tmp_path, tiny_models):
    run = tmp_path / "run"
    first = start_cli("gen.run", "--input", str(prompts16), "--output-dir", str(run), *T2I, "--devices", "cpu")
    wait_until((run / "run.json").exists, timeout=60, interval=0.02)
    second = gen(prompts16, run, "--devices", "cpu", check=False)
    first.wait(timeout=300)
    assert second.returncode == 2 and "is in use by a running genscore run (pid" in second.stderr
    assert first.returncode == 0
    gen(prompts16, run, "--devices", "cpu")  # the lock goes with its holder


def test_compiled_blocks_give_the_eager_images(prompts16, tmp_path, tiny_models):
    # --compile on: regional compile with the compilable RoPE and fused GELU (gen/pipeline.py:speed_up)
    gen(prompts16, tmp_path / "eager", "--devices", "cpu", "--num-samples", "4", "--compile", "off")
    gen(prompts16, tmp_path / "compiled", "--devices", "cpu", "--num-samples", "4", "--compile", "on")
    eager, compiled = (rows(tmp_path / run / "manifest").sort_values("index") for run in ("eager", "compiled"))
    assert (compiled["status"] == "ok").all() and len(compiled) == 4
    for a, b in zip(eager["image_path"], compiled["image_path"]):
        pixels = [np.asarray(Image.open(tmp_path / run / path), dtype=int)
                  for run, path in (("eager", a), ("compiled", b))]
        assert np.abs(pixels[0] - pixels[1]).max() <= 2  # float32 on the CPU: rounding, not a different image


def test_lora_changes_the_images_and_is_part_of_the_run(prompts16, tmp_path, tiny_models):
    gen(prompts16, tmp_path / "plain", "--devices", "cpu", "--num-samples", "2")
    gen(prompts16, tmp_path / "lora", "--devices", "cpu", "--num-samples", "2", "--lora", "tiny:lora:0.8")
    plain, lora = image_bytes(tmp_path / "plain"), image_bytes(tmp_path / "lora")
    assert plain.keys() == lora.keys() and len(plain) == 2
    for name in plain:  # same seeds, other weights: other pixels
        a, b = (np.asarray(Image.open(run / "images" / name), dtype=np.int16) for run in (tmp_path / "plain",
                                                                                             tmp_path / "lora"))
        assert np.abs(a - b).max() > 0
    assert json.loads((tmp_path / "lora" / "run.json").read_text())["identity"]["lora"] == ["tiny:lora:0.8"]
    proc = gen(prompts16, tmp_path / "lora", "--devices", "cpu", "--num-samples", "2", check=False)
    assert proc.returncode == 2 and "lora: ['tiny:lora:0.8'] -> None" in proc.stderr  # resume keeps the LoRA
    # a LoRA that does not match the pipeline: one clear line, no traceback on the terminal
    wrong = tmp_path / "wrong.safetensors"
    from safetensors.torch import save_file
    import torch

    save_file({"transformer.nonexistent.lora_A.weight": torch.zeros(4, 8),
               "transformer.nonexistent.lora_B.weight": torch.zeros(8, 4)}, str(wrong))
    proc = gen(prompts16, tmp_path / "bad", "--devices", "cpu", "--num-samples", "1", "--lora", str(wrong), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "no worker could start: ValueError: LoRA" in proc.stderr
    missing = gen(prompts16, tmp_path / "bad2", "--lora", "./no/such/lora.safetensors", check=False)
    assert missing.returncode == 2 and "LoRA not found" in missing.stderr
