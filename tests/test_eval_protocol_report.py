"""The report names the protocol and the frame-id convention, and shows the published results of
the benchmark the annotations belong to (and only those)."""

from __future__ import annotations

import json
from html import escape

from stvg_ros.evaluation.loaders import load_annotations
from stvg_ros.evaluation.predictions import Prediction
from stvg_ros.evaluation.report import PUBLISHED_ANCHORS, summary_lines, write_report
from stvg_ros.evaluation.scoring import score

V1 = {"1_a.mp4": {"bbox": [[0, 0, 10, 10]] * 10, "st_frame": 20, "img_num": 100, "width": 64, "height": 48,
                  "caption": "a man", "st_time": 4.0, "ed_time": 5.8}}  # fmt: skip
V2 = {"1_a.mp4": {"bbox": [[0, 0, 10, 10]] * 10, "st_frame": 20, "img_num": 100, "img_size": [48, 64],
                  "English": "a man", "st_time": 4.0, "ed_time": 5.8}}  # fmt: skip


def report(tmp_path, annotations, protocol="tubedetr", frame_ids=None, name="ann.json"):
    path = tmp_path / name
    path.write_text(json.dumps(annotations))
    annotation_set = load_annotations(path, frame_ids=frame_ids)
    predictions = {"1_a": Prediction("1_a", 20, 25, {f: (0.0, 0.0, 10.0, 10.0) for f in range(20, 25)})}
    summary, _ = score(annotation_set, predictions, protocol)
    paths = write_report(tmp_path / "report", summary, annotation_set, predictions, plots=False)
    return summary, paths["report.md"].read_text(), paths["report.html"].read_text()


def test_report_names_protocol_and_frame_ids(tmp_path):
    summary, markdown, page = report(tmp_path, V2)
    assert (summary["protocol"], summary["frame_ids"], summary["benchmark"]) == ("tubedetr", "decoded", "hcstvg_v2")
    intro = "Protocol tubedetr (vIoU@R counts vIoU > R); frame ids decoded (0-based decoded frame numbers"
    assert intro in markdown and escape(intro) in page
    assert summary_lines(summary)[0].startswith("protocol tubedetr, frame ids decoded")
    _, markdown, _ = report(tmp_path, V2, protocol="stvgr1", frame_ids="one_based")
    assert "Protocol stvgr1 (vIoU@R counts vIoU >= R); frame ids one_based (decoded frame d has id d + 1" in markdown
    assert "| this run | stvgr1, frame ids one_based |" in markdown


def test_published_results_of_the_annotations_benchmark_only(tmp_path):
    summary, markdown, page = report(tmp_path, V2)
    assert "## Published results on HC-STVG v2 (val)" in markdown and "HC-STVG v1" not in markdown
    ours = [f"{100 * summary[k]:.1f}" for k in ("m_tIoU", "m_vIoU", "vIoU@0.3", "vIoU@0.5")]
    assert "| this run | tubedetr, frame ids decoded | " + " | ".join(ours) + " |" in markdown
    for name in ("STVG-R1", "STVG-o1", "TA-STVG", "CG-STVG", "Qwen2.5-VL-7B zero-shot"):
        assert name in markdown and name in page
    assert "| 62.0 | 40.2 | 67.8 | 38.8 |" in markdown  # STVG-R1 on v2 (README)
    assert "| 60.4 | 40.2 | 65.8 | 36.7 |" in markdown  # TA-STVG on v2
    assert "<td>22.9</td><td>13.0</td><td>15.6</td><td>6.4</td>" in page  # Qwen2.5-VL-7B zero-shot on v2
    _, markdown, _ = report(tmp_path, V1)
    assert "## Published results on HC-STVG v1" in markdown and "HC-STVG v2" not in markdown
    assert "| 56.9 | 39.1 | 66.7 | 38.6 |" in markdown and "| 62.0 | 40.2 |" not in markdown
    # a file whose benchmark is not known (TubeDETR-style list under another name): no anchors
    processed = [{"original_video_id": "1_a", "frame_count": 100, "tube_start_frame": 20, "tube_end_frame": 30,
                  "trajectory": [[0, 0, 10, 10]] * 10, "caption": "a man", "video_id": 0}]  # fmt: skip
    summary, markdown, _ = report(tmp_path, processed, name="mine.json")
    assert summary["benchmark"] == "" and "Published results" not in markdown


def test_anchor_table_has_every_benchmark_part():
    assert set(PUBLISHED_ANCHORS) == {"hcstvg_v1", "hcstvg_v2", "vidstg_declarative", "vidstg_interrogative"}
    for rows in PUBLISHED_ANCHORS.values():
        assert all(len(values) == 4 and all(0 < v < 100 for v in values) for _, _, values in rows)
    assert {name.split(" (")[0] for name, _, _ in PUBLISHED_ANCHORS["hcstvg_v2"]} == {
        "STVG-R1", "STVG-o1", "TA-STVG", "CG-STVG", "Qwen2.5-VL-7B zero-shot"}  # fmt: skip


def test_vidstg_report_shows_both_sentence_types(tmp_path):
    videos = [{"original_video_id": "9", "frame_count": 100, "fps": 10.0, "start_frame": 0, "end_frame": 100,
               "tube_start_frame": 20, "tube_end_frame": 30, "caption": "who?", "target_id": 1, "video_id": i,
               "qtype": qtype} for i, qtype in enumerate(("declarative", "interrogative"))]  # fmt: skip
    data = {"videos": videos, "trajectories": {"9": {"1": {str(f): {"bbox": [0, 0, 10, 10]} for f in range(100)}}}}
    (tmp_path / "test.json").write_text(json.dumps(data))
    annotation_set = load_annotations(tmp_path / "test.json")
    predictions = {"0": Prediction("0", 20, 30, {f: (0.0, 0.0, 10.0, 10.0) for f in range(20, 30)})}
    summary, _ = score(annotation_set, predictions)
    markdown = write_report(tmp_path / "r", summary, annotation_set, predictions, plots=False)["report.md"].read_text()
    assert "## Published results on VidSTG declarative" in markdown
    assert "## Published results on VidSTG interrogative" in markdown and "HC-STVG" not in markdown
    assert "| this run | tubedetr, frame ids decoded | 100.0 | 100.0 | 100.0 | 100.0 |" in markdown  # declarative
    assert "| this run | tubedetr, frame ids decoded | 0.0 | 0.0 | 0.0 | 0.0 |" in markdown  # interrogative
    assert "| 52.1 | 33.5 | 48.4 | 32.0 |" in markdown and "| 50.5 | 27.9 | 39.8 | 26.0 |" in markdown
