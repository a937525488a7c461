"""score.run under faults and bad inputs, with the real vLLM engine (CPU) and the tiny Qwen3-VL."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from helpers import final_rows, run_cli, shape_image, write_jsonl

VLLM = ["--model", "tiny:qwen3vl", "--decoding", "schema", "--max-model-len", "2048", "--max-num-seqs", "8", "--max-tokens", "256",
        "--enforce-eager", "--max-pixels", "16384", "--progress", "none"]


def bad_images(folder: Path) -> dict[str, str]:
    """One file per kind of awkward input; the value is the expected status."""
    folder.mkdir()
    shape_image(folder / "plain.png", (200, 30, 30))
    Image.new("CMYK", (48, 48), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.fromarray((np.arange(48 * 48).reshape(48, 48) * 20).astype(np.uint16)).save(folder / "grey16.png")
    alpha = np.zeros((48, 48, 4), np.uint8)
    alpha[..., 2], alpha[:24, :, 3] = 255, 255
    Image.fromarray(alpha).save(folder / "alpha.png")
    Image.new("RGB", (1, 1), (9, 9, 9)).save(folder / "tiny.png")
    Image.new("RGB", (10000, 10000), (30, 120, 30)).save(folder / "huge.png")  # capped by --max-pixels
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes((folder / "plain.png").read_bytes()[:60])
    (folder / "text.png").write_text("this is not an image")
    return {"plain": "ok", "cmyk": "ok", "grey16": "ok", "alpha": "ok", "tiny": "ok", "huge": "ok",
            "empty": "failed", "truncated": "failed", "text": "failed", "missing": "failed"}


def test_bad_images_and_overlong_prompts_become_rows(tmp_path, tiny_models):
    expected = bad_images(tmp_path / "images")
    names = {p.stem: p.name for p in (tmp_path / "images").iterdir()}
    records = [{"id": key, "image": f"images/{names.get(key, key + '.png')}", "prompt": f"a picture {key}"}
               for key in expected]
    records.append({"id": "overlong", "image": "images/plain.png", "prompt": "many words " * 3000})
    src = write_jsonl(tmp_path / "in.jsonl", records)
    before = {p: p.stat().st_mtime for p in tmp_path.rglob("*")}
    proc = run_cli("score.run", "--task", "t2i", "--input", str(src), "--output-dir", str(tmp_path / "s"), *VLLM,
                   "--devices", "cpu")
    final = final_rows(tmp_path / "s")
    assert len(final) == len(records)
    for key, status in expected.items():
        assert final.loc[key, "status"] == status, (key, final.loc[key, "error"])
    assert "not found" in final.loc["missing", "error"]
    assert "UnidentifiedImageError" in final.loc["text", "error"]
    assert final.loc["truncated", "error"] and final.loc["empty", "error"]
    assert final.loc["overlong", "status"] == "failed" and "length" in final.loc["overlong", "error"].lower()
    assert re.search(r"^all \(micro[^)]*\)\s+11\s+6\s+5\b", proc.stdout, re.M), proc.stdout  # the summary says what happened
    after = {p: p.stat().st_mtime for p in tmp_path.rglob("*") if not p.is_relative_to(tmp_path / "s")}
    assert after == before  # nothing written beside the inputs


def test_model_code_in_the_folder_is_never_run(tmp_path, tiny_models):
    model = tmp_path / "model"
    shutil.copytree(tiny_models["qwen3vl"], model)
    marker = tmp_path / "remote-code-ran"
    (model / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\nfrom transformers import Qwen3VLConfig\n")
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.Qwen3VLConfig"}
    (model / "config.json").write_text(json.dumps(config))
    good = shape_image(tmp_path / "a.png", (10, 200, 10))
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "image": good.name}])
    args = [a if a != "tiny:qwen3vl" else str(model) for a in VLLM]
    proc = run_cli("score.run", "--task", "caption", "--input", str(src), "--output-dir", str(tmp_path / "s"), *args,
                   "--devices", "cpu", check=False)
    assert not marker.exists()
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_fp8_is_refused_before_any_work(tmp_path, tiny_models):
    good = shape_image(tmp_path / "a.png", (10, 200, 10))
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "image": good.name}])
    common = ["--task", "caption", "--input", str(src), *VLLM, "--quantize", "fp8"]
    on_cpus = run_cli("score.run", *common, "--output-dir", str(tmp_path / "s1"), "--devices", "cpu,cpu", check=False)
    assert on_cpus.returncode == 2 and "--quantize fp8 runs on GPUs only" in on_cpus.stderr
    assert "cpu, cpu" in on_cpus.stderr
    hf = run_cli("score.run", *common, "--output-dir", str(tmp_path / "s2"), "--backend", "transformers", check=False)
    assert hf.returncode == 2 and "use it with --backend vllm" in hf.stderr
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists()


def test_a_pickled_judge_lora_is_refused_before_any_worker_starts(tmp_path, tiny_models):
    lora = tmp_path / "lora"
    shutil.copytree(tiny_models["qwen3vl-lora"], lora)
    (lora / "adapter_model.safetensors").rename(lora / "adapter_model.bin")
    src = write_jsonl(tmp_path / "in.jsonl", [{"image": shape_image(tmp_path / "a.png", (9, 9, 9)).name,
                                               "prompt": "p"}])
    proc = run_cli("score.run", *VLLM, "--input", str(src), "--output-dir", str(tmp_path / "s"), "--devices", "cpu",
                   "--judge-lora", str(lora), check=False)
    assert proc.returncode == 2 and "no adapter_model.safetensors there" in proc.stderr
    assert not (tmp_path / "s" / "manifest").exists()


def test_a_changed_template_file_or_backend_is_refused_like_a_changed_config(tmp_path, tiny_models):
    template = tmp_path / "t.yaml"
    template.write_text("name: mine\nversion: 1\nquestions:\n  - name: q\n    text: 'Is it red? {prompt}'\n"
                        "    images: [image]\n")
    src = write_jsonl(tmp_path / "in.jsonl", [{"image": shape_image(tmp_path / "a.png", (200, 9, 9)).name,
                                               "prompt": "p"}])
    args = [*VLLM, "--task", "custom", "--template-file", str(template), "--input", str(src), "--output-dir",
            str(tmp_path / "s"), "--devices", "cpu", "--max-tokens", "16"]
    run_cli("score.run", *args)
    template.write_text(template.read_text().replace("Is it red?", "Is it blue?"))  # same name, same version
    proc = run_cli("score.run", *args, check=False)
    assert proc.returncode == 2 and "template_file_sha256" in proc.stderr
    template.write_text(template.read_text().replace("Is it blue?", "Is it red?"))
    proc = run_cli("score.run", *args, "--backend", "transformers", check=False)
    assert proc.returncode == 2 and "backend: 'vllm' -> 'transformers'" in proc.stderr
