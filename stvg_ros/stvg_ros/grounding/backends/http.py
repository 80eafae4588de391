"""HTTP backend: an OpenAI-compatible chat-completions server (vLLM, llama-server, llama_cpp.server).

A robot sends its clip to a GPU server: the question, then each frame as `Frame at t s:` + an
`image_url` data URI, streamed back with server-sent events (so cancel works between tokens).
The answer is constrained where the server supports it: `constraint="grammar"` sends the GBNF
(llama.cpp servers), `"structured_outputs"` / `"guided_regex"` send the regex twin (vLLM, new and
old spelling), `"none"` sends nothing. Frames travel as JPEG by default (small; the official
marker videos were lossy mp4 too); `image_format="png"` sends them lossless. Standard library only (http.client).

The server is not trusted: every reply is checked for its shape (a wrong one is one clear error line,
never a traceback), a server that ignores `stream: true` and sends one JSON completion is read as
such, and what is read is bounded: at most `max_new_tokens` content deltas (then the connection is
closed and the answer so far is used, finish_reason "length") and at most `response_cap_bytes`
bytes. Every wait has a timeout: `connect_timeout_s` to connect, `stall_timeout_s` between stream
lines once the answer has begun, and `timeout_s` for the whole request (a server that drips a byte
a second is stopped there too). Failures raise GenerationError subclasses (ServerUnreachable,
ServerTimeout, BadServerReply) that the pipeline reports as a failed answer, or ModelLoadError from
`load()`; the next query connects afresh, so it works again once the server is back.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from stvg_ros.core.answer import answer_grammar, answer_regex, think_budget_chars
from stvg_ros.core.prompt import clip_user_content
from stvg_ros.grounding.backends.base import (
    CancelToken,
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

#: The byte cap of a chat-completions reply: generous per streamed token (llama-server's and vLLM's
#: chunks are 200-400 bytes) plus room for headers, the role chunk, usage and timings.
REPLY_BYTES_PER_TOKEN = 2048
REPLY_OVERHEAD_BYTES = 64 * 1024
#: The byte caps of a `/models` listing and of an error reply's body.
MODELS_REPLY_MAX_BYTES = 1 << 20
ERROR_BODY_MAX_BYTES = 4096
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
#: Server-sent-event lines that carry nothing for us (comments start with ":").
IGNORED_SSE_FIELDS = (b"event:", b"id:", b"retry:")


class ServerUnreachable(GenerationError):
    """The model server refused the connection or dropped it mid-answer (down, crashed, restarting)."""


class ServerTimeout(GenerationError):
    """The model server did not answer, stalled mid-answer, or did not finish within timeout_s."""


class BadServerReply(GenerationError):
    """The model server's reply is not a chat completion: an error status, a wrong shape, not JSON, too long."""


def _preview(data: bytes | str, limit: int = 120) -> str:
    """`data` as one short printable line (for error messages)."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _describe(exc: BaseException) -> str:
    """An exception as `Type: message`, on one short line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text if len(text) <= 200 else text[:200] + '...'}"


def _kind(value: object) -> str:
    """`value`'s JSON type name, as an error message says it."""
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)  # fmt: skip


