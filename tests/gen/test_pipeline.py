"""gen.pipeline's choices on the real tiny diffusers models."""

import pytest
import torch

from gen.fused_gelu import LinearGELU
from gen.pipeline import fp8_filter, load_pipeline, speed_up
from gen.qwen_attention import RealRopeAttnProcessor


def test_fp8_takes_the_image_stream_of_the_blocks_only(tiny_transformer):
    # float8 itself needs an sm89+ GPU; which layers it would take is decided here, on the CPU
    transformer = tiny_transformer()
    chosen = fp8_filter(transformer)
    linears = {name: m for name, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    taken = {name.split(".", 2)[2] for name, m in linears.items() if chosen(m, name)}
    assert taken == {"attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "img_mlp.net.0.proj", "img_mlp.net.2"}
    blocks = len(transformer.transformer_blocks)
    assert sum(chosen(m, name) for name, m in linears.items()) == 6 * blocks
    for left in ("attn.add_q_proj", "attn.to_add_out", "txt_mlp.net.2", "img_mod.1", "txt_mod.1"):
        assert not chosen(linears[f"transformer_blocks.0.{left}"], f"transformer_blocks.0.{left}")
    assert not any(chosen(m, name) for name, m in linears.items() if not name.startswith("transformer_blocks."))
    assert not chosen(transformer.transformer_blocks[0].img_norm1, "transformer_blocks.0.img_norm1")


@pytest.mark.parametrize("compile", ["on", "off"])
def test_speed_up_swaps_in_the_compilable_parts_only_when_compiling(tiny_models, compile):
    pipe = load_pipeline(str(tiny_models["t2i"]), "fp32", "cpu")
    speed_up(pipe, compile, None, None, "cpu")
    block = pipe.transformer.transformer_blocks[0]
    compiling = compile == "on"
    assert isinstance(block.attn.processor, RealRopeAttnProcessor) == compiling
    assert isinstance(block.img_mlp.net[0], LinearGELU) == compiling
    assert (block._compiled_call_impl is not None) == compiling
