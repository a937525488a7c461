"""`--engine ray`: the demo through a Ray Data actor pool on a private local Ray instance (CPU),
against the local engine (the session's shared scored run, same inputs and settings): the same
rows, and for generation the same image bytes."""

import pytest

from helpers import TINY_GEN, TINY_SCORE, rows, run_cli

GEN_COLUMNS = ["key", "sample_id", "index", "category", "prompt", "status", "image_path", "seed", "steps", "attempt"]
SCORE_COLUMNS = ["key", "sample_id", "index", "category", "status", "image_path", "template", "prompt_tokens"]


@pytest.mark.long
def test_ray_engine_gives_the_local_engines_rows_and_images(tmp_path, scored_run):
    out = tmp_path / "ray"
    ray_flags = ["--engine", "ray", "--ray-address", "local"]
    run_cli("gen.run", "--input", str(scored_run.parent / "prompts.jsonl"), "--output-dir", str(out), *TINY_GEN,
            "--devices", "cpu,cpu", *ray_flags)  # two actors; the local run had one worker
    run_cli("score.run", "--input", str(out), *TINY_SCORE, *ray_flags)
    local, ray = (rows(run / "manifest").sort_values("key").reset_index(drop=True) for run in (scored_run, out))
    assert len(local) == 9 and (local["status"] == "ok").all()
    assert local[GEN_COLUMNS].equals(ray[GEN_COLUMNS])
    assert set(ray["device"]) == {"cpu"} and set(ray["worker"]) <= {0, 1}  # as the local engine means them
    for path in local["image_path"]:
        assert (scored_run / path).read_bytes() == (out / path).read_bytes()
    local, ray = (rows(run / "scores" / "manifest").sort_values("key").reset_index(drop=True)
                  for run in (scored_run, out))
    assert len(local) == 9 and (local["status"] == "ok").all()
    assert local[SCORE_COLUMNS].drop(columns="image_path").equals(ray[SCORE_COLUMNS].drop(columns="image_path"))
    assert ray["overall"].notna().all()