def _error_message(reply: object) -> str | None:
    """The message of an OpenAI-style `{"error": {"message": ...}}` (or `{"error": "..."}`), if any."""
    error = reply.get("error") if isinstance(reply, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return _preview(error["message"], 200)
    if isinstance(error, str):
        return _preview(error, 200)
    return None


def _error_detail(body: bytes) -> str:
    """The error message of an error reply's body, else a preview of the body."""
    try:
        reply = json.loads(body)
    except ValueError:
        reply = None
    return _error_message(reply) or (_preview(body) if body.strip() else "an empty body")


def _status_problem(url: str, response: http.client.HTTPResponse, body: bytes) -> str:
    """One line saying what a non-200 status from `url` means and what to do."""
    status = response.status
    reason = " ".join(str(response.reason).split())[:80]
    head = f"{url} answered HTTP {status} {reason}".rstrip()
    if status in REDIRECT_STATUSES:
        where = response.getheader("Location") or "nowhere"
        return (f"{head}, a redirect to {_preview(where, 200)}; redirects are not followed "
                "(they would drop the request body): set the endpoint to the server's own URL")
    detail = _error_detail(body)
    if status == 404:
        return f"{head} ({detail}): check the endpoint, the API base such as http://gpu-server:8000/v1"
    if status in (401, 403):
        return f"{head} ({detail}): check the API key (api_key, or STVG_API_KEY)"
    if status == 503:
        return f"{head} ({detail}): the server is busy or still loading its model; try again shortly"
    if status >= 500:
        return f"{head} ({detail}): the server failed; see its log"
    return f"{head} ({detail}): the server rejected the request"


def _check_models(url: str, listing: object) -> list[str]:
    """The model ids of a `/models` reply; raises ModelLoadError unless it is `{"data": [{"id": ...}, ...]}`."""
    hint = "is the endpoint an OpenAI-compatible server (its API base, such as http://gpu-server:8000/v1)?"
    if not isinstance(listing, dict):
        raise ModelLoadError(f"{url} sent {_kind(listing)}, not an object with a `data` list; {hint}")
    entries = listing.get("data", [])
    if not isinstance(entries, list):
        raise ModelLoadError(f"{url} sent `data` as {_kind(entries)}, not a list of models; {hint}")
    served = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise ModelLoadError(f"{url} lists a model that is not an object with a string `id`: "
                                 f"{_preview(json.dumps(entry))}; {hint}")
        served.append(entry["id"])
    return served


class _Watchdog:
    """Shuts `sock` (set once connected) down once `cancel` is set or `deadline` passes.

    Shutting the socket down is the only way to interrupt a blocking read from another thread: the
    read then returns end-of-file or fails, and `reason` ("cancelled" or "timeout") says why. (The
    socket is kept here: http.client forgets it once a reply says `Connection: close`.)
    """

    def __init__(self, deadline: float, cancel: CancelToken | None) -> None:
        self.reason = ""
        self.sock: socket.socket | None = None
        self._deadline, self._cancel = deadline, cancel
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="http-backend-watchdog", daemon=True)

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopped.set()
        self._thread.join(timeout=1.0)

    def _watch(self) -> None:
        while not self._stopped.wait(0.05):
            if not self.reason:
                if is_cancelled(self._cancel):
                    self.reason = "cancelled"
                elif time.monotonic() > self._deadline:
                    self.reason = "timeout"
            sock = self.sock
            if self.reason and sock is not None:  # before the socket exists: wait for it (connect has its timeout)
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return


