"""Shared fixtures: tiny models built once per session, small prompt and edit sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from data import tiny
from helpers import shape_image, write_jsonl


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    return {name: tiny.ensure(name) for name in tiny.MODELS}


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
