"""write_dataset / the synth_dataset fixture: files, HC-STVG v2 conventions, bags and videos
read back against the generated frames."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from stvg_ros.core.bag_io import IMAGE_TYPE, bag_info, iter_image_bag
from stvg_ros.core.types import EPOCH_NS
from stvg_ros.core.video_io import iter_video, video_info
from stvg_ros.synthetic.scenes import MIXED_ORDER, DatasetIndex

HCSTVG_KEYS = {"img_num", "img_size", "st_frame", "bbox", "st_time", "ed_time", "English"}


@pytest.fixture(scope="module")
def scenes(synth_dataset):
    return [synth_dataset.scene(i) for i in range(len(synth_dataset.names))]


def test_layout_and_index(synth_dataset):
    index = synth_dataset
    assert len(index.names) == 4 and index.difficulties == list(MIXED_ORDER)
    assert index.frames == 4 * 80 and index.storage == "sqlite3"
    for name, video, bag, gt in zip(index.names, index.videos, index.bags, index.gt, strict=True):
        assert video == index.root / "videos" / f"{name}.mp4" and video.is_file()
        assert bag == index.root / "bags" / name and (bag / "metadata.yaml").is_file()
        assert gt == index.root / "gt" / f"{name}.json" and gt.is_file()
    reloaded = DatasetIndex.load(index.root)
    assert reloaded == index
    assert set(index.to_json()) == {"out", "videos", "bags", "annotations", "queries", "frames"}


def test_annotations_follow_hcstvg_v2(synth_dataset, scenes):
    annotations = synth_dataset.load_annotations()
    assert list(annotations) == [f"{n}.mp4" for n in synth_dataset.names]  # one sentence per video
    for scene, entry in zip(scenes, annotations.values(), strict=True):
        assert HCSTVG_KEYS | {"fps", "target_id"} == set(entry)
        fps = entry["fps"]
        assert entry["img_num"] == scene.num_frames == 80 and entry["img_size"] == [240, 320]
        first = entry["st_frame"] - 1  # 1-based in the file
        assert first == math.floor(entry["st_time"] * fps)
        last = math.floor(entry["ed_time"] * fps)
        assert len(entry["bbox"]) == last - first + 1 >= fps
        query = scene.queries[0]
        assert (query.start_frame, query.end_frame, query.text) == (first, last, entry["English"])
        assert entry["target_id"] == query.target_id == scene.target_id
        column = scene.gt._column(entry["target_id"])
        for offset, (x, y, w, h) in enumerate(entry["bbox"]):
            assert all(isinstance(v, int) for v in (x, y, w, h)) and w > 0 and h > 0
            assert x >= 0 and y >= 0 and x + w <= 320 and y + h <= 240
            np.testing.assert_array_equal(scene.gt.boxes[first + offset, column], [x, y, x + w, y + h])


def test_gt_files_match_the_scenes(synth_dataset, scenes):
    for i, scene in enumerate(scenes):
        gt = synth_dataset.load_gt(i)
        assert gt["num_frames"] == len(gt["frames"]) == scene.num_frames
        assert (gt["fps"], gt["width"], gt["height"], gt["difficulty"]) == (10.0, 320, 240, scene.difficulty)
        assert [o["id"] for o in gt["objects"]] == [o.id for o in scene.objects]
        for frame in gt["frames"][::9]:
            f = frame["index"]
            assert frame["stamp_ns"] == EPOCH_NS + f * 100_000_000
            for k, obj in enumerate(frame["objects"]):
                assert obj["xyxy"] == scene.gt.boxes[f, k].astype(int).tolist()
                assert obj["visible"] == pytest.approx(float(scene.gt.visible[f, k]), abs=1e-4)
        if scene.difficulty == "occlusion":
            assert gt["occlusion"]["target_id"] == gt["target_id"]
            assert gt["occlusion"]["end_frame"] - gt["occlusion"]["start_frame"] + 1 >= 15


def test_queries_file(synth_dataset, scenes):
    queries = synth_dataset.load_queries()
    by_video = {}
    for q in queries:
        by_video.setdefault(q["video"], []).append(q)
    assert list(by_video) == [f"{n}.mp4" for n in synth_dataset.names]
    for scene, items in zip(scenes, by_video.values(), strict=True):
        assert [q["primary"] for q in items] == [True] + [False] * (len(items) - 1)
        assert [q["text"] for q in items] == [q.text for q in scene.queries]
        for q in items:
            assert q["start_stamp_ns"] == EPOCH_NS + q["start_frame"] * 100_000_000
            assert q["end_stamp_ns"] == EPOCH_NS + q["end_frame"] * 100_000_000
            assert math.floor(q["start_s"] * 10) == q["start_frame"] and math.floor(q["end_s"] * 10) == q["end_frame"]
        assert len({q["target_id"] for q in items}) == len(items)
    assert sum(len(v) for v in by_video.values()) > len(by_video)


def test_bags_hold_the_exact_frames_and_stamps(synth_dataset, scenes):
    for bag, scene in zip(synth_dataset.bags, scenes, strict=True):
        info = bag_info(bag)
        assert info.topics == {"/camera/image_raw": (IMAGE_TYPE, scene.num_frames)}
        assert (info.start_ns, info.end_ns) == (EPOCH_NS, EPOCH_NS + 79 * 100_000_000)
        count = 0
        for frame, expected in zip(iter_image_bag(bag), scene.frames(), strict=True):
            assert frame.stamp_ns == frame.recorded_ns == scene.stamp_ns(count) == EPOCH_NS + count * 100_000_000
            assert frame.frame_id == "camera"
            np.testing.assert_array_equal(frame.rgb, expected)
            count += 1
        assert count == scene.num_frames


def test_videos_are_close_to_the_frames(synth_dataset, scenes):
    for video, scene in zip(synth_dataset.videos, scenes, strict=True):
        info = video_info(video)
        assert (info.frames, info.fps, info.width, info.height) == (80, 10.0, 320, 240)
        errors = [np.abs(rgb.astype(int) - scene.render_frame(i)).mean() for i, _, rgb in iter_video(video)]
        assert len(errors) == 80 and max(errors) < 6.0


def test_same_seed_writes_the_same_files(tmp_path, synth_dataset):
    from stvg_ros.synthetic.scenes import write_dataset

    spec = synth_dataset.spec
    a = write_dataset(tmp_path / "a", synth_dataset.seed, 1, spec, bags=False)
    assert a.bags == [] and not any((tmp_path / "a" / "bags").glob("*"))
    assert json.loads(a.annotations.read_text()) == {
        k: v for k, v in synth_dataset.load_annotations().items() if k == f"{synth_dataset.names[0]}.mp4"
    }
    assert a.gt[0].read_bytes() == synth_dataset.gt[0].read_bytes()
    b = write_dataset(tmp_path / "b", synth_dataset.seed + 1, 1, spec, bags=False)
    assert a.annotations.read_text() != b.annotations.read_text().replace(
        f"synth_{synth_dataset.seed + 1}_", f"synth_{synth_dataset.seed}_"
    )
