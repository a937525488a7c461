"""score.run end to end: the tiny Qwen3-VL in the real vLLM CPU engine, in replica processes."""

import dataclasses
import json
import math

import pyarrow.parquet as pq
import pytest

from data.manifest import SCORE_SCHEMA
from helpers import kill_run, rows, rows_on_disk, run_cli, shape_image, start_cli, wait_until, write_jsonl
from score.config import ScoreConfig
from score.run import placement, replica_config

VLLM = ["--model", "tiny:qwen3vl", "--decoding", "schema", "--max-model-len", "2048", "--max-num-seqs", "8", "--max-tokens", "256",
        "--enforce-eager", "--max-pixels", "16384", "--progress", "none"]


def score(*args, check=True):
    return run_cli("score.run", *VLLM, *args, check=check)


def test_edit_scores_on_two_replicas(edit_pairs, tmp_path, tiny_models):
    out = tmp_path / "scores"
    # two replicas sharing one device: loaded one after the other, then scoring side by side
    proc = score("--input", str(edit_pairs), "--output-dir", str(out), "--devices", "cpu", "--replicas-per-gpu", "2",
                 "--print-samples")
    frame = rows(out / "manifest")
    assert len(frame) == 16 and (frame["status"] == "ok").all(), frame["error"].tolist()
    assert "to run on cpu, cpu" in proc.stderr and set(frame["device"]) == {"cpu"}
    assert set(frame["task"]) == {"edit"} and set(frame["template"]) == {"viescore-edit"}
    for row in frame.itertuples():
        answers = {q: json.loads(text, strict=False) for q, text in json.loads(row.raw_response).items()}
        sc, pq_ = min(answers["sc"]["score"]), min(answers["pq"]["score"])
        assert all(len(a["score"]) == 2 and all(0 <= v <= 10 for v in a["score"]) for a in answers.values())
        assert (row.semantics, row.quality) == (sc, pq_)
        assert math.isclose(row.overall, math.sqrt(sc * pq_))
        assert row.prompt_tokens > 0 and row.output_tokens > 0
        # the seeds' line: index right-aligned in 4, the overall score with 2 decimals, the reasoning
        reasoning = " ".join(row.reasoning.split())
        assert f"[Sample {row.index:>4}] Score: {row.overall:.2f} | Response: {reasoning}" in proc.stdout
    assert proc.stdout.count("[Sample ") == 16
    for category in ("physical", "environment", "social", "causal", "referential"):
        assert category in proc.stdout  # per-category summary


def test_placement_and_the_memory_share_of_replicas():
    assert placement(ScoreConfig(devices="cpu", replicas=2)).devices == ["cpu", "cpu"]
    shared = ScoreConfig(devices="cuda:0,cuda:1+2", replicas_per_gpu=2, gpu_memory_utilization=0.9)
    assert placement(shared).devices == ["cuda:0", "cuda:0", "cuda:1+2", "cuda:1+2"]
    assert replica_config(shared).gpu_memory_utilization == pytest.approx(0.45)
    assert replica_config(ScoreConfig()).gpu_memory_utilization == pytest.approx(0.9)
    on_ray = placement(ScoreConfig(engine="ray", tp=2, replicas=3))
    assert on_ray.devices is None and (on_ray.replicas, on_ray.gpus_per_replica) == (3, 2)  # Ray's cluster decides
    with pytest.raises(ValueError, match="--replicas-per-gpu takes a number above 0"):
        dataclasses.replace(shared, replicas_per_gpu=0)  # refused as the flag is read
    with pytest.raises(ValueError, match="--replicas-per-gpu"):
        placement(dataclasses.replace(shared, engine="ray"))


def test_caption_image_folder_and_layout_with_txt(tmp_path, tiny_models):
    folder = tmp_path / "shapes"
    for i in range(3):
        shape_image(folder / f"shape{i}.png", (60 * i, 120, 200))
    layout = tmp_path / "design"
    (layout / "jsons").mkdir(parents=True)
    (layout / "json_detail").mkdir()
    elements = [{"id": "bg", "type": "ShapeElement"}, {"id": "title", "type": "TextElement"},
                {"id": "photo", "type": "ImageElement"}, {"id": "logo", "type": "SvgElement"}]
    (layout / "jsons" / "doc1.json").write_text(json.dumps({"elements": elements}))
    (layout / "json_detail" / "doc1.json").write_text(json.dumps({"logo": {"image": "crops/logo.png"}}))
    crops = tmp_path / "crops"  # as in the seed's script, the element images live outside the layout folder
    shape_image(crops / "images" / "doc1" / "bg.png", (10, 10, 10))
    shape_image(crops / "crops" / "logo.png", (200, 10, 10), shape="square")
    score("--task", "caption", "--input", str(folder), "--output-dir", str(tmp_path / "cap1"), "--write-txt",
          "--devices", "cpu")
    score("--prompt", "Describe the shape in at most 30 words.", "--input", str(layout), "--image-root", str(crops),
          "--output-dir", str(tmp_path / "cap2"), "--write-txt", "--devices", "cpu")  # --task auto: a caption
    one, two = rows(tmp_path / "cap1" / "manifest"), rows(tmp_path / "cap2" / "manifest")
    assert sorted(one["key"]) == ["shape0", "shape1", "shape2"] and (one["status"] == "ok").all()
    assert sorted(two["sample_id"]) == ["doc1/bg", "doc1/logo"]  # text and image elements skipped
    assert set(two["task"]) == {"caption"} and (two["status"] == "ok").all(), two["error"].tolist()
    # taken away as an imagefolder with captions, which load_dataset("imagefolder") reads back
    run_cli("score.report", str(tmp_path / "cap1"), "--out", str(tmp_path / "r.html"),
            "--export-imagefolder", str(tmp_path / "train"))
    import datasets

    train = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "train"), split="train")
    assert sorted(train["text"]) == sorted(one["caption"]) and train[0]["image"].size == (64, 64)
    for frame in (one, two):
        for row in frame.itertuples():
            assert row.caption and row.caption == row.caption.strip()
            txt = row.image_path.rsplit(".", 1)[0] + ".txt"
            assert open(txt).read() == row.caption + "\n"


