"""Model files named by manifests in models/*.yaml: find, fetch or build, and verify them.

A manifest (one YAML file per model, in `paths.manifest_dirs()`):

    name: yolo-synth-tiny
    kind: detector            # detector | vlm | mmproj
    architecture: yolo11
    quantization: int8
    description: ...
    files:
      - name: yolo-synth-tiny.pt
        format: pt            # optional: which file a backend picks (pt, onnx, onnx-int8, gguf, ...)
        sha256: null          # null: not pinned (built locally or no public checksum)
        size: null
        source: {build: "stvg_ros.synthetic.detector:build"}   # or {url: ...} or {hf_repo, filename}

`resolve(name_or_path)` looks, in order, at: an existing local path; the manifest folders
(`<dir>/<name>/<file>`); `model_cache_dir(name)` (`paths.models_home()/<name>`); a build function (models we make
ourselves); a download (only when the machine is online and downloads are allowed). When nothing
works it raises `ModelFileMissing`, whose message names the file and the command that gets it.
Nothing is downloaded or built implicitly unless the caller allows it.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stvg_ros.core.paths import manifest_dirs, models_home

log = logging.getLogger(__name__)

KINDS = ("detector", "vlm", "mmproj")
#: Env vars that mean "never download model files" (any of them set to 1/true). Not YOLO_OFFLINE:
#: scripts/env.sh sets it to keep ultralytics from phoning home, which says nothing about our downloads.
OFFLINE_ENV = ("STVG_OFFLINE", "HF_HUB_OFFLINE")


class ModelRegistryError(RuntimeError):
    """A manifest problem (unknown model, malformed manifest, failed build)."""


class UnknownModel(ModelRegistryError, LookupError):
    """No manifest has this name and no file has this path."""


class ModelFileMissing(ModelRegistryError, FileNotFoundError):
    """A model file is not on this machine; the message says how to get it."""


@dataclass(frozen=True)
class ModelFile:
    name: str
    source: dict[str, Any]
    sha256: str | None = None
    size: int | None = None
    format: str = ""

    @property
    def source_kind(self) -> str:
        """build | url | hf | export | local."""
        if "build" in self.source:
            return "build"
        if "export" in self.source:
            return "export"
        if "url" in self.source:
            return "url"
        if "hf_repo" in self.source:
            return "hf"
        return "local"


@dataclass(frozen=True)
class ModelManifest:
    name: str
    kind: str
    files: tuple[ModelFile, ...]
    path: Path
    architecture: str = ""
    quantization: str = ""
    description: str = ""
    license: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def file(self, name_or_format: str | None = None) -> ModelFile:
        """A file by name or by `format`; the first file when None."""
        if name_or_format is None:
            return self.files[0]
        for f in self.files:
            if name_or_format in (f.name, f.format):
                return f
        listing = ", ".join(f"{f.name} ({f.format or '-'})" for f in self.files)
        raise ModelRegistryError(f"model {self.name!r} has no file or format {name_or_format!r}; files: {listing}")

    def has(self, name_or_format: str) -> bool:
        return any(name_or_format in (f.name, f.format) for f in self.files)


def _parse_manifest(path: Path) -> ModelManifest:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ModelRegistryError(f"manifest {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not data.get("name") or not data.get("files"):
        raise ModelRegistryError(f"manifest {path} needs at least `name` and a non-empty `files` list")
    kind = data.get("kind", "detector")
    if kind not in KINDS:
        raise ModelRegistryError(f"manifest {path}: kind {kind!r} is not one of {KINDS}")
    files = []
    for entry in data["files"]:
        if not isinstance(entry, dict) or "name" not in entry:
            raise ModelRegistryError(f"manifest {path}: every file needs a `name`")
        source = entry.get("source") or {}
        if not isinstance(source, dict):
            raise ModelRegistryError(f"manifest {path}: source of {entry['name']} must be a mapping")
        sha = entry.get("sha256")
        files.append(
            ModelFile(
                name=str(entry["name"]),
                source=source,
                sha256=str(sha).lower() if sha else None,
                size=int(entry["size"]) if entry.get("size") else None,
                format=str(entry.get("format", "")),
            )
        )
    known = {"name", "kind", "files", "architecture", "quantization", "description", "license"}
    return ModelManifest(
        name=str(data["name"]),
        kind=kind,
        files=tuple(files),
        path=path,
        architecture=str(data.get("architecture", "")),
        quantization=str(data.get("quantization", "")),
        description=str(data.get("description", "")).strip(),
        license=str(data.get("license", "")),
        extra={k: v for k, v in data.items() if k not in known},
    )


def load_manifests(dirs: list[Path] | None = None) -> dict[str, ModelManifest]:
    """All manifests by name; a name found in an earlier folder wins."""
    manifests: dict[str, ModelManifest] = {}
    for folder in manifest_dirs() if dirs is None else dirs:
        for path in sorted(Path(folder).glob("*.y*ml")):
            manifest = _parse_manifest(path)
            manifests.setdefault(manifest.name, manifest)
    return manifests


def get_manifest(name: str) -> ModelManifest:
    manifests = load_manifests()
    if name not in manifests:
        raise UnknownModel(
            f"no model manifest named {name!r} (known: {', '.join(sorted(manifests)) or 'none'}; "
            f"manifest folders: {', '.join(map(str, manifest_dirs())) or 'none'})"
        )
    return manifests[name]


def model_cache_dir(name: str) -> Path:
    """Where the files of model `name` are kept on this machine: `paths.models_home()/<name>`."""
    path = models_home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def offline_reason() -> str:
    """"" when downloads are allowed, else which env var forbids them (e.g. "STVG_OFFLINE=1")."""
    for name in OFFLINE_ENV:
        if os.environ.get(name, "").lower() in ("1", "true", "yes"):
            return f"{name}={os.environ[name]}"
    return ""


def is_offline() -> bool:
    return bool(offline_reason())


def pull_command(name: str) -> str:
    return f"stvg-ros models pull {name}"


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _local_candidates(manifest: ModelManifest, file: ModelFile) -> list[Path]:
    candidates = []
    for folder in [manifest.path.parent, *manifest_dirs()]:
        candidates += [folder / manifest.name / file.name, folder / file.name]
    candidates.append(model_cache_dir(manifest.name) / file.name)
    return candidates


def find_file(manifest: ModelManifest, file: ModelFile) -> Path | None:
    """Where `file` of `manifest` is on this machine, or None."""
    return next((p for p in _local_candidates(manifest, file) if p.is_file()), None)


def _missing_message(manifest: ModelManifest, file: ModelFile, why: str = "") -> str:
    where = model_cache_dir(manifest.name) / file.name
    hosted = [f for f in manifest.files if f.source_kind in ("url", "hf")]
    if file.source_kind == "build" and hosted:
        how = (
            f"make it with `{pull_command(manifest.name)}`, which exports it from {hosted[0].name} "
            f"(downloaded on a machine with a network, or copied to {model_cache_dir(manifest.name)})"
        )
    elif file.source_kind == "build":
        how = f"build it with `{pull_command(manifest.name)}` (builds locally, no network needed)"
    elif file.source_kind in ("url", "hf"):
        origin = file.source.get("url") or f"hf://{file.source['hf_repo']}/{file.source.get('filename', file.name)}"
        how = (
            f"run `{pull_command(manifest.name)}` on a machine with a network (downloads {origin}), "
            f"or copy the file to {where}"
        )
    elif file.source_kind == "export":
        how = f"produce it with `{file.source['export']}` and copy it to {where}"
    else:
        how = f"copy the file to {where}"
    hint = manifest.extra.get("how_to_get")
    if hint and str(hint) not in how:
        how += f" ({hint})"
    return f"model file {file.name!r} of {manifest.name!r} is not on this machine{why}; {how}"


def _build(manifest: ModelManifest, file: ModelFile) -> None:
    target = file.source["build"]
    module_name, _, func_name = str(target).partition(":")
    try:
        builder = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise ModelRegistryError(f"build function {target!r} of {manifest.name!r} cannot be imported: {exc}") from exc
    out_dir = model_cache_dir(manifest.name)
    log.info("building %s into %s with %s", manifest.name, out_dir, target)
    builder(out_dir, manifest)


def _download(manifest: ModelManifest, file: ModelFile, timeout_s: float = 60.0) -> Path:
    out = model_cache_dir(manifest.name) / file.name
    if file.source_kind == "hf":
        from huggingface_hub import hf_hub_download

        got = hf_hub_download(
            repo_id=file.source["hf_repo"],
            filename=file.source.get("filename", file.name),
            revision=file.source.get("revision"),
            local_dir=out.parent,
        )
        if Path(got) != out:
            shutil.move(got, out)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{file.name}.", suffix=".part", delete=False) as tmp:
            partial = Path(tmp.name)
            try:
                with urllib.request.urlopen(file.source["url"], timeout=timeout_s) as response:
                    shutil.copyfileobj(response, tmp)
            except BaseException:  # a failed or interrupted download leaves nothing behind
                tmp.close()
                partial.unlink(missing_ok=True)
                raise
        partial.replace(out)
    if file.sha256 and sha256_of(out) != file.sha256:
        bad = out.with_suffix(out.suffix + ".bad")
        out.replace(bad)
        raise ModelRegistryError(f"{file.name} of {manifest.name} has the wrong sha256 (kept as {bad}); not used")
    return out


def resolve(
    name_or_path: str | os.PathLike,
    file: str | None = None,
    *,
    build: bool = False,
    download: bool = False,
) -> Path:
    """The local path of a model file.

    `name_or_path` is an existing file path, or a manifest name (then `file` picks a file by name
    or format; default the first). `build` allows running the manifest's build function and
    `download` allows fetching from the hub when the machine is not offline. Raises
    ModelFileMissing (message names the file and the command to get it) or UnknownModel.
    """
    text = os.fspath(name_or_path)
    if Path(text).expanduser().is_file():
        return Path(text).expanduser().resolve()
    manifests = load_manifests()
    if text not in manifests:
        if os.sep in text or Path(text).suffix in (".pt", ".onnx", ".gguf", ".yaml", ".safetensors"):
            raise ModelFileMissing(f"model file {text!r} does not exist (and no manifest has that name)")
        raise UnknownModel(
            f"no model manifest named {text!r} and no file at that path (known: {', '.join(sorted(manifests))})"
        )
    manifest = manifests[text]
    wanted = manifest.file(file)
    found = find_file(manifest, wanted)
    if found is not None:
        return found
    if wanted.source_kind == "build" and build:
        _build(manifest, wanted)
        found = find_file(manifest, wanted)
        if found is None:
            raise ModelRegistryError(f"build of {manifest.name!r} finished but did not write {wanted.name}")
        return found
    if wanted.source_kind in ("url", "hf") and download:
        if is_offline():
            raise ModelFileMissing(
                _missing_message(manifest, wanted, f" and downloads are disabled ({offline_reason()} in the environment)")
            )
        try:
            return _download(manifest, wanted)
        except OSError as exc:
            raise ModelFileMissing(_missing_message(manifest, wanted, f" and the download failed ({exc})")) from exc
    raise ModelFileMissing(_missing_message(manifest, wanted))


def resolve_all(name: str, *, build: bool = False, download: bool = False) -> dict[str, Path]:
    """Every file of a manifest: file name -> path (raises like `resolve`)."""
    manifest = get_manifest(name)
    return {f.name: resolve(name, f.name, build=build, download=download) for f in manifest.files}


def pull(name: str, *, force: bool = False) -> dict[str, Path]:
    """Get every file of `name` into the cache: build what we build, download what is hosted."""
    manifest = get_manifest(name)
    if force:
        for f in manifest.files:
            (model_cache_dir(name) / f.name).unlink(missing_ok=True)
    return resolve_all(name, build=True, download=True)


@dataclass(frozen=True)
class FileCheck:
    name: str
    path: str | None
    status: str  # ok | mismatch | missing | unpinned
    sha256: str | None
    expected: str | None
    message: str


def verify(name: str) -> list[FileCheck]:
    """Check each file of `name`: present, and its sha256 equal to the manifest's where pinned."""
    manifest = get_manifest(name)
    checks = []
    for f in manifest.files:
        path = find_file(manifest, f)
        if path is None:
            checks.append(FileCheck(f.name, None, "missing", None, f.sha256, _missing_message(manifest, f)))
            continue
        digest = sha256_of(path)
        if f.sha256 is None:
            why = "built locally" if f.source_kind == "build" else "no public checksum"
            status, message = "unpinned", f"present, sha256 not pinned in the manifest ({why}); cannot verify"
        elif digest == f.sha256:
            status, message = "ok", "sha256 matches"
        else:
            status, message = "mismatch", f"sha256 {digest} differs from the manifest's {f.sha256}"
        checks.append(FileCheck(f.name, str(path), status, digest, f.sha256, message))
    return checks
