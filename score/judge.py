"""What both judge backends share: images in, chat prompts out; answers in, score rows out.

`prepare` turns a sample into requests (one per template question and pass) with decoded,
capped images; `finish` validates the answers against their schemas and builds the score row.
An answer that does not follow its schema is asked again as the template's protocol says
(`Judge.ask_again`), then the sample becomes a failed row carrying the reason and the raw
answers. A sample whose image cannot be read becomes a failed row at once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from data.images import image_size, open_rgb
from data.manifest import SCORE_SCHEMA, empty_row
from score.config import ScoreConfig
from score.templates import TEMPLATES, Question, Template, caption_template, load_template, protocol_template

SKELETON_TOKENS = 32  # room for an answer's JSON punctuation and numbers


def resolve_template(config: ScoreConfig, task: str) -> Template:
    if task == "custom":
        if not config.template_file:
            raise ValueError("--task custom needs --template-file")
        return load_template(config.template_file)
    if task == "caption":
        return caption_template(config.prompt) if config.prompt else TEMPLATES["caption"]
    return protocol_template(config.protocol, task, config.num_pass, config.reduction)


@dataclass
class Request:
    question: str          # the answer's name: the question's, with `#pass` when there are several
    prompt: str            # rendered chat prompt with image placeholders
    images: list
    schema: dict | None
    seed: int = 0


@dataclass
class Prepared:
    item: dict
    requests: list[Request] = field(default_factory=list)
    engine_inputs: list = field(default_factory=list)  # vLLM backend: the requests, rendered
    error: str | None = None
    asks: int = 1                                      # how many times the questions have been asked
    started_at: float = field(default_factory=time.time)


class Judge:
    """Template + tokenizer: builds requests and rows. Thread-safe (used by the decode threads)."""

    def __init__(self, config: ScoreConfig, template: Template, tokenizer):
        self.config, self.template, self.tokenizer = config, template, tokenizer

    @property
    def max_tokens(self) -> int:
        return self.template.sampling.get("max_tokens", self.config.max_tokens)

    def messages(self, question: Question, prompt: str) -> list[dict]:
        """One question as chat messages: the images first, then the text, as the protocols send it."""
        content = [{"type": "image"} for _ in question.images] + [{"type": "text", "text": question.render(prompt)}]
        system = [{"role": "system", "content": self.template.system}] if self.template.system is not None else []
        return system + [{"role": "user", "content": content}]

    def prepare(self, item: dict) -> Prepared:
        prepared = Prepared(item)
        try:
            images = self._images(item)
            seed = self.template.sampling.get("seed", 0)
            for n in range(self.template.num_pass):
                for q in self.template.questions:
                    name = q.name if self.template.num_pass == 1 else f"{q.name}#{n}"
                    prompt = self._render(self.messages(q, item.get("prompt") or ""))
                    prepared.requests.append(Request(name, prompt, [images[r] for r in q.images],
                                                     self._bounded(q.schema), seed + n))
        except Exception as exc:  # noqa: BLE001 - unreadable input: a failed row, not a dead replica
            prepared.error = f"{type(exc).__name__}: {exc}"
        return prepared

    def _images(self, item: dict) -> dict:
        """Each role's image, capped to the pixel range; the judged one first resized to the
        source's size when the protocol does that (GEdit-Bench compares them at equal size)."""
        roles = {r for q in self.template.questions for r in q.images}
        cap = (self.config.max_pixels, self.config.min_pixels)
        images = {}
        if "source" in roles:
            images["source"] = open_rgb(item.get("source_image"), *cap)
        if "image" in roles:
            size = image_size(item.get("source_image")) if self.template.resize_to_source and "source" in roles else None
            images["image"] = open_rgb(item.get("image_path"), *cap, resize_to=size)
        return images

    def _render(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _bounded(self, schema: dict | None) -> dict | None:
        """The schema with its uncapped strings capped, so that an answer closes within max_tokens
        rather than being cut off mid-string (0 = no cap)."""
        cap = self.config.max_reasoning_chars
        cap = max(16, self.max_tokens - SKELETON_TOKENS) if cap is None else cap
        if not schema or not cap:
            return schema
        props = {k: ({**v, "maxLength": cap} if v.get("type") == "string" and "maxLength" not in v else v)
                 for k, v in schema.get("properties", {}).items()}
        return {**schema, "properties": props}

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

    def ask_again(self, prepared: Prepared, texts: dict[str, str]) -> bool:
        """True when an answer does not parse and the protocol asks both questions again; the
        caller then sends the same requests once more."""
        if prepared.asks > self.template.reasks or self._parse(prepared, texts)[1] is None:
            return False
        prepared.asks += 1
        return True

    def finish(self, prepared: Prepared, texts: dict[str, str], prompt_tokens: int, output_tokens: int) -> dict:
        row = self.base_row(prepared.item)
        row.update(raw_response=json.dumps(texts, ensure_ascii=False), prompt_tokens=prompt_tokens,
                   output_tokens=output_tokens, started_at=prepared.started_at, asks=prepared.asks,
                   duration_s=time.time() - prepared.started_at)
        answers, error = self._parse(prepared, texts)
        if error is None:
            try:
                scores = self.template.combine(answers)
            except (ValueError, KeyError, TypeError) as exc:
                error = f"{type(exc).__name__}: {exc}"
        if error is not None:
            asked = f" (asked {prepared.asks} times)" if prepared.asks > 1 else ""
            row.update(status="failed", error=f"invalid answer{asked}: {error}")
            return row
        scores["sub_scores"] = json.dumps(scores["sub_scores"])
        row.update(scores, status="ok")
        return row

    def _parse(self, prepared: Prepared, texts: dict[str, str]) -> tuple[list[dict], str | None]:
        """Parsed answers per pass, or the first reason one does not parse."""
        passes: list[dict] = [{} for _ in range(self.template.num_pass)]
        for r in prepared.requests:
            question, _, n = r.question.partition("#")
            try:
                passes[int(n or 0)][question] = parse_answer(texts[r.question], r.schema)
            except (ValueError, KeyError) as exc:
                return passes, f"{r.question}: {exc}"
        return passes, None


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
