"""`stvg-train export`: trained model -> files a robot runs, with a manifest.

1. A LoRA adapter folder is merged into its base model (peft `merge_and_unload`); a full model
   folder is used as it is. Either way the result is a safetensors Hugging Face folder.
2. llama.cpp's own converter (`stvg_ros.grounding.gguf`, from the pinned llama-cpp-python sdist)
   writes the text model as f16 GGUF and the vision tower as an mmproj GGUF; the text model is then
   quantized (Q8_0, Q4_K_M by default) with llama.cpp.
3. Optionally the detector is exported to ONNX and statically quantized to int8 with calibration
   frames from the data (`stvg_ros.perception.export`).
4. A manifest with each file's sha256 is written beside the files (and is what `models/` holds);
   every exported file is loaded once in its backend.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("stvg_train.export")


@dataclass
class ExportOptions:
    model_dir: str
    base_model: str | None = None
    out_dir: str | None = None
    name: str = "stvg-r1-custom"
    quants: list[str] = field(default_factory=lambda: ["Q8_0", "Q4_K_M"])
    detector: str | None = None
    calibration_data: str | None = None
    calibration_frames: int = 32
    verify: bool = True
    threads: int = 0


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_checkpoint(repo_id: str) -> Path:
    """A Hugging Face hub checkpoint (e.g. XiaowenZhang/stvg-r1-model-7b) on a machine with a network."""
    from stvg_ros.core.model_registry import offline_reason

    if repo_id.count("/") != 1 or Path(repo_id).exists():
        raise FileNotFoundError(f"model folder not found: {repo_id} (give a local folder, or a hub id such as "
                                "XiaowenZhang/stvg-r1-model-7b on a machine with a network)")
    if offline := offline_reason():
        raise FileNotFoundError(f"model folder not found: {repo_id}, and hub downloads are disabled ({offline} in "
                                "the environment): unset it, or give a local folder")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id))


def merged_model_dir(model_dir: str | Path, out_dir: str | Path, base_model: str | None = None) -> Path:
    """A full safetensors HF folder for `model_dir`: merges a LoRA adapter into its base, if it is one."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not model_dir.is_dir():
        model_dir = _download_checkpoint(str(model_dir))
    adapter_config = model_dir / "adapter_config.json"
    if not adapter_config.is_file():
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir} has neither config.json (a model) nor adapter_config.json (LoRA)")
        return model_dir
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    base = base_model or json.loads(adapter_config.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter_config} names no base model; pass --base-model")
    log.info("merging LoRA adapter %s into %s", model_dir, base)
    model = AutoModelForImageTextToText.from_pretrained(base, dtype="auto")
    merged = PeftModel.from_pretrained(model, str(model_dir)).merge_and_unload()
    target = out_dir / "merged-hf"
    shutil.rmtree(target, ignore_errors=True)
    merged.save_pretrained(target, safe_serialization=True)
    processor_source = model_dir if (model_dir / "preprocessor_config.json").is_file() or (
        model_dir / "processor_config.json").is_file() else Path(base)
    AutoProcessor.from_pretrained(processor_source).save_pretrained(target)
    return target


def _verify_gguf(model_path: Path, mmproj_path: Path, threads: int = 0) -> dict[str, Any]:
    """Load the GGUF pair in the grounding node's llama.cpp backend and answer about one frame."""
    import numpy as np

    from stvg_ros.core.prompt import build_question
    from stvg_ros.grounding.backends import make_backend

    start = time.monotonic()
    backend = make_backend("llama_cpp", model=str(model_path), mmproj=str(mmproj_path), n_ctx=2048, n_threads=threads)
    try:
        frame = np.full((112, 112, 3), 127, np.uint8)
        result = backend.generate([frame], [0.0], build_question("the object"), reasoning=False,
                                  max_new_tokens=32, track_ids=[1], duration_s=1.0)
    finally:
        backend.close()
    return {"loaded": True, "load_and_generate_s": round(time.monotonic() - start, 2),
            "generated": result.text[:200]}


