"""Supervised warm start (SFT) on prepared samples: teacher-forced answers in the trained format.

A model trained from scratch writes no parsable answer, so GRPO's rewards would all be 0. SFT teaches
it the answer for each prepared sample: the GT target ID (METHOD §6 vote) and the GT span, after a
short reasoning block (`reference_completion`). GRPO then starts from this checkpoint.

Auxiliary tasks (synthetic scenes): the ID of the answer is the hard part to learn from scratch, and
a full sample carries one ID among ~600 tokens. With `aux_batch_size`, every step also trains on
single-frame questions, ~10x cheaper per sample: "which numbers are drawn, from left to right?" ->
"83, 86, 85." (reading the drawn IDs), and "which object is the <colour> <shape>?" -> "Object 85."
(the target's track on that frame, where the description is unique in the scene). The first
`aux_only_steps` steps train on these questions alone. With `id_reading_frames`, every step also
trains the vision tower on a dense per-token ID-reading loss (`id_reading`) over that many frames;
its held-out per-token accuracy is logged with the other held-out scores. With `match_weight`, a head on
the language model's visual tokens learns which show the asked object (`binding`: the GT target on full
samples, the asked track on which-object questions), a dense signal for finding the described object.
With `time_guides` and the span's heads (`span_weight`, `motion_weight`, `place_weight`), full samples also
carry what the span needs (`binding.sample_time_supervision`, as in the perfect-perception diagnostic
`symbolic_sft`): where each track was one frame earlier, the event words, the frame labels, the answered
times' frames, whether the asked track's frame is inside the span, how each track moved, each token's place.

The loop is plain PyTorch (AdamW, warm-up + cosine decay, gradient clipping), batches of samples
padded on the right, checkpoints every `save_every` steps and resumes from the last one. Every
`eval_every` steps it decodes a fixed set of held-out prompts greedily and logs ID accuracy, mean
temporal IoU and the mean summed reward; `log.jsonl` holds one JSON object per logged step.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stvg_train.binding import (
    DEFAULT_LAYER,
    GUIDED_ATTENTION,
    MotionHead,
    PlaceHead,
    TargetMatchHead,
    example_guides,
    guide_loss,
    id_cells,
    match_scores,
    sample_time_supervision,
    target_cells,
    unsupervised,
)
from stvg_train.id_reading import CELL_PX, HEAD_FILE, IdReadingHead, frame_batch, labelled_frames, reading_scores

log = logging.getLogger("stvg_train.sft")

#: An auxiliary-only step takes this many times aux_batch_size questions (about a full step's cost).
AUX_ONLY_FACTOR = 3
#: Held-out single-frame questions per collated batch.
QUESTION_BATCH = 16
#: Files of a resumable checkpoint besides the model and processor.
TRAINER_STATE = "trainer_state.pt"


def reference_completion(target_id: int, start_s: float, end_s: float) -> str:
    """The completion SFT teaches: a short reasoning block naming the object and the span, then the answer."""
    from stvg_ros.core.answer import format_answer

    return (
        f"<think>Object {target_id} matches the event from {start_s:.2f} to {end_s:.2f}.</think>\n"
        f"<answer>{format_answer(target_id, start_s, end_s)}</answer>"
    )


@dataclass
class SftOptions:
    model_dir: str  # a Hugging Face folder (model + processor)
    train: str  # a `stvg-train prep` output folder
    out_dir: str
    heldout: str | None = None  # prepared samples decoded every `eval_every` steps
    #: the synthetic set of `heldout` (its gt/ scene files): adds held-out "which object is …?" scores
    heldout_scenes: str | None = None
    steps: int = 2000
    batch_size: int = 8
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    threads: int = 2
    max_pixels: int | None = None
    log_every: int = 10
    eval_every: int = 250
    eval_samples: int = 48
    save_every: int = 250
    max_new_tokens: int = 64
    bf16: bool = True  # autocast matmuls to bfloat16 on CPU (≈ 2x faster where the CPU has AVX512-BF16)
    #: the synthetic set of `train` (its gt/ scene files): enables the auxiliary ID questions
    scenes: str | None = None
    aux_batch_size: int = 0  # auxiliary single-frame questions per step (0: none)
    #: the first steps train on auxiliary questions only (AUX_ONLY_FACTOR x aux_batch_size of them)
    aux_only_steps: int = 0
    #: frames per step of the dense ID-reading loss on the visual tokens (`id_reading`; 0: none)
    id_reading_frames: int = 0
    id_reading_weight: float = 1.0
    #: the vision tower's learning rate as a share of `lr` (below 1 keeps what the `read` stage taught
    #: it; 0 freezes it: no gradients through it, which makes a step much cheaper)
    vision_lr_scale: float = 1.0
    #: (width, height) of the source videos, where `frame_track_boxes` live (needed by id_reading and match)
    source_size: tuple[int, int] | None = None
    #: weight of the target-match loss on the language model's visual tokens (`binding`; 0: none): does
    #: this token show the object the sample asks about? On full samples and which-object questions.
    match_weight: float = 0.0
    match_layer: int = 2  # decoder layers below the match head
    #: weight of the attention guides (`binding.guide_loss`; 0: none): visual tokens attend to the asked
    #: object's description words, the answer's ID digits to the cells of its drawn number. Needs eager attention.
    guide_weight: float = 0.0
    #: with the guides, also the span's (`binding.time_guides`) on full samples; `motion_lookups`: a track's
    #: cells now and one frame earlier gathered by two heads of one layer (`NOW_GUIDE`, `BEFORE_GUIDE`)
    time_guides: bool = False
    motion_lookups: bool = False
    #: weights of the span's token heads on full samples (0: none): is the asked track's frame inside the
    #: span (`span_layer` layers below it), how did each track move (after layer 2 with `motion_lookups`,
    #: else 1), each visual token's row and column (after layer 1; frees the track guide's head)
    span_weight: float = 0.0
    span_layer: int = 3
    motion_weight: float = 0.0
    place_weight: float = 0.0


def _token_grid(source_size: tuple[int, int] | None, max_pixels: int) -> tuple[int, int]:
    """(rows, columns) of merged visual tokens of a `source_size` (width, height) frame at `max_pixels`."""
    from stvg_ros.grounding.sampling import smart_resize

    if not source_size:
        raise ValueError("place_weight needs source_size (width, height of the source videos)")
    height, width = smart_resize(int(source_size[1]), int(source_size[0]), max_pixels=max_pixels)
    return height // CELL_PX, width // CELL_PX


def warmup_cosine_lr(lr: float, warmup_steps: int, steps: int, step: int) -> float:
    """Linear warm-up to `lr`, then cosine decay to a tenth of it at `steps` (SFT and ID reading)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def _learning_rate(opts: SftOptions, step: int) -> float:
    return warmup_cosine_lr(opts.lr, opts.warmup_steps, opts.steps, step)


