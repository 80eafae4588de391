"""`stvg-ros eval replay` mechanics over DDS against a stand-in graph in another process.

The stand-in (written below, a test double, not product code) answers like the real graph would
with perfect perception and a perfect model: it publishes the synthetic ground-truth boxes as
`tracks` for every image it receives and answers `ground` with the annotated target, span and
tube. Replay must then map every stamp back to the right frame: all metrics, the perception
ceiling and ID accuracy are 1, for several bags played back to back (stamps shifted).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.ros
rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (run scripts/setup.sh)")

STUB = r"""
import json, sys, threading
import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from builtin_interfaces.msg import Time
from stvg_ros_msgs.msg import TrackedObject, TrackedObjectArray, TubeBox
from stvg_ros_msgs.srv import Ground

scenes = json.loads(open(sys.argv[1]).read())  # [{"gt": gt.json dict, "query": {...}}] in play order

def t(ns):
    return Time(sec=ns // 10**9, nanosec=ns % 10**9)

class Stub(Node):
    def __init__(self):
        super().__init__("stub_graph")
        self.seen = []  # stamps of received images, in order
        self.pub = self.create_publisher(TrackedObjectArray, "/tracks", 50)
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.create_subscription(Image, "/camera/image_raw", self.on_image, qos)
        self.create_service(Ground, "/ground", self.on_ground)

    def locate(self, index):
        for scene in scenes:
            n = len(scene["gt"]["frames"])
            if index < n:
                return scene, index
            index -= n
        raise IndexError(index)

    def on_image(self, msg):
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        scene, frame = self.locate(len(self.seen))
        self.seen.append(stamp)
        out = TrackedObjectArray()
        out.header = msg.header
        for obj in scene["gt"]["frames"][frame]["objects"]:
            x1, y1, x2, y2 = obj["xyxy"]
            out.objects.append(TrackedObject(track_id=obj["id"], label="shape", score=1.0, x1=float(x1),
                                             y1=float(y1), x2=float(x2), y2=float(y2), detected=True))
        self.pub.publish(out)

    def on_ground(self, request, response):
        scene, last = self.locate(len(self.seen) - 1)
        first_stamp = self.seen[len(self.seen) - 1 - last]
        q = scene["query"]
        r = response.result
        r.query, r.success, r.model = request.query, True, "stub"
        r.message = f"seen {len(self.seen)}"  # how many images had arrived when the query came
        r.target_id = q["target_id"]
        r.start, r.end = t(self.seen[len(self.seen) - 1 - last + q["start_frame"]]), t(self.seen[len(self.seen) - 1 - last + q["end_frame"]])
        r.clip_start = t(first_stamp)
        r.start_offset, r.end_offset = q["start_s"], q["end_s"]
        for f in range(q["start_frame"], q["end_frame"] + 1):
            box = next(o["xyxy"] for o in scene["gt"]["frames"][f]["objects"] if o["id"] == q["target_id"])
            tb = TubeBox(x1=float(box[0]), y1=float(box[1]), x2=float(box[2]), y2=float(box[3]))
            tb.header.stamp = t(self.seen[len(self.seen) - 1 - last + f])
            r.tube.append(tb)
        return response

rclpy.init()
node = Stub()
print("stub ready", flush=True)
try:
    rclpy.spin(node)
except KeyboardInterrupt:
    pass
"""


def test_replay_maps_results_back_to_frames(tmp_path, synth_dataset):
    from tests.ros_support import NodeProcess

    root = synth_dataset.root
    listing = json.loads(synth_dataset.queries.read_text())
    sidecars, scenes, asked_after = [], [], {}
    for index, name in enumerate(synth_dataset.names[:2]):
        primary = next(q for q in listing if q["video"] == f"{name}.mp4")
        scenes.append({"gt": json.loads(synth_dataset.gt[index].read_text()), "query": primary})
        path = tmp_path / f"{name}.json"
        # the first bag's query comes in the middle of the bag, soon after its event; the second after the last frame
        ask = {"ask_at_frame": min(primary["end_frame"] + 3, 79) + 1} if index == 0 else {}
        path.write_text(json.dumps({"video_id": name, "bag": str(synth_dataset.bags[index]), "annotations": str(root),
                                    "queries": [{"query_id": name, **ask}]}))  # fmt: skip
        asked_after[name] = ask.get("ask_at_frame", 80)  # annotation frames count from 1: images seen so far
        sidecars.append(path)
    (tmp_path / "scenes.json").write_text(json.dumps(scenes))
    (tmp_path / "stub.py").write_text(STUB)
    stub = NodeProcess.python([str(tmp_path / "stub.py"), str(tmp_path / "scenes.json")], tmp_path / "stub.log")
    try:
        assert stub.wait_for_log("stub ready", 60), stub.log()
        done = subprocess.run(
            [sys.executable, "-m", "stvg_ros.cli.main", "eval", "replay", "--sidecar", str(sidecars[0]),
             "--more-sidecars", str(sidecars[1]), "--out", str(tmp_path / "out"), "--json", "--no-progress",
             "--graph-timeout", "60"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        stub.stop()
    assert done.returncode == 0, done.stderr[-3000:] + stub.log()[-2000:]
    summary = json.loads(done.stdout)
    assert summary["n_queries"] == 2 and summary["n_missing"] == 0
    assert summary["m_tIoU"] == summary["m_vIoU"] == summary["vIoU@0.5"] == 1.0
    assert summary["perception_ceiling"]["m_vIoU"] == 1.0
    assert summary["id_accuracy"] == 1.0 and summary["id_reference"] == "tracks"
    stats = summary["replay"]
    assert stats["frames_published"] == 160 and stats["frames_with_tracks"] == 160
    records = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    # stamps in the records are the bag's own (the shift of the second bag is undone)
    second = json.loads(synth_dataset.queries.read_text())
    first_stamp = {r["video_id"]: r["start_stamp_ns"] for r in records}
    expected = {q["video"][:-4]: q["start_stamp_ns"] for q in second if q["primary"]}
    assert first_stamp == {k: expected[k] for k in first_stamp}
    # each query came right after its frame: the first mid-bag, the second after the first bag's 80 images + 80
    seen = {r["video_id"]: r["message"] for r in records}
    first, second = synth_dataset.names[:2]
    assert seen == {first: f"seen {asked_after[first]}", second: f"seen {80 + asked_after[second]}"}
    tracks = (tmp_path / "out" / "tracks.jsonl").read_text().splitlines()
    assert len(tracks) == 160 and {json.loads(t)["video_id"] for t in tracks} == set(synth_dataset.names[:2])
    for name in ("report.json", "report.md", "predictions.json", "timeline.png"):
        assert (tmp_path / "out" / name).is_file()


def test_a_bag_truncated_behind_its_metadata_fails_during_playback(tmp_path, synth_dataset):
    """metadata.yaml lists 80 images, the storage holds 40: playback stops with one clear line."""
    import shutil
    import sqlite3

    from tests.ros_support import NodeProcess

    name = synth_dataset.names[0]
    bag = tmp_path / "bag"
    shutil.copytree(synth_dataset.bags[0], bag)
    with sqlite3.connect(next(bag.glob("*.db3"))) as db:
        db.execute("DELETE FROM messages WHERE id > 40")
    sidecar = tmp_path / "sidecar.json"
    sidecar.write_text(json.dumps({"video_id": name, "bag": str(bag), "annotations": str(synth_dataset.root),
                                   "queries": [{"query_id": name}]}))  # fmt: skip
    scenes = [{"gt": json.loads(synth_dataset.gt[0].read_text()), "query": {}}]
    (tmp_path / "scenes.json").write_text(json.dumps(scenes))
    (tmp_path / "stub.py").write_text(STUB)
    stub = NodeProcess.python([str(tmp_path / "stub.py"), str(tmp_path / "scenes.json")], tmp_path / "stub.log")
    try:
        assert stub.wait_for_log("stub ready", 60), stub.log()
        done = subprocess.run(
            [sys.executable, "-m", "stvg_ros.cli.main", "eval", "replay", "--sidecar", str(sidecar),
             "--out", str(tmp_path / "out"), "--no-progress", "--graph-timeout", "60"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        stub.stop()
    assert done.returncode == 2, (done.stdout, done.stderr[-2000:])
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("stvg-ros eval: error:") and "truncated: 40 of 80 messages" in last, last
    assert "Traceback" not in done.stderr


def test_compressed_mcap_bag_and_a_silent_tracker(tmp_path, synth_dataset):
    """A CompressedImage bag in MCAP storage is decoded for a graph that listens to raw images
    (and scores 1 against the stand-in); lock-step playback without any tracks stops with a clear line."""
    from stvg_ros.core.bag_io import bag_info, write_image_bag
    from tests.ros_support import NodeProcess

    name = synth_dataset.names[0]
    scene = synth_dataset.scene(0)
    bag = tmp_path / "compressed_mcap"
    frames = ((scene.stamp_ns(f), rgb) for f, rgb in enumerate(scene.frames()))
    write_image_bag(bag, frames, storage="mcap", compressed=True)
    assert bag_info(bag).storage == "mcap"
    primary = next(q for q in json.loads(synth_dataset.queries.read_text()) if q["video"] == f"{name}.mp4")
    sidecar = tmp_path / "sidecar.json"
    sidecar.write_text(json.dumps({"video_id": name, "bag": str(bag), "annotations": str(synth_dataset.root),
                                   "queries": [{"query_id": name}]}))  # fmt: skip
    scenes = [{"gt": json.loads(synth_dataset.gt[0].read_text()), "query": primary}]
    (tmp_path / "scenes.json").write_text(json.dumps(scenes))
    (tmp_path / "stub.py").write_text(STUB)
    stub = NodeProcess.python([str(tmp_path / "stub.py"), str(tmp_path / "scenes.json")], tmp_path / "stub.log")
    replay = [sys.executable, "-m", "stvg_ros.cli.main", "eval", "replay", "--sidecar", str(sidecar), "--no-progress",
              "--graph-timeout", "60"]  # fmt: skip
    try:
        assert stub.wait_for_log("stub ready", 60), stub.log()
        done = subprocess.run([*replay, "--out", str(tmp_path / "out"), "--json"], capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        silent = subprocess.run([*replay, "--out", str(tmp_path / "out2"), "--tracks-topic", "/nobody_publishes",
                                 "--frame-timeout", "1"], capture_output=True, text=True, timeout=120)  # fmt: skip
    finally:
        stub.stop()
    assert done.returncode == 0, done.stderr[-3000:] + stub.log()[-2000:]
    summary = json.loads(done.stdout)
    assert summary["m_vIoU"] == summary["perception_ceiling"]["m_vIoU"] == 1.0
    assert summary["replay"]["frames_with_tracks"] == 80
    assert silent.returncode == 2, silent.stderr[-2000:]
    last = silent.stderr.strip().splitlines()[-1]
    assert "no tracks on '/nobody_publishes' for 3 frames in a row" in last and "Traceback" not in silent.stderr, last