class _ReplyReader:
    """Reads one chat-completions reply within a byte cap and turns it into a GenerationResult."""

    def __init__(self, url: str, response: http.client.HTTPResponse, cap: int, max_new_tokens: int,
                 result: GenerationResult, watch: Stopwatch, cancel: CancelToken | None,
                 on_token: Callable[[str], None] | None, sock: socket.socket,
                 stall_timeout_s: float) -> None:  # fmt: skip
        self.url, self.response, self.cap, self.max_new_tokens = url, response, cap, max_new_tokens
        self.result, self.watch, self.cancel, self.on_token = result, watch, cancel, on_token
        self.sock, self.stall_timeout_s = sock, stall_timeout_s
        self.bytes_read = 0
        self.answer_started = False  # a first `data:` line came (prefill is over; stalls count from here)
        self.pieces: list[str] = []

    # ------------------------------------------------------------ reading, bounded

    def _line(self) -> bytes:
        """The next line (b"" at end of file); raises BadServerReply past the byte cap."""
        line = self.response.readline(self.cap - self.bytes_read + 1)
        self.bytes_read += len(line)
        if self.bytes_read > self.cap:
            self._over_cap(len(line))
        return line

    def _over_cap(self, last_line_bytes: int) -> None:
        one_line = f", {last_line_bytes} of them in one line" if last_line_bytes > REPLY_OVERHEAD_BYTES else ""
        raise BadServerReply(
            f"{self.url} sent more than {self.cap} bytes{one_line}, the cap for max_new_tokens={self.max_new_tokens} "
            f"({REPLY_BYTES_PER_TOKEN} per token + {REPLY_OVERHEAD_BYTES}); stopped reading: that is not a "
            "chat-completions answer")

    def _started(self) -> None:
        """The first stream line came: from now on a pause longer than stall_timeout_s is a stall."""
        if not self.answer_started:
            self.answer_started = True
            self.result.encode_ms = self.watch.lap()
            self.sock.settimeout(self.stall_timeout_s)

    def read(self) -> GenerationResult:
        """Read the reply: server-sent events, or one JSON completion from a server that ignores `stream`."""
        first = b""
        while not first.strip():
            first = self._line()
            if not first:
                raise ServerUnreachable(f"{self.url} closed the connection before sending an answer; the server "
                                        "may have crashed or be restarting (the next query connects again)")
        if first.lstrip().startswith((b"data:", b":", b"error:", *IGNORED_SSE_FIELDS)):
            return self._read_events(first)
        return self._read_json(first)

    # ------------------------------------------------------------ one JSON completion

    def _read_json(self, first: bytes) -> GenerationResult:
        body = first + self.response.read(self.cap - self.bytes_read + 1)
        self.bytes_read += len(body) - len(first)
        if self.bytes_read > self.cap:
            self._over_cap(0)
        reply = self._decode(body, "a reply that is neither server-sent events nor JSON")
        if not isinstance(reply, dict):
            raise self._shape(f"the reply is {_kind(reply)}, not a chat-completion object", body)
        self._raise_reported_error(reply)
        choices = reply.get("choices")
        if not isinstance(choices, list):
            raise self._shape(f"`choices` is {_kind(choices)}, not a list", body)
        if not choices:
            raise self._shape("`choices` is empty", body)
        choice = self._object(choices[0], "`choices[0]`", body)
        message = self._object(choice.get("message"), "`choices[0].message`", body)
        text = self._optional_str(message.get("content"), "`message.content`", body)
        self._finish(choice.get("finish_reason"), body)
        usage = self._usage(reply.get("usage"), body)
        self.result.prompt_tokens = usage.get("prompt_tokens", 0)
        self.result.completion_tokens = usage.get("completion_tokens", 0)  # the server's count: the text is not cut
        self.result.encode_ms = self.watch.lap()
        if text:
            self.pieces.append(text)
            if self.on_token is not None:
                self.on_token(text)
        self.result.text = text
        return self.result

    # ------------------------------------------------------------ server-sent events

    def _read_events(self, first: bytes) -> GenerationResult:
        result, line, done, finished = self.result, first, False, False
        while True:
            line = line.strip()
            if line.startswith(b"data:"):
                self._started()
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                finish = self._chunk(data)
                finished = finished or finish is not None
                if is_cancelled(self.cancel):  # stop at once; the watchdog covers a read that blocks
                    result.finish_reason = "cancelled"
                    break
                if result.completion_tokens >= self.max_new_tokens:
                    result.finish_reason = finish or "length"  # the client-side cap: stop reading here
                    finished = True
                    break
            elif line.startswith(b"error:"):  # llama-server's way of failing mid-stream
                raise BadServerReply(f"{self.url} reported an error mid-answer: {_error_detail(line[6:])}")
            elif line and not line.startswith((b":", *IGNORED_SSE_FIELDS)):
                raise BadServerReply(f"{self.url} sent a stream line that is not a server-sent event: "
                                     f"{_preview(line)}; is the endpoint an OpenAI-compatible server?")
            line = self._line()
            if not line:
                break
        if not (done or finished or result.finish_reason == "cancelled"):
            raise ServerUnreachable(
                f"{self.url} closed the connection mid-answer after {result.completion_tokens} tokens (no "
                "finish_reason, no [DONE]); the server may have crashed or be restarting (the next query "
                "connects again)")
        result.generate_ms = self.watch.lap()
        result.text = "".join(self.pieces)
        return result

    def _chunk(self, data: bytes) -> str | None:
        """Take one `data:` chunk; returns its finish_reason ("stop"/"length") or None."""
        chunk = self._decode(data, "a stream line that is not JSON")
        if not isinstance(chunk, dict):
            raise self._shape(f"a stream chunk is {_kind(chunk)}, not an object", data)
        self._raise_reported_error(chunk)
        usage = self._usage(chunk.get("usage"), data)
        if "prompt_tokens" in usage:
            self.result.prompt_tokens = usage["prompt_tokens"]
        choices = chunk.get("choices")
        if choices is None:
            choices = []
        if not isinstance(choices, list):
            raise self._shape(f"`choices` is {_kind(choices)}, not a list", data)
        if not choices:  # a usage-only chunk (vLLM's stream_options.include_usage)
            return None
        choice = self._object(choices[0], "`choices[0]`", data)
        delta = choice.get("delta")
        delta = {} if delta is None else self._object(delta, "`choices[0].delta`", data)
        piece = self._optional_str(delta.get("content"), "`delta.content`", data)
        if piece:
            self.pieces.append(piece)
            self.result.completion_tokens += 1
            if self.on_token is not None:
                self.on_token(piece)
        return self._finish(choice.get("finish_reason"), data)

    # ------------------------------------------------------------ shape checks

    def _decode(self, data: bytes, what: str) -> object:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadServerReply(f"{self.url} sent bytes that are not UTF-8 ({exc.reason} at byte {exc.start}: "
                                 f"{_preview(data[max(0, exc.start - 20):exc.start + 20])}); "
                                 "is the endpoint an OpenAI-compatible server?") from exc
        try:
            return json.loads(text)
        except ValueError as exc:
            raise BadServerReply(f"{self.url} sent {what}: {_preview(text)}; "
                                 "is the endpoint an OpenAI-compatible server?") from exc

    def _shape(self, problem: str, data: bytes) -> BadServerReply:
        return BadServerReply(f"{self.url} sent a malformed chat completion: {problem} ({_preview(data)}); "
                              "is the endpoint an OpenAI-compatible server?")

    def _object(self, value: object, name: str, data: bytes) -> dict:
        if not isinstance(value, dict):
            raise self._shape(f"{name} is {_kind(value)}, not an object", data)
        return value

    def _optional_str(self, value: object, name: str, data: bytes) -> str:
        if value is not None and not isinstance(value, str):
            raise self._shape(f"{name} is {_kind(value)}, not a string", data)
        return value or ""

    def _finish(self, value: object, data: bytes) -> str | None:
        """A choice's finish_reason: None while it goes on, "length" when the server cut it, else "stop"."""
        reason = self._optional_str(value, "`finish_reason`", data)
        if not reason:
            return None
        self.result.finish_reason = "length" if reason == "length" else "stop"
        return self.result.finish_reason

    def _usage(self, value: object, data: bytes) -> dict[str, int]:
        """The token counts of a `usage` object (absent or null: none)."""
        if value is None:
            return {}
        usage = self._object(value, "`usage`", data)
        counts = {}
        for key in ("prompt_tokens", "completion_tokens"):
            count = usage.get(key)
            if count is None:
                continue
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise self._shape(f"`usage.{key}` is {_kind(count)}, not a token count", data)
            counts[key] = count
        return counts

    def _raise_reported_error(self, reply: dict) -> None:
        if reply.get("error") is not None:
            detail = _error_message(reply) or _preview(json.dumps(reply["error"]))
            raise BadServerReply(f"{self.url} reported an error: {detail}")


