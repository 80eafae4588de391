"""Dense ID reading (`stvg_train.id_reading`): per-token targets agree with the drawn IDs, the head's
loss trains the vision tower, and its scores count only the cells where an ID is drawn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image

from stvg_ros.core.render import render_ids
from stvg_ros.core.types import Tracks
from stvg_ros.grounding.sampling import scale_tracks
from stvg_train.id_reading import (
    CELL_PX,
    ID_DIGITS,
    MIN_INK_PX,
    NO_DIGIT,
    IdReadingHead,
    cell_targets,
    digit_classes,
    frame_batch,
    labelled_frames,
    reading_scores,
)
from stvg_train.small_model import build_small_qwen25vl

SOURCE = (320, 240)
FRAME = (224, 168)  # 8 x 6 merged tokens


def test_digit_classes_are_right_aligned():
    assert digit_classes(7) == [NO_DIGIT, NO_DIGIT, 7]
    assert digit_classes(52) == [NO_DIGIT, 5, 2]
    assert digit_classes(152) == [1, 5, 2]
    with pytest.raises(ValueError, match="more than 3 digits"):
        digit_classes(1000)


def test_cell_targets_mark_the_cells_the_renderer_inks():
    ids, boxes = [7, 152], [[20, 20, 60, 60], [200, 150, 260, 210]]
    targets = cell_targets(ids, boxes, SOURCE, FRAME)
    grid_w, grid_h = FRAME[0] // CELL_PX, FRAME[1] // CELL_PX
    assert targets.shape == (grid_w * grid_h, ID_DIGITS)
    # the frame the model sees: the same tracks, scaled, drawn by the renderer
    tracks = scale_tracks(Tracks(xyxy=np.asarray(boxes, np.float32), track_id=np.asarray(ids)),
                          FRAME[0] / SOURCE[0], FRAME[1] / SOURCE[1])
    ink = render_ids(np.zeros((FRAME[1], FRAME[0], 3), np.uint8), tracks)[..., 0] > 0
    per_cell = ink.reshape(grid_h, CELL_PX, grid_w, CELL_PX).sum(axis=(1, 3)).ravel()
    marked = (targets != NO_DIGIT).any(axis=1)
    assert marked.any() and (per_cell[marked] >= MIN_INK_PX).all() and not marked[per_cell == 0].any()
    seen = {tuple(t) for t in targets[marked]}
    assert seen == {tuple(digit_classes(7)), tuple(digit_classes(152))}
    # the small ID sits near the top-left, the large one near the bottom-right
    cells = {tuple(t): np.flatnonzero((targets == t).all(axis=1)) for t in seen}
    assert cells[tuple(digit_classes(7))].max() < cells[tuple(digit_classes(152))].min()
    # no tracks: every cell is empty
    assert (cell_targets([], [], SOURCE, FRAME) == NO_DIGIT).all()


def _rows() -> Dataset:
    frame = Image.new("RGB", FRAME, (90, 90, 90))
    return Dataset.from_dict({
        "video": ["a", "a", "b"],
        "images": [[frame, frame], [frame, frame], [frame, frame]],
        "timestamps_s": [[0.0, 0.5]] * 3,
        "frame_track_ids": [[[3], []], [[3], []], [[41, 42], [41]]],
        "frame_track_boxes": [[[[10, 10, 50, 50]], []], [[[10, 10, 50, 50]], []],
                              [[[10, 10, 50, 50], [200, 100, 260, 160]], [[10, 10, 50, 50]]]],
    })


def test_labelled_frames_once_per_video_and_only_with_ids():
    assert labelled_frames(_rows()) == [(0, 0), (2, 0), (2, 1)]
    assert labelled_frames(None) == []
    wide = Dataset.from_dict({"video": ["c"], "frame_track_ids": [[[12], [1234]]]})
    with pytest.raises(ValueError, match="track ID 1234: ID reading covers IDs of up to 3 digits"):
        labelled_frames(wide)


def test_head_loss_trains_and_scores_count_id_cells_only(tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = build_small_qwen25vl(tmp_path / "model", max_pixels=FRAME[0] * FRAME[1])
    processor = AutoProcessor.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32)
    rows = _rows()
    pixel_values, grid, targets = frame_batch(processor, rows, labelled_frames(rows), SOURCE)
    assert grid.tolist() == [[1, FRAME[1] // 14, FRAME[0] // 14]] * 3
    assert targets.shape == (3 * (FRAME[0] // CELL_PX) * (FRAME[1] // CELL_PX), ID_DIGITS)
    head = IdReadingHead(model.config.text_config.hidden_size)
    before = reading_scores(head, model, (pixel_values, grid, targets))
    id_cells = int((targets != NO_DIGIT).any(dim=1).sum())
    assert before["cells"] == id_cells > 0 and 0.0 <= before["exact"] <= before["place"] <= 1.0
    params = [*model.model.visual.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    for _ in range(30):  # memorising three frames is quick
        loss, _ = head.loss(model, pixel_values, grid, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = reading_scores(head, model, (pixel_values, grid, targets))
    assert after["loss"] < 0.5 * before["loss"] and after["place"] > before["place"]


def test_video_frames_decodes_each_video_once():
    from stvg_ros.synthetic.tiny_vlm import build_processor, build_tokenizer
    from stvg_train.sft import VideoFrames

    class CountingRows:
        """Prepared rows that count how often a row (and with it all its frames) is decoded."""

        def __init__(self, rows):
            self.rows, self.decoded = rows, 0

        def __getitem__(self, key):
            if isinstance(key, str):
                return self.rows[key]
            self.decoded += 1
            return self.rows[key]

    rows = CountingRows(_rows())
    frames = VideoFrames(rows)
    assert frames[1] is frames[0]  # rows 0 and 1 are queries of video "a": the same frames
    assert frames[2]["frame_track_ids"] == [[41, 42], [41]] and rows.decoded == 2
    processor = build_processor(build_tokenizer(300, ["a b c"]), max_pixels=FRAME[0] * FRAME[1])
    _, grid, targets = frame_batch(processor, frames, [(0, 0), (1, 0), (2, 0)], SOURCE)
    assert rows.decoded == 2 and grid.shape[0] == 3 and targets.shape[1] == ID_DIGITS  # no decoding again
