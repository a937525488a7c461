"""`score.run --follow`: scoring a generation run while it is still writing, and surviving a
SIGKILL of either side. Real gen and score processes, the tiny models, the real vLLM engine."""

import re
from pathlib import Path

import pytest

from data.manifest import ManifestReader, latest_of
from data.rundir import is_complete
from helpers import final_rows, kill_run, pause_run, rows, rows_on_disk, start_cli, wait_until

GEN = ["--model", "tiny:t2i", "--steps", "4", "--height", "64", "--width", "64", "--true-cfg-scale", "1",
       "--batch-size", "1", "--devices", "cpu", "--progress", "none"]
SCORE = ["--model", "tiny:qwen3vl", "--decoding", "schema", "--max-model-len", "2048", "--max-num-seqs", "8", "--max-tokens", "128",
         "--enforce-eager", "--max-pixels", "16384", "--devices", "cpu", "--progress", "none",
         "--follow", "--task", "t2i"]


def start_score(run: Path):
    proc = start_cli("score.run", "--input", str(run), *SCORE)
    # a replica opens its journal once its engine has loaded: from then on it scores as rows land
    wait_until(lambda: any((run / "scores" / "manifest").glob(".journal-*-worker0.jsonl")), timeout=300)
    return proc


def assert_one_score_per_gen_row(run: Path, n: int) -> None:
    gen = final_rows(run)
    assert len(gen) == n and (gen["status"] == "ok").all()
    scores = rows(run / "scores" / "manifest")
    assert sorted(scores["key"]) == sorted(gen.index)  # exactly one row each: none lost, none twice
    assert (scores["status"] == "ok").all() and scores["overall"].notna().all()
    assert not [p for p in (run / "scores" / "manifest").iterdir() if p.name.startswith(".")]


@pytest.mark.long
def test_follow_scores_a_run_as_it_is_generated_and_survives_sigkill_of_either_side(prompts16, tmp_path,
                                                                                    tiny_models):
    run = tmp_path / "run"
    score = start_score(run)  # before the gen run exists: it waits for it
    gen = start_cli("gen.run", "--input", str(prompts16), "--output-dir", str(run), *GEN)
    wait_until(lambda: rows_on_disk(run / "manifest") >= 6, timeout=300, interval=0.02)
    pause_run(gen)  # held mid-way, however fast it runs: the scorer must take what has landed
    wait_until(lambda: rows_on_disk(run / "scores" / "manifest") >= 2, timeout=300)
    scored_early, generated = rows_on_disk(run / "scores" / "manifest"), rows_on_disk(run / "manifest")
    assert scored_early >= 2 and generated < 16 and not is_complete(run)  # the stages overlapped
    kill_run(score)
    kill_run(gen)
    done_before = latest_of(ManifestReader(run / "manifest").rows())
    assert 6 <= len(done_before) < 16  # killed mid-way
    score = start_score(run)  # the follower comes back first: the gen run is unfinished, so it waits
    gen = start_cli("gen.run", "--input", str(prompts16), "--output-dir", str(run), *GEN)
    gen_out, _ = gen.communicate(timeout=300)
    score_out, _ = score.communicate(timeout=300)
    assert gen.returncode == 0 and score.returncode == 0, gen_out + score_out
    skipped = int(re.search(r"gen: 16 samples, (\d+) already done", gen_out).group(1))
    assert skipped >= len(done_before)  # the rerun kept every row the killed run had written
    assert_one_score_per_gen_row(run, 16)
    assert "following it as it is generated" in score_out