class HttpBackend(VlmBackend):
    """Client of `<endpoint>/chat/completions`, e.g. endpoint `http://gpu-server:8000/v1`.

    timeout_s bounds a whole request; connect_timeout_s a connection (and each read of `/models`);
    stall_timeout_s a pause between stream lines once the answer has begun (prefill may take longer).
    """

    name = "http"

    def __init__(
        self,
        endpoint: str,
        *,
        model: str = "",
        api_key: str | None = None,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
        stall_timeout_s: float = 30.0,
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
        self.stall_timeout_s = float(stall_timeout_s)
        if min(self.timeout_s, self.connect_timeout_s, self.stall_timeout_s) <= 0:
            raise ValueError(f"timeout_s, connect_timeout_s and stall_timeout_s must be positive, got "
                             f"{timeout_s}, {connect_timeout_s}, {stall_timeout_s}")
        self.image_format, self.constraint, self.temperature = image_format, constraint, float(temperature)
        self.model_name = model_name or model or self.endpoint
        self._lock = SerialLock() if max_concurrent <= 1 else None
        self._loaded = False

    @staticmethod
    def response_cap_bytes(max_new_tokens: int) -> int:
        """The most bytes read of one chat-completions reply asked for `max_new_tokens` tokens."""
        return REPLY_OVERHEAD_BYTES + REPLY_BYTES_PER_TOKEN * max(1, int(max_new_tokens))

    # ---------------------------------------------------------------- HTTP plumbing

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        return cls(self._host, self._port, timeout=timeout)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _get_json(self, path: str) -> object:
        """GET `path` (within timeout_s in all) and its JSON; raises ModelLoadError saying what went wrong."""
        url = self.endpoint + path
        connection = self._connection(self.connect_timeout_s)
        with _Watchdog(time.monotonic() + self.timeout_s, None) as watchdog:
            try:
                connection.connect()
                watchdog.sock = connection.sock
                connection.request("GET", self._base_path + path, headers=self._headers())
                response = connection.getresponse()
                if response.status != 200:
                    raise ModelLoadError(_status_problem(url, response, response.read(ERROR_BODY_MAX_BYTES)))
                body = response.read(MODELS_REPLY_MAX_BYTES + 1)
            except ModelLoadError:
                raise
            except (OSError, http.client.HTTPException) as exc:
                if watchdog.reason:
                    raise ModelLoadError(f"{url} did not send its model list within {self.timeout_s:g} s "
                                         "(timeout_s); is the server overloaded?") from exc
                raise ModelLoadError(f"cannot reach the model server {self.endpoint}: {_describe(exc)}; "
                                     "is it running, and is the endpoint right?") from exc
            finally:
                connection.close()
        if watchdog.reason:
            raise ModelLoadError(f"{url} did not send its model list within {self.timeout_s:g} s (timeout_s); "
                                 "is the server overloaded?")
        if len(body) > MODELS_REPLY_MAX_BYTES:
            raise ModelLoadError(f"{url} sent more than {MODELS_REPLY_MAX_BYTES} bytes for its model list; "
                                 "is the endpoint an OpenAI-compatible server?")
        try:
            return json.loads(body.decode("utf-8"))
        except ValueError as exc:  # UnicodeDecodeError too
            raise ModelLoadError(f"{url} sent a model list that is not UTF-8 JSON: {_preview(body)}; is the "
                                 "endpoint an OpenAI-compatible server (e.g. http://gpu-server:8000/v1)?") from exc

    # ---------------------------------------------------------------- backend API

    def load(self) -> None:
        """Check that the server answers `/models` and serves the requested model."""
        if self._loaded:
            return
        served = _check_models(self.endpoint + "/models", self._get_json("/models"))
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
        try:
            return self._post(payload, result, watch, r)
        except ServerUnreachable:
            self._loaded = False  # the server may come back serving another model: check /models again
            raise

    def _post(self, payload: bytes, result: GenerationResult, watch: Stopwatch,
              r: GenerationRequest) -> GenerationResult:  # fmt: skip
        """POST the request and read the reply, within timeout_s; raises a GenerationError subclass."""
        url = self.endpoint + "/chat/completions"
        connection = self._connection(min(self.timeout_s, max(self.connect_timeout_s, 1.0)))
        reader: _ReplyReader | None = None
        with _Watchdog(time.monotonic() + self.timeout_s, r.cancel) as watchdog:
            try:
                try:
                    connection.connect()
                except OSError as exc:
                    if watchdog.reason:
                        raise
                    raise ServerUnreachable(f"cannot connect to {url}: {_describe(exc)}; is the model "
                                            "server running? (the next query connects again)") from exc
                watchdog.sock = connection.sock
                connection.sock.settimeout(self.timeout_s + 1.0)  # the watchdog enforces timeout_s
                connection.request("POST", self._base_path + "/chat/completions", body=payload,
                                   headers=self._headers())  # fmt: skip
                response = connection.getresponse()
                if response.status != 200:
                    raise BadServerReply(_status_problem(url, response, response.read(ERROR_BODY_MAX_BYTES)))
                reader = _ReplyReader(url, response, self.response_cap_bytes(r.max_new_tokens), r.max_new_tokens,
                                      result, watch, r.cancel, r.on_token, watchdog.sock,
                                      self.stall_timeout_s)  # fmt: skip
                return reader.read()
            except GenerationError:
                if not watchdog.reason:
                    raise
            except TimeoutError as exc:  # a socket timeout: stall_timeout_s once the answer began
                if not watchdog.reason:
                    raise ServerTimeout(f"{url} stalled mid-answer: nothing for {self.stall_timeout_s:g} s after "
                                        f"{result.completion_tokens} tokens (stall_timeout_s); is the server "
                                        "overloaded or hung?") from exc
            except http.client.RemoteDisconnected as exc:
                if not watchdog.reason:
                    raise ServerUnreachable(f"{url} closed the connection without answering; the server may have "
                                            "crashed or be restarting (the next query connects again)") from exc
            except (http.client.IncompleteRead, ConnectionError) as exc:
                if not watchdog.reason:
                    raise ServerUnreachable(f"{url} dropped the connection mid-answer ({type(exc).__name__}); the "
                                            "server may have crashed or be restarting (the next query connects "
                                            "again)") from exc
            except (OSError, http.client.HTTPException) as exc:
                if not watchdog.reason:
                    raise BadServerReply(f"{url} did not answer in HTTP: {_describe(exc)}; is the "
                                         "endpoint an OpenAI-compatible server?") from exc
            finally:
                connection.close()
        if watchdog.reason == "cancelled":
            result.finish_reason = "cancelled"
            result.text = "".join(reader.pieces) if reader is not None else ""
            return result
        if reader is None or not reader.answer_started:
            raise ServerTimeout(f"{url} did not answer within {self.timeout_s:g} s (timeout_s); is the "
                                "server overloaded? raise timeout_s for long prompts")
        raise ServerTimeout(f"{url} did not finish its answer within {self.timeout_s:g} s (timeout_s) "
                            f"({result.completion_tokens} tokens so far); is the server overloaded, or sending "
                            "something else?")
