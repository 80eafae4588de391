"""A loopback HTTP server that misbehaves on purpose, for the HTTP backend's tests (standard library only).

    def endless(reply: Reply) -> None:
        reply.start_stream()
        while reply.send(sse_chunk("x")):
            pass

    with MisbehavingServer(endless) as server:
        backend = HttpBackend(server.url, timeout_s=2)

The server listens on 127.0.0.1 (port 0: a free one, or a given port to restart on), serves each
connection in a daemon thread, and answers `GET <base>/models` and `POST <base>/chat/completions`
with a behaviour: a function that writes raw bytes (status line included) through a `Reply`, so it
can break HTTP in any way. Every wait in it has a timeout; `stop()` ends endless behaviours.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: What `GET /models` answers unless a test says otherwise.
SERVED_MODEL = "test-model"
#: The reason phrases of the status lines the tests send (any other code says "Status").
REASONS = {200: "OK", 301: "Moved Permanently", 307: "Temporary Redirect", 401: "Unauthorized", 404: "Not Found",
           500: "Internal Server Error", 503: "Service Unavailable"}


def sse_chunk(content: str | None = None, finish_reason: str | None = None, **fields: object) -> bytes:
    """One `data:` event of an OpenAI chat-completions stream (`fields` replace the chunk's own)."""
    chunk: dict[str, object] = {
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "model": SERVED_MODEL,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish_reason}],
    }  # fmt: skip
    chunk.update(fields)
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def completion_json(content: str | None, finish_reason: str = "stop", **fields: object) -> dict:
    """A whole (non-streamed) chat completion, as a server that ignores `stream: true` sends it."""
    reply: dict[str, object] = {
        "id": "chatcmpl-1", "object": "chat.completion", "model": SERVED_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57},
    }  # fmt: skip
    reply.update(fields)
    return reply


class Reply:
    """Writes one response, byte by byte if need be; `send` says False once the client has gone."""

    def __init__(self, handler: BaseHTTPRequestHandler, server: MisbehavingServer) -> None:
        self.handler, self.server = handler, server

    def send(self, data: bytes) -> bool:
        """Write `data`; False (and `server.client_gone` set) when the client closed the connection."""
        if self.server.stopping.is_set():
            return False
        try:
            self.handler.wfile.write(data)
            self.handler.wfile.flush()
        except OSError:
            self.server.client_gone.set()
            return False
        return True

    def status(self, code: int = 200, headers: dict[str, str] | None = None) -> bool:
        """The status line and headers (close-delimited body unless `headers` say otherwise)."""
        reason = REASONS.get(code, "Status")
        lines = [f"HTTP/1.1 {code} {reason}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        return self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def start_stream(self) -> bool:
        """A 200 with `text/event-stream`, the body ending when the connection closes."""
        return self.status(200, {"Content-Type": "text/event-stream"})

    def stream(self, *events: bytes) -> bool:
        """A whole close-delimited event stream."""
        return self.start_stream() and all(self.send(event) for event in events)

    def json(self, reply: object, code: int = 200) -> bool:
        """A JSON body with its Content-Length."""
        body = json.dumps(reply).encode()
        return self.body(body, code, "application/json")

    def body(self, body: bytes, code: int = 200, content_type: str = "application/json") -> bool:
        """`body` with its Content-Type and Content-Length."""
        return self.status(code, {"Content-Type": content_type, "Content-Length": str(len(body))}) and self.send(body)

    def drip(self, data: bytes, interval_s: float) -> None:
        """Send `data` one byte per `interval_s`, forever (until the client goes or the server stops)."""
        position = 0
        while self.send(data[position:position + 1]):
            position = (position + 1) % len(data)
            if self.server.stopping.wait(interval_s):
                return

    def hang(self) -> None:
        """Send nothing more until the server stops (at most 30 s)."""
        self.server.stopping.wait(30.0)

    def reset(self) -> None:
        """Abort the connection: a TCP reset, as from a server process that crashed."""
        self.handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.handler.connection.close()


Behaviour = Callable[[Reply], object]


def models_listing(reply: Reply) -> None:
    """A well-behaved `/models` answer."""
    reply.json({"object": "list", "data": [{"id": SERVED_MODEL, "object": "model"}]})


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        owner.paths.append(self.path)
        self.close_connection = True
        owner.models(Reply(self, owner))

    def do_POST(self) -> None:
        owner = self.server.owner
        owner.paths.append(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        owner.requests.append(json.loads(body))
        self.close_connection = True
        owner.chat(Reply(self, owner))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: MisbehavingServer


class MisbehavingServer:
    """An OpenAI-compatible server on 127.0.0.1 whose `/chat/completions` reply is `chat`.

    `url` is its API base (`http://127.0.0.1:<port>/v1`); `requests` the JSON bodies it got, `paths`
    the request paths; `client_gone` is set once a write failed because the client closed the
    connection.
    """

    def __init__(self, chat: Behaviour, *, models: Behaviour = models_listing, port: int = 0) -> None:
        self.chat, self.models = chat, models
        self.requests: list[dict] = []
        self.paths: list[str] = []
        self.client_gone = threading.Event()
        self.stopping = threading.Event()
        self._httpd = _Server(("127.0.0.1", port), _Handler)
        self._httpd.owner = self
        self.port: int = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"misbehaving-server-{self.port}", daemon=True)  # fmt: skip
        self._thread.start()

    def stop(self) -> None:
        """Stop listening (the port refuses connections afterwards) and end every behaviour's loop."""
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> MisbehavingServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
