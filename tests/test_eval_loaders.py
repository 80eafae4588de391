"""Annotation loaders on small hand-written files of every format, and their errors."""

from __future__ import annotations

import json

import pytest

from stvg_ros.evaluation import EvalError
from stvg_ros.evaluation.loaders import load_annotations
from stvg_ros.evaluation.predictions import Prediction, check_predictions, load_predictions


def write(path, data):
    path.write_text(json.dumps(data))
    return path


HCSTVG_V1 = {
    "10_abc.mp4": {"bbox": [[10, 20, 30, 40], [11, 21, 30, 40]], "st_time": 2.0, "ed_time": 2.1,
                   "img_num": 500, "caption": "The man in red sits down.", "width": 640, "height": 360,
                   "st_frame": 51},
}  # fmt: skip
HCSTVG_V2 = {
    "20_xyz.mp4": {"bbox": [[1, 2, 3, 4]] * 3, "st_time": 1.0, "ed_time": 1.1, "img_num": 300,
                   "img_size": [720, 1280], "English": "A woman walks.", "st_frame": 31},
}  # fmt: skip


def test_hcstvg_v1_and_v2(tmp_path):
    v1 = load_annotations(write(tmp_path / "v1.json", HCSTVG_V1))
    q = v1.queries["10_abc"]  # query id = file name without extension
    assert v1.format == "hcstvg" and q.caption == "The man in red sits down."
    assert (q.gt_start, q.gt_end) == (51, 53)  # end-exclusive
    assert q.gt_boxes == {51: (10.0, 20.0, 40.0, 60.0), 52: (11.0, 21.0, 41.0, 61.0)}  # xywh -> xyxy
    assert (q.width, q.height, q.num_frames, q.frame_base, q.frame_ids) == (640, 360, 500, 0, "decoded")
    assert q.fps == 25.0  # img_num / 20 s
    assert (q.eval_start, q.eval_end, q.sampling_fps) == (0, 499, 25.0)  # TubeDETR: range(0, img_num - 1)
    assert v1.benchmark == "hcstvg_v1" and v1.frame_ids == "decoded"
    v2 = load_annotations(write(tmp_path / "v2.json", HCSTVG_V2))
    q = v2.queries["20_xyz"]
    assert (q.width, q.height) == (1280, 720) and q.caption == "A woman walks."
    assert (q.gt_start, q.gt_end, q.gt_start_s, q.gt_end_s) == (31, 34, 1.0, 1.1)
    assert q.to_decoded(31) == 31 and q.to_annotation(0) == 0  # st_frame used as written (TubeDETR)
    assert v2.benchmark == "hcstvg_v2"


def test_one_based_frame_ids_are_an_explicit_option(tmp_path):
    path = write(tmp_path / "v2.json", HCSTVG_V2)
    decoded, one_based = load_annotations(path).queries["20_xyz"], load_annotations(path, frame_ids="one_based")
    q = one_based.queries["20_xyz"]
    assert one_based.frame_ids == "one_based" and (q.frame_base, q.first_frame, q.end_frame) == (1, 1, 301)
    assert (q.gt_start, q.gt_end) == (decoded.gt_start, decoded.gt_end) == (31, 34)  # same ids, other frames
    assert q.to_decoded(31) == 30 and q.to_annotation(0) == 1
    assert (q.eval_start, q.eval_end) == (1, 300)  # TubeDETR's decoded 0..298, in one_based ids
    with pytest.raises(EvalError, match="unknown frame-id convention 'zero'"):
        load_annotations(path, frame_ids="zero")


def test_tubedetr_processed_list(tmp_path):
    data = [{"original_video_id": "10_abc", "frame_count": 500, "width": 640, "height": 360,
             "tube_start_frame": 51, "tube_end_frame": 53, "tube_start_time": 2.0, "tube_end_time": 2.1,
             "video_path": "0/10_abc.mp4", "caption": "The man in red sits down.", "video_id": 0,
             "trajectory": [[10, 20, 30, 40], [11, 21, 30, 40]]}]  # fmt: skip
    tubedetr = load_annotations(write(tmp_path / "test_proc.json", data))
    original = load_annotations(write(tmp_path / "v1.json", HCSTVG_V1))
    assert tubedetr.format == "tubedetr" and tubedetr.benchmark == "hcstvg_v1"
    assert load_annotations(write(tmp_path / "valv2_proc.json", data)).benchmark == "hcstvg_v2"
    assert load_annotations(write(tmp_path / "mine.json", data)).benchmark == ""  # not guessed
    a, b = tubedetr.queries["10_abc"], original.queries["10_abc"]
    assert (a.gt_start, a.gt_end, dict(a.gt_boxes), a.num_frames) == (b.gt_start, b.gt_end, dict(b.gt_boxes), 500)


