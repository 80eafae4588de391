"""SFT warm start pieces (training/stvg_train/sft.py), the small model's tokenizer (small_model.py) and
prep's seeded first track IDs (prep.py): fast, no ROS, no perception."""

from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image

from stvg_ros.core.answer import parse_answer
from stvg_ros.synthetic.scenes import CAPTION_TEMPLATES, COLOURS, DIRECTIONS, SHAPES, SIZES
from stvg_train.data import make_sample
from stvg_train.prep import PrepOptions, first_track_id, settings_key
from stvg_train.sft import (
    FrameQuestion,
    collate,
    encode_example,
    encode_frame_question,
    id_questions,
    read_questions,
    reference_completion,
    unique_description,
)
from stvg_train.small_model import build_small_qwen25vl, caption_sentences

# ------------------------------------------------------------------------------------------------
# the completion SFT teaches


def test_reference_completion_is_well_formatted_and_parses_strictly():
    text = reference_completion(7, 1.5, 4.25)
    answer = parse_answer(text, strict=True)
    assert answer.ok and answer.well_formatted
    assert answer.target_id == 7
    assert answer.start == pytest.approx(1.50) and answer.end == pytest.approx(4.25)
    assert "<answer>Target ID: 7, Time range: 1.50 to 4.25</answer>" in text
    assert answer.reasoning == "Object 7 matches the event from 1.50 to 4.25."
    # the span is written with two decimals, as the answer grammar does
    assert parse_answer(reference_completion(12, 0.0, 10.0)).answer_text == "Target ID: 12, Time range: 0.00 to 10.00"


# ------------------------------------------------------------------------------------------------
# the auxiliary "which object is the <description>?" questions


def _obj(object_id: int, colour: str, shape: str, size: str = "medium") -> dict:
    return {"id": object_id, "colour": colour, "shape": shape, "size": size}


def test_unique_description_names_only_the_object():
    objects = [_obj(1, "red", "circle", "small"), _obj(2, "red", "circle", "large"), _obj(3, "blue", "square"),
               _obj(4, "red", "square"), _obj(5, "green", "diamond", "small"), _obj(6, "green", "diamond", "small")]
    assert unique_description(objects, 3) == "blue square"  # colour + shape is enough
    assert unique_description(objects, 4) == "red square"  # another red and another square, never both
    assert unique_description(objects, 1) == "small red circle"  # only the size tells them apart
    assert unique_description(objects, 2) == "large red circle"
    assert unique_description(objects, 5) is None  # same size, colour and shape as object 6
    assert unique_description(objects, 6) is None
    assert unique_description(objects, 99) is None  # not in the scene
    assert unique_description([], 1) is None


def test_id_questions_ask_on_frames_where_the_target_is_drawn(tmp_path):
    gt = tmp_path / "gt"
    gt.mkdir()
    (gt / "synth_a.json").write_text(json.dumps({"objects": [_obj(1, "red", "circle"), _obj(2, "blue", "square")]}))
    (gt / "synth_b.json").write_text(json.dumps({"objects": [_obj(1, "red", "circle"), _obj(2, "red", "circle")]}))
    rows = {
        "video": ["synth_a", "synth_b", "synth_a", "synth_missing"],
        "annotated_target_id": [2, 1, 1, 1],
        "gt_target_id": [14, 3, 12, 5],
        "frame_track_ids": [[[12, 14], [12], [14]], [[3]], [[12], [14]], [[5]]],
    }
    questions = id_questions(rows, tmp_path)
    assert questions == [
        FrameQuestion(0, 0, "Which object is the blue square?", "Object 14.", 14),
        FrameQuestion(0, 2, "Which object is the blue square?", "Object 14.", 14),  # not frame 1: 14 not drawn
        # row 1: two identical red circles, no unique description; row 3: no gt/ file
        FrameQuestion(2, 0, "Which object is the red circle?", "Object 12.", 12),
    ]


def test_read_questions_list_the_drawn_ids_left_to_right_once_per_video():
    rows = {
        "video": ["synth_a", "synth_a", "synth_b"],  # rows of one video share their frames
        "frame_track_ids": [[[12, 14], []], [[12, 14], []], [[3, 7, 5]]],
        "frame_track_boxes": [[[[50, 0, 60, 10], [0, 0, 10, 10]], []], [[[50, 0, 60, 10], [0, 0, 10, 10]], []],
                              [[[90, 0, 99, 9], [10, 5, 20, 15], [40, 40, 50, 50]]]],
    }
    question = "Which numbers are drawn, from left to right?"
    assert read_questions(rows) == [FrameQuestion(0, 0, question, "14, 12."),  # frame 1 has no track
                                    FrameQuestion(2, 0, question, "7, 5, 3.")]


