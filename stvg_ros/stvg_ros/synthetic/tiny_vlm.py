"""A tiny Qwen2.5-VL with random weights, built offline (tests, `stvg-ros demo`, benchmarks).

Everything is made here: a byte-level BPE tokenizer trained on a few hundred local sentences with
Qwen2's pre-tokenizer regex and Qwen's special tokens, the image/video processors, a chat template
and a ~0.5 M-parameter model. Its answers are MEANINGLESS (random weights); it exists so that every
code path (processor, generate, GGUF conversion, llama.cpp) runs on a machine without downloads.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from stvg_ros.grounding.gguf import QWEN2_SPLIT_REGEX

log = logging.getLogger(__name__)

#: Bump when the recipe changes: cached copies (tests, demo) are keyed by it.
TINY_VERSION = "1"
#: What the demo and the CLI say when this model answered.
TINY_DISCLAIMER = "tiny random-weight test model: its answers are meaningless (not a trained STVG-R1)"

#: Qwen2.5-VL's special tokens, in their upstream order.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# A Qwen-style chat template that tests only content['type'] (FEASIBILITY §5: HF datasets adds
# `video: None` keys to text parts, which breaks templates that test for key presence).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or content['type'] == 'image_url' %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _training_sentences() -> list[str]:
    """Local text for the tokenizer: the prompt, answers, frame labels, captions, digits."""
    from stvg_ros.core.answer import format_answer
    from stvg_ros.core.prompt import QUESTION_TEMPLATE, frame_label

    captions = [
        "the person in red who sat down",
        "the man who walks to the door and opens it",
        "the woman in a blue coat picks up the bag",
        "the robot turns left near the table",
        "the red circle moves across the room",
        "the green square stops behind the box",
        "the child runs towards the camera",
        "the dog jumps over the fence",
    ]
    sentences = [QUESTION_TEMPLATE.replace("[EVENT]", c) for c in captions]
    sentences += [frame_label(t / 4) for t in range(0, 160)]
    sentences += [
        f"<think>The event happens from {s:.2f} to {s + d:.2f}; object {i} matches.</think>"
        f"<answer>{format_answer(i, s, s + d)}</answer>"
        for i, s, d in [(1, 0.5, 3.0), (2, 4.25, 6.5), (3, 10.0, 2.75), (7, 12.54, 5.29), (12, 1.0, 18.0)]
    ]
    sentences += [" ".join(str(n) for n in range(k, k + 20)) for k in range(0, 200, 20)]
    sentences += ["You are a helpful assistant.", "system user assistant"]
    return sentences


def build_tokenizer(vocab_size: int = 512, extra_sentences: tuple[str, ...] | list[str] = ()):
    """A byte-level BPE (Qwen2 split regex, Qwen special tokens) as a PreTrainedTokenizerFast,
    trained on the local sentences plus `extra_sentences`."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_sentences() + list(extra_sentences), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        padding_side="left",
        model_max_length=32768,
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(tokenizer, text_hidden: int = 64, vision_depth: int = 4):
    """Qwen2_5_VLConfig of the tiny model. `text_hidden` also sets the projector's output size."""
    if vision_depth < 3:
        raise ValueError("vision depth must be >= 3: llama.cpp's converter cannot map the merger otherwise")
    heads = 4
    head_dim = text_hidden // heads
    third = head_dim // 2 // 3
    text = {"hidden_size": text_hidden, "intermediate_size": 2 * text_hidden, "num_hidden_layers": 2,
            "num_attention_heads": heads, "num_key_value_heads": 2, "vocab_size": len(tokenizer),
            "mrope_section": [head_dim // 2 - 2 * third, third, third]}  # sums to head_dim / 2
    vision = {"depth": vision_depth, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4,
              "fullatt_block_indexes": list(range(1, vision_depth, 2))}
    return qwen25vl_config(tokenizer, text, vision)


def qwen25vl_config(tokenizer, text: dict, vision: dict):
    """A Qwen2_5_VLConfig of the given shapes with `tokenizer`'s special-token ids."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": text["vocab_size"],
            "hidden_size": text["hidden_size"],
            "intermediate_size": text["intermediate_size"],
            "num_hidden_layers": text["num_hidden_layers"],
            "num_attention_heads": text["num_attention_heads"],
            "num_key_value_heads": text["num_key_value_heads"],
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": float(text.get("rope_theta", 1000000.0)),
                                "mrope_section": list(text["mrope_section"])},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": vision["depth"],
            "hidden_size": vision["hidden_size"],
            "intermediate_size": vision["intermediate_size"],
            "num_heads": vision["num_heads"],
            "out_hidden_size": text["hidden_size"],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": list(vision["fullatt_block_indexes"]),
            "tokens_per_second": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    return config


def random_model(config, tokenizer, seed: int):
    """A Qwen2.5-VL of `config` with random weights (seeded) and greedy generation that stops at
    `<|im_end|>` or `<|endoftext|>`."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        do_sample=False,
    )
    return model


def build_processor(tokenizer, min_pixels: int = 56 * 56, max_pixels: int = 128 * 28 * 28):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=size),
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_qwen25vl(out_dir: str | Path, *, text_hidden: int = 64, vision_depth: int = 4, seed: int = 0) -> Path:
    """Write a tiny random Qwen2.5-VL (model, tokenizer, processor) to `out_dir` and return it.

    Deterministic for a given seed. The folder loads with `AutoProcessor` / `AutoModelForImageTextToText`
    offline and converts with llama.cpp's convert_hf_to_gguf.py (see grounding/gguf.py).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    model = random_model(tiny_config(tokenizer, text_hidden=text_hidden, vision_depth=vision_depth), tokenizer, seed)
    model.save_pretrained(out)
    build_processor(tokenizer).save_pretrained(out)
    (out / "stvg_tiny.json").write_text(
        json.dumps({"tiny_version": TINY_VERSION, "seed": seed, "text_hidden": text_hidden, "note": TINY_DISCLAIMER})
    )
    log.info("built tiny Qwen2.5-VL (%d parameters) in %s", sum(p.numel() for p in model.parameters()), out)
    return out


def is_tiny_model(path: str | Path) -> bool:
    """True for a folder (or a GGUF converted from one) made by `build_tiny_qwen25vl`."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    return (folder / "stvg_tiny.json").is_file() or "tiny" in path.name.lower()


