"""HTTP backend against loopback servers that misbehave each way (tests/http_server_support.py).

Every fault is one clear error line of a GenerationError subclass (ModelLoadError for `/models`)
naming the URL, what was wrong and what to do, or a well-defined answer; what is read is bounded by
max_new_tokens (content deltas) and by the byte cap; every wait ends within the backend's timeouts.
"""

from __future__ import annotations

import json
import re
import threading
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest

from stvg_ros.core.answer import parse_answer
from stvg_ros.core.prompt import build_question
from stvg_ros.grounding.backends import GenerationError, ModelLoadError
from stvg_ros.grounding.backends.http import BadServerReply, HttpBackend, ServerTimeout, ServerUnreachable
from stvg_ros.grounding.pipeline import GroundingConfig, GroundingPipeline, GroundingRequest
from tests.fixtures.vlm import synthetic_snapshot
from tests.http_server_support import SERVED_MODEL, MisbehavingServer, Reply, completion_json, sse_chunk

pytestmark = pytest.mark.timeout(60)

QUESTION = build_question("the blue box")
ANSWER = "<answer>Target ID: 2, Time range: 0.50 to 1.50</answer>"
ANSWER_PIECES = [ANSWER[i:i + 8] for i in range(0, len(ANSWER), 8)]
CLIP = ([np.full((32, 32, 3), 90, np.uint8), np.full((32, 32, 3), 160, np.uint8)], [0.0, 1.0])
DONE = b"data: [DONE]\n\n"


def make_backend(server: MisbehavingServer, **options: float) -> HttpBackend:
    """A backend with small timeouts (the faults under test end within them)."""
    return HttpBackend(server.url, **{"timeout_s": 3.0, "connect_timeout_s": 1.0, "stall_timeout_s": 1.0, **options})


def generate(backend: HttpBackend, max_new_tokens: int = 32, **options):
    return backend.generate(*CLIP, QUESTION, reasoning=False, max_new_tokens=max_new_tokens, **options)


def chat_url(server: MisbehavingServer) -> str:
    return server.url + "/chat/completions"


def one_line(caught: pytest.ExceptionInfo) -> str:
    """The error's message, checked to be one line (what a log line or a ROS result shows)."""
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def query_error(kind: type[Exception], chat: Callable[[Reply], object], max_new_tokens: int = 32,
                **options: float) -> tuple[str, str]:  # fmt: skip
    """Ask a server whose reply is `chat` once; its chat URL and the `kind` error's one-line message."""
    with MisbehavingServer(chat) as server, pytest.raises(kind) as caught:
        generate(make_backend(server, **options), max_new_tokens)
    return chat_url(server), one_line(caught)


