"""`python -m score.serve`: the judge as an HTTP reward service for RL training.

    python -m score.serve --config configs/qwen3vl_judge.yaml --port 8000

    POST /v1/score  {"items": [{"id": "a", "prompt": "make it blue", "image": "<base64 PNG/JPEG or data: URL>",
                                "source_image": "<...>"}]}  ->  {"rows": [...]}, one row per item, in order
    GET  /health    200 once every replica has loaded, else 503
    GET  /metrics   Prometheus text
    POST /, GET /ping   EditScore's pickled reward-client protocol, only with --allow-pickle

Every request's items join the replicas' continuous batches at once (score/scorer.py): a trainer may
send one item per request from many processes. Rows are the rows `score.run` writes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hmac
import ipaddress
import json
import math
import os
import pickle
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from data.config import parse_config
from pool.stream import QueueFull
from score.config import ScoreConfig, _f
from score.scorer import IMAGE_FIELDS, SOURCE_FIELDS, ItemError, Scorer

KEY_ENV = "GENSCORE_API_KEY"
IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*")


@dataclass
class ServeConfig(ScoreConfig):
    """score.run's flags (the judge, its placement and protocol) and the service's own."""

    host: str = _f("127.0.0.1", "address to listen on; anything but a loopback address needs --api-key")
    port: int = _f(8000, "port to listen on")
    api_key: str | None = _f(None, f"bearer token every request must carry (default: ${KEY_ENV}); required when "
                                   "--host is not a loopback address")
    max_pending: int = _f(4096, "items queued or being judged at most; a request past it gets 429 with Retry-After")
    max_items: int = _f(1024, "items in one request at most")
    max_body_mb: float = _f(256, "largest request body, MiB (a larger one gets 413)")
    allow_paths: str | None = _f(None, "a folder whose images items may name by path (paths resolved, links "
                                       "followed, must stay inside it); default: images must be sent in the request")
    allow_pickle: bool = _f(False, "also serve EditScore's pickled reward-client protocol (POST /, GET /ping). "
                                   "Unpickling runs code: anyone who can reach the port can run code as this user")
    log_dir: str | None = _f(None, "also keep every scored row in a manifest there (score.report and the "
                                   "notebook read it)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.port < 65536:
            raise ValueError(f"--port takes 1..65535, not {self.port}")
        for name in ("max_pending", "max_items", "max_body_mb"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} takes a number above 0, not {getattr(self, name)}")

    def judge_config(self) -> ScoreConfig:
        return ScoreConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ScoreConfig)})


class RequestError(ValueError):
    """A request the service refuses, with its HTTP status."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def decode_image(value: Any, allow_paths: Path | None) -> Any:
    """A JSON item's image: base64 (bare or a data: URL) to bytes, or a path inside --allow-paths."""
    if not isinstance(value, str) or not value:
        raise RequestError(f"an image is a base64 string, a data: URL or a path, not {type(value).__name__}")
    if value.startswith("data:"):
        header, _, data = value.partition(",")
        if ";base64" not in header:
            raise RequestError("a data: URL image must be base64-encoded (data:image/png;base64,...)")
        return _b64(data)
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        data = None
    if data and data.startswith(IMAGE_MAGIC):
        return data
    if allow_paths is None:
        raise RequestError("an image is base64 PNG/JPEG data or a data: URL (this server reads no paths: start it "
                           "with --allow-paths DIR to let items name files there)")
    path = Path(value if os.path.isabs(value) else allow_paths / value).resolve()
    if not path.is_relative_to(allow_paths):
        raise RequestError(f"{value}: outside the folder this server may read ({allow_paths})", status=403)
    return str(path)


