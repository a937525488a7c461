"""GELU fused into its matmul, on the real tiny Qwen-Image transformer."""

import pytest
import torch
from diffusers.models.activations import GELU

from gen.fused_gelu import LinearGELU, fuse_gelu
from helpers import transformer_inputs

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="cuBLASLt's GELU epilogue needs a CUDA GPU")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_fused_gelu_gives_the_layers_answers(tiny_transformer, device):
    stock, fused = tiny_transformer(device), tiny_transformer(device)
    assert fuse_gelu(fused) == 2 * len(fused.transformer_blocks)  # the image and the text MLP of each block
    assert isinstance(fused.transformer_blocks[0].img_mlp.net[0], LinearGELU)
    assert list(fused.state_dict()) == list(stock.state_dict())
    inputs = transformer_inputs(stock.config, device)
    with torch.no_grad():
        expected, got = stock(**inputs)[0], fused(**inputs)[0]
    assert expected.abs().mean() > 0.1
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_exact_gelu_is_left_alone():
    model = torch.nn.Sequential(GELU(4, 8, approximate="none"), GELU(8, 4, approximate="tanh", bias=False))
    assert fuse_gelu(model) == 0
    assert all(type(layer) is GELU for layer in model)
