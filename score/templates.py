"""Judge and caption prompt templates, their JSON schemas, and how answers become scores.

A template asks one or more questions per sample; each question names the images it shows
(`source`, the input image; `image`, the image being judged) and the JSON schema its answer
must follow (None for free text). Templates are versioned: change a prompt or schema, bump
the version; every score row records it.

VIEScore (edits): semantic consistency from source + edited image as
[editing_success, over_editing], SC = min; perceptual quality from the edited image alone as
[naturalness, artifacts], PQ = min; overall = sqrt(SC * PQ). Text-to-image: SC is prompt
alignment, same PQ and overall.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Question:
    name: str
    text: str                       # may use {prompt}
    images: tuple[str, ...]         # "source" and/or "image", in the order shown
    schema: dict | None = None      # JSON schema of the answer; None for free text


@dataclass(frozen=True)
class Template:
    name: str
    version: str
    system: str
    questions: tuple[Question, ...]
    semantics: tuple[str, ...] = ()   # fields whose min is SC
    quality: tuple[str, ...] = ()     # fields whose min is PQ
    overall: str | None = None        # for custom templates: the field that is the overall score
    extra: dict = field(default_factory=dict)

    def combine(self, answers: dict[str, dict | str]) -> dict:
        """Score columns from the parsed answers of every question."""
        numbers = {k: float(v) for a in answers.values() if isinstance(a, dict)
                   for k, v in a.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        out: dict = {"sub_scores": numbers}
        if self.semantics:
            out["semantics"] = min(numbers[k] for k in self.semantics)
        if self.quality:
            out["quality"] = min(numbers[k] for k in self.quality)
        if self.semantics and self.quality:
            out["overall"] = math.sqrt(out["semantics"] * out["quality"])
        elif self.overall:
            out["overall"] = numbers.get(self.overall)
        reasons = [a.get("reasoning") for a in answers.values() if isinstance(a, dict) and a.get("reasoning")]
        out["reasoning"] = " | ".join(reasons) or None
        texts = [a for a in answers.values() if isinstance(a, str)]
        out["caption"] = texts[0].strip() if texts else None
        return out


def score_schema(*names: str, reasoning_chars: int = 300) -> dict:
    """Reasoning first (the judge thinks before it scores), then integer scores 0-10."""
    props: dict = {"reasoning": {"type": "string", "maxLength": reasoning_chars}}
    props.update({n: {"type": "integer", "minimum": 0, "maximum": 10} for n in names})
    return {"type": "object", "properties": props, "required": ["reasoning", *names], "additionalProperties": False}


JUDGE_SYSTEM = (
    "You are a professional digital artist. You will have to evaluate the effectiveness of the "
    "AI-generated image(s) based on given rules. All the input images are AI-generated. All "
    "human in the images are AI-generated too, so you need not worry about privacy."
)

_SC_EDIT = (
    "Two images will be provided: the first being the original AI-generated image and the second "
    "being an edited version of the first. The objective is to evaluate how successfully the "
    "editing instruction has been executed in the second image. Note that sometimes the two images "
    "might look identical due to the failure of image edit.\n"
    "From scale 0 to 10: editing_success scores how well the editing instruction was followed "
    "(0 = the scene does not follow the instruction at all, 10 = follows it perfectly). "
    "over_editing scores how much the edited image keeps what the instruction did not ask to "
    "change (0 = edited image is completely different from the original, 10 = only the requested "
    "change was made).\nEditing instruction: {prompt}"
)

_SC_T2I = (
    "The image is an AI-generated image according to the text prompt. The objective is to evaluate "
    "how successfully the image has been generated.\nFrom scale 0 to 10: prompt_alignment scores "
    "how well the image follows the prompt (0 = does not follow the prompt at all, 10 = follows it "
    "perfectly).\nText prompt: {prompt}"
)

_PQ = (
    "The image is an AI-generated image. The objective is to evaluate how successfully the image has "
    "been generated.\nFrom scale 0 to 10: naturalness scores how natural the image looks (0 = the "
    "scene does not look natural at all, e.g. wrong sense of distance, shadow or lighting; 10 = "
    "perfectly natural). artifacts scores the absence of artifacts (0 = large portions of distortion, "
    "watermarks, scratches, blurred faces, unusual body parts; 10 = no artifacts)."
)

_PQ_QUESTION = Question("pq", _PQ, ("image",), score_schema("naturalness", "artifacts"))

TEMPLATES: dict[str, Template] = {
    "edit": Template(
        name="viescore-edit", version="1", system=JUDGE_SYSTEM,
        questions=(Question("sc", _SC_EDIT, ("source", "image"), score_schema("editing_success", "over_editing")),
                   _PQ_QUESTION),
        semantics=("editing_success", "over_editing"), quality=("naturalness", "artifacts"),
    ),
    "t2i": Template(
        name="viescore-t2i", version="1", system=JUDGE_SYSTEM,
        questions=(Question("sc", _SC_T2I, ("image",), score_schema("prompt_alignment")), _PQ_QUESTION),
        semantics=("prompt_alignment",), quality=("naturalness", "artifacts"),
    ),
    "caption": Template(
        name="caption", version="1", system="You are a helpful assistant.",
        questions=(Question("caption", "Describe the shape in at most 30 words.", ("image",), None),),
    ),
}


def caption_template(prompt: str) -> Template:
    """The caption template with the user's own instruction; its text is part of the version."""
    import hashlib

    digest = hashlib.sha1(prompt.encode()).hexdigest()[:8]
    base = TEMPLATES["caption"]
    return Template(name="caption", version=f"1-{digest}", system=base.system,
                    questions=(Question("caption", prompt, ("image",), None),))


def load_template(path: str | Path) -> Template:
    """A custom template from YAML: name, version, system, questions (name, text, images, schema),
    and optionally semantics / quality field lists or an `overall` field."""
    spec = yaml.safe_load(Path(path).read_text())
    try:
        questions = tuple(
            Question(q["name"], q["text"], tuple(q.get("images", ["image"])), q.get("schema")) for q in spec["questions"]
        )
        return Template(
            name=spec["name"], version=str(spec["version"]), system=spec.get("system", JUDGE_SYSTEM),
            questions=questions, semantics=tuple(spec.get("semantics", ())), quality=tuple(spec.get("quality", ())),
            overall=spec.get("overall"),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: a template needs name, version and questions (name, text, images, schema): "
                         f"missing {exc}") from exc