def answer_stream(reply: Reply) -> None:
    """A well-behaved stream: a role chunk, the answer in deltas, finish_reason, usage, [DONE]."""
    reply.stream(sse_chunk(None, choices=[{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]),
                 *(sse_chunk(piece) for piece in ANSWER_PIECES), sse_chunk(None, "stop"),
                 sse_chunk(None, choices=[], usage={"prompt_tokens": 42, "completion_tokens": 8}), DONE)  # fmt: skip


def endless_stream(reply: Reply) -> None:
    """Content deltas forever (a server that ignores max_tokens), until the client goes."""
    if reply.start_stream():
        while reply.send(sse_chunk("word ")):
            pass


# ------------------------------------------------------------------------------ well-defined answers


def test_a_well_behaved_stream_is_read_whole():
    with MisbehavingServer(answer_stream) as server:
        backend = make_backend(server)
        tokens: list[str] = []
        result = generate(backend, on_token=tokens.append)
    assert backend.model == SERVED_MODEL and server.requests[0]["stream"] is True
    assert server.paths == ["/v1/models", "/v1/chat/completions"]
    assert result.text == ANSWER == "".join(tokens) and len(tokens) == len(ANSWER_PIECES)
    assert (result.finish_reason, result.completion_tokens, result.prompt_tokens) == ("stop", len(tokens), 42)
    assert parse_answer(result.text, duration=2.0, track_ids=[1, 2]).target_id == 2


def test_a_chunked_stream_like_llama_server_sends():
    def chunked(reply: Reply) -> None:
        reply.status(200, {"Content-Type": "text/event-stream", "Transfer-Encoding": "chunked"})
        for event in [*(sse_chunk(piece) for piece in ANSWER_PIECES), sse_chunk(None, "stop"), DONE]:
            reply.send(b"%x\r\n%s\r\n" % (len(event), event))
        reply.send(b"0\r\n\r\n")

    with MisbehavingServer(chunked) as server:
        result = generate(make_backend(server))
    assert (result.text, result.finish_reason) == (ANSWER, "stop")


@pytest.mark.parametrize(
    ("events", "text", "finish_reason"),
    [
        pytest.param([sse_chunk(None, choices=[]), sse_chunk(ANSWER), DONE], ANSWER, "stop", id="choices-empty"),
        pytest.param([sse_chunk(choices=[{"index": 0}]), sse_chunk(ANSWER), DONE], ANSWER, "stop",
                     id="delta-missing"),
        pytest.param([sse_chunk(None), sse_chunk(ANSWER), DONE], ANSWER, "stop", id="content-null"),
        pytest.param([sse_chunk(ANSWER[:20]), sse_chunk(None, "length"), DONE], ANSWER[:20], "length",
                     id="finish-length"),
        pytest.param([sse_chunk(ANSWER, "eos")], ANSWER, "stop", id="finish-without-done"),
        pytest.param([b": keep-alive\n\n", b"event: message\nid: 7\nretry: 100\n", sse_chunk(ANSWER), DONE],
                     ANSWER, "stop", id="comments-and-fields"),
        pytest.param([b"\r\n", b"data:" + sse_chunk(ANSWER)[6:].replace(b"\n\n", b"\r\n\r\n"), DONE], ANSWER,
                     "stop", id="crlf-no-space"),
    ],
)  # fmt: skip
def test_stream_oddities_have_a_defined_answer(events, text, finish_reason):
    with MisbehavingServer(lambda reply: reply.stream(*events)) as server:
        result = generate(make_backend(server))
    assert (result.text, result.finish_reason) == (text, finish_reason)


def test_a_server_that_ignores_stream_true_is_read_as_one_json_completion():
    """The reported bug: a plain JSON reply used to be read as an empty answer."""
    with MisbehavingServer(lambda reply: reply.json(completion_json(ANSWER))) as server:
        tokens: list[str] = []
        result = generate(make_backend(server), on_token=tokens.append)
    assert (result.text, result.finish_reason, tokens) == (ANSWER, "stop", [ANSWER])
    assert (result.prompt_tokens, result.completion_tokens) == (50, 7)
    assert parse_answer(result.text, duration=2.0, track_ids=[2]).ok


def test_a_json_completion_cut_at_length_and_pretty_printed():
    body = json.dumps(completion_json(ANSWER[:15], "length"), indent=2).encode()
    with MisbehavingServer(lambda reply: reply.body(body, content_type="text/plain")) as server:
        result = generate(make_backend(server))
    assert (result.text, result.finish_reason) == (ANSWER[:15], "length")


# ------------------------------------------------------------------------------ /models


@pytest.mark.parametrize(
    ("models", "problem"),
    [
        pytest.param(lambda r: r.json([{"id": "m"}]), "sent a list, not an object with a `data` list", id="list"),
        pytest.param(lambda r: r.json({"data": 5}), "sent `data` as a number, not a list of models", id="data-number"),
        pytest.param(lambda r: r.json({"data": ["m"]}),
                     """lists a model that is not an object with a string `id`: '"m"'""", id="entry-string"),
        pytest.param(lambda r: r.json({"data": [{"id": 3}]}),
                     """lists a model that is not an object with a string `id`: '{"id": 3}'""", id="id-number"),
        pytest.param(lambda r: r.body(b"<html>hello</html>", content_type="text/html"),
                     "sent a model list that is not UTF-8 JSON: '<html>hello</html>'", id="html"),
        pytest.param(lambda r: r.body(b'{"data": ["\xff"]}'),
                     """sent a model list that is not UTF-8 JSON: '{"data": ["\ufffd"]}'""", id="invalid-utf8"),
        pytest.param(lambda r: r.json({"detail": "Not Found"}, 404),
                     """answered HTTP 404 Not Found ('{"detail": "Not Found"}'): check the endpoint, the API base """
                     "such as http://gpu-server:8000/v1", id="404"),
        pytest.param(lambda r: r.status(307, {"Location": "https://elsewhere:8443/v1/models", "Content-Length": "0"}),
                     "answered HTTP 307 Temporary Redirect, a redirect to 'https://elsewhere:8443/v1/models'; "
                     "redirects are not followed", id="redirect"),
        pytest.param(lambda r: r.json({"error": {"message": "Loading model", "code": 503}}, 503),
                     "answered HTTP 503 Service Unavailable ('Loading model'): the server is busy or still "
                     "loading its model; try again shortly", id="503-loading"),
        pytest.param(lambda r: r.body(b"[" * (2 << 20)), "sent more than 1048576 bytes for its model list",
                     id="over-1-MiB"),
    ],
)  # fmt: skip
def test_a_bad_model_list_is_a_clear_load_error(models, problem):
    with MisbehavingServer(answer_stream, models=models) as server:
        backend = make_backend(server)
        with pytest.raises(ModelLoadError) as caught:
            backend.load()
        assert one_line(caught).startswith(f"{server.url}/models {problem}")
        # the pipeline's view: a failed answer with that message, not a traceback
        outcome = GroundingPipeline(backend, GroundingConfig(num_frames=2)).ground(
            synthetic_snapshot(seconds=2.0), GroundingRequest("the box"))
        assert not outcome.success and outcome.message == f"the model failed: {caught.value}"


def test_a_model_list_without_data_serves_an_unnamed_model():
    with MisbehavingServer(answer_stream, models=lambda r: r.json({"object": "list"})) as server:
        backend = make_backend(server)
        backend.load()
    assert backend.model == "" and backend.model_name == server.url


def test_a_model_list_that_drips_times_out():
    with MisbehavingServer(answer_stream, models=lambda r: r.status(200) and r.drip(b"{", 0.05)) as server:
        started = time.monotonic()
        with pytest.raises(ModelLoadError) as caught:
            make_backend(server, timeout_s=0.5).load()
    assert time.monotonic() - started < 2.0
    assert one_line(caught) == (f"{server.url}/models did not send its model list within 0.5 s (timeout_s); "
                                "is the server overloaded?")


# ------------------------------------------------------------------------------ HTTP errors


@pytest.mark.parametrize(
    ("status", "body", "problem"),
    [
        (404, b'{"detail":"Not Found"}', """answered HTTP 404 Not Found ('{"detail":"Not Found"}'): check the """
         "endpoint, the API base such as http://gpu-server:8000/v1"),
        (500, b'{"error": {"message": "CUDA out of memory", "type": "server_error", "code": 500}}',
         "answered HTTP 500 Internal Server Error ('CUDA out of memory'): the server failed; see its log"),
        (503, b"", "answered HTTP 503 Service Unavailable (an empty body): the server is busy or still loading its "
         "model; try again shortly"),
        (401, b'{"error": "bad key"}', "answered HTTP 401 Unauthorized ('bad key'): check the API key (api_key, or "
         "STVG_API_KEY)"),
        (500, b"x" * 100_000, f"answered HTTP 500 Internal Server Error ('{'x' * 120}...'): the server failed; see "
         "its log"),
        (400, b'{"error": {"message": "grammar parse error"}}', "answered HTTP 400 Status ('grammar parse error'): the "
         "server rejected the request"),
    ],
)  # fmt: skip
def test_an_error_status_is_one_clear_line(status, body, problem):
    url, message = query_error(BadServerReply, lambda reply: reply.body(body, status))
    assert message == f"{url} {problem}"


def test_a_redirect_is_not_followed():
    def redirect(reply: Reply) -> None:
        reply.status(307, {"Location": "http://127.0.0.1:9/v1/chat/completions", "Content-Length": "0"})

    url, message = query_error(BadServerReply, redirect)
    assert message == (f"{url} answered HTTP 307 Temporary Redirect, a redirect to "
                       "'http://127.0.0.1:9/v1/chat/completions'; redirects are not followed (they would drop the "
                       "request body): set the endpoint to the server's own URL")


def test_a_server_that_is_not_http_is_one_clear_line():
    url, message = query_error(BadServerReply, lambda reply: reply.send(b"SSH-2.0-OpenSSH_9.6\r\n"))
    assert message == f"{url} did not answer in HTTP: BadStatusLine: SSH-2.0-OpenSSH_9.6{CHECK_ENDPOINT}"


def test_timeouts_must_be_positive():
    with pytest.raises(ValueError, match=r"must be positive, got 1\.0, 5\.0, 0$"):
        HttpBackend("http://127.0.0.1:9/v1", timeout_s=1.0, stall_timeout_s=0)


# ------------------------------------------------------------------------------ malformed replies


MALFORMED = "sent a malformed chat completion: "
CHECK_ENDPOINT = "; is the endpoint an OpenAI-compatible server?"


@pytest.mark.parametrize(
    ("events", "problem"),
    [
        pytest.param([sse_chunk(choices="oops")], MALFORMED + "`choices` is a string, not a list", id="choices-string"),
        pytest.param([b"data: [1, 2]\n\n"], MALFORMED + "a stream chunk is a list, not an object", id="chunk-list"),
        pytest.param([sse_chunk(choices=["x"])], MALFORMED + "`choices[0]` is a string, not an object",
                     id="choice-string"),
        pytest.param([sse_chunk(choices=[{"delta": "hi"}])],
                     MALFORMED + "`choices[0].delta` is a string, not an object", id="delta-string"),
        pytest.param([sse_chunk(choices=[{"delta": {"content": 5}}])],
                     MALFORMED + "`delta.content` is a number, not a string", id="content-number"),
        pytest.param([sse_chunk("a", finish_reason=["stop"])], MALFORMED + "`finish_reason` is a list, not a string",
                     id="finish-list"),
        pytest.param([sse_chunk("a", usage={"prompt_tokens": "12"})],
                     MALFORMED + "`usage.prompt_tokens` is a string, not a token count", id="usage-string"),
        pytest.param([sse_chunk("a"), b"data: {not json\n\n"], "sent a stream line that is not JSON: '{not json'",
                     id="data-not-json"),
        pytest.param([b'data: {"choices": [{"delta": {"content": "\xff\xfe"}}]}\n\n'],
                     """sent bytes that are not UTF-8 (invalid start byte at byte 36: 'elta": {"content": """
                     """"\ufffd\ufffd"}}]}')""", id="invalid-utf8"),
        pytest.param([sse_chunk("a"), b"hello there\n"], "sent a stream line that is not a server-sent event: "
                     "'hello there'", id="not-sse"),
        pytest.param([sse_chunk("a"), b'error: {"code": 500, "message": "context full", "type": "server_error"}\n\n'],
                     """reported an error mid-answer: '{"code": 500, "message": "context full", "type": """
                     """"server_error"}'""", id="llama-error-line"),
        pytest.param([sse_chunk("a"), b'data: {"error": {"message": "context full"}}\n\n'],
                     "reported an error: 'context full'", id="error-chunk"),
    ],
)  # fmt: skip
def test_a_malformed_stream_is_one_clear_line(events, problem):
    url, message = query_error(BadServerReply, lambda reply: reply.stream(*events))
    assert message.startswith(f"{url} {problem}"), message
    if "error" not in problem:
        assert message.endswith(CHECK_ENDPOINT)
    if problem.startswith(MALFORMED):  # with a preview of the chunk
        assert message[len(f"{url} {problem}"):].startswith((" ('{", " ('["))


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"<html><body>Welcome to nginx!</body></html>",
         "sent a reply that is neither server-sent events nor JSON: '<html><body>Welcome to nginx!</body></html>'"),
        (b'{"choices": "none"}', MALFORMED + "`choices` is a string, not a list"),
        (b'{"choices": []}', MALFORMED + "`choices` is empty"),
        (b'{"choices": [{"delta": {"content": "a"}}]}', MALFORMED + "`choices[0].message` is null, not an object"),
        (b'{"choices": [{"message": {"content": null}}], "usage": 7}',
         MALFORMED + "`usage` is a number, not an object"),
        (b'{"error": {"message": "model not loaded"}}', "reported an error: 'model not loaded'"),
        (b"[1]", MALFORMED + "the reply is a list, not a chat-completion object"),
        (b'"\xc3\x28"', """sent bytes that are not UTF-8 (invalid continuation byte at byte 1: '"\ufffd("')"""),
    ],
)  # fmt: skip
def test_a_malformed_json_reply_is_one_clear_line(body, problem):
    url, message = query_error(BadServerReply, lambda reply: reply.body(body))
    assert message.startswith(f"{url} {problem}"), message
    if "error" not in problem:
        assert message.endswith(CHECK_ENDPOINT)


