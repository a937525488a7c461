"""A real HTTP server on 127.0.0.1 that speaks OpenAI's chat-completions format, with scripted answers.

`python tests/score/chat_server.py --model NAME --key KEY --log FILE` prints its port, then serves
`GET /v1/models` and `POST /v1/chat/completions`. What it answers is chosen by a tag in the request's
text (the instruction of an edit sample, so only the SC question carries it):
  [fenced]   a fenced JSON object with a float score and prose around it (every untagged question too)
  [single]   a single-quoted object, which VIEScore's parser cannot read
  [mend]     "I am not sure." the first time this text is asked, then a valid answer
  [429]      429 with Retry-After: 1 the first time this text is asked, then a valid answer
  [500]      500, every time
  [hang]     no answer for 30 s
  [401]      401, as for a revoked key
A request without `Authorization: Bearer KEY` (when --key is given) gets 401; another model, 404.
Every request's body and arrival time are appended to --log as JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from aiohttp import web

VALID = '```json\n{"score": [7.5, 8], "reasoning": "the sky is orange"}\n```\nThat is my evaluation.'
TAGGED = {"[single]": "{'score': [6, 4], 'reasoning': 'single quoted'}"}


def _text(body: dict) -> str:
    parts = [m["content"] if isinstance(m["content"], str) else " ".join(p.get("text", "") for p in m["content"])
             for m in body.get("messages", [])]
    return "\n".join(parts)


def make_app(model: str, key: str | None, log: str) -> web.Application:
    asked: dict[str, int] = {}

    def error(status: int, message: str, headers: dict | None = None) -> web.Response:
        return web.json_response({"error": {"message": message, "type": "error", "code": status}}, status=status,
                                 headers=headers)

    def authorized(request: web.Request) -> bool:
        return key is None or request.headers.get("Authorization") == f"Bearer {key}"

    async def models(request: web.Request) -> web.Response:
        if not authorized(request):
            return error(401, "Incorrect API key provided.")
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model"}]})

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        with open(log, "a") as handle:
            handle.write(json.dumps({"at": time.time(), "body": body,
                                     "authorization": request.headers.get("Authorization")}) + "\n")
        text = _text(body)
        asked[text] = asked.get(text, 0) + 1
        if not authorized(request) or "[401]" in text:
            return error(401, "Incorrect API key provided.")
        if body.get("model") != model:
            return error(404, f"The model `{body.get('model')}` does not exist.")
        if "[500]" in text:
            return error(500, "The server had an error while processing your request.")
        if "[429]" in text and asked[text] == 1:
            return error(429, "Rate limit reached.", {"Retry-After": "1"})
        if "[hang]" in text:
            await asyncio.sleep(30)
        answer = next((a for tag, a in TAGGED.items() if tag in text), VALID)
        if "[mend]" in text and asked[text] == 1:
            answer = "I am not sure."
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(text) // 4 + 100, "completion_tokens": len(answer) // 4,
                      "total_tokens": len(text) // 4 + 100 + len(answer) // 4},
        })

    app = web.Application(client_max_size=64 * 1024 ** 2)
    app.add_routes([web.get("/v1/models", models), web.post("/v1/chat/completions", chat)])
    return app


async def serve(args: argparse.Namespace) -> None:
    runner = web.AppRunner(make_app(args.model, args.key, args.log))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--key", default=None)
    parser.add_argument("--log", required=True)
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(serve(parser.parse_args()))
