"""Judges behind an OpenAI-compatible `/v1/chat/completions` API: OpenAI (GEdit-Bench's GPT-4.1 columns),
Azure's OpenAI v1 bases, `vllm serve` or SGLang judges on other machines.

The same templates, parsers, re-asks and rows as a judge we load: only the way a question reaches the
judge differs. Each question is one request, sent as the protocol's reference sends it to an API
(GEdit-Bench's and EditScore's GPT path: one user turn, the text, then the images as data URLs;
their max_tokens; no temperature unless a flag sets one). Images go after the protocol's own resize,
as PNG (lossless) or, to match that reference byte for byte, JPEG.

`--concurrency` requests are in flight at once on one event loop. The `openai` client retries 408,
429, 5xx, timeouts and dropped connections with exponential backoff and jitter, honouring
`Retry-After`, `--api-retries` times; after that the sample is a failed row with the HTTP status and
message. A rejected key (401/403) or a model the endpoint does not serve (404) is not the sample's
fault: it stops the run at once with one line (pool.stage.RunFault). The key is read from the
environment in the worker and never written anywhere.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from pool.stage import Feed, RunFault
from score.config import ScoreConfig
from score.judge import Judge, Prepared, Request
from score.stage import ScoreStage

AZURE_SUFFIX = ".azure.com"


def api_key(config: ScoreConfig) -> str | None:
    return os.environ.get(config.api_key_env or "OPENAI_API_KEY") or None


def api_host(api_base: str | None) -> str | None:
    """The endpoint's host and port: part of a run's identity (the same model name elsewhere is another judge)."""
    return urlsplit(api_base).netloc if api_base else None


def client(config: ScoreConfig, asynchronous: bool = True):
    """An `openai` client for the endpoint; Azure's OpenAI v1 bases take the key as an `api-key` header."""
    import openai

    key = api_key(config)
    headers = {"api-key": key} if key and (api_host(config.api_base) or "").endswith(AZURE_SUFFIX) else None
    cls = openai.AsyncOpenAI if asynchronous else openai.OpenAI
    return cls(base_url=config.api_base, api_key=key or "EMPTY", max_retries=config.api_retries,
               timeout=config.request_timeout, default_headers=headers)


def check_endpoint(config: ScoreConfig) -> None:
    """Before any worker starts: the key is accepted and the model is served, else one clear line.
    Endpoints that do not list their models (404 on /models) are taken at their word."""
    import openai

    try:
        served = [m.id for m in client(config, asynchronous=False).with_options(max_retries=1).models.list()]
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        raise RunFault(f"{config.api_base} refused the API key from ${config.api_key_env or 'OPENAI_API_KEY'} "
                       f"(HTTP {exc.status_code})") from None
    except openai.NotFoundError:
        return
    except openai.APIConnectionError as exc:
        raise RunFault(f"cannot reach {config.api_base}: {exc}") from None
    if served and config.model not in served:
        raise RunFault(f"{config.api_base} does not serve {config.model!r}; it serves: {', '.join(served[:10])}")


