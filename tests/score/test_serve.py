"""The judge as a reward service (score/serve.py): the real server process, real CPU replicas of the tiny
judge, real HTTP on the loopback. One server is shared by the module; the SIGTERM test ends it, last."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image

from data.manifest import ManifestReader
from helpers import ROOT, TINY_SCORE, cli_env, final_rows, wait_until

KEY = "test-token"
AUTH = {"Authorization": f"Bearer {KEY}"}
SERVE = [a if a != "cpu" else "cpu,cpu" for a in TINY_SCORE]  # the shared scored run's judge, on two replicas


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `python -m score.serve` process, its output in a file."""

    def __init__(self, tmp: Path, *flags: str):
        self.port, self.log = free_port(), tmp / f"serve-{time.time_ns()}.log"
        self.url = f"http://127.0.0.1:{self.port}"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "score.serve", *flags, "--port", str(self.port)],
                                         cwd=ROOT, env=cli_env(), stdout=out, stderr=subprocess.STDOUT)
        wait_until(lambda: self.ready() or self.proc.poll() is not None, timeout=300, interval=0.5)
        assert self.ready(), f"the server did not become ready:\n{self.log.read_text()[-4000:]}"

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def workers(self) -> list[psutil.Process]:
        return [p for p in psutil.Process(self.proc.pid).children() if "python" in p.name().lower()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models):
    tmp = tmp_path_factory.mktemp("serve")
    server = Server(tmp, *SERVE, "--api-key", KEY, "--max-pending", "256", "--log-dir", str(tmp / "log"))
    server.log_dir = tmp / "log"
    yield server
    server.stop()


def png(color: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def distinct_items(prefix: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}{i}", "prompt": f"a shape number {i}", "image": b64(png((i % 256, (7 * i) % 256, 90)))}
            for i in range(n)]


def post(server: Server, items: list[dict], **kw) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/score", json={"items": items}, headers=AUTH, timeout=300, **kw)


def test_rows_are_score_runs_rows_for_the_same_items(server, scored_run):
    """The shared run's images sent as base64, in one request and as single-item requests: the same answers
    as `score.run` wrote for them (the same judge settings), under the items' own ids."""
    expected = final_rows(scored_run / "scores")
    items = [{"id": key, "prompt": row["prompt"], "image": b64(Path(row["image_path"]).read_bytes())}
             for key, row in expected.iterrows()]
    batch = post(server, items)
    assert batch.status_code == 200, batch.text
    singles = [post(server, [item]).json()["rows"][0] for item in items]
    for rows in (batch.json()["rows"], singles):
        assert [r["key"] for r in rows] == list(expected.index)
        for row in rows:
            want = expected.loc[row["key"]]
            assert row["status"] == "ok" and row["task"] == "t2i"
            assert json.loads(row["raw_response"]) == json.loads(want["raw_response"])  # answers by question
            assert row["overall"] == pytest.approx(want["overall"])
            assert json.loads(row["sub_scores"]) == json.loads(want["sub_scores"])


