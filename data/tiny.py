"""Tiny offline models shaped like the real ones: `python -m data.tiny [--out DIR]`.

No hub is reachable in tests, CI or on the GPU machine, so the project builds its own models:
- `t2i/`:     a QwenImagePipeline (Qwen-Image shape, ~2 MB),
- `edit/`:    a QwenImageEditPipeline (Qwen-Image-Edit shape),
- `qwen3vl/`: a Qwen3VLForConditionalGeneration with its processor (the judge / captioner),
- `qwen25vl/`: a Qwen2_5_VLForConditionalGeneration with its processor (a second judge architecture),
- `qwen3vl-scripted/`: the tiny Qwen3-VL with weights set so that it always answers `SCRIPTED_ANSWER`
  (free text as a real judge writes it: prose, a code fence, a float score), whatever it is shown,
- `lora/`:    a LoRA for the `t2i` pipeline's transformer (diffusers' `load_lora_weights` format);
- `qwen3vl-lora/`: a LoRA (PEFT format, safetensors) on the `qwen3vl` judge's attention projections;
- `qwen3vl-real/`, `qwen25vl-real/`: tiny random weights behind the real judges' own tokenizer, chat
  template and image processor files (Qwen3-VL-8B-Instruct; the Qwen2.5-VL family of GEdit-Bench's
  Qwen2.5-VL-72B-Instruct-AWQ), copied from `../shared/reference/model-configs` (`GENSCORE_MODEL_CONFIGS`),
  so prompts render and images tokenize as the real checkpoints do. Only where that folder exists.

Every builder is seeded, so two builds give identical files. A build is cached under a key
made from this file's source and the library versions: editing this file rebuilds.
They load through `from_pretrained(path)`, exactly like a hub model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

from data.rundir import file_lock

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = Path(os.environ.get("GENSCORE_TINY_DIR", ROOT / ".cache" / "tiny"))
MODEL_CONFIGS = Path(os.environ.get("GENSCORE_MODEL_CONFIGS", ROOT.parent / "shared" / "reference" / "model-configs"))
REAL_CONFIGS = {"qwen3vl-real": "Qwen3-VL-8B-Instruct", "qwen25vl-real": "Qwen2.5-VL-72B-Instruct-AWQ"}
MODELS = ("t2i", "edit", "qwen3vl", "qwen25vl", "lora", "qwen3vl-scripted", "qwen3vl-lora")

# What the scripted judge writes to every question: the shape real judges give free-decoded (prose
# around a fenced object, a float score, non-ASCII reasoning), which only a tolerant parser reads.
SCRIPTED_ANSWER = ('Here is my evaluation:\n```json\n{\n"score" : [7.5, 8],\n"reasoning" : "天空变成了橙色 '
                   '(the sky is an orange sunset now); the rest is kept."\n}\n```\nI hope this helps.')

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# Qwen-Image drops the first 34 (t2i) / 64 (edit) hidden states: the length of its system
# prompt in Qwen's tokenizer. Training the tiny BPE on these texts makes every word of them a
# single token, so the tiny tokenizer splits them into exactly as many tokens as Qwen's does.
QWEN_IMAGE_SYSTEM_PROMPTS = [
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
    "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n",
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, "
    "objects, background), then explain how the user's text instruction should alter or modify the "
    "image. Generate a new image that meets the user's requirements while maintaining consistency "
    "with the original input where appropriate.<|im_end|>\n<|im_start|>user\n",
]

# A Qwen-style chat template: plain text content or a list of {"type": "image"|"text"} parts.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

WORDS = (
    "a an the red green blue yellow purple orange black white gray pink brown circle square "
    "triangle star heart cube sphere cat dog bird tree house car boat mountain river sky cloud "
    "sun moon flower apple cup chair table lamp book shape size color texture quantity text "
    "spatial relationships objects background image photo picture drawing painting style make "
    "turn change add remove replace into with without on in under over next to near far left "
    "right top bottom small large big tiny bright dark shiny matte wooden metal glass stone "
    "describe score rate edit success over editing naturalness artifacts reasoning json "
    "editing_success over_editing prompt_alignment caption words at most 30 is are of and or "
    "0 1 2 3 4 5 6 7 8 9 10 { } [ ] : , \" . ' "
).split()


def _cache_key() -> str:
    versions = [metadata.version(p) for p in ("torch", "transformers", "diffusers", "tokenizers")]
    return hashlib.sha256(Path(__file__).read_bytes() + repr(versions).encode()).hexdigest()[:16]


def _corpus(seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(3000)]
    return lines + QWEN_IMAGE_SYSTEM_PROMPTS * 200


def build_tokenizer(out: Path, vocab_size: int = 1500):
    """A byte-level BPE with Qwen's special tokens and chat template, saved as Qwen2TokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    # Qwen2's own split pattern, so words tokenize like they do in the real model.
    pattern = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    from tokenizers import Regex

    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = Qwen2TokenizerFast(
        tokenizer_object=tok, unk_token=None, bos_token=None, eos_token="<|im_end|>",
        pad_token="<|endoftext|>", additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 32768
    fast.save_pretrained(out)
    return fast


def token_ids(tok) -> dict[str, int]:
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return {
        "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
        "bos_token_id": ids["<|endoftext|>"],
    }


def vision_token_ids(ids: dict[str, int]) -> dict[str, int]:
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    return {name: ids[name] for name in names}


def build_qwen3vl(out: Path) -> None:
    """Tiny Qwen3-VL (~0.8 M params) with processor; vLLM CPU and transformers both run it."""
    tok = build_tokenizer(out)
    _tiny_qwen3vl(tok).save_pretrained(out)
    save_qwen3vl_processor(out, tok, min_pixels=32 * 32, max_pixels=256 * 256)


def build_qwen3vl_scripted(out: Path) -> None:
    """The tiny Qwen3-VL answering SCRIPTED_ANSWER to anything. The answer is one added token; every
    other token embeds to one direction and the answer token to another; attention and MLP outputs are
    zero, so the last hidden state is the last token's embedding; the head maps the common direction to
    the answer token and the answer's to end-of-turn. Greedy or sampled at 0.7, the answer is the same."""
    import torch
    from tokenizers import AddedToken

    tok = build_tokenizer(out)
    tok.add_tokens([AddedToken(SCRIPTED_ANSWER, special=False, normalized=False)])
    tok.save_pretrained(out)
    model = _tiny_qwen3vl(tok)
    answer, end = tok.convert_tokens_to_ids(SCRIPTED_ANSWER), token_ids(tok)["eos_token_id"]
    text = model.model.language_model
    with torch.no_grad():
        text.embed_tokens.weight.zero_()
        text.embed_tokens.weight[:, 0] = 1.0
        text.embed_tokens.weight[answer] = torch.nn.functional.one_hot(torch.tensor(1), 64).float()
        for layer in text.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        model.lm_head.weight[answer, 0] = 10.0
        model.lm_head.weight[end, 1] = 10.0
    model.save_pretrained(out)
    save_qwen3vl_processor(out, tok, min_pixels=32 * 32, max_pixels=256 * 256)


def _tiny_qwen3vl(tok):
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    ids = token_ids(tok)
    text = dict(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                         "mrope_section": [6, 5, 5], "mrope_interleaved": True},
        eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"],
        bos_token_id=ids["bos_token_id"], tie_word_embeddings=False,
    )
    vision = dict(
        depth=2, hidden_size=64, intermediate_size=128, num_heads=2, patch_size=16,
        spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64,
        num_position_embeddings=256, deepstack_visual_indexes=[0, 1],
    )
    config = Qwen3VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=False, **vision_token_ids(ids),
    )
    config.eos_token_id = ids["eos_token_id"]
    config.pad_token_id = ids["pad_token_id"]
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(config).to(torch.float32)
    model.generation_config.eos_token_id = ids["eos_token_id"]
    model.generation_config.pad_token_id = ids["pad_token_id"]
    return model