def data_url(image, fmt: str) -> str:
    """The image as a data URL: PNG (lossless), or JPEG as PIL saves it by default (GEdit-Bench's GPT path)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt.upper())
    return f"data:image/{fmt};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def api_messages(request: Request, config: ScoreConfig) -> list[dict]:
    """The request's chat messages in the API's format: each image part becomes an image_url part. The
    reference API layout puts the text first, then the images (mllm_tools/openai.py's prepare_prompt);
    `images-first` keeps the layout the protocol uses for judges we load."""
    images = iter(request.images)
    out = []
    for message in request.messages:
        if isinstance(message["content"], str):
            out.append(message)
            continue
        parts = [{"type": "image_url", "image_url": {"url": data_url(next(images), config.api_image_format)}}
                 if part["type"] == "image" else part for part in message["content"]]
        if config.api_layout == "reference":
            parts = [p for p in parts if p["type"] == "text"] + [p for p in parts if p["type"] != "text"]
        out.append({**message, "content": parts})
    return out


class APIError(Exception):
    """A request that failed for good (retries spent, or refused): the sample's failed row says why."""


class OpenAIStage(ScoreStage):
    """One worker; `--concurrency` requests in flight on an event loop, rows yielded as they finish."""

    def __init__(self, config: ScoreConfig, task: str | None = None):
        super().__init__(config, task)
        self.prefetch = config.concurrency

    def load(self, device: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = client(self.config)
        self.threads = ThreadPoolExecutor(self.config.preprocess_threads, thread_name_prefix="encode")

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.threads.shutdown(wait=False)
        self.loop.close()

    def rows(self, feed: Feed) -> Iterator[dict]:
        pending: set[asyncio.Task] = set()
        while pending or not feed.exhausted:
            room = self.config.concurrency - len(pending)
            if room > 0 and not feed.exhausted:
                pending |= {self.loop.create_task(self._score(item)) for item in feed.take(room, block=not pending)}
            if not pending:
                continue
            done, pending = self.loop.run_until_complete(
                asyncio.wait(pending, timeout=0.05, return_when=asyncio.FIRST_COMPLETED))
            for task in done:
                yield task.result()  # a RunFault stops the worker here; the run ends with its line

    async def _score(self, item: dict) -> dict:
        judge = self.judge(item["task"])
        prepared = await self.loop.run_in_executor(self.threads, self._prepare, judge, item)
        if prepared.error:
            return judge.failed(item, prepared.error, prepared.started_at)
        tokens = [0, 0]
        while True:
            try:
                answers = await asyncio.gather(*(self._ask(judge, r, messages) for r, messages
                                                 in zip(prepared.requests, prepared.engine_inputs)))
            except APIError as exc:
                row = judge.failed(item, str(exc), prepared.started_at)
                row.update(prompt_tokens=tokens[0], output_tokens=tokens[1], asks=prepared.asks)
                return row
            texts = {r.question: text for r, (text, _, _) in zip(prepared.requests, answers)}
            tokens = [tokens[0] + sum(a[1] for a in answers), tokens[1] + sum(a[2] for a in answers)]
            if not judge.ask_again(prepared, texts):
                return judge.finish(prepared, texts, *tokens)

    def _prepare(self, judge: Judge, item: dict) -> Prepared:
        """Images opened, resized as the protocol says, encoded: on a thread, off the event loop."""
        prepared = judge.prepare(item)
        if not prepared.error:
            try:
                prepared.engine_inputs = [api_messages(r, self.config) for r in prepared.requests]
            except Exception as exc:  # noqa: BLE001 - an image PIL cannot encode: a failed row
                prepared.error = f"{type(exc).__name__}: {exc}"
        return prepared

    async def _ask(self, judge: Judge, request: Request, messages: list[dict]) -> tuple[str, int, int]:
        """One question: (answer text, prompt tokens, completion tokens), per the API's usage."""
        import openai

        sampling = judge.sampling(api=True)
        extra = {"response_format": {"type": "json_schema", "json_schema": {"name": request.question.split("#")[0],
                                                                            "schema": request.schema}}} \
            if request.schema else {}
        started = time.monotonic()
        try:
            response = await self.client.chat.completions.create(
                model=self.config.model, messages=messages, **sampling, **extra)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise RunFault(f"{self.config.api_base} refused the API key (HTTP {exc.status_code}): {_message(exc)}")
        except openai.NotFoundError as exc:
            raise RunFault(f"{self.config.api_base}: HTTP 404 for model {self.config.model!r}: {_message(exc)}")
        except openai.APITimeoutError:
            raise APIError(f"no answer within {self.config.request_timeout:g} s "
                           f"({self.config.api_retries} retries, {time.monotonic() - started:.0f} s in all)") from None
        except openai.APIStatusError as exc:
            raise APIError(f"HTTP {exc.status_code} after {self.config.api_retries} retries: {_message(exc)}") from None
        except openai.APIConnectionError as exc:
            raise APIError(f"connection failed after {self.config.api_retries} retries: {exc}") from None
        usage = response.usage
        text = (response.choices[0].message.content or "") if response.choices else ""
        return text, getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0


def _message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        return str(error.get("message", error) if isinstance(error, dict) else error)[:300]
    return str(exc)[:300]
