"""Dense ID reading (`stvg_train.id_reading`): per-token targets agree with the drawn IDs, the head's
loss trains the vision tower, and its scores count only the cells where an ID is drawn."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image

from stvg_ros.core.render import render_ids
from stvg_ros.core.types import Tracks
from stvg_ros.grounding.sampling import scale_tracks
from stvg_train.id_reading import (
    ATTRIBUTES,
    CELL_PX,
    HEAD_FILE,
    ID_DIGITS,
    MIN_INK_PX,
    NO_DIGIT,
    TARGET_COLUMNS,
    IdExercises,
    IdReadingHead,
    ReadingOptions,
    attribute_classes,
    attribute_targets,
    cell_targets,
    digit_classes,
    frame_batch,
    labelled_frames,
    reading_scores,
    train_reading,
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
    assert targets.shape == (grid_w * grid_h, TARGET_COLUMNS)
    targets, characters = targets[:, :ID_DIGITS], targets[:, ID_DIGITS:]
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
    # the patches' characters: the digits of both IDs, only inside the cells of their ID
    assert set(characters[marked].ravel()) - {NO_DIGIT} == {7, 1, 5, 2}
    assert (characters[~marked] == NO_DIGIT).all()
    assert {int(c) for c in characters[cells[tuple(digit_classes(7))]].ravel()} - {NO_DIGIT} == {7}
    # no tracks: every cell is empty
    assert (cell_targets([], [], SOURCE, FRAME) == NO_DIGIT).all()


def test_attribute_targets_name_the_object_each_cell_shows():
    """Bodies back to front (the nearer wins where they overlap); an ID cell names the object whose ID it
    shows (even over another object's body); an ID drawn on no object names none."""
    none = tuple(len(names) for names in attribute_classes())
    back, front = (1, 2, 0), (3, 4, 2)
    bodies = [([0, 0, 56, 56], back), ([28, 28, 84, 84], front)]  # cells (0..1, 0..1) and (1..2, 1..2)
    owner = np.full(8 * 6, -1)
    owner[2 * 8 + 2], owner[5 * 8 + 7] = 0, -2  # the back object's ID over the front one; a stray ID
    shown = attribute_targets(bodies, owner, FRAME).reshape(6, 8, len(ATTRIBUTES))
    assert shown.shape == (6, 8, 3)
    assert tuple(shown[0, 0]) == tuple(shown[0, 1]) == tuple(shown[1, 0]) == back
    assert tuple(shown[1, 1]) == tuple(shown[1, 2]) == tuple(shown[2, 1]) == front  # in front
    assert tuple(shown[2, 2]) == back  # the back object's ID, drawn over the front object
    assert tuple(shown[5, 7]) == tuple(shown[4, 4]) == none
    # a box smaller than a cell still marks the cell it mostly covers
    small = attribute_targets([([30, 30, 40, 40], back)], np.full(48, -1), FRAME).reshape(6, 8, 3)
    assert tuple(small[1, 1]) == back and (small.reshape(-1, 3) != back).any(axis=1).sum() == 47


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
    assert targets.shape == (3 * (FRAME[0] // CELL_PX) * (FRAME[1] // CELL_PX), TARGET_COLUMNS)
    head = IdReadingHead(model.config.text_config.hidden_size, model.config.vision_config.hidden_size)
    before = reading_scores(head, model, (pixel_values, grid, targets))
    id_cells = int((targets[:, :ID_DIGITS] != NO_DIGIT).any(dim=1).sum())
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


def test_attribute_loss_teaches_what_the_objects_look_like(tmp_path):
    """On exercises (targets with attribute columns) the head also learns the shown objects' colour, shape
    and size; scores report them on object cells and on the cells of objects' IDs. Weight 0: digits only."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = build_small_qwen25vl(tmp_path / "model", max_pixels=FRAME[0] * FRAME[1])
    processor = AutoProcessor.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32)
    batch = IdExercises(SPEC, FRAME, seed=3, pool=2).batch(processor, 4, np.random.default_rng(1))
    head = IdReadingHead(model.config.text_config.hidden_size, model.config.vision_config.hidden_size)
    with torch.no_grad():
        digits_only, _ = head.loss(model, *batch, attribute_weight=0.0)
        with_attributes, _ = head.loss(model, *batch)
        without_columns, _ = head.loss(model, *batch[:2], batch[2][:, :TARGET_COLUMNS])
    assert with_attributes > digits_only == pytest.approx(float(without_columns))
    before = reading_scores(head, model, batch)
    assert {"object_attributes", "id_cell_attributes", "object_colour", "object_shape", "object_size"} <= set(before)
    optimizer = torch.optim.AdamW([*model.model.visual.parameters(), *head.parameters()], lr=3e-3)
    for _ in range(30):
        loss, _ = head.loss(model, *batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = reading_scores(head, model, batch)
    assert after["object_attributes"] > max(0.5, before["object_attributes"])
    assert after["id_cell_attributes"] > before["id_cell_attributes"]
    assert min(after[f"object_{a}"] for a in ("colour", "shape", "size")) >= after["object_attributes"]
    shapes = {key: value for key, value in after.items() if key.startswith("object_shape_")}
    assert shapes and set(shapes) <= {f"object_shape_{name}" for name in attribute_classes()[1]}
    assert min(shapes.values()) <= after["object_shape"] <= max(shapes.values())


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
    assert rows.decoded == 2 and grid.shape[0] == 3 and targets.shape[1] == TARGET_COLUMNS  # no decoding again


SPEC = {"seconds": 4.0, "fps": 5.0, "width": 320, "height": 240, "n_objects": 3, "difficulty": "mixed"}


def test_exercises_draw_readable_ids_where_their_targets_say():
    exercises = IdExercises(SPEC, FRAME, seed=3, pool=2, extra_ids=4)
    rng = np.random.default_rng(0)
    widths, cells, inked = set(), 0, 0
    objects_with_ids, stray_ids, colours = 0, 0, set()
    for _ in range(20):
        frame, targets = exercises.frame(rng)
        assert frame.shape == (FRAME[1], FRAME[0], 3) and frame.dtype == np.uint8
        assert targets.shape == ((FRAME[0] // CELL_PX) * (FRAME[1] // CELL_PX), TARGET_COLUMNS + len(ATTRIBUTES))
        shown = targets[:, TARGET_COLUMNS:]
        has_object = shown[:, 0] != len(attribute_classes()[0])
        with_id = (targets[:, :ID_DIGITS] != NO_DIGIT).any(axis=1)
        # an object's cells name all three attributes, other cells none
        assert ((shown != np.asarray([len(n) for n in attribute_classes()])) == has_object[:, None]).all()
        objects_with_ids += int((has_object & with_id).sum())
        stray_ids += int((~has_object & with_id).sum())
        colours |= set(shown[has_object, 0].tolist())
        targets = targets[:, :ID_DIGITS]
        # the ink's core (pure red; the scenes' red shapes are darker): anti-aliased edges are left out
        red = (frame[..., 0] >= 240) & (frame[..., 1] <= 30) & (frame[..., 2] <= 30)
        ink = red.reshape(FRAME[1] // CELL_PX, CELL_PX, FRAME[0] // CELL_PX, CELL_PX).sum(axis=(1, 3)).ravel()
        labelled = (targets != NO_DIGIT).any(axis=1)
        assert labelled.any() and (ink[~labelled] < MIN_INK_PX).all()  # no ID drawn where the targets say none
        inked += int((ink[labelled] > 0).sum())
        widths |= {int((row != NO_DIGIT).sum()) for row in targets[labelled]}
        cells += int(labelled.sum())
    assert widths == {1, 2, 3} and cells > 20 * 4  # IDs of every width, several per frame
    assert inked >= 0.9 * cells  # labelled cells show the ink's core
    # the IDs at objects' centres name their object, the ones at free places none; several colours seen
    assert objects_with_ids > 20 and stray_ids > 20 and len(colours) >= 2
    again, _ = IdExercises(SPEC, FRAME, seed=3, pool=2).frame(np.random.default_rng(0))
    first, _ = exercises.frame(np.random.default_rng(0))
    assert np.array_equal(again, first)  # seeded

def test_exercises_with_max_id_draw_distinct_small_numbers():
    """`id_numbering: clip` draws 1..K per clip: the exercises' IDs are then distinct numbers in 1..max_id."""
    exercises = IdExercises(SPEC, FRAME, seed=3, pool=2, extra_ids=4, max_id=5)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(20):
        _, targets = exercises.frame(rng)
        ids = targets[:, :ID_DIGITS]
        labelled = ids[(ids != NO_DIGIT).any(axis=1)]
        assert (labelled[:, :-1] == NO_DIGIT).all()  # one digit each
        seen |= set(labelled[:, -1].tolist())
    assert seen <= set(range(1, 6)) and len(seen) == 5
    with pytest.raises(ValueError, match="max_id"):
        IdExercises(SPEC, FRAME, seed=3, pool=1, max_id=0)



@pytest.mark.slow
def test_train_reading_resumes_from_its_checkpoint(tmp_path):
    model = build_small_qwen25vl(tmp_path / "init", seed=0, max_pixels=FRAME[0] * FRAME[1])
    opts = ReadingOptions(model_dir=str(model), out_dir=str(tmp_path / "read"), scenes=SPEC,
                          max_pixels=FRAME[0] * FRAME[1], steps=2, frames=2, pool=2, eval_every=2, eval_frames=2,
                          save_every=1, log_every=1, threads=1)
    first = train_reading(opts)
    assert first["steps"] == 2 and first["heldout_exercises_cells"] > 0
    state = torch.load(tmp_path / "read" / "final" / HEAD_FILE, weights_only=False)
    assert set(state) == {"head", "options"}  # the final model carries the head, no optimizer
    assert torch.load(tmp_path / "read" / "checkpoint-last" / HEAD_FILE, weights_only=False)["step"] == 1
    # a longer run over the same folder resumes at the checkpoint (step 1): the log is rewritten from there
    opts.steps = 3
    assert train_reading(opts)["steps"] == 3
    log = [json.loads(line) for line in (tmp_path / "read" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3]