# ------------------------------------------------------------------------------ caps


def test_an_endless_stream_stops_at_max_new_tokens_and_hangs_up():
    """The reported bug: a stream without end grew to gigabytes; now max_new_tokens deltas are read."""
    with MisbehavingServer(endless_stream) as server:
        backend = make_backend(server)
        backend.load()
        tracemalloc.start()
        try:
            result = generate(backend, max_new_tokens=40)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert server.client_gone.wait(5.0)  # the backend closed the connection
    assert (result.text, result.finish_reason, result.completion_tokens) == ("word " * 40, "length", 40)
    assert peak < backend.response_cap_bytes(40)
    assert parse_answer(result.text).reason == "no <answer>...</answer> block"  # parsed as usual


def test_the_pipeline_parses_an_answer_cut_at_max_new_tokens():
    def answer_then_endless(reply: Reply) -> None:
        reply.stream(*(sse_chunk(piece) for piece in ANSWER_PIECES))
        while reply.send(sse_chunk(" more")):
            pass

    with MisbehavingServer(answer_then_endless) as server:
        snapshot = synthetic_snapshot(seconds=2.0)
        outcome = GroundingPipeline(make_backend(server), GroundingConfig(num_frames=2, max_new_tokens=len(
            ANSWER_PIECES))).ground(snapshot, GroundingRequest("the box", reasoning=False))
    assert outcome.success and outcome.target_id == 2 and outcome.finish_reason == "length"
    assert outcome.raw == ANSWER


