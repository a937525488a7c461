"""--backend openai against real HTTP servers on 127.0.0.1: a scripted chat-completions server
(tests/score/chat_server.py) for answers and faults, and `vllm serve` of the scripted tiny judge for
the same rows as the replicas we load."""

import base64
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from helpers import ROOT, cli_env, run_cli, shape_image, write_jsonl

KEY = "sk-test-0123456789-secret"
MODEL = "judge-x"
TAGS = ["[fenced]", "[single]", "[mend]", "[429]", "[500]", "[hang]", "plain"]


def _start(command: list[str], ready, timeout: float, log: Path, env: dict | None = None) -> subprocess.Popen:
    """A server process, its output in `log`; returns once `ready()` holds."""
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=cli_env(env), stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.5)
    if proc.poll() is not None or time.time() >= deadline:
        proc.kill()
        raise AssertionError(f"{command[2]} did not start: {log.read_text()[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory):
    log = tmp_path_factory.mktemp("chat") / "requests.jsonl"
    proc = subprocess.Popen([sys.executable, "tests/score/chat_server.py", "--model", MODEL, "--key", KEY,
                             "--log", str(log)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    yield f"http://127.0.0.1:{port}/v1", log
    proc.kill()
    proc.wait()


def _pairs(folder: Path, tags: list[str]) -> Path:
    records = []
    for i, tag in enumerate(tags):
        src = shape_image(folder / f"src{i}.png", (200, 20 * i, 20), size=96)
        out = shape_image(folder / f"out{i}.png", (20, 20 * i, 200), size=64, shape="square")
        records.append({"id": f"p{i}", "source_image": src.name, "image_path": out.name,
                        "instruction": f"{tag} make the shape blue", "category": "c"})
    return write_jsonl(folder / "pairs.jsonl", records)


def _api(base: str, *args: str, key: str = KEY, check: bool = True) -> subprocess.CompletedProcess:
    return run_cli("score.run", "--backend", "openai", "--api-base", base, "--model", MODEL, "--api-key-env",
                   "JUDGE_KEY", "--progress", "none", *args, env={"JUDGE_KEY": key}, check=check, timeout=300)


def test_scores_through_a_chat_completions_api(chat_server, tmp_path):
    base, log = chat_server
    out = tmp_path / "scores"
    proc = _api(base, "--input", str(_pairs(tmp_path, TAGS)), "--output-dir", str(out), "--request-timeout", "1.5",
                "--api-retries", "1", "--concurrency", "4", "--price-in", "2", "--price-out", "8")
    rows = pd.read_parquet(out / "manifest").set_index("key")
    tag = {f"p{i}": t for i, t in enumerate(TAGS)}
    by_tag = {tag[k]: r for k, r in rows.iterrows()}
    for ok in ("[fenced]", "plain", "[429]"):
        assert by_tag[ok]["status"] == "ok" and by_tag[ok]["asks"] == 1, by_tag[ok]["error"]
        assert by_tag[ok]["semantics"] == 7.5 and by_tag[ok]["decoding"] == "free"
    mended = by_tag["[mend]"]
    assert mended["status"] == "ok" and mended["asks"] == 2  # the protocol's re-ask, then a readable answer
    single = by_tag["[single]"]  # VIEScore's parser cannot read single quotes: asked again, then failed
    assert single["status"] == "failed" and single["asks"] == 2 and not single["upstream_guess"]
    assert by_tag["[500]"]["error"].startswith("HTTP 500 after 1 retries: The server had an error")
    assert by_tag["[hang]"]["error"].startswith("no answer within 1.5 s (1 retries")
    assert (rows.loc[rows["status"] == "ok", "prompt_tokens"] > 100).all()  # the API's usage, per row
    assert (rows.loc[rows["status"] == "ok", "output_tokens"] > 0).all()
    total_in, total_out = int(rows["prompt_tokens"].fillna(0).sum()), int(rows["output_tokens"].fillna(0).sum())
    cost = total_in / 1e6 * 2 + total_out / 1e6 * 8
    assert f"tokens: {total_in:,} in, {total_out:,} out; cost {cost:,.4f}" in proc.stdout
    requests = [json.loads(line) for line in log.read_text().splitlines()]
    sc = [r for r in requests if "Editing instruction" in json.dumps(r["body"])]
    # 429: answered again after the server's Retry-After (1 s); 500: once more, then given up on
    late = [r["at"] for r in sc if "[429]" in json.dumps(r["body"])]
    assert len(late) == 2 and late[1] - late[0] >= 0.9
    assert sum("[500]" in json.dumps(r["body"]) for r in sc) == 2
    # the body as GEdit-Bench's GPT path sends it: one user turn, the text then the images, max_tokens 1400
    body = next(r["body"] for r in sc if "[fenced]" in json.dumps(r["body"]))
    assert body["model"] == MODEL and body["max_tokens"] == 1400 and "temperature" not in body
    (message,) = body["messages"]
    assert message["role"] == "user" and [p["type"] for p in message["content"]] == ["text", "image_url", "image_url"]
    images = [Image.open(io.BytesIO(base64.b64decode(p["image_url"]["url"].split("base64,")[1])))
              for p in message["content"][1:]]
    assert [i.format for i in images] == ["PNG", "PNG"] and images[1].size == images[0].size == (96, 96)
    # the key went to the server, and nowhere else
    assert all(r["authorization"] == f"Bearer {KEY}" for r in requests)
    written = [p.read_bytes() for p in out.rglob("*") if p.is_file()]
    assert not any(KEY.encode() in data for data in written) and KEY not in proc.stdout + proc.stderr
    assert json.loads((out / "score.json").read_text())["identity"]["api_host"] == base.split("/")[2]


def test_a_rejected_key_or_an_unknown_model_stops_the_run_at_once(chat_server, tmp_path):
    base, _ = chat_server
    pairs = _pairs(tmp_path, ["plain", "plain"])
    proc = _api(base, "--input", str(pairs), "--output-dir", str(tmp_path / "a"), key="sk-wrong", check=False)
    assert proc.returncode == 2 and "refused the API key from $JUDGE_KEY (HTTP 401)" in proc.stderr
    assert "Traceback" not in proc.stderr and "sk-wrong" not in proc.stderr and not (tmp_path / "a" / "manifest").exists()
    proc = _api(base, "--input", str(pairs), "--output-dir", str(tmp_path / "b"), "--model", "other", check=False)
    assert proc.returncode == 2 and f"does not serve 'other'; it serves: {MODEL}" in proc.stderr
    # a key revoked mid-run: the run ends with that line; no sample is charged with it
    pairs = _pairs(tmp_path / "c", ["plain", "[401]", "plain"])
    proc = _api(base, "--input", str(pairs), "--output-dir", str(tmp_path / "c" / "s"), "--concurrency", "1",
                check=False)
    assert proc.returncode == 2 and "refused the API key (HTTP 401)" in proc.stderr and "Traceback" not in proc.stderr
    manifest = tmp_path / "c" / "s" / "manifest"
    rows = pd.read_parquet(manifest) if list(manifest.glob("*.parquet")) else pd.DataFrame(columns=["key", "status"])
    assert "p1" not in set(rows["key"]) and set(rows["status"]) <= {"ok"}


@pytest.fixture(scope="module")
def served_judge(tiny_models, tmp_path_factory):
    """`vllm serve` of the scripted tiny judge on CPU (vLLM's OpenAI-compatible server)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import urllib.request

    def ready() -> bool:
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1).status == 200
        except OSError:
            return False

    proc = _start([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
                   str(tiny_models["qwen3vl-scripted"]), "--served-model-name", MODEL, "--port", str(port),
                   "--max-model-len", "2048", "--enforce-eager", "--dtype", "float32"], ready, timeout=240,
                  log=tmp_path_factory.mktemp("serve") / "vllm-serve.log", env={"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})  # as our CPU replicas
    yield f"http://127.0.0.1:{port}/v1"
    proc.terminate()
    proc.wait(timeout=30)


def test_vllm_serve_gives_the_rows_our_replicas_give(served_judge, edit_pairs, tmp_path, tiny_models):
    local = tmp_path / "local"
    run_cli("score.run", "--input", str(edit_pairs), "--output-dir", str(local), "--model", "tiny:qwen3vl-scripted",
            "--max-model-len", "2048", "--devices", "cpu", "--num-samples", "6", "--progress", "none")
    remote = tmp_path / "remote"
    run_cli("score.run", "--backend", "openai", "--api-base", served_judge, "--model", MODEL, "--input",
            str(edit_pairs), "--output-dir", str(remote), "--num-samples", "6", "--progress", "none")
    columns = ["template", "template_version", "decoding", "status", "semantics", "quality", "overall", "sub_scores",
               "reasoning", "raw_response", "asks"]
    a = pd.read_parquet(local / "manifest").set_index("key").sort_index()
    b = pd.read_parquet(remote / "manifest").set_index("key").sort_index()
    assert len(a) == 6 and (a["status"] == "ok").all(), a["error"].tolist()
    pd.testing.assert_frame_equal(a[columns], b[columns])
    assert set(b["judge_model"]) == {MODEL} and (b["prompt_tokens"] > 0).all()
