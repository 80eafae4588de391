"""Training data prep through the robot's perception (training area, issue 6).

Synthetic scenes go through the real detector (the tiny synthetic-shape YOLO), tracker, clip
buffer, sampler and renderer; the GT target ID is voted from GT boxes vs tracks (METHOD §6) and
checked against the object the annotation names.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

import stvg_ros.grounding.sampling as sampling
from stvg_ros.core.paths import cache_dir
from stvg_ros.core.types import Tracks
from stvg_ros.evaluation.loaders import synth_query_id
from stvg_ros.synthetic.scenes import SYNTH_VERSION, DatasetIndex, SceneSpec, write_dataset
from stvg_train.data import load_prepared
from stvg_train.prep import PrepOptions, prepare, vote_gt_id

PREP_VIDEOS = 20
#: The generator's defaults (10 fps, 320x240, four difficulty presets in turn), 8 s long; about 4
#: queries per video, each about an event its target is mostly visible for (occlusion scenes
#: included: the target is fully hidden for 1.5 s inside its span).
PREP_SPEC = SceneSpec(seconds=8.0, fps=10.0, width=320, height=240, n_objects=4, difficulty="mixed")
NUM_FRAMES = 6
MAX_PIXELS = 112 * 112


# ------------------------------------------------------------------------------------------------
# the vote itself (METHOD §6)


def tracks(*rows):
    return Tracks(xyxy=[r[1:] for r in rows], track_id=[r[0] for r in rows])


def test_vote_takes_the_most_common_best_iou_track_per_frame():
    gt = {0: [0, 0, 10, 10], 1: [0, 0, 10, 10], 2: [0, 0, 10, 10], 3: [50, 50, 60, 60]}
    frame_tracks = {
        0: tracks((1, 0, 0, 10, 10), (2, 0, 0, 5, 5)),  # 1 wins (IoU 1 vs 0.25)
        1: tracks((1, 1, 1, 11, 11), (2, 0, 0, 9, 9)),  # 2 wins (0.81 vs 0.68)
        2: tracks((1, 0, 0, 10, 9), (3, 20, 20, 30, 30)),  # 1 wins (0.9)
        3: tracks((1, 0, 0, 10, 10)),  # no overlap: no vote
        # frame 4 has GT but no tracks entry at all (not in the video)
    }
    vote = vote_gt_id(frame_tracks, {**gt, 4: [0, 0, 1, 1]})
    assert vote.target_id == 1
    assert vote.voting_frames == 3 and vote.gt_frames == 4
    assert vote.vote_share == pytest.approx(2 / 3)
    assert vote.mean_iou == pytest.approx((1.0 + 0.9) / 2)


def test_vote_tie_goes_to_the_earliest_vote_and_min_iou_filters():
    gt = {0: [0, 0, 10, 10], 1: [0, 0, 10, 10]}
    frame_tracks = {0: tracks((5, 0, 0, 10, 10)), 1: tracks((4, 0, 0, 10, 4))}
    assert vote_gt_id(frame_tracks, gt).target_id == 5
    assert vote_gt_id(frame_tracks, gt, min_iou=0.5).target_id == 5  # frame 1 (IoU 0.4) casts no vote
    assert vote_gt_id({0: tracks((4, 0, 0, 10, 4))}, gt, min_iou=0.5).target_id == -1
    untracked = Tracks(xyxy=[[0, 0, 10, 10]], track_id=[-1])
    assert vote_gt_id({0: untracked}, gt).target_id == -1  # untracked detections never vote


# ------------------------------------------------------------------------------------------------
# prep end to end on synthetic scenes


@pytest.fixture(scope="session")
def prep_synth() -> Path:
    """20 synthetic videos (8 s, 10 fps, all four difficulty presets), cached between runs."""
    key = hashlib.sha256(json.dumps([PREP_VIDEOS, asdict(PREP_SPEC)], sort_keys=True).encode()).hexdigest()[:10]
    root = cache_dir("test-artifacts", f"train-synth-{SYNTH_VERSION}", f"videos-{PREP_VIDEOS}-{key}")
    if not (root / DatasetIndex.INDEX_FILE).is_file():
        shutil.rmtree(root, ignore_errors=True)
        write_dataset(root, 11, PREP_VIDEOS, PREP_SPEC, bags=False)
    return root


@pytest.fixture(scope="session")
def perception(tiny_detector) -> dict:
    """The robot's perception settings with the tiny synthetic-shape detector (tests/fixtures/detector.py)."""
    return {"model": str(tiny_detector["onnx-int8"])}


