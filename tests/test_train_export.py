"""`stvg-train export` (training area, issue 6): LoRA merge -> GGUF + mmproj (llama.cpp's converter) ->
Q8_0 / Q4_K_M, detector -> ONNX fp32 + static int8, manifests with sha256; every file loaded in its backend.

Everything is written to tmp folders, never to the checkout's models/.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from stvg_ros.core import model_registry
from stvg_ros.core.paths import PACKAGED_MANIFESTS, cache_dir
from stvg_train.export import ExportOptions, export, merged_model_dir, sha256_of


@pytest.fixture(scope="module")
def lora_adapter(tmp_path_factory) -> tuple[Path, Path]:
    """(base model folder, LoRA adapter folder) with NON-zero adapter weights, so merging changes the model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from stvg_ros.synthetic.tiny_vlm import build_tiny_qwen25vl

    base = build_tiny_qwen25vl(cache_dir("test-artifacts", "train-tiny-qwen25vl"))
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  exclude_modules=r".*visual.*", task_type="CAUSAL_LM"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    adapter = tmp_path_factory.mktemp("lora") / "adapter"
    peft_model.save_pretrained(adapter)
    AutoProcessor.from_pretrained(base).save_pretrained(adapter)
    return base, adapter


def test_lora_merge_adds_the_adapter_to_the_base_weights(lora_adapter, tmp_path):
    from safetensors.torch import load_file

    base, adapter = lora_adapter
    merged = merged_model_dir(adapter, tmp_path)
    assert (merged / "config.json").is_file() and (merged / "tokenizer.json").is_file()
    before, after = load_file(base / "model.safetensors"), load_file(merged / "model.safetensors")
    assert not any("lora_" in k for k in after)
    key = next(k for k in before if k.endswith("layers.0.self_attn.q_proj.weight"))
    # W' = W + (alpha / r) * B @ A
    lora = load_file(adapter / "adapter_model.safetensors")
    a = next(v for k, v in lora.items() if "layers.0.self_attn.q_proj.lora_A" in k)
    b = next(v for k, v in lora.items() if "layers.0.self_attn.q_proj.lora_B" in k)
    assert torch.allclose(after[key], before[key] + 2.0 * b @ a, atol=1e-5)
    vision = next(k for k in before if "visual" in k and k.endswith("qkv.weight"))
    assert torch.equal(after[vision], before[vision])  # adapters stay off the vision tower
    # A full model folder is used as it is; something else is a clear error.
    assert merged_model_dir(base, tmp_path) == base
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"neither config\.json"):
        merged_model_dir(empty, tmp_path)


def test_export_writes_quantized_gguf_detector_int8_and_manifests_that_load(lora_adapter, tiny_detector,
                                                                             synth_dataset, tmp_path):
    models_before = sorted(p.name for p in PACKAGED_MANIFESTS.iterdir())
    _, adapter = lora_adapter
    out = tmp_path / "models"
    result = export(ExportOptions(model_dir=str(adapter), out_dir=str(out), name="stvg-r1-test",
                                  quants=["Q8_0", "Q4_K_M"], detector=str(tiny_detector["pt"]),
                                  calibration_data=str(synth_dataset.root / "videos"), calibration_frames=8,
                                  threads=1))
    files = result["files"]
    roles = sorted((f["role"], f["quantization"]) for f in files)
    assert roles == [("detector", "FP32"), ("detector", "INT8"), ("mmproj", "F16"), ("mmproj", "F16"),
                     ("model", "Q4_K_M"), ("model", "Q8_0")]
    # every exported file loaded in its backend (llama.cpp for GGUF + mmproj, ONNX Runtime for the detector)
    assert all(f["loaded"] is True for f in files), json.dumps(files, indent=1)
    assert all("generated" in f for f in files if f["role"] == "model")
    assert all(f["calibration_frames"] == 8 for f in files if f["role"] == "detector")
    # manifests: one per quantization + the detector, sha256 of every file, readable by the model registry
    assert sorted(Path(m).name for m in result["manifests"]) == [
        "stvg-r1-test-detector.yaml", "stvg-r1-test-q4_k_m.yaml", "stvg-r1-test-q8_0.yaml"]
    for path in result["manifests"]:
        manifest = yaml.safe_load(Path(path).read_text())
        for entry in manifest["files"]:
            file = out / manifest["name"] / entry["name"]
            assert entry["sha256"] == sha256_of(file) and entry["size"] == file.stat().st_size
    found = model_registry.load_manifests([out])
    assert {"stvg-r1-test-q8_0", "stvg-r1-test-q4_k_m", "stvg-r1-test-detector"} <= set(found)
    q8 = yaml.safe_load((out / "stvg-r1-test-q8_0.yaml").read_text())
    assert q8["kind"] == "vlm" and q8["quantization"] == "q8_0"
    assert {f["format"] for f in q8["files"]} == {"gguf", "mmproj"}
    # the Q4_K_M text model is smaller than the Q8_0 one; the mmproj is stored once (hard link or copy)
    size = {f["quantization"]: f["bytes"] for f in files if f["role"] == "model"}
    assert size["Q4_K_M"] < size["Q8_0"]
    assert not list(out.glob(".*-work"))  # scratch folder removed
    assert sorted(p.name for p in PACKAGED_MANIFESTS.iterdir()) == models_before