@pytest.mark.parametrize(
    "filler",
    [
        pytest.param(b": keep-alive\n", id="comments"),
        pytest.param(sse_chunk(None), id="empty-deltas"),
        pytest.param(b"x" * 4096, id="one-line-without-newline"),
    ],
)
def test_an_endless_reply_without_tokens_stops_at_the_byte_cap(filler):
    def endless_filler(reply: Reply) -> None:
        if reply.stream(sse_chunk("a")):
            while reply.send(filler):
                pass

    with MisbehavingServer(endless_filler) as server:
        backend = make_backend(server)
        backend.load()
        tracemalloc.start()
        try:
            with pytest.raises(BadServerReply) as caught:
                generate(backend, max_new_tokens=10)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    cap = backend.response_cap_bytes(10)
    assert cap == 64 * 1024 + 2048 * 10 and peak < 3 * cap
    message = one_line(caught)
    one_line_bytes = re.search(r"(, \d+ of them in one line)?, the cap", message)[1] or ""
    assert message == (f"{chat_url(server)} sent more than {cap} bytes{one_line_bytes}, the cap for max_new_tokens=10 "
                       "(2048 per token + 65536); stopped reading: that is not a chat-completions answer")
    assert bool(one_line_bytes) == (b"\n" not in filler)


def test_a_huge_json_reply_stops_at_the_byte_cap():
    """One huge line, and the same pretty-printed over many lines."""
    for body in (json.dumps(completion_json("x" * 500_000)), json.dumps(completion_json(["x"] * 100_000), indent=1)):
        url, message = query_error(BadServerReply, lambda reply, body=body: reply.body(body.encode()), 10)
        one_line_bytes = ", 86017 of them in one line" if "\n" not in body else ""
        assert message == (f"{url} sent more than 86016 bytes{one_line_bytes}, the cap for max_new_tokens=10 (2048 "
                           "per token + 65536); stopped reading: that is not a chat-completions answer")


