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
    keep_f16: bool = False
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


def default_out_dir(name: str) -> Path:
    """<checkout>/models/<name> in a source checkout, else ./models/<name>."""
    from stvg_ros.core.paths import repo_root

    root = repo_root()
    return (root / "models" / name) if root is not None else Path("models") / name


def merged_model_dir(model_dir: str | Path, out_dir: str | Path, base_model: str | None = None) -> Path:
    """A full safetensors HF folder for `model_dir`: merges a LoRA adapter into its base, if it is one."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder not found: {model_dir}")
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


def _verify_gguf(model_path: Path, mmproj_path: Path) -> dict[str, Any]:
    """Load the GGUF pair with llama.cpp and run one short chat turn with an image."""
    import numpy as np

    from stvg_ros.grounding.backends import make_backend

    start = time.monotonic()
    backend = make_backend("llama_cpp", model_path=str(model_path), mmproj_path=str(mmproj_path), n_ctx=2048,
                           n_threads=1)
    try:
        frame = np.full((112, 112, 3), 127, np.uint8)
        text = backend.generate("Say something.", [frame], [0.0], max_tokens=4)
    finally:
        close = getattr(backend, "close", None)
        if close:
            close()
    return {"loaded": True, "load_and_generate_s": round(time.monotonic() - start, 2), "generated_chars": len(text)}


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


def _file_entry(path: Path, role: str, **extra: Any) -> dict[str, Any]:
    return {"path": path.name, "role": role, "sha256": sha256_of(path), "bytes": path.stat().st_size, **extra}


def export(opts: ExportOptions) -> dict[str, Any]:
    """Run the export; returns the manifest (also written as <out>/<name>.yaml and .json)."""
    import yaml

    from stvg_ros.grounding.gguf import convert_to_gguf, quantize_gguf

    start = time.monotonic()
    out = Path(opts.out_dir) if opts.out_dir else default_out_dir(opts.name)
    out.mkdir(parents=True, exist_ok=True)
    hf_dir = merged_model_dir(opts.model_dir, out, opts.base_model)
    quants = [q.lower() for q in opts.quants]
    f16_path, mmproj_path = convert_to_gguf(hf_dir, out, "f16", name=opts.name, threads=opts.threads)
    files: list[dict[str, Any]] = [_file_entry(mmproj_path, "mmproj", quantization="f16")]
    for quant in quants:
        if quant == "f16":
            continue
        target = quantize_gguf(f16_path, out / f"{opts.name}-{quant}.gguf", quant, threads=opts.threads)
        files.append(_file_entry(target, "model", quantization=quant.upper(), mmproj=mmproj_path.name))
    if "f16" in quants or opts.keep_f16:
        files.append(_file_entry(f16_path, "model", quantization="F16", mmproj=mmproj_path.name))
    else:
        f16_path.unlink(missing_ok=True)
    if opts.detector:
        from stvg_ros.perception.export import export_detector_onnx

        if not opts.calibration_data:
            raise ValueError("--calibration-data is needed to quantize the detector to int8")
        frames = _calibration_frames(opts.calibration_data, opts.calibration_frames)
        exported = export_detector_onnx(opts.detector, out, frames, int8=True)
        for onnx_path in exported if isinstance(exported, (list, tuple)) else [exported]:
            onnx_path = Path(onnx_path)
            files.append(_file_entry(onnx_path, "detector", quantization="int8" if "int8" in onnx_path.name else "fp32",
                                     calibration_frames=len(frames)))
    if opts.verify:
        for entry in files:
            path = out / entry["path"]
            try:
                if entry["role"] == "model":
                    entry.update(_verify_gguf(path, out / entry["mmproj"]))
                elif entry["role"] == "detector":
                    entry.update(_verify_onnx(path))
            except Exception as exc:  # noqa: BLE001 - reported per file; the command then exits non-zero
                entry.update(loaded=False, error=f"{type(exc).__name__}: {exc}")
    manifest = {
        "name": opts.name,
        "architecture": "qwen2.5-vl",
        "source": {"trained_from": str(Path(opts.model_dir).resolve()), "tool": "stvg-train export"},
        "files": files,
        "out_dir": str(out),
        "wall_s": round(time.monotonic() - start, 2),
    }
    (out / f"{opts.name}.yaml").write_text(yaml.safe_dump({k: v for k, v in manifest.items() if k != "out_dir"},
                                                          sort_keys=False))
    return manifest


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
