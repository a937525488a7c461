"""gen.pipeline's choices on the real tiny diffusers models."""

import torch
from diffusers import QwenImageTransformer2DModel

from gen.pipeline import fp8_filter


def test_fp8_takes_the_image_stream_of_the_blocks_only(tiny_models):
    # float8 itself needs an sm89+ GPU; which layers it would take is decided here, on the CPU
    transformer = QwenImageTransformer2DModel.from_pretrained(tiny_models["t2i"] / "transformer")
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