#: Files of the tiny release (models/qwen25vl-tiny-random.yaml lists the same names).
RELEASE_NAME = "qwen25vl-tiny-random"
RELEASE_QUANT = "q8_0"
HF_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "processor_config.json", "chat_template.jinja")


def build_release(out_dir: str | Path, manifest=None) -> dict[str, Path]:
    """Build the tiny model as the registry expects it: `hf/` (transformers) + GGUF q8_0 + mmproj f16.

    The build function of models/qwen25vl-tiny-random.yaml (`stvg-ros models pull qwen25vl-tiny-random`).
    Returns {"hf": folder, "gguf": text model, "mmproj": projector}.
    """
    import shutil

    from stvg_ros.grounding.gguf import convert_to_gguf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_dir = out / "hf"
    if hf_dir.exists():
        shutil.rmtree(hf_dir)
    build_tiny_qwen25vl(hf_dir)
    model, mmproj = convert_to_gguf(hf_dir, out, RELEASE_QUANT, name=RELEASE_NAME)
    if manifest is not None:  # honour the manifest's file names if they differ from ours
        for fmt, built in (("gguf", model), ("mmproj", mmproj)):
            if manifest.has(fmt) and manifest.file(fmt).name != built.name:
                built = built.replace(out / manifest.file(fmt).name)
            if fmt == "gguf":
                model = built
            else:
                mmproj = built
    return {"hf": hf_dir, "gguf": model, "mmproj": mmproj}


# ------------------------------------------------------------------------------------------------
# A random-weight model with the 7B architecture: what a 7B-class query costs, without a download.

#: Qwen2.5-VL-7B's shapes (the STVG-R1 7B checkpoint's config.json); the vocabulary keeps the
#: checkpoint's size (152064) although the local tokenizer uses only its first entries.
QWEN25VL_7B_SHAPES = {
    "text": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
             "num_key_value_heads": 4, "vocab_size": 152064, "mrope_section": [16, 24, 24]},
    "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
               "fullatt_block_indexes": [7, 15, 23, 31]},
}


def qwen25vl_7b_config(tokenizer):
    """Qwen2_5_VLConfig with the 7B architecture and this tokenizer's special-token ids."""
    return qwen25vl_config(tokenizer, QWEN25VL_7B_SHAPES["text"], QWEN25VL_7B_SHAPES["vision"])


def build_random_qwen25vl_7b(out_dir: str | Path, *, seed: int = 0):
    """Write a Qwen2.5-VL with the 7B architecture and RANDOM weights (bf16, ~17 GB) to `out_dir`.

    For benchmarks on a machine with an accelerator (`stvg-ros bench grounding --random-7b DIR`):
    convert it with `gguf.convert_to_gguf(out_dir, ..., "q4_k_m")` like the real checkpoint. Needs
    ~20 GB of RAM and disk; its answers are meaningless.
    """
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = qwen25vl_7b_config(tokenizer)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    model.generation_config = GenerationConfig(eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>")],
                                               pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    model.save_pretrained(out)
    build_processor(tokenizer).save_pretrained(out)
    (out / "stvg_tiny.json").write_text(json.dumps({"random_7b": True, "seed": seed, "note": TINY_DISCLAIMER}))
    return out
