"""What every judge backend shares: images in, chat prompts out; answers in, score rows out.

`prepare` turns a sample into requests (one per template question and pass) with decoded images
brought into the judge's pixel range; `finish` reads the answers and builds the score row.
Answers are read two ways (`--decoding`):
- `free` (the protocols' default): the judge writes what it likes and the protocol's reference
  parser reads it (score/parsers.py); an unreadable answer is asked again as the reference does,
  then the row fails. Where the reference would have invented a score the row says so
  (`upstream_guess`) instead: it is counted, never scored.
- `schema`: the answer is forced to the question's JSON schema by vLLM's grammar engine (our own
  templates, and tiny random judges, which write valid JSON only when forced), then validated.
A sample whose image cannot be read becomes a failed row at once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from data.images import QWEN_VL_UTILS, PixelRange, image_size, open_rgb
from data.manifest import SCORE_SCHEMA, empty_row
from data.models import DTYPES
from score.config import ScoreConfig
from score.model_info import QWEN_VL_TYPES, checkpoint_dtype, model_type
from score.parsers import PARSERS
from score.templates import TEMPLATES, Question, Template, caption_template, load_template, protocol_template

SKELETON_TOKENS = 32  # room for an answer's JSON punctuation and numbers
DEFAULT_PIXELS = PixelRange(32 * 32, 1024 * 1024)  # our own templates: the aspect ratio kept, at most 1 MP
DEFAULT_SAMPLING = {"temperature": 0.0, "max_tokens": 512}
# Qwen's chat control tokens: what a judge behind an API (whose tokenizer we do not hold) must not read in a prompt
QWEN_CONTROL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>", "<|vision_pad|>")


def resolve_template(config: ScoreConfig, task: str) -> Template:
    if task == "custom":
        if not config.template_file:
            raise ValueError("--task custom needs --template-file")
        return load_template(config.template_file)
    if task == "caption":
        return caption_template(config.prompt) if config.prompt else TEMPLATES["caption"]
    return protocol_template(config.protocol, task, config.num_pass, config.reduction)


RANDOM_JUDGES = ("tiny:qwen3vl", "tiny:qwen25vl")  # random weights: valid JSON only when a grammar forces it


def decoding(config: ScoreConfig, template: Template) -> str:
    """`auto`: free text read by the protocol's parser where the template has one, except for the tiny
    random test judges; else the schema."""
    if config.decoding != "auto":
        return config.decoding
    return "free" if template.parser and config.model not in RANDOM_JUDGES else "schema"


def pixel_range(config: ScoreConfig, template: Template) -> PixelRange | None:
    """The range images are brought into before the judge's processor: a protocol's own (qwen-vl-utils'
    `fetch_image`, which both references call; none on a GPT judge's path, which sends the image as it
    is), else at most 1 MP; --min-pixels / --max-pixels replace the bounds."""
    if template.parser and config.backend == "openai":
        base = None
    else:
        base = QWEN_VL_UTILS if template.parser else DEFAULT_PIXELS
    if config.max_pixels is None and config.min_pixels is None:
        return base
    base = base or DEFAULT_PIXELS
    return PixelRange(config.min_pixels or base.min_pixels, config.max_pixels or base.max_pixels, base.factor)


def processor_range_applies(config: ScoreConfig, template: Template) -> bool:
    """Whether the judge's processor runs with its own pixel range (the protocols, as their references
    run it, unless --min/--max-pixels are given) rather than ours."""
    return bool(template.parser) and config.max_pixels is None and config.min_pixels is None


def processor_kwargs(config: ScoreConfig, model: str, template) -> dict:
    """The HF processor's keyword arguments: the user's; none for a protocol, whose reference runs the
    judge's processor with its own settings; else, for Qwen-VL processors, the judge's pixel range
    (`size`, not min/max_pixels: transformers drops those as call kwargs in 5.23). Other processors
    take no pixel range of theirs; images reach them in the range already."""
    if config.mm_processor_kwargs:
        return json.loads(config.mm_processor_kwargs)
    pixels = pixel_range(config, template)
    if pixels and not processor_range_applies(config, template) and model_type(model).startswith(QWEN_VL_TYPES):
        return {"size": {"longest_edge": pixels.max_pixels, "shortest_edge": pixels.min_pixels}}
    return {}


def engine_dtype(config: ScoreConfig, model: str, device: str) -> str:
    """--dtype auto: the checkpoint's own dtype (fp16 for an AWQ judge, as upstream loads it), else
    bf16 on GPUs and fp32 on CPUs."""
    if config.dtype != "auto":
        return DTYPES[config.dtype]
    return checkpoint_dtype(model) or ("bfloat16" if device == "cuda" else "float32")


@dataclass
class Request:
    question: str          # the answer's name: the question's, with `#pass` when there are several
    prompt: str            # rendered chat prompt with image placeholders
    images: list
    schema: dict | None    # the grammar the answer is forced into (schema decoding), else None
    seed: int = 0
    messages: list = field(default_factory=list)  # the chat messages the prompt was rendered from


@dataclass
class Prepared:
    item: dict
    requests: list[Request] = field(default_factory=list)
    engine_inputs: list = field(default_factory=list)  # vLLM backend: the requests, rendered
    error: str | None = None
    asks: int = 1                                      # how many times the questions have been asked
    started_at: float = field(default_factory=time.time)


def image_of(item: dict, role: str):
    """A sample's image in a role (`image`: judged; `source`: the edit's input): the one a request sent
    (`image_data`, `source_data`: a PIL image in memory, or the file its bytes were spilled to; see
    score/scorer.py), else its own file."""
    data = item.get(f"{role}_data")
    return data if data is not None else item.get("image_path" if role == "image" else "source_image")


@dataclass(frozen=True)
class Reading:
    """The answers of one asking, read: per pass {question: answer}, or why not."""

    passes: list[dict]
    error: str | None = None
    retry: bool = False  # the reference would ask again
    guess: bool = False  # the reference would invent a score


class Judge:
    """Template + tokenizer: builds requests and rows. Thread-safe (used by the decode threads)."""

    def __init__(self, config: ScoreConfig, template: Template, tokenizer, seen_max_pixels: int | None = None):
        self.config, self.template, self.tokenizer = config, template, tokenizer
        self.decoding = decoding(config, template)
        self.pixels = pixel_range(config, template)
        # what the judge sees at most: our range, or its processor's own when that is smaller
        known = [p for p in (self.pixels.max_pixels if self.pixels else None, seen_max_pixels) if p]
        self.max_pixels = min(known) if known else None

    @property
    def parser(self):
        return PARSERS[self.template.parser] if self.template.parser and self.decoding == "free" else None

    def sampling(self, api: bool = False) -> dict:
        """The protocol's sampling for this kind of judge, with the flags that were set on top."""
        if api:  # a protocol's own API settings; else a bounded answer (an endpoint's default may be unbounded)
            own = self.template.api_sampling if self.template.parser else {"max_tokens": DEFAULT_SAMPLING["max_tokens"]}
        else:
            own = {**DEFAULT_SAMPLING, **self.template.sampling}
        flags = {k: v for k, v in (("temperature", self.config.temperature), ("max_tokens", self.config.max_tokens))
                 if v is not None}
        return {**own, **flags}

    @property
    def max_tokens(self) -> int:
        return self.sampling()["max_tokens"]

    def messages(self, question: Question, prompt: str) -> list[dict]:
        """One question as chat messages: the images first, then the text, as the protocols send it."""
        content = [{"type": "image"} for _ in question.images] + [{"type": "text", "text": question.render(prompt)}]
        system = [{"role": "system", "content": self.template.system}] if self.template.system is not None else []
        return system + [{"role": "user", "content": content}]

    def control_tokens(self) -> tuple[str, ...]:
        """The tokenizer's special tokens: written in a prompt, they would be read as chat markup."""
        if self.tokenizer is None:
            return QWEN_CONTROL_TOKENS
        added = [t.content for t in getattr(self.tokenizer, "added_tokens_decoder", {}).values() if t.special]
        return tuple(dict.fromkeys([*self.tokenizer.all_special_tokens, *added]))

    def prepare(self, item: dict) -> Prepared:
        prepared = Prepared(item)
        try:
            text = item.get("prompt") or ""
            forged = [t for t in self.control_tokens() if t in text]
            if forged:  # a prompt that could open a turn of its own and answer for the judge
                raise ValueError(f"the prompt holds the chat control token {min(forged, key=text.find)!r}, which the "
                                 "judge would read as markup, not text; remove it from the input")
            images = self._images(item)
            seed = self.template.sampling.get("seed", 0)
            for n in range(self.template.num_pass):
                for q in self.template.questions:
                    name = q.name if self.template.num_pass == 1 else f"{q.name}#{n}"
                    messages = self.messages(q, text)
                    grammar = self._bounded(q.schema) if self.decoding == "schema" else None
                    prepared.requests.append(Request(name, self._render(messages), [images[r] for r in q.images],
                                                     grammar, seed + n, messages))
        except Exception as exc:  # noqa: BLE001 - unreadable input: a failed row, not a dead replica
            prepared.error = f"{type(exc).__name__}: {exc}"
        return prepared

    def _images(self, item: dict) -> dict:
        """Each role's image in the judge's pixel range; the judged one first resized to the source's
        size when the protocol does that (GEdit-Bench and EditScore compare them at equal size)."""
        roles = {r for q in self.template.questions for r in q.images}
        images = {}
        if "source" in roles:
            images["source"] = open_rgb(image_of(item, "source"), self.pixels)
        if "image" in roles:
            size = image_size(image_of(item, "source")) if self.template.resize_to_source and "source" in roles else None
            images["image"] = open_rgb(image_of(item, "image"), self.pixels, resize_to=size)
        return images

    def _render(self, messages: list[dict]) -> str:
        if self.tokenizer is None:  # a judge behind an API renders its own prompts
            return ""
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
                   template_version=self.template.version, attempt=item.get("attempt", 1),
                   decoding=self.decoding, max_pixels=self.max_pixels)
        return row

    def failed(self, item: dict, reason: str, started_at: float | None = None) -> dict:
        row = self.base_row(item)
        row.update(status="failed", error=reason, started_at=started_at or time.time(),
                   duration_s=time.time() - (started_at or time.time()))
        return row

    def ask_again(self, prepared: Prepared, texts: dict[str, str]) -> bool:
        """True when the answers cannot be read and the protocol asks both questions again; the
        caller then sends the same requests once more."""
        reading = self.read(prepared, texts)
        if reading.error is None or not reading.retry or prepared.asks > self.template.reasks or not self.config.reask:
            return False
        prepared.asks += 1
        return True

    def finish(self, prepared: Prepared, texts: dict[str, str], prompt_tokens: int, output_tokens: int) -> dict:
        row = self.base_row(prepared.item)
        row.update(raw_response=json.dumps(texts, ensure_ascii=False), prompt_tokens=prompt_tokens,
                   output_tokens=output_tokens, started_at=prepared.started_at, asks=prepared.asks,
                   duration_s=time.time() - prepared.started_at, upstream_guess=False)
        reading = self.read(prepared, texts)
        error = reading.error
        if error is None:
            try:
                scores = self.template.combine(reading.passes)
            except (ValueError, KeyError, TypeError) as exc:
                error = f"{type(exc).__name__}: {exc}"
        if error is not None:
            parser = self.parser
            guess = reading.guess or (reading.retry and parser is not None and parser.guesses_next(prepared.asks))
            asked = f" (asked {prepared.asks} times)" if prepared.asks > 1 else ""
            said = "; upstream would have guessed a score here" if guess else ""
            row.update(status="failed", error=f"invalid answer{asked}: {error}{said}", upstream_guess=guess)
            return row
        scores["sub_scores"] = json.dumps(scores["sub_scores"])
        row.update(scores, status="ok")
        return row

    def read(self, prepared: Prepared, texts: dict[str, str]) -> Reading:
        """Every answer of this asking read as the decoding mode says, or the first that cannot be."""
        passes: list[dict] = [{} for _ in range(self.template.num_pass)]
        parser = self.parser
        for r in prepared.requests:
            question, _, n = r.question.partition("#")
            if parser is None:
                try:
                    passes[int(n or 0)][question] = parse_answer(texts[r.question], r.schema or self._question(question))
                except (ValueError, KeyError) as exc:
                    return Reading(passes, f"{r.question}: {exc}", retry=True)
                continue
            parsed = parser.read(texts.get(r.question, ""), question, prepared.asks)
            if parsed.status != "ok":
                return Reading(passes, f"{r.question}: {parsed.reason}", retry=parsed.status == "retry",
                               guess=parsed.status == "guess")
            passes[int(n or 0)][question] = parsed.answer
        return Reading(passes)

    def _question(self, name: str) -> dict | None:
        return next(q.schema for q in self.template.questions if q.name == name)


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
