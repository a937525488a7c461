"""The protocols' own answer parsers, ported from their reference code, and what becomes of an answer.

A judge that decodes freely writes what it likes: a code fence, single quotes, `7.5`, prose around
the object. Each protocol reads that text with its reference's own parser:
- VIEScore / GEdit-Bench: `mllm_output_to_dict` and `fix_json` of TIGER-AI-Lab/VIEScore
  `viescore/utils.py` (MIT; GEdit-Bench vendors it unchanged, stepfun-ai/Step1X-Edit `GEdit-Bench/viescore/utils.py`);
- EditScore 0.2: `mllm_output_to_dict` and `robust_json_fix` of `editscore/utils.py` (Apache-2.0),
  which repairs broken JSON with the `json_repair` package.
The ports keep the references' control flow line for line (the golden tests run both on the same
corpus); they differ in one way only: where a reference invents a score (VIEScore draws a random
0-10 once it gives up parsing, EditScore guesses on its third round or after a refusal), the port
says so (`Parsed.status == "guess"`) and the row fails instead. Never a guessed score.

What a parsed answer then needs is what the reference's arithmetic needs: a list of numbers under
"score" (EditScore reads two of the SC list). An answer the parser reads but that arithmetic cannot
use is "retry" where the reference asks again (GEdit-Bench calls `evaluate` again on any exception)
and "error" where it would raise (EditScore's `evaluate`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Literal

import regex as re  # the references' own regex engine

Status = Literal["ok", "retry", "guess", "error"]
DELIMITER = "||V^=^V||"
LIST_OF_TWO = r"^\[\d+, ?\d+\]$"


@dataclass(frozen=True)
class Parsed:
    status: Status
    answer: dict | None = None  # {"score": [...], "reasoning": ...} when ok
    reason: str | None = None   # why not, when not ok


@dataclass(frozen=True)
class AnswerParser:
    """A protocol's parser and its reference's re-ask policy."""

    name: str
    parse: Callable[[str, bool], Parsed]  # (text, give_up) -> Parsed
    give_up_at: int       # the ask from which the reference guesses instead of failing to parse
    blind_guess: bool     # the reference's guess ignores the answer (EditScore), or only replaces an unreadable one
    min_scores: dict      # question -> scores its arithmetic reads
    unusable: Status      # what the reference does with a parsed answer its arithmetic cannot use

    def read(self, text: str, question: str, ask: int) -> Parsed:
        """The answer to `question` at the `ask`-th asking, as the reference would take it."""
        parsed = self.parse(text, ask >= self.give_up_at)
        if parsed.status != "ok":
            return parsed
        problem = _unusable(parsed.answer, self.min_scores.get(question, 1))
        return Parsed(self.unusable, reason=problem) if problem else parsed

    def guesses_next(self, asks: int) -> bool:
        """Whether the reference's next round, after `asks` unreadable ones, would invent a score."""
        return self.blind_guess and asks + 1 >= self.give_up_at


def _unusable(answer, n: int) -> str | None:
    if not isinstance(answer, dict) or "score" not in answer:
        return f"no 'score' in the answer: {str(answer)[:80]!r}"
    scores = answer["score"]
    if not isinstance(scores, list) or len(scores) < n:
        return f"'score' is not a list of {n} or more numbers: {scores!r}"
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores):
        return f"'score' holds a non-number: {scores!r}"
    return None


def _is_int_between_0_and_10(s: str) -> bool:
    try:
        return 0 <= int(s) <= 10
    except ValueError:
        return False