def save_qwen3vl_processor(out: Path, tok, min_pixels: int, max_pixels: int) -> None:
    """A Qwen3-VL processor (patch 16, merge 2) around `tok`, saved beside a model in `out`."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(
        patch_size=16, merge_size=2, temporal_patch_size=2,
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    video_processor = Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2)
    processor = Qwen3VLProcessor(
        image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)


def build_qwen25vl(out: Path) -> None:
    """Tiny Qwen2.5-VL (GEdit-Bench's open judge architecture) with its processor: patch 14, window attention."""
    import torch
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    tok = build_tokenizer(out)
    ids = token_ids(tok)
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]},
            eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"], bos_token_id=ids["bos_token_id"],
            tie_word_embeddings=False,
        ),
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64, window_size=112,
                           fullatt_block_indexes=[1]),
        tie_word_embeddings=False, **vision_token_ids(ids),
    )
    config.eos_token_id, config.pad_token_id = ids["eos_token_id"], ids["pad_token_id"]
    torch.manual_seed(5)
    model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)
    model.generation_config.eos_token_id = ids["eos_token_id"]
    model.generation_config.pad_token_id = ids["pad_token_id"]
    model.save_pretrained(out)
    image_processor = Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2,
                                            size={"shortest_edge": 28 * 28, "longest_edge": 224 * 224})
    Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                        chat_template=CHAT_TEMPLATE).save_pretrained(out)


