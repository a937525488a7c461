"""What the parent reads from a judge's config before any replica starts: context and memory."""

import pytest

from score.model_info import check_fits, context_length, estimate_parameters

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
