"""`stvg-ros demo`'s check of its answer against the scene's ground truth, without ROS.

The ground-truth track is the received track that best covers the caption's GT boxes (the
evaluation's perception-ceiling track); the span is compared by temporal IoU in seconds on the
scene's time line (ROS stamps minus the first frame's stamp).
"""

from __future__ import annotations

import pytest

from stvg_ros.cli.demo import (
    _meaning,
    _report,
    check_answer,
    check_line,
    received_track_ids,
    reference_track_id,
)
from stvg_ros.core.types import Tracks, frame_stamp_ns
from stvg_ros.evaluation.loaders import Query

FPS = 10.0
FIRST_NS = frame_stamp_ns(0, FPS)
# decoded frames 10..19 (1.0 s to 1.9 s), frame ids one_based as the synthetic sets count them
GT_FIRST, GT_LAST = 10, 19


def _box_at(frame: int, x0: float) -> list[float]:
    return [x0 + 2 * frame, 50.0, x0 + 2 * frame + 20, 70.0]


def _query() -> Query:
    boxes = {f + 1: tuple(_box_at(f, 100.0)) for f in range(GT_FIRST, GT_LAST + 1)}
    return Query(
        query_id="clip", video_id="clip", caption="the red circle moves right", gt_start=GT_FIRST + 1,
        gt_end=GT_LAST + 2, gt_boxes=boxes, num_frames=40, fps=FPS, width=320, height=240, frame_base=1,
        eval_start=1, eval_end=40, sampling_fps=FPS, gt_start_s=GT_FIRST / FPS, gt_end_s=GT_LAST / FPS,
        target_id=0, dataset="synth",
    )  # fmt: skip


def _tracks(target_track: int, other_track: int, frames=range(40)) -> dict[int, Tracks]:
    """Two tracks on every frame: `target_track` on the GT object (shifted a pixel), `other_track`
    on another object far from it."""
    return {
        frame_stamp_ns(f, FPS): Tracks(
            xyxy=[[v + 1 for v in _box_at(f, 100.0)], _box_at(f, 10.0)], track_id=[target_track, other_track]
        )
        for f in frames
    }


def _answer(target_id: int, start_s: float, end_s: float) -> dict:
    return {
        "success": True,
        "target_id": target_id,
        "start": start_s,
        "end": end_s,
        "start_stamp": (FIRST_NS + round(start_s * 1e9)) / 1e9,
        "end_stamp": (FIRST_NS + round(end_s * 1e9)) / 1e9,
    }


GT_SPAN = (GT_FIRST / FPS, GT_LAST / FPS)


def test_the_track_on_the_gt_boxes_is_the_reference_and_a_right_answer_is_right():
    tracks = _tracks(target_track=7, other_track=3)
    gt_track = reference_track_id(_query(), tracks)
    assert gt_track == 7  # not the smaller ID 3: the one whose boxes cover the GT tube
    assert received_track_ids(tracks) == [3, 7]
    check = check_answer(_answer(7, 1.0, 1.9), GT_SPAN, gt_track, FIRST_NS)
    assert check == {"id_correct": True, "tiou": pytest.approx(1.0), "span_overlaps": True}
    half = check_answer(_answer(7, 1.45, 2.35), GT_SPAN, gt_track, FIRST_NS)
    assert half["tiou"] == pytest.approx(0.45 / 1.35, abs=1e-3) and half["span_overlaps"]
    summary = {"target_id": 7, "ground_truth": {"track_id": 7}, "check": half}
    assert check_line(summary) == "check: right target ID (track 7), span overlaps the ground truth (tIoU 0.33)"


def test_a_wrong_id_is_reported_wrong():
    tracks = _tracks(target_track=2, other_track=3)
    gt_track = reference_track_id(_query(), tracks)
    check = check_answer(_answer(3, 1.2, 1.6), GT_SPAN, gt_track, FIRST_NS)
    assert gt_track == 2 and check["id_correct"] is False and check["span_overlaps"]
    line = check_line({"target_id": 3, "ground_truth": {"track_id": 2}, "check": check})
    assert line.startswith("check: WRONG target ID (answered 3, ground truth track 2), span overlaps")


def test_a_span_outside_the_gt_span_does_not_overlap():
    gt_track = reference_track_id(_query(), _tracks(target_track=1, other_track=2))
    check = check_answer(_answer(1, 2.5, 3.5), GT_SPAN, gt_track, FIRST_NS)
    assert check == {"id_correct": True, "tiou": 0.0, "span_overlaps": False}
    line = check_line({"target_id": 1, "ground_truth": {"track_id": 1}, "check": check})
    assert "span does NOT overlap the ground truth (tIoU 0.00)" in line
    # a one-instant answer inside the GT span shares time with it (tIoU 0: it has no length)
    point = check_answer(_answer(1, 1.5, 1.5), GT_SPAN, gt_track, FIRST_NS)
    assert point["span_overlaps"] and point["tiou"] == 0.0