def test_killed_scoring_run_resumes_with_one_row_per_sample(tmp_path, tiny_models):
    images = [shape_image(tmp_path / "img" / f"{i:02d}.png", (5 * i, 100, 100)) for i in range(12)]
    src = write_jsonl(tmp_path / "in.jsonl", [{"image": str(p.relative_to(tmp_path)), "prompt": "a circle"}
                                              for p in images])
    out = tmp_path / "scores"
    args = [*VLLM, "--input", str(src), "--output-dir", str(out), "--devices", "cpu", "--max-num-seqs", "2",
            "--window", "2"]
    proc = start_cli("score.run", *args)

    wait_until(lambda: rows_on_disk(out / "manifest") >= 3, timeout=300, interval=0.02)
    kill_run(proc)
    partial = rows_on_disk(out / "manifest")
    assert 3 <= partial < 12, "the kill should land part-way"
    rerun = run_cli("score.run", *args)
    # every journaled row was recovered: the rerun scored exactly the others
    assert f"{partial} already done, {12 - partial} to run" in rerun.stderr
    frame = rows(out / "manifest")
    assert len(frame) == 12 and frame["key"].is_unique and (frame["status"] == "ok").all()
    assert not list((out / "manifest").glob(".*"))  # no journal or temporary shard left


def test_transformers_backend_gives_rows_of_the_same_schema(edit_pairs, tmp_path, tiny_models):
    out = tmp_path / "hf"
    run_cli("score.run", "--backend", "transformers", "--model", "tiny:qwen3vl", "--input", str(edit_pairs),
            "--output-dir", str(out), "--num-samples", "4", "--max-tokens", "256", "--max-pixels", "16384",
            "--devices", "cpu", "--progress", "none")
    table = pq.read_table(next((out / "manifest").glob("*.parquet")))
    assert table.schema.equals(SCORE_SCHEMA)
    frame = table.to_pandas()
    assert len(frame) == 4 and (frame["status"] == "ok").all(), frame["error"].tolist()
    assert frame["overall"].between(0, 10).all() and (frame["output_tokens"] > 0).all()


def test_custom_template_from_yaml(tmp_path, tiny_models):
    template = tmp_path / "tmpl.yaml"
    template.write_text(
        "name: colorfulness\nversion: '3'\nsystem: You rate images.\noverall: colorfulness\n"
        "questions:\n"
        "  - name: color\n    text: 'How colorful is it? Prompt: {prompt}'\n    images: [image]\n"
        "    schema:\n      type: object\n      properties:\n"
        "        colorfulness: {type: integer, minimum: 1, maximum: 5}\n"
        "      required: [colorfulness]\n      additionalProperties: false\n"
    )
    src = write_jsonl(tmp_path / "in.jsonl", [{"image": shape_image(tmp_path / f"{i}.png", (90 * i, 0, 0)).name,
                                               "prompt": "red"} for i in range(3)])
    score("--task", "custom", "--template-file", str(template), "--input", str(src),
          "--output-dir", str(tmp_path / "s"), "--devices", "cpu")
    frame = rows(tmp_path / "s" / "manifest")
    assert (frame["status"] == "ok").all() and set(frame["template_version"]) == {"3"}
    assert frame["overall"].between(1, 5).all()
    assert all(json.loads(s) == {"colorfulness": o} for s, o in zip(frame["sub_scores"], frame["overall"]))


def test_two_stage_edit_benchmark_from_one_config(tmp_path, tiny_models):
    gen_yaml = tmp_path / "gen.yaml"
    gen_yaml.write_text(
        "task: edit\nmodel: tiny:edit\ninput: data/samples/edit/tasks.jsonl\nnum_samples: 5\n"
        f"output_dir: {tmp_path / 'run'}\nsteps: 1\nheight: 32\nwidth: 32\ntrue_cfg_scale: 1.0\nprogress: none\n"
    )
    proc = score("--gen-config", str(gen_yaml), "--devices", "cpu")
    frame = rows(tmp_path / "run" / "scores" / "manifest")
    assert len(frame) == 5 and (frame["status"] == "ok").all() and set(frame["task"]) == {"edit"}
    assert frame["source_image"].str.endswith(".png").all() and frame["image_path"].str.contains("_seed").all()
    for category in ("physical", "environment", "social", "causal", "referential"):
        assert category in proc.stdout
