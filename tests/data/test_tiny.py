"""The tiny offline models: deterministic builds, Qwen-shaped tokenization, real loaders."""

import subprocess
import sys
from pathlib import Path

from data import tiny
from helpers import ROOT


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_builds_give_identical_files(tmp_path):
    for name in tiny.MODELS:
        a = _files(tiny.ensure(name, tmp_path / "a"))
        b = _files(tiny.ensure(name, tmp_path / "b"))
        assert a.keys() == b.keys() and any(k.endswith(".safetensors") for k in a)
        assert a == b, f"{name}: files differ: {[k for k in a if a[k] != b.get(k)]}"


def test_cached_build_is_reused_and_rebuilt_when_stale(tmp_path):
    path = tiny.ensure("qwen3vl", tmp_path)
    weights = path / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert tiny.ensure("qwen3vl", tmp_path) == path
    assert weights.stat().st_mtime_ns == mtime  # cached: not rebuilt
    (path / ".genscore-tiny").write_text("an older builder")
    tiny.ensure("qwen3vl", tmp_path)
    assert weights.stat().st_mtime_ns != mtime  # stale stamp: rebuilt


def test_builds_started_together_build_once(tmp_path):
    """Two processes (parallel test workers, two demos) asking for the same model at once: one builds,
    the other waits and takes that build, so neither can see the folder swapped under it."""
    code = ("import sys; from data import tiny; "
            "print((tiny.ensure('qwen3vl', sys.argv[1]) / 'model.safetensors').stat().st_ino)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              cwd=ROOT) for _ in range(2)]
    inodes = [proc.communicate(timeout=300)[0].strip() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    assert inodes[0] == inodes[1] == str((tmp_path / "qwen3vl" / "model.safetensors").stat().st_ino)


def test_system_prompts_tokenize_like_qwen(tmp_path):
    # Qwen-Image drops 34 (t2i) and 64 (edit) leading hidden states: the system prompt lengths.
    tok = tiny.build_tokenizer(tmp_path)
    t2i, edit = (len(tok(p)["input_ids"]) for p in tiny.QWEN_IMAGE_SYSTEM_PROMPTS)
    assert (t2i, edit) == (34, 64)


def test_pipelines_load_through_from_pretrained(tiny_models):
    import torch
    from diffusers import DiffusionPipeline
    from PIL import Image

    t2i = DiffusionPipeline.from_pretrained(tiny_models["t2i"])
    edit = DiffusionPipeline.from_pretrained(tiny_models["edit"])
    assert type(t2i).__name__ == "QwenImagePipeline"
    assert type(edit).__name__ == "QwenImageEditPipeline"
    out = t2i(prompt=["a red circle"], height=32, width=32, num_inference_steps=2, true_cfg_scale=1.0,
              generator=[torch.Generator().manual_seed(0)], output_type="np").images
    assert out.shape == (1, 32, 32, 3)
    out = edit(image=[Image.new("RGB", (32, 32), "red")], prompt=["make it blue"], height=32, width=32,
               num_inference_steps=1, true_cfg_scale=1.0, generator=[torch.Generator().manual_seed(0)],
               output_type="np").images
    assert out.shape == (1, 32, 32, 3)


def test_qwen3vl_runs_in_transformers_with_an_image(tiny_models):
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_models["qwen3vl"])
    model = AutoModelForImageTextToText.from_pretrained(tiny_models["qwen3vl"])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[text], images=[Image.new("RGB", (64, 64), "blue")], return_tensors="pt")
    assert (inputs["input_ids"] == model.config.image_token_id).sum() > 0
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert inputs["input_ids"].shape[1] < out.shape[1] <= inputs["input_ids"].shape[1] + 4
