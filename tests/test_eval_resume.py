"""`stvg-ros eval run` writes each query's results as it finishes: a run stopped by SIGTERM or by a
failure leaves a scoreable partial result, refuses to be mixed with a new run, and `--resume`
ends with the numbers, predictions and tracks of an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from stvg_ros.evaluation import EvalError
from stvg_ros.evaluation.predictions import Prediction
from stvg_ros.evaluation.run_store import RunInterrupted, RunStore
from tests.ros_support import wait_for_line

LIMIT = 3  # videos per run: the interruption comes in the second

#: Runs the CLI with the grounding of the second query blocked until a signal comes (a test
#: double around the product's `eval run`): "BLOCKED" on stdout says query 1 is committed.
HARNESS = r"""
import sys, time
from stvg_ros.grounding import offline
real = offline.OfflinePipeline.ground
calls = []
def ground(self, request):
    calls.append(1)
    if len(calls) == 2:
        print("BLOCKED", flush=True)
        time.sleep(120)  # ended by the test's signal
    return real(self, request)
offline.OfflinePipeline.ground = ground
from stvg_ros.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def eval_cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "stvg_ros.cli.main", "eval", *map(str, args)],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def expect_error(done, *messages):
    assert done.returncode == 2, (done.stdout, done.stderr[-2000:])
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("stvg-ros eval: error:"), done.stderr[-2000:]
    for message in messages:
        assert message in last, (message, last)
    assert "Traceback" not in done.stderr


def model_args(tiny_vlm) -> list[str]:
    return ["-p", f"grounding_node:model={tiny_vlm.gguf_q8_0}", "-p", f"grounding_node:mmproj={tiny_vlm.mmproj_f32}",
            "-p", "grounding_node:n_gpu_layers=0", "-p", "grounding_node:n_threads=1",
            "-p", "grounding_node:num_frames=6", "-p", "grounding_node:reasoning=false"]  # fmt: skip


def metrics(summary: dict) -> dict:
    """The summary without the run's own figures (wall time, frames decoded by this segment)."""
    return {k: v for k, v in summary.items() if k != "run"}


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def stable(record: dict) -> dict:
    """A record without what differs between two runs of the same query (wall-clock timings)."""
    return {k: v for k, v in record.items() if k not in ("latency_s", "timings_ms")}


