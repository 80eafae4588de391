"""llama.cpp backend: a Qwen2.5-VL GGUF + its mmproj through llama-cpp-python (the robot's default).

Frames go in as images (lossless BMP data URIs), each after its `Frame at t s:` label, because llama.cpp's
chat handlers take no video. A GBNF grammar (core/stvg_r1_answer.gbnf) constrains the output to
`<think>…</think><answer>Target ID: N, Time range: a to b</answer>` (or the answer block alone),
with N limited to the IDs drawn on the frames. Generation is streamed so a cancel or a deadline
stops it between tokens; the vision encoder and prompt prefill run as one uninterruptible step.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stvg_ros.core.answer import answer_grammar, think_budget_chars
from stvg_ros.core.prompt import clip_user_content
from stvg_ros.grounding.backends.base import (
    GenerationError,
    GenerationRequest,
    GenerationResult,
    ModelLoadError,
    SerialLock,
    Stopwatch,
    VlmBackend,
    image_data_uri,
    is_cancelled,
)
from stvg_ros.grounding.gguf import GgufError, gguf_summary

log = logging.getLogger(__name__)

#: mmproj projector types that Qwen25VLChatHandler can drive.
QWEN_PROJECTORS = ("qwen2.5vl_merger", "qwen2vl_merger")


def check_model_files(model_path: str | Path, mmproj_path: str | Path) -> dict:
    """Check a GGUF text model and mmproj before llama.cpp loads them; ModelLoadError if unusable.

    Catches what llama.cpp would report vaguely (or abort on): a missing file, a file that is not
    GGUF, a text model given as mmproj, and an mmproj whose projection size differs from the text
    model's embedding size (made for another model). Returns both files' header summaries.
    """
    model_path, mmproj_path = Path(model_path), Path(mmproj_path)
    for role, path in (("model", model_path), ("mmproj", mmproj_path)):
        if not path.is_file():
            raise ModelLoadError(
                f"{role} file not found: {path} (get it with `stvg-ros models pull <name>`, "
                f"or convert a checkpoint with `stvg-train export`)"
            )
    try:
        model, mmproj = gguf_summary(model_path), gguf_summary(mmproj_path)
    except GgufError as exc:
        raise ModelLoadError(str(exc)) from exc
    if model["architecture"] == "clip":
        raise ModelLoadError(f"{model_path} is a vision projector (mmproj), not a text model")
    if model["architecture"] not in ("qwen2vl", "qwen25vl", "qwen2"):
        raise ModelLoadError(f"{model_path} is a {model['architecture']!r} model, not Qwen2.5-VL (qwen2vl)")
    if mmproj["architecture"] != "clip" or not mmproj.get("has_vision"):
        raise ModelLoadError(f"{mmproj_path} is not a vision projector (mmproj) GGUF: architecture "
                             f"{mmproj['architecture']!r}")
    if mmproj.get("projector_type") not in QWEN_PROJECTORS:
        raise ModelLoadError(f"{mmproj_path} is a {mmproj.get('projector_type')!r} projector, not Qwen2.5-VL's")
    if mmproj.get("projection_dim") != model.get("embedding_length"):
        raise ModelLoadError(
            f"mmproj {mmproj_path.name} does not match model {model_path.name}: the projector outputs "
            f"{mmproj.get('projection_dim')}-d embeddings but the text model takes {model.get('embedding_length')}-d "
            "(use the mmproj converted from the same checkpoint)"
        )
    return {"model": model, "mmproj": mmproj}


def default_threads() -> int:
    """All cores but one (at least one): the tracker shares the machine, and ggml's spinning
    worker threads slow down sharply when they compete for a busy core."""
    return max(1, (os.cpu_count() or 1) - 1)


def quiet_llama_logs(verbose: bool = False) -> None:
    """Route llama.cpp and mtmd (vision) logs through llama-cpp-python's filter (errors only)."""
    import ctypes

    import llama_cpp.mtmd_cpp as mtmd
    from llama_cpp import _logger

    _logger.set_verbose(verbose)
    mtmd.mtmd_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    mtmd.mtmd_helper_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


