"""The tiny Qwen3-VL in the real vLLM engine (CPU build), with images and structured output."""

import json
import re

import pytest
from PIL import Image

from pool.stage import ListFeed
from score.config import ScoreConfig
from score.engine import VLLMStage
from score.templates import TEMPLATES


def _shapes(folder, n: int, task: str = "caption", prompt: str | None = None) -> list[dict]:
    """Samples of n images of different sizes: each sample's prompt length then tells whose image it got."""
    items = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.new("RGB", (32 + 32 * i, 32), (20 * i, 90, 200)).save(path)
        items.append({"key": f"k{i}", "index": i, "sample_id": f"k{i}", "task": task, "prompt": prompt,
                      "image_path": str(path), "attempt": 1})
    return items


def _score(config: ScoreConfig, items: list[dict]) -> list[dict]:
    """Every row a real replica yields for `items`, its engine shut down afterwards."""
    stage = VLLMStage(config)
    stage.load("cpu")
    try:
        return list(stage.process(ListFeed(items)))
    finally:
        stage.close()


@pytest.mark.parametrize("backend", ["guidance", "xgrammar"])
def test_vllm_answers_follow_the_schema(tiny_models, tmp_path, backend):
    config = ScoreConfig(model=str(tiny_models["qwen3vl"]), max_model_len=2048, max_num_seqs=4, decoding="schema",
                         max_tokens=256, enforce_eager=True, window=3, structured_backend=backend)
    rows = _score(config, _shapes(tmp_path, 6, task="t2i", prompt="a shape"))
    assert sorted(r["key"] for r in rows) == [f"k{i}" for i in range(6)]
    for row in rows:
        assert row["status"] == "ok", row["error"]
        answers = {q: json.loads(text, strict=False) for q, text in json.loads(row["raw_response"]).items()}
        assert list(answers["sc"]) == ["score", "reasoning"] and len(answers["sc"]["score"]) == 1
        assert len(answers["pq"]["score"]) == 2 and all(0 <= v <= 10 for a in answers.values() for v in a["score"])
        assert row["semantics"] == answers["sc"]["score"][0] and row["quality"] == min(answers["pq"]["score"])
        assert row["prompt_tokens"] > 2 * 4  # two requests, each with image tokens
        assert row["asks"] == 1 and 0 <= row["overall"] <= 10 and row["decoding"] == "schema"
        for text in json.loads(row["raw_response"]).values():
            assert not re.search(r"\s", re.sub(r'"(?:[^"\\]|\\.)*"', "", text)), text  # no free whitespace
        # the reasoning is capped to close within the answer's tokens (max tokens - 32 characters)
        assert all(len(a["reasoning"]) <= 256 - 32 for a in answers.values())


def test_vllm_asks_again_after_a_bad_answer(tiny_models, tmp_path, monkeypatch):
    """A first answer cut short (a fault the grammar prevents, so it is injected) is asked again
    in the same engine; the second answer scores the sample."""
    import score.engine

    record = score.engine._Running.record

    def cut_first_answers(self, request_id, output):
        record(self, request_id, output)
        if self.prepared.asks == 1:
            name = next(reversed(self.texts))
            self.texts[name] = self.texts[name][:5]

    monkeypatch.setattr(score.engine._Running, "record", cut_first_answers)
    config = ScoreConfig(model=str(tiny_models["qwen3vl"]), max_model_len=2048, max_num_seqs=4, decoding="schema",
                         max_tokens=96, enforce_eager=True, window=3)
    rows = _score(config, _shapes(tmp_path, 4, task="t2i", prompt="a shape"))
    assert [r["status"] for r in rows] == ["ok"] * 4, [r["error"] for r in rows]
    assert {r["asks"] for r in rows} == {2}
    for row in rows:  # the row holds the second answers, complete
        assert all(json.loads(t, strict=False)["score"] for t in json.loads(row["raw_response"]).values())


def test_parallel_rendering_gives_each_sample_its_own_answers(tiny_models, tmp_path):
    # cache off (the default): 4 threads render side by side; cache on: one at a time, in order
    results = {}
    for cache_gb in (0, 1):
        config = ScoreConfig(model=str(tiny_models["qwen3vl"]), task="caption", max_model_len=2048, max_num_seqs=4,
                             max_tokens=48, enforce_eager=True, preprocess_threads=4, mm_processor_cache_gb=cache_gb)
        rows = _score(config, _shapes(tmp_path, 10))
        assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
        results[cache_gb] = {r["key"]: (r["prompt_tokens"], r["raw_response"]) for r in rows}
    assert results[0] == results[1]
    assert len({tokens for tokens, _ in results[0].values()}) == 10  # every image a different length