VIDSTG_ENTRY = {"vid": "777", "fps": 30.0, "frame_count": 100, "used_segment": {"begin_fid": 10, "end_fid": 90},
                "width": 640, "height": 360, "subject/objects": [{"tid": 0, "category": "adult"}],
                "temporal_gt": {"begin_fid": 20, "end_fid": 23},
                "captions": [{"description": "an adult walks.", "type": "person", "target_id": 0}],
                "questions": [{"description": "who walks?", "type": "person", "target_id": 0}]}  # fmt: skip


def test_vidstg_original_with_vidor_boxes_and_tubedetr_file(tmp_path):
    vidor = tmp_path / "vidor" / "0001"
    vidor.mkdir(parents=True)
    frames = [[{"tid": 0, "bbox": {"xmin": f, "ymin": 0, "xmax": f + 10, "ymax": 20}}] for f in range(100)]
    write(vidor / "777.json", {"video_id": "777", "trajectories": frames})
    raw = load_annotations(write(tmp_path / "val_annotations.json", [VIDSTG_ENTRY]), vidor_dir=tmp_path / "vidor")
    assert raw.format == "vidstg" and list(raw.queries) == ["0", "1"]  # questions first, as TubeDETR numbers them
    q = raw.queries["0"]
    assert (q.caption, q.qtype, q.target_id) == ("who walks?", "interrogative", 0)
    assert (q.gt_start, q.gt_end, q.frame_base, q.eval_start, q.eval_end) == (20, 23, 0, 10, 90)
    assert q.gt_boxes[21] == (21.0, 0.0, 31.0, 20.0) and q.sampling_fps == 30.0
    processed = {"videos": [{"original_video_id": "777", "frame_count": 100, "fps": 30.0, "width": 640,
                             "height": 360, "start_frame": 10, "end_frame": 90, "tube_start_frame": 20,
                             "tube_end_frame": 23, "caption": "who walks?", "target_id": 0, "video_id": 0,
                             "qtype": "interrogative"}],
                 "trajectories": {"777": {"0": {str(f): {"bbox": [f, 0, 10, 20]} for f in range(100)}}}}  # fmt: skip
    tubedetr = load_annotations(write(tmp_path / "test.json", processed))
    p = tubedetr.queries["0"]
    assert (p.gt_start, p.gt_end, dict(p.gt_boxes), p.eval_start, p.eval_end) == (
        q.gt_start, q.gt_end, dict(q.gt_boxes), q.eval_start, q.eval_end)  # fmt: skip
    assert tubedetr.benchmark == raw.benchmark == "vidstg" and tubedetr.frame_ids == "decoded"
    with pytest.raises(EvalError, match="VidSTG frame ids are 0-based"):
        load_annotations(tmp_path / "test.json", frame_ids="one_based")
    with pytest.raises(EvalError, match="--vidor-dir"):
        load_annotations(tmp_path / "val_annotations.json")
    # VidSTG is reported per sentence type; the question is answered exactly, the caption not at all
    from stvg_ros.evaluation.metrics import evaluate

    exact = Prediction("0", 20, 23, {f: q.gt_boxes[f] for f in range(20, 23)})
    summary, _ = evaluate(raw, {"0": exact}, "hcstvg_official")  # every frame (5 fps samples miss 20..22)
    assert summary["by_qtype"]["interrogative"]["m_vIoU"] == 1.0 and summary["by_qtype"]["interrogative"]["n_queries"] == 1
    assert summary["by_qtype"]["declarative"]["m_vIoU"] == 0.0 and summary["m_vIoU"] == 0.5