def _parameter_groups(model, opts: SftOptions) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices only; the vision tower's parameters at `vision_lr_scale`
    (at 0 they are frozen and left out)."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        visual = ".visual." in f".{name}"
        if visual and opts.vision_lr_scale == 0:
            param.requires_grad_(False)
            continue
        groups.setdefault((visual, param.ndim >= 2), []).append(param)
    return [{"params": params, "weight_decay": opts.weight_decay if matrix else 0.0,
             "lr_scale": opts.vision_lr_scale if visual else 1.0}
            for (visual, matrix), params in sorted(groups.items())]


def usable_rows(path: str):
    from stvg_train.data import gt_id_drawn, load_prepared

    rows = load_prepared([path])
    keep = [i for i, (gid, ids) in enumerate(zip(rows["gt_target_id"], rows["frame_track_ids"], strict=True))
            if gt_id_drawn(gid, ids)]
    return rows.select(keep)


def encode_example(processor, row, completion: str | None = None) -> dict:
    """Model inputs of one prepared row; with `completion`, a training example (`with_completion`)."""
    from stvg_train.smoke import encode_prompt

    enc = encode_prompt(processor, row)
    return enc if completion is None else with_completion(processor, enc, completion)


def with_completion(processor, enc: dict, completion: str) -> dict:
    """A training example from an encoded prompt: `completion` and `<|im_end|>` appended, labels on them only."""
    import torch

    tail = processor.tokenizer(completion + "<|im_end|>\n", add_special_tokens=False, return_tensors="pt")["input_ids"]
    n_prompt = enc["input_ids"].shape[1]
    input_ids = torch.cat([enc["input_ids"], tail], dim=1)[0]
    labels = input_ids.clone()
    labels[:n_prompt] = -100
    token_types = torch.cat([enc["mm_token_type_ids"][0], torch.zeros(tail.shape[1], dtype=torch.long)])
    return {"input_ids": input_ids, "labels": labels, "mm_token_type_ids": token_types,
            "pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"]}