def _json_text(text: str, guess_without_object: bool) -> str | Parsed:
    """The answer's JSON as both references find it: between two delimiters, else from the first '{' to
    the last '}', else a bare `[a, b]` list or number made into an object; with `guess_without_object`
    (VIEScore giving up) an answer without an object is where upstream guesses."""
    if text.count(DELIMITER) == 2:
        start, end = text.find(DELIMITER) + len(DELIMITER), text.rfind(DELIMITER)
    else:
        start, end = text.find("{"), text.rfind("}") + 1
        if start == -1 or end == 0:
            if guess_without_object:  # upstream: random.randint(0, 10)
                return Parsed("guess", reason=f"no JSON object in the answer: {text[:80]!r}")
            bare = _bare_scores(text, text.find("["), text.rfind("]") + 1)
            return json.dumps(bare.answer) if bare.status == "ok" else bare
    if start == -1 or end == -1 or start == end:
        return Parsed("retry", reason="the delimiters were not found correctly in the answer")
    return text[start:end].strip().replace("\n", "")


def _bare_scores(text: str, start: int, end: int) -> Parsed:
    """The references' fallbacks when there is no object: a bare `[a, b]` list, or a bare number."""
    if re.match(LIST_OF_TWO, text[start:end]):
        return Parsed("ok", {"score": json.loads(text[start:end]),
                             "reasoning": "System: output is simply a list of scores"})
    if _is_int_between_0_and_10(text):
        return Parsed("ok", {"score": [int(text)], "reasoning": "System: output is simply a number"})
    return Parsed("retry", reason=f"no JSON object, score list or number in the answer: {text[:80]!r}")


# ---- VIEScore / GEdit-Bench: viescore/utils.py ---------------------------------------------------

def viescore_fix_json(input_str: str) -> str:
    """viescore/utils.py `fix_json`: quote bare keys, wrap bare numbers in lists, quote bare strings."""
    fixed_str = re.sub(r"(\w+):", r'"\1":', input_str)

    def format_value(match):
        key, value, comma = match.groups()
        value = value.strip()
        if re.match(r"^-?\d+(\.\d+)?$", value):
            value = f"[{value}]"
        elif re.match(r"^(true|false|null)$", value, re.IGNORECASE):
            pass
        else:
            value = f'"{value}"'
        return f"{key}: {value}{comma}"

    return re.sub(r'(".*?"):(.*?)(,|})', format_value, fixed_str)


def viescore_parse(text: str, give_up: bool = False) -> Parsed:
    """viescore/utils.py `mllm_output_to_dict(text, give_up_parsing=give_up)`."""
    json_str = _json_text(text, guess_without_object=give_up)
    if isinstance(json_str, Parsed):
        return json_str
    try:
        data = json.loads(json_str)
        if not isinstance(data["score"], list):
            data["score"] = [data["score"]]
    except Exception:  # noqa: BLE001 - upstream's bare except: anything goes to fix_json
        try:
            return Parsed("ok", json.loads(viescore_fix_json(json_str)))
        except Exception:  # noqa: BLE001
            return Parsed("retry", reason=f"JSON that fix_json cannot mend: {json_str[:80]!r}")
    return Parsed("ok", data)


# ---- EditScore 0.2: editscore/utils.py -----------------------------------------------------------

EDITSCORE_REFUSAL = "I'm sorry, but I can't assist with that request."


def _normalize_quotes(s: str) -> str:
    return s.replace("“", '"').replace("”", '"').replace("‘", "'").replace("’", "'")


def _repair_reasoning_field_robust(json_str: str) -> str:
    """editscore/utils.py: escape unescaped double quotes inside the "reasoning" string."""
    pattern = re.compile(r'("reasoning"\s*:\s*")(.*?)(?="\s*[,}])', re.DOTALL)
    return pattern.sub(lambda m: m.group(1) + m.group(2).replace('"', '\\"'), json_str)


def _clean_reasoning(raw: str) -> str:
    raw = raw.replace('\\"', '"').replace("\\'", "'")
    raw = re.sub(r"[“”]", '"', raw)
    return re.sub(r"[‘’]", "'", raw)


