"""The published protocols, checked against their upstream text, preprocessing and arithmetic (golden tests).

Everywhere: the sha256 of each upstream text and of each question as upstream joins it is pinned
here (a one-character change fails). Where the upstream files are present they are compared too:
VIEScore's prompts from GEdit-Bench's vendored copy in ../shared/reference (unchanged from
TIGER-AI-Lab/VIEScore), EditScore's from the `editscore` 0.2 package (installed without its
dependencies by scripts/setup.sh), qwen-vl-utils' `fetch_image` (a dev dependency). The real judges'
own tokenizer, chat template and processor (../shared/reference/model-configs) render the prompts.
"""

import hashlib
import math
from importlib import metadata

import pytest
from PIL import Image

from helpers import run_cli, shape_image, write_jsonl
from score import protocol_text as P
from score.config import ScoreConfig
from score.judge import Judge
from score.templates import TEMPLATES, editscore_edit, protocol_template

INSTRUCTION = "把天空变成橙色的日落 (make the sky an orange sunset)"
REAL_JUDGE = "Qwen/Qwen3-VL-8B-Instruct"  # a real judge's name: free decoding by default (tiny random ones: schema)

# sha256 of each verbatim upstream text (score/protocol_text.py) ...
TEXT_SHA256 = {
    "EDITSCORE_CONTEXT_NO_DELIMIT_REASONING_FIRST": "125d6dcfcbd416925db3b7fac93a35c86deb99e656f89af5ed7cc3aed3cfd5f0",
    "VIESCORE_CONTEXT_NO_DELIMIT": "446482c9035af15092f48235470d6daf29c9930e3f9faa2cd0f722363c74adde",
    "VIESCORE_PROMPTS_0SHOT_ONE_IMAGE_GEN_RULE": "8e4b9821913be8c340c3d083b6d9afd6a32f00365420c553102ab664775a70a0",
    "VIESCORE_PROMPTS_0SHOT_RULE_PQ": "cd929b5619a3ad9311e3054b80afca75f8ee407be89345c324be0b0ca8b5c96b",
    "VIESCORE_PROMPTS_0SHOT_T2I_RULE_SC": "8d74dbc9de223d9fb17166c2c2911094cf9d25e90fb00eccfd2b8d3b217389ce",
    "VIESCORE_PROMPTS_0SHOT_TIE_RULE_SC": "5b9aa479977bc3175329e9ee14d75b55773080e87e3e2181721985be30db6cc6",
    "VIESCORE_PROMPTS_0SHOT_TWO_IMAGE_EDIT_RULE": "369c6b21479e6a853ffe85b11186c9d5ee3ef7388b8c9b5866a434bf113d0f8f",
}
# ... of each question as upstream joins them (placeholders unreplaced) ...
QUESTION_SHA256 = {
    ("viescore-edit", "sc"): "8f529562c2f89f8db51a3f7cc4d487686f676909c21010b67b0e65ec78150de5",
    ("viescore-edit", "pq"): "2473ff2c7406e06545c5c039ceb039ff2604ebacf150868a48f0bf07c9e733b0",
    ("viescore-t2i", "sc"): "17cc0818cedb3bf27b342aefcc9c43819740ba00422696aa4e02beaf67717d1a",
    ("viescore-t2i", "pq"): "2473ff2c7406e06545c5c039ceb039ff2604ebacf150868a48f0bf07c9e733b0",
    ("editscore-edit", "sc"): "2fbb018b0e448b2d6066266556ad88019129b7842073fdae7e48c1ffd54abbf5",
    ("editscore-edit", "pq"): "8249deba103d112dddd4c2e7fe1d5a1c40fe3143dc640a422a19aced0d260c78",
}
# ... and of the upstream files those texts and the parsers were taken from.
UPSTREAM_SHA256 = {
    "GEdit-Bench/viescore/vie_prompts.py": "010234af186eb0a70fcb99047cd32ad1da01bed59ca1a95a01335426417cf838",
    "GEdit-Bench/viescore/utils.py": "5dca6087febf309207df9ac100b86692662310f0cc0825161d9c985189070de1",
    "GEdit-Bench/viescore/__init__.py": "9c76b449b72be9653e7267c8d192f2de150764535b3940581dbd63aabfa93e85",
    "GEdit-Bench/calculate_statistics.py": "efafcdf8815e98b9169afda3f60a2cd8c65b2de19e48454403f734e1c95e5429",
    "GEdit-Bench/test_gedit_score.py": "ec5cf01dfa26e24bcca7724d1707a643ad712449c5b74bfa682b808a7bf570cb",
}
EDITSCORE_SHA256 = {
    "editscore/vie_prompts.py": "14dee0ac57433f096ee3c44aa84577576f546c41df56e19b8d85ac44c175aa29",
    "editscore/utils.py": "2c3cf428c5f1ac0ae3c3a8d5e66b7bfac14ed371c4f71d7546f1d8ca9097affb",
    "editscore/__init__.py": "51e8f6ae77894d4baa647b967eec8c779f0c0c4e3d83f64f434dc67461d776f8",
}