def _calibration_frames(source: str, count: int) -> list:
    """RGB frames for int8 calibration: evenly spaced from videos, or the images of a prepared dataset."""
    import numpy as np

    path = Path(source)
    frames: list = []
    videos = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".mp4", ".mkv", ".avi", ".mov", ".webm"))
    if videos:
        from stvg_ros.core.video_io import iter_video, video_info

        per_video = max(1, count // len(videos))
        for video in videos:
            total = video_info(video).frames
            wanted = {int(i) for i in np.linspace(0, max(total - 1, 0), per_video)}
            frames += [rgb for i, _, rgb in iter_video(video) if i in wanted]
            if len(frames) >= count:
                break
    else:
        from stvg_train.data import load_prepared

        data = load_prepared([path])
        for row in data.select(range(min(len(data), count))):
            frames += [np.asarray(img.convert("RGB")) for img in row["images"][:1]]
    if not frames:
        raise ValueError(f"no calibration frames found in {source}")
    return frames[:count]


def _link(source: Path, target: Path) -> Path:
    """`target` as a hard link to `source` (a copy across file systems)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        target.hardlink_to(source)
    except OSError:
        shutil.copy2(source, target)
    return target


def _manifest_file(path: Path, fmt: str, command: str, **extra: Any) -> dict[str, Any]:
    return {"name": path.name, "format": fmt, "sha256": sha256_of(path), "size": path.stat().st_size,
            "source": {"export": command}, **extra}


#: Fields of an existing manifest that a rewrite keeps: what the export cannot know itself (the
#: released checkpoint it came from, its license, size, description, how to get it).
KEPT_FIELDS = ("description", "parameters", "license", "checkpoint", "how_to_get")


def _registered_manifest(name: str) -> Path | None:
    """The manifest file the registry knows under `name` (e.g. the package's stvg-r1-7b-q4_k_m.yaml)."""
    from stvg_ros.core import model_registry

    try:
        return model_registry.get_manifest(name).path
    except model_registry.ModelRegistryError:
        return None


def _write_manifest(out: Path, manifest: dict[str, Any]) -> Path:
    """Write `<out>/<name>.yaml`. An existing manifest of that name (in `out`, else the registry's, e.g. the package's) keeps
    its KEPT_FIELDS and any other field the export does not write; the export's own fields (files,
    sha256, converter version, ...) replace the old ones."""
    import yaml

    path = out / f"{manifest['name']}.yaml"
    header = (f"# Written by `stvg-train export` ({time.strftime('%Y-%m-%d %H:%M:%S')}). Files are in "
              f"./{manifest['name']}/; copy both (this file and that folder) into a robot's models folder "
              f"($STVG_ROS_MODELS or ~/.cache/stvg_ros/models).\n")
    previous = path if path.is_file() else _registered_manifest(manifest["name"])
    if previous is not None:
        try:
            existing = yaml.safe_load(previous.read_text())
        except yaml.YAMLError:
            existing = None  # unreadable: replaced as a whole
        if isinstance(existing, dict):
            kept = {k: v for k, v in existing.items() if k in KEPT_FIELDS or k not in manifest}
            manifest = {**existing, **{k: v for k, v in manifest.items() if k not in kept}}
    path.write_text(header + yaml.safe_dump(manifest, sort_keys=False))
    return path


def trained_input_format(model_dir: str | Path) -> dict[str, Any]:
    """The input format a model was trained with (`stvg_input_format.json` from `stvg-train grpo`).

    A folder without it (a released checkpoint, a LoRA adapter's base) gets what its processor says
    and `representation: unknown`: the STVG-R1 release was trained on native video (METHOD §4).
    """
    import json

    from stvg_ros.grounding.backends.models import INPUT_FORMAT_FILE

    path = Path(model_dir) / INPUT_FORMAT_FILE
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    fmt: dict[str, Any] = {"representation": "unknown"}
    for name, section in (("processor_config.json", "image_processor"), ("preprocessor_config.json", None)):
        config_path = Path(model_dir) / name
        if config_path.is_file():
            config = json.loads(config_path.read_text(encoding="utf-8"))
            size = (config.get(section) or {} if section else config).get("size") or {}
            if size:
                fmt.update(max_pixels_per_frame=size.get("longest_edge"), min_pixels_per_frame=size.get("shortest_edge"))
                break
    return fmt


def export(opts: ExportOptions) -> dict[str, Any]:
    """Run the export; returns a summary with one entry per exported file (manifests are written to out).

    Layout (what the model registry reads): `<out>/<name>-<quant>.yaml` and `<out>/<name>-<quant>/`
    holding the quantized text model and the mmproj (hard links, so the mmproj is stored once).
    """
    from stvg_ros.grounding.gguf import LLAMA_CPP_PYTHON_VERSION, convert_to_gguf, quantize_gguf

    if opts.detector and not opts.calibration_data:  # before the (long) conversion, not after it
        raise ValueError("--calibration-data (videos or a prepared dataset) is needed to quantize the detector")
    if opts.detector and not Path(opts.detector).is_file():
        raise FileNotFoundError(f"detector weights not found: {opts.detector}")
    start = time.monotonic()
    out = Path(opts.out_dir) if opts.out_dir else default_out_dir_root()
    out.mkdir(parents=True, exist_ok=True)
    work = out / f".{opts.name}-work"
    work.mkdir(parents=True, exist_ok=True)
    command = f"stvg-train export --model {opts.model_dir} --name {opts.name}"
    files: list[dict[str, Any]] = []
    manifests: list[str] = []
    try:
        input_format = trained_input_format(opts.model_dir)
        hf_dir = merged_model_dir(opts.model_dir, work, opts.base_model)
        f16_path, mmproj_path = convert_to_gguf(hf_dir, work, "f16", name=opts.name, threads=opts.threads)
        for quant in dict.fromkeys(q.lower() for q in opts.quants):
            label = f"{opts.name}-{quant}"
            folder = out / label
            model_path = folder / f"{label}.gguf"
            folder.mkdir(parents=True, exist_ok=True)
            if quant == "f16":
                _link(f16_path, model_path)
            else:
                quantize_gguf(f16_path, model_path, quant, threads=opts.threads)
            mmproj = _link(mmproj_path, folder / mmproj_path.name)
            manifest = {
                "name": label,
                "kind": "vlm",
                "architecture": "qwen2_5_vl",
                "quantization": quant,
                "description": f"{opts.name} (trained with stvg-train), GGUF {quant} text model + f16 mmproj",
                "trained_from": str(Path(opts.model_dir)),
                # how clips must reach this model: images + frame labels or native video, frames, pixels
                "input_format": input_format,
                "converter": f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} vendor/llama.cpp/convert_hf_to_gguf.py",
                "files": [
                    _manifest_file(model_path, "gguf", f"{command} --quant {quant}"),
                    _manifest_file(mmproj, "mmproj", f"{command} --quant {quant}", matches=model_path.name),
                ],
            }
            manifests.append(str(_write_manifest(out, manifest)))
            files.append({"path": str(model_path), "role": "model", "quantization": quant.upper(),
                          "mmproj": str(mmproj), "sha256": manifest["files"][0]["sha256"],
                          "bytes": model_path.stat().st_size, "manifest": label})
            files.append({"path": str(mmproj), "role": "mmproj", "quantization": "F16",
                          "sha256": manifest["files"][1]["sha256"], "bytes": mmproj.stat().st_size, "manifest": label})
        if opts.detector:
            files += _export_detector(opts, out)
            manifests.append(str(out / f"{opts.name}-detector.yaml"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if opts.verify:
        for entry in files:
            if entry["role"] == "mmproj":
                continue  # loaded together with its model
            try:
                if entry["role"] == "model":
                    entry.update(_verify_gguf(Path(entry["path"]), Path(entry["mmproj"]), opts.threads))
                else:
                    entry.update(_verify_onnx(Path(entry["path"])))
            except Exception as exc:
                entry.update(loaded=False, error=f"{type(exc).__name__}: {exc}")
        for entry in files:
            if entry["role"] == "mmproj":
                model = next(f for f in files if f["role"] == "model" and f["mmproj"] == entry["path"])
                entry["loaded"] = model.get("loaded", False)
    _check_manifests(out, manifests)
    return {
        "name": opts.name,
        "out_dir": str(out),
        "manifests": manifests,
        "files": files,
        "wall_s": round(time.monotonic() - start, 2),
    }


def default_out_dir_root() -> Path:
    """The user's models folder (`paths.models_home()`: $STVG_ROS_MODELS or ~/.cache/stvg_ros/models),
    where the registry finds the manifests and files; never the source or install tree."""
    from stvg_ros.core.paths import models_home

    return models_home()


def _check_manifests(out: Path, manifests: list[str]) -> None:
    """Every written manifest parses in the model registry, and its files are where the registry looks."""
    from stvg_ros.core import model_registry

    found = model_registry.load_manifests([out])
    for path in manifests:
        name = Path(path).stem
        manifest = found.get(name)
        if manifest is None:
            raise RuntimeError(f"the model registry does not read the manifest {path}")
        for file in manifest.files:
            if not (out / name / file.name).is_file():
                raise RuntimeError(f"{file.name} of {name} is not in {out / name}")


def _export_detector(opts: ExportOptions, out: Path) -> list[dict[str, Any]]:
    """Detector -> ONNX fp32 + static int8 calibrated on frames of the data; its own manifest."""
    from stvg_ros.perception.export import export_detector_onnx

    if not opts.calibration_data:
        raise ValueError("--calibration-data (videos or a prepared dataset) is needed to quantize the detector")
    frames = _calibration_frames(opts.calibration_data, opts.calibration_frames)
    label = f"{opts.name}-detector"
    paths = export_detector_onnx(opts.detector, out / label, frames, int8=True, stem=label)
    command = f"stvg-train export --detector {opts.detector} --calibration-data {opts.calibration_data}"
    manifest = {
        "name": label,
        "kind": "detector",
        "architecture": "yolo (ultralytics)",
        "quantization": "int8",
        "description": f"detector exported by stvg-train; int8 calibrated on {len(frames)} frames of the data",
        "files": [_manifest_file(Path(paths["onnx-int8"]), "onnx-int8", command),
                  _manifest_file(Path(paths["onnx"]), "onnx", command)],
    }
    _write_manifest(out, manifest)
    return [{"path": str(paths[k]), "role": "detector", "quantization": q, "bytes": Path(paths[k]).stat().st_size,
             "sha256": sha256_of(paths[k]), "calibration_frames": len(frames), "manifest": label}
            for k, q in (("onnx-int8", "INT8"), ("onnx", "FP32"))]


def _verify_onnx(path: Path) -> dict[str, Any]:
    """Open the ONNX file in ONNX Runtime and run one zero frame through it."""
    import numpy as np
    import onnxruntime as ort

    start = time.monotonic()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    session.run(None, {inp.name: np.zeros(shape, np.float32)})
    return {"loaded": True, "load_and_run_s": round(time.monotonic() - start, 2)}
