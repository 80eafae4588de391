"""`stvg-ros eval replay` refuses bad input with one clear line before touching ROS: corrupt and
truncated bags, unknown topics, missing annotations and queries, frame-index mismatches."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from stvg_ros.core.bag_io import write_image_bag
from stvg_ros.evaluation import EvalError
from stvg_ros.evaluation.loaders import load_annotations
from stvg_ros.evaluation.replay import StampIndex, load_sidecar, plan_bag


def replay_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "stvg_ros.cli.main", "eval", "replay", *map(str, args), "--graph-timeout", "5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def case(tmp_path, synth_dataset):
    """A sidecar for the first video of the shared synthetic set, and a helper to rewrite it."""
    name = synth_dataset.names[0]
    bag = tmp_path / "bag"
    shutil.copytree(synth_dataset.bags[0], bag)

    def sidecar(**changes):
        data = {"video_id": name, "bag": str(bag), "topic": "/camera/image_raw",
                "annotations": str(synth_dataset.root), "queries": [{"query_id": name}], **changes}  # fmt: skip
        path = tmp_path / "sidecar.json"
        path.write_text(json.dumps(data))
        return path

    return sidecar, bag, tmp_path


def test_a_good_sidecar_plans_every_query(case, synth_dataset):
    sidecar, _bag, _ = case
    path = sidecar(queries=[])  # no list: every query of the video
    plan = plan_bag(load_sidecar(path), load_annotations(synth_dataset.root))
    listing = [
        q for q in json.loads(synth_dataset.queries.read_text()) if q["video"].startswith(synth_dataset.names[0])
    ]
    assert len(plan.queries) == len(listing) and plan.frames == 80 and plan.topic == "/camera/image_raw"
    assert list(plan.asks) == [79]  # asked after the last frame


def _expect_error(done, message):
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("stvg-ros eval: error:"), done.stderr
    assert message in lines[-1], (message, lines[-1])
    assert "Traceback" not in done.stderr


def test_corrupt_and_truncated_bags(case):
    sidecar, bag, tmp_path = case
    db3 = next(bag.glob("*.db3"))
    db3.write_bytes(db3.read_bytes()[: db3.stat().st_size // 2])  # cut in the middle
    _expect_error(replay_cli("--sidecar", sidecar(), "--out", tmp_path / "out"), "corrupt")
    mcap = tmp_path / "mcap_bag"
    write_image_bag(mcap, ((10**9 + i * 10**8, np.zeros((120, 160, 3), np.uint8)) for i in range(20)), storage="mcap")
    cut = next(mcap.glob("*.mcap"))
    cut.write_bytes(cut.read_bytes()[: int(cut.stat().st_size * 0.6)])
    _expect_error(replay_cli("--sidecar", sidecar(), "--bag", mcap, "--out", tmp_path / "out"), "cannot open bag")
    _expect_error(
        replay_cli("--sidecar", sidecar(), "--bag", tmp_path / "nowhere", "--out", tmp_path / "o"), "not found"
    )


def test_unknown_topic_missing_annotations_and_frame_mismatch(case, synth_dataset):
    sidecar, _bag, tmp_path = case
    out = tmp_path / "out"
    _expect_error(replay_cli("--sidecar", sidecar(topic="/front/image"), "--out", out), "has no topic '/front/image'")
    _expect_error(replay_cli("--sidecar", sidecar(annotations="missing.json"), "--out", out), "not found")
    _expect_error(replay_cli("--sidecar", sidecar(queries=[{"query_id": "no_such_query"}]), "--out", out), "not in")
    _expect_error(replay_cli("--sidecar", tmp_path / "none.json", "--out", out), "sidecar not found")
    (tmp_path / "broken.json").write_text('{"video_id": ')
    _expect_error(replay_cli("--sidecar", tmp_path / "broken.json", "--out", out), "not valid JSON")
    short = tmp_path / "short_bag"  # 30 frames where the annotation has 80
    write_image_bag(short, ((10**9 + i * 10**8, np.zeros((240, 320, 3), np.uint8)) for i in range(30)))
    _expect_error(replay_cli("--sidecar", sidecar(bag=str(short)), "--out", out), "frame-index mismatch")


@pytest.mark.ros
def test_no_graph_is_a_clear_error(case):
    pytest.importorskip("rclpy", reason="rclpy is not installed (run scripts/setup.sh)")
    sidecar, _, tmp_path = case
    done = replay_cli("--sidecar", sidecar(), "--out", tmp_path / "out", "--service", "/nobody_serves_this")
    _expect_error(done, "no grounding service '/nobody_serves_this'")


def test_stamp_index_is_bounded():
    index = StampIndex(capacity=3)
    for i in range(5):
        index.add(i, "v", i + 1)
    assert index.get(0) is None and index.get(4) == ("v", 5)


def test_sidecar_fields_are_checked(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"bag": "b", "annotations": "a"}))
    with pytest.raises(EvalError, match="missing field 'video_id'"):
        load_sidecar(tmp_path / "s.json")
    (tmp_path / "s.json").write_text(json.dumps({"video_id": "v", "bag": "b", "annotations": "a",
                                                 "queries": [{"query_id": "v", "window_s": -1}]}))  # fmt: skip
    with pytest.raises(EvalError, match="window_s"):
        load_sidecar(tmp_path / "s.json")


def test_lockstep_graph_gets_reliable_image_subscriptions(monkeypatch, tmp_path):
    """A graph started for lock-step playback subscribes to images reliably (the user's -p come after, so
    they win); the names are real graph parameters. Rate-paced playback leaves the graph's QoS alone."""
    from stvg_ros.evaluation import replay
    from stvg_ros.nodes.graph import check_graph_parameters, graph_parameters, parse_overrides

    check_graph_parameters(graph_parameters(None, parse_overrides(list(replay.LOCKSTEP_GRAPH_PARAMS))))
    commands = []
    monkeypatch.setattr(replay.subprocess, "Popen", lambda command, **_: commands.append(command))
    for pace in ("lockstep", "rate"):
        config = replay.ReplayConfig(
            sidecars=[], out=tmp_path, pace=pace, graph_args=["-p", "tracker_node:image_reliability=best_effort"]
        )
        replay._start_graph(config, tmp_path / f"{pace}.log")
    lockstep, rate = (" ".join(c) for c in commands)
    assert (
        "tracker_node:image_reliability=reliable" in lockstep
        and "grounding_node:image_reliability=reliable" in lockstep
    )
    assert lockstep.index("=reliable") < lockstep.index("=best_effort")
    assert "=reliable" not in rate
