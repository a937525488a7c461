"""Soak: rounds of SIGKILLs at random moments over a 100-sample gen run and its score run (single
workers, replicas, the whole run), a round on a full disk and a round with a hung worker, then each run
to the end. Nothing may be lost or duplicated, no healthy sample marked failed, no process left running.

    pytest tests/test_soak.py --rounds 10 -s     # longer, by hand; CI runs --rounds 2
"""

import os
import random
import resource
import signal
import subprocess
import sys

import psutil
import pytest
from PIL import Image

from helpers import (ENGINE_PROCESSES, ROOT, cli_env, final_rows, kill_run, rows, rows_on_disk, run_cli, start_cli,
                     wait_until, write_jsonl)

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


def disk_full_round(args: list[str], manifest) -> None:
    """The gen run with a file-size limit (RLIMIT_FSIZE, a real EFBIG on every write past it, as a full
    disk gives ENOSPC) that its journal outgrows: it stops with that line, charging no sample."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    before = rows_on_disk(manifest)
    proc = subprocess.run([sys.executable, "-m", "gen.run", *args, "--verbose"], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (12 * 1024, limit[1])))
    assert proc.returncode == 2 and "File too large" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr.split("File too large")[-1]
    assert rows_on_disk(manifest) >= before and not (rows(manifest)["status"] == "failed").any()


def hang_round(args: list[str], manifest, rng: random.Random) -> None:
    """One worker stopped (SIGSTOP: no exit, no row) mid-run: --item-timeout kills it, its samples are done
    again elsewhere, and the run ends by itself with every sample ok."""
    proc = start_cli("gen.run", *args, "--item-timeout", "15")
    goal = rows_on_disk(manifest) + rng.randint(2, 6)
    wait_until(lambda: rows_on_disk(manifest) >= goal or proc.poll() is not None, timeout=300, interval=0.1)
    if group := workers(proc):
        os.kill(rng.choice(group).pid, signal.SIGSTOP)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "no row within 15 s (--item-timeout): stopped" in out, out[-3000:]


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
    disk_full_round(gen_args, run / "manifest")
    hang_round([*gen_args, "--num-samples", "70"], run / "manifest", rng)  # work left after it for the kill rounds
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
    print(f"soak: a full disk, a hung worker, rounds {rounds}; gen kills {gen_kills}, score kills {score_kills}; "
          f"{N} gen rows and {N} score rows final, 0 lost, 0 duplicated; "
          f"{len(rows(run / 'manifest'))} gen and {len(rows(run / 'scores' / 'manifest'))} score rows written in all")
