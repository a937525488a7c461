"""The published protocols, checked against their upstream text and arithmetic (golden tests).

VIEScore's prompts come from GEdit-Bench's vendored copy in ../shared/reference (unchanged from
TIGER-AI-Lab/VIEScore); EditScore's from the `editscore` 0.2 package (installed without its
dependencies by scripts/setup.sh). Each upstream file is executed as it is and its strings joined
the way upstream's `VIEScore.__init__` / `EditScore.__init__` join them.
"""

import math
from importlib import metadata

import pytest

from helpers import ROOT, run_cli, shape_image, write_jsonl
from score.config import ScoreConfig
from score.judge import Judge, Prepared, Request
from score.templates import TEMPLATES, editscore_edit, protocol_template

REFERENCE = ROOT.parent / "shared" / "reference" / "GEdit-Bench"
INSTRUCTION = "把天空变成橙色的日落 (make the sky an orange sunset)"


def _exec(path) -> dict:
    namespace: dict = {}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def vie():
    return _exec(REFERENCE / "viescore" / "vie_prompts.py")


@pytest.fixture(scope="module")
def editscore_prompts():
    return _exec(metadata.distribution("editscore").locate_file("editscore/vie_prompts.py"))


def _texts(template, prompt: str) -> dict[str, str]:
    return {q.name: q.render(prompt) for q in template.questions}


def test_viescore_questions_are_upstreams_text(vie):
    # viescore/__init__.py, task "tie" and "t2i": context, rule, SC rule joined by newlines
    context = vie["_context_no_delimit"]
    edit_sc = "\n".join([context, vie["_prompts_0shot_two_image_edit_rule"], vie["_prompts_0shot_tie_rule_SC"]])
    t2i_sc = "\n".join([context, vie["_prompts_0shot_one_image_gen_rule"], vie["_prompts_0shot_t2i_rule_SC"]])
    pq = "\n".join([context, vie["_prompts_0shot_rule_PQ"]])
    assert _texts(TEMPLATES["viescore-edit"], INSTRUCTION) == {
        "sc": edit_sc.replace("<instruction>", INSTRUCTION), "pq": pq}
    assert _texts(TEMPLATES["viescore-t2i"], INSTRUCTION) == {"sc": t2i_sc.replace("<prompt>", INSTRUCTION), "pq": pq}
    # images: edit SC sees [source, edited], PQ the edited image alone (image_prompts[-1])
    edit = TEMPLATES["viescore-edit"]
    assert [q.images for q in edit.questions] == [("source", "image"), ("image",)]
    assert edit.system is None and edit.reasks == 1 and edit.resize_to_source


def test_editscore_questions_are_upstreams_text(vie, editscore_prompts):
    # EditScore.__init__: reasoning-first context, every "10" of the rules replaced by the range (25)
    context = editscore_prompts["_context_no_delimit_reasoning_first"]
    sc = "\n".join([context, editscore_prompts["_prompts_0shot_two_image_edit_rule"],
                    editscore_prompts["_prompts_0shot_tie_rule_SC"].replace("10", "25")])
    pq = "\n".join([context, editscore_prompts["_prompts_0shot_rule_PQ"].replace("10", "25")])
    template = editscore_edit(num_pass=3, reduction="average_first")
    assert _texts(template, INSTRUCTION) == {"sc": sc.replace("<instruction>", INSTRUCTION), "pq": pq}
    assert template.sampling == {"temperature": 0.7, "top_p": 0.9, "top_k": 20, "seed": 42, "max_tokens": 512}
    assert template.reasks == 2 and template.score_range == 25


def test_messages_are_one_user_turn_with_the_images_first():
    judge = Judge(ScoreConfig(), TEMPLATES["viescore-edit"], tokenizer=None)
    sc, pq = (judge.messages(q, INSTRUCTION) for q in judge.template.questions)
    # as upstream's prepare_input: [{"role": "user", "content": [image, ..., text]}], no system turn
    assert [m["role"] for m in sc] == ["user"] and [p["type"] for p in sc[0]["content"]] == ["image", "image", "text"]
    assert [p["type"] for p in pq[0]["content"]] == ["image", "text"]
    assert sc[0]["content"][-1]["text"].endswith(f"Editing instruction: {INSTRUCTION}\n")


def _viescore_reference(sc: list[int], pq: list[int]) -> tuple[float, float, float]:
    """viescore/__init__.py, evaluate(extract_all_score=True)."""
    return min(sc), min(pq), math.sqrt(min(sc) * min(pq))


