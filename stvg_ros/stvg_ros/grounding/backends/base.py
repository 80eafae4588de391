"""What every VLM backend offers the grounding pipeline, and the errors it raises."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded: missing file, mismatched mmproj, unreachable server.

    The message names the file or endpoint and what to do about it.
    """


class GenerationError(RuntimeError):
    """Generation failed inside the backend (context overflow, server error, ...)."""


@dataclass(frozen=True)
class BackendSettings:
    """What `make_backend` / `resolve_model_files` load and how (the grounding node's parameters).

    `model`: a manifest name (models/*.yaml) or a path (GGUF file, Hugging Face folder, or the served
    model name for http); `mmproj`: llama_cpp's vision projector (empty: the manifest's or the one
    beside the model); `endpoint`: the http backend's base URL. n_ctx, n_threads, n_gpu_layers and
    flash_attn are llama.cpp's; `timeout_s` bounds an http request.
    """

    model: str = ""
    mmproj: str = ""
    endpoint: str = ""
    n_ctx: int = 8192
    n_threads: int = 0
    n_gpu_layers: int = -1
    flash_attn: bool = True
    timeout_s: float = 120.0


class CancelToken(Protocol):
    """Anything with `is_set()`: a threading.Event, or the pipeline's cancel-or-deadline check."""

    def is_set(self) -> bool: ...


#: Why generation stopped: the model finished, hit max_new_tokens, or was cancelled/timed out.
FINISH_REASONS = ("stop", "length", "cancelled")


@dataclass
class GenerationResult:
    """One completion with its token counts and timings (milliseconds).

    preprocess_ms: images -> model input (PNG/JPEG encoding, processor); encode_ms: vision encoder +
    prompt prefill (until the first generated token); generate_ms: decoding after the first token.
    """

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    encode_ms: float = 0.0
    generate_ms: float = 0.0
    preprocess_ms: float = 0.0
    finish_reason: str = "stop"


@dataclass(frozen=True)
class GenerationRequest:
    """The arguments of one `VlmBackend.generate` call, as a backend's `_generate_locked` gets them."""

    frames: Sequence[np.ndarray]
    timestamps_s: Sequence[float]
    question: str
    reasoning: bool = True
    max_new_tokens: int = 512
    cancel: CancelToken | None = None
    on_token: Callable[[str], None] | None = None
    track_ids: Sequence[int] | None = None
    duration_s: float | None = None


@runtime_checkable
class VlmBackend(Protocol):
    """A vision-language model that answers a question about N frames with timestamps."""

    name: str

    def load(self) -> None:
        """Load the model (idempotent). Raises ModelLoadError with a clear message."""
        ...

    def generate(
        self,
        frames: Sequence[np.ndarray],
        timestamps_s: Sequence[float],
        question: str,
        *,
        reasoning: bool = True,
        max_new_tokens: int = 512,
        cancel: CancelToken | None = None,
        on_token: Callable[[str], None] | None = None,
        track_ids: Sequence[int] | None = None,
        duration_s: float | None = None,
    ) -> GenerationResult:
        """Answer `question` about `frames` (RGB uint8, IDs drawn) shown at `timestamps_s`.

        `track_ids` are the IDs drawn on the frames and `duration_s` the clip length: a constrained
        backend only allows those IDs and times within the clip.
        Stops early, with finish_reason "cancelled", once `cancel.is_set()`.

        The backends here subclass VlmBackend and share this implementation: check the frames,
        load the model, wait for `self._lock` (a SerialLock: one request at a time; None: no
        limit) unless cancelled, then `self._generate_locked(GenerationRequest(...))`.
        """
        check_frames(frames, timestamps_s)
        self.load()
        lock: SerialLock | None = self._lock
        if lock is not None and not lock.acquire(cancel):
            return GenerationResult("", finish_reason="cancelled")
        try:
            return self._generate_locked(GenerationRequest(frames, timestamps_s, question, reasoning, max_new_tokens,
                                                           cancel, on_token, track_ids, duration_s))  # fmt: skip
        finally:
            if lock is not None:
                lock.release()

    def close(self) -> None:
        """Free the model (idempotent)."""
        ...


def is_cancelled(cancel: CancelToken | None) -> bool:
    return cancel is not None and bool(cancel.is_set())


def check_frames(frames: Sequence[np.ndarray], timestamps_s: Sequence[float]) -> None:
    """Raise ValueError unless frames are RGB uint8 (H, W, 3) with one timestamp each."""
    if len(frames) == 0:
        raise ValueError("no frames to send to the model")
    if len(frames) != len(timestamps_s):
        raise ValueError(f"{len(frames)} frames but {len(timestamps_s)} timestamps")
    for frame in frames:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frames must be RGB uint8 (H, W, 3), got {frame.dtype} {frame.shape}")


def image_data_uri(rgb: np.ndarray, image_format: str = "png", jpeg_quality: int = 90) -> str:
    """An RGB frame as a `data:image/...;base64,` URI (what llama.cpp and OpenAI servers read)."""
    import cv2

    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    if image_format == "png":
        ok, buffer = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        mime = "image/png"
    elif image_format == "bmp":  # lossless and ~20x faster to encode than PNG; llama.cpp reads it
        ok, buffer = cv2.imencode(".bmp", bgr)
        mime = "image/bmp"
    elif image_format in ("jpeg", "jpg"):
        ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        mime = "image/jpeg"
    else:
        raise ValueError(f"image_format must be bmp, png or jpeg, got {image_format!r}")
    if not ok:
        raise ValueError(f"could not encode a {rgb.shape} frame as {image_format}")
    return f"data:{mime};base64,{base64.b64encode(buffer.tobytes()).decode('ascii')}"


class Stopwatch:
    """Milliseconds since construction or the last `lap()`."""

    def __init__(self) -> None:
        self._last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self._last = (now - self._last) * 1000.0, now
        return elapsed


class SerialLock:
    """A lock that gives up after a deadline (the model serves one request at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def acquire(self, cancel: CancelToken | None, poll_s: float = 0.05) -> bool:
        while not self._lock.acquire(timeout=poll_s):
            if is_cancelled(cancel):
                return False
        return True

    def release(self) -> None:
        self._lock.release()