def _b64(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RequestError(f"not valid base64: {exc}") from None


def json_items(payload: Any, config: ServeConfig) -> list[dict]:
    """The items of a /v1/score body, their images decoded (not yet checked: Scorer.item does that)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("items"), list):
        raise RequestError('the body is {"items": [{"id": ..., "prompt": ..., "image": ..., "source_image": ...}]}')
    items = payload["items"]
    if not items:
        raise RequestError("no items")
    if len(items) > config.max_items:
        raise RequestError(f"{len(items)} items in one request; at most {config.max_items} (--max-items)")
    root = Path(config.allow_paths).resolve() if config.allow_paths else None
    # the fields Scorer.item reads images from, --image-column / --source-column included
    image_keys = {*IMAGE_FIELDS, *SOURCE_FIELDS, config.image_column, config.source_column} - {None}
    out = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise RequestError(f"item {n}: an object, not {type(item).__name__}")
        try:
            out.append({k: decode_image(v, root) if k in image_keys and v is not None else v
                        for k, v in item.items()})
        except RequestError as exc:
            raise RequestError(f"item {item.get('id', n)}: {exc}", exc.status) from None
    return out


def editscore_items(data: Any) -> tuple[list[dict], list[dict]]:
    """EditScore's reward client payload (reward_client_edit.py): input_images (a list of input images per
    sample), output_image, meta_datas (JSON strings with "instruction"), server_type. Returns the items and
    the meta_datas read."""
    try:
        inputs, outputs, metas = data["input_images"], data["output_image"], data["meta_datas"]
    except (TypeError, KeyError) as exc:
        raise RequestError(f"not an EditScore reward request (missing {exc})") from None
    if not len(inputs) == len(outputs) == len(metas):
        raise RequestError(f"{len(inputs)} input_images, {len(outputs)} output_image, {len(metas)} meta_datas")
    items, read = [], []
    for n, (source, edited, meta) in enumerate(zip(inputs, outputs, metas)):
        meta = json.loads(meta) if isinstance(meta, str) else meta
        if isinstance(source, (list, tuple)):
            if len(source) != 1:
                raise RequestError(f"sample {n}: {len(source)} input images; the judge compares one source image")
            source = source[0]
        if not isinstance(meta, dict) or "instruction" not in meta:
            raise RequestError(f"sample {n}: its meta_data names no instruction")
        items.append({"id": str(meta.get("id", n)), "prompt": meta["instruction"], "image": edited,
                      "source_image": source})
        read.append(meta)
    return items, read


def editscore_answer(rows: list[dict], metas: list[dict]) -> dict:
    """The answer reward_proxy.py gives: reward = overall / 10, score = reward >= 0.5, in order. A failed row
    gets reward 0.0 and its error in meta_data, as the proxy answers a sample with no result."""
    rewards, reasoning, meta_out = [], [], []
    for n, (row, meta) in enumerate(zip(rows, metas)):
        meta["original_index"] = n
        ok = row["status"] == "ok" and row["overall"] is not None
        rewards.append(row["overall"] / 10 if ok else 0.0)
        if not ok:
            meta["error"] = row["error"]
        reasoning.append(f"{row.get('sub_scores')}\n{row.get('raw_response')}" if ok else f"failed: {row['error']}")
        meta_out.append(meta)
    return {"scores": [1.0 if r >= 0.5 else 0.0 for r in rewards], "rewards": rewards, "reasoning": reasoning,
            "strict_rewards": list(rewards), "meta_data": meta_out}


RATE_WINDOW_S = 60.0


class Metrics:
    """The service's Prometheus metrics (a registry of its own, no global state)."""

    def __init__(self, scorer: Scorer):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("genscore_requests", "HTTP requests by route and status", ["route", "code"],
                                registry=self.registry)
        self.rows = Counter("genscore_rows", "rows answered, by status", ["status"], registry=self.registry)
        self.latency = Histogram("genscore_request_latency_seconds", "time from a scoring request to its answer",
                                 buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, math.inf),
                                 registry=self.registry)
        self.finished: deque[float] = deque()
        Gauge("genscore_queue_depth", "items queued or being judged", registry=self.registry).set_function(
            lambda: scorer.work.pending)
        Gauge("genscore_replicas_ready", "replicas loaded and serving", registry=self.registry).set_function(
            lambda: len(scorer.replicas.loaded))
        Gauge("genscore_rows_per_second", "rows answered per second over the last minute",
              registry=self.registry).set_function(self.rate)

    def answered(self, rows: list[dict], started: float) -> None:
        now = time.monotonic()
        self.latency.observe(now - started)
        for row in rows:
            self.rows.labels(row["status"]).inc()
            self.finished.append(now)
        self.rate()  # drops what left the window: the deque stays a minute long whether or not anyone scrapes

    def rate(self, window_s: float = RATE_WINDOW_S) -> float:
        now = time.monotonic()
        while self.finished and self.finished[0] < now - window_s:
            self.finished.popleft()
        return len(self.finished) / window_s

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


