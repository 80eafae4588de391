"""Qwen2.5-VL (Hugging Face folder) -> GGUF text model + mmproj for the llama.cpp backend.

Conversion runs llama.cpp's own `convert_hf_to_gguf.py` from the pinned llama-cpp-python sdist
(unpacked by scripts/setup.sh into cache_dir('llama_cpp_src')) in a subprocess, with the vendored
gguf-py first on PYTHONPATH (PyPI's gguf 0.19.0 is older than the vendored one, FEASIBILITY §7).
Quantization uses `llama_cpp.llama_model_quantize`, so no separate binary is needed.

One adaptation, applied only when needed: llama.cpp recognises a BPE pre-tokenizer by hashing the
token ids of a fixed text, so a locally trained tokenizer (the tiny test model) is never in its
table. When the hash is unknown AND the tokenizer's pre-tokenizer is Qwen2's split regex, the run
declares the pre-tokenizer `qwen2` (which is what it is). Real Qwen2.5-VL checkpoints are
recognised by hash and converted unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

#: Qwen2's pre-tokenizer split (the regex llama.cpp implements as pre-tokenizer "qwen2").
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

log = logging.getLogger(__name__)

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
#: Quantization names -> llama_ftype values (llama.h).
QUANTS = {"f32": 0, "f16": 1, "q8_0": 7, "q4_k_m": 15}


class GgufError(RuntimeError):
    """A conversion or quantization that failed (says which step, which file, and why)."""


def find_converter() -> Path:
    """The vendored `convert_hf_to_gguf.py` of the pinned llama-cpp-python sdist."""
    from stvg_ros.core.paths import cache_dir

    override = os.environ.get("STVG_LLAMA_CPP_SRC")
    roots = [Path(override)] if override else []
    base = cache_dir("llama_cpp_src")
    roots += [base / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}", *sorted(base.glob("llama_cpp_python-*"))]
    for root in roots:
        for script in (root / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py", root / "convert_hf_to_gguf.py"):
            if script.is_file() and (script.parent / "gguf-py").is_dir():
                return script
    raise GgufError(
        f"llama.cpp's convert_hf_to_gguf.py was not found under {base} (nor $STVG_LLAMA_CPP_SRC). "
        f"Run scripts/setup.sh, which unpacks the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist there "
        f"(or: tar xzf llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz -C {base})."
    )


# Runs inside the converter's subprocess: argv = [converter, *converter args].
_RUNNER = r"""
import json, runpy, sys
from pathlib import Path
script = sys.argv[1]
sys.argv = sys.argv[1:]
import conversion.base as base
_original = base.TextModel.get_vocab_base_pre
QWEN2_SPLIT = {qwen2_split!r}

def _uses_qwen2_split(dir_model):
    try:
        pre = json.loads((Path(dir_model) / "tokenizer.json").read_text())["pre_tokenizer"]
    except Exception:
        return False
    steps = pre.get("pretokenizers", [pre]) if isinstance(pre, dict) else []
    return any(s.get("type") == "Split" and s.get("pattern", {{}}).get("Regex") == QWEN2_SPLIT for s in steps)

def _get_vocab_base_pre(self, tokenizer):
    try:
        return _original(self, tokenizer)
    except NotImplementedError:
        if _uses_qwen2_split(self.dir_model):
            print("stvg_ros: unknown tokenizer hash; its pre-tokenizer is Qwen2's split regex -> 'qwen2'", file=sys.stderr)
            return "qwen2"
        raise

