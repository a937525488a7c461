"""Judge and caption prompt templates, their JSON schemas, and how answers become scores.

A template asks one or more questions per sample; each question names the images it shows
(`source`, the input image; `image`, the image being judged), in order, and the JSON schema its
answer follows under `--decoding schema` (None for free text). Templates are versioned: change a
prompt, a schema or the scoring, bump the version; every score row records name and version.

Published protocols, reproduced as their reference code runs them (texts in score/protocol_text.py,
answer parsers in score/parsers.py):
- `viescore-edit` / `viescore-t2i` (VIEScore, as GEdit-Bench runs it): one user message, images
  first, no system message; the judge writes free text, read by VIEScore's `mllm_output_to_dict`;
  SC = min of the SC list, PQ = min of the PQ list, overall = sqrt(SC * PQ). The edited image is
  resized to the source's size first (GEdit-Bench's `test_gedit_score.py`). Greedy, 512 tokens
  (its Qwen2.5-VL judge); 1400 tokens at the API's default temperature for GPT judges (its GPT path).
  An answer that does not parse: both questions are asked once more (VIEScore's `max_tries = 1`),
  then the row fails (upstream guesses a random score there; we never do).
- `editscore-edit` (EditScore 0.2, `EditScore.evaluate`): reasoning-first context, scores 0-25
  rescaled to 0-10, read by EditScore's parser (json_repair), `num_pass` passes sampled at
  temperature 0.7 (top_p 0.9, top_k 20, seed 42 + pass), averaged (`average_last`) or overall from
  the averaged parts (`average_first`); rows name its fields (prompt_following, consistency,
  perceptual_quality). One re-ask (its `max_tries = 2`), then the row fails (its third round guesses).
genscore's own earlier prompts stay as `genscore-edit` / `genscore-t2i` (version 1), so older
runs stay readable; they are not any published protocol.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Literal

import yaml

from score import protocol_text as P


@dataclass(frozen=True)
class Question:
    name: str
    text: str                       # the exact text; `placeholder` is replaced by the prompt
    images: tuple[str, ...]         # "source" and/or "image", in the order shown
    schema: dict | None = None      # JSON schema of the answer; None for free text
    placeholder: str = "{prompt}"   # "{prompt}": str.format (genscore, custom); else a literal tag

    def render(self, prompt: str) -> str:
        if self.placeholder == "{prompt}":
            return self.text.format(prompt=prompt)
        return self.text.replace(self.placeholder, prompt)


@dataclass(frozen=True)
class Template:
    name: str
    version: str
    system: str | None                # None: no system message (the protocols send none)
    questions: tuple[Question, ...]
    semantics: tuple[str, ...] = ()   # named-field scoring: fields whose min is SC
    quality: tuple[str, ...] = ()     # fields whose min is PQ
    overall: str | None = None        # for custom templates: the field that is the overall score
    scoring: Literal["fields", "score-lists"] = "fields"  # score-lists: VIEScore's {"score": [...]}
    score_names: dict = field(default_factory=dict)       # question -> names of its list positions
    score_range: int = 10             # answers run 0..score_range, reported on 0..10
    reasks: int = 0                   # times both questions are asked again after an unparseable answer
    resize_to_source: bool = False    # resize the judged image to the source's size (GEdit-Bench)
    sampling: dict = field(default_factory=dict)      # the protocol's own sampling, judges we load (flags may override)
    api_sampling: dict = field(default_factory=dict)  # the same for judges behind an OpenAI-compatible API
    parser: str | None = None         # the protocol's answer parser (score/parsers.py) for free decoding
    quality_field: str | None = None  # also report min(PQ) under this name (EditScore's perceptual_quality)
    num_pass: int = 1
    reduction: Literal["average_last", "average_first"] = "average_last"

    def combine(self, passes: list[dict[str, dict | str]]) -> dict:
        """Score columns from the parsed answers of every question, one dict per pass."""
        if self.scoring == "score-lists":
            return self._combine_lists(passes)
        answers = passes[0]
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
        out["reasoning"] = _reasoning(answers)
        texts = [a for a in answers.values() if isinstance(a, str)]
        out["caption"] = texts[0].strip() if texts else None
        return out

    def _combine_lists(self, passes: list[dict[str, dict]]) -> dict:
        scale = self.score_range / 10
        per_pass = []
        for answers in passes:
            sc, pq = [v / scale for v in answers["sc"]["score"]], [v / scale for v in answers["pq"]["score"]]
            subs = {name: v for q, values in (("sc", sc), ("pq", pq))
                    for name, v in zip(self.score_names.get(q, ()), values)}
            if self.quality_field:
                subs[self.quality_field] = min(pq)
            per_pass.append({"SC": min(sc), "PQ": min(pq), "O": math.sqrt(min(sc) * min(pq)), "first_sc": sc[0], **subs})
        avg = {k: mean(p[k] for p in per_pass) for k in per_pass[0]}
        overall = avg["O"]
        if self.reduction == "average_first":  # EditScore.evaluate: sqrt(mean prompt_following x mean PQ)
            overall = math.sqrt(avg["first_sc"] * avg["PQ"])
        subs = {k: v for k, v in avg.items() if k not in ("SC", "PQ", "O", "first_sc")}
        return {"sub_scores": subs, "semantics": avg["SC"], "quality": avg["PQ"], "overall": overall,
                "reasoning": _reasoning(passes[0]), "caption": None}


def _reasoning(answers: dict) -> str | None:
    reasons = [str(a["reasoning"]) for a in answers.values() if isinstance(a, dict) and a.get("reasoning")]
    return " | ".join(reasons) or None


def score_list_schema(n: int, score_range: int = 10, reasoning_first: bool = False) -> dict:
    """VIEScore's answer shape: a list of exactly `n` integers 0..score_range and a reasoning string,
    in the order the protocol's prompt shows them."""
    score = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": score_range},
             "minItems": n, "maxItems": n}
    props = {"reasoning": {"type": "string"}, "score": score} if reasoning_first else \
        {"score": score, "reasoning": {"type": "string"}}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def score_schema(*names: str, reasoning_chars: int = 300) -> dict:
    """genscore v1's answer shape: reasoning first, then named integer scores 0-10."""
    props: dict = {"reasoning": {"type": "string", "maxLength": reasoning_chars}}
    props.update({n: {"type": "integer", "minimum": 0, "maximum": 10} for n in names})
    return {"type": "object", "properties": props, "required": ["reasoning", *names], "additionalProperties": False}