def test_synthetic_set_gives_every_query(tmp_path):
    from stvg_ros.synthetic.scenes import SceneSpec, write_dataset

    index = write_dataset(tmp_path / "set", seed=5, n_videos=1, spec=SceneSpec(seconds=6, fps=10), bags=False)
    listing = json.loads(index.queries.read_text())
    annotations = load_annotations(tmp_path / "set")
    assert annotations.format == "synth" and len(annotations) == len(listing)
    for rank, (query, item) in enumerate(zip(annotations, listing, strict=True)):
        assert query.query_id == ("synth_5_000" if rank == 0 else f"synth_5_000#{rank}")
        # queries.json counts frames from 0, inclusive; synthetic sets use one_based ids, end-exclusive
        assert query.frame_ids == "one_based" and (query.eval_start, query.eval_end) == (1, 60)
        assert (query.gt_start, query.gt_end) == (item["start_frame"] + 1, item["end_frame"] + 2)
        assert query.target_id == item["target_id"] and query.fps == 10.0 and query.num_frames == 60
        assert len(query.gt_boxes) == item["end_frame"] - item["start_frame"] + 1
    primary = load_annotations(index.annotations)  # the HC-STVG v2 file alone: one query per video
    assert list(primary.queries) == ["synth_5_000"] and primary.format == "synth"
    assert annotations.benchmark == "synth" and primary.frame_ids == "one_based"
    with pytest.raises(EvalError, match="one_based"):
        load_annotations(tmp_path / "set", frame_ids="decoded")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        ("", "is empty"),
        ("{not json", "not valid JSON"),
        ('{"a.mp4": {"foo": 1}}', "unrecognised annotation format"),
        ('{"a.mp4": {"bbox": [[0, 0, 1, 1]], "st_frame": "x", "img_num": 10, "English": "q"}}', "wrong type"),
        ('{"a.mp4": {"bbox": [], "st_frame": 1, "img_num": 10, "English": "q"}}', "empty"),
        ('{"a.mp4": {"bbox": [[0, 0, 1, 1]], "st_frame": -1, "img_num": 10, "English": "q"}}', "before the video"),
        ('{"a.mp4": {"bbox": [[0, 0, 1]], "st_frame": 1, "img_num": 10, "English": "q"}}', r"\[x, y, w, h\]"),
        ('{"a.mp4": {"bbox": [[0, 0, 1, 1]], "st_frame": 1, "img_num": 10}}', "no caption"),
    ],
)
def test_bad_annotation_files(tmp_path, content, message):
    path = tmp_path / "ann.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(EvalError, match=message):
        load_annotations(path)


def test_tube_past_the_video_end_is_a_warning(tmp_path):
    data = {"a.mp4": {"bbox": [[0, 0, 1, 1]] * 3, "st_frame": 9, "img_num": 10, "English": "q"}}
    annotations = load_annotations(write(tmp_path / "a.json", data))
    assert any("after the video's last frame" in w for w in annotations.warnings)


def test_prediction_files_and_their_errors(tmp_path):
    annotations = load_annotations(write(tmp_path / "v1.json", HCSTVG_V1))
    preds = load_predictions(write(tmp_path / "p.json", {
        "10_abc": {"sted": [51, 53], "boxes": {"51": [[10, 20, 40, 60]], "52": [11, 21, 41, 61]}, "target_id": 4},
    }))  # fmt: skip
    check_predictions(preds, annotations)
    assert preds["10_abc"] == Prediction("10_abc", 51, 53, {51: (10, 20, 40, 60), 52: (11, 21, 41, 61)}, target_id=4)
    official = load_predictions(write(tmp_path / "o.json", {"10_abc": {"st_frame": 51, "ed_frame": 52, "bbox": {}}}))
    assert (official["10_abc"].start, official["10_abc"].end) == (51, 53)  # inclusive ed_frame -> exclusive

    def fails(entry, message, key="10_abc"):
        with pytest.raises(EvalError, match=message):
            check_predictions(load_predictions(write(tmp_path / "bad.json", {key: entry})), annotations)

    fails({"sted": [1, 2]}, "not in the annotations", key="other_video")
    check_predictions(load_predictions(write(tmp_path / "zero.json", {"10_abc": {"sted": [0, 10]}})), annotations)
    fails({"sted": [0, 501]}, "frame-index mismatch.*frame 500 is outside the video's frames 0..499")
    fails({"sted": [51, 53], "boxes": {"500": [0, 0, 1, 1]}}, "frame-index mismatch.*500")
    fails({"sted": [53, 51]}, "ends before it starts")
    fails({"sted": [51, 53], "boxes": {"51": [5, 5, 1, 1]}}, "x2 < x1")
    fails({"sted": [51, 53], "boxes": {"x": [0, 0, 1, 1]}}, "not an integer")
    fails({"sted": [51, 53], "boxes": {"51": [0, 0, "a", 1]}}, "not a finite number")
    fails({"boxes": {}}, "no span")
    fails([1, 2], "expected an object")
