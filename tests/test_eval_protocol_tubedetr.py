"""`stvg-ros eval score` under the default protocol gives TubeDETR's evaluator's numbers.

The reference below is written from METHOD.md §9's words alone (not from the product code): frame
ids are 0-based decoded frames, the GT tube is [st_frame, st_frame + len(bbox)) with st_frame as
written, the evaluation frames start at 0 and run over 0 .. img_num − 2 at 5 fps of a 20-s clip,
thinned to 200, and vIoU sums box IoUs over sampled frames of the intersection, divided by the
sampled frames of the union.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from stvg_ros.cli import eval as eval_cli
from stvg_ros.cli.main import build_parser

KEYS = ("m_tIoU", "m_vIoU", "vIoU@0.3", "vIoU@0.5")


def main(argv: list[str]) -> int:
    """`stvg-ros ARGV` in this process: the CLI's parser, then `stvg_ros.cli.eval.run`."""
    return eval_cli.run(build_parser(argv).parse_args(argv))


def area_iou(a, b):
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)


def sampled_frames(first, stop, video_fps):
    """Frame `first`, then each f in range(first, stop) whose int(f * rate) passes the last kept one."""
    rate = 5 / video_fps
    kept = [first]
    for f in range(first, stop):
        if int(kept[-1] * rate) < int(f * rate):
            kept.append(f)
    if len(kept) > 200:
        kept = [kept[(j * len(kept)) // 200] for j in range(200)]
    return kept


def reference_query(frames, gt_start, gt_boxes_xywh, pred):
    """(tIoU, vIoU) of one query; `pred` = {"sted": [s, e], "boxes": {"<frame>": [[x1, y1, x2, y2]]}}."""
    gs, ge = gt_start, gt_start + len(gt_boxes_xywh)
    ps, pe = pred["sted"]
    inter = min(ge, pe) - max(gs, ps)
    tiou = inter / ((ge - gs) + (pe - ps) - inter) if inter > 0 else 0.0
    union_frames = [f for f in frames if min(gs, ps) <= f < max(ge, pe)]
    total = 0.0
    for f in frames:
        if max(gs, ps) <= f < min(ge, pe):
            x, y, w, h = gt_boxes_xywh[f - gs]
            box = pred["boxes"].get(str(f))
            if box is not None:
                total += area_iou(box[0] if isinstance(box[0], list) else box, [x, y, x + w, y + h])
    return tiou, total / max(len(union_frames), 1)


def reference_hcstvg(annotations, predictions):
    """TubeDETR's hcstvg_eval.py per METHOD.md §9: {video: (tIoU, vIoU)} and the four headline numbers."""
    per_video = {}
    for name, ann in annotations.items():
        frames = sampled_frames(0, ann["img_num"] - 1, ann["img_num"] / 20)
        per_video[name[: -len(".mp4")]] = reference_query(frames, ann["st_frame"], ann["bbox"], predictions[name[:-4]])
    return per_video, headline(per_video.values())


def headline(scores):
    tious, vious = np.array([t for t, _ in scores]), np.array([v for _, v in scores])
    return {"m_tIoU": tious.mean(), "m_vIoU": vious.mean(), "vIoU@0.3": np.mean(vious > 0.3),
            "vIoU@0.5": np.mean(vious > 0.5)}  # fmt: skip


def tube(rng, length, x=100.0, y=80.0):
    boxes = []
    for _ in range(length):
        x, y = x + rng.normal(0, 2), y + rng.normal(0, 2)
        boxes.append([round(x, 2), round(y, 2), 40.0, 60.0])
    return boxes


def predicted(rng, ann, start, end, jitter=8.0, one_box_list=False):
    """A prediction over [start, end) that follows the GT box where there is one (jittered)."""
    boxes = {}
    for f in range(start, end):
        g = min(max(f - ann["st_frame"], 0), len(ann["bbox"]) - 1)
        x, y, w, h = ann["bbox"][g]
        dx, dy = rng.uniform(-jitter, jitter, 2)
        box = [x + dx, y + dy, x + w + dx, y + h + dy]
        boxes[str(f)] = [box] if one_box_list else box
    return {"sted": [start, end], "boxes": boxes}


def edge_cases(version="v2"):
    """HC-STVG annotations and predictions on the edges named in the issue, plus a random mix."""
    rng = np.random.default_rng(13)
    annotations, predictions = {}, {}

    def add(name, img_num, st_frame, length, start, end, **kw):
        entry = {"img_num": img_num, "st_frame": st_frame, "bbox": tube(rng, length), "st_time": 0.0, "ed_time": 1.0}
        if version == "v2":
            entry.update(img_size=[480, 640], English=f"query {name}")
        else:
            entry.update(width=640, height=480, caption=f"query {name}")
        annotations[f"{name}.mp4"] = entry
        predictions[name] = predicted(rng, entry, start, end, **kw)

    add("frame0_gt0", 500, 0, 60, 0, 50)  # GT and prediction both start at frame 0 (sampled first)
    add("frame0_pred", 537, 3, 90, 0, 70, one_box_list=True)  # prediction on frame 0, TubeDETR's [[box]]
    add("last_frames", 611, 511, 100, 531, 611)  # both end at img_num: frame img_num - 1 is never sampled
    add("last_frame_only", 450, 380, 70, 449, 450)  # a one-frame prediction on the unsampled last frame
    add("long_clip", 6000, 2500, 900, 2600, 3700)  # 6000 frames: 5 fps of 300 fps, only ~100 sampled
    add("between_samples", 400, 13, 3, 14, 16)  # 20 fps: samples 0, 4, .. 12, 16; overlap 14..15 unsampled
    add("exact", 480, 100, 150, 100, 250, jitter=0.0)
    for i in range(20):  # a seeded mix: img_num of real HC-STVG clips, every overlap kind
        img_num = int(rng.integers(300, 760))
        length = int(rng.integers(20, img_num // 2))
        st_frame = int(rng.integers(0, img_num - length + 1))
        start = int(np.clip(st_frame + rng.integers(-length, length), 0, img_num - 1))
        end = int(np.clip(start + rng.integers(1, 2 * length), start + 1, img_num))
        add(f"mix_{i}", img_num, st_frame, length, start, end, jitter=float(rng.uniform(0, 30)))
    return annotations, predictions


def score_cli(capsys, *args):
    code = main(["eval", "score", *map(str, args), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def assert_same_numbers(result, per_video, expected):
    for key in KEYS:
        assert result[key] == pytest.approx(expected[key], abs=1e-9), key
    for video, (tiou, viou) in per_video.items():
        assert result["per_video"][video]["tIoU"] == pytest.approx(tiou, abs=1e-9), video
        assert result["per_video"][video]["vIoU"] == pytest.approx(viou, abs=1e-9), video


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_default_protocol_gives_tubedetrs_numbers(tmp_path, capsys, version):
    annotations, predictions = edge_cases(version)
    (tmp_path / "ann.json").write_text(json.dumps(annotations))
    (tmp_path / "pred.json").write_text(json.dumps(predictions))
    result = score_cli(capsys, "--annotations", tmp_path / "ann.json", "--predictions", tmp_path / "pred.json")
    per_video, expected = reference_hcstvg(annotations, predictions)
    assert result["protocol"] == "tubedetr" and result["frame_ids"] == "decoded"
    assert result["benchmark"] == f"hcstvg_{version}" and result["n_missing"] == 0
    assert_same_numbers(result, per_video, expected)
    # the edges really are edges
    assert per_video["between_samples"] == (pytest.approx(2 / 3), 0.0)  # tIoU from raw frames, no sample
    assert per_video["last_frame_only"] == (pytest.approx(1 / 70), 0.0)
    assert per_video["exact"] == (1.0, pytest.approx(1.0))
    assert len(sampled_frames(0, 5999, 300)) == 100  # HC-STVG's 20-s rule keeps ~100 frames at any img_num
    assert 0.2 < expected["m_vIoU"] < 0.8 and 0 < expected["vIoU@0.5"] < expected["vIoU@0.3"] < 1


def test_tubedetrs_own_output_and_processed_list_score_the_same(tmp_path, capsys):
    """TubeDETR's evaluator output (log_stats.json: predictions keyed "<video index>_<frame>",
    video_predictions keyed by the index) against its processed list gives the same numbers."""
    annotations, predictions = edge_cases()
    names = list(annotations)
    processed = [{"original_video_id": name[:-4], "frame_count": ann["img_num"], "width": 640, "height": 480,
                  "tube_start_frame": ann["st_frame"], "tube_end_frame": ann["st_frame"] + len(ann["bbox"]),
                  "tube_start_time": ann["st_time"], "tube_end_time": ann["ed_time"], "caption": ann["English"],
                  "video_id": index, "trajectory": ann["bbox"]} for index, (name, ann) in enumerate(annotations.items())]  # fmt: skip
    dump = {
        "test_hcstvg_video_predictions": {str(i): {"sted": predictions[n[:-4]]["sted"]} for i, n in enumerate(names)},
        "test_hcstvg_predictions": {f"{i}_{f}": {"boxes": box if isinstance(box[0], list) else [box]}
                                    for i, n in enumerate(names) for f, box in predictions[n[:-4]]["boxes"].items()},
        "test_hcstvg_tiou": 0.0,
    }  # fmt: skip
    (tmp_path / "valv2.json").write_text(json.dumps(annotations))
    (tmp_path / "valv2_proc.json").write_text(json.dumps(processed))
    (tmp_path / "log_stats.json").write_text(json.dumps(dump))
    per_video, expected = reference_hcstvg(annotations, predictions)
    for annotation_file in ("valv2.json", "valv2_proc.json"):
        result = score_cli(
            capsys, "--annotations", tmp_path / annotation_file, "--predictions", tmp_path / "log_stats.json"
        )
        assert result["benchmark"] == "hcstvg_v2"
        assert_same_numbers(result, per_video, expected)


def test_vidstg_segments_with_more_than_200_sampled_frames(tmp_path, capsys):
    """A 90-s VidSTG segment at 30 fps samples 450 frames at 5 fps: thinned to 200 (TubeDETR's
    vidstg_eval.py, the same sampler over [start_frame, end_frame) at the video's fps)."""
    rng = np.random.default_rng(5)
    videos, trajectories, predictions, expected_scores = [], {}, {}, []
    for index in range(4):
        frame_count, start_frame, end_frame = 3000, 100, 2800
        tube_start = int(rng.integers(start_frame, 1500))
        tube_end = tube_start + int(rng.integers(200, 1000))
        boxes = tube(rng, tube_end - tube_start)
        trajectories[f"v{index}"] = {"1": {str(tube_start + g): {"bbox": b} for g, b in enumerate(boxes)}}
        videos.append({"original_video_id": f"v{index}", "frame_count": frame_count, "fps": 30.0, "width": 640,
                       "height": 480, "start_frame": start_frame, "end_frame": end_frame,
                       "tube_start_frame": tube_start, "tube_end_frame": tube_end, "caption": "who runs?",
                       "target_id": 1, "video_id": index, "qtype": ("declarative", "interrogative")[index % 2]})  # fmt: skip
        start = tube_start + int(rng.integers(-150, 150))
        ann = {"st_frame": tube_start, "bbox": boxes}
        predictions[str(index)] = predicted(rng, ann, start, start + int(rng.integers(100, 900)))
        frames = sampled_frames(start_frame, end_frame, 30.0)
        assert len(frames) == 200  # 450 kept before thinning
        expected_scores.append(reference_query(frames, tube_start, boxes, predictions[str(index)]))
    (tmp_path / "test.json").write_text(json.dumps({"videos": videos, "trajectories": trajectories}))
    (tmp_path / "pred.json").write_text(json.dumps(predictions))
    result = score_cli(capsys, "--annotations", tmp_path / "test.json", "--predictions", tmp_path / "pred.json")
    assert result["benchmark"] == "vidstg" and result["frame_ids"] == "decoded"
    expected = headline(expected_scores)
    for key in KEYS:
        assert result[key] == pytest.approx(expected[key], abs=1e-9), key
    assert result["by_qtype"]["declarative"]["m_vIoU"] == pytest.approx(
        np.mean([v for _, v in expected_scores[::2]]), abs=1e-9
    )


def test_one_based_frame_ids_are_named_and_differ(tmp_path, capsys):
    """--frame-ids one_based reads st_frame as 1-based: ids are decoded + 1, and TubeDETR's samples
    (decoded 0 .. img_num - 2) become ids 1 .. img_num - 1. The same file scores differently, exactly
    as TubeDETR scores the file with every frame id (and st_frame) moved down by one."""
    annotations, predictions = edge_cases()
    (tmp_path / "ann.json").write_text(json.dumps(annotations))
    (tmp_path / "pred.json").write_text(json.dumps(predictions))

    def refused(ann, pred, message):
        (tmp_path / "a.json").write_text(json.dumps(ann))
        (tmp_path / "p.json").write_text(json.dumps(pred))
        code = main(["eval", "score", "--annotations", str(tmp_path / "a.json"), "--predictions",
                     str(tmp_path / "p.json"), "--frame-ids", "one_based"])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and message in err, err

    refused(annotations, predictions, "GT starts at frame 0, before the video's first frame 1 (frame ids: one_based)")
    del annotations["frame0_gt0.mp4"], predictions["frame0_gt0"]
    refused(annotations, predictions, "frame 0 is outside the video's frames 1..537 (frame ids: one_based")
    shifted = {k: v for k, v in predictions.items() if not k.startswith("frame0")}
    shifted_annotations = {k: v for k, v in annotations.items() if not k.startswith("frame0")}
    (tmp_path / "pred1.json").write_text(json.dumps(shifted))
    (tmp_path / "ann1.json").write_text(json.dumps(shifted_annotations))
    one_based = score_cli(capsys, "--annotations", tmp_path / "ann1.json", "--predictions", tmp_path / "pred1.json",
                          "--frame-ids", "one_based")  # fmt: skip
    decoded = score_cli(capsys, "--annotations", tmp_path / "ann1.json", "--predictions", tmp_path / "pred1.json")
    assert one_based["frame_ids"] == "one_based" and decoded["frame_ids"] == "decoded"
    moved_annotations = {k: {**v, "st_frame": v["st_frame"] - 1} for k, v in shifted_annotations.items()}
    moved = {k: {"sted": [v["sted"][0] - 1, v["sted"][1] - 1],
                 "boxes": {str(int(f) - 1): b for f, b in v["boxes"].items()}} for k, v in shifted.items()}  # fmt: skip
    per_video, expected = reference_hcstvg(moved_annotations, moved)
    assert_same_numbers(one_based, per_video, expected)
    assert any(abs(one_based["per_video"][v]["vIoU"] - decoded["per_video"][v]["vIoU"]) > 1e-6 for v in per_video)