def _sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def test_protocol_texts_are_pinned():
    assert {name: _sha(getattr(P, name)) for name in TEXT_SHA256} == TEXT_SHA256
    templates = {"viescore-edit": TEMPLATES["viescore-edit"], "viescore-t2i": TEMPLATES["viescore-t2i"],
                 "editscore-edit": editscore_edit(num_pass=2, reduction="average_first")}
    assert {(t, q.name): _sha(q.text) for t, template in templates.items()
            for q in template.questions} == QUESTION_SHA256


def _exec(path) -> dict:
    namespace: dict = {}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def vie(reference):
    assert {f: _sha((reference / f).read_bytes()) for f in UPSTREAM_SHA256} == UPSTREAM_SHA256
    return _exec(reference / "GEdit-Bench" / "viescore" / "vie_prompts.py")


@pytest.fixture(scope="module")
def editscore_prompts():
    try:
        dist = metadata.distribution("editscore")
    except metadata.PackageNotFoundError:
        pytest.skip("the editscore package is not installed (scripts/setup.sh installs it)")
    assert {f: _sha(dist.locate_file(f).read_bytes()) for f in EDITSCORE_SHA256} == EDITSCORE_SHA256
    return _exec(dist.locate_file("editscore/vie_prompts.py"))


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


def test_viescore_is_asked_as_gedit_bench_asks_it():
    edit = TEMPLATES["viescore-edit"]
    # images: edit SC sees [source, edited], PQ the edited image alone (image_prompts[-1])
    assert [q.images for q in edit.questions] == [("source", "image"), ("image",)]
    assert edit.system is None and edit.reasks == 1 and edit.resize_to_source and edit.parser == "viescore"
    judge = Judge(ScoreConfig(model=REAL_JUDGE), edit, tokenizer=None)
    # qwen25vl_eval.py: greedy, max_new_tokens 512; mllm_tools/openai.py: max_tokens 1400, no temperature
    assert judge.sampling() == {"temperature": 0.0, "max_tokens": 512}
    assert judge.sampling(api=True) == {"max_tokens": 1400}
    assert Judge(ScoreConfig(max_tokens=96), edit, None).sampling(api=True) == {"max_tokens": 96}  # a flag wins
    assert judge.decoding == "free" and judge.pixels.factor == 28 and judge.pixels.max_pixels == 12845056


def test_editscore_questions_are_upstreams_text(editscore_prompts):
    # EditScore.__init__: reasoning-first context, every "10" of the rules replaced by the range (25)
    context = editscore_prompts["_context_no_delimit_reasoning_first"]
    sc = "\n".join([context, editscore_prompts["_prompts_0shot_two_image_edit_rule"],
                    editscore_prompts["_prompts_0shot_tie_rule_SC"].replace("10", "25")])
    pq = "\n".join([context, editscore_prompts["_prompts_0shot_rule_PQ"].replace("10", "25")])
    template = editscore_edit(num_pass=3, reduction="average_first")
    assert _texts(template, INSTRUCTION) == {"sc": sc.replace("<instruction>", INSTRUCTION), "pq": pq}


def test_editscore_samples_as_its_vllm_judge():
    template = editscore_edit(num_pass=3)
    # qwen3vl_vllm.py: SamplingParams(max_tokens=512, temperature=0.7, top_p=0.9, top_k=20, seed=seed + pass)
    assert Judge(ScoreConfig(), template, None).sampling() == {"temperature": 0.7, "top_p": 0.9, "top_k": 20,
                                                               "seed": 42, "max_tokens": 512}
    assert template.reasks == 1 and template.score_range == 25 and template.resize_to_source


def test_each_pass_is_seeded_as_upstream(tmp_path):
    from score.engine import VLLMStage

    src, out = shape_image(tmp_path / "s.png", (200, 0, 0)), shape_image(tmp_path / "o.png", (0, 0, 200))
    config = ScoreConfig(model=REAL_JUDGE, protocol="editscore", task="edit", num_pass=3)
    judge = Judge(config, editscore_edit(num_pass=3), tokenizer=None)
    prepared = judge.prepare({"key": "k", "source_image": str(src), "image_path": str(out), "prompt": "p"})
    assert [(r.question, r.seed) for r in prepared.requests] == [
        ("sc#0", 42), ("pq#0", 42), ("sc#1", 43), ("pq#1", 43), ("sc#2", 44), ("pq#2", 44)]
    stage = VLLMStage(config)
    params = [stage._params(judge, r) for r in prepared.requests]
    assert [p.seed for p in params] == [42, 42, 43, 43, 44, 44]
    assert {(p.temperature, p.top_p, p.top_k, p.max_tokens) for p in params} == {(0.7, 0.9, 20, 512)}
    assert all(p.structured_outputs is None for p in params)  # free decoding: no grammar