def test_200_concurrent_single_item_requests_are_all_answered_once(server):
    items = distinct_items("c", 200)

    async def send_all():
        async with httpx.AsyncClient(timeout=300) as client:
            return await asyncio.gather(*(client.post(f"{server.url}/v1/score", json={"items": [item]}, headers=AUTH)
                                          for item in items))
    answers = asyncio.run(send_all())
    assert [a.status_code for a in answers] == [200] * 200
    rows = [a.json()["rows"][0] for a in answers]
    assert [r["key"] for r in rows] == [i["id"] for i in items]
    assert all(r["status"] == "ok" for r in rows)
    assert {r["worker"] for r in rows} == {0, 1}, "both replicas take single-item requests"
    metrics = httpx.get(f"{server.url}/metrics", headers=AUTH).text
    assert 'genscore_rows_total{status="ok"}' in metrics and "genscore_request_latency_seconds_bucket" in metrics
    logged = [r for r in ManifestReader(server.log_dir / "manifest").rows() if r["sample_id"].startswith("c")]
    assert sorted(r["sample_id"] for r in logged) == sorted(i["id"] for i in items), "the log: each item once"


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels (a decompression bomb's header) and holds none."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("body, reason", [
    ({"items": [{"id": "x", "prompt": "p"}]}, "no image"),
    ({"items": [{"id": "x", "prompt": "p", "image": b64(b"\x89PNG\r\n\x1a\nnot a png at all")}]}, "cannot be read"),
    ({"items": [{"id": "x", "prompt": "p", "image": b64(huge_png_header(12000, 10000))}]}, "more pixels than"),
    ({"items": [{"id": "x", "prompt": "p", "image": b64(huge_png_header(20000, 20000))}]}, "decompression bomb"),
    ({"items": [{"id": "x", "prompt": "p", "image": "/etc/passwd"}]}, "reads no paths"),
    ({"items": [{"id": "x", "prompt": "p", "image": "data:image/png,raw"}]}, "base64"),
    ({"items": []}, "no items"),
    ({"things": 1}, "the body is"),
])
def test_bad_input_gets_400_with_its_reason_and_spares_the_others(server, body, reason):
    async def both():
        async with httpx.AsyncClient(timeout=300) as client:
            good = client.post(f"{server.url}/v1/score", json={"items": distinct_items(f"g{len(reason)}-", 2)},
                               headers=AUTH)
            bad = client.post(f"{server.url}/v1/score", json=body, headers=AUTH)
            return await asyncio.gather(good, bad)
    good, bad = asyncio.run(both())
    assert bad.status_code == 400 and reason in bad.json()["error"], bad.text
    assert good.status_code == 200 and [r["status"] for r in good.json()["rows"]] == ["ok", "ok"]


def test_oversized_and_unreadable_bodies_and_tokens(server):
    assert httpx.post(f"{server.url}/v1/score", content=b"{not json", headers=AUTH).status_code == 400
    assert httpx.post(f"{server.url}/v1/score", json={"items": []}).status_code == 401  # no token
    huge = b"x" * (257 * 2**20)  # past the default --max-body-mb 256
    answer = httpx.post(f"{server.url}/v1/score", content=huge, headers=AUTH, timeout=60)
    assert answer.status_code == 413 and "max-body-mb" in answer.json()["error"]


def test_a_full_queue_answers_429_with_retry_after(server):
    async def flood():
        async with httpx.AsyncClient(timeout=300) as client:
            first = asyncio.ensure_future(client.post(f"{server.url}/v1/score",
                                                      json={"items": distinct_items("q", 200)}, headers=AUTH))
            await asyncio.sleep(0.5)  # the 200 are pending (the bound is 256)
            second = await client.post(f"{server.url}/v1/score", json={"items": distinct_items("r", 100)},
                                       headers=AUTH)
            return await first, second
    first, second = asyncio.run(flood())
    assert second.status_code == 429 and int(second.headers["Retry-After"]) >= 1
    assert first.status_code == 200 and len(first.json()["rows"]) == 200
    too_many = post(server, distinct_items("t", 300))  # more than the service ever holds: never retryable
    assert too_many.status_code == 400 and "max-pending" in too_many.json()["error"]


def test_pickled_requests_are_refused_without_allow_pickle(server):
    answer = httpx.post(server.url, content=pickle.dumps({"input_images": []}))
    assert answer.status_code == 403 and "--allow-pickle" in answer.json()["error"]


def test_adapters_call_the_service(server):
    from score.client import compute_score, trl_reward

    image = Image.new("RGB", (48, 40), (10, 200, 30))
    source = Image.new("RGB", (48, 40), (200, 10, 30))
    result = asyncio.run(compute_score("edit", image, "make it green", {"instruction": "make it green",
                                                                        "source_img": source, "id": "v1"},
                                       url=server.url, api_key=KEY))
    assert result["row"]["task"] == "edit" and result["row"]["key"] == "v1"
    assert result["score"] == pytest.approx(result["row"]["overall"] / 10)
    rewards = trl_reward(server.url, api_key=KEY)(["a red cat", "a blue dog"], [image, source])
    assert len(rewards) == 2 and all(0 <= r <= 1 for r in rewards)


