"""`stvg-ros synth`: writes video, bag and annotations; --json keys; options; errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from stvg_ros.cli.main import main
from stvg_ros.core.bag_io import COMPRESSED_TYPE, bag_info, iter_image_bag
from stvg_ros.core.video_io import video_info
from stvg_ros.synthetic.scenes import SceneSpec, generate_scene, scene_seed


def test_cli_writes_video_bag_and_annotations(tmp_path, capsys):
    out = tmp_path / "set"
    code = main(["synth", "--out", str(out), "--seed", "3", "--videos", "2", "--seconds", "5", "--fps", "8",
                 "--size", "200x150", "--difficulty", "crossing", "--json"])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == {"out", "videos", "bags", "annotations", "queries", "frames"}
    assert summary["out"] == str(out) and summary["frames"] == 2 * 40
    assert [p.rsplit("/", 1)[1] for p in summary["videos"]] == ["synth_3_000.mp4", "synth_3_001.mp4"]
    info = video_info(summary["videos"][0])
    assert (info.frames, info.fps, info.width, info.height) == (40, 8.0, 200, 150)
    annotations = json.loads(Path(summary["annotations"]).read_text())
    assert list(annotations) == ["synth_3_000.mp4", "synth_3_001.mp4"]
    assert annotations["synth_3_000.mp4"]["img_size"] == [150, 200]
    assert "after" in annotations["synth_3_000.mp4"]["English"]  # crossing captions name the passed object
    # The bag holds exactly the frames of the scene the CLI generated.
    scene = generate_scene(scene_seed(3, 0), SceneSpec(seconds=5, fps=8, width=200, height=150, difficulty="crossing"))
    frames = list(iter_image_bag(summary["bags"][0]))
    assert len(frames) == 40
    np.testing.assert_array_equal(frames[17].rgb, scene.render_frame(17))
    assert frames[17].stamp_ns == scene.stamp_ns(17)
    assert json.loads(Path(summary["queries"]).read_text())[0]["text"] == scene.queries[0].text


def test_cli_mcap_compressed_and_no_bags(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "m"), "--seed", "1", "--videos", "1", "--seconds", "4",
                 "--difficulty", "easy", "--storage", "mcap", "--compressed", "--json"]) == 0  # fmt: skip
    bag = json.loads(capsys.readouterr().out)["bags"][0]
    info = bag_info(bag)
    assert info.storage == "mcap" and info.topics["/camera/image_raw"] == (COMPRESSED_TYPE, 40)
    assert main(["synth", "--out", str(tmp_path / "n"), "--seed", "1", "--videos", "1", "--seconds", "4",
                 "--difficulty", "easy", "--no-bags", "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["bags"] == [] and len(summary["videos"]) == 1


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--seed", "1", "--seconds", "1"]) == 2
    assert "at least 4 s" in capsys.readouterr().err
    assert main(["synth", "--out", str(tmp_path), "--seed", "1", "--videos", "0"]) == 2
    assert "--videos" in capsys.readouterr().err
    for bad in (["--size", "320by240"], ["--difficulty", "impossible"], ["--storage", "rosbag1"]):
        try:
            main(["synth", "--out", str(tmp_path), "--seed", "1", *bad])
        except SystemExit as exc:
            assert exc.code == 2
        else:
            raise AssertionError(f"{bad} was accepted")
        assert "error" in capsys.readouterr().err


def test_entry_point_runs_in_a_fresh_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "stvg_ros.cli.main", "synth", "--out", str(tmp_path), "--seed", "9", "--videos", "1",
         "--seconds", "4", "--no-bags", "--json"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["frames"] == 40
    assert (tmp_path / "index.json").is_file() and (tmp_path / "gt" / "synth_9_000.json").is_file()
