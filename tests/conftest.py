"""Shared fixtures: tiny models built once per session, small prompt and edit sets."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from data import tiny
from data.rundir import file_lock
from helpers import REFERENCE, shape_image, write_jsonl


def pytest_addoption(parser):
    parser.addoption("--rounds", type=int, default=2, help="rounds of random kills in tests/test_soak.py")


def pytest_collection_modifyitems(items):
    """Tests marked `long` start first: under `pytest -n N` (make test) no worker is then left
    running one of them alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def reference() -> Path:
    """The upstream reference files (../shared/reference); a user's clone has none: the test skips."""
    if not REFERENCE.is_dir():
        pytest.skip(f"{REFERENCE} is not here (only CI and developers have ../shared): upstream files not compared")
    return REFERENCE


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    return {name: tiny.ensure(name) for name in tiny.MODELS}


@pytest.fixture
def tiny_transformer(tiny_models):
    """Builds a fresh copy of the tiny Qwen-Image transformer (the same saved weights every time)."""
    from diffusers import QwenImageTransformer2DModel

    def build(device: str = "cpu"):
        return QwenImageTransformer2DModel.from_pretrained(tiny_models["t2i"] / "transformer").to(device).eval()
    return build


@pytest.fixture
def prompts16(tmp_path: Path) -> Path:
    words = ["red", "green", "blue", "yellow"]
    shapes = ["circle", "square", "star", "heart"]
    records = [{"id": f"s{i:02d}", "prompt": f"a {words[i % 4]} {shapes[i // 4]}", "category": shapes[i // 4]}
               for i in range(16)]
    return write_jsonl(tmp_path / "prompts.jsonl", records)


@pytest.fixture
def edit_pairs(tmp_path: Path) -> Path:
    """16 edit samples: a source image, an 'edited' image and an instruction, 5 categories."""
    categories = ["physical", "environment", "social", "causal", "referential"]
    records = []
    for i in range(16):
        src = shape_image(tmp_path / "src" / f"{i:02d}.png", (200, 20 * i, 20))
        out = shape_image(tmp_path / "out" / f"{i:02d}.png", (20, 20 * i, 200), shape="square")
        records.append({"id": f"e{i:02d}", "source_image": str(src.relative_to(tmp_path)),
                        "image_path": str(out.relative_to(tmp_path)), "instruction": f"make shape {i} blue",
                        "category": categories[i % 5]})
    return write_jsonl(tmp_path / "edits.jsonl", records)


@pytest.fixture(scope="session")
def scored_run(tmp_path_factory, tiny_models) -> Path:
    """A small demo-like run: 9 prompts in 3 categories generated and scored with the tiny models.
    Built once per test session: under pytest-xdist its workers share it (the first one builds it,
    under a lock; the others wait and read it)."""
    from helpers import TINY_GEN, TINY_SCORE, run_cli

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "scored"
    run, ready = root / "run", root / "ready"
    root.mkdir(exist_ok=True)
    with file_lock(root / "lock"):
        if not ready.exists():
            categories = ["shapes", "objects", "scenes"]
            src = write_jsonl(root / "prompts.jsonl", [{"id": f"q{i}", "prompt": f"a {c} number {i}", "category": c}
                                                       for i, c in enumerate(categories * 3)])
            shutil.rmtree(run, ignore_errors=True)  # a build that failed in another worker
            run_cli("gen.run", "--input", str(src), "--output-dir", str(run), *TINY_GEN, "--devices", "cpu")
            run_cli("score.run", "--input", str(run), *TINY_SCORE)
            ready.touch()
    return run
