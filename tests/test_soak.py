"""Soak: rounds of SIGKILLs at random moments over a 100-sample gen run and its score run (single
workers, replicas, the whole run), then each run to the end. Nothing may be lost or duplicated.

    pytest tests/test_soak.py --rounds 10 -s     # longer, by hand; CI runs --rounds 2
"""

import os
import random
import signal

import psutil
import pytest
from PIL import Image

from helpers import ENGINE_PROCESSES, final_rows, kill_run, rows, rows_on_disk, run_cli, start_cli, wait_until, write_jsonl

N = 100
GEN = ["--model", "tiny:t2i", "--steps", "2", "--height", "32", "--width", "32", "--true-cfg-scale", "1",
       "--batch-size", "2", "--devices", "cpu,cpu", "--progress", "none"]
SCORE = ["--model", "tiny:qwen3vl", "--decoding", "schema", "--max-model-len", "2048", "--max-num-seqs", "8", "--max-tokens", "64",
         "--enforce-eager", "--max-pixels", "16384", "--devices", "cpu", "--window", "8", "--progress", "none"]


def workers(proc) -> list[psutil.Process]:
    """A run's workers: its children that lead their own process group."""
    try:
        return [c for c in psutil.Process(proc.pid).children() if os.getpgid(c.pid) == c.pid]
    except (psutil.NoSuchProcess, ProcessLookupError):
        return []


def kill_rounds(module: str, args: list[str], manifest, rounds: int, rng: random.Random,
                env: dict[str, str] | None = None) -> dict[str, int]:
    """Each round: start the command, let it write a random number of rows, then SIGKILL one worker
    (with its engine; always in the first round, by chance after), let it write more, then SIGKILL
    the whole run."""
    kills = {"worker": 0, "run": 0}
    for round_ in range(rounds):
        proc = start_cli(module, *args, env=env)
        for target in ("worker", "run"):
            goal = rows_on_disk(manifest) + rng.randint(3, 12)
            wait_until(lambda: rows_on_disk(manifest) >= goal or proc.poll() is not None, timeout=300, interval=0.1)
            if proc.poll() is not None:
                break
            if target == "run":
                kill_run(proc)
            elif (round_ == 0 or rng.random() < 0.5) and (group := workers(proc)):
                os.killpg(rng.choice(group).pid, signal.SIGKILL)
            else:
                continue
            kills[target] += 1
        proc.kill()
        proc.communicate()
    return kills


def assert_whole(manifest, n: int) -> None:
    """One final row per sample, all ok; no (key, attempt) twice; no temporary file left."""
    frame = rows(manifest)
    assert not frame.duplicated(["key", "attempt"]).any()
    final = frame.sort_values("attempt").drop_duplicates("key", keep="last")
    assert len(final) == n and (final["status"] == "ok").all(), final["error"].dropna().tolist()[:3]
    assert not [p for p in manifest.iterdir() if p.name.startswith(".")]


@pytest.mark.long
def test_random_kills_lose_and_duplicate_nothing(tmp_path, tiny_models, request):
    rounds = request.config.getoption("--rounds")
    rng = random.Random(rounds)
    src = write_jsonl(tmp_path / "p.jsonl", [{"id": f"s{i:03d}", "prompt": f"a shape number {i}",
                                              "category": f"c{i % 4}"} for i in range(N)])
    run = tmp_path / "run"
    gen_args = ["--input", str(src), "--output-dir", str(run), *GEN]
    gen_kills = kill_rounds("gen.run", gen_args, run / "manifest", rounds, rng)
    run_cli("gen.run", *gen_args)
    assert_whole(run / "manifest", N)
    for path in final_rows(run)["image_path"]:
        with Image.open(run / path) as image:
            image.load()
    assert not list(run.rglob(".*.tmp"))
    score_args = ["--input", str(run), *SCORE]
    # killed with vLLM's engine-core and worker processes under the replica, as on a GPU; finished
    # with the CPU's in-process engine
    score_kills = kill_rounds("score.run", score_args, run / "scores" / "manifest", max(1, rounds // 2), rng,
                              env=ENGINE_PROCESSES)
    run_cli("score.run", *score_args)
    assert_whole(run / "scores" / "manifest", N)
    print(f"soak: rounds {rounds}; gen kills {gen_kills}, score kills {score_kills}; "
          f"{N} gen rows and {N} score rows final, 0 lost, 0 duplicated; "
          f"{len(rows(run / 'manifest'))} gen and {len(rows(run / 'scores' / 'manifest'))} score rows written in all")