base.TextModel.get_vocab_base_pre = _get_vocab_base_pre
runpy.run_path(script, run_name="__main__")
"""


def _run_converter(hf_dir: Path, outfile: Path, outtype: str, mmproj: bool, timeout_s: float) -> None:
    script = find_converter()
    vendor = script.parent
    env = dict(os.environ)
    env.pop("NO_LOCAL_GGUF", None)
    env["PYTHONPATH"] = os.pathsep.join([str(vendor / "gguf-py"), str(vendor), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    args = [str(hf_dir), "--outfile", str(outfile), "--outtype", outtype]
    if mmproj:
        args.append("--mmproj")
    runner = _RUNNER.format(qwen2_split=QWEN2_SPLIT_REGEX)
    command = [sys.executable, "-c", runner, str(script), *args]
    what = "mmproj" if mmproj else "text model"
    log.info("converting %s (%s) -> %s", hf_dir, what, outfile)
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise GgufError(f"converting the {what} of {hf_dir} took longer than {timeout_s:.0f} s") from None
    if done.returncode != 0 or not outfile.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
        raise GgufError(f"convert_hf_to_gguf.py failed on the {what} of {hf_dir} (exit {done.returncode}):\n{tail}")


def quantize_gguf(source: str | Path, target: str | Path, quant: str, threads: int = 0) -> Path:
    """Quantize a GGUF text model with llama.cpp (`llama_model_quantize`)."""
    import llama_cpp

    if quant not in QUANTS:
        raise GgufError(f"unknown quantization {quant!r}; use one of {', '.join(QUANTS)}")
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise GgufError(f"cannot quantize: {source} does not exist")
    from llama_cpp import _logger

    _logger.set_verbose(log.isEnabledFor(logging.DEBUG))  # llama.cpp logs every tensor otherwise
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANTS[quant]
    params.nthread = int(threads)
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if code != 0 or not target.is_file():
        raise GgufError(f"llama_model_quantize({source} -> {quant}) failed with code {code}")
    return target


def output_names(name: str, quant: str, mmproj_type: str | None = None) -> tuple[str, str]:
    """File names `convert_to_gguf` writes: (`<name>-<quant>.gguf`, `mmproj-<name>-<type>.gguf`); the mmproj
    type defaults to f32 for an f32 model, else f16. Manifests in models/ name the same files."""
    mmproj_type = mmproj_type or ("f32" if quant == "f32" else "f16")
    return f"{name}-{quant}.gguf", f"mmproj-{name}-{mmproj_type}.gguf"


def convert_to_gguf(
    hf_dir: str | Path,
    out_dir: str | Path,
    quant: str = "f32",
    *,
    name: str | None = None,
    mmproj_type: str | None = None,
    threads: int = 0,
    timeout_s: float = 3600.0,
) -> tuple[Path, Path]:
    """Convert a Qwen2.5-VL HF folder to (text model GGUF, mmproj GGUF) in `out_dir`.

    quant: f32 | f16 (written by the converter) or q8_0 | q4_k_m (converted to f16, then quantized).
    The mmproj stays f32 for quant f32, else f16 (`mmproj_type` overrides). Files are named
    `<name>-<quant>.gguf` and `mmproj-<name>-<type>.gguf`; existing files are replaced.
    """
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if quant not in QUANTS:
        raise GgufError(f"unknown quantization {quant!r}; use one of {', '.join(QUANTS)}")
    if not (hf_dir / "config.json").is_file():
        raise GgufError(f"{hf_dir} is not a Hugging Face model folder (no config.json)")
    architectures = json.loads((hf_dir / "config.json").read_text()).get("architectures") or []
    if "Qwen2_5_VLForConditionalGeneration" not in architectures:
        raise GgufError(f"{hf_dir} is {architectures or 'of unknown architecture'}, not Qwen2_5_VLForConditionalGeneration")
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or hf_dir.name
    mmproj_type = mmproj_type or ("f32" if quant == "f32" else "f16")
    if mmproj_type not in ("f32", "f16"):
        raise GgufError(f"mmproj type must be f32 or f16, got {mmproj_type!r}")
    model_name, mmproj_name = output_names(name, quant, mmproj_type)
    model_path, mmproj_path = out_dir / model_name, out_dir / mmproj_name
    if quant in ("f32", "f16"):
        _run_converter(hf_dir, model_path, quant, mmproj=False, timeout_s=timeout_s)
    else:
        intermediate = out_dir / f"{name}-f16.tmp.gguf"
        try:
            _run_converter(hf_dir, intermediate, "f16", mmproj=False, timeout_s=timeout_s)
            quantize_gguf(intermediate, model_path, quant, threads=threads)
        finally:
            intermediate.unlink(missing_ok=True)
    convert_mmproj(hf_dir, mmproj_path, mmproj_type, timeout_s=timeout_s)
    return model_path, mmproj_path


def convert_mmproj(hf_dir: str | Path, outfile: str | Path, mmproj_type: str = "f16", timeout_s: float = 3600.0) -> Path:
    """Convert only the vision projector of a Qwen2.5-VL HF folder to `outfile`."""
    if mmproj_type not in ("f32", "f16"):
        raise GgufError(f"mmproj type must be f32 or f16, got {mmproj_type!r}")
    outfile = Path(outfile)
    outfile.parent.mkdir(parents=True, exist_ok=True)
    _run_converter(Path(hf_dir), outfile, mmproj_type, mmproj=True, timeout_s=timeout_s)
    return outfile


def gguf_summary(path: str | Path) -> dict:
    """A few header fields of a GGUF file (architecture, embedding sizes, rotary base and M-RoPE sections,
    projector type, file type).

    Reads only metadata. Raises GgufError for a missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise GgufError(f"GGUF file not found: {path}")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path), "r")
    except Exception as exc:  # any parse failure means "not a GGUF file"
        raise GgufError(f"{path} is not a readable GGUF file: {exc}") from exc

    def value(key: str):
        field = reader.fields.get(key)
        if field is None:
            return None
        try:
            return field.contents()
        except Exception:  # an odd field type: treat as absent
            return None

    arch = value("general.architecture")
    summary = {"architecture": arch, "file_type": value("general.file_type"), "name": value("general.name")}
    if arch == "clip":
        summary["projector_type"] = value("clip.projector_type")
        summary["projection_dim"] = value("clip.vision.projection_dim")
        summary["has_vision"] = bool(value("clip.has_vision_encoder"))
    elif arch:
        summary["embedding_length"] = value(f"{arch}.embedding_length")
        summary["block_count"] = value(f"{arch}.block_count")
        summary["rope_freq_base"] = value(f"{arch}.rope.freq_base")
        summary["rope_dimension_sections"] = value(f"{arch}.rope.dimension_sections")
    return summary
