"""Bad input at the command line and in model files: one clear line naming the input and what to do,
exit code 2 for usage errors, no traceback, nothing half-written.

The matrix is grouped by surface: `stvg-ros up` parameters, `stvg-ros ground` options and inputs,
`stvg-ros models`, `stvg-ros synth`, model files (downloads, pickled checkpoints), the entry point's
last line of defence. HTTP servers that misbehave: test_grounding_http_faults.py; prediction and
annotation files: test_eval_*.py.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from stvg_ros.cli.main import error_line, main
from stvg_ros.core import model_registry as registry


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `stvg-ros ARGV` in this process."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_clear_line(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip() and " INFO " not in line]
    assert len(lines) == 1, f"expected one error line, got: {err!r}"
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


# --------------------------------------------------------------------------------------------
# stvg-ros up: parameters are checked before anything starts


@pytest.mark.parametrize(
    ("params_text", "args", "expected"),
    [
        (None, ["--params", "/no/such/params.yaml"], ["cannot read parameters file /no/such/params.yaml"]),
        ("- a\n- b\n", ["--params", "{file}"], ["must map node names"]),
        ("grounding_node: {ros__parameters: [1, 2]}\n", ["--params", "{file}"], ["ros__parameters must map"]),
        ("grounding_node: {ros__parameters: {num_frame: 8}}\n", ["--params", "{file}"], ["grounding_node", "num_frame"]),
        ("x: [unclosed\n", ["--params", "{file}"], ["cannot read parameters file"]),
        (None, ["-p", "grounding_node.num_frames=8"], ["expected NODE:NAME=VALUE"]),
        (None, ["-p", "grounding_node:num_frames"], ["expected NODE:NAME=VALUE"]),
        (None, ["-p", "ground_node:num_frames=8"], ["no node 'ground_node'", "grounding_node"]),
        (None, ["-p", "grounding_node:num_frame=8"], ["unknown GroundingParams parameters", "num_frame"]),
        (None, ["-p", "grounding_node:num_frames=eight"], ["'num_frames'", "must be int"]),
        (None, ["-p", "grounding_node:num_frames=0"], ["num_frames must be >= 1"]),
        (None, ["-p", "grounding_node:max_new_tokens=0"], ["max_new_tokens must be >= 1"]),
        (None, ["-p", "grounding_node:backend=gpt"], ["'backend'", "is not one of"]),
        (None, ["-p", "tracker_node:threads=1.5"], ["'threads'", "must be int"]),
        (None, ["-p", "tracker_node:allow_pickle=maybe"], ["'allow_pickle'", "must be bool"]),
        (None, ["-p", "tracker_node:precision=int4"], ["'precision'", "is not one of"]),
        (None, ["-p", "tracker_node:conf=5.0"], ["tracker_node", "conf must be in [0.0, 1.0], got 5.0"]),
        (None, ["--cameras", "front=/f/image_raw,front=/r/image_raw"], ["cameras: 'front' is given twice"]),
        (None, ["--cameras", "front"], ["expected NAME=TOPIC"]),
    ],
)
def test_up_refuses_bad_parameters_before_starting(capsys, tmp_path, params_text, args, expected):
    if params_text is not None:
        (tmp_path / "params.yaml").write_text(params_text)
    argv = [a.replace("{file}", str(tmp_path / "params.yaml")) for a in args]
    code, out, err = run_cli(capsys, "up", *argv)
    assert code == 2 and out == ""
    assert_one_clear_line(err, "stvg-ros up: error:", *expected)


# --------------------------------------------------------------------------------------------
# stvg-ros ground: options are checked before the model loads


@pytest.fixture
def video(synth_dataset) -> str:
    return str(synth_dataset.videos[0])


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--num-frames", "0"], "--num-frames must be >= 1"),
        (["--window", "-1"], "--window must be >= 0"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
        (["--n-ctx", "16"], "--n-ctx must be >= 512"),
        (["--sample-fps", "0"], "--sample-fps must be > 0"),
        (["--timeout", "0"], "--timeout must be > 0"),
        (["--max-frames", "0"], "--max-frames must be >= 1"),
        (["--detect-every", "-2"], "--detect-every must be >= 1"),
    ],
)
def test_ground_checks_options_before_loading_a_model(capsys, video, options, expected):
    # The model does not exist: an option error must come first, without waiting for any loading.
    code, out, err = run_cli(capsys, "ground", video, "the red circle", "--model", "/no/model.gguf", *options)
    assert code == 2 and out == ""
    assert_one_clear_line(err, "stvg-ros ground: error:", expected)
    assert "model" not in err.split(expected)[0].replace("stvg-ros ground: error:", "")


@pytest.mark.parametrize(
    ("query", "video_name", "expected"),
    [
        ("", None, "bad query"),
        ("   ", None, "bad query"),
        ("x" * 5000, None, "bad query"),
        ("the red circle", "missing.mp4", "missing.mp4"),
        ("the red circle", "corrupt.mp4", "corrupt.mp4"),
        ("the red circle", "empty.mp4", "empty.mp4"),
    ],
)
def test_ground_bad_query_or_video_is_one_line(capsys, tmp_path, video, query, video_name, expected):
    (tmp_path / "corrupt.mp4").write_bytes(os.urandom(4096))
    (tmp_path / "empty.mp4").write_bytes(b"")
    path = str(tmp_path / video_name) if video_name else video
    code, out, err = run_cli(capsys, "ground", path, query, "--model", "/no/model.gguf")
    assert code == 2 and out == ""
    assert_one_clear_line(err, "stvg-ros ground: error:", expected)


def test_ground_missing_model_is_one_line_and_json_says_so(capsys, video):
    code, out, err = run_cli(capsys, "ground", video, "the red circle", "--model", "/no/model.gguf", "--json")
    assert code == 2
    assert_one_clear_line(err, "cannot load the model", "/no/model.gguf")
    assert '"success": false' in out and "/no/model.gguf" in out


def test_ground_with_a_context_too_small_for_the_clip_says_what_to_change(capsys, video, tiny_vlm, tiny_detector):
    code, out, err = run_cli(
        capsys, "ground", video, "the red circle", "--model", str(tiny_vlm.gguf_q8_0), "--mmproj",
        str(tiny_vlm.mmproj_f32), "--detector", str(tiny_detector["onnx-int8"]), "--n-gpu-layers", "0",
        "--n-threads", "1", "--max-frames", "20", "--n-ctx", "600",
    )  # fmt: skip
    assert code == 1 and "Traceback" not in err
    assert "tokens" in out and "the context holds 600" in out and "raise n_ctx" in out
    assert "could not broadcast" not in out


# --------------------------------------------------------------------------------------------
# stvg-ros models


@pytest.fixture
def manifests(tmp_path, monkeypatch) -> Path:
    """A manifest folder of this test's own: a hosted file on a port nothing listens on."""
    folder, cache = tmp_path / "manifests", tmp_path / "cache"
    folder.mkdir()
    (folder / "hosted.yaml").write_text(
        "name: hosted-test-model\nkind: detector\nfiles:\n"
        "  - name: hosted.bin\n    source: {url: 'http://127.0.0.1:9/hosted.bin'}\n"
    )
    monkeypatch.setenv("STVG_MODELS_PATH", str(folder))
    monkeypatch.setenv("STVG_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "no-such-model"])
def test_models_path_takes_a_model_name_never_echoes_a_path(capsys, manifests, name):
    code, out, err = run_cli(capsys, "models", "path", name)
    assert code == 2 and out == ""
    assert_one_clear_line(err, f"no model named {name!r}", "models list")


def test_a_failed_download_leaves_no_file_behind(manifests, monkeypatch):
    for name in registry.OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(registry.ModelFileMissing, match=r"hosted\.bin.*download failed"):
        registry.resolve("hosted-test-model", download=True)
    folder = manifests / "models" / "hosted-test-model"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_yolo_offline_does_not_disable_our_downloads_and_offline_says_which_variable(manifests, monkeypatch):
    for name in registry.OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("YOLO_OFFLINE", "1")  # what scripts/env.sh sets for ultralytics
    assert not registry.is_offline()
    monkeypatch.setenv("STVG_OFFLINE", "1")
    with pytest.raises(registry.ModelFileMissing, match=r"downloads are disabled \(STVG_OFFLINE=1"):
        registry.resolve("hosted-test-model", download=True)


def test_models_pull_of_an_unknown_model_is_one_line(capsys, manifests):
    code, out, err = run_cli(capsys, "models", "pull", "no-such-model")
    assert code == 1 and out == ""
    assert_one_clear_line(err, "no model manifest named 'no-such-model'")


# --------------------------------------------------------------------------------------------
# stvg-ros synth: a dataset is replaced whole or not at all

SMALL = ["--seed", "1", "--videos", "1", "--seconds", "4", "--fps", "5", "--no-bags"]


def test_synth_refuses_to_mix_with_an_existing_dataset_and_overwrite_replaces_it(capsys, tmp_path):
    assert run_cli(capsys, "synth", "--out", str(tmp_path), *SMALL)[0] == 0
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    stray = tmp_path / "videos" / "old_video.mp4"
    stray.write_bytes(b"from another dataset")

    code, out, err = run_cli(capsys, "synth", "--out", str(tmp_path), *SMALL[:-1])  # with bags this time
    assert code == 2 and out == ""
    assert_one_clear_line(err, str(tmp_path), "already holds a dataset", "--overwrite")
    assert all(p.stat().st_mtime_ns == t for p, t in before.items()), "a refused run changed files"

    assert run_cli(capsys, "synth", "--out", str(tmp_path), *SMALL, "--overwrite")[0] == 0
    assert not stray.exists(), "--overwrite kept a video of the old dataset"
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["synth_1_000.mp4"]


# --------------------------------------------------------------------------------------------
# model files: a pickled checkpoint given as a path is not loaded without an opt-in


def test_a_pt_detector_path_is_refused_unless_allowed(tiny_detector, tmp_path):
    from stvg_ros.perception.detector import DetectorError
    from stvg_ros.perception.pipeline import PerceptionConfig, model_file

    user_file = tmp_path / "downloaded.pt"
    user_file.write_bytes(Path(tiny_detector["pt"]).read_bytes())
    with pytest.raises(DetectorError, match=r"pickled PyTorch checkpoint.*ONNX.*allow_pickle"):
        model_file(PerceptionConfig(model=str(user_file), backend="ultralytics"))
    allowed = PerceptionConfig(model=str(user_file), backend="ultralytics", allow_pickle=True)
    assert model_file(allowed) == user_file
    # The manifest's own checkpoint (built here) needs no opt-in.
    assert model_file(PerceptionConfig(model="yolo-synth-tiny", backend="ultralytics")).suffix == ".pt"


# --------------------------------------------------------------------------------------------
# the entry point's last line of defence


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/data/run/predictions.json"),
         "No space left on device (/data/run/predictions.json)"),
        (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/out"), "Read-only file system (/mnt/ro/out)"),
        (PermissionError(errno.EACCES, "Permission denied", "/root/x"), "Permission denied (/root/x)"),
        (ValueError("bad value\nsecond line"), "bad value second line"),
        (TypeError("unsupported operand"), "unexpected TypeError: unsupported operand (run with -v"),
    ],
)  # fmt: skip
def test_errors_reaching_the_entry_point_become_one_line(exc, expected):
    line = error_line(exc)
    assert line == expected or line.startswith(expected)
    assert "\n" not in line