def build_real_judge(out: Path, name: str) -> None:
    """A tiny judge (hidden 64, 2 layers, tied embeddings over the real 151k vocabulary) whose tokenizer,
    chat template and processor files are the real judge's, byte for byte."""
    import torch
    from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen3VLConfig, \
        Qwen3VLForConditionalGeneration

    src = MODEL_CONFIGS / REAL_CONFIGS[name]
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not here: the real judges' files come from ../shared/reference")
    tok = AutoTokenizer.from_pretrained(src)
    ids = {**token_ids(tok), "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>")}
    text = dict(vocab_size=151936 if name == "qwen3vl-real" else 152064, hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32768,
                eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"], tie_word_embeddings=True)
    vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=64)
    torch.manual_seed(7)
    if name == "qwen3vl-real":
        text.update(head_dim=32, rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                                  "mrope_section": [6, 5, 5], "mrope_interleaved": True})
        vision.update(patch_size=16, num_position_embeddings=2304, deepstack_visual_indexes=[0, 1])
        config = Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **vision_token_ids(ids))
        model = Qwen3VLForConditionalGeneration(config)
    else:
        text.update(rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]})
        vision.update(patch_size=14, window_size=112, fullatt_block_indexes=[1])
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True,
                                  **vision_token_ids(ids))
        model = Qwen2_5_VLForConditionalGeneration(config)
    config.eos_token_id, config.pad_token_id = ids["eos_token_id"], ids["pad_token_id"]
    model.to(torch.float32).save_pretrained(out)
    for path in src.iterdir():  # the real files, over anything save_pretrained wrote
        if path.name != "config.json":
            shutil.copyfile(path, out / path.name)


def build_judge_lora(out: Path) -> None:
    """A rank-8 LoRA on the tiny judge's language-model attention, random in both factors, saved as PEFT
    saves a judge LoRA (adapter_config.json + adapter_model.safetensors), as EditScore releases its judges."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3VLForConditionalGeneration

    model = Qwen3VLForConditionalGeneration.from_pretrained(ensure("qwen3vl", out.parent))
    torch.manual_seed(8)
    config = LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                        target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)")
    get_peft_model(model, config).save_pretrained(out, safe_serialization=True)
    adapter = json.loads((out / "adapter_config.json").read_text())  # not this machine's path: builds are identical
    (out / "adapter_config.json").write_text(json.dumps({**adapter, "base_model_name_or_path": "tiny:qwen3vl"}, indent=2))
    (out / "README.md").unlink(missing_ok=True)


def build_lora(out: Path) -> None:
    """A rank-4 LoRA on the t2i transformer's attention projections, random in both factors (a zero
    B factor, peft's default, would leave the images unchanged)."""
    import torch
    from diffusers import QwenImagePipeline, QwenImageTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = QwenImageTransformer2DModel.from_pretrained(ensure("t2i", out.parent) / "transformer")
    torch.manual_seed(6)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                       target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    QwenImagePipeline.save_lora_weights(out, transformer_lora_layers=get_peft_model_state_dict(transformer))


