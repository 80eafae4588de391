"""HTTP backend against a REAL OpenAI-compatible server on loopback: llama-cpp-python's
`llama_cpp.server` serving the tiny GGUF model (started as a separate process), plus a server that
hangs and a port where nothing listens. Servers that misbehave in other ways: test_grounding_http_faults.py."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

from stvg_ros.core.answer import parse_answer
from stvg_ros.core.prompt import build_question
from stvg_ros.grounding.backends import ModelLoadError, make_backend
from stvg_ros.grounding.backends.http import HttpBackend, ServerTimeout
from stvg_ros.grounding.pipeline import GroundingConfig, GroundingPipeline, GroundingRequest
from tests.fixtures.vlm import synthetic_snapshot

QUESTION = build_question("the blue box that moves down")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_vlm):
    """`python -m llama_cpp.server` with the tiny model; yields its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(tiny_vlm.gguf_f32),
               "--clip_model_path", str(tiny_vlm.mmproj_f32), "--chat_format", "qwen2.5-vl",
               "--model_alias", "tiny-vlm", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
               "--n_threads", "1", "--n_threads_batch", "1", "--verbose", "false"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                output = process.stdout.read().decode(errors="replace")[-2000:]
                pytest.fail(f"llama_cpp.server exited with {process.returncode}:\n{output}")
            try:
                with urllib.request.urlopen(base + "/models", timeout=2) as response:
                    if json.load(response)["data"]:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not answer /v1/models within 90 s")
            time.sleep(0.3)
        yield base
    finally:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def clip():
    rng = np.random.default_rng(2)
    return [rng.integers(0, 255, (196, 252, 3), dtype=np.uint8) for _ in range(3)], [0.0, 1.0, 2.0]


@pytest.mark.parametrize("reasoning", [True, False])
def test_real_server_answers_within_the_grammar(server, clip, reasoning):
    backend = make_backend("http", endpoint=server, model="tiny-vlm", timeout_s=120)
    tokens = []
    result = backend.generate(*clip, QUESTION, reasoning=reasoning, max_new_tokens=120, track_ids=[2, 6],
                              duration_s=2.0, on_token=tokens.append)
    parsed = parse_answer(result.text, strict=False, duration=2.0, track_ids=[2, 6])
    assert parsed.ok, result.text
    assert result.text.startswith("<think>") == reasoning and "".join(tokens) == result.text
    assert result.finish_reason == "stop" and result.encode_ms > 0


def test_pipeline_over_http(server):
    backend = make_backend("http", endpoint=server, timeout_s=120)
    assert backend.model == "tiny-vlm"  # the served model, found through /models
    snapshot = synthetic_snapshot(seconds=3.0)
    outcome = GroundingPipeline(backend, GroundingConfig(num_frames=3, max_new_tokens=80)).ground(
        snapshot, GroundingRequest("the blue box", reasoning=False))
    assert outcome.success, outcome.message
    assert outcome.target_id in snapshot.track_ids() and outcome.model == "tiny-vlm"


def test_cancel_closes_the_stream(server, clip):
    backend = HttpBackend(server, timeout_s=120)
    cancel = threading.Event()
    seen = []

    def on_token(piece):
        seen.append(piece)
        if len(seen) == 2:
            cancel.set()

    result = backend.generate(*clip, QUESTION, reasoning=True, max_new_tokens=400, cancel=cancel, on_token=on_token)
    assert result.finish_reason == "cancelled" and 2 <= len(seen) < 40


def test_server_that_serves_another_model(server):
    with pytest.raises(ModelLoadError, match="does not serve model 'stvg-r1-7b'"):
        make_backend("http", endpoint=server, model="stvg-r1-7b")


def test_nothing_listening_is_a_clear_load_error():
    with pytest.raises(ModelLoadError, match=r"cannot reach the model server http://127\.0\.0\.1:\d+/v1"):
        make_backend("http", endpoint=f"http://127.0.0.1:{free_port()}/v1", connect_timeout_s=2)
    with pytest.raises(ModelLoadError, match="endpoint must be an http"):
        HttpBackend("gpu-server:8000")


def test_a_server_that_hangs_times_out(clip):
    """A socket that accepts the request and never answers: the backend gives up at timeout_s."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    held = []
    stop = threading.Event()

    def accept_and_hang():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept_and_hang, daemon=True)
    thread.start()
    try:
        backend = HttpBackend(f"http://127.0.0.1:{port}/v1", timeout_s=1.0)
        backend._loaded = True  # skip /models: the hang under test is in generation
        started = time.monotonic()
        with pytest.raises(ServerTimeout, match=r"/v1/chat/completions did not answer within 1 s \(timeout_s\)"):
            backend.generate(*clip, QUESTION, max_new_tokens=20)
        assert time.monotonic() - started < 10
        outcome = GroundingPipeline(backend, GroundingConfig(num_frames=2, timeout_s=30)).ground(
            synthetic_snapshot(seconds=2.0), GroundingRequest("the box"))
        assert not outcome.success and "did not answer within 1 s" in outcome.message
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


def test_ground_cli_over_http(server, synth_dataset, tiny_detector):
    """`stvg-ros ground --backend http`: the served model is found through /models, the note says it is tiny."""
    done = subprocess.run(
        [sys.executable, "-m", "stvg_ros.cli.main", "ground", str(synth_dataset.videos[1]), "the shape that turns",
         "--json", "--backend", "http", "--endpoint", server, "--detector", str(tiny_detector["onnx-int8"]),
         "--num-frames", "4", "--max-new-tokens", "100", "--no-reasoning"],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["success"] and result["model"] == "tiny-vlm" and result["backend"] == "http"
    assert result["raw"].startswith("<answer>") and result["target_id"] in result["track_ids"]
    # random weights: the span may miss the target's boxes, and then the answer says so
    assert result["tube"] or "empty tube" in result["message"]
    assert "meaningless" in result["note"]


@pytest.mark.parametrize("constraint", ["grammar", "structured_outputs", "guided_regex", "none"])
def test_request_body_carries_the_constraint_each_server_kind_reads(clip, constraint):
    backend = HttpBackend("http://127.0.0.1:9/v1", model="m", api_key="k", constraint=constraint)
    body = backend._body(*clip, QUESTION, False, 64, [4, 7], 2.0)
    answer = "<answer>Target ID: 7, Time range: 0.50 to 2.00</answer>"
    assert body["model"] == "m" and body["stream"] and body["max_tokens"] == 64
    assert [p["type"] for p in body["messages"][0]["content"]] == ["text"] + ["text", "image_url"] * 3
    assert backend._headers()["Authorization"] == "Bearer k"
    if constraint == "grammar":
        assert 'target-id ::= "4" | "7"' in body["grammar"] and "root ::= answer" in body["grammar"]
    elif constraint == "structured_outputs":
        assert re.fullmatch(body["structured_outputs"]["regex"], answer)
        assert not re.fullmatch(body["structured_outputs"]["regex"], answer.replace("7,", "5,"))
    elif constraint == "guided_regex":
        assert re.fullmatch(body["guided_regex"], answer)
    else:
        assert not {"grammar", "structured_outputs", "guided_regex"} & body.keys()