def _editscore_reference(passes: list[tuple[list[int], list[int]]], reduction: str, score_range: int = 25) -> dict:
    """editscore/__init__.py, EditScore.evaluate: per pass, then the mean; average_first recomputes overall."""
    out = []
    for sc, pq in passes:
        sc_score, pq_score = min(sc) / (score_range / 10), min(pq) / (score_range / 10)
        out.append({"prompt_following": sc[0] / (score_range / 10), "consistency": sc[1] / (score_range / 10),
                    "perceptual_quality": pq_score, "overall": math.sqrt(sc_score * pq_score)})
    mean = {k: sum(o[k] for o in out) / len(out) for k in out[0]}
    if reduction == "average_first":
        mean["overall"] = math.sqrt(mean["prompt_following"] * mean["perceptual_quality"])
    return mean


def test_scores_combine_as_upstream():
    answer = {"sc": {"score": [7, 3], "reasoning": "a"}, "pq": {"score": [9, 6], "reasoning": "b"}}
    combined = TEMPLATES["viescore-edit"].combine([answer])
    assert (combined["semantics"], combined["quality"], combined["overall"]) == _viescore_reference([7, 3], [9, 6])
    passes = [([20, 11], [25, 14]), ([8, 19], [3, 22]), ([25, 25], [10, 0])]
    for reduction in ("average_last", "average_first"):
        answers = [{"sc": {"score": sc}, "pq": {"score": pq}} for sc, pq in passes]
        combined = editscore_edit(3, reduction).combine(answers)
        expected = _editscore_reference(passes, reduction)
        assert combined["overall"] == pytest.approx(expected["overall"])
        assert combined["quality"] == pytest.approx(expected["perceptual_quality"])
        assert combined["sub_scores"]["editing_success"] == pytest.approx(expected["prompt_following"])


def test_answers_take_the_reference_shape():
    (sc, pq) = TEMPLATES["viescore-edit"].questions
    assert list(sc.schema["properties"]) == ["score", "reasoning"]  # the score first, as the prompt shows
    assert sc.schema["properties"]["score"]["minItems"] == sc.schema["properties"]["score"]["maxItems"] == 2
    assert TEMPLATES["viescore-t2i"].questions[0].schema["properties"]["score"]["maxItems"] == 1
    editscore = editscore_edit().questions[0].schema
    assert list(editscore["properties"]) == ["reasoning", "score"]
    assert editscore["properties"]["score"]["items"]["maximum"] == 25
    with pytest.raises(ValueError, match="edits only"):
        protocol_template("editscore", "t2i")


def _prepared(judge: Judge) -> Prepared:
    requests = [Request(q.name, "", [], judge._bounded(q.schema)) for q in judge.template.questions]
    return Prepared({"key": "k", "index": 0, "attempt": 1}, requests)


def test_a_bad_answer_is_asked_again_then_fails_without_a_guess():
    judge = Judge(ScoreConfig(), TEMPLATES["viescore-edit"], tokenizer=None)
    good = {"sc": '{"score":[6,8],"reasoning":"ok"}', "pq": '{"score":[7,7],"reasoning":"ok"}'}
    bad = {**good, "sc": '{"score":[6],"reasoning":"one score is missing"}'}
    prepared = _prepared(judge)
    assert judge.ask_again(prepared, bad) and prepared.asks == 2
    assert not judge.ask_again(prepared, bad)  # VIEScore asks once more, no further
    row = judge.finish(prepared, bad, 10, 10)
    assert row["status"] == "failed" and "asked 2 times" in row["error"] and row["overall"] is None
    assert "one score is missing" in row["raw_response"]
    prepared = _prepared(judge)
    assert not judge.ask_again(prepared, good)
    assert judge.finish(prepared, good, 10, 10)["overall"] == pytest.approx(math.sqrt(6 * 7))


def test_print_prompts_shows_the_exact_messages_without_loading_the_judge(tmp_path, vie):
    src = shape_image(tmp_path / "src.png", (200, 40, 40))
    out = shape_image(tmp_path / "out.png", (40, 40, 200))
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [{"id": "a", "source_image": "src.png", "image_path": "out.png",
                                                    "instruction": INSTRUCTION}])
    proc = run_cli("score.run", "--input", str(tasks), "--output-dir", str(tmp_path / "scores"), "--print-prompts",
                   "--model", "no-such-org/no-such-judge", timeout=120)
    assert f"<image: source = {src}>\n<image: image = {out}>\n" in proc.stdout
    sc = "\n".join([vie["_context_no_delimit"], vie["_prompts_0shot_two_image_edit_rule"],
                    vie["_prompts_0shot_tie_rule_SC"]]).replace("<instruction>", INSTRUCTION)
    assert sc in proc.stdout and "--- system ---" not in proc.stdout
    assert "template viescore-edit v2" in proc.stdout and not (tmp_path / "scores").exists()