def _qwen_image_text_encoder(tok):
    """The Qwen2.5-VL text encoder of the Qwen-Image pipelines, at hidden size 16."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = token_ids(tok)
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [1, 1, 2]},
            eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"], bos_token_id=ids["bos_token_id"],
        ),
        vision_config=dict(
            depth=2, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=16, window_size=112,
            fullatt_block_indexes=[1],
        ),
        **vision_token_ids(ids),
    )
    torch.manual_seed(1)
    return Qwen2_5_VLForConditionalGeneration(config).to(torch.float32)


def _qwen_image_parts():
    import torch
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

    torch.manual_seed(2)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
        num_attention_heads=3, joint_attention_dim=16, axes_dims_rope=(8, 4, 4),
    )
    torch.manual_seed(3)
    vae = AutoencoderKLQwenImage(
        z_dim=4, base_dim=8, dim_mult=[1, 2, 2, 2], temperal_downsample=[False, True, True],
        num_res_blocks=1, latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )
    return dict(transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler())


def build_t2i(out: Path) -> None:
    from diffusers import QwenImagePipeline

    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tokenizer(Path(tmp))
    pipe = QwenImagePipeline(text_encoder=_qwen_image_text_encoder(tok), tokenizer=tok, **_qwen_image_parts())
    pipe.save_pretrained(out)


def build_edit(out: Path) -> None:
    from diffusers import QwenImageEditPipeline
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tokenizer(Path(tmp))
    # A small pixel budget keeps the text encoder's image tokens few on CPU.
    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56)
    processor = Qwen2VLProcessor(
        image_processor=image_processor, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )
    pipe = QwenImageEditPipeline(
        text_encoder=_qwen_image_text_encoder(tok), tokenizer=tok, processor=processor, **_qwen_image_parts()
    )
    pipe.save_pretrained(out)


BUILDERS = {"t2i": build_t2i, "edit": build_edit, "qwen3vl": build_qwen3vl, "qwen25vl": build_qwen25vl,
            "lora": build_lora, "qwen3vl-scripted": build_qwen3vl_scripted, "qwen3vl-lora": build_judge_lora,
            **{name: (lambda out, name=name: build_real_judge(out, name)) for name in REAL_CONFIGS}}


def ensure(name: str, root: Path = DEFAULT_DIR) -> Path:
    """Path of tiny model `name`, building it when missing or when the builder changed."""
    if name not in BUILDERS:
        raise ValueError(f"unknown tiny model {name!r}; choose from {', '.join(BUILDERS)}")
    root = Path(root)
    out = root / name
    stamp = out / ".genscore-tiny"
    key = _cache_key()
    if stamp.exists() and stamp.read_text() == key:
        return out
    root.mkdir(parents=True, exist_ok=True)
    # One builder at a time (parallel test workers, two demos): the others wait, then find it built.
    with file_lock(root / f".{name}.lock"):
        if stamp.exists() and stamp.read_text() == key:
            return out
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            BUILDERS[name](tmp)
            (tmp / ".genscore-tiny").write_text(key)
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)  # atomic: a reader never sees a half-built model
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="folder for the models")
    parser.add_argument("models", nargs="*", metavar="MODEL", help=f"any of {MODELS} (default: all)")
    args = parser.parse_args(argv)
    for name in args.models or MODELS:
        print(ensure(name, args.out))


if __name__ == "__main__":
    main()
