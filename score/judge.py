"""What both judge backends share: images in, chat prompts out; answers in, score rows out.

`prepare` turns a sample into requests (one per template question) with decoded, capped
images; `finish` validates the answers against their schemas and builds the score row. A
sample whose image cannot be read, or whose answer does not follow its schema, becomes a
failed row carrying the reason (and the raw answer).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from data.images import open_rgb
from data.manifest import SCORE_SCHEMA, empty_row
from score.config import ScoreConfig
from score.templates import TEMPLATES, Template, caption_template, load_template


def resolve_template(config: ScoreConfig, task: str) -> Template:
    if task == "custom":
        if not config.template_file:
            raise ValueError("--task custom needs --template-file")
        return load_template(config.template_file)
    if task == "caption" and config.prompt:
        return caption_template(config.prompt)
    return TEMPLATES[task]


@dataclass
class Request:
    question: str
    prompt: str            # rendered chat prompt with image placeholders
    images: list
    schema: dict | None


@dataclass
class Prepared:
    item: dict
    requests: list[Request] = field(default_factory=list)
    engine_inputs: list = field(default_factory=list)  # vLLM backend: the requests, rendered
    error: str | None = None
    started_at: float = field(default_factory=time.time)


class Judge:
    """Template + tokenizer: builds requests and rows. Thread-safe (used by the decode threads)."""

    def __init__(self, config: ScoreConfig, template: Template, tokenizer):
        self.config, self.template, self.tokenizer = config, template, tokenizer

    def prepare(self, item: dict) -> Prepared:
        prepared = Prepared(item)
        try:
            images = {}
            for role in {r for q in self.template.questions for r in q.images}:
                path = item.get("source_image") if role == "source" else item.get("image_path")
                images[role] = open_rgb(path, self.config.max_pixels, self.config.min_pixels)
            for q in self.template.questions:
                text = q.text.format(prompt=item.get("prompt") or "")
                prepared.requests.append(Request(q.name, self._render(text, len(q.images)),
                                                 [images[r] for r in q.images], q.schema))
        except Exception as exc:  # noqa: BLE001 - unreadable input: a failed row, not a dead replica
            prepared.error = f"{type(exc).__name__}: {exc}"
        return prepared

    def _render(self, text: str, n_images: int) -> str:
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
        messages = [{"role": "system", "content": self.template.system}, {"role": "user", "content": content}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def base_row(self, item: dict) -> dict:
        row = empty_row(SCORE_SCHEMA)
        row.update({k: item.get(k) for k in ("key", "sample_id", "index", "category", "prompt",
                                             "source_image", "image_path", "extra")})
        row.update(task=item.get("task"), judge_model=self.config.model, template=self.template.name,
                   template_version=self.template.version, attempt=item.get("attempt", 1))
        return row

    def failed(self, item: dict, reason: str, started_at: float | None = None) -> dict:
        row = self.base_row(item)
        row.update(status="failed", error=reason, started_at=started_at or time.time(),
                   duration_s=time.time() - (started_at or time.time()))
        return row

    def finish(self, prepared: Prepared, texts: dict[str, str], prompt_tokens: int, output_tokens: int) -> dict:
        row = self.base_row(prepared.item)
        row.update(raw_response=json.dumps(texts, ensure_ascii=False), prompt_tokens=prompt_tokens,
                   output_tokens=output_tokens, started_at=prepared.started_at,
                   duration_s=time.time() - prepared.started_at)
        try:
            answers = {r.question: parse_answer(texts[r.question], r.schema) for r in prepared.requests}
            scores = self.template.combine(answers)
        except (ValueError, KeyError) as exc:
            row.update(status="failed", error=f"invalid answer: {exc}")
            return row
        scores["sub_scores"] = json.dumps(scores["sub_scores"])
        row.update(scores, status="ok")
        return row


def parse_answer(text: str, schema: dict | None) -> dict | str:
    """The answer as JSON checked against `schema`, or the plain text when there is no schema."""
    if schema is None:
        return text
    import jsonschema

    try:
        answer = json.loads(text, strict=False)  # strict=False: grammars may emit raw control characters
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at {exc.pos}): {text[:80]!r}") from None
    try:
        jsonschema.validate(answer, schema)
    except jsonschema.ValidationError as exc:
        raise ValueError(f"does not follow the schema: {exc.message}") from None
    return answer
