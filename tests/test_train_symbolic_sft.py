"""The perfect-perception diagnostic: its ID-digit weights, clip-local numbering and fresh-scene rows."""

from __future__ import annotations

import pytest
import torch

from stvg_train.id_reading import ID_DIGITS, NO_DIGIT, attribute_classes
from stvg_train.symbolic_sft import (
    FRAME_TIMES_S,
    SymbolicScenes,
    answer_id_weights,
    clip_local_ids,
    fresh_scene_rows,
    fresh_which_object_questions,
    main,
    set_linear_codes,
)
from tests.train_support import PieceTokenizer

SPEC = {"seconds": 10.0, "fps": 10.0, "width": 320, "height": 240, "n_objects": 4, "difficulty": "mixed",
        "max_queries": 4}


def test_only_the_id_digits_after_object_and_target_id_are_weighted():
    pieces = ["user", " 1", "5", "<think", ">Object", " ", "1", "5", "8", " from", " ", "3", ".", "0",
              "<answer", ">Target", " ID", ":", " ", "1", "5", "8", ",", " Time", " range", ":", " ", "3"]
    ids = torch.arange(len(pieces))
    labels = ids.clone()
    labels[:3] = -100  # the prompt: its digits are never weighted
    weights = answer_id_weights(PieceTokenizer(pieces), ids, labels, 5.0)
    weighted = [pieces[i] for i in range(len(pieces)) if weights[i] == 5.0]
    assert weighted == ["1", "5", "8", "1", "5", "8"]
    assert (weights[[i for i in range(len(pieces)) if weights[i] != 5.0]] == 1.0).all()


def test_clip_local_ids_number_tracks_by_first_appearance():
    row = {"frame_track_ids": [[], [158, 12], [12, 300]], "gt_target_id": 300}
    # as the robot numbers a clip: first appearance, within a frame the oldest (smallest) track ID first
    assert clip_local_ids(row) == {"frame_track_ids": [[], [2, 1], [1, 3]], "gt_target_id": 3}
    assert clip_local_ids({**row, "gt_target_id": 7})["gt_target_id"] == -1  # drawn nowhere


def test_fresh_scene_rows_put_each_query_target_under_its_number_with_its_look():
    scenes = SymbolicScenes(None, (320, 240), (224, 168))
    rows = fresh_scene_rows(scenes, 5, 3, SPEC)
    assert rows and all(r["timestamps_s"] == list(FRAME_TIMES_S) for r in rows)
    colours, shapes, _ = attribute_classes()
    for row in rows:
        numbers = sorted({n for ids in row["frame_track_ids"] for n in ids})
        assert numbers == list(range(1, len(numbers) + 1)) and row["gt_target_id"] in numbers
        classes = scenes.classes(row)  # (frames x 48 cells, digits + colour, shape, size)
        assert classes.shape == (len(FRAME_TIMES_S) * 48, ID_DIGITS + 3)
        target_cells = classes[(classes[:, ID_DIGITS - 1] == row["gt_target_id"])
                               & (classes[:, : ID_DIGITS - 1] == NO_DIGIT).all(axis=1)]
        assert len(target_cells)  # its number is drawn, and its cells show the object the caption names
        looks = {(colours[c], shapes[s]) for c, s in target_cells[:, ID_DIGITS:ID_DIGITS + 2] if c < len(colours)}
        assert any(colour in row["caption"] and shape in row["caption"] for colour, shape in looks), row["caption"]


def test_fresh_which_object_questions_name_the_object_under_the_number():
    scenes = SymbolicScenes(None, (320, 240), (224, 168))
    rows = fresh_scene_rows(scenes, 9, 3, SPEC)
    questions = fresh_which_object_questions(rows, scenes)
    assert questions and len({rows[q.row]["video"] for q in questions}) == len({r["video"] for r in rows})
    for q in questions:
        row = rows[q.row]
        number = int(q.answer.removeprefix("Object ").rstrip("."))
        assert number in row["frame_track_ids"][q.frame]  # drawn on the frame asked about
        obj = next(o for o in scenes.cache[row["video"]]["objects"] if o["id"] == row["numbered_objects"][number - 1])
        assert q.question.endswith(f"{obj['colour']} {obj['shape']}?")


def test_linear_codes_are_fixed_and_a_difference_of_places_is_one_direction():
    table = torch.nn.Embedding(6, 16)
    set_linear_codes(table, 2.0)
    codes = table.weight
    assert not codes.requires_grad
    assert torch.allclose(codes[0].norm(), torch.tensor(2.0)) and torch.allclose(codes[-1], -codes[0])
    steps = codes[1:] - codes[:-1]
    assert torch.allclose(steps, steps[0].expand_as(steps), atol=1e-6)  # equal steps: linear in the place


@pytest.mark.parametrize("options, error", [
    (["--motion-lookups"], "--motion-lookups needs --time-guides"),
    (["--fixed-positions", "2"], "--fixed-positions needs --cell-positions"),
    (["--place-weight", "1", "--cell-positions"], "not with --cell-positions"),
])
def test_the_diagnostic_refuses_options_that_do_not_go_together(tmp_path, capsys, options, error):
    with pytest.raises(SystemExit):
        main(["--work-dir", str(tmp_path), "--out", str(tmp_path / "out"), *options])
    assert error in capsys.readouterr().err