# ------------------------------------------------------------------------------ timeouts


def test_a_server_that_stalls_mid_stream_times_out_at_stall_timeout_s():
    with MisbehavingServer(lambda reply: reply.stream(sse_chunk("a"), sse_chunk("b")) and reply.hang()) as server:
        backend = make_backend(server, stall_timeout_s=0.3, timeout_s=20.0)
        backend.load()
        started = time.monotonic()
        with pytest.raises(ServerTimeout) as caught:
            generate(backend)
        elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 2.0
    assert one_line(caught) == (f"{server.url}/chat/completions stalled mid-answer: nothing for 0.3 s after 2 tokens "
                                "(stall_timeout_s); is the server overloaded or hung?")


def test_a_slow_drip_is_stopped_by_the_overall_deadline():
    """A byte every 0.1 s: no read ever waits stall_timeout_s, the whole request still ends at timeout_s."""
    with MisbehavingServer(lambda reply: reply.stream(sse_chunk("a")) and reply.drip(b": zzz", 0.1)) as server:
        backend = make_backend(server, stall_timeout_s=0.5, timeout_s=1.0)
        backend.load()
        started = time.monotonic()
        with pytest.raises(ServerTimeout) as caught:
            generate(backend)
        elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 2.5
    assert one_line(caught) == (f"{server.url}/chat/completions did not finish its answer within 1 s (timeout_s) "
                                "(1 tokens so far); is the server overloaded, or sending something else?")