def test_the_entry_point_prints_one_line_for_an_unexpected_error(capsys, monkeypatch):
    import stvg_ros.cli.models as models_cli

    def broken(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/full/disk/file")

    monkeypatch.setattr(models_cli, "run", broken)
    code, out, err = run_cli(capsys, "models", "list")
    assert code == 1 and out == ""
    assert_one_clear_line(err, "stvg-ros models: error: No space left on device (/full/disk/file)")


# --------------------------------------------------------------------------------------------
# replay sidecar files: every malformed field is one line naming the file, the query and the field


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"queries": 5}, "field 'queries' must be a list"),
        ({"queries": [{"ask_at_frame": 3}]}, "query 0 needs a 'query_id'"),
        ({"queries": [{"query_id": "q", "ask_at_frame": "ten"}]}, "query 'q': field 'ask_at_frame'"),
        ({"queries": [{"query_id": "q", "ask_at_frame": -1}]}, "query 'q': field 'ask_at_frame'"),
        ({"queries": [{"query_id": "q", "ask_at_frame": 2.5}]}, "query 'q': field 'ask_at_frame'"),
        ({"queries": [{"query_id": "q", "window_s": "long"}]}, "query 'q': field 'window_s'"),
        ({"queries": [{"query_id": "q", "window_s": float("nan")}]}, "query 'q': field 'window_s'"),
        ({"queries": [{"query_id": "q", "window_s": -3}]}, "query 'q': field 'window_s'"),
        ({"topic": 7}, "field 'topic' must be a topic name"),
        ({"video_id": None}, "missing field 'video_id'"),
        ({"bag": 3}, "missing field 'bag'"),
    ],
)
def test_a_malformed_sidecar_field_is_one_line(capsys, tmp_path, changes, expected):
    import json

    sidecar = {"video_id": "v", "bag": "bag", "annotations": "annotations.json", "queries": [], **changes}
    path = tmp_path / "sidecar.json"
    path.write_text(json.dumps(sidecar))
    code, out, err = run_cli(capsys, "eval", "replay", "--sidecar", str(path), "--out", str(tmp_path / "out"))
    assert code == 2 and out == ""
    assert_one_clear_line(err, "stvg-ros eval: error:", str(path), expected)


