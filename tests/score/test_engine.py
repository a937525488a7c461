"""The tiny Qwen3-VL in the real vLLM engine (CPU build), with images and structured output."""

import json

from PIL import Image

from score.config import ScoreConfig
from score.engine import VLLMStage
from score.templates import score_schema


class _Feed:
    """The executor's feed, for a stage driven in-process (the pool is tested on its own)."""

    def __init__(self, items):
        self.items = list(items)
        self.exhausted = False

    def take(self, n, block=True):
        taken, self.items = self.items[:n], self.items[n:]
        self.exhausted = not self.items
        return taken


def test_vllm_answers_follow_the_schema(tiny_models, tmp_path):
    images = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (48 + 16 * i, 64), (40 * i, 100, 200)).save(path)
        images.append(str(path))
    config = ScoreConfig(model=str(tiny_models["qwen3vl"]), max_model_len=2048, max_num_seqs=4,
                         max_tokens=256, enforce_eager=True, window=3)
    stage = VLLMStage(config, "cpu")
    items = [{"key": f"k{i}", "index": i, "sample_id": f"k{i}", "task": "t2i", "prompt": "a shape",
              "image_path": p, "attempt": 1} for i, p in enumerate(images)]
    try:
        rows = list(stage.process(_Feed(items)))
    finally:
        stage.close()
    assert sorted(r["key"] for r in rows) == [f"k{i}" for i in range(6)]
    schema = score_schema("prompt_alignment")
    for row in rows:
        assert row["status"] == "ok", row["error"]
        answers = json.loads(row["raw_response"])
        sc = json.loads(answers["sc"], strict=False)
        assert set(sc) == set(schema["properties"]) and 0 <= sc["prompt_alignment"] <= 10
        assert row["prompt_tokens"] > 2 * 4  # two requests, each with image tokens
        assert 0 <= row["overall"] <= 10