def _row(images: int = 2, side: int = 56) -> dict:
    frames = [Image.new("RGB", (side, side), (40 * k, 120, 200)) for k in range(images)]
    return make_sample(sample_id="s0", source="synthetic", video="synth_a", caption="the blue square moving left",
                       images=frames, timestamps_s=[0.5 * k for k in range(images)], clip_duration_s=2.0,
                       gt_start_s=0.5, gt_end_s=1.0, gt_target_id=14, annotated_target_id=2,
                       frame_track_ids=[[14]] * images, frame_track_boxes=[[[0, 0, 10, 10]]] * images,
                       frame_gt_boxes=[[0, 0, 10, 10]] * images)


# ------------------------------------------------------------------------------------------------
# prep: seeded first track IDs


def test_first_track_id_is_seeded_by_the_video_within_the_range():
    assert first_track_id("synth_7_0", None) == 1
    assert first_track_id("synth_7_0", ()) == 1
    videos = [f"synth_7_{i}" for i in range(40)]
    firsts = [first_track_id(v, (1, 250)) for v in videos]
    assert firsts == [first_track_id(v, (1, 250)) for v in videos]  # deterministic
    assert all(1 <= f <= 250 for f in firsts)
    assert len(set(firsts)) >= 30  # different videos (almost always) start elsewhere
    assert {first_track_id(v, (5, 7)) for v in videos} == {5, 6, 7}  # both ends are reachable
    assert first_track_id("synth_7_3", [42, 42]) == 42


def test_settings_key_includes_the_first_track_id_range():
    base = PrepOptions(out_dir="unused", perception_config={"model": "yolo-synth-tiny"})
    ranged = PrepOptions(out_dir="unused", perception_config={"model": "yolo-synth-tiny"}, first_track_id=(1, 250))
    other = PrepOptions(out_dir="unused", perception_config={"model": "yolo-synth-tiny"}, first_track_id=(1, 100))
    keys = {settings_key(base), settings_key(ranged), settings_key(other)}
    assert len(keys) == 3
    assert settings_key(ranged) == settings_key(PrepOptions(out_dir="elsewhere", perception_config={"model": "yolo-synth-tiny"},
                                                            first_track_id=(1, 250)))


# ------------------------------------------------------------------------------------------------
# the small model's tokenizer


def _template_regex(template: str) -> re.Pattern:
    words = re.escape(template).replace(r"\{d\}", r"(?:\w+ )?\w+ \w+").replace(r"\{dir\}", r"\w+")
    return re.compile(words.replace(r"\{o\}", r"\w+ \w+"))


def test_caption_sentences_cover_every_template_kind():
    sentences = caption_sentences()
    assert sentences and not any("{" in s or "  " in s for s in sentences)  # every field filled in
    for kind, templates in CAPTION_TEMPLATES.items():
        for template in templates:
            pattern = _template_regex(template)
            assert any(pattern.fullmatch(s) for s in sentences), (kind, template)
    # every colour, shape and size, with and without the size, for every direction a kind uses
    for d in ("red circle", "large cyan hexagon", "small orange triangle"):
        for direction in DIRECTIONS:
            assert f"the {d} moving {direction}" in sentences
        assert f"the {d} that turns left" in sentences and f"the {d} turning right" in sentences
        assert f"the {d} that comes to a stop" in sentences and f"the {d} that reverses direction" in sentences
    words = {w for s in sentences for w in s.split()}
    assert set(COLOURS) | set(SHAPES) | set(SIZES) | set(DIRECTIONS) <= words


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """The untrained small Qwen2.5-VL (about 5 s to build: tokenizer training and random init)."""
    from transformers import AutoProcessor

    out = build_small_qwen25vl(tmp_path_factory.mktemp("small") / "model", max_pixels=56 * 56)
    return out, AutoProcessor.from_pretrained(out)


