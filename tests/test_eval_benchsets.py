"""`stvg-ros eval make-set`: seeded synthetic sets with difficulty levels, bags and sidecars."""

from __future__ import annotations

import json
import subprocess
import sys

from stvg_ros.evaluation.loaders import load_annotations
from stvg_ros.evaluation.replay import load_sidecar, plan_bag
from stvg_ros.evaluation.scoring import score_files


def make_set(out, *extra):
    done = subprocess.run(
        [sys.executable, "-m", "stvg_ros.cli.main", "eval", "make-set", "--out", str(out), "--count", "2",
         "--seconds", "6", "--json", *extra],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_make_set_is_seeded_and_complete(tmp_path):
    manifest = make_set(tmp_path / "a", "--level", "occlusion", "--seed", "4", "--queries-per-video", "2")
    again = make_set(tmp_path / "b", "--level", "occlusion", "--seed", "4", "--queries-per-video", "2", "--no-bags")
    other = make_set(tmp_path / "c", "--level", "occlusion", "--seed", "5", "--no-bags")
    root = tmp_path / "a"
    assert manifest["difficulties"] == ["occlusion", "occlusion"] and manifest["n_videos"] == 2
    assert (root / "annotations.json").read_bytes() == (tmp_path / "b" / "annotations.json").read_bytes()
    assert (root / "annotations.json").read_bytes() != (tmp_path / "c" / "annotations.json").read_bytes()
    assert other["n_queries"] == 2 and again["sidecars"] == []
    annotations = load_annotations(root)
    assert len(annotations) == manifest["n_queries"] >= 2
    # every bag comes with a sidecar that plans against the set's annotations
    assert len(manifest["sidecars"]) == len(manifest["bags"]) == 2
    for path in manifest["sidecars"]:
        plan = plan_bag(load_sidecar(root / path), annotations)
        assert plan.frames == 60 and {q.video_id for q in plan.queries} == {plan.sidecar.video_id}


def test_gt_predictions_score_one(tmp_path):
    make_set(tmp_path / "s", "--level", "crossing", "--no-bags")
    for protocol in ("tubedetr", "hcstvg_official"):
        summary = score_files(tmp_path / "s", tmp_path / "s" / "gt_predictions.json", protocol=protocol)
        assert summary["m_tIoU"] == summary["m_vIoU"] == summary["vIoU@0.5"] == 1.0
        assert summary["id_accuracy"] == 1.0 and summary["id_reference"] == "annotation"
    # STVG-R1's script pairs each predicted box with the GT box one frame earlier (HC-STVG's
    # 1-based st_frame read as 0-based): even the ground truth scores below 1 on moving objects.
    stvgr1 = score_files(tmp_path / "s", tmp_path / "s" / "gt_predictions.json", protocol="stvgr1")
    assert stvgr1["m_tIoU"] == 1.0 and 0.3 < stvgr1["m_vIoU"] < 1.0


def test_make_set_rejects_bad_parameters(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "stvg_ros.cli.main", "eval", "make-set", "--out", str(tmp_path / "x"), "--objects", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "invalid set parameters" in done.stderr and "Traceback" not in done.stderr
