"""VLM manifests in models/: the tiny model is built by `stvg-ros models pull` (no network) and loads
by name in both local backends; the 7B GGUF manifests describe what `stvg-train export` produces and
say how to get it when it is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from stvg_ros.core import model_registry as registry
from stvg_ros.core.answer import parse_answer
from stvg_ros.core.prompt import build_question
from stvg_ros.grounding import gguf
from stvg_ros.grounding.backends import ModelLoadError, make_backend, resolve_model_files


def models_cli(*args: str, cache, timeout: float = 300) -> subprocess.CompletedProcess:
    """`stvg-ros models ...` with an empty cache (the converter stays the one setup unpacked)."""
    env = {**os.environ, "STVG_CACHE": str(cache), "STVG_LLAMA_CPP_SRC": str(gguf.find_converter().parents[2])}
    return subprocess.run([sys.executable, "-m", "stvg_ros.cli.main", "models", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


@pytest.mark.parametrize("quant", ["q4_k_m", "q8_0"])
def test_7b_manifests_describe_the_exported_gguf_and_its_mmproj(quant):
    manifest = registry.get_manifest(f"stvg-r1-7b-{quant}")
    assert manifest.kind == "vlm" and manifest.architecture == "qwen2_5_vl" and manifest.quantization == quant
    model, mmproj = manifest.file("gguf"), manifest.file("mmproj")
    assert (model.name, mmproj.name) == gguf.output_names("stvg-r1-7b", quant)  # what the export writes
    assert manifest.extra["checkpoint"] == {"hf_repo": "XiaowenZhang/stvg-r1-model-7b"}
    assert manifest.extra["converter"].startswith(f"llama-cpp-python {gguf.LLAMA_CPP_PYTHON_VERSION} ")
    # exactly the names that `convert_to_gguf(..., quant, name="stvg-r1-7b")` writes
    for f in (model, mmproj):
        assert f.source_kind == "export" and f"--quant {quant} --name stvg-r1-7b" in f.source["export"]


def test_missing_7b_files_are_listed_and_verified_as_missing(tmp_path):
    listing = models_cli("list", "--json", cache=tmp_path, timeout=60)
    assert listing.returncode == 0, listing.stderr
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    row = rows["stvg-r1-7b-q4_k_m"]
    assert row["kind"] == "vlm" and [f["format"] for f in row["files"]] == ["gguf", "mmproj"]
    assert not any(f["present"] for f in row["files"])
    verify = models_cli("verify", "stvg-r1-7b-q4_k_m", "--json", cache=tmp_path, timeout=60)
    checks = json.loads(verify.stdout)["stvg-r1-7b-q4_k_m"]
    assert verify.returncode == 1 and {c["status"] for c in checks} == {"missing"}
    assert all("stvg-train export" in c["message"] for c in checks)
    pull = models_cli("pull", "stvg-r1-7b-q4_k_m", cache=tmp_path, timeout=60)
    assert pull.returncode == 1 and "not on this machine" in pull.stderr and "stvg-train export" in pull.stderr


def test_pull_builds_the_tiny_model_that_loads_by_name(tmp_path, monkeypatch):
    pull = models_cli("pull", "qwen25vl-tiny-random", "--json", cache=tmp_path)
    assert pull.returncode == 0, pull.stderr[-3000:]
    files = json.loads(pull.stdout)["qwen25vl-tiny-random"]
    assert set(files) == {f.name for f in registry.get_manifest("qwen25vl-tiny-random").files}
    verify = models_cli("verify", "qwen25vl-tiny-random", "--json", cache=tmp_path, timeout=60)
    assert verify.returncode == 0 and {c["status"] for c in json.loads(verify.stdout)["qwen25vl-tiny-random"]} == {
        "unpinned"}

    monkeypatch.setenv("STVG_LLAMA_CPP_SRC", str(gguf.find_converter().parents[2]))
    monkeypatch.setenv("STVG_CACHE", str(tmp_path))
    resolved = resolve_model_files(model="qwen25vl-tiny-random", backend="llama_cpp")
    assert gguf.gguf_summary(resolved["model"])["file_type"] == gguf.QUANTS["q8_0"]
    assert gguf.gguf_summary(resolved["mmproj"])["projection_dim"] == 64
    frames = [np.random.default_rng(3).integers(0, 255, (196, 252, 3), dtype=np.uint8)] * 2
    question = build_question("the box")
    for kind, options in (("llama_cpp", {"n_threads": 1, "n_ctx": 2048}), ("transformers", {})):
        backend = make_backend(kind, model="qwen25vl-tiny-random", **options)
        try:
            result = backend.generate(frames, [0.0, 1.0], question, reasoning=False, max_new_tokens=48,
                                      track_ids=[3], duration_s=1.0)
        finally:
            backend.close()
        assert parse_answer(result.text, strict=True, duration=1.0, track_ids=[3]).ok, (kind, result.text)


def test_a_detector_is_not_a_vision_language_model():
    with pytest.raises(ModelLoadError, match="is a detector, not a vision-language model"):
        resolve_model_files(model="yolo-synth-tiny", backend="llama_cpp")


@pytest.mark.parametrize(
    ("record", "explicit", "expected"),
    [
        (None, None, True),  # nothing recorded (a released checkpoint): native video, METHOD.md §4
        ({"representation": "images", "frame_label": "Frame at {seconds:.2f} s:"}, None, False),  # stvg-train grpo
        ({"representation": "video"}, None, True),
        ({"representation": "unknown"}, None, True),
        ({"representation": "images"}, True, True),  # an explicit choice wins
    ],
)
def test_transformers_backend_feeds_clips_as_the_model_was_trained(tiny_vlm, tmp_path, record, explicit, expected):
    from stvg_ros.grounding.backends.models import INPUT_FORMAT_FILE, recorded_input_format

    folder = tmp_path / "trained"
    folder.mkdir()
    for item in tiny_vlm.hf_dir.iterdir():
        (folder / item.name).symlink_to(item.resolve())
    if record is not None:
        (folder / INPUT_FORMAT_FILE).write_text(json.dumps(record))
    assert recorded_input_format(str(folder), folder) == (record or {})
    options = {} if explicit is None else {"use_video": explicit}
    backend = make_backend("transformers", model=str(folder), load=False, **options)
    assert backend.use_video is expected


def test_every_path_samples_frames_and_pixels_as_the_model_was_trained(tiny_vlm, tmp_path, monkeypatch):
    """A manifest's recorded input format reaches the backend (llama.cpp here; the transformers and http
    backends get it the same way in make_backend) and sets the pipeline's frame count and pixel budget,
    also after a live change of num_frames; nothing recorded leaves the configured values."""
    import shutil

    from stvg_ros.grounding.pipeline import GroundingConfig, GroundingPipeline, with_recorded_input_format

    manifests = tmp_path / "manifests"
    (manifests / "trained-q8_0").mkdir(parents=True)
    shutil.copy(tiny_vlm.gguf_q8_0, manifests / "trained-q8_0" / "trained-q8_0.gguf")
    shutil.copy(tiny_vlm.mmproj_f32, manifests / "trained-q8_0" / "mmproj-trained.gguf")
    record = {"representation": "images", "frames_per_clip": [6], "max_pixels_per_frame": 112 * 112,
              "min_pixels_per_frame": 28 * 28}  # fmt: skip
    (manifests / "trained-q8_0.yaml").write_text(json.dumps({
        "name": "trained-q8_0", "kind": "vlm", "input_format": record,
        "files": [{"name": "trained-q8_0.gguf", "format": "gguf"},
                  {"name": "mmproj-trained.gguf", "format": "mmproj", "matches": "trained-q8_0.gguf"}]}))  # fmt: skip
    monkeypatch.setenv("STVG_MODELS_PATH", str(manifests))
    backend = make_backend("llama_cpp", model="trained-q8_0", load=False)
    assert backend.input_format == record
    pipeline = GroundingPipeline(backend, GroundingConfig(num_frames=16))
    assert (pipeline.config.num_frames, pipeline.config.max_pixels, pipeline.config.min_pixels) == (6, 12544, 784)
    pipeline.config = GroundingConfig(num_frames=8)  # a live parameter change: the record still wins
    assert pipeline.config.num_frames == 6
    plain = GroundingPipeline(make_backend("llama_cpp", model=str(tiny_vlm.gguf_q8_0), mmproj=str(tiny_vlm.mmproj_f32),
                                           load=False), GroundingConfig(num_frames=8))  # fmt: skip
    assert plain.config.num_frames == 8 and plain.backend.input_format == {}
    config, notes = with_recorded_input_format(GroundingConfig(num_frames=6), {"frames_per_clip": [4, 6]})
    assert config.num_frames == 6 and notes == []  # the longest clip it saw; already so


def test_an_unreadable_input_format_record_is_a_clear_load_error(tiny_vlm, tmp_path):
    from stvg_ros.grounding.backends.models import INPUT_FORMAT_FILE

    folder = tmp_path / "trained"
    folder.mkdir()
    for item in tiny_vlm.hf_dir.iterdir():
        (folder / item.name).symlink_to(item.resolve())
    (folder / INPUT_FORMAT_FILE).write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"stvg_input_format\.json is not a readable input-format record"):
        make_backend("transformers", model=str(folder), load=False)