# --------------------------------------------------------------------------------------------
# output folders that cannot be written


def test_a_disk_full_mid_run_keeps_a_scoreable_result_and_says_how_to_resume(tmp_path, monkeypatch):
    import json

    from stvg_ros.evaluation.errors import EvalError
    from stvg_ros.evaluation.predictions import Prediction, load_predictions
    from stvg_ros.evaluation.run_store import RunStore

    out = tmp_path / "out"
    store = RunStore.open(out, "eval run", {"inputs": "x"}, ["q1", "q2"], False)
    real_fsync = os.fsync

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    full = pytest.raises(EvalError, match=r"No space left on device.*1 of 2 queries.*--resume")
    with full, store.recording((EvalError, OSError)):
        store.add(Prediction("q1", 3, 9, {3: (1.0, 2.0, 3.0, 4.0)}, target_id=2), {"query_id": "q1"})
        monkeypatch.setattr(os, "fsync", disk_full)
        store.add(Prediction("q2", 1, 4, {}, target_id=1), {"query_id": "q2"})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert set(load_predictions(out / "predictions.json")) == {"q1"}  # valid JSON, the finished query kept
    # the manifest could not be marked failed (the disk is full) but is whole, and no temporary is left
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    assert not list(out.glob("*.tmp"))
    resumed = RunStore.open(out, "eval run", {"inputs": "x"}, ["q1", "q2"], True)  # the lock was released
    assert set(resumed.predictions) >= {"q1"}


@pytest.mark.parametrize("where", ["under_a_file", "dev_full"])
def test_eval_run_into_an_unwritable_folder_is_one_line(capsys, tmp_path, synth_dataset, where):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "out" if where == "under_a_file" else Path("/proc/version/out")
    code, stdout, err = run_cli(capsys, "eval", "run", "--videos", str(synth_dataset.root / "videos"),
                                "--annotations", str(synth_dataset.root), "--out", str(out), "--limit", "1")  # fmt: skip
    assert code == 2 and stdout == ""
    assert_one_clear_line(err, "stvg-ros eval: error:", str(out))


def test_demo_into_an_unwritable_folder_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, out, err = run_cli(capsys, "demo", "--out", str(blocker / "demo"))
    assert code == 1 and out == ""
    assert_one_clear_line(err, "stvg-ros demo: error:", str(blocker / "demo"))