def _viescore(task: str) -> Template:
    """VIEScore's two questions for `edit` ("tie" upstream) or `t2i`, joined as viescore/__init__.py does."""
    context = P.VIESCORE_CONTEXT_NO_DELIMIT
    edit = task == "edit"
    rules = [P.VIESCORE_PROMPTS_0SHOT_TWO_IMAGE_EDIT_RULE, P.VIESCORE_PROMPTS_0SHOT_TIE_RULE_SC] if edit else \
        [P.VIESCORE_PROMPTS_0SHOT_ONE_IMAGE_GEN_RULE, P.VIESCORE_PROMPTS_0SHOT_T2I_RULE_SC]
    tag = "<instruction>" if edit else "<prompt>"
    sc = Question("sc", "\n".join([context, *rules]), ("source", "image") if edit else ("image",),
                  score_list_schema(2 if edit else 1), tag)
    pq = Question("pq", "\n".join([context, P.VIESCORE_PROMPTS_0SHOT_RULE_PQ]), ("image",), score_list_schema(2), tag)
    names = _EDIT_NAMES if edit else {"sc": ("prompt_alignment",), "pq": _EDIT_NAMES["pq"]}
    # GEdit-Bench's Qwen2.5-VL judge: greedy, max_new_tokens 512; its GPT path: max_tokens 1400, no temperature.
    return Template(name=f"viescore-{task}", version="2", system=None, questions=(sc, pq), scoring="score-lists",
                    score_names=names, reasks=1, resize_to_source=edit, parser="viescore",
                    sampling={"temperature": 0.0, "max_tokens": 512}, api_sampling={"max_tokens": 1400})


