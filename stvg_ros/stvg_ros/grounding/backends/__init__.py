"""VLM backends behind one interface (`VlmBackend`): llama.cpp, transformers, OpenAI-compatible HTTP.

    backend = make_backend("llama_cpp", BackendSettings(model="stvg-r1-7b-q4_k_m"))  # a manifest name or a path
    result = backend.generate(frames, timestamps_s, question, reasoning=True, max_new_tokens=512)

`resolve_model_files` turns a manifest name or a path into the files a backend needs (without
loading anything), so a node can fail its configure step with a clear message.
"""

from __future__ import annotations

import logging
from dataclasses import fields, replace
from pathlib import Path

from stvg_ros.grounding.backends.base import (
    BackendSettings,
    CancelToken,
    GenerationError,
    GenerationResult,
    ModelLoadError,
    VlmBackend,
)
from stvg_ros.grounding.backends.http import HttpBackend
from stvg_ros.grounding.backends.models import manifest_files, recorded_input_format

log = logging.getLogger(__name__)

BACKENDS = ("llama_cpp", "transformers", "http")

__all__ = [
    "BACKENDS",
    "BackendSettings",
    "CancelToken",
    "GenerationError",
    "GenerationResult",
    "ModelLoadError",
    "VlmBackend",
    "make_backend",
    "resolve_model_files",
]


def _guess_backend(model: str, endpoint: str) -> str:
    if endpoint:
        return "http"
    return "transformers" if Path(model).is_dir() else "llama_cpp"


def _mmproj_beside(model_path: Path) -> Path:
    """The one `mmproj*.gguf` next to a GGUF model (the convention of our export and of llama.cpp)."""
    candidates = sorted(p for p in model_path.parent.glob("*.gguf") if "mmproj" in p.name.lower())
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ModelLoadError(f"no mmproj*.gguf next to {model_path}; pass the vision projector with `mmproj`")
    stem = model_path.stem.split("-")[0].lower()
    named = [p for p in candidates if stem in p.name.lower()]
    if len(named) == 1:
        return named[0]
    raise ModelLoadError(f"several mmproj files next to {model_path} ({', '.join(p.name for p in candidates)}); "
                         "pass the right one with `mmproj`")


def _from_manifest(name: str, backend: str) -> dict | None:
    """Files of manifest `name` for `backend` via the model registry, or None if no such manifest."""
    return manifest_files(name, backend)


def resolve_model_files(
    settings: BackendSettings | None = None,
    backend: str | None = None,
    *,
    model: str = "",
    mmproj: str = "",
    endpoint: str = "",
) -> dict[str, str]:
    """What a backend will load, as {"backend", "name", "model", "mmproj"} (or "endpoint" for http).

    The files come from `settings` (or, without it, `model` / `mmproj` / `endpoint`): `model` is a
    manifest name (models/*.yaml) or a path: a GGUF file for llama_cpp (its mmproj is `mmproj` or the
    single mmproj*.gguf beside it), a Hugging Face folder for transformers, or the served model name
    for http. Raises ModelLoadError naming what is missing and how to get it.
    """
    if settings is not None:
        model, mmproj, endpoint = settings.model, settings.mmproj, settings.endpoint
    model, mmproj, endpoint = str(model or ""), str(mmproj or ""), str(endpoint or "")
    backend = backend or _guess_backend(model, endpoint)
    if backend not in BACKENDS:
        raise ModelLoadError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "http":
        if not endpoint:
            raise ModelLoadError("backend http needs an endpoint, e.g. http://gpu-server:8000/v1")
        return {"backend": backend, "name": model or endpoint, "model": model, "endpoint": endpoint}
    if not model:
        raise ModelLoadError(f"backend {backend} needs a model: a manifest name (see `stvg-ros models list`) or a path")
    path = Path(model).expanduser()
    looks_like_path = path.suffix == ".gguf" or "/" in model or path.exists()
    if not looks_like_path:
        files = _from_manifest(model, backend)
        if files is None:
            raise ModelLoadError(f"model {model!r} is neither a file nor a manifest in models/ "
                                 "(see `stvg-ros models list`)")
        if mmproj:
            files["mmproj"] = str(Path(mmproj).expanduser())
        return files
    if backend == "transformers":
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model folder not found or not a Hugging Face model (no config.json): {path}")
        return {"backend": backend, "name": path.name, "model": str(path)}
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    mmproj_path = Path(mmproj).expanduser() if mmproj else _mmproj_beside(path)
    if not mmproj_path.is_file():
        raise ModelLoadError(f"mmproj file not found: {mmproj_path}")
    return {"backend": backend, "name": path.stem, "model": str(path), "mmproj": str(mmproj_path)}


def make_backend(kind: str, settings: BackendSettings | None = None, *, load: bool = True, **options) -> VlmBackend:
    """A backend of `kind` for `settings`, loaded by default. Raises ModelLoadError with a clear message.

    `options` may give BackendSettings fields one by one (`model="..."`, in place of or over
    `settings`; None keeps the setting) and backend-specific extras: llama_cpp: n_batch, temperature,
    repeat_penalty, seed, constrained, image_format; transformers: device, dtype, use_video,
    constrained, attn_implementation; http: api_key, connect_timeout_s, stall_timeout_s, image_format,
    constraint, temperature (extras another backend would take are ignored).
    """
    if kind not in BACKENDS:
        raise ModelLoadError(f"unknown backend {kind!r}; use one of {', '.join(BACKENDS)}")
    own = {f.name for f in fields(BackendSettings)}
    settings = replace(settings or BackendSettings(), **{k: v for k, v in options.items() if k in own and v is not None})
    extra = {k: v for k, v in options.items() if k not in own and v is not None}
    files = resolve_model_files(settings, backend=kind)
    if kind == "llama_cpp":
        from stvg_ros.grounding.backends.llama_cpp import LlamaCppBackend  # imports llama_cpp

        picked = {k: extra[k] for k in ("n_batch", "temperature", "repeat_penalty", "seed", "constrained",
                                        "image_format") if k in extra}  # fmt: skip
        backend: VlmBackend = LlamaCppBackend(
            files["model"], files["mmproj"], model_name=files["name"], n_ctx=settings.n_ctx,
            n_threads=settings.n_threads, n_gpu_layers=settings.n_gpu_layers, flash_attn=settings.flash_attn, **picked,
        )  # fmt: skip
    elif kind == "transformers":
        from stvg_ros.grounding.backends.transformers_backend import TransformersBackend  # imports torch

        picked = {k: extra[k] for k in ("device", "dtype", "use_video", "constrained", "attn_implementation")
                  if k in extra}  # fmt: skip
        if "use_video" not in picked:  # the representation the model was trained with, where recorded
            representation = recorded_input_format(files["name"], files["model"]).get("representation")
            if representation in ("images", "video"):
                picked["use_video"] = representation == "video"
        backend = TransformersBackend(files["model"], model_name=files["name"], **picked)
    else:
        http_extras = ("api_key", "connect_timeout_s", "stall_timeout_s", "image_format", "constraint", "temperature")
        picked = {k: extra[k] for k in http_extras if k in extra}
        backend = HttpBackend(files["endpoint"], model=files["model"], model_name=files["name"],
                              timeout_s=settings.timeout_s, **picked)  # fmt: skip
    # How the model was trained to see clips (GroundingPipeline samples and resizes frames to match).
    backend.input_format = recorded_input_format(files["name"], files.get("model") if kind == "transformers" else None)
    if load:
        backend.load()
    return backend
