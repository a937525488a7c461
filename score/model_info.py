"""What the judge's own config.json says, read in the parent before any replica starts."""

from __future__ import annotations

import json
from pathlib import Path

QWEN_VL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
DEFAULT_CONTEXT = 8192


def _config(model: str, name: str = "config.json") -> dict | None:
    """A JSON file (config.json by default) of a model folder or of a cached hub id, as a dict; None
    when it is not here (the parent reads files only: importing transformers or asking the hub costs
    seconds per command)."""
    path = Path(model) / name
    if not path.exists():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, name) if model.count("/") == 1 else None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _text(config: dict) -> dict:
    return config.get("text_config") or config


def model_type(model: str) -> str:
    config = _config(model)
    return config.get("model_type", "") if config is not None else ""


def max_positions(model: str) -> int | None:
    """The model's context limit (its text config's max_position_embeddings), None if unknown."""
    config = _config(model)
    return _text(config).get("max_position_embeddings") if config is not None else None


def checkpoint_dtype(model: str) -> str | None:
    """The weights' dtype the checkpoint names (torch_dtype, or dtype in newer configs), as torch spells it."""
    config = _config(model)
    if config is None:
        return None
    for part in (config, _text(config)):
        dtype = part.get("torch_dtype") or part.get("dtype")
        if isinstance(dtype, str):
            return dtype.removeprefix("torch.")
    return None


def adapter_rank(adapter: str, default: int = 16) -> int:
    """A LoRA adapter's rank, from its adapter_config.json (`r`): what vLLM must be ready for."""
    return int((_config(adapter, "adapter_config.json") or {}).get("r", default))


def processor_pixels(model: str) -> tuple[int, int, int] | None:
    """(min pixels, max pixels, side factor) of the judge's own image processor (Qwen-VL's
    preprocessor_config.json: size.shortest_edge/longest_edge or min/max_pixels; patch x merge), or None."""
    config = _config(model, "preprocessor_config.json") or (_config(model, "processor_config.json") or {}).get(
        "image_processor")  # hub checkpoints keep the first; transformers 5 saves the second
    if not config or "patch_size" not in config:
        return None
    size = config.get("size") or {}
    low = size.get("shortest_edge", config.get("min_pixels"))
    high = size.get("longest_edge", config.get("max_pixels"))
    if not (low and high):
        return None
    return int(low), int(high), int(config["patch_size"]) * int(config.get("merge_size", 1))


def image_tokens(model: str, max_pixels: int | None) -> int | None:
    """The most tokens one image can take in the judge: the pixels it may see over one token's patch."""
    own = processor_pixels(model)
    if own is None:
        return None
    seen = min(max_pixels, own[1]) if max_pixels else own[1]
    return seen // own[2] ** 2


def context_length(model: str, asked: int | None, needed: int | None = None) -> tuple[int, str | None]:
    """--max-model-len: by default the length a sample needs (`needed`: its images at the largest size
    the judge may see, the prompt and the answer), at least 8192, within the model's own limit; an ask
    above the limit is lowered to it. Returns the length and a note to print when it falls short."""
    limit = max_positions(model)
    if asked is None:
        length = max(DEFAULT_CONTEXT, needed or 0)
        length = min(limit, length) if limit else length
    else:
        length = min(asked, limit) if limit else asked
    if asked is not None and limit and asked > limit:
        return length, f"--max-model-len {asked} is above the judge's limit ({limit} positions); using {limit}"
    if needed and length < needed:
        why = "the judge's limit" if asked is None else "--max-model-len"
        return length, (f"a sample's images at the largest size the judge may see need {needed} positions, above "
                        f"{why} ({length}): larger samples will fail as rows; lower --max-pixels to avoid that")
    return length, None


GIB = 1024 ** 3


def reserve_gib(weights_gib: float) -> float:
    """vLLM's own memory beyond weights and KV cache (activation peak, CUDA graphs, sampler buffers):
    an estimate, 1 GiB + 8% of the weights. Calibrated on the one measured case: a 30B-A3B replica
    at 0.45 of an H200 (62.9 GiB) kept 0.05 GiB for KV cache after 57.6 GiB of weights."""
    return 1.0 + 0.08 * weights_gib


def parameter_count(model: str) -> int | None:
    """The checkpoint's parameter count from its safetensors index, else estimated from config.json."""
    index = Path(model) / "model.safetensors.index.json"
    if index.exists():
        total = json.loads(index.read_text()).get("metadata", {}).get("total_size")
        if total:
            return int(total) // 2  # the index counts bytes of bf16 weights
    config = _config(model)
    return estimate_parameters(config) if config is not None else None


def estimate_parameters(config: dict) -> int:
    """Weights of a decoder (dense or mixture of experts) plus its vision tower, from config.json."""
    text = _text(config)
    h, layers, vocab = text["hidden_size"], text["num_hidden_layers"], text["vocab_size"]
    head_dim = text.get("head_dim") or h // text["num_attention_heads"]
    attention = h * head_dim * (2 * text["num_attention_heads"] + 2 * text["num_key_value_heads"])
    experts = text.get("num_experts") or text.get("num_local_experts")
    mlp = experts * (3 * h * text["moe_intermediate_size"] + h) if experts else 3 * h * text["intermediate_size"]
    vision = config.get("vision_config") or {}
    vh = vision.get("hidden_size", 0)
    tower = vision.get("depth", 0) * (4 * vh * vh + 2 * vh * vision.get("intermediate_size", 0))
    embeddings = vocab * h * (1 if config.get("tie_word_embeddings", text.get("tie_word_embeddings")) else 2)
    return layers * (attention + mlp) + embeddings + tower


def kv_bytes_per_token(model: str) -> int | None:
    config = _config(model)
    if config is None:
        return None
    text = _text(config)
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    return 2 * text["num_hidden_layers"] * text["num_key_value_heads"] * head_dim * 2  # K and V, bf16


def check_fits(model: str, gpu_gib: float, share: float, tp: int, max_model_len: int, quantized: bool) -> None:
    """Refuse, before any replica starts, a judge whose weights and one full-length sequence of KV
    cache do not fit in a replica's share of GPU memory; the message names the numbers and remedies."""
    params, kv = parameter_count(model), kv_bytes_per_token(model)
    if params is None or kv is None:
        return  # unknown model: vLLM will say
    weights = params * (1 if quantized else 2) / tp / GIB
    cache = kv * max_model_len / tp / GIB
    budget = gpu_gib * share
    if weights + cache + reserve_gib(weights) > budget:
        raise ValueError(
            f"the judge does not fit: about {weights:.1f} GiB of weights + {cache:.2f} GiB of KV cache for one "
            f"{max_model_len}-token sequence + {reserve_gib(weights):.1f} GiB for vLLM's activations per GPU, but "
            f"a replica gets {budget:.1f} GiB ({share:.2f} of {gpu_gib:.0f} GiB). Use fewer replicas per GPU "
            "(--replicas-per-gpu 1), --quantize fp8, or more GPUs per replica (--tp 2)")
