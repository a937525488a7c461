"""What the judge's own config.json says, read in the parent before any replica starts."""

from __future__ import annotations

QWEN_VL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
DEFAULT_CONTEXT = 8192


def _config(model: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model)
    except (OSError, ValueError):  # not reachable offline, or not a transformers model: vLLM will say
        return None


def model_type(model: str) -> str:
    config = _config(model)
    return config.model_type if config is not None else ""


def max_positions(model: str) -> int | None:
    """The model's context limit (its text config's max_position_embeddings), None if unknown."""
    config = _config(model)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "max_position_embeddings", None)


def context_length(model: str, asked: int | None) -> tuple[int, str | None]:
    """--max-model-len: the model's own limit capped at 8192 by default; a larger ask is lowered to
    the limit. Returns the length and a note to print when it was lowered."""
    limit = max_positions(model)
    if asked is None:
        return min(limit or DEFAULT_CONTEXT, DEFAULT_CONTEXT), None
    if limit and asked > limit:
        return limit, f"--max-model-len {asked} is above the judge's limit ({limit} positions); using {limit}"
    return asked, None
