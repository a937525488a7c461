"""Calling `python -m score.serve` from a trainer: a small client and two reward-function adapters.

    from score.client import ScoreClient, compute_score, trl_reward

    client = ScoreClient("http://judge-host:8000", api_key=...)
    rows = client.score([{"id": "a", "prompt": "make it blue", "image": edited_pil, "source_image": source_pil}])

- `compute_score(data_source, solution_image, ground_truth, extra_info, ...)`: verl's reward-function
  contract, async, one sample per call (verl's reward loop and verl-omni's HTTP scorers call it as each
  sample is generated); the instruction and source image come in `extra_info` as verl-omni's image-edit
  scorers take them.
- `trl_reward(url)`: a TRL-style reward function `(prompts, completions, **columns) -> list[float | None]`.

Images travel as lossless PNG (base64): a PIL image, a numpy array (uint8 HxWxC, or floats in [0, 1]),
a torch tensor (CxHxW, floats in [0, 1]) or encoded bytes. A sample the judge could not score has no
reward: None for TRL (it skips it), `on_failure` for verl (0.0, as verl-omni's scorers soft-fail).
"""

from __future__ import annotations

import base64
import io
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"


def encode_image(image: Any) -> str:
    """An image as base64 PNG (bytes already encoded are sent as they are)."""
    if isinstance(image, (bytes, bytearray)):
        return base64.b64encode(bytes(image)).decode()
    return base64.b64encode(_png(_to_pil(image))).decode()


def _to_pil(image: Any):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    if hasattr(image, "detach"):  # a torch tensor, CxHxW (or 1xCxHxW) in [0, 1], as diffusers pipelines give
        tensor = image.detach().float().cpu()
        tensor = tensor[0] if tensor.ndim == 4 else tensor
        image = tensor.permute(1, 2, 0).numpy()
    import numpy as np

    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (array.astype(np.float32) * 255).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(array[0] if array.ndim == 4 else array)


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _payload(items: list[dict]) -> dict:
    encoded = []
    for item in items:
        encoded.append({k: encode_image(v) if k in ("image", "source_image") and v is not None else v
                        for k, v in item.items()})
    return {"items": encoded}


class ScoreClient:
    """POST /v1/score, sync or async; raises on any answer but 200 (the server's reason in the message)."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 600.0):
        self.url = url.rstrip("/") + "/v1/score"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout

    def score(self, items: list[dict]) -> list[dict]:
        import httpx

        response = httpx.post(self.url, json=_payload(items), headers=self.headers, timeout=self.timeout)
        return _rows(response)

    async def ascore(self, items: list[dict], client=None) -> list[dict]:
        """`client`: an httpx.AsyncClient to reuse (connection pooling across many calls)."""
        import httpx

        if client is not None:
            return _rows(await client.post(self.url, json=_payload(items), headers=self.headers, timeout=self.timeout))
        async with httpx.AsyncClient() as own:
            return _rows(await own.post(self.url, json=_payload(items), headers=self.headers, timeout=self.timeout))


def _rows(response) -> list[dict]:
    if response.status_code != 200:
        try:
            reason = response.json().get("error")
        except ValueError:
            reason = response.text[:300]
        raise RuntimeError(f"score.serve answered {response.status_code}: {reason}")
    return response.json()["rows"]


def reward_of(row: dict) -> float | None:
    """A row's reward in [0, 1]: its overall score (0-10) / 10; None when it failed."""
    return row["overall"] / 10 if row["status"] == "ok" and row["overall"] is not None else None


async def compute_score(data_source: str, solution_image: Any, ground_truth: str, extra_info: dict | None = None,
                        url: str = DEFAULT_URL, api_key: str | None = None, on_failure: float = 0.0,
                        **kwargs: Any) -> dict:
    """verl's reward-function contract for an image edit: `extra_info["instruction"]` (else `ground_truth`)
    and `extra_info["source_img"]` (or `source_image`). Returns {"score": reward, "row": the judge's row}."""
    extra_info = extra_info or {}
    source = extra_info.get("source_img", extra_info.get("source_image"))
    item = {"id": str(extra_info.get("id", extra_info.get("index", "0"))), "image": solution_image,
            "prompt": extra_info.get("instruction") or ground_truth, "source_image": source}
    row = (await ScoreClient(url, api_key).ascore([item]))[0]
    reward = reward_of(row)
    return {"score": on_failure if reward is None else reward, "row": row}


def trl_reward(url: str = DEFAULT_URL, api_key: str | None = None, source_column: str = "source_image"):
    """A TRL-style reward function: `reward(prompts, completions, **columns)`; completions are the generated
    (edited) images, `columns[source_column]` their sources for an edit task."""
    client = ScoreClient(url, api_key)

    def reward(prompts: list, completions: list, **columns: Any) -> list[float | None]:
        sources = columns.get(source_column) or [None] * len(completions)
        items = [{"id": str(n), "prompt": p, "image": c, "source_image": s}
                 for n, (p, c, s) in enumerate(zip(prompts, completions, sources))]
        return [reward_of(row) for row in client.score(items)]

    reward.__name__ = "genscore_judge"
    return reward
