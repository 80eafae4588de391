"""The small Qwen2.5-VL we train from scratch on synthetic scenes (`stvg-train recipe synth-small`).

Same transformers classes, GGUF + mmproj conversion, prompt template, renderer, parser and grammar
as the 7B; only the shapes are small (≈ 5 M parameters) and the tokenizer is a byte-level BPE trained
here on the template, the frame labels, the answer format and the synthetic scenes' captions.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

#: Text decoder and vision tower shapes (FEASIBILITY: ≈ 60 ms per sample per step on 2 CPU threads).
#: The rotary base and M-RoPE sections decide what attention can see. Neither tower has absolute position
#: embeddings, so a visual token's row and column reach the language model only as rotary phases, and M-RoPE
#: gives the rows the next-highest frequencies after time and the columns the lowest. At the 7B's base (1e6)
#: with sections [12, 10, 10] the fastest column frequency turns 0.0005 rad across a frame's 8 columns, and a
#: place head found no column. At base 10 with [8, 12, 12] it did, but no pair turns slowly any more (the
#: slowest 0.1 rad per token), and lookups by content across a sample (visual tokens to the caption's colour
#: word) came later. Base 1e4 with [2, 3, 27] has both: rows at 0.56 and columns at 0.24 rad per step, three
#: pairs that turn under 0.3 rad over 1000 tokens; columns and lookups learnt sooner (docs/training.md).
SMALL_SHAPES = {
    "text": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 4,
             "num_key_value_heads": 2, "mrope_section": [2, 3, 27], "rope_theta": 10000.0},
    "vision": {"depth": 4, "hidden_size": 128, "intermediate_size": 384, "num_heads": 4,
               "fullatt_block_indexes": [1, 3]},
}
SMALL_VOCAB = 1024


def caption_sentences() -> list[str]:
    """Every caption wording the synthetic scenes can produce (colours, shapes, sizes, directions)."""
    from stvg_ros.synthetic.scenes import CAPTION_TEMPLATES, COLOURS, DIRECTIONS, SHAPES, SIZES

    sentences = []
    for colour in COLOURS:
        for shape in SHAPES:
            for size in ("", *SIZES):
                d = f"{size} {colour} {shape}".strip()
                for kind, templates in CAPTION_TEMPLATES.items():
                    for template in templates:
                        for direction in DIRECTIONS if kind in ("move", "pass") else ("left", "right"):
                            sentences.append(template.format(d=d, dir=direction, o=f"{colour} {shape}"))
    return sentences


def answer_sentences() -> list[str]:
    from stvg_train.sft import reference_completion

    return [reference_completion(i, s / 4, s / 4 + d / 2) for i in range(1, 13) for s in range(0, 80, 7)
            for d in (2, 5, 9)]


def build_small_qwen25vl(out_dir: str | Path, *, seed: int = 0, max_pixels: int = 140 * 112) -> Path:
    """Write the untrained small model (random init with `seed`), its tokenizer and processor to `out_dir`."""
    from stvg_ros.synthetic.tiny_vlm import build_processor, build_tokenizer, qwen25vl_config, random_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(SMALL_VOCAB, caption_sentences() + answer_sentences())
    text = {**SMALL_SHAPES["text"], "vocab_size": len(tokenizer)}
    model = random_model(qwen25vl_config(tokenizer, text, SMALL_SHAPES["vision"]), tokenizer, seed)
    model.save_pretrained(out)
    build_processor(tokenizer, max_pixels=max_pixels).save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    (out / "stvg_small.json").write_text(json.dumps({"seed": seed, "parameters": params, "shapes": SMALL_SHAPES}))
    log.info("built the small Qwen2.5-VL (%d parameters) in %s", params, out)
    return out