@dataclass(frozen=True)
class FrameQuestion:
    """One auxiliary sample: image `frame` of training row `row`, a question about it and its answer."""

    row: int
    frame: int
    question: str
    answer: str
    #: the track (drawn number) the question asks about, where it asks about one (`binding` targets)
    target_id: int | None = None


def unique_description(objects: list[dict], object_id: int) -> str | None:
    """"colour shape" (or "size colour shape") naming only `object_id` among the scene's objects."""
    target = next((o for o in objects if o["id"] == object_id), None)
    if target is None:
        return None
    for keys in (("colour", "shape"), ("size", "colour", "shape")):
        if sum(all(o[k] == target[k] for k in keys) for o in objects) == 1:
            return " ".join(str(target[k]) for k in keys)
    return None


def id_questions(rows, scenes: str | Path) -> list[FrameQuestion]:
    """"Which object is the <description>?" -> "Object N." on each frame where the row's target track is
    drawn, when the target has a unique description in its scene (`<scenes>/gt/<video>.json`)."""
    objects: dict[str, list[dict]] = {}
    questions = []
    columns = zip(rows["video"], rows["annotated_target_id"], rows["gt_target_id"], rows["frame_track_ids"],
                  strict=True)
    for index, (video, object_id, track_id, frame_ids) in enumerate(columns):
        if video not in objects:
            path = Path(scenes) / "gt" / f"{Path(video).stem}.json"
            objects[video] = json.loads(path.read_text())["objects"] if path.is_file() else []
        description = unique_description(objects[video], object_id)
        if description is None:
            continue
        questions += [FrameQuestion(index, k, f"Which object is the {description}?", f"Object {track_id}.",
                                   track_id)
                      for k, ids in enumerate(frame_ids) if track_id in ids]
    return questions


def read_questions(rows) -> list[FrameQuestion]:
    """"Which numbers are drawn, from left to right?" -> "83, 86, 85." on every frame of every video (the
    rows of one video share their frames): dense supervision for reading the drawn IDs."""
    questions, seen = [], set()
    for index, (video, frame_ids, frame_boxes) in enumerate(
            zip(rows["video"], rows["frame_track_ids"], rows["frame_track_boxes"], strict=True)):
        if video in seen:
            continue
        seen.add(video)
        for k, (ids, boxes) in enumerate(zip(frame_ids, frame_boxes, strict=True)):
            if ids:
                ordered = [i for _, i in sorted(zip([(b[0] + b[2]) / 2 for b in boxes], ids, strict=True))]
                questions.append(FrameQuestion(index, k, "Which numbers are drawn, from left to right?",
                                               ", ".join(map(str, ordered)) + "."))
    return questions


def encode_frame_question(processor, row, question: FrameQuestion) -> dict:
    """An auxiliary sample: the question, one labelled frame, the answer (labels on the answer only)."""
    from stvg_ros.core.prompt import frame_label

    content = [{"type": "text", "text": question.question},
               {"type": "text", "text": "\n" + frame_label(row["timestamps_s"][question.frame]) + " "},
               {"type": "image", "image": row["images"][question.frame]}]
    enc = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=True, return_dict=True,
                                        add_generation_prompt=True, return_tensors="pt")
    return with_completion(processor, enc, question.answer)


class VideoFrames:
    """The decoded frames of each video, decoded once: the rows of one video share their frames, and
    reading a row decodes all of them (≈ 15 ms for 8 frames), which dominated auxiliary steps."""

    KEYS = ("images", "timestamps_s", "frame_track_ids", "frame_track_boxes")

    def __init__(self, rows) -> None:
        self.rows, self.videos, self.cache = rows, rows["video"], {}

    def __getitem__(self, index: int) -> dict:
        video = self.videos[index]
        if video not in self.cache:
            row = self.rows[index]
            self.cache[video] = {k: row[k] for k in self.KEYS}
        return self.cache[video]