def test_export_needs_calibration_frames_for_the_detector(lora_adapter, tiny_detector, tmp_path):
    base, _ = lora_adapter
    with pytest.raises(ValueError, match="calibration-data"):
        export(ExportOptions(model_dir=str(base), out_dir=str(tmp_path), quants=["Q8_0"],
                             detector=str(tiny_detector["pt"]), verify=False))


def test_rewriting_an_existing_manifest_keeps_what_the_export_cannot_know(tmp_path):
    """Exporting stvg-r1-7b-q4_k_m into an empty models folder starts from the package's manifest of that
    name: its files and sha256 are replaced, the released checkpoint, license and how-to-get fields kept;
    the converter field names the converter's version."""
    from stvg_ros.grounding.gguf import LLAMA_CPP_PYTHON_VERSION
    from stvg_train.export import _manifest_file, _write_manifest

    label = "stvg-r1-7b-q4_k_m"
    assert not (tmp_path / f"{label}.yaml").exists()
    model = tmp_path / label / f"{label}.gguf"
    model.parent.mkdir()
    model.write_bytes(b"GGUF model")
    converter = f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} vendor/llama.cpp/convert_hf_to_gguf.py"
    _write_manifest(tmp_path, {"name": label, "kind": "vlm", "quantization": "q4_k_m", "converter": converter,
                               "files": [_manifest_file(model, "gguf", "stvg-train export --quant q4_k_m")]})  # fmt: skip
    manifest = model_registry.load_manifests([tmp_path])[label]
    assert manifest.extra["checkpoint"] == {"hf_repo": "XiaowenZhang/stvg-r1-model-7b"}
    assert manifest.extra["converter"] == converter and manifest.license == "Apache-2.0"
    assert [(f.name, f.sha256) for f in manifest.files] == [(model.name, sha256_of(model))]
    (tmp_path / "other.yaml").write_text(": not yaml [")
    _write_manifest(tmp_path, {"name": "other", "kind": "vlm", "files": []})  # unreadable: replaced
    assert yaml.safe_load((tmp_path / "other.yaml").read_text()) == {"name": "other", "kind": "vlm", "files": []}


def test_the_trained_input_format_reaches_the_manifest_fields(tmp_path):
    """issue 16: the export records how clips must reach the model (images + frame labels, frames, pixels)."""
    from transformers import AutoProcessor

    from stvg_ros.synthetic.tiny_vlm import build_tiny_qwen25vl
    from stvg_train.export import trained_input_format
    from stvg_train.grpo import INPUT_FORMAT_FILE, set_pixel_budget, training_input_format

    base = build_tiny_qwen25vl(cache_dir("test-artifacts", "train-tiny-qwen25vl"))
    processor = AutoProcessor.from_pretrained(base)
    set_pixel_budget(processor, max_pixels=112 * 112, min_pixels=56 * 56)
    trained = training_input_format(processor, [4, 4, 8])
    assert trained == {"representation": "images", "frame_label": "Frame at {seconds:.2f} s:",
                       "frames_per_clip": [4, 8], "max_pixels_per_frame": 112 * 112, "min_pixels_per_frame": 56 * 56,
                       "id_numbering": "track"}
    assert training_input_format(processor, [4], "clip")["id_numbering"] == "clip"  # prep --id-numbering clip
    model_dir = tmp_path / "run"
    processor.save_pretrained(model_dir)
    unknown = trained_input_format(model_dir)  # no record: a released checkpoint, say
    assert unknown["representation"] == "unknown" and unknown["max_pixels_per_frame"] == 112 * 112
    (model_dir / INPUT_FORMAT_FILE).write_text(json.dumps(trained))
    assert trained_input_format(model_dir) == trained
