"""Dense ID reading: a per-token loss that teaches the vision tower what the drawn IDs say.

A model trained from scratch sees one ID per answer, and learning to read it through the language
model alone is slow (SFT runs of several hundred steps stayed at chance). Here every visual token
(one 28×28-pixel cell after Qwen's 2×2 merge) gets a target: the digits of the drawn ID that covers
the cell most, right-aligned in `ID_DIGITS` places ("7" -> none, none, 7), or "none" where no ID is
drawn. A linear head on the merged visual tokens predicts them; the head exists only during
training (it is not part of the exported model). Where the IDs are drawn comes from the same
renderer as the frames (`core.render.render_ids` on an empty canvas), so targets and pixels agree.

`train_reading` (the recipe's `read` stage) runs this loss alone before SFT, on `IdExercises`: frames of
freshly generated synthetic scenes at the model's frame size with random IDs of one to three digits
drawn by the renderer at the objects' centres and at free places, an endless supply of IDs to read.

Reading alone erases what the answers also need: after a reading-only stage a linear probe no longer
finds an object's colour in the tokens (it does at random init). So the exercises also name, for every
cell, the colour, shape and size of the object it shows, and for the cells of an object's drawn ID that
object's (`attribute_targets`): the token that says "156" then also says "red circle", which is the
one lookup a question like "the red circle moving left" asks of the language model.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Digit places of a drawn ID (hundreds, tens, units): IDs up to 999.
ID_DIGITS = 3
#: Class of "no digit here" (a cell with no ID, or a place an ID is too short to fill).
NO_DIGIT = 10
#: Pixels of Qwen2.5-VL's merged visual token (14-px patches, 2×2 merge).
CELL_PX = 28
#: A cell belongs to an ID when at least this many of its pixels are that ID's ink.
MIN_INK_PX = 6
#: Vision patches (14 px) per merged token, and their side.
PATCHES_PER_CELL = 4
PATCH_PX = 14
#: A patch shows a digit character when at least this many of its pixels are that character's ink.
MIN_CHARACTER_INK_PX = 4
#: Columns of `cell_targets`: the ID's digit places, then the character under each of the cell's patches.
TARGET_COLUMNS = ID_DIGITS + PATCHES_PER_CELL
#: Object attributes named per cell by `attribute_targets` (after `TARGET_COLUMNS` in an exercise's targets).
ATTRIBUTES = ("colour", "shape", "size")


def attribute_classes() -> tuple[tuple[str, ...], ...]:
    """The class names of each of `ATTRIBUTES` (the synthetic scenes' colours, shapes, sizes); class
    `len(names)` of each is "no object"."""
    from stvg_ros.synthetic.scenes import COLOURS, SHAPES, SIZES

    return tuple(COLOURS), tuple(SHAPES), tuple(SIZES)


def no_object_classes() -> np.ndarray:
    """(len(ATTRIBUTES),) the "no object" class of each attribute: one past its names."""
    return np.asarray([len(names) for names in attribute_classes()], np.int64)


def digit_classes(track_id: int) -> list[int]:
    """`ID_DIGITS` classes of one ID, right-aligned: 7 -> [10, 10, 7], 152 -> [1, 5, 2]."""
    text = str(int(track_id))
    if len(text) > ID_DIGITS:
        raise ValueError(f"track ID {track_id} has more than {ID_DIGITS} digits")
    return [NO_DIGIT] * (ID_DIGITS - len(text)) + [int(c) for c in text]


def cell_targets(track_ids: list[int], boxes_src: list[list[float]], src_size: tuple[int, int],
                 frame_size: tuple[int, int], *, with_owner: bool = False):
    """(cells, TARGET_COLUMNS) int64 targets of one frame, cells in raster order of the merged token grid.

    Columns 0..ID_DIGITS-1: the digits of the ID that covers the cell most (right-aligned; NO_DIGIT where
    none). The other PATCHES_PER_CELL columns: for each 14-px patch of the cell (the processor's order),
    the digit character inked most there, a local task that the whole-ID columns build on.
    `boxes_src` are the tracks' boxes in source pixels (`src_size` = width, height); the frame the model
    sees is `frame_size` (width, height, multiples of CELL_PX), where the IDs are drawn at the scaled
    box centres, as `grounding.sampling.sample_clip` draws them. With `with_owner`, also (cells,) the index
    in `track_ids` of the ID each cell reads (-1: none).
    """
    from stvg_ros.core.render import id_character_masks
    from stvg_ros.core.types import Tracks
    from stvg_ros.grounding.sampling import scale_tracks

    width, height = frame_size
    grid_w, grid_h = width // CELL_PX, height // CELL_PX
    targets = np.full((grid_h * grid_w, TARGET_COLUMNS), NO_DIGIT, np.int64)
    if not track_ids:
        return (targets, np.full(grid_h * grid_w, -1)) if with_owner else targets
    ink = np.zeros((len(track_ids), grid_h, grid_w), np.int64)
    character_ink = np.zeros((10, 2 * grid_h, 2 * grid_w), np.int64)
    for k, (track_id, box) in enumerate(zip(track_ids, boxes_src, strict=True)):
        one = Tracks(xyxy=np.asarray([box], np.float32), track_id=np.asarray([track_id]))
        centre = scale_tracks(one, width / src_size[0], height / src_size[1]).centers[0]
        layers = id_character_masks(track_id, (int(centre[0]), int(centre[1])), frame_size)
        layers = layers[:, : grid_h * CELL_PX, : grid_w * CELL_PX]
        ink[k] = layers.any(axis=0).reshape(grid_h, CELL_PX, grid_w, CELL_PX).sum(axis=(1, 3))
        for character, layer in zip(str(int(track_id)), layers, strict=True):
            character_ink[int(character)] += layer.reshape(2 * grid_h, PATCH_PX, 2 * grid_w, PATCH_PX).sum(axis=(1, 3))
    owner, amount = ink.argmax(axis=0).ravel(), ink.max(axis=0).ravel()
    for cell in np.flatnonzero(amount >= MIN_INK_PX):
        targets[cell, :ID_DIGITS] = digit_classes(track_ids[owner[cell]])
    characters = np.where(character_ink.max(axis=0) >= MIN_CHARACTER_INK_PX, character_ink.argmax(axis=0), NO_DIGIT)
    # patches (2*grid_h, 2*grid_w) -> per cell, its 2x2 patches row by row (the processor's order)
    targets[:, ID_DIGITS:] = characters.reshape(grid_h, 2, grid_w, 2).transpose(0, 2, 1, 3).reshape(-1, 4)
    if with_owner:
        return targets, np.where(amount >= MIN_INK_PX, owner, -1)
    return targets


def covered_cells(box: list[float], frame_size: tuple[int, int]) -> np.ndarray:
    """(cells,) bool in raster order: the merged cells a box (xyxy, frame pixels) shows its object on, i.e.
    covers a quarter of the cell, or half of a box smaller than that."""
    x1, y1, x2, y2 = box
    x0, y0 = np.arange(frame_size[0] // CELL_PX) * CELL_PX, np.arange(frame_size[1] // CELL_PX) * CELL_PX
    overlap_x = np.clip(np.minimum(x0 + CELL_PX, x2) - np.maximum(x0, x1), 0, None)
    overlap_y = np.clip(np.minimum(y0 + CELL_PX, y2) - np.maximum(y0, y1), 0, None)
    needed = min(CELL_PX * CELL_PX / 4, max(1.0, (x2 - x1) * (y2 - y1)) / 2)
    return np.outer(overlap_y, overlap_x).ravel() >= needed


def attribute_targets(bodies: list[tuple[list[float], tuple[int, int, int]]], id_owner: np.ndarray,
                      frame_size: tuple[int, int]) -> np.ndarray:
    """(cells, len(ATTRIBUTES)) int64: the attribute classes of the object each merged cell shows.

    `bodies`: (box xyxy in frame pixels, (colour, shape, size) classes) of the visible objects, back to
    front; a cell shows an object when the box covers a quarter of the cell (or half of a smaller box),
    a nearer object wins. `id_owner` (cells,): the body whose drawn ID the cell reads, -1 for none, -2 for
    an ID drawn on no object. ID cells take their object's attributes, and an ID of no object none, so that
    a token never pairs digits with another object's colour. Elsewhere the class is "no object".
    """
    width, height = frame_size
    grid_w, grid_h = width // CELL_PX, height // CELL_PX
    none = no_object_classes()
    targets = np.tile(none, (grid_h * grid_w, 1))
    for box, classes in bodies:
        targets[covered_cells(box, frame_size)] = classes
    for cell in np.flatnonzero(id_owner != -1):
        targets[cell] = bodies[id_owner[cell]][1] if id_owner[cell] >= 0 else none
    return targets


class IdReadingHead:
    """Linear heads, used only in training: on each merged visual token, the drawn ID's `ID_DIGITS`
    places × 11 classes and the shown object's `ATTRIBUTES`; on each vision patch before the merge, the
    digit character under it."""

    def __init__(self, hidden_size: int, vision_hidden_size: int, seed: int = 0) -> None:
        import torch

        generator = torch.Generator().manual_seed(seed)
        self.linear = torch.nn.Linear(hidden_size, ID_DIGITS * (NO_DIGIT + 1))
        self.characters = torch.nn.Linear(vision_hidden_size, NO_DIGIT + 1)
        self.no_object = no_object_classes()
        self.attribute_sizes = [int(n) + 1 for n in self.no_object]
        self.attributes = torch.nn.Linear(hidden_size, sum(self.attribute_sizes))
        with torch.no_grad():
            for layer in (self.linear, self.characters, self.attributes):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.02)
                layer.bias.zero_()

    def parameters(self):
        return [*self.linear.parameters(), *self.characters.parameters(), *self.attributes.parameters()]

    def attribute_logits(self, tokens) -> list:
        """Per attribute, (tokens, classes) logits."""
        return list(self.attributes(tokens.float()).split(self.attribute_sizes, dim=-1))

    def loss(self, model, pixel_values, image_grid_thw, targets, *, empty_weight: float = 0.1,
             attribute_weight: float = 1.0):
        """Cross-entropy of the ID's digit classes on every token plus that of the characters on every
        patch and, where `targets` has `ATTRIBUTES` columns (exercises), `attribute_weight` × that of the
        shown object's attributes on every token; cells (patches) without an ID (a character, an object)
        weigh `empty_weight`. Returns (loss, ID logits)."""
        tokens, patches = visual_tokens(model, pixel_values, image_grid_thw, with_patches=True)
        return self.loss_of(tokens, patches, targets, empty_weight=empty_weight, attribute_weight=attribute_weight)

    def loss_of(self, tokens, patches, targets, *, empty_weight: float = 0.1, attribute_weight: float = 1.0):
        """`loss` on visual tokens and patches already computed (`visual_tokens(..., with_patches=True)`)."""
        from torch.nn.functional import cross_entropy

        ids = targets[:, :ID_DIGITS]
        logits = self.linear(tokens.float()).view(-1, ID_DIGITS, NO_DIGIT + 1)
        per_place = cross_entropy(logits.reshape(-1, NO_DIGIT + 1), ids.reshape(-1), reduction="none")
        has_id = (ids != NO_DIGIT).any(dim=1).float()
        weight = has_id + empty_weight * (1.0 - has_id)
        loss = (per_place.view(-1, ID_DIGITS).mean(dim=1) * weight).sum() / weight.sum()
        characters = targets[:, ID_DIGITS:TARGET_COLUMNS].reshape(-1)
        per_patch = cross_entropy(self.characters(patches.float()), characters, reduction="none")
        has_character = (characters != NO_DIGIT).float()
        weight = has_character + empty_weight * (1.0 - has_character)
        loss = loss + (per_patch * weight).sum() / weight.sum()
        if targets.shape[1] > TARGET_COLUMNS and attribute_weight > 0:
            shown = targets[:, TARGET_COLUMNS:]
            for k, logits_k in enumerate(self.attribute_logits(tokens)):
                has_object = (shown[:, k] != int(self.no_object[k])).float()
                weight = has_object + empty_weight * (1.0 - has_object)
                per_cell = cross_entropy(logits_k, shown[:, k], reduction="none")
                loss = loss + attribute_weight / len(ATTRIBUTES) * (per_cell * weight).sum() / weight.sum()
        return loss, logits

    def state_dict(self) -> dict:
        return {"ids": self.linear.state_dict(), "characters": self.characters.state_dict(),
                "attributes": self.attributes.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.linear.load_state_dict(state["ids"])
        self.characters.load_state_dict(state["characters"])
        if "attributes" in state:  # heads saved before the attribute targets keep a fresh attribute head
            self.attributes.load_state_dict(state["attributes"])


def visual_tokens(model, pixel_values, image_grid_thw, *, with_patches: bool = False):
    """The merged visual tokens the language model receives (rows in the processor's order); with
    `with_patches`, also the vision patches before the merge, (tokens × PATCHES_PER_CELL, hidden), in the
    same order (each token's patches row by row)."""
    import torch
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import get_vision_window_index

    visual = model.model.visual
    out = visual(pixel_values, grid_thw=image_grid_thw)
    tokens = out.pooler_output if hasattr(out, "pooler_output") else out
    if not with_patches:
        return tokens
    # the blocks run in window order (groups of PATCHES_PER_CELL patches); put the groups back in order
    window_index, _ = get_vision_window_index(image_grid_thw, spatial_merge_size=visual.spatial_merge_size,
                                              window_size=visual.window_size, patch_size=visual.patch_size)
    hidden = out.last_hidden_state
    patches = hidden.view(-1, PATCHES_PER_CELL, hidden.shape[-1])[torch.argsort(window_index)]
    return tokens, patches.reshape(-1, hidden.shape[-1])


def labelled_frames(rows) -> list[tuple[int, int]]:
    """(row index, frame index) of every frame with a drawn ID, once per video (its rows share frames).
    Raises ValueError, before any training step, where an ID has more digits than the head reads."""
    if rows is None:
        return []
    picks, seen = [], set()
    for index, (video, frame_ids) in enumerate(zip(rows["video"], rows["frame_track_ids"], strict=True)):
        if video not in seen:
            seen.add(video)
            picks += [(index, k) for k, ids in enumerate(frame_ids) if ids]
            widest = max((i for ids in frame_ids for i in ids), default=0)
            if len(str(widest)) > ID_DIGITS:
                raise ValueError(f"video {video!r} has track ID {widest}: ID reading covers IDs of up to "
                                 f"{ID_DIGITS} digits (set id_reading_frames: 0 for this data)")
    return picks


def frame_batch(processor, rows, picks: list[tuple[int, int]], src_size: tuple[int, int]):
    """Pixel values, grids and cell targets of frames `picks` = [(row index, frame index), ...]."""
    import torch

    images, targets = [], []
    for r, k in picks:
        row = rows[r]  # one access: a row decodes all its frames
        images.append(row["images"][k])
        targets.append(torch.from_numpy(cell_targets(row["frame_track_ids"][k], row["frame_track_boxes"][k],
                                                     src_size, images[-1].size)))
    enc = processor.image_processor(images=images, return_tensors="pt")
    return enc["pixel_values"], enc["image_grid_thw"], torch.cat(targets)


def reading_scores(head: IdReadingHead, model, batch) -> dict[str, float]:
    """On the cells where an ID is drawn: the share read right in every place, and per place; on exercises
    also, on the cells showing an object, the share with all its attributes right, each one's share and, per
    shape shown, the share whose shape is right (`object_shape_<name>`)."""
    import torch

    pixel_values, grid, targets = batch
    with torch.no_grad():
        tokens, patches = visual_tokens(model, pixel_values, grid, with_patches=True)
        loss, logits = head.loss_of(tokens, patches, targets)
    ids = targets[:, :ID_DIGITS]
    has_id = (ids != NO_DIGIT).any(dim=1)
    right = logits.argmax(dim=-1)[has_id] == ids[has_id]
    n = int(has_id.sum())
    scores = {"loss": float(loss), "cells": n, "exact": float(right.all(dim=1).float().mean()) if n else 0.0,
              "place": float(right.float().mean()) if n else 0.0}
    if targets.shape[1] > TARGET_COLUMNS:  # exercises: does the token also say what the object looks like?
        shown = targets[:, TARGET_COLUMNS:]
        with torch.no_grad():
            predicted = torch.stack([x.argmax(dim=-1) for x in head.attribute_logits(tokens)], dim=1)
        has_object = shown[:, 0] != int(head.no_object[0])
        for name, cells in (("object_attributes", has_object), ("id_cell_attributes", has_object & has_id)):
            right = (predicted[cells] == shown[cells]).all(dim=1)
            scores[name] = float(right.float().mean()) if int(cells.sum()) else 0.0
        for k, attribute in enumerate(ATTRIBUTES):  # each attribute alone, on the object cells
            right = predicted[has_object, k] == shown[has_object, k]
            scores[f"object_{attribute}"] = float(right.float().mean()) if int(has_object.sum()) else 0.0
        shape = ATTRIBUTES.index("shape")  # the hardest attribute: its recall per shape, where one is shown
        for name_index, name in enumerate(attribute_classes()[shape]):
            cells = has_object & (shown[:, shape] == name_index)
            if int(cells.sum()):
                scores[f"object_shape_{name}"] = float((predicted[cells, shape] == name_index).float().mean())
    return scores


#: The head's weights, saved next to a model trained by `train_reading` (SFT carries them on).
HEAD_FILE = "id_reading_head.pt"


class IdExercises:
    """Endless ID-reading exercises: frames of generated scenes with random IDs drawn by the renderer.

    Each frame is a random frame of one of `pool` scenes (seeded), resized to `frame_size` (width, height)
    as `grounding.sampling` resizes camera frames. IDs go to the visible objects' box centres, as the robot
    draws them, and to `extra_ids` free places more (more IDs per frame, and IDs on background). An ID has
    one, two or three digits with equal chance (the robot's IDs grow with time); with `max_id`, the IDs of
    a frame are distinct numbers in 1..max_id instead (`id_numbering: clip` draws 1..K per clip).
    """

    def __init__(self, scene_spec: dict, frame_size: tuple[int, int], *, seed: int, pool: int = 64,
                 extra_ids: int = 4, max_id: int | None = None) -> None:
        from stvg_ros.synthetic.scenes import SceneSpec, generate_scene, scene_seed

        if max_id is not None and not 1 <= max_id < 10 ** ID_DIGITS:
            raise ValueError(f"max_id must be in 1..{10 ** ID_DIGITS - 1}, got {max_id}")
        self.frame_size = frame_size
        self.extra_ids = extra_ids
        self.max_id = max_id
        spec = SceneSpec(**scene_spec).validate()
        self.scenes = [generate_scene(scene_seed(seed, i), spec) for i in range(pool)]

    def frame(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One exercise: (RGB frame at `frame_size`, its `cell_targets` followed by its `attribute_targets`)."""
        import cv2

        from stvg_ros.core.render import render_ids
        from stvg_ros.core.types import Tracks

        scene = self.scenes[int(rng.integers(len(self.scenes)))]
        index = int(rng.integers(scene.num_frames))
        width, height = self.frame_size
        src_w, src_h = scene.size
        image = cv2.resize(scene.render_frame(index), (width, height), interpolation=cv2.INTER_AREA)
        sx, sy = width / src_w, height / src_h
        colours, shapes, sizes = attribute_classes()
        visible = [k for k in np.argsort([o.z for o in scene.objects]) if scene.gt.visible[index][k] > 0.3]
        bodies = []  # back to front
        for k in visible:
            obj, box = scene.objects[k], scene.gt.boxes[index][k]
            classes = (colours.index(obj.colour), shapes.index(obj.shape), sizes.index(obj.size))
            bodies.append(([box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy], classes))
        centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, body) for body, (b, _) in enumerate(bodies)]
        for _ in range(self.extra_ids):  # on no object (-2), wherever they land
            centres.append((float(rng.uniform(0, width - 26)), float(rng.uniform(12, height)), -2))
        kept: list[tuple[float, float, int]] = []
        for x, y, body in centres:  # IDs that would overlap an earlier one are left out (unreadable for anyone)
            if all(abs(x - kx) >= 30 or abs(y - ky) >= 16 for kx, ky, _ in kept):
                kept.append((x, y, body))
        if self.max_id is not None:
            kept = kept[: self.max_id]
            ids = [int(i) for i in rng.permutation(np.arange(1, self.max_id + 1))[: len(kept)]]
        else:
            digits = rng.integers(1, ID_DIGITS + 1, size=len(kept))
            ids = [int(rng.integers(1 if d == 1 else 10 ** (d - 1), 10 ** d)) for d in digits]
        boxes = [[x - 1.0, y - 1.0, x + 1.0, y + 1.0] for x, y, _ in kept]
        tracks = Tracks(xyxy=np.asarray(boxes, np.float32).reshape(-1, 4), track_id=np.asarray(ids, np.int64))
        targets, owner = cell_targets(ids, boxes, (width, height), (width, height), with_owner=True)
        owner_body = np.where(owner >= 0, np.asarray([body for *_, body in kept] + [-1])[owner], -1)
        shown = attribute_targets(bodies, owner_body, (width, height))
        return render_ids(image, tracks), np.concatenate([targets, shown], axis=1)

    def batch(self, processor, n: int, rng: np.random.Generator):
        """Pixel values, grids and cell targets of `n` exercises (as `frame_batch`)."""
        import torch
        from PIL import Image

        images, targets = [], []
        for _ in range(n):
            image, target = self.frame(rng)
            images.append(Image.fromarray(image))
            targets.append(torch.from_numpy(target))
        enc = processor.image_processor(images=images, return_tensors="pt")
        return enc["pixel_values"], enc["image_grid_thw"], torch.cat(targets)


@dataclass
class ReadingOptions:
    """The `read` stage: the vision tower learns to read drawn IDs before SFT (the language model is untouched)."""

    model_dir: str  # a Hugging Face folder (model + processor)
    out_dir: str
    scenes: dict = field(default_factory=dict)  # SceneSpec fields of the exercises' scenes
    max_pixels: int = 224 * 168
    steps: int = 3000
    frames: int = 32  # exercises per step
    extra_ids: int = 4
    #: IDs of an exercise: distinct numbers in 1..max_id (`id_numbering: clip`); None: 1–3 digits (`track`)
    max_id: int | None = None
    #: weight of the shown objects' colour, shape and size in the loss (`attribute_targets`; 0: digits only)
    attribute_weight: float = 1.0
    pool: int = 2000  # scenes the exercises are drawn from (held-out ones come from other seeds)
    lr: float = 1e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    threads: int = 2
    log_every: int = 10
    eval_every: int = 100
    eval_frames: int = 64
    save_every: int = 200
    #: a prepared held-out set (`stvg-train prep`): its frames, IDs drawn by the robot's pipeline, are
    #: scored too; `source_size` is its videos' (width, height)
    heldout: str | None = None
    source_size: tuple[int, int] | None = None


def train_reading(opts: ReadingOptions) -> dict[str, Any]:
    """Train the vision tower (and merger) on `IdExercises` with the dense reading loss; resumable.

    Writes `log.jsonl` (loss; held-out `exact`/`place` on unseen exercises and, with `heldout`, on the
    robot's own frames), `checkpoint-last/` every `save_every` steps (a rerun resumes there) and `final/`
    (the whole model, its processor and `HEAD_FILE`)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from stvg_ros.grounding.sampling import smart_resize
    from stvg_train.grpo import set_pixel_budget
    from stvg_train.sft import usable_rows, warmup_cosine_lr

    torch.set_num_threads(max(1, opts.threads))
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "checkpoint-last"
    resume = (checkpoint / HEAD_FILE).is_file()
    source = checkpoint if resume else Path(opts.model_dir)
    processor = AutoProcessor.from_pretrained(source)
    set_pixel_budget(processor, max_pixels=opts.max_pixels)
    model = AutoModelForImageTextToText.from_pretrained(source, dtype=torch.float32)
    vision = model.model.visual
    vision.train()
    head = IdReadingHead(model.config.text_config.hidden_size, model.config.vision_config.hidden_size,
                         seed=opts.seed)
    decay = [p for p in vision.parameters() if p.ndim >= 2]
    no_decay = [p for p in vision.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": opts.weight_decay},
              {"params": no_decay + list(head.parameters()), "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=opts.lr)
    trained = [p for group in groups for p in group["params"]]
    spec = {**opts.scenes}
    height, width = smart_resize(int(spec.get("height", 240)), int(spec.get("width", 320)), max_pixels=opts.max_pixels)
    started = time.monotonic()
    exercises = IdExercises(spec, (width, height), seed=opts.seed, pool=opts.pool, extra_ids=opts.extra_ids,
                            max_id=opts.max_id)
    unseen = IdExercises(spec, (width, height), seed=opts.seed + 7919, pool=max(1, opts.pool // 4),
                         extra_ids=opts.extra_ids, max_id=opts.max_id)
    heldout_exercises = unseen.batch(processor, opts.eval_frames, np.random.default_rng(opts.seed + 7919))
    heldout_robot = None
    if opts.heldout:
        if not opts.source_size:
            raise ValueError("heldout needs source_size (width, height of its videos)")
        rows = usable_rows(opts.heldout)
        heldout_robot = frame_batch(processor, rows, labelled_frames(rows)[: opts.eval_frames], opts.source_size)
    log.info("reading exercises ready in %.1f s (%dx%d frames)", time.monotonic() - started, width, height)
    step = 0
    rng = np.random.default_rng(opts.seed)
    if resume:
        state = torch.load(checkpoint / HEAD_FILE, weights_only=False)
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed ID reading at step %d from %s", step, checkpoint)
        kept = [line for line in (out / "log.jsonl").read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step] if (out / "log.jsonl").is_file() else []
        (out / "log.jsonl").write_text("".join(line + "\n" for line in kept))
    else:
        torch.manual_seed(opts.seed)
        (out / "log.jsonl").unlink(missing_ok=True)

    def save(where: Path, with_optimizer: bool) -> None:
        tmp = where.with_name(where.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        state: dict[str, Any] = {"head": head.state_dict(), "options": asdict(opts)}
        if with_optimizer:
            state.update(optimizer=optimizer.state_dict(), step=step, rng=rng.bit_generator.state,
                         torch_rng=torch.get_rng_state())
        torch.save(state, tmp / HEAD_FILE)
        shutil.rmtree(where, ignore_errors=True)
        tmp.rename(where)

    recent: list[float] = []
    entry: dict[str, Any] = {}
    with (out / "log.jsonl").open("a") as log_file:
        while step < opts.steps:
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine_lr(opts.lr, opts.warmup_steps, opts.steps, step)
            loss, _ = head.loss(model, *exercises.batch(processor, opts.frames, rng),
                                attribute_weight=opts.attribute_weight)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trained, opts.max_grad_norm))
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            recent.append(float(loss.detach()))
            if step % opts.log_every == 0 or step == opts.steps:
                entry = {"step": step, "id_reading_loss": sum(recent) / len(recent), "grad_norm": grad_norm,
                         "lr": warmup_cosine_lr(opts.lr, opts.warmup_steps, opts.steps, step - 1), "elapsed_s": round(time.monotonic() - started, 1)}
                recent = []
                if step % opts.eval_every == 0 or step == opts.steps:
                    vision.eval()
                    entry.update({f"heldout_exercises_{k}": v
                                  for k, v in reading_scores(head, model, heldout_exercises).items()})
                    if heldout_robot is not None:
                        entry.update({f"heldout_id_reading_{k}": v
                                      for k, v in reading_scores(head, model, heldout_robot).items()})
                    vision.train()
                log_file.write(json.dumps(entry) + "\n")
                log_file.flush()
                log.info("read %s", entry)
            if step % opts.save_every == 0 and step < opts.steps:
                save(checkpoint, with_optimizer=True)
    model.eval()
    save(out / "final", with_optimizer=False)
    return {"steps": step, "out": str(out / "final"), "log": str(out / "log.jsonl"),
            "wall_s": round(time.monotonic() - started, 1),
            **{k: v for k, v in entry.items() if k.startswith("heldout_")}}