def test_small_tokenizer_round_trips_captions_and_answers(small_model):
    out, processor = small_model
    tokenizer = processor.tokenizer
    info = json.loads((out / "stvg_small.json").read_text())
    assert info["seed"] == 0 and 1_000_000 < info["parameters"] < 20_000_000
    texts = ["the large red circle that keeps moving left after passing the blue square",
             reference_completion(7, 1.5, 4.25), reference_completion(213, 0.0, 9.75),
             "Frame at 3.50 s:", *caption_sentences()[::97]]
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
    # the trained wording is compact: a whole reference completion is a few dozen tokens
    assert len(tokenizer.encode(reference_completion(7, 1.5, 4.25), add_special_tokens=False)) < 60
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") != tokenizer.unk_token_id


def _rotary_angles(config, positions):
    """Per rotary pair, the angle by which M-RoPE turns a query at each (t, h, w) column of `positions`."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRotaryEmbedding, apply_rotary_pos_emb

    head_dim = config.hidden_size // config.num_attention_heads
    n = positions.shape[1]
    cos, sin = Qwen2_5_VLRotaryEmbedding(config)(torch.zeros(1, n, head_dim), positions[:, None, :])
    query = torch.cat([torch.ones(head_dim // 2), torch.zeros(head_dim // 2)]).expand(1, 1, n, head_dim)
    rotated, _ = apply_rotary_pos_emb(query, query, cos, sin)
    return torch.atan2(rotated[0, 0, :, head_dim // 2:], rotated[0, 0, :, : head_dim // 2])  # (n, pairs)


def _turn(angles, reference):
    """|angle - reference angle|, wrapped to [0, pi]."""
    return torch.remainder(angles - reference + torch.pi, 2 * torch.pi).sub(torch.pi).abs()


def test_small_models_rotary_shows_rows_and_columns_and_keeps_slow_pairs_for_long_lookups(small_model):
    """Neither tower has absolute position embeddings: a visual token's row and column reach the language
    model only as M-RoPE phases, so some pair must turn by a radian across a frame's rows and columns (at the
    7B's base 1e6 with sections [12, 10, 10] the columns turn 0.0005 rad). And a lookup by content over a
    whole sample (a visual token finding the caption's colour word, an answer digit its ID's cells) needs
    pairs that hardly turn over 1000 tokens (at base 10 none do)."""
    from transformers import AutoConfig

    out, _ = small_model
    config = AutoConfig.from_pretrained(out).text_config
    rows, columns, start = 6, 8, 100  # the recipe's 224x168 frame: 6 x 8 merged cells, after some text
    row, column = torch.meshgrid(torch.arange(rows), torch.arange(columns), indexing="ij")
    cells = torch.stack([torch.full((rows * columns,), start), start + row.flatten(), start + column.flatten()])
    grid = _rotary_angles(config, cells).view(rows, columns, -1)
    assert float(_turn(grid[-1, 0], grid[0, 0]).max()) > 1.0
    assert float(_turn(grid[0, -1], grid[0, 0]).max()) > 1.0
    text = torch.arange(1001).expand(3, -1)  # text tokens: t = h = w = position
    angles = _rotary_angles(config, text)
    slow_pairs = (_turn(angles, angles[0]).max(dim=0).values < 0.3).sum()
    assert int(slow_pairs) >= 2


def test_encode_example_labels_only_the_completion(small_model):
    _, processor = small_model
    row = _row()
    completion = reference_completion(14, 0.5, 1.0)
    prompt = encode_example(processor, row)
    example = encode_example(processor, row, completion)
    n_prompt = prompt["input_ids"].shape[1]
    assert torch.equal(example["input_ids"][:n_prompt], prompt["input_ids"][0])
    assert (example["labels"][:n_prompt] == -100).all()
    labelled = example["labels"][n_prompt:]
    assert (labelled != -100).all() and torch.equal(labelled, example["input_ids"][n_prompt:])
    assert processor.tokenizer.decode(labelled) == completion + "<|im_end|>\n"
    assert example["mm_token_type_ids"].shape == example["input_ids"].shape
    assert (example["mm_token_type_ids"][n_prompt:] == 0).all() and (example["mm_token_type_ids"][:n_prompt] > 0).any()
    assert example["image_grid_thw"].shape[0] == 2  # one grid per frame

    question = encode_frame_question(processor, row, FrameQuestion(0, 1, "Which object is the blue square?",
                                                                   "Object 14."))
    answer = question["labels"][question["labels"] != -100]
    assert processor.tokenizer.decode(answer) == "Object 14.<|im_end|>\n"
    prompt_text = processor.tokenizer.decode(question["input_ids"][question["labels"] == -100])
    assert "Which object is the blue square?" in prompt_text and "Frame at 0.50 s:" in prompt_text
    assert question["image_grid_thw"].shape[0] == 1  # one frame only


def test_a_guided_model_gives_the_language_models_attention_to_the_guides(small_model):
    """`GUIDED_ATTENTION`: eager attention in the language model (the guides read its weights); the guides
    of a training example train the heads they name."""
    from transformers import AutoModelForImageTextToText

    from stvg_train.binding import ATTRIBUTE_LAYER, GUIDED_ATTENTION, guide_loss, sample_guides

    out, processor = small_model
    model = AutoModelForImageTextToText.from_pretrained(out, attn_implementation=GUIDED_ATTENTION)
    assert model.config.text_config._attn_implementation == "eager"
    row = _row()
    example = encode_example(processor, row, reference_completion(14, 0.5, 1.0))
    guides = sample_guides(processor.tokenizer, example, model.config.image_token_id, row["frame_track_ids"],
                           row["frame_track_boxes"], 14, (56, 56), (56, 56), answer_layer=3)
    words = [processor.tokenizer.decode(example["input_ids"][g[3]]).strip() for g in guides if g[0] == ATTRIBUTE_LAYER]
    assert words == ["blue", "square"]  # "the blue square moving left": colour and shape, no size word
    batch = collate([example], processor.tokenizer.pad_token_id)
    output = model(**batch, output_attentions=True)
    layers = model.config.text_config.num_hidden_layers
    assert len(output.attentions) == layers
    assert output.attentions[0].shape[-1] == batch["input_ids"].shape[1]
    torch.testing.assert_close(output.attentions[0].sum(-1), torch.ones(output.attentions[0].shape[:-1]))
    loss = guide_loss(output.attentions, [guides])
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    loss.backward()
    first = model.model.language_model.layers[ATTRIBUTE_LAYER].self_attn.q_proj.weight.grad
    assert first is not None and float(first.abs().sum()) > 0


def test_vision_tower_learns_at_its_share_of_the_rate_and_only_matrices_decay(small_model):
    from transformers import AutoModelForImageTextToText

    from stvg_train.sft import SftOptions, _parameter_groups

    model = AutoModelForImageTextToText.from_pretrained(small_model[0])
    groups = _parameter_groups(model, SftOptions(model_dir="", train="", out_dir="", vision_lr_scale=0.1))
    names = {id(p): n for n, p in model.named_parameters()}
    assert sum(len(g["params"]) for g in groups) == len(names)  # every parameter once
    for group in groups:
        for param in group["params"]:
            assert group["lr_scale"] == (0.1 if ".visual." in names[id(param)] else 1.0)
            assert group["weight_decay"] == (0.01 if param.ndim >= 2 else 0.0)
    assert {g["lr_scale"] for g in groups} == {0.1, 1.0}
    # 0 freezes the vision tower: its parameters are in no group and get no gradient
    frozen = _parameter_groups(model, SftOptions(model_dir="", train="", out_dir="", vision_lr_scale=0))
    kept = {id(p) for g in frozen for p in g["params"]}
    for name, param in model.named_parameters():
        assert (id(param) in kept) == param.requires_grad == (".visual." not in name)


def test_reading_loss_with_a_frozen_vision_tower_is_refused(small_model, tmp_path):
    from stvg_train.sft import SftOptions, train_sft

    opts = SftOptions(model_dir=str(small_model[0]), train=str(tmp_path / "unused"), out_dir=str(tmp_path / "out"),
                      id_reading_frames=2, vision_lr_scale=0, source_size=(320, 240))
    with pytest.raises(ValueError, match="vision_lr_scale=0 freezes"):
        train_sft(opts)


def test_guides_without_the_source_size_are_refused(small_model, tmp_path):
    from stvg_train.sft import SftOptions, train_sft

    opts = SftOptions(model_dir=str(small_model[0]), train=str(tmp_path / "unused"), out_dir=str(tmp_path / "out"),
                      guide_weight=1.0)
    with pytest.raises(ValueError, match="guide_weight needs source_size"):
        train_sft(opts)


def test_a_checkpoint_saved_with_other_settings_is_refused_with_a_clear_error(small_model, tmp_path):
    """A checkpoint whose optimizer has other parameter groups (saved with the vision tower trained, resumed
    with it frozen) is refused before any data is read, naming the checkpoint and how to start afresh."""
    import shutil

    from transformers import AutoModelForImageTextToText

    from stvg_train.sft import TRAINER_STATE, SftOptions, train_sft

    checkpoint = tmp_path / "out" / "checkpoint-last"
    shutil.copytree(small_model[0], checkpoint)
    model = AutoModelForImageTextToText.from_pretrained(small_model[0])
    one_group = torch.optim.AdamW(model.parameters())
    torch.save({"optimizer": one_group.state_dict(), "step": 3, "order": [], "rng": None, "torch_rng": None},
               checkpoint / TRAINER_STATE)  # fmt: skip
    opts = SftOptions(model_dir=str(small_model[0]), train=str(tmp_path / "unused"), out_dir=str(tmp_path / "out"),
                      vision_lr_scale=0)  # fmt: skip
    with pytest.raises(ValueError, match=r"checkpoint-last was saved with other training settings.*--redo sft"):
        train_sft(opts)


class _Oracle(torch.nn.Module):
    """Predicts each next token from the input itself (`shift` 1), or echoes the current one (`shift` 0)."""

    def __init__(self, vocab: int, shift: int) -> None:
        super().__init__()
        self.vocab, self.shift = vocab, shift

    def forward(self, input_ids, **_):
        return type("Out", (), {"logits": torch.nn.functional.one_hot(input_ids.roll(-self.shift, dims=1),
                                                                       self.vocab).float()})()


def test_question_scores_check_every_answer_token_at_its_place(small_model):
    from stvg_train.sft import question_batches, question_scores

    _, processor = small_model
    frames = {0: _row()}
    questions = [FrameQuestion(0, k, "Which numbers are drawn, from left to right?", f"{14 + k}.") for k in (0, 1)]
    vocab = len(processor.tokenizer)
    batches = question_batches(processor, frames, questions, batch_size=1)
    assert question_scores(_Oracle(vocab, 1), batches) == {"exact": 1.0, "tokens": 1.0}
    off_by_one = question_scores(_Oracle(vocab, 0), batches)
    assert off_by_one["exact"] == 0.0 and off_by_one["tokens"] < 0.5


# ------------------------------------------------------------------------------------------------
# batches


def _example(ids: list[int], n_prompt: int, images: int, fill: float) -> dict:
    input_ids = torch.tensor(ids)
    labels = input_ids.clone()
    labels[:n_prompt] = -100
    types = torch.zeros(len(ids), dtype=torch.long)
    types[1:1 + images] = 1
    return {"input_ids": input_ids, "labels": labels, "mm_token_type_ids": types,
            "pixel_values": torch.full((4 * images, 3), fill), "image_grid_thw": torch.tensor([[1, 2, 2]] * images)}


def test_collate_pads_right_and_keeps_images_in_order():
    pad = 0
    a = _example([5, 6, 7, 8, 9, 10], n_prompt=4, images=1, fill=1.0)
    b = _example([11, 12, 13], n_prompt=2, images=2, fill=2.0)
    b["image_grid_thw"] = torch.tensor([[1, 2, 2], [1, 2, 4]])
    b["pixel_values"] = torch.cat([torch.full((4, 3), 2.0), torch.full((8, 3), 3.0)])
    batch = collate([a, b], pad)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10], [11, 12, 13, pad, pad, pad]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, -100, -100, 9, 10], [-100, -100, 13, -100, -100, -100]]
    assert batch["mm_token_type_ids"].tolist() == [[0, 1, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0]]
    assert batch["pixel_values"].shape == (4 + 4 + 8, 3)
    assert batch["pixel_values"][:, 0].tolist() == [1.0] * 4 + [2.0] * 4 + [3.0] * 8
    assert batch["image_grid_thw"].tolist() == [[1, 2, 2], [1, 2, 2], [1, 2, 4]]
    # a batch of one needs no padding
    single = collate([b], pad)
    assert torch.equal(single["input_ids"][0], b["input_ids"]) and single["attention_mask"].all()
