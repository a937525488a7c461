"""The compilable Qwen-Image attention on the real tiny transformer: diffusers' answers, no complex ops."""

import pytest
import torch

from gen.qwen_attention import RealRopeAttnProcessor, use_real_rope
from helpers import transformer_inputs


@pytest.fixture
def transformers(tiny_transformer):
    stock, ours = tiny_transformer(), tiny_transformer()
    assert use_real_rope(ours)
    return stock, ours


def dtypes_compiled(transformer, inputs: dict) -> set[torch.dtype]:
    """The dtypes of every value in the graphs dynamo hands the compiler for the repeated blocks."""
    seen: set[torch.dtype] = set()

    def capture(graph, example_inputs):
        for node in graph.graph.nodes:
            value = node.meta.get("example_value")
            if isinstance(value, torch.Tensor):
                seen.add(value.dtype)
        return graph.forward

    torch._dynamo.reset()
    transformer.compile_repeated_blocks(fullgraph=True, backend=capture)
    with torch.no_grad():
        transformer(**inputs)
    return seen


def test_real_rope_gives_diffusers_answers(transformers):
    stock, ours = transformers
    inputs = transformer_inputs(stock.config)
    with torch.no_grad():
        expected, got = stock(**inputs)[0], ours(**inputs)[0]
    assert all(isinstance(p, RealRopeAttnProcessor) for p in ours.attn_processors.values())
    assert expected.abs().mean() > 0.1
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_real_rope_leaves_no_complex_op_for_the_compiler(transformers):
    stock, ours = transformers
    inputs = transformer_inputs(stock.config)
    assert torch.complex64 in dtypes_compiled(stock, inputs)  # what inductor cannot generate code for
    assert not any(dtype.is_complex for dtype in dtypes_compiled(ours, inputs))


def test_compiled_real_rope_gives_eager_answers(transformers):
    stock, ours = transformers
    inputs = transformer_inputs(stock.config)
    with torch.no_grad():
        expected = stock(**inputs)[0]
        torch._dynamo.reset()
        ours.compile_repeated_blocks(fullgraph=True)  # inductor, as gen.run compiles on a GPU
        got = ours(**inputs)[0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_other_models_keep_their_processors():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                                cross_attention_dim=8, attention_head_dim=2, sample_size=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    before = {name: type(p) for name, p in unet.attn_processors.items()}
    assert not use_real_rope(unet)
    assert {name: type(p) for name, p in unet.attn_processors.items()} == before
