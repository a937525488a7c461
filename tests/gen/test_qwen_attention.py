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


class Traced(Exception):
    """Raised instead of running a captured graph: FlashAttention-3 itself runs on Hopper GPUs only."""


def test_fa3_is_one_opaque_call_in_each_compiled_block(tiny_transformer):
    # what the compiler makes of it shows on any machine: the op's fake gives the shapes
    transformer = tiny_transformer()
    assert use_real_rope(transformer, fa3=True)
    graphs = []

    def capture(graph, example_inputs):
        graphs.append(graph)

        def run(*args):
            raise Traced
        return run

    torch._dynamo.reset()
    transformer.compile_repeated_blocks(fullgraph=True, backend=capture)  # a graph break would raise
    unmasked = dict(transformer_inputs(transformer.config), encoder_hidden_states_mask=None)  # as batch-1 runs are
    with torch.no_grad(), pytest.raises(Traced):
        transformer(**unmasked)
    calls = [str(node.target) for node in graphs[0].graph.nodes if node.op == "call_function"]
    assert sum("fa3_attention" in call for call in calls) == 1
    assert not any("scaled_dot_product" in call for call in calls)


def test_fa3_off_a_hopper_gpu_is_a_clear_error(tiny_models):
    from gen.pipeline import load_pipeline, speed_up

    pipe = load_pipeline(str(tiny_models["t2i"]), "fp32", "cpu")
    with pytest.raises(ValueError, match="--attention-backend fa3: it needs a CUDA GPU, not cpu"):
        speed_up(pipe, "off", "fa3", None, "cpu")
