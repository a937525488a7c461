"""`score.run --follow`: scoring a generation run while it is still writing, and surviving a
SIGKILL of either side. Real gen and score processes, the tiny models, the real vLLM engine."""

import re
from pathlib import Path

import pytest

from data.manifest import ManifestReader, latest_of
from data.rundir import is_complete
from helpers import final_rows, kill_run, pause_run, rows, rows_on_disk, start_cli, wait_until, write_jsonl

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


def test_the_generation_beside_a_scorer_dies_with_it(tmp_path, tiny_models):
    """`--gen-config --gen-devices`: generation runs as our child process; a SIGKILL of the scorer alone (no
    chance to clean up) must not leave it running."""
    import os
    import signal

    import psutil

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": f"p{i}", "prompt": f"a red circle {i}"} for i in range(500)])
    gen_yaml = tmp_path / "gen.yaml"  # minutes of work: still running when the scorer is killed
    gen_yaml.write_text(f"input: {prompts}\noutput_dir: {tmp_path / 'run'}\nmodel: tiny:t2i\nsteps: 8\n"
                        "height: 64\nwidth: 64\ntrue_cfg_scale: 1.0\nprogress: none\n")
    score = start_cli("score.run", "--gen-config", str(gen_yaml), "--gen-devices", "cpu",
                      *[a for a in SCORE if a != "--follow"])
    parent = psutil.Process(score.pid)

    def gen_family() -> list:
        return [p for p in parent.children(recursive=True) if "gen.run" in " ".join(p.cmdline())]

    wait_until(lambda: bool(gen_family()) and rows_on_disk(tmp_path / "run" / "manifest") >= 1, timeout=300)
    family = gen_family() + [c for p in gen_family() for c in p.children(recursive=True)]
    os.kill(score.pid, signal.SIGKILL)  # the scorer only: its children are not signalled by us
    score.wait()
    gone, alive = psutil.wait_procs(family, timeout=15)
    assert not alive, [p.cmdline() for p in alive]
    assert rows_on_disk(tmp_path / "run" / "manifest") < 500  # it was stopped, not finished