def test_messages_are_one_user_turn_with_the_images_first():
    judge = Judge(ScoreConfig(), TEMPLATES["viescore-edit"], tokenizer=None)
    sc, pq = (judge.messages(q, INSTRUCTION) for q in judge.template.questions)
    # as upstream's prepare_input: [{"role": "user", "content": [image, ..., text]}], no system turn
    assert [m["role"] for m in sc] == ["user"] and [p["type"] for p in sc[0]["content"]] == ["image", "image", "text"]
    assert [p["type"] for p in pq[0]["content"]] == ["image", "text"]
    assert sc[0]["content"][-1]["text"].endswith(f"Editing instruction: {INSTRUCTION}\n")


def _viescore_reference(sc: list[float], pq: list[float]) -> tuple[float, float, float]:
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
    answer = {"sc": {"score": [7.5, 3], "reasoning": "a"}, "pq": {"score": [9, 6], "reasoning": "b"}}
    combined = TEMPLATES["viescore-edit"].combine([answer])
    assert (combined["semantics"], combined["quality"], combined["overall"]) == _viescore_reference([7.5, 3], [9, 6])
    passes = [([20, 11], [25, 14]), ([8, 19], [3, 22]), ([25, 25], [10, 0])]
    for reduction in ("average_last", "average_first"):
        answers = [{"sc": {"score": sc}, "pq": {"score": pq}} for sc, pq in passes]
        combined = editscore_edit(3, reduction).combine(answers)
        expected = _editscore_reference(passes, reduction)
        assert combined["overall"] == pytest.approx(expected["overall"])
        assert combined["quality"] == pytest.approx(expected["perceptual_quality"])
        assert combined["sub_scores"] == pytest.approx({k: expected[k] for k in
                                                        ("prompt_following", "consistency", "perceptual_quality")})


def test_schema_decoding_keeps_the_reference_shape():
    (sc, pq) = TEMPLATES["viescore-edit"].questions
    assert list(sc.schema["properties"]) == ["score", "reasoning"]  # the score first, as the prompt shows
    assert sc.schema["properties"]["score"]["minItems"] == sc.schema["properties"]["score"]["maxItems"] == 2
    assert TEMPLATES["viescore-t2i"].questions[0].schema["properties"]["score"]["maxItems"] == 1
    editscore = editscore_edit().questions[0].schema
    assert list(editscore["properties"]) == ["reasoning", "score"]
    assert editscore["properties"]["score"]["items"]["maximum"] == 25
    with pytest.raises(ValueError, match="edits only"):
        protocol_template("editscore", "t2i")
    # under schema decoding the reasoning is capped to close within the answer's tokens; free: no grammar at all
    schema_judge = Judge(ScoreConfig(decoding="schema", max_tokens=200), TEMPLATES["viescore-edit"], None)
    assert schema_judge._bounded(sc.schema)["properties"]["reasoning"]["maxLength"] == 200 - 32
    assert Judge(ScoreConfig(decoding="schema", max_reasoning_chars=0), TEMPLATES["viescore-edit"],
                 None)._bounded(sc.schema) == sc.schema


# ---- images, as the references prepare them ------------------------------------------------------

def test_edited_image_is_resized_to_the_source_as_upstream_then_brought_into_qwen_vl_utils_range(tmp_path):
    import numpy as np

    fetch_image = pytest.importorskip("qwen_vl_utils", reason="qwen-vl-utils (a dev dependency)").fetch_image
    rng = np.random.default_rng(0)
    source = tmp_path / "src.png"
    Image.fromarray(rng.integers(0, 255, (300, 420, 3), dtype=np.uint8)).save(source)
    edited = tmp_path / "out.png"
    Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)).save(edited)
    for protocol in ("viescore", "editscore"):
        judge = Judge(ScoreConfig(protocol=protocol), protocol_template(protocol, "edit"), tokenizer=None)
        images = judge._images({"source_image": str(source), "image_path": str(edited)})
        # test_gedit_score.py / EditScore's evaluation.py: Image.open(edited).convert("RGB").resize(source.size)
        upstream = Image.open(edited).convert("RGB").resize(Image.open(source).size)
        for role, reference in (("image", upstream), ("source", Image.open(source))):
            expected = fetch_image({"image": reference})  # process_vision_info's resize, both references'
            assert images[role].size == expected.size == (420, 308)
            assert np.array_equal(np.asarray(images[role]), np.asarray(expected)), (protocol, role)


# ---- the real judges' own files: prompts render and images tokenize as the checkpoints do -------