def test_missing_tracks_leave_the_id_unjudged():
    query = _query()
    assert reference_track_id(query, {}) is None
    # tracks only outside the GT span, or only untracked detections, or stamps of no scene frame
    assert reference_track_id(query, _tracks(4, 5, frames=range(25, 40))) is None
    untracked = {frame_stamp_ns(f, FPS): Tracks(xyxy=[_box_at(f, 100.0)]) for f in range(40)}
    assert reference_track_id(query, untracked) is None and received_track_ids(untracked) == []
    off_frame = {stamp + 1: frame for stamp, frame in _tracks(1, 2).items()}
    assert reference_track_id(query, off_frame) is None
    check = check_answer(_answer(4, 1.0, 1.9), GT_SPAN, None, FIRST_NS)
    assert check["id_correct"] is None and check["tiou"] == pytest.approx(1.0) and check["span_overlaps"]
    assert "target ID not judged" in check_line({"target_id": 4, "ground_truth": {"track_id": None}, "check": check})
    # no answer: nothing to judge
    assert check_answer({"success": False, "target_id": None, "start_stamp": None, "end_stamp": None},
                        GT_SPAN, 1, FIRST_NS) == {"id_correct": None, "tiou": None, "span_overlaps": False}  # fmt: skip


NOTE = "trained on synthetic scenes only: it knows only those scenes"


def test_the_report_names_the_model_and_its_note(tmp_path, monkeypatch):
    (tmp_path / "synth-model.yaml").write_text(
        f"name: synth-model\nkind: vlm\nmeaningful: true\nnote: '{NOTE}'\n"
        "files:\n  - {name: synth-model.gguf, format: gguf, source: {}}\n")
    monkeypatch.setenv("STVG_MODELS_PATH", str(tmp_path))
    meaning = _meaning("synth-model")
    assert meaning["meaningful"] is True and meaning["manifest_note"] == NOTE
    assert meaning["disclaimer"] == meaning["manifest_note"]
    tiny = _meaning("qwen25vl-tiny-random")
    assert tiny["meaningful"] is False and "not meaningful" in tiny["disclaimer"]
    check = check_answer(_answer(2, 1.0, 1.5), GT_SPAN, 2, FIRST_NS)
    summary = {
        "answered": True, "success": True, "message": "", "query": "the red circle moves right", "target_id": 2,
        "start": 1.0, "end": 1.5, "start_stamp": 1.0, "end_stamp": 1.5, "tube": [], "model": "synth-model.gguf",
        "grounding_model": "synth-model", "backend": "llama_cpp", **meaning,
        "ground_truth": {"text": "the red circle moves right", "start": 1.0, "end": 1.9, "track_id": 2},
        "check": check, "frames_played": 40, "tracks_received": 40,
        "frames": {"frames_lost": 0, "buffer_frames": 8}, "annotated_video": "v.mp4", "result_file": "r.json",
        "elapsed_s": 3.0,
    }  # fmt: skip
    report = _report(summary)
    assert "answered by the grounding model synth-model via llama_cpp" in report
    assert "it knows only those scenes" in report and "NOTE:" in report
    assert "check: right target ID (track 2), span overlaps the ground truth (tIoU 0.56)" in report


def test_on_a_generated_scene_the_reference_is_the_captions_object_under_its_track_id(tmp_path):
    """The demo's own path: the scene written to disk, its caption loaded as the evaluation loads
    it, and tracks that are the GT boxes under other IDs (object k -> track 10 + k)."""
    import json

    from stvg_ros.cli.demo import DEMO_FPS, _reference_query, first_stamp_ns
    from stvg_ros.synthetic.scenes import SceneSpec, write_dataset

    spec = SceneSpec(seconds=4.0, fps=DEMO_FPS, n_objects=3, difficulty="easy", max_queries=1)
    index = write_dataset(tmp_path / "scene", 3, 1, spec, bags=False)
    caption = index.load_queries()[0]
    gt = json.loads(index.gt[0].read_text())
    tracks = {
        frame["stamp_ns"]: Tracks(
            xyxy=[obj["xyxy"] for obj in frame["objects"]], track_id=[10 + obj["id"] for obj in frame["objects"]]
        )
        for frame in gt["frames"]
    }
    query = _reference_query(index.root, index.names[0])
    assert query is not None and query.gt_start_s == caption["start_s"]
    gt_track = reference_track_id(query, tracks)
    assert gt_track == 10 + caption["target_id"]
    first_ns = first_stamp_ns(DEMO_FPS)
    assert first_ns == gt["frames"][0]["stamp_ns"]
    answer = {
        "success": True,
        "target_id": gt_track,
        "start_stamp": caption["start_stamp_ns"] / 1e9,
        "end_stamp": caption["end_stamp_ns"] / 1e9,
    }
    check = check_answer(answer, (caption["start_s"], caption["end_s"]), gt_track, first_ns)
    assert check["id_correct"] is True and check["tiou"] == pytest.approx(1.0, abs=1e-3)