def test_a_second_judge_architecture_qwen25vl(tiny_models, tmp_path):
    """Qwen2.5-VL (GEdit-Bench's open judge family): patch 14, window attention, its own processor."""
    from score.judge import processor_kwargs

    config = ScoreConfig(model=str(tiny_models["qwen25vl"]), max_model_len=2048, max_num_seqs=4, max_tokens=64,
                         enforce_eager=True, window=3, decoding="schema", max_pixels=16384)
    edit = TEMPLATES["viescore-edit"]
    assert processor_kwargs(config, config.model, edit) == {"size": {"longest_edge": 16384, "shortest_edge": 3136}}
    # a protocol with no pixel flags: the judge's processor keeps its own settings, as the references run it
    assert processor_kwargs(ScoreConfig(model=config.model), config.model, edit) == {}
    caption = TEMPLATES["caption"]  # our own templates: at most 1 MP, said to the processor too
    assert processor_kwargs(ScoreConfig(model=config.model), config.model, caption) == {
        "size": {"longest_edge": 1024 * 1024, "shortest_edge": 1024}}
    other = tmp_path / "other-judge"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llava"}))
    assert processor_kwargs(config, str(other), edit) == {}  # no Qwen pixel range forced on another processor
    items = _shapes(tmp_path, 3, task="edit", prompt="make it red")
    for item in items:
        item["source_image"] = item["image_path"]
    rows = _score(config, items)
    assert [r["status"] for r in rows] == ["ok"] * 3, [r["error"] for r in rows]
    assert all(r["template"] == "viescore-edit" and r["prompt_tokens"] > 20 for r in rows)


def _edits(folder, n: int) -> list[dict]:
    items = _shapes(folder, n, task="edit", prompt="make the sky an orange sunset")
    for item in items:
        item["source_image"] = item["image_path"]
    return items


def test_free_decoding_reads_what_the_judge_wrote(tiny_models, tmp_path):
    """The scripted judge writes prose around a fenced object with a float score, as real judges do; no
    grammar constrains it (sampled at EditScore's 0.7) and EditScore's parser reads it."""
    from data.tiny import SCRIPTED_ANSWER

    config = ScoreConfig(model=str(tiny_models["qwen3vl-scripted"]), protocol="editscore", task="edit", num_pass=2,
                         max_model_len=2048, max_num_seqs=4, enforce_eager=True, window=3)
    rows = _score(config, _edits(tmp_path, 3))
    assert [r["status"] for r in rows] == ["ok"] * 3, [r["error"] for r in rows]
    for row in rows:
        assert json.loads(row["raw_response"]) == {q: SCRIPTED_ANSWER for q in ("sc#0", "pq#0", "sc#1", "pq#1")}
        assert row["decoding"] == "free" and row["asks"] == 1 and row["output_tokens"] == 4 * 2
        assert json.loads(row["sub_scores"]) == {"prompt_following": 3.0, "consistency": 3.2, "perceptual_quality": 3.0}
        assert row["template_version"] == "2-pass2-average_last" and "天空" in row["reasoning"]


def test_a_judge_lora_is_served_by_vllm(tiny_models, tmp_path):
    """--judge-lora: the adapter (PEFT, safetensors) rides on every request; greedy answers change with it."""
    answers = {}
    for lora in (None, str(tiny_models["qwen3vl-lora"])):
        config = ScoreConfig(model=str(tiny_models["qwen3vl"]), decoding="schema", judge_lora=lora, task="edit",
                             max_reasoning_chars=16,
                             max_model_len=2048, max_num_seqs=4, max_tokens=128, enforce_eager=True)
        rows = _score(config, _edits(tmp_path, 2))
        assert [r["status"] for r in rows] == ["ok"] * 2, [r["error"] for r in rows]
        answers[lora] = {r["key"]: r["raw_response"] for r in rows}
    assert answers[None].keys() == answers[lora].keys() and answers[None] != answers[lora]


def test_sampled_judges_run_vllms_v2_runner_on_gpus(tiny_models):
    """v1 loops over seeded requests to sample them; v2 samples them in one kernel, so sampled protocols take v2
    on GPUs, greedy ones keep vLLM's choice, CPU replicas keep v1, and a flag always wins."""
    from score.engine import model_runner
    from score.judge import resolve_template

    def runner(device: str, **flags) -> str:
        config = ScoreConfig(model=str(tiny_models["qwen3vl"]), task="edit", **flags)
        return model_runner(config, device, resolve_template(config, "edit"))

    assert runner("cuda", protocol="editscore") == "v2"  # temperature 0.7, seeds 42 + pass
    assert runner("cuda", protocol="viescore") == "auto"  # greedy
    assert runner("cuda", protocol="viescore", temperature=0.5) == "v2"
    assert runner("cuda", protocol="editscore", model_runner="v1") == "v1"
    assert runner("cpu", protocol="editscore") == "auto"
    with pytest.raises(ValueError, match="needs a GPU"):
        runner("cpu", protocol="editscore", model_runner="v2")
