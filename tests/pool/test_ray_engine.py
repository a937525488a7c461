"""`--engine ray`: the demo through a Ray Data actor pool on a private local Ray instance (CPU),
against the local engine: the same rows, and for generation the same image bytes."""

from helpers import rows, run_cli, write_jsonl

GEN = ["--model", "tiny:t2i", "--steps", "2", "--height", "32", "--width", "32", "--true-cfg-scale", "1",
       "--devices", "cpu,cpu", "--progress", "none"]
SCORE = ["--model", "tiny:qwen3vl", "--max-model-len", "2048", "--max-num-seqs", "8", "--max-tokens", "256",
         "--enforce-eager", "--max-pixels", "16384", "--devices", "cpu", "--progress", "none"]
GEN_COLUMNS = ["key", "sample_id", "index", "category", "prompt", "status", "image_path", "seed", "steps", "attempt"]
SCORE_COLUMNS = ["key", "sample_id", "index", "category", "status", "image_path", "template", "prompt_tokens"]


def test_ray_engine_gives_the_local_engines_rows_and_images(tmp_path, tiny_models):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"q{i}", "prompt": f"a shape number {i}", "category": c}
                                              for i, c in enumerate(["shapes", "objects", "scenes"] * 2)])
    runs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        run_cli("gen.run", "--input", str(src), "--output-dir", str(out), *GEN, "--engine", engine,
                "--ray-address", "local")
        run_cli("score.run", "--input", str(out), *SCORE, "--engine", engine, "--ray-address", "local")
        runs[engine] = out
    local, ray = (rows(runs[e] / "manifest").sort_values("key").reset_index(drop=True) for e in ("local", "ray"))
    assert len(local) == 6 and (local["status"] == "ok").all()
    assert local[GEN_COLUMNS].equals(ray[GEN_COLUMNS])
    assert ray["device"].equals(local["device"]) and set(ray["worker"]) <= {0, 1}  # as the local engine means them
    for path in local["image_path"]:
        assert (runs["local"] / path).read_bytes() == (runs["ray"] / path).read_bytes()
    local, ray = (rows(runs[e] / "scores" / "manifest").sort_values("key").reset_index(drop=True)
                  for e in ("local", "ray"))
    assert len(local) == 6 and (local["status"] == "ok").all()
    assert local[SCORE_COLUMNS].drop(columns="image_path").equals(ray[SCORE_COLUMNS].drop(columns="image_path"))
    assert ray["overall"].notna().all()