class LlamaCppBackend(VlmBackend):
    """Qwen2.5-VL GGUF + mmproj in-process with llama-cpp-python (CPU, or GPU with a CUDA build)."""

    name = "llama_cpp"

    def __init__(
        self,
        model_path: str | Path,
        mmproj_path: str | Path,
        *,
        n_ctx: int = 8192,
        n_threads: int = 0,
        n_gpu_layers: int = -1,
        n_batch: int = 1024,
        temperature: float = 0.0,
        repeat_penalty: float = 1.05,
        seed: int = 0,
        constrained: bool = True,
        image_format: str = "bmp",
        flash_attn: bool = True,
        model_name: str | None = None,
    ) -> None:
        self.model_path, self.mmproj_path = Path(model_path), Path(mmproj_path)
        self.n_ctx, self.n_gpu_layers = int(n_ctx), int(n_gpu_layers)
        self.n_threads = int(n_threads) if n_threads and n_threads > 0 else default_threads()
        self.n_batch = max(64, min(int(n_batch), self.n_ctx))
        self.temperature, self.repeat_penalty, self.seed = float(temperature), float(repeat_penalty), int(seed)
        self.constrained = constrained
        self.image_format = image_format
        # Also used by the vision encoder (mtmd): on 2 CPU cores it encodes 16 frames ~40% faster.
        self.flash_attn = bool(flash_attn)
        self.model_name = model_name or self.model_path.stem
        self._llm = None
        self._lock = SerialLock()
        self._grammars: dict[tuple, object] = {}

    def load(self) -> None:
        if self._llm is not None:
            return
        check_model_files(self.model_path, self.mmproj_path)
        try:
            import llama_cpp
            from llama_cpp.llama_chat_format import Qwen25VLChatHandler
        except ImportError as exc:
            raise ModelLoadError(
                f"llama-cpp-python is not installed ({exc}); run scripts/setup.sh (it builds and caches the wheel)"
            ) from exc
        quiet_llama_logs(log.isEnabledFor(logging.DEBUG))
        try:
            handler = Qwen25VLChatHandler(clip_model_path=str(self.mmproj_path), verbose=False)
            llm = llama_cpp.Llama(
                model_path=str(self.model_path),
                chat_handler=handler,
                n_ctx=self.n_ctx,
                n_batch=self.n_batch,
                n_ubatch=self.n_batch,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                n_gpu_layers=self.n_gpu_layers,
                flash_attn=self.flash_attn,
                seed=self.seed,
                verbose=False,
            )
            # The handler loads the mmproj lazily; load it now so a bad file fails here, not mid-query.
            handler._init_mtmd_context(llm)
        except Exception as exc:  # llama.cpp reports load failures as ValueError/RuntimeError
            raise ModelLoadError(f"llama.cpp could not load {self.model_path.name} + {self.mmproj_path.name}: {exc}") from exc
        self._llm = llm
        atexit.register(self.close)  # llama-cpp-python's own __del__ fails at interpreter exit
        log.info("llama.cpp loaded %s + %s (n_ctx %d, %d threads, gpu layers %d)", self.model_path.name,
                 self.mmproj_path.name, self.n_ctx, self.n_threads, self.n_gpu_layers)

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            try:
                llm.close()
            except Exception:  # closing at shutdown; nothing left to do
                log.debug("closing llama.cpp failed", exc_info=True)

    def _grammar(self, reasoning: bool, track_ids: Sequence[int] | None, max_think: int, duration_s: float | None):
        from llama_cpp import LlamaGrammar

        max_seconds = round(duration_s, 2) if duration_s is not None else None
        key = (reasoning, tuple(sorted(track_ids)) if track_ids else None, max_think, max_seconds)
        if key not in self._grammars:
            if len(self._grammars) >= 32:
                self._grammars.pop(next(iter(self._grammars)))
            text = answer_grammar(reasoning=reasoning, track_ids=track_ids, max_think_chars=max_think,
                                  max_seconds=max_seconds)
            self._grammars[key] = LlamaGrammar.from_string(text, verbose=False)
        return self._grammars[key]

    def _generate_locked(self, r: GenerationRequest) -> GenerationResult:
        """`generate` (VlmBackend's) once the model is loaded and this request holds the lock."""
        grammar = (self._grammar(r.reasoning, r.track_ids, think_budget_chars(r.max_new_tokens), r.duration_s)
                   if self.constrained else None)  # fmt: skip
        return self._generate(r.frames, r.timestamps_s, r.question, r.max_new_tokens, r.cancel, r.on_token, grammar)

    def _prompt_tokens(self, messages: list[dict], frames: Sequence[np.ndarray]) -> int:
        """Text tokens + visual tokens (one per 28x28 pixels) of a request."""
        text = "".join(part.get("text", "") for part in messages[0]["content"])
        visual = sum((f.shape[0] // 28) * (f.shape[1] // 28) for f in frames)
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)) + visual

    def _generate(self, frames, timestamps_s, question, max_new_tokens, cancel, on_token, grammar):
        watch = Stopwatch()
        urls = [image_data_uri(frame, self.image_format) for frame in frames]
        messages = [{"role": "user", "content": clip_user_content(question, timestamps_s, urls)}]
        result = GenerationResult("", preprocess_ms=watch.lap())
        if is_cancelled(cancel):
            result.finish_reason = "cancelled"
            return result
        needed = self._prompt_tokens(messages, frames)
        if needed >= self.n_ctx:
            raise GenerationError(
                f"the clip needs about {needed} tokens ({len(frames)} frames) but the context holds {self.n_ctx}: "
                "lower num_frames or the pixel budget, or raise n_ctx"
            )
        try:
            stream = self._llm.create_chat_completion(
                messages=messages,
                stream=True,
                max_tokens=int(max_new_tokens),
                temperature=self.temperature,
                repeat_penalty=self.repeat_penalty,
                grammar=grammar,
                seed=self.seed,
            )
            positions = int(self._llm.n_tokens)  # M-RoPE: positions, not tokens, for images
            pieces: list[str] = []
            first = True
            for chunk in stream:
                if first:
                    result.encode_ms, first = watch.lap(), False
                choice = chunk["choices"][0]
                piece = choice.get("delta", {}).get("content") or ""
                if piece:
                    pieces.append(piece)
                    if on_token is not None:
                        on_token(piece)
                if choice.get("finish_reason"):
                    result.finish_reason = choice["finish_reason"]
                if is_cancelled(cancel):
                    result.finish_reason = "cancelled"
                    break
        except ValueError as exc:
            if any(hint in str(exc) for hint in ("n_ctx", "context window", "could not broadcast")):
                raise GenerationError(
                    f"the clip does not fit the context: {exc}. Lower num_frames or the pixel budget, or raise n_ctx"
                ) from exc
            raise GenerationError(f"llama.cpp failed: {exc}") from exc
        except Exception as exc:  # surface any llama.cpp failure as a generation error
            raise GenerationError(f"llama.cpp failed: {type(exc).__name__}: {exc}") from exc
        if first:
            result.encode_ms = watch.lap()
        else:
            result.generate_ms = watch.lap()
        result.text = "".join(pieces)
        result.completion_tokens = max(0, int(self._llm.n_tokens) - positions)
        result.prompt_tokens = needed
        return result
