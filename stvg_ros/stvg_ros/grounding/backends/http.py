"""HTTP backend: an OpenAI-compatible chat-completions server (vLLM, llama-server, llama_cpp.server).

A robot sends its clip to a GPU server: the question, then each frame as `Frame at t s:` + an
`image_url` data URI, streamed back with server-sent events (so cancel works between tokens).
The answer is constrained where the server supports it: `constraint="grammar"` sends the GBNF
(llama.cpp servers), `"structured_outputs"` / `"guided_regex"` send the regex twin (vLLM, new and
old spelling), `"none"` sends nothing. Frames travel as JPEG by default (small; the official
marker videos were lossy mp4 too); `image_format="png"` sends them lossless. Standard library only (http.client); every wait has a timeout.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import threading
import time
from urllib.parse import urlsplit

from stvg_ros.core.answer import answer_grammar, answer_regex, think_budget_chars
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

log = logging.getLogger(__name__)

CONSTRAINTS = ("grammar", "structured_outputs", "guided_regex", "none")


class HttpBackend(VlmBackend):
    """Client of `<endpoint>/chat/completions`, e.g. endpoint `http://gpu-server:8000/v1`."""

    name = "http"

    def __init__(
        self,
        endpoint: str,
        *,
        model: str = "",
        api_key: str | None = None,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
        image_format: str = "jpeg",
        constraint: str = "grammar",
        temperature: float = 0.0,
        max_concurrent: int = 1,
        model_name: str | None = None,
    ) -> None:
        if constraint not in CONSTRAINTS:
            raise ValueError(f"constraint must be one of {', '.join(CONSTRAINTS)}, got {constraint!r}")
        parts = urlsplit(endpoint or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ModelLoadError(f"endpoint must be an http(s) URL such as http://gpu-server:8000/v1, got {endpoint!r}")
        self.endpoint = endpoint.rstrip("/")
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port
        self._base_path = parts.path.rstrip("/")
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("STVG_API_KEY", "")
        self.timeout_s, self.connect_timeout_s = float(timeout_s), float(connect_timeout_s)
        self.image_format, self.constraint, self.temperature = image_format, constraint, float(temperature)
        self.model_name = model_name or model or self.endpoint
        self._lock = SerialLock() if max_concurrent <= 1 else None
        self._loaded = False

    # ---------------------------------------------------------------- HTTP plumbing

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=timeout)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _get_json(self, path: str) -> dict:
        connection = self._connection(self.connect_timeout_s)
        try:
            connection.request("GET", self._base_path + path, headers=self._headers())
            response = connection.getresponse()
            body = response.read(1 << 20)
            if response.status != 200:
                raise ModelLoadError(f"{self.endpoint}{path} answered HTTP {response.status}: {body[:200]!r}")
            return json.loads(body)
        except ModelLoadError:
            raise
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise ModelLoadError(f"cannot reach the model server {self.endpoint}: {type(exc).__name__}: {exc}") from exc
        finally:
            connection.close()

    # ---------------------------------------------------------------- backend API

    def load(self) -> None:
        """Check that the server answers `/models` and serves the requested model."""
        if self._loaded:
            return
        listing = self._get_json("/models")
        served = [str(m.get("id", "")) for m in listing.get("data", []) if isinstance(m, dict)]
        if self.model and served and self.model not in served:
            raise ModelLoadError(f"{self.endpoint} does not serve model {self.model!r}; it serves {served}")
        if not self.model and served:
            self.model = served[0]
            self.model_name = self.model_name if self.model_name != self.endpoint else self.model
        self._loaded = True
        log.info("model server %s serves %s", self.endpoint, served or "an unnamed model")

    def close(self) -> None:
        self._loaded = False

    def _body(self, frames, timestamps_s, question, reasoning, max_new_tokens, track_ids, duration_s) -> dict:
        urls = [image_data_uri(frame, self.image_format) for frame in frames]
        body = {
            "messages": [{"role": "user", "content": clip_user_content(question, timestamps_s, urls)}],
            "max_tokens": int(max_new_tokens),
            "temperature": self.temperature,
            "stream": True,
        }
        if self.model:
            body["model"] = self.model
        spec = {"reasoning": reasoning, "track_ids": track_ids, "max_think_chars": think_budget_chars(max_new_tokens),
                "max_seconds": duration_s}
        if self.constraint == "grammar":
            body["grammar"] = answer_grammar(**spec)
        elif self.constraint == "structured_outputs":
            body["structured_outputs"] = {"regex": answer_regex(**spec)}
        elif self.constraint == "guided_regex":
            body["guided_regex"] = answer_regex(**spec)
        return body

    def _generate_locked(self, r: GenerationRequest) -> GenerationResult:
        """`generate` (VlmBackend's) once the server is checked and this request may run."""
        watch = Stopwatch()
        body = self._body(r.frames, r.timestamps_s, r.question, r.reasoning, r.max_new_tokens, r.track_ids,
                          r.duration_s)  # fmt: skip
        payload = json.dumps(body).encode("utf-8")
        result = GenerationResult("", preprocess_ms=watch.lap())
        return self._stream(payload, result, watch, r.cancel, r.on_token)

    def _stream(self, payload: bytes, result: GenerationResult, watch: Stopwatch, cancel, on_token):
        deadline = time.monotonic() + self.timeout_s
        connection = self._connection(min(self.timeout_s, max(self.connect_timeout_s, 1.0)))
        stopped = threading.Event()
        why: list[str] = []

        def watchdog() -> None:
            # Closing the socket is the only way to interrupt a blocking read from another thread.
            while not stopped.wait(0.05):
                reason = "cancelled" if is_cancelled(cancel) else "timeout" if time.monotonic() > deadline else ""
                if reason:
                    why.append(reason)
                    sock = connection.sock
                    if sock is not None:
                        try:
                            sock.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                    return

        guard = threading.Thread(target=watchdog, name="http-backend-watchdog", daemon=True)
        guard.start()
        pieces: list[str] = []
        first = True
        try:
            connection.connect()
            connection.sock.settimeout(self.timeout_s + 1.0)  # the watchdog enforces timeout_s
            connection.request("POST", self._base_path + "/chat/completions", body=payload, headers=self._headers())
            response = connection.getresponse()
            if response.status != 200:
                text = response.read(4096).decode("utf-8", "replace")
                raise GenerationError(f"{self.endpoint} answered HTTP {response.status}: {text[:300]}")
            while True:
                line = response.readline(1 << 20)
                if not line:
                    break
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise GenerationError(f"{self.endpoint} reported an error: {chunk['error']}")
                if first:
                    result.encode_ms, first = watch.lap(), False
                choice = (chunk.get("choices") or [{}])[0]
                piece = (choice.get("delta") or {}).get("content") or ""
                if piece:
                    pieces.append(piece)
                    result.completion_tokens += 1
                    if on_token is not None:
                        on_token(piece)
                if choice.get("finish_reason"):
                    result.finish_reason = choice["finish_reason"]
                usage = chunk.get("usage") or {}
                result.prompt_tokens = int(usage.get("prompt_tokens", result.prompt_tokens) or 0)
                if is_cancelled(cancel):  # stop at once; the watchdog covers a read that blocks
                    why.append("cancelled")
                    break
        except GenerationError:
            if not why:
                raise
        except TimeoutError:
            why.append("timeout")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            if not why:
                raise GenerationError(f"request to {self.endpoint} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            stopped.set()
            connection.close()
            guard.join(timeout=1.0)
        if why and why[0] == "timeout":
            raise GenerationError(f"{self.endpoint} did not answer within {self.timeout_s:.0f} s (timeout_s)")
        if why:
            result.finish_reason = "cancelled"
        if first:
            result.encode_ms = watch.lap()
        else:
            result.generate_ms = watch.lap()
        result.text = "".join(pieces)
        return result