@pytest.fixture(scope="module")
def prepared(prep_synth, perception, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "out"
    calls = []
    original = sampling.render_ids

    def spy(frame, tracks, *args, **kwargs):
        calls.append(len(tracks))
        return original(frame, tracks, *args, **kwargs)

    sampling.render_ids = spy  # the robot's sampler draws with the robot's renderer
    try:
        report = prepare(PrepOptions(out_dir=str(out), synthetic=str(prep_synth), perception_config=perception,
                                     num_frames=NUM_FRAMES, max_pixels=MAX_PIXELS))
    finally:
        sampling.render_ids = original
    return out, report, calls


def test_prep_assigns_the_annotated_target_on_95_percent(prepared, prep_synth):
    out, report, _ = prepared
    queries = json.loads((prep_synth / "queries.json").read_text())
    assert report["samples"] == len(queries) > PREP_VIDEOS and report["videos_failed"] == []
    assert report["id_checked"] == len(queries)
    # The generator writes queries only about targets a camera can follow, so none is hidden here
    # (prep would list them in hidden_target_samples), and >= 95 % of all get the annotated track.
    assert report["hidden_target_samples"] == [] and report["id_visible_checked"] == len(queries)
    assert report["id_correct_share"] >= 0.95, report
    assert report["id_visible_correct_share"] == report["id_correct_share"]
    # Whatever did not get the right ID is named: unmatched, wrong, or a hidden target.
    assert report["unmatched"] == len(report["unmatched_samples"])
    assert len(report["wrong_id_samples"]) == report["matched"] - report["id_correct"]
    assert report["id_checked"] - report["id_correct"] == len(report["wrong_id_samples"]) + report["unmatched"]
    assert 0.5 <= report["vote_share_mean"] <= 1.0 and report["gt_mean_iou_mean"] >= report["min_iou"] == 0.5
    saved = json.loads((out / "report.json").read_text())
    assert saved["id_visible_correct_share"] == report["id_visible_correct_share"]


def test_prepared_samples_are_what_the_robot_sends(prepared, prep_synth):
    out, report, render_calls = prepared
    ds = load_prepared([out])
    assert len(ds) == report["samples"]
    # one clip per video, sampled (and drawn) once by the robot's sampler, shared by its queries
    assert len(render_calls) == PREP_VIDEOS * NUM_FRAMES and sum(render_calls) > 0
    by_id, ranks = {}, {}
    for entry in json.loads((prep_synth / "queries.json").read_text()):
        video = Path(entry["video"]).stem
        rank = ranks[video] = ranks.get(video, -1) + 1
        by_id[synth_query_id(video, rank)] = entry
    for row in ds:
        assert len(row["images"]) == len(row["timestamps_s"]) == NUM_FRAMES
        assert row["images"][0].size == (112, 84)  # Qwen's resize rule at the pixel budget
        times = row["timestamps_s"]
        assert times[0] == pytest.approx(0.0) and all(b > a for a, b in itertools.pairwise(times))
        assert times[-1] <= row["clip_duration_s"]
        entry = by_id[row["sample_id"]]
        assert row["gt_start_s"] == pytest.approx(entry["start_s"], abs=1e-4)
        assert row["gt_end_s"] == pytest.approx(entry["end_s"], abs=1e-4)
        assert row["annotated_target_id"] == entry["target_id"]
        assert row["question"].startswith("Each object in the video is marked with a red number")
        assert entry["text"].lower().rstrip(".") in row["question"]
        # The red digits are really on the frames where tracks were drawn.
        pixels = np.asarray(row["images"][len(times) // 2])
        red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
        if row["frame_track_ids"][len(times) // 2]:
            assert red.sum() > 5
        # A GT ID drawn on none of the frames (a short-lived track the sampled frames miss) cannot
        # be answered: prep names such samples and training leaves them out.
        drawn = any(row["gt_target_id"] in ids for ids in row["frame_track_ids"])
        assert (row["sample_id"] in report["gt_not_drawn_samples"]) == (row["gt_target_id"] >= 0 and not drawn)
    assert len(report["gt_not_drawn_samples"]) <= 0.05 * len(ds)


def test_prep_resumes_and_reports_what_it_cannot_match(prepared, prep_synth, perception, tmp_path):
    out, report, _ = prepared
    again = prepare(PrepOptions(out_dir=str(out), synthetic=str(prep_synth), perception_config=perception,
                                num_frames=NUM_FRAMES, max_pixels=MAX_PIXELS))
    assert again["videos_resumed"] == PREP_VIDEOS and again["videos_prepared"] == 0
    assert again["samples"] == report["samples"] and again["id_correct"] == report["id_correct"]
    # other settings change the samples: those shards are redone, not reused
    shutil.copytree(out / "shards", tmp_path / "other" / "shards")
    other = prepare(PrepOptions(out_dir=str(tmp_path / "other"), synthetic=str(prep_synth), perception_config=perception,
                                num_frames=NUM_FRAMES, max_pixels=MAX_PIXELS, min_iou=0.3, limit=1))
    assert other["videos_prepared"] == 1 and other["videos_resumed"] == 0 and other["min_iou"] == 0.3

    # A target the camera could not see for most of its event (here: its visible share lowered in
    # the scene's gt/<name>.json) is checked but listed as hidden.
    hidden_set = tmp_path / "hidden_set"
    shutil.copytree(prep_synth, hidden_set)
    first = sorted(DatasetIndex.load(hidden_set).gt)[0]
    video = first.stem
    scene_gt = json.loads(first.read_text())
    video_queries = [q for q in json.loads((hidden_set / "queries.json").read_text()) if Path(q["video"]).stem == video]
    target = video_queries[0]["target_id"]
    for frame in scene_gt["frames"]:
        for obj in frame["objects"]:
            obj["visible"] = 0.2 if obj["id"] == target else obj["visible"]
    first.write_text(json.dumps(scene_gt))
    hidden = prepare(PrepOptions(out_dir=str(tmp_path / "hidden"), synthetic=str(hidden_set), perception_config=perception,
                                 num_frames=NUM_FRAMES, max_pixels=MAX_PIXELS, limit=1))
    assert hidden["hidden_target_samples"] == [synth_query_id(video, 0)]
    assert hidden["id_visible_checked"] == len(video_queries) - 1

    # A GT tube far outside the image matches no track; a video that is not there fails alone.
    annotations = json.loads((prep_synth / "annotations.json").read_text())
    names = sorted(annotations)[:2]
    broken = {names[0]: {**annotations[names[0]], "bbox": [[5000, 5000, 10, 10]] * len(annotations[names[0]]["bbox"])},
              "no_such_video.mp4": annotations[names[1]]}
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    result = prepare(PrepOptions(out_dir=str(tmp_path / "out"), annotations=str(path),
                                 videos=str(prep_synth / "videos"), perception_config=perception,
                                 num_frames=NUM_FRAMES, max_pixels=MAX_PIXELS, workers=2))
    assert result["samples"] == 1 and result["unmatched"] == 1
    assert result["unmatched_samples"] == [Path(names[0]).stem]
    assert [f["video"] for f in result["videos_failed"]] == ["no_such_video"]
    assert "no video file" in result["videos_failed"][0]["error"]
    ds = load_prepared([tmp_path / "out"])
    assert ds[0]["gt_target_id"] == -1  # kept on disk, left out of training (see test_train_grpo)


def test_clip_numbering_stores_the_numbers_drawn_and_matches_the_track_run(prepared, prep_synth, perception, tmp_path):
    """With `id_numbering: clip` the samples hold 1..K per clip (what the model sees), a relabelling of
    the same tracks, even where the tracker's IDs have counted far (first_track_id)."""
    from stvg_train.data import prepared_id_numbering

    out, _, _ = prepared
    report = prepare(PrepOptions(out_dir=str(tmp_path / "clip"), synthetic=str(prep_synth), perception_config=perception,
                                 num_frames=NUM_FRAMES, max_pixels=MAX_PIXELS, limit=3, first_track_id=(300, 900),
                                 id_numbering="clip"))
    assert report["id_numbering"] == "clip" and prepared_id_numbering([tmp_path / "clip"]) == "clip"
    assert prepared_id_numbering([out]) == "track"
    with pytest.raises(ValueError, match="mix"):
        prepared_id_numbering([out, tmp_path / "clip"])
    by_track = {row["sample_id"]: row for row in load_prepared([out])}
    rows = list(load_prepared([tmp_path / "clip"]))
    assert rows
    for row in rows:
        numbers = sorted({n for ids in row["frame_track_ids"] for n in ids})
        assert numbers == list(range(1, len(numbers) + 1))  # 1..K, not the tracker's 300+
        first_seen = [n for ids in row["frame_track_ids"] for n in ids]
        assert sorted(set(first_seen), key=first_seen.index) == numbers  # in order of first appearance
        twin = by_track[row["sample_id"]]
        relabel = {}
        for ids, twin_ids in zip(row["frame_track_ids"], twin["frame_track_ids"], strict=True):
            assert len(ids) == len(twin_ids)
            for n, t in zip(ids, twin_ids, strict=True):
                assert relabel.setdefault(n, t) == t
        assert len(set(relabel.values())) == len(relabel)  # one track per number
        assert relabel.get(row["gt_target_id"]) == twin["gt_target_id"] or twin["gt_target_id"] < 0