def test_a_drip_before_the_status_line_does_not_answer():
    with MisbehavingServer(lambda reply: reply.drip(b"HTTP/1.1 200 OK\r\n", 0.1)) as server:
        backend = make_backend(server, timeout_s=0.6)
        backend.load()
        with pytest.raises(ServerTimeout) as caught:
            generate(backend)
    assert one_line(caught) == (f"{server.url}/chat/completions did not answer within 0.6 s (timeout_s); "
                                "is the server overloaded? raise timeout_s for long prompts")


def test_cancel_during_an_endless_stream():
    cancel = threading.Event()

    def cancel_after_three(piece: str) -> None:
        seen.append(piece)
        if len(seen) == 3:
            cancel.set()

    seen: list[str] = []
    with MisbehavingServer(endless_stream) as server:
        result = generate(make_backend(server), max_new_tokens=10_000, cancel=cancel, on_token=cancel_after_three)
        assert server.client_gone.wait(5.0)
    assert (result.finish_reason, result.text) == ("cancelled", "word " * 3)


# ------------------------------------------------------------------------------ a server that dies


CRASHED = "; the server may have crashed or be restarting (the next query connects again)"


@pytest.mark.parametrize(
    ("death", "problem"),
    [
        pytest.param(lambda reply: reply.stream(sse_chunk("a"), sse_chunk("b")),
                     "closed the connection mid-answer after 2 tokens (no finish_reason, no [DONE])", id="closed"),
        pytest.param(lambda reply: reply.stream(sse_chunk("a")) and reply.reset(),
                     "dropped the connection mid-answer (ConnectionResetError)", id="reset"),
        pytest.param(lambda reply: reply.status(200, {"Transfer-Encoding": "chunked"}) and reply.send(b"ff\r\ndata:"),
                     "dropped the connection mid-answer (IncompleteRead)", id="chunked-cut"),
        pytest.param(lambda reply: None, "closed the connection without answering", id="no-status-line"),
        pytest.param(lambda reply: reply.start_stream(), "closed the connection before sending an answer",
                     id="empty-stream"),
    ],
)  # fmt: skip
def test_a_server_that_dies_mid_query_is_a_clear_failure(death, problem):
    url, message = query_error(ServerUnreachable, death)
    assert message == f"{url} {problem}{CRASHED}"


def test_the_next_query_works_once_the_server_is_back():
    """Stop the server: a clear failure (a failed answer in the pipeline); restart it on its port: answers again."""
    server = MisbehavingServer(answer_stream)
    backend = make_backend(server)
    pipeline = GroundingPipeline(backend, GroundingConfig(num_frames=2))
    snapshot = synthetic_snapshot(seconds=2.0)
    try:
        assert generate(backend).text == ANSWER
        server.stop()
        with pytest.raises(ServerUnreachable) as caught:
            generate(backend)
        assert one_line(caught) == (f"cannot connect to {chat_url(server)}: ConnectionRefusedError: [Errno 111] "
                                    "Connection refused; is the model server running? (the next query connects again)")
        outcome = pipeline.ground(snapshot, GroundingRequest("the box", reasoning=False))
        assert not outcome.success and outcome.finish_reason == "error"
        assert outcome.message == (f"the model failed: cannot reach the model server {server.url}: "
                                   "ConnectionRefusedError: [Errno 111] Connection refused; is it running, and is the "
                                   "endpoint right?")
        server = MisbehavingServer(answer_stream, port=server.port)
        assert generate(backend).text == ANSWER
        outcome = pipeline.ground(snapshot, GroundingRequest("the box", reasoning=False))
        assert outcome.success and outcome.target_id == 2, outcome.message
    finally:
        server.stop()


def test_every_fault_type_is_a_generation_error():
    assert all(issubclass(kind, GenerationError) for kind in (BadServerReply, ServerTimeout, ServerUnreachable))