def collate(examples: list[dict], pad_id: int) -> dict:
    """Right-padded batch; images of all examples concatenated in order (the model splits them by grid)."""
    import torch

    length = max(e["input_ids"].shape[0] for e in examples)

    def pad(key: str, value: int):
        return torch.stack([torch.nn.functional.pad(e[key], (0, length - e[key].shape[0]), value=value)
                            for e in examples])

    input_ids = pad("input_ids", pad_id)
    attention = torch.stack([torch.nn.functional.pad(torch.ones_like(e["input_ids"]),
                                                     (0, length - e["input_ids"].shape[0])) for e in examples])
    return {"input_ids": input_ids, "attention_mask": attention, "labels": pad("labels", -100),
            "mm_token_type_ids": pad("mm_token_type_ids", 0),
            "pixel_values": torch.cat([e["pixel_values"] for e in examples]),
            "image_grid_thw": torch.cat([e["image_grid_thw"] for e in examples])}


def greedy_scores(model, processor, rows, *, max_new_tokens: int = 64, encoded: list[dict] | None = None
                  ) -> dict[str, Any]:
    """Greedy answers to `rows`: ID accuracy, mean temporal IoU, mean summed reward (iou + id + format).
    `encoded`: the rows' model inputs when they are not `encode_example`'s (e.g. symbolic tokens)."""
    import torch

    from stvg_ros.core.answer import parse_answer
    from stvg_ros.evaluation.metrics import temporal_iou_seconds
    from stvg_train.rewards import reward_functions

    funcs = reward_functions(["iou", "format"])
    correct, ious, rewards, texts = 0, [], [], []
    model.eval()
    for k, row in enumerate(rows):
        enc = encoded[k] if encoded is not None else encode_example(processor, row)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens)
        text = processor.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)[0]
        columns = {k: [row[k]] for k in row if k.startswith(("gt_", "frame_")) or k == "clip_duration_s"}
        rewards.append(sum(float(f(completions=[text], **columns)[0]) for f in funcs))
        answer = parse_answer(text)
        if answer.target_id is not None and answer.start is not None and answer.end is not None:
            correct += answer.target_id == row["gt_target_id"]
            ious.append(temporal_iou_seconds((answer.start, answer.end), (row["gt_start_s"], row["gt_end_s"])))
        else:
            ious.append(0.0)
        texts.append(text)
    model.train()
    n = max(1, len(rows))
    return {"id_accuracy": correct / n, "tiou": sum(ious) / n, "reward": sum(rewards) / n, "n": len(rows),
            "example": texts[0] if texts else ""}


def heldout_questions(rows, scenes: str | None, count: int, seed: int) -> dict[str, list[FrameQuestion]]:
    """A fixed sample of held-out auxiliary questions per kind ("which_object" needs the set's `scenes`)."""
    pools = {"read": read_questions(rows), "which_object": id_questions(rows, scenes) if scenes else []}
    rng = random.Random(seed)
    return {kind: rng.sample(pool, min(count, len(pool))) for kind, pool in pools.items() if pool}


def question_batches(processor, frames, questions: list[FrameQuestion], *, batch_size: int = 16) -> list[dict]:
    """`questions` encoded and collated once (`frames` maps a question's row to its frames), for
    `question_scores` at every held-out evaluation."""
    return [collate([encode_frame_question(processor, frames[q.row], q) for q in questions[first:first + batch_size]],
                    processor.tokenizer.pad_token_id) for first in range(0, len(questions), batch_size)]


def question_scores(model, batches: list[dict]) -> dict[str, float]:
    """Share of the questions in `batches` (`question_batches`) answered exactly (every answer token the most
    likely one given the ones before: what greedy decoding says) and share of answer tokens right."""
    import torch

    exact, right, tokens, asked = 0, 0, 0, 0
    model.eval()
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "match", "guides")}
        labels = batch["labels"][:, 1:]
        with torch.no_grad():
            predicted = model(**inputs).logits[:, :-1].argmax(-1)
        answer = labels != -100
        hit = (predicted == labels) & answer
        exact += int((hit | ~answer).all(dim=1).sum())
        right, tokens, asked = right + int(hit.sum()), tokens + int(answer.sum()), asked + len(labels)
    model.train()
    return {"exact": exact / max(1, asked), "tokens": right / max(1, tokens)}