def test_a_replica_killed_mid_load_leaves_no_request_unanswered(server):
    async def load():
        async with httpx.AsyncClient(timeout=300) as client:
            calls = [asyncio.ensure_future(client.post(f"{server.url}/v1/score", json={"items": [item]}, headers=AUTH))
                     for item in distinct_items("k", 80)]
            await asyncio.sleep(1.0)
            victim = server.workers()[0]
            for p in [victim, *victim.children(recursive=True)]:
                p.kill()
            return await asyncio.gather(*calls)
    answers = asyncio.run(load())
    assert [a.status_code for a in answers] == [200] * 80
    rows = [a.json()["rows"][0] for a in answers]
    assert [r["key"] for r in rows] == [f"k{i}" for i in range(80)]
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["status"] != "ok"][:3]
    wait_until(server.ready, timeout=120, interval=0.5)
    assert server.ready(), "the replica is replaced"


def test_the_editscore_reward_client_is_served_with_allow_pickle(tmp_path, tiny_models):
    """EditScore's OmniGen2-RL client protocol (reward_client_edit.py): GET /ping, then a pickled
    {input_images, output_image, meta_datas, server_type} POSTed to /, answered by a pickled
    {scores, rewards, reasoning, meta_data} in order."""
    server = Server(tmp_path, *[a if a != "cpu,cpu" else "cpu" for a in SERVE], "--allow-pickle")
    try:
        assert "WARNING --allow-pickle" in server.log.read_text()
        assert httpx.get(f"{server.url}/ping").status_code == 200
        sources = [Image.new("RGB", (40, 40), (i * 40, 0, 0)) for i in range(3)]
        edited = [Image.new("RGB", (40, 40), (0, 0, i * 40)) for i in range(3)]
        metas = [json.dumps({"instruction": f"make it blue {i}", "id": str(i)}) for i in range(3)]
        request = {"input_images": [[s] for s in sources], "output_image": edited, "meta_datas": metas,
                   "server_type": "vlm"}
        answer = httpx.post(server.url, content=pickle.dumps(request),
                            headers={"Content-Type": "application/octet-stream"}, timeout=300)
        assert answer.status_code == 200
        result = pickle.loads(answer.content)
        assert len(result["scores"]) == len(result["rewards"]) == len(result["reasoning"]) == 3
        assert [m["original_index"] for m in result["meta_data"]] == [0, 1, 2]
        assert [m["instruction"] for m in result["meta_data"]] == [f"make it blue {i}" for i in range(3)]
        assert all(0 <= r <= 1 for r in result["rewards"])
        assert result["scores"] == [1.0 if r >= 0.5 else 0.0 for r in result["rewards"]]
    finally:
        server.stop()


def test_binding_beyond_loopback_needs_an_api_key():
    proc = subprocess.run([sys.executable, "-m", "score.serve", "--host", "0.0.0.0"], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--api-key" in proc.stderr


def test_sigterm_drains_requests_in_flight_then_stops_the_replicas(server):
    """Last in the module: it ends the shared server."""
    workers = server.workers()

    async def load():
        async with httpx.AsyncClient(timeout=300) as client:
            calls = [asyncio.ensure_future(client.post(f"{server.url}/v1/score", json={"items": [item]}, headers=AUTH))
                     for item in distinct_items("s", 40)]
            await asyncio.sleep(0.5)
            server.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*calls)
    answers = asyncio.run(load())
    assert [a.status_code for a in answers] == [200] * 40
    assert server.proc.wait(60) == 0
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, "every replica process stopped"
    assert "score.serve: stopped" in server.log.read_text()
