"""VLM manifests (models/*.yaml, kind vlm) -> the files each grounding backend loads.

Conventions of a VLM manifest's `files` (core/model_registry.py reads the manifests):
  format `gguf`   the llama.cpp text model        format `mmproj`  its vision projector
  format `hf`     `hf/config.json` of a Hugging Face folder (transformers); the folder's other
                  files use format `hf-file`
Nothing is built or downloaded here: a missing file is a ModelLoadError that says how to get it
(`stvg-ros models pull NAME`, or `stvg-train export` for the GGUF files our export produces).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stvg_ros.grounding.backends.base import ModelLoadError

#: Which manifest file formats each backend needs.
BACKEND_FORMATS = {"llama_cpp": ("gguf", "mmproj"), "transformers": ("hf",)}
#: File in a trained model's folder recording how clips reached it in training (`stvg-train grpo`
#: writes it; `stvg-train export` copies it into the manifests as `input_format`).
INPUT_FORMAT_FILE = "stvg_input_format.json"


def recorded_input_format(name: str, model_path: str | Path | None = None) -> dict[str, Any]:
    """How clips must reach a model, as recorded at training: the manifest's `input_format` (by
    manifest name), else `INPUT_FORMAT_FILE` in its Hugging Face folder; {} when nothing is recorded
    (a released checkpoint: STVG-R1 was trained on native video, METHOD.md §4). Keys: representation
    (images | video | unknown), frame_label, frames_per_clip, max_pixels_per_frame, min_pixels_per_frame."""
    from stvg_ros.core import model_registry as registry

    try:
        recorded = registry.get_manifest(name).extra.get("input_format")
    except registry.ModelRegistryError:
        recorded = None
    if isinstance(recorded, dict):
        return recorded
    folder = Path(model_path) if model_path else None
    record = folder / INPUT_FORMAT_FILE if folder is not None and folder.is_dir() else None
    if record is not None and record.is_file():
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{record} is not a readable input-format record: {exc}") from exc
        if isinstance(data, dict):
            return data
    return {}


def manifest_files(name: str, backend: str) -> dict[str, str] | None:
    """{"backend", "name", "model", "mmproj"?} of manifest `name` for `backend`; None if no manifest."""
    from stvg_ros.core import model_registry as registry

    try:
        manifest = registry.get_manifest(name)
    except registry.UnknownModel:
        return None
    except registry.ModelRegistryError as exc:
        raise ModelLoadError(str(exc)) from exc
    if manifest.kind != "vlm":
        raise ModelLoadError(f"model {name!r} is a {manifest.kind}, not a vision-language model")
    if backend == "http":
        return {"backend": backend, "name": name, "model": name}
    needed = BACKEND_FORMATS[backend]
    missing = [fmt for fmt in needed if not manifest.has(fmt)]
    if missing:
        other = [b for b, formats in BACKEND_FORMATS.items() if all(manifest.has(f) for f in formats)]
        raise ModelLoadError(f"model {name!r} has no {'/'.join(missing)} files for backend {backend}"
                             + (f"; it works with backend {', '.join(other)}" if other else ""))
    paths: dict[str, Path] = {}
    for fmt in needed:
        try:
            paths[fmt] = registry.resolve(name, fmt)
        except registry.ModelFileMissing as exc:
            hint = str(manifest.extra.get("how_to_get") or "")
            raise ModelLoadError(f"{exc}; {hint}" if hint and hint not in str(exc) else str(exc)) from exc
        except registry.ModelRegistryError as exc:
            raise ModelLoadError(str(exc)) from exc
    files = {"backend": backend, "name": name}
    if backend == "llama_cpp":
        files.update(model=str(paths["gguf"]), mmproj=str(paths["mmproj"]))
    else:
        files["model"] = str(paths["hf"].parent)
    return files


def manifest_note(name: str) -> str:
    """The manifest's `note` (e.g. the tiny model's 'answers are meaningless'), or ''."""
    from stvg_ros.core import model_registry as registry

    try:
        return str(registry.get_manifest(name).extra.get("note", "") or "")
    except registry.ModelRegistryError:
        return ""
