"""Dense ID reading: a per-token loss that teaches the vision tower what the drawn IDs say.

A model trained from scratch sees one ID per answer, and learning to read it through the language
model alone is slow (SFT runs of several hundred steps stayed at chance). Here every visual token
(one 28×28-pixel cell after Qwen's 2×2 merge) gets a target: the digits of the drawn ID that covers
the cell most, right-aligned in `ID_DIGITS` places ("7" -> none, none, 7), or "none" where no ID is
drawn. A linear head on the merged visual tokens predicts them; the head exists only during
training (it is not part of the exported model). Where the IDs are drawn comes from the same
renderer as the frames (`core.render.render_ids` on an empty canvas), so targets and pixels agree.
"""

from __future__ import annotations

import numpy as np

#: Digit places of a drawn ID (hundreds, tens, units): IDs up to 999.
ID_DIGITS = 3
#: Class of "no digit here" (a cell with no ID, or a place an ID is too short to fill).
NO_DIGIT = 10
#: Pixels of Qwen2.5-VL's merged visual token (14-px patches, 2×2 merge).
CELL_PX = 28
#: A cell belongs to an ID when at least this many of its pixels are that ID's ink.
MIN_INK_PX = 6


def digit_classes(track_id: int) -> list[int]:
    """`ID_DIGITS` classes of one ID, right-aligned: 7 -> [10, 10, 7], 152 -> [1, 5, 2]."""
    text = str(int(track_id))
    if len(text) > ID_DIGITS:
        raise ValueError(f"track ID {track_id} has more than {ID_DIGITS} digits")
    return [NO_DIGIT] * (ID_DIGITS - len(text)) + [int(c) for c in text]


def cell_targets(track_ids: list[int], boxes_src: list[list[float]], src_size: tuple[int, int],
                 frame_size: tuple[int, int]) -> np.ndarray:
    """(cells, ID_DIGITS) int64 targets of one frame, cells in raster order of the merged token grid.

    `boxes_src` are the tracks' boxes in source pixels (`src_size` = width, height); the frame the model
    sees is `frame_size` (width, height, multiples of CELL_PX), where the IDs are drawn at the scaled
    box centres, as `grounding.sampling.sample_clip` draws them.
    """
    from stvg_ros.core.render import render_ids
    from stvg_ros.core.types import Tracks
    from stvg_ros.grounding.sampling import scale_tracks

    width, height = frame_size
    grid_w, grid_h = width // CELL_PX, height // CELL_PX
    targets = np.full((grid_h * grid_w, ID_DIGITS), NO_DIGIT, np.int64)
    if not track_ids:
        return targets
    ink = np.zeros((len(track_ids), grid_h, grid_w), np.int64)
    canvas = np.zeros((height, width, 3), np.uint8)
    for k, (track_id, box) in enumerate(zip(track_ids, boxes_src, strict=True)):
        one = Tracks(xyxy=np.asarray([box], np.float32), track_id=np.asarray([track_id]))
        drawn = render_ids(canvas, scale_tracks(one, width / src_size[0], height / src_size[1]))[..., 0] > 0
        cropped = drawn[: grid_h * CELL_PX, : grid_w * CELL_PX]
        ink[k] = cropped.reshape(grid_h, CELL_PX, grid_w, CELL_PX).sum(axis=(1, 3))
    owner, amount = ink.argmax(axis=0).ravel(), ink.max(axis=0).ravel()
    for cell in np.flatnonzero(amount >= MIN_INK_PX):
        targets[cell] = digit_classes(track_ids[owner[cell]])
    return targets


class IdReadingHead:
    """Linear head on the merged visual tokens: logits of `ID_DIGITS` places × 11 classes per token."""

    def __init__(self, hidden_size: int, seed: int = 0) -> None:
        import torch

        generator = torch.Generator().manual_seed(seed)
        self.linear = torch.nn.Linear(hidden_size, ID_DIGITS * (NO_DIGIT + 1))
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(self.linear.weight.shape, generator=generator) * 0.02)
            self.linear.bias.zero_()

    def parameters(self):
        return self.linear.parameters()

    def loss(self, model, pixel_values, image_grid_thw, targets, *, empty_weight: float = 0.1):
        """Cross-entropy of the digit classes over all tokens; cells without an ID weigh `empty_weight`."""
        import torch

        tokens = visual_tokens(model, pixel_values, image_grid_thw)
        logits = self.linear(tokens.float()).view(-1, ID_DIGITS, NO_DIGIT + 1)
        per_place = torch.nn.functional.cross_entropy(logits.reshape(-1, NO_DIGIT + 1), targets.reshape(-1),
                                                      reduction="none").view(-1, ID_DIGITS)
        has_id = (targets != NO_DIGIT).any(dim=1).float()
        weight = has_id + empty_weight * (1.0 - has_id)
        return (per_place.mean(dim=1) * weight).sum() / weight.sum(), logits

    def state_dict(self) -> dict:
        return self.linear.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.linear.load_state_dict(state)


def visual_tokens(model, pixel_values, image_grid_thw):
    """The merged visual tokens the language model receives (rows in the processor's order)."""
    out = model.model.visual(pixel_values, grid_thw=image_grid_thw)
    return out.pooler_output if hasattr(out, "pooler_output") else out


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
    """On the cells where an ID is drawn: the share read right in every place, and per place."""
    import torch

    pixel_values, grid, targets = batch
    with torch.no_grad():
        loss, logits = head.loss(model, pixel_values, grid, targets)
    has_id = (targets != NO_DIGIT).any(dim=1)
    right = logits.argmax(dim=-1)[has_id] == targets[has_id]
    n = int(has_id.sum())
    return {"loss": float(loss), "cells": n, "exact": float(right.all(dim=1).float().mean()) if n else 0.0,
            "place": float(right.float().mean()) if n else 0.0}

