"""`stvg-ros eval run --baseline`: trivial answers from the tracks alone (no model loaded), scored like
a model's: the numbers a trained model must beat (random track ID / most visible track, whole video)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from stvg_ros.core.types import Tracks
from stvg_ros.evaluation.baselines import baseline_prediction, pick_track
from stvg_ros.evaluation.loaders import load_annotations


def _tracks(ids: list[int]) -> Tracks:
    n = len(ids)
    boxes = np.array([[10.0 * i, 0, 10.0 * i + 5, 5] for i in ids], np.float32).reshape(-1, 4)
    return Tracks(xyxy=boxes, track_id=np.array(ids, np.int64), score=np.ones(n, np.float32),
                  class_id=np.zeros(n, np.int32), detected=np.ones(n, bool))  # fmt: skip


def test_picks_are_the_most_visible_track_or_a_seeded_random_one():
    frames = {0: _tracks([1, 2]), 1: _tracks([2]), 2: _tracks([2, 3]), 3: _tracks([3])}
    assert pick_track("most_visible", "q", frames) == 2
    picks = {pick_track("random", f"q{i}", frames) for i in range(40)}
    assert picks == {1, 2, 3}  # uniform over the IDs seen
    assert pick_track("random", "q7", frames) == pick_track("random", "q7", frames)  # the same on a rerun
    assert pick_track("most_visible", "q", {0: _tracks([])}) is None
    with pytest.raises(ValueError, match="unknown baseline"):
        pick_track("oracle", "q", frames)


def test_eval_run_baselines_answer_the_whole_video_without_a_model(tmp_path, synth_dataset):
    annotations = load_annotations(synth_dataset.annotations)
    results = {}
    for baseline in ("most-visible", "random"):
        out = tmp_path / baseline
        done = subprocess.run(
            [sys.executable, "-m", "stvg_ros.cli.main", "eval", "run", "--videos", str(synth_dataset.root / "videos"),
             "--annotations", str(synth_dataset.annotations), "--out", str(out), "--source", "video",
             "--perception", "gt", "--limit", "3", "--baseline", baseline, "--json", "--no-progress",
             "-p", "grounding_node:model=/no/such/model.gguf"],  # never loaded
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stdout)
        results[baseline] = summary
        assert summary["run"]["model"] == f"baseline:{baseline.replace('-', '_')}"
        records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
        predictions = json.loads((out / "predictions.json").read_text())
        assert len(records) == summary["n_queries"] == 3
        for record in records:
            query = annotations.queries[record["query_id"]]
            assert record["success"] and record["model"].startswith("baseline:")
            assert record["sted"] == [query.first_frame, query.end_frame]  # the whole video
        # a whole-video span: tIoU is the ground-truth span's share of the video, whatever the ID
        for query_id, scores in summary["per_video"].items():
            query = annotations.queries[query_id]
            assert scores["tIoU"] == pytest.approx((query.gt_end - query.gt_start) / (query.end_frame - query.first_frame), abs=0.02)
        assert set(predictions) == {r["query_id"] for r in records}
    assert results["most-visible"]["m_tIoU"] == pytest.approx(results["random"]["m_tIoU"])
    assert 0 <= results["random"]["id_accuracy"] <= 1


def test_baseline_prediction_is_the_tracks_box_on_each_frame():
    from stvg_ros.evaluation.loaders import Query

    query = Query("q", "v", "the thing", gt_start=6, gt_end=8, gt_boxes={}, num_frames=3, fps=10.0, frame_base=5)
    frames = {5: _tracks([4, 9]), 6: _tracks([4, 9]), 7: _tracks([9])}
    prediction = baseline_prediction("most_visible", query, frames)
    assert prediction.target_id == 9 and (prediction.start, prediction.end) == (5, 8)
    assert prediction.boxes == {f: (90.0, 0.0, 95.0, 5.0) for f in (5, 6, 7)}
    assert (prediction.start_s, prediction.end_s) == (0.0, 0.2)
    assert baseline_prediction("random", query, {5: _tracks([])}).empty  # nothing tracked: no answer