def editscore_edit(num_pass: int = 1, reduction: str = "average_last") -> Template:
    """EditScore's protocol; `num_pass` and `reduction` are part of its version."""
    context, rng = P.EDITSCORE_CONTEXT_NO_DELIMIT_REASONING_FIRST, "25"
    sc = "\n".join([context, P.VIESCORE_PROMPTS_0SHOT_TWO_IMAGE_EDIT_RULE,
                    P.VIESCORE_PROMPTS_0SHOT_TIE_RULE_SC.replace("10", rng)])
    pq = "\n".join([context, P.VIESCORE_PROMPTS_0SHOT_RULE_PQ.replace("10", rng)])
    schema = score_list_schema(2, 25, reasoning_first=True)
    return Template(
        name="editscore-edit", version=f"2-pass{num_pass}-{reduction}", system=None,
        questions=(Question("sc", sc, ("source", "image"), schema, "<instruction>"),
                   Question("pq", pq, ("image",), schema, "<instruction>")),
        scoring="score-lists", score_names={"sc": ("prompt_following", "consistency")}, score_range=25, reasks=1,
        resize_to_source=True, parser="editscore", quality_field="perceptual_quality",
        # its vLLM judges' SamplingParams; its OpenAI path sends neither max_tokens nor temperature
        sampling={"temperature": 0.7, "top_p": 0.9, "top_k": 20, "seed": 42, "max_tokens": 512},
        num_pass=num_pass, reduction=reduction,
    )


_EDIT_NAMES = {"sc": ("editing_success", "over_editing"), "pq": ("naturalness", "artifacts")}

GENSCORE_SYSTEM = (
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
    "viescore-edit": _viescore("edit"),
    "viescore-t2i": _viescore("t2i"),
    "editscore-edit": editscore_edit(),
    "genscore-edit": Template(
        name="genscore-edit", version="1", system=GENSCORE_SYSTEM,
        questions=(Question("sc", _SC_EDIT, ("source", "image"), score_schema("editing_success", "over_editing")),
                   _PQ_QUESTION),
        semantics=("editing_success", "over_editing"), quality=("naturalness", "artifacts"),
    ),
    "genscore-t2i": Template(
        name="genscore-t2i", version="1", system=GENSCORE_SYSTEM,
        questions=(Question("sc", _SC_T2I, ("image",), score_schema("prompt_alignment")), _PQ_QUESTION),
        semantics=("prompt_alignment",), quality=("naturalness", "artifacts"),
    ),
    "caption": Template(
        name="caption", version="1", system="You are a helpful assistant.",
        questions=(Question("caption", "Describe the shape in at most 30 words.", ("image",), None),),
    ),
}
PROTOCOLS = ("viescore", "editscore", "genscore")


def protocol_template(protocol: str, task: str, num_pass: int = 1, reduction: str = "average_last") -> Template:
    """The template a protocol uses for a task (edit or t2i)."""
    if protocol == "editscore":
        if task != "edit":
            raise ValueError("--protocol editscore judges edits only (EditScore has no text-to-image variant)")
        return editscore_edit(num_pass, reduction)
    if num_pass != 1:
        raise ValueError(f"--num-pass applies to --protocol editscore; {protocol} asks each question once")
    return TEMPLATES[f"{protocol}-{task}"]


def caption_template(prompt: str) -> Template:
    """The caption template with the user's own instruction; its text is part of the version."""
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
            name=spec["name"], version=str(spec["version"]), system=spec.get("system", GENSCORE_SYSTEM),
            questions=questions, semantics=tuple(spec.get("semantics", ())), quality=tuple(spec.get("quality", ())),
            overall=spec.get("overall"),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: a template needs name, version and questions (name, text, images, schema): "
                         f"missing {exc}") from exc