def _fallback_repair_json(s: str) -> str:
    """editscore/utils.py `fallback_repair_json`: rebuild {"reasoning", "score": [two floats]} from the
    text between the keys and the first two numbers after "score"."""
    lowered = s.lower()
    m_reason = re.search(r'"?reasoning"?\s*[:：]', lowered)
    m_score = re.search(r'"?score"?\s*[:：]', lowered)
    reasoning_text = ""
    if m_reason and m_score:
        reasoning_raw = s[m_reason.end():m_score.start()].strip()
        reasoning_raw = re.sub(r"^[\s,{\[]+", "", reasoning_raw)
        reasoning_raw = re.sub(r"[\s,}\]]+$", "", reasoning_raw)
        if reasoning_raw.startswith(("'", '"')):
            reasoning_raw = reasoning_raw[1:]
        if reasoning_raw.endswith(("'", '"')):
            reasoning_raw = reasoning_raw[:-1]
        reasoning_text = _clean_reasoning(reasoning_raw).strip()
    else:
        m_loose = re.search(r'"?reasoning"?\s*[:：]\s*["\']?(.*?)["\']?\s*(,|$)', s, re.DOTALL | re.IGNORECASE)
        if m_loose:
            reasoning_text = _clean_reasoning(m_loose.group(1).strip())
    nums = re.findall(r"-?\d+(?:\.\d+)?", s[m_score.end():] if m_score else s)
    scores = [float(n) for n in nums[:2]]
    scores += [0.0] * (2 - len(scores))
    return json.dumps({"reasoning": reasoning_text, "score": scores}, ensure_ascii=False)


def editscore_robust_json_fix(s: str):
    """editscore/utils.py `robust_json_fix`: json_repair, then after each of two fixers, then the rebuild."""
    import json_repair

    try:
        return json_repair.loads(s)
    except Exception:  # noqa: BLE001 - upstream catches everything here
        pass
    for fixer in (viescore_fix_json, _repair_reasoning_field_robust):  # its fix_json is VIEScore's
        s = fixer(s)
        try:
            return json_repair.loads(s)
        except Exception:  # noqa: BLE001
            continue
    try:
        return json_repair.loads(_fallback_repair_json(s))
    except Exception:  # noqa: BLE001
        return False


def editscore_parse(text: str, give_up: bool = False) -> Parsed:
    """editscore/utils.py `mllm_output_to_dict(text, give_up_parsing=give_up)`, on the answer as
    EditScore's vLLM judge returns it (stripped); a refusal makes EditScore give up at once."""
    text = text.strip()
    if give_up or text == EDITSCORE_REFUSAL:  # upstream: [randint(0, range)] * 2
        return Parsed("guess", reason=f"EditScore guesses here: {text[:80]!r}")
    json_str = _json_text(text, guess_without_object=False)
    if isinstance(json_str, Parsed):
        return json_str
    json_str = _normalize_quotes(json_str)
    try:
        data = json.loads(json_str)
        if not isinstance(data["score"], list):
            data["score"] = [data["score"]]
    except Exception:  # noqa: BLE001 - upstream's `except Exception`
        data = editscore_robust_json_fix(json_str)
        if data is False:
            return Parsed("retry", reason=f"JSON that json_repair cannot mend: {json_str[:80]!r}")
    return Parsed("ok", data)


PARSERS = {
    # GEdit-Bench's evaluate: the 2nd ask parses with give_up (a random score where no JSON is found);
    # an exception from the arithmetic makes test_gedit_score.py call evaluate again.
    "viescore": AnswerParser("viescore", viescore_parse, give_up_at=2, blind_guess=False,
                             min_scores={}, unusable="retry"),
    # EditScore.evaluate: max_tries = 2, then a third round that guesses without reading; its
    # arithmetic reads SC[0] and SC[1] and raises on anything else.
    "editscore": AnswerParser("editscore", editscore_parse, give_up_at=3, blind_guess=True,
                              min_scores={"sc": 2}, unusable="error"),
}
