"""What the parent reads from a judge's config before any replica starts: context and memory."""

import pytest

from score.model_info import check_fits, context_length, estimate_parameters, image_tokens, processor_pixels

# Qwen/Qwen3-VL-30B-A3B-Instruct's config.json (the seeds' judge): 48 layers, 128 experts, 8 active
TEXT_30B = dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=48, num_attention_heads=32,
                num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768,
                vocab_size=151936, max_position_embeddings=262144)
VISION_30B = dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=2048)


@pytest.fixture(scope="module")
def judge_30b(tmp_path_factory):
    from transformers import Qwen3VLMoeConfig

    folder = tmp_path_factory.mktemp("qwen3-vl-30b-a3b")
    Qwen3VLMoeConfig(text_config=TEXT_30B, vision_config=VISION_30B).save_pretrained(folder)
    return str(folder)


def test_two_30b_replicas_do_not_fit_one_h200_and_the_message_says_what_to_change(judge_30b):
    import json
    from pathlib import Path

    assert 30e9 < estimate_parameters(json.loads((Path(judge_30b) / "config.json").read_text())) < 32e9  # "30B" (31.1 B published)
    with pytest.raises(ValueError) as caught:
        check_fits(judge_30b, 139.8, 0.45, 1, 8192, quantized=False)  # --replicas-per-gpu 2
    message = str(caught.value)
    assert "57.6 GiB of weights" in message and "62.9 GiB (0.45 of 140 GiB)" in message
    assert all(remedy in message for remedy in ("--replicas-per-gpu 1", "--quantize fp8", "--tp 2"))
    check_fits(judge_30b, 139.8, 0.9, 1, 8192, quantized=False)  # one replica fits
    check_fits(judge_30b, 139.8, 0.45, 1, 8192, quantized=True)  # two in float8 fit
    check_fits(judge_30b, 139.8, 0.45, 2, 8192, quantized=False)  # two GPUs per replica fit


def test_context_length_follows_the_judge(tiny_models):
    tiny = str(tiny_models["qwen3vl"])  # 4096 positions
    assert context_length(tiny, None) == (4096, None)
    length, note = context_length(tiny, 8192)
    assert length == 4096 and "above the judge's limit (4096 positions)" in note
    assert context_length(tiny, 2048) == (2048, None)
    assert context_length("no-such-org/no-such-judge", None) == (8192, None)  # unknown here: vLLM decides


def test_context_fits_two_images_at_the_protocols_pixel_range(tiny_models, tmp_path):
    import json

    from score.config import ScoreConfig
    from score.run import fit_context
    from score.templates import TEMPLATES

    # the tiny judge's own processor: 1,024..65,536 pixels at multiples of 32 -> at most 64 tokens an image
    tiny = str(tiny_models["qwen3vl"])
    assert processor_pixels(tiny) == (1024, 65536, 32) and image_tokens(tiny, 12845056) == 64
    # Qwen3-VL-8B's own files: qwen-vl-utils' 12,845,056 pixels are 12,544 tokens; two images, the prompt and
    # 512 answer tokens need 26,624 positions, within its 262,144
    judge = tmp_path / "qwen3-vl-8b"
    judge.mkdir()
    (judge / "config.json").write_text(json.dumps({"model_type": "qwen3_vl", "text_config": {
        "max_position_embeddings": 262144}}))
    (judge / "preprocessor_config.json").write_text(json.dumps({
        "size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16, "merge_size": 2}))
    config = ScoreConfig(model=str(judge), task="edit")
    assert fit_context(config, TEMPLATES["viescore-edit"]).max_model_len == 2 * 12544 + 1024 + 512
    # a judge whose limit is lower: its limit, and one line saying what falls short
    (judge / "config.json").write_text(json.dumps({"model_type": "qwen3_vl", "text_config": {
        "max_position_embeddings": 16384}}))
    length, note = context_length(str(judge), None, 26112)
    assert length == 16384 and "need 26112 positions, above the judge's limit (16384)" in note
    assert "lower --max-pixels" in note


def test_dtype_auto_is_the_checkpoints_own(tmp_path, tiny_models, reference):
    import json

    from score.config import ScoreConfig
    from score.judge import engine_dtype

    real = str(reference / "model-configs" / "Qwen3-VL-8B-Instruct")  # "dtype": "bfloat16" in its text_config
    assert engine_dtype(ScoreConfig(), real, "cuda") == "bfloat16"
    awq = tmp_path / "awq"
    awq.mkdir()
    (awq / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl", "torch_dtype": "float16"}))
    assert engine_dtype(ScoreConfig(), str(awq), "cuda") == "float16"  # as GEdit-Bench loads its AWQ judge
    assert engine_dtype(ScoreConfig(dtype="bf16"), str(awq), "cuda") == "bfloat16"  # a flag wins
    assert engine_dtype(ScoreConfig(), str(tiny_models["qwen3vl"]), "cpu") == "float32"  # saved in float32
    assert engine_dtype(ScoreConfig(), "no-such-org/no-such-judge", "cuda") == "bfloat16"  # unknown here