@pytest.fixture(scope="module")
def real_judges(reference):
    from data import tiny

    return {name: tiny.ensure(name) for name in tiny.REAL_CONFIGS}


def test_real_qwen3vl_renders_the_edit_question_as_the_checkpoint(real_judges):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(real_judges["qwen3vl-real"])
    judge = Judge(ScoreConfig(), TEMPLATES["viescore-edit"], processor.tokenizer)
    sc = judge.template.questions[0]
    rendered = judge._render(judge.messages(sc, INSTRUCTION))
    assert rendered == ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|image_pad|>"
                        f"<|vision_end|>{sc.render(INSTRUCTION)}<|im_end|>\n<|im_start|>assistant\n")
    for size, tokens in (((512, 512), 256), ((1024, 768), 768)):
        inputs = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[Image.new("RGB", size)])
        assert int(inputs["image_grid_thw"].prod()) // 4 == tokens


def test_real_qwen25vl_adds_its_system_turn_and_its_own_token_count(real_judges):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(real_judges["qwen25vl-real"])
    judge = Judge(ScoreConfig(), TEMPLATES["viescore-edit"], processor.tokenizer)
    rendered = judge._render(judge.messages(judge.template.questions[1], INSTRUCTION))
    assert rendered.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                               "<|vision_start|><|image_pad|><|vision_end|>You are a professional digital artist.")
    inputs = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[Image.new("RGB", (512, 512))])
    assert int(inputs["image_grid_thw"].prod()) // 4 == 324


def test_real_qwen3vl_scores_in_vllm_with_the_checkpoints_token_counts(real_judges, tmp_path):
    """score.run with the real tokenizer, template and processor in vLLM: each row's prompt tokens are
    the text's tokens plus 256 per 512x512 image and 768 per 1024x768 one (the edited image first
    resized to its source's size), through qwen-vl-utils' rounding and the processor's own."""
    from transformers import AutoTokenizer

    records = []
    for name, size in (("a", (512, 512)), ("b", (1024, 768))):
        Image.new("RGB", size, (200, 30, 30)).save(tmp_path / f"{name}_src.png")
        Image.new("RGB", (640, 480), (30, 30, 200)).save(tmp_path / f"{name}_out.png")
        records.append({"id": name, "source_image": f"{name}_src.png", "image_path": f"{name}_out.png",
                        "instruction": INSTRUCTION})
    src = write_jsonl(tmp_path / "pairs.jsonl", records)
    proc = run_cli("score.run", "--input", str(src), "--output-dir", str(tmp_path / "s"), "--model",
                   str(real_judges["qwen3vl-real"]), "--max-tokens", "8", "--devices", "cpu", "--progress", "none",
                   check=False)
    # random weights write no JSON: both samples fail (exit 1) where upstream would have guessed
    assert proc.returncode == 1 and "upstream would have guessed 2 scores" in proc.stdout, proc.stderr[-3000:]
    import pandas as pd

    rows = pd.read_parquet(tmp_path / "s" / "manifest").set_index("key")
    tok = AutoTokenizer.from_pretrained(real_judges["qwen3vl-real"])
    judge = Judge(ScoreConfig(), TEMPLATES["viescore-edit"], tok)
    text = sum(len(tok(judge._render(judge.messages(q, INSTRUCTION)))["input_ids"]) - len(q.images)
               for q in judge.template.questions)
    for key, per_image in (("a", 256), ("b", 768)):
        row = rows.loc[key]
        assert row["decoding"] == "free" and row["max_pixels"] == 12845056
        assert row["prompt_tokens"] == row["asks"] * (text + 3 * per_image)  # SC: 2 images, PQ: 1


def test_print_prompts_shows_the_exact_messages_without_loading_the_judge(tmp_path):
    src = shape_image(tmp_path / "src.png", (200, 40, 40))
    out = shape_image(tmp_path / "out.png", (40, 40, 200))
    tasks = write_jsonl(tmp_path / "tasks.jsonl", [{"id": "a", "source_image": "src.png", "image_path": "out.png",
                                                    "instruction": INSTRUCTION}])
    proc = run_cli("score.run", "--input", str(tasks), "--output-dir", str(tmp_path / "scores"), "--print-prompts",
                   "--model", "no-such-org/no-such-judge", timeout=120)
    assert f"<image: source = {src}>\n<image: image = {out}>\n" in proc.stdout
    sc = TEMPLATES["viescore-edit"].questions[0]
    assert _sha(sc.text) == QUESTION_SHA256[("viescore-edit", "sc")]  # upstream's text, as pinned above
    assert sc.render(INSTRUCTION) in proc.stdout and "--- system ---" not in proc.stdout
    assert "template viescore-edit v2" in proc.stdout and not (tmp_path / "scores").exists()
