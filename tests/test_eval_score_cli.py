"""`stvg-ros eval score` against an independent recomputation, and its error handling.

The recomputation below is written from the evaluators' definitions (METHOD.md §9), in the
simplest form: explicit frame lists, string keys as the original scripts use them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest


def eval_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "stvg_ros.cli.main", "eval", *map(str, args)],
        capture_output=True, text=True, timeout=120, cwd=cwd,
    )  # fmt: skip


def iou(a, b):
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def make_dataset(seed=0, n=24):
    """Random HC-STVG v2 annotations and predictions of every kind (exact, shifted, disjoint,
    nested, partial boxes, empty, missing)."""
    rng = np.random.default_rng(seed)
    annotations, predictions = {}, {}
    for i in range(n):
        img_num = int(rng.integers(60, 700))
        fps = img_num / 20
        length = int(rng.integers(5, img_num // 2))
        st_frame = int(rng.integers(0, img_num - length + 1))  # decoded frame ids, as TubeDETR
        boxes = []  # a smooth tube: a random walk of the corner, a slowly changing size
        x, y, w, h = *rng.uniform(0, 300, 2), *rng.uniform(20, 80, 2)
        for _ in range(length):
            x, y, w, h = (
                x + rng.normal(0, 1.5),
                y + rng.normal(0, 1.5),
                max(8, w + rng.normal(0, 1)),
                max(8, h + rng.normal(0, 1)),
            )
            boxes.append([round(float(v), 1) for v in (x, y, w, h)])
        name = f"{i}_clip"
        annotations[f"{name}.mp4"] = {
            "bbox": boxes, "st_frame": st_frame, "img_num": img_num, "img_size": [480, 640], "English": f"q {i}",
            "st_time": (st_frame + 0.3) / fps, "ed_time": (st_frame + length - 1 + 0.3) / fps,
        }  # fmt: skip
        kind = i % 7
        if kind == 6:
            continue  # missing prediction
        if kind == 5:
            predictions[name] = {"sted": [0, 0], "boxes": {}}  # failed query
            continue
        start = {0: st_frame, 1: st_frame + length // 3, 2: max(0, st_frame - length), 3: st_frame + length // 4,
                 4: st_frame}[kind]  # fmt: skip
        end = {0: st_frame + length, 1: min(img_num, st_frame + length + length // 2), 2: st_frame + 1,
               3: st_frame + length - length // 4, 4: st_frame + length}[kind]  # fmt: skip
        if kind == 2 and rng.random() < 0.5:  # disjoint: before the tube
            start, end = 0, max(1, st_frame - 3)
        pred_boxes = {}
        for f in range(start, end):
            if kind == 4 and rng.random() < 0.4:
                continue  # boxes missing on some frames
            g = f - st_frame
            base = boxes[g] if 0 <= g < length else boxes[0]
            x, y, w, h = base
            jitter = rng.uniform(-6, 6, 4)
            pred_boxes[str(f)] = [x + jitter[0], y + jitter[1], x + w + abs(jitter[2]) + 1, y + h + abs(jitter[3]) + 1]
        entry = {"sted": [start, end], "boxes": pred_boxes, "target_id": int(rng.integers(1, 4))}
        if i % 2:
            entry["span_s"] = [start / fps + 0.01, (end - 1) / fps + 0.01]
        predictions[name] = entry
    return annotations, predictions


def recompute_tubedetr(annotations, predictions):
    tious, vious = [], []
    for name, ann in annotations.items():
        vid = name[:-4]
        if vid not in predictions or predictions[vid]["sted"][1] <= predictions[vid]["sted"][0]:
            tious.append(0.0)
            vious.append(0.0)
            continue
        gt_start, gt_end = ann["st_frame"], ann["st_frame"] + len(ann["bbox"])
        rate = 5 / (ann["img_num"] / 20)
        frames = [0]
        for f in range(0, ann["img_num"] - 1):
            if int(frames[-1] * rate) < int(f * rate):
                frames.append(f)
        if len(frames) > 200:
            frames = [frames[j * len(frames) // 200] for j in range(200)]
        ps, pe = predictions[vid]["sted"]
        inter = min(pe, gt_end) - max(ps, gt_start)
        tious.append(0.0 if inter <= 0 else inter / ((gt_end - gt_start) + (pe - ps) - inter))
        union_frames = [f for f in frames if min(ps, gt_start) <= f < max(pe, gt_end)]
        total = 0.0
        for f in frames:
            if max(ps, gt_start) <= f < min(pe, gt_end) and str(f) in predictions[vid]["boxes"]:
                x, y, w, h = ann["bbox"][f - gt_start]
                total += iou(predictions[vid]["boxes"][str(f)], [x, y, x + w, y + h])
        vious.append(total / max(len(union_frames), 1))
    return tious, vious


def recompute_official(annotations, predictions):
    tious, vious = [], []
    for name, ann in annotations.items():
        vid = name[:-4]
        gt = {"st_frame": ann["st_frame"], "ed_frame": ann["st_frame"] + len(ann["bbox"]) - 1,
              "bbox": {str(ann["st_frame"] + g): [x, y, x + w, y + h] for g, (x, y, w, h) in enumerate(ann["bbox"])}}  # fmt: skip
        if vid not in predictions or predictions[vid]["sted"][1] <= predictions[vid]["sted"][0]:
            tious.append(0.0)
            vious.append(0.0)
            continue
        p = predictions[vid]
        pred = {"st_frame": p["sted"][0], "ed_frame": p["sted"][1] - 1, "bbox": p["boxes"]}
        ious = [iou(pred["bbox"][k], gt["bbox"][k]) for k in gt["bbox"] if k in pred["bbox"]]
        all_frames = max(gt["ed_frame"], pred["ed_frame"]) - min(gt["st_frame"], pred["st_frame"]) + 1
        vious.append(sum(ious) / all_frames)
        tious.append(len(ious) / all_frames)
    return tious, vious


def recompute_stvgr1(annotations, predictions):
    tious, vious = [], []
    for name, ann in annotations.items():
        vid = name[:-4]
        p = predictions.get(vid)
        if p is None or p["sted"][1] <= p["sted"][0]:
            tious.append(0.0)
            vious.append(0.0)
            continue
        fps = ann["img_num"] / 20
        s, e = ann["st_time"], ann["ed_time"]
        if "span_s" in p:
            sp, ep = p["span_s"]
            p0, p1 = int(sp * fps), int(ep * fps)
        else:
            p0, p1 = p["sted"][0], p["sted"][1] - 1  # inclusive frames of the end-exclusive span
            sp, ep = p0 / fps, p1 / fps
        tious.append(max((min(e, ep) - max(s, sp)) / (max(e, ep) - min(s, sp)), 0))
        g0, g1 = int(s * fps), int(e * fps)
        lo, hi = max(g0, p0), min(g1, p1)
        union = max(g1, p1) - min(g0, p0) + 1
        if lo >= hi:
            vious.append(0.0)
            continue
        total = 0.0
        for d in range(lo, hi + 1):
            box = p["boxes"].get(str(d))
            g = d - ann["st_frame"]
            if box is not None and 0 <= g < len(ann["bbox"]):
                x, y, w, h = ann["bbox"][g]
                total += iou(box, [x, y, x + w, y + h])
        vious.append(total / union)
    return tious, vious


RECOMPUTE = {"tubedetr": recompute_tubedetr, "hcstvg_official": recompute_official, "stvgr1": recompute_stvgr1}


@pytest.mark.parametrize("protocol", ["tubedetr", "hcstvg_official", "stvgr1"])
def test_score_equals_independent_recomputation(tmp_path, protocol):
    annotations, predictions = make_dataset(seed=1)
    (tmp_path / "ann.json").write_text(json.dumps(annotations))
    (tmp_path / "pred.json").write_text(json.dumps(predictions))
    done = eval_cli("score", "--annotations", tmp_path / "ann.json", "--predictions", tmp_path / "pred.json",
                    "--protocol", protocol, "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    tious, vious = RECOMPUTE[protocol](annotations, predictions)
    assert result["protocol"] == protocol and result["n_queries"] == len(annotations)
    assert result["n_missing"] == sum(1 for i in range(len(annotations)) if i % 7 in (5, 6))
    assert result["m_tIoU"] == pytest.approx(np.mean(tious), abs=1e-12)
    assert result["m_vIoU"] == pytest.approx(np.mean(vious), abs=1e-12)
    strict = protocol != "stvgr1"
    for r in (0.3, 0.5):
        expected = np.mean([(v > r) if strict else (v >= r) for v in vious])
        assert result[f"vIoU@{r}"] == pytest.approx(expected, abs=1e-12)
    for name, t, v in zip(annotations, tious, vious, strict=True):
        assert result["per_video"][name[:-4]]["tIoU"] == pytest.approx(t, abs=1e-12)
        assert result["per_video"][name[:-4]]["vIoU"] == pytest.approx(v, abs=1e-12)
    assert all(0.0 <= result[k] <= 1.0 for k in ("m_tIoU", "m_vIoU", "vIoU@0.3", "vIoU@0.5"))
    assert 0.05 < result["m_vIoU"] < 0.95  # the data mix good and bad predictions


def test_score_writes_a_report(tmp_path):
    annotations, predictions = make_dataset(seed=2, n=8)
    (tmp_path / "ann.json").write_text(json.dumps(annotations))
    (tmp_path / "pred.json").write_text(json.dumps(predictions))
    done = eval_cli("score", "--annotations", tmp_path / "ann.json", "--predictions", tmp_path / "pred.json",
                    "--report", tmp_path / "report")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "m_vIoU" in done.stdout and "protocol tubedetr" in done.stdout
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert set(report["per_video"]) == {name[:-4] for name in annotations}
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| m_vIoU |" in markdown and "![timeline.png](timeline.png)" in markdown
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<td>m_vIoU</td>" in page and '<img src="timeline.png"' in page
    for plot in ("hist_tiou.png", "hist_viou.png", "timeline.png"):
        assert (tmp_path / "report" / plot).read_bytes()[:4] == b"\x89PNG"


def _error_cases(tmp_path):
    annotations, predictions = make_dataset(seed=3, n=4)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(annotations))
    good = dict(predictions)

    def pred_file(name, data):
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        return path

    unknown = pred_file("unknown.json", {**good, "999_nope": {"sted": [1, 2], "boxes": {}}})
    zero_based = pred_file("zero.json", {"0_clip": {"sted": [0, 5], "boxes": {"100000": [0, 0, 1, 1]}}})
    return [
        (["--annotations", tmp_path / "missing.json", "--predictions", unknown], "annotation file not found"),
        (["--annotations", ann, "--predictions", tmp_path / "nope.json"], "prediction file not found"),
        (["--annotations", ann, "--predictions", unknown], "not in the annotations"),
        (["--annotations", ann, "--predictions", zero_based], "frame-index mismatch"),
        (["--annotations", ann, "--predictions", pred_file("trunc.json", '{"0_clip": {"sted": [1,')], "not valid JSON"),
        (["--annotations", pred_file("bad_ann.json", "[1, 2]"), "--predictions", zero_based], "unrecognised"),
        (
            ["--annotations", ann, "--predictions", zero_based, "--tracks", tmp_path / "t.jsonl"],
            "tracks file not found",
        ),
        (["--annotations", ann, "--predictions", pred_file("few.json", {}), "--require-all"], "no prediction"),
    ]


def test_bad_input_gives_one_line_errors(tmp_path):
    for args, message in _error_cases(tmp_path):
        done = eval_cli("score", *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("stvg-ros eval: error:"), done.stderr
        assert message in lines[0], (message, lines[0])
        assert "Traceback" not in done.stderr and done.stdout == ""