def create_app(scorer: Scorer, config: ServeConfig):
    """The FastAPI app over a started Scorer."""
    metrics = Metrics(scorer)
    limit = int(config.max_body_mb * 2**20)
    open_paths = {"/health", "/ping", "/"}  # probes, and EditScore's client, which sends no token
    app = FastAPI(title="genscore judge", docs_url=None, redoc_url=None)

    def error(message: str, status: int, route: str, headers: dict | None = None) -> JSONResponse:
        metrics.requests.labels(route, str(status)).inc()
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.middleware("http")
    async def bearer(request: Request, call_next):
        if config.api_key and request.url.path not in open_paths:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {config.api_key}".encode()):
                return error("missing or wrong bearer token (Authorization: Bearer <--api-key>)", 401, request.url.path)
        return await call_next(request)

    async def scored(items: list[dict], route: str, started: float) -> list[dict] | JSONResponse:
        """The rows of `items` once all are judged (counted in the metrics), or the error response that
        refuses them."""
        if len(items) > config.max_pending:  # could never fit: not a 429 to retry forever
            return error(f"{len(items)} items in one request; the service holds at most {config.max_pending} at "
                         "once (--max-pending)", 400, route)
        try:
            futures = await asyncio.to_thread(scorer.submit, items)
        except ItemError as exc:
            return error(str(exc), 400, route)
        except QueueFull as exc:
            wait = retry_after(scorer.work.pending, metrics.rate())
            return error(f"busy: {exc}; retry after {wait} s", 429, route, {"Retry-After": str(wait)})
        except RuntimeError as exc:  # the pool stopped or is shutting down
            return error(str(exc), 503, route)
        try:
            rows = list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))
        except RuntimeError as exc:  # the replicas stopped for good while these were pending
            return error(str(exc), 503, route)
        metrics.answered(rows, started)
        metrics.requests.labels(route, "200").inc()
        return rows

    @app.post("/v1/score")
    async def score(request: Request):
        started = time.monotonic()
        try:
            body = await read_body(request, limit)
            # off the event loop: a large body takes seconds to parse, and other requests go on meanwhile
            items = await asyncio.to_thread(lambda: json_items(json.loads(body), config))
        except RequestError as exc:
            return error(str(exc), exc.status, "/v1/score")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return error(f"the body is not JSON: {exc}", 400, "/v1/score")
        rows = await scored(items, "/v1/score", started)
        return rows if isinstance(rows, Response) else JSONResponse({"rows": rows})

    @app.get("/health")
    async def health():
        if scorer.ready:
            return {"status": "ready", "replicas": scorer.replicas.count}
        state = "failed" if scorer.replicas.error else "loading"
        return JSONResponse({"status": state, "replicas_ready": len(scorer.replicas.loaded),
                             "replicas": scorer.replicas.count, "error": scorer.replicas.error}, status_code=503)

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/ping")
    async def ping():
        return Response("pong", status_code=200 if scorer.ready else 503)

    @app.post("/")
    async def editscore(request: Request):
        if not config.allow_pickle:
            return error("pickled requests are refused: unpickling runs code; start the server with --allow-pickle "
                         "to serve EditScore's reward client (trusted networks only)", 403, "/")
        started = time.monotonic()
        try:
            body = await read_body(request, limit)
            data = await asyncio.to_thread(pickle.loads, body)  # opted in with --allow-pickle
            items, metas = editscore_items(data)
        except RequestError as exc:
            return error(str(exc), exc.status, "/")
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
            return error(f"not a pickled EditScore request: {exc}", 400, "/")
        rows = await scored(items, "/", started)
        if isinstance(rows, Response):
            return rows
        answer = editscore_answer(rows, metas)
        return Response(pickle.dumps(answer), media_type="application/octet-stream")

    return app


async def read_body(request, limit: int) -> bytes:
    """The body, refused with 413 once it passes `limit` bytes (never read whole first)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"the body is {int(declared):,} bytes; at most {limit:,} (--max-body-mb)", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"the body is over {limit:,} bytes (--max-body-mb)", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def retry_after(pending: int, rate: float) -> int:
    """Seconds until the queue has room, at the pace of the last minute (1..60)."""
    return max(1, min(60, math.ceil(pending / rate) if rate > 0 else 5))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(config: ServeConfig) -> None:
    if not is_loopback(config.host) and not config.api_key:
        raise ValueError(f"--host {config.host} exposes the judge beyond this machine: set --api-key (or "
                         f"${KEY_ENV}) so that only clients holding it are served")
    if config.allow_pickle:
        print(f"score.serve: WARNING --allow-pickle: pickled requests on {config.host}:{config.port} are "
              "unpickled, which runs any code they carry; only trusted clients must reach this port",
              file=sys.stderr, flush=True)


def serve(config: ServeConfig) -> int:
    import uvicorn

    if config.api_key is None and os.environ.get(KEY_ENV):
        config = dataclasses.replace(config, api_key=os.environ[KEY_ENV])
    check_exposure(config)
    scorer = Scorer(config.judge_config(), log_dir=config.log_dir, max_pending=config.max_pending)
    try:
        app = create_app(scorer, config)
        print(f"score.serve: {scorer.replicas.count} replica(s) of {config.model} on "
              f"{scorer.placement.describe()}; listening on http://{config.host}:{config.port} "
              "(GET /health says when they are loaded)", file=sys.stderr, flush=True)
        # uvicorn on SIGTERM/SIGINT: stops accepting, lets requests in flight finish, then returns, and raises
        # the signal again under the handler it found: ours ignores it, so the replicas are stopped below.
        signal.signal(signal.SIGTERM, lambda *_: None)
        uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False)
    finally:
        scorer.close()  # the replicas stop once nothing is pending
    print("score.serve: stopped", file=sys.stderr, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    config = parse_config(ServeConfig, sys.argv[1:] if argv is None else argv, "python -m score.serve",
                          __doc__.splitlines()[0])
    try:
        return serve(config)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