def train_sft(opts: SftOptions) -> dict[str, Any]:
    """Run (or resume) SFT; returns a summary. The final model and processor are saved to out_dir/final."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from stvg_ros.grounding.backends.models import INPUT_FORMAT_FILE
    from stvg_train.data import prepared_id_numbering
    from stvg_train.grpo import set_pixel_budget, training_input_format

    torch.set_num_threads(max(1, opts.threads))
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "checkpoint-last"
    resume = (checkpoint / TRAINER_STATE).is_file()
    source = checkpoint if resume else Path(opts.model_dir)
    processor = AutoProcessor.from_pretrained(source)
    set_pixel_budget(processor, max_pixels=opts.max_pixels)
    guided = opts.guide_weight > 0
    if guided and not opts.source_size:
        raise ValueError("guide_weight needs source_size (width, height of the source videos)")
    if opts.time_guides and not guided:
        raise ValueError("time_guides are attention guides: set guide_weight > 0 too")
    if opts.motion_lookups and not opts.time_guides:
        raise ValueError("motion_lookups are time guides: set time_guides too")
    timed = max(opts.span_weight, opts.motion_weight, opts.place_weight) > 0
    if (timed or opts.time_guides) and not opts.source_size:
        raise ValueError("the span's guides and heads need source_size (width, height of the source videos)")
    model = AutoModelForImageTextToText.from_pretrained(source, dtype=torch.float32,
                                                        attn_implementation=GUIDED_ATTENTION if guided else None)
    model.train()
    groups = _parameter_groups(model, opts)
    reading = None
    if opts.id_reading_frames > 0 and opts.vision_lr_scale == 0:
        raise ValueError("id_reading_frames trains the vision tower, which vision_lr_scale=0 freezes: set one to 0")
    if opts.id_reading_frames > 0:
        if not opts.source_size:
            raise ValueError("id_reading_frames needs source_size (width, height of the source videos)")
        reading = IdReadingHead(model.config.text_config.hidden_size, model.config.vision_config.hidden_size,
                                seed=opts.seed)
        groups.append({"params": reading.parameters(), "weight_decay": 0.0, "lr_scale": opts.vision_lr_scale})
    match = None
    if opts.match_weight > 0:
        if not opts.source_size:
            raise ValueError("match_weight needs source_size (width, height of the source videos)")
        match = TargetMatchHead(model.config.text_config.hidden_size, opts.match_layer, seed=opts.seed)
        groups.append({"params": match.parameters(), "weight_decay": 0.0, "lr_scale": 1.0})
    hidden = model.config.text_config.hidden_size
    grid = _token_grid(opts.source_size, opts.max_pixels) if opts.place_weight > 0 else (0, 0)
    span_head = TargetMatchHead(hidden, opts.span_layer or DEFAULT_LAYER, seed=1) if opts.span_weight > 0 else None
    motion_head = MotionHead(hidden, layer=2 if opts.motion_lookups else 1) if opts.motion_weight > 0 else None
    place_head = PlaceHead(hidden, *grid) if opts.place_weight > 0 else None
    #: the span's heads: (name, head, loss weight), trained on full samples only
    span_heads = [(name, head, weight) for name, head, weight in (
        ("span", span_head, opts.span_weight), ("motion", motion_head, opts.motion_weight),
        ("place", place_head, opts.place_weight)) if head is not None]
    for _, head, _ in span_heads:
        groups.append({"params": head.parameters(), "weight_decay": 0.0, "lr_scale": 1.0})
    optimizer = torch.optim.AdamW(groups, lr=opts.lr)
    trained = [p for group in groups for p in group["params"]]
    step = 0
    order: list[int] = []
    rng = random.Random(opts.seed)
    if resume:
        state = torch.load(checkpoint / TRAINER_STATE, weights_only=False)
        try:
            optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:  # e.g. saved with the vision tower trained, resumed with it frozen
            raise ValueError(f"{checkpoint} was saved with other training settings ({exc}): delete it to start "
                             "SFT afresh (recipe: --redo sft)") from None
        if reading is not None and state.get("id_reading_head"):
            reading.load_state_dict(state["id_reading_head"])
        if match is not None and state.get("match_head"):
            match.load_state_dict(state["match_head"])
        for name, head, _ in span_heads:
            if state.get(f"{name}_head"):
                head.load_state_dict(state[f"{name}_head"])
        step, order = state["step"], state["order"]
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed SFT at step %d from %s", step, checkpoint)
    else:
        torch.manual_seed(opts.seed)
        (out / "log.jsonl").unlink(missing_ok=True)
        if reading is not None and (source / HEAD_FILE).is_file():  # a model from the recipe's `read` stage
            reading.load_state_dict(torch.load(source / HEAD_FILE, weights_only=False)["head"])
            log.info("ID-reading head from %s", source / HEAD_FILE)
    train_rows = usable_rows(opts.train)
    heldout_rows, held_questions = None, {}
    if opts.heldout:
        held = usable_rows(opts.heldout)
        heldout_rows = held.select(range(min(opts.eval_samples, len(held))))
        if opts.aux_batch_size > 0:  # encoded once: the same questions are scored at every evaluation
            held_frames = VideoFrames(held)
            asked_by_kind = heldout_questions(held, opts.heldout_scenes, opts.eval_samples, opts.seed)
            held_questions = {kind: question_batches(processor, held_frames, asked, batch_size=QUESTION_BATCH)
                              for kind, asked in asked_by_kind.items()}
            if match is not None and "which_object" in asked_by_kind:  # scored by the match head too
                asked = asked_by_kind["which_object"]
                for first, batch in zip(range(0, len(asked), QUESTION_BATCH), held_questions["which_object"],
                                        strict=True):
                    batch["match"] = torch.cat([torch.from_numpy(target_cells(
                        held_frames[q.row]["frame_track_ids"][q.frame], held_frames[q.row]["frame_track_boxes"][q.frame],
                        q.target_id, opts.source_size, held_frames[q.row]["images"][q.frame].size))
                        for q in asked[first:first + QUESTION_BATCH]])
    pools: list[list[FrameQuestion]] = []  # reading and which-object questions, drawn half and half
    if opts.aux_batch_size > 0:
        pools = [p for p in (read_questions(train_rows), id_questions(train_rows, opts.scenes) if opts.scenes else [])
                 if p]
        log.info("auxiliary questions: %s", [len(p) for p in pools])
    questions = bool(pools)
    frames = VideoFrames(train_rows)  # auxiliary questions and ID reading look at single frames
    read_frames = labelled_frames(train_rows) if reading else []
    heldout_frames = labelled_frames(heldout_rows)[: opts.eval_samples] if reading and heldout_rows else []
    # decoded once: the same held-out frames are scored at every evaluation
    heldout_reading = frame_batch(processor, heldout_rows, heldout_frames, opts.source_size) if heldout_frames else None
    pad_id = processor.tokenizer.pad_token_id
    log_file = (out / "log.jsonl").open("a")
    started = time.monotonic()
    recent: list[float] = []
    recent_aux: list[float] = []
    recent_read: list[float] = []
    recent_match: list[float] = []
    recent_guide: list[float] = []
    recent_heads: dict[str, list[float]] = {name: [] for name, _, _ in span_heads}
    image_token = model.config.image_token_id
    answer_layer = model.config.text_config.num_hidden_layers - 1

    match_cache: dict[tuple[str, int, int], Any] = {}  # (video, frame, target): ≈ 5 ms each to compute

    def match_targets(index: int, target_id: int | None, frame_indices) -> list:
        """Per frame of training row `index`, the match targets of its visual tokens (unsupervised without a
        target)."""
        row, video, targets = frames[index], frames.videos[index], []
        for k in frame_indices:
            size = row["images"][k].size
            if target_id is None:
                targets.append(unsupervised((size[0] // CELL_PX) * (size[1] // CELL_PX)))
                continue
            if (video, k, target_id) not in match_cache:
                match_cache[video, k, target_id] = torch.from_numpy(target_cells(
                    row["frame_track_ids"][k], row["frame_track_boxes"][k], target_id, opts.source_size, size))
            targets.append(match_cache[video, k, target_id])
        return targets

    id_cell_cache: dict[tuple[str, int, int], Any] = {}  # like match_cache: each costs a cell_targets call

    def guides(enc: dict, index: int, target_id: int | None, frame_indices) -> list:
        """The attention guides of encoded example `enc` about training row `index`'s frames `frame_indices`."""
        if not guided or target_id is None:
            return []
        row, video, cells = frames[index], frames.videos[index], []
        for k in frame_indices:
            if (video, k, target_id) not in id_cell_cache:
                id_cell_cache[video, k, target_id] = id_cells(row["frame_track_ids"][k], row["frame_track_boxes"][k],
                                                              target_id, opts.source_size, row["images"][k].size)
            cells.append(id_cell_cache[video, k, target_id])
        return example_guides(processor.tokenizer, enc["input_ids"], enc["labels"], image_token,
                              np.concatenate(cells), answer_layer)

    timed_cache: dict[int, dict] = {}  # training row -> its span supervision (deterministic; ≈ 40 ms each)

    def time_supervision(enc: dict, index: int, row) -> dict:
        """The span's guides and head targets of encoded full sample `enc` of training row `index` (`row`)."""
        if not (timed or opts.time_guides):
            return {"guides": []}
        if index not in timed_cache:
            width, height = row["images"][0].size
            if place_head is not None and (height // CELL_PX, width // CELL_PX) != grid:
                raise ValueError(f"training frames of {width}x{height} px, but max_pixels {opts.max_pixels} makes "
                                 f"{grid} (rows, columns) of cells of the {opts.source_size} source frames")
            timed_cache[index] = sample_time_supervision(
                processor.tokenizer, enc, image_token, row, opts.source_size, row["images"][0].size, answer_layer,
                guides=opts.time_guides, motion_lookups=opts.motion_lookups, track_guide=place_head is None,
                span=span_head is not None, motion=motion_head is not None, place=place_head is not None)
        return timed_cache[index]

    def forward(examples: list[dict], targets: list, batch_guides: list, timed_targets: list[dict] | None = None):
        """The model's loss on `examples`, the match loss of their visual tokens, the guides' loss and, with
        `timed_targets` (full samples: per example, `time_supervision`), each span head's loss (None when not
        trained or nothing is supervised)."""
        batch = collate(examples, pad_id)
        output = model(**batch, output_hidden_states=match is not None or bool(span_heads),
                       output_attentions=guided)
        match_loss = None
        if match is not None:
            match_loss, _ = match.loss(output.hidden_states, batch["input_ids"], image_token, torch.cat(targets))
        head_losses = {}
        for name, head, _ in span_heads if timed_targets else ():
            head_losses[name], _ = head.loss(output.hidden_states, batch["input_ids"], image_token,
                                             torch.from_numpy(np.concatenate([t[name] for t in timed_targets])))
        return (output.loss, match_loss, guide_loss(output.attentions, batch_guides) if guided else None,
                head_losses)

    def save(where: Path) -> None:
        tmp = where.with_name(where.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        torch.save({"optimizer": optimizer.state_dict(), "step": step, "order": order, "rng": rng.getstate(),
                    "torch_rng": torch.get_rng_state(), "options": asdict(opts),
                    "id_reading_head": reading.state_dict() if reading else None,
                    "match_head": match.state_dict() if match else None,
                    **{f"{name}_head": head.state_dict() for name, head, _ in span_heads}}, tmp / TRAINER_STATE)
        shutil.rmtree(where, ignore_errors=True)
        tmp.rename(where)

    while step < opts.steps:
        aux_only = step < opts.aux_only_steps and questions
        examples, targets, batch_guides, timed_targets = [], [], [], []
        if not aux_only:
            if len(order) < opts.batch_size:
                epoch = list(range(len(train_rows)))
                rng.shuffle(epoch)
                order.extend(epoch)
            batch_ids, order = order[: opts.batch_size], order[opts.batch_size:]
            for i in batch_ids:
                row = train_rows[i]
                completion = reference_completion(row["gt_target_id"], row["gt_start_s"], row["gt_end_s"])
                examples.append(encode_example(processor, row, completion))
                batch_guides.append(guides(examples[-1], i, row["gt_target_id"], range(len(row["images"]))))
                timed_targets.append(time_supervision(examples[-1], i, row))
                batch_guides[-1] = batch_guides[-1] + timed_targets[-1]["guides"]
                if match is not None:
                    targets += match_targets(i, row["gt_target_id"], range(len(row["images"])))
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(opts, step) * group["lr_scale"]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=opts.bf16):
            loss, match_losses, guide_losses, head_losses = None, [], [], {}
            if examples:
                loss, match_loss, guided_loss, head_losses = forward(examples, targets, batch_guides, timed_targets)
                match_losses.append(match_loss)
                guide_losses.append(guided_loss)
            aux_loss = None
            if questions:
                size = opts.aux_batch_size * (AUX_ONLY_FACTOR if aux_only else 1)
                picked = [rng.choice(rng.choice(pools)) for _ in range(size)]
                aux = [encode_frame_question(processor, frames[q.row], q) for q in picked]
                aux_targets = [t for q in picked for t in match_targets(q.row, q.target_id, [q.frame])] \
                    if match is not None else []
                aux_guides = [guides(enc, q.row, q.target_id, [q.frame]) for enc, q in zip(aux, picked, strict=True)]
                aux_loss, match_loss, guided_loss, _ = forward(aux, aux_targets, aux_guides)
                match_losses.append(match_loss)
                guide_losses.append(guided_loss)
            read_loss = None
            if reading is not None:
                picks = [rng.choice(read_frames) for _ in range(opts.id_reading_frames)]
                read_loss, _ = reading.loss(model, *frame_batch(processor, frames, picks, opts.source_size))
        match_losses = [m for m in match_losses if m is not None]
        guide_losses = [g for g in guide_losses if g is not None]
        head_losses = {name: x for name, x in head_losses.items() if x is not None}
        weights = {name: weight for name, _, weight in span_heads}
        total = sum(x for x in (loss, aux_loss, None if read_loss is None else opts.id_reading_weight * read_loss,
                                opts.match_weight * sum(match_losses) if match_losses else None,
                                opts.guide_weight * sum(guide_losses) if guide_losses else None,
                                *(weights[name] * x for name, x in head_losses.items())) if x is not None)
        total.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trained, opts.max_grad_norm))
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        if loss is not None:
            recent.append(float(loss.detach()))
        if aux_loss is not None:
            recent_aux.append(float(aux_loss.detach()))
        if read_loss is not None:
            recent_read.append(float(read_loss.detach()))
        recent_match += [float(m.detach()) for m in match_losses]
        recent_guide += [float(g.detach()) for g in guide_losses]
        for name, x in head_losses.items():
            recent_heads[name].append(float(x.detach()))
        if step % opts.log_every == 0 or step == opts.steps:
            entry = {"step": step, "loss": sum(recent) / len(recent) if recent else None, "grad_norm": grad_norm,
                     "lr": _learning_rate(opts, step - 1), "elapsed_s": round(time.monotonic() - started, 1)}
            if recent_aux:
                entry["aux_loss"] = sum(recent_aux) / len(recent_aux)
            if recent_read:
                entry["id_reading_loss"] = sum(recent_read) / len(recent_read)
            if recent_match:
                entry["match_loss"] = sum(recent_match) / len(recent_match)
            if recent_guide:
                entry["guide_loss"] = sum(recent_guide) / len(recent_guide)
            for name, values in recent_heads.items():
                if values:
                    entry[f"{name}_loss"] = sum(values) / len(values)
                    values.clear()
            recent, recent_aux, recent_read, recent_match, recent_guide = [], [], [], [], []
            if heldout_rows is not None and (step % opts.eval_every == 0 or step == opts.steps):
                scores = greedy_scores(model, processor, heldout_rows, max_new_tokens=opts.max_new_tokens)
                entry.update({f"heldout_{k}": v for k, v in scores.items()})
                for kind, batches in held_questions.items():
                    entry.update({f"heldout_{kind}_{k}": v for k, v in question_scores(model, batches).items()})
                if match is not None and "which_object" in held_questions:
                    entry.update({f"heldout_match_{k}": v for k, v in
                                  match_scores(match, model, held_questions["which_object"], image_token).items()})
                if heldout_reading is not None:
                    entry.update({f"heldout_id_reading_{k}": v
                                  for k, v in reading_scores(reading, model, heldout_reading).items()})
            log_file.write(json.dumps(entry) + "\n")
            log_file.flush()
            log.info("sft %s", entry)
        if step % opts.save_every == 0 and step < opts.steps:
            save(checkpoint)
    log_file.close()
    model.eval()
    save(out / "final")
    (out / "final" / TRAINER_STATE).unlink(missing_ok=True)
    frames = sorted({len(t) for t in train_rows["timestamps_s"]})
    recorded = training_input_format(processor, frames, prepared_id_numbering([opts.train]))
    (out / "final" / INPUT_FORMAT_FILE).write_text(json.dumps(recorded, indent=1))
    return {"steps": step, "out": str(out / "final"), "log": str(out / "log.jsonl"),
            "wall_s": round(time.monotonic() - started, 1)}
