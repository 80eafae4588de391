"""`stvg-ros eval replay` writes each query's results as it finishes, against the stand-in graph of
test_eval_replay_stub: a replay stopped by SIGINT in its second bag keeps the first bag's answer
and tracks, refuses to be mixed with a new replay, and `--resume` plays only the second bag."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from stvg_ros.evaluation.loaders import load_annotations
from tests.ros_support import wait_for_line
from tests.test_eval_replay_stub import STUB

pytestmark = pytest.mark.ros
rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (run scripts/setup.sh)")

#: The CLI with the second query's service call blocked until a signal comes (a test double
#: around the product's `eval replay`): "BLOCKED" on stdout says query 1 is committed.
HARNESS = r"""
import sys, time
from stvg_ros.evaluation import replay
real = replay._Driver.ground
calls = []
def ground(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        print("BLOCKED", flush=True)
        time.sleep(120)  # ended by the test's signal
    return real(self, *args, **kwargs)
replay._Driver.ground = ground
from stvg_ros.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def start_stub(tmp_path, synth_dataset, indices: list[int], name: str):
    """The stand-in graph for the bags `indices`, played in that order."""
    from tests.ros_support import NodeProcess

    listing = json.loads(synth_dataset.queries.read_text())
    scenes = []
    for index in indices:
        video = synth_dataset.names[index]
        primary = next(q for q in listing if q["video"] == f"{video}.mp4")
        scenes.append({"gt": json.loads(synth_dataset.gt[index].read_text()), "query": primary})
    (tmp_path / f"{name}.json").write_text(json.dumps(scenes))
    (tmp_path / "stub.py").write_text(STUB)
    stub = NodeProcess.python([str(tmp_path / "stub.py"), str(tmp_path / f"{name}.json")], tmp_path / f"{name}.log")
    assert stub.wait_for_log("stub ready", 60), stub.log()
    return stub


def test_a_replay_stopped_by_sigint_resumes_with_the_bags_left(tmp_path, synth_dataset):
    names = synth_dataset.names[:2]
    sidecars = []
    for index, name in enumerate(names):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"video_id": name, "bag": str(synth_dataset.bags[index]),
                                    "annotations": str(synth_dataset.root), "queries": [{"query_id": name}]}))  # fmt: skip
        sidecars.append(str(path))
    out = tmp_path / "out"
    replay = ["eval", "replay", "--sidecar", sidecars[0], "--more-sidecars", sidecars[1], "--out", str(out),
              "--no-progress", "--graph-timeout", "60"]  # fmt: skip
    (tmp_path / "harness.py").write_text(HARNESS)

    stub = start_stub(tmp_path, synth_dataset, [0, 1], "both")
    try:
        with (tmp_path / "stopped.err").open("w") as err:
            process = subprocess.Popen([sys.executable, str(tmp_path / "harness.py"), *replay],
                                       stdout=subprocess.PIPE, stderr=err, text=True)  # fmt: skip
            try:
                assert wait_for_line(process, "BLOCKED", 240), (tmp_path / "stopped.err").read_text()[-3000:]
                process.send_signal(signal.SIGINT)
                assert process.wait(timeout=60) == 130
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait(timeout=10)
        mixed = subprocess.run([sys.executable, "-m", "stvg_ros.cli.main", *replay], capture_output=True, text=True,
                               timeout=120)  # fmt: skip
    finally:
        stub.stop()
    stderr = (tmp_path / "stopped.err").read_text()
    last = stderr.strip().splitlines()[-1]
    assert "interrupted by SIGINT: 1 of 2 queries finished" in last and "--resume" in last, last
    assert "Traceback" not in stderr
    # the first bag's answer and tracks are on disk, and scoreable
    assert list(json.loads((out / "predictions.json").read_text())) == [names[0]]
    assert [r["query_id"] for r in lines(out / "records.jsonl")] == [names[0]]
    assert sum(r["video_id"] == names[0] for r in lines(out / "tracks.jsonl")) == 80
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["kind"] == "eval replay" and manifest["status"] == "interrupted"
    assert manifest["videos_done"] == [names[0]]
    assert mixed.returncode == 2 and "holds the results of an earlier run" in mixed.stderr.strip().splitlines()[-1]
    assert "Traceback" not in mixed.stderr

    stub = start_stub(tmp_path, synth_dataset, [1], "second")  # only the second bag is played again
    try:
        done = subprocess.run([sys.executable, "-m", "stvg_ros.cli.main", *replay, "--resume", "--json"],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
    finally:
        stub.stop()
    assert done.returncode == 0, done.stderr[-3000:] + stub.log()[-2000:]
    summary = json.loads(done.stdout)
    assert summary["n_queries"] == 2 and summary["n_missing"] == 0
    assert summary["m_tIoU"] == summary["m_vIoU"] == 1.0 and summary["perception_ceiling"]["m_vIoU"] == 1.0
    assert summary["replay"]["frames_published"] == 80 and summary["replay"]["resumed_queries"] == 1
    tracks = lines(out / "tracks.jsonl")
    annotations = load_annotations(synth_dataset.root).queries
    frames = [(n, annotations[n].to_annotation(i)) for n in names for i in range(80)]
    assert [(r["video_id"], r["frame"]) for r in tracks] == frames  # each bag's tracks once, in play order
    assert [r["query_id"] for r in lines(out / "records.jsonl")] == names
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