def test_a_run_stopped_by_sigterm_resumes_to_the_same_numbers(tmp_path, synth_dataset, tiny_detector, tiny_vlm):
    """The tracker's perception (its tracks feed the perception ceiling), three videos: a run
    stopped while grounding the second query keeps the first, refuses a new run and a resume with
    other settings, and its resume equals an uninterrupted run in every score, prediction and track."""
    run = ["run", "--videos", synth_dataset.root / "videos", "--annotations", synth_dataset.annotations,
           "--source", "video", "--limit", LIMIT, "--no-progress", "-p",
           f"tracker_node:detector={tiny_detector['onnx-int8']}", "-p", "tracker_node:threads=1",
           "-p", "tracker_node:detect_every=1",  # not adapted to the CPU's load: the same tracks every run
           *model_args(tiny_vlm)]  # fmt: skip
    reference = tmp_path / "reference"
    done = eval_cli(*run, "--out", reference, "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    expected = json.loads(done.stdout)
    assert expected["n_queries"] == LIMIT and expected["perception_ceiling"]["m_vIoU"] is not None

    out = tmp_path / "out"
    (tmp_path / "harness.py").write_text(HARNESS)
    with (tmp_path / "stopped.err").open("w") as err:
        process = subprocess.Popen([sys.executable, str(tmp_path / "harness.py"), "eval", *map(str, run), "--out",
                                    str(out)], stdout=subprocess.PIPE, stderr=err, text=True)  # fmt: skip
        try:
            assert wait_for_line(process, "BLOCKED", 240), (tmp_path / "stopped.err").read_text()[-3000:]
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 143
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
    stderr = (tmp_path / "stopped.err").read_text()
    last = stderr.strip().splitlines()[-1]
    assert "interrupted by SIGTERM: 1 of 3 queries finished" in last and "--resume" in last, last
    assert "Traceback" not in stderr
    first = synth_dataset.names[0]
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["videos_done"] == [first]
    reference_predictions = json.loads((reference / "predictions.json").read_text())
    partial = json.loads((out / "predictions.json").read_text())
    assert partial == {first: reference_predictions[first]}
    assert [r["query_id"] for r in lines(out / "records.jsonl")] == [first]
    rescored = eval_cli("score", "--annotations", synth_dataset.annotations, "--predictions",
                        out / "predictions.json", "--json")  # fmt: skip
    assert rescored.returncode == 0, rescored.stderr[-2000:]
    assert json.loads(rescored.stdout)["per_video"][first]["tIoU"] == expected["per_video"][first]["tIoU"]

    # the stopped run's folder is not mixed with another run
    before = {name: (out / name).read_bytes() for name in ("predictions.json", "records.jsonl", "tracks.jsonl")}
    expect_error(eval_cli(*run, "--out", out), "holds the results of an earlier run", "--resume")
    expect_error(eval_cli(*run, "--out", out, "--resume", "-p", "grounding_node:num_frames=4"),
                 "other settings (parameters.grounding_node.num_frames)")  # fmt: skip
    assert {name: (out / name).read_bytes() for name in before} == before

    done = eval_cli(*run, "--out", out, "--resume", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = json.loads(done.stdout)
    assert metrics(resumed) == metrics(expected)
    assert resumed["run"]["resumed_queries"] == 1
    assert json.loads((out / "predictions.json").read_text()) == reference_predictions
    assert (out / "tracks.jsonl").read_text() == (reference / "tracks.jsonl").read_text()
    assert [stable(r) for r in lines(out / "records.jsonl")] == [stable(r) for r in lines(reference / "records.jsonl")]
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "complete" and [s["status"] for s in manifest["segments"]] == [
        "interrupted",
        "complete",
    ]
    # a complete run is refused too; resuming it only scores it again
    expect_error(eval_cli(*run, "--out", out), "holds the results of an earlier run (complete, 3 of 3")
    again = eval_cli(*run, "--out", out, "--resume", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout)
    assert metrics(summary) == metrics(expected) and summary["run"]["resumed_queries"] == LIMIT
    assert summary["run"]["frames"] == 0  # nothing decoded again
    assert (out / "tracks.jsonl").read_text() == (reference / "tracks.jsonl").read_text()


def test_a_failed_run_keeps_its_answers_and_resumes(tmp_path, synth_dataset, tiny_vlm):
    """A failure on video 2 (its ground truth cut short) ends with one line that says how many
    answers are kept; after the fix, --resume ends with the numbers of an uninterrupted run."""
    data = tmp_path / "data"
    shutil.copytree(synth_dataset.root / "gt", data / "gt")
    shutil.copy(synth_dataset.annotations, data / "annotations.json")
    run = ["run", "--videos", synth_dataset.root / "videos", "--annotations", data / "annotations.json",
           "--source", "video", "--perception", "gt", "--limit", LIMIT, "--no-progress", *model_args(tiny_vlm)]  # fmt: skip
    done = eval_cli(*run, "--out", tmp_path / "reference", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    expected = json.loads(done.stdout)

    second = data / "gt" / f"{synth_dataset.names[1]}.json"
    intact = second.read_text()
    cut = json.loads(intact)
    cut["frames"] = cut["frames"][:10]
    second.write_text(json.dumps(cut))
    out = tmp_path / "out"
    expect_error(eval_cli(*run, "--out", out), "more frames than its ground truth (10)",
                 "1 of 3 queries finished and kept in", "--resume")  # fmt: skip
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "failed" and "ground truth" in manifest["segments"][-1]["error"]
    assert list(json.loads((out / "predictions.json").read_text())) == [synth_dataset.names[0]]

    second.write_text(intact)
    done = eval_cli(*run, "--out", out, "--resume", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert metrics(json.loads(done.stdout)) == metrics(expected)
    reference = json.loads((tmp_path / "reference" / "predictions.json").read_text())
    assert json.loads((out / "predictions.json").read_text()) == reference


# --------------------------------------------------------------------------------------------
# the store itself (no models)

FINGERPRINT = {"annotations": "/data/a.json", "parameters": {"grounding_node": {"model": "m", "num_frames": 8}}}


def open_store(out, resume=False, fingerprint=FINGERPRINT, kind="eval run", ids=("q1", "q2")) -> RunStore:
    return RunStore.open(out, kind, fingerprint, list(ids), resume)


def record(query_id: str) -> dict:
    return {"query_id": query_id, "latency_s": 0.5}


def test_each_query_is_on_disk_as_it_finishes(tmp_path):
    store = open_store(tmp_path / "out")
    kept = store.add(Prediction("q1", 3, 9, {3: (1.23456, 2.0, 3.0, 4.0)}, target_id=2), record("q1"))
    assert kept.boxes[3][0] == 1.235  # as predictions.json has it
    on_disk = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert on_disk == {"q1": {"sted": [3, 9], "boxes": {"3": [1.235, 2.0, 3.0, 4.0]}, "target_id": 2}}
    journal = lines(tmp_path / "out" / "records.jsonl")
    assert journal == [{"query_id": "q1", "latency_s": 0.5, "prediction": on_disk["q1"]}]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "running"
    # a second writer is refused while the first holds the folder
    with pytest.raises(EvalError, match="another run is writing to"):
        open_store(tmp_path / "out", resume=True)
    store.stop("failed", "boom")
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "failed"


def test_mixing_runs_is_refused(tmp_path):
    out = tmp_path / "out"
    store = open_store(out)
    store.add(Prediction.failed("q1"), record("q1"))
    store.stop("interrupted")
    with pytest.raises(EvalError, match=re.escape("holds the results of an earlier run (interrupted, 1 of 2 queries")):
        open_store(out)
    other = {**FINGERPRINT, "parameters": {"grounding_node": {"model": "other", "num_frames": 8}}}
    with pytest.raises(EvalError, match=r"other settings \(parameters.grounding_node.model\)"):
        open_store(out, resume=True, fingerprint=other)
    with pytest.raises(EvalError, match="holds a `eval run` run, not `eval replay`"):
        open_store(out, resume=True, kind="eval replay")
    with pytest.raises(EvalError, match="queries this run does not have"):
        open_store(out, resume=True, ids=("q2",))
    # results of a run without a manifest (an older stvg-ros) are never resumed nor overwritten
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "predictions.json").write_text("{}")
    for resume in (False, True):
        with pytest.raises(EvalError, match=re.escape("holds results (predictions.json) of a run without run.json")):
            open_store(legacy, resume=resume)
    # --resume on a folder that does not exist yet starts a new run
    open_store(tmp_path / "new", resume=True).stop("interrupted")
    assert json.loads((tmp_path / "new" / "run.json").read_text())["status"] == "interrupted"
    # a folder whose run ended before any result (a model that did not load) starts over
    empty = open_store(tmp_path / "empty")
    empty.stop("failed", "cannot load a model")
    open_store(tmp_path / "empty", fingerprint=other).stop("interrupted")


def test_resume_keeps_finished_queries_and_drops_a_cut_short_line(tmp_path):
    out = tmp_path / "out"
    store = open_store(out)
    store.add(Prediction("q1", 0, 4), record("q1"))
    store.stop("interrupted")
    with (out / "records.jsonl").open("a") as journal:
        journal.write('{"query_id": "q2", "predic')  # a write cut short by SIGKILL
    with (out / "tracks.jsonl").open("w") as tracks:
        for video, frame in (("v1", 1), ("v2", 1)):
            tracks.write(json.dumps({"video_id": video, "frame": frame, "ids": [1], "boxes": [[0, 0, 1, 1]]}) + "\n")
    manifest = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**manifest, "videos_done": ["v1"]}))
    resumed = open_store(out, resume=True)
    assert resumed.done("q1") and not resumed.done("q2") and resumed.resumed == 1
    assert [r["query_id"] for r in lines(out / "records.jsonl")] == ["q1"]
    # v2 is played again: its old tracks go, v1's stay (and feed the perception ceiling)
    assert [r["video_id"] for r in lines(out / "tracks.jsonl")] == ["v1"]
    assert resumed.load_tracks(lambda video, frame: True).video_ids() == ["v1"]
    resumed.add(Prediction("q2", 1, 2), record("q2"))
    resumed.complete({"q1": {"tIoU": 0.5, "vIoU": 0.25}, "q2": {"tIoU": 0.0, "vIoU": 0.0}})
    assert [(r["query_id"], r["tIoU"]) for r in lines(out / "records.jsonl")] == [("q1", 0.5), ("q2", 0.0)]
    assert set(json.loads((out / "predictions.json").read_text())) == {"q1", "q2"}
    # a damaged line inside the journal is not silently skipped
    (out / "records.jsonl").write_text('not json\n{"query_id": "q2", "prediction": {"sted": [0, 0]}}\n')
    with pytest.raises(EvalError, match="line 1 is not a run record"):
        open_store(out, resume=True)


def test_a_signal_while_a_query_is_written_waits_for_the_write(tmp_path, monkeypatch):
    """SIGINT raises RunInterrupted (exit code 130), but never between a query's journal line and
    predictions.json: both are written first."""
    store = open_store(tmp_path / "out")
    real_fsync = os.fsync

    def fsync_then_signal(fd):
        real_fsync(fd)
        os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGTERM)
    with store.signals():
        monkeypatch.setattr(os, "fsync", fsync_then_signal)
        with pytest.raises(RunInterrupted) as caught:
            store.add(Prediction("q1", 0, 4), record("q1"))
        monkeypatch.setattr(os, "fsync", real_fsync)
        assert caught.value.exit_code == 130 and caught.value.done == 1
        assert set(json.loads((tmp_path / "out" / "predictions.json").read_text())) == {"q1"}
        assert [r["query_id"] for r in lines(tmp_path / "out" / "records.jsonl")] == ["q1"]
        with pytest.raises(RunInterrupted) as caught:
            signal.raise_signal(signal.SIGTERM)  # outside a write: at once
        assert caught.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers are put back
    store.stop("interrupted")
