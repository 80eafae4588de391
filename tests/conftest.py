"""Test-session settings: offline, loopback-only, an isolated ROS 2 domain, shared fixtures.

Expensive fixtures (synthetic scenes, the tiny detector, the tiny VLM and its GGUF files) live in
tests/fixtures/ as plugins, are built once per session and cached under .cache/test-artifacts.
"""

from __future__ import annotations

import os
import random
import socket

import pytest

# Offline and quiet, for this process and every child process the tests start.
os.environ.update(
    HF_HUB_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    YOLO_OFFLINE="1",
    YOLO_AUTOINSTALL="0",
    TOKENIZERS_PARALLELISM="false",
    PYTHONUNBUFFERED="1",
    # DDS traffic stays on this machine and in a domain of this session's own, so that test runs
    # side by side (CI, a developer's shell) never see each other's topics.
    ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
)
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(20, 99)))
# Camera images between processes (docs/perception.md): the package's Fast DDS profile for this
# process and the nodes the tests start, unless the environment chooses the transports.
from stvg_ros.nodes.dds import large_image_dds_settings

os.environ.update(large_image_dds_settings())
os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(os.path.dirname(__file__), "..", ".cache", "ultralytics"))

pytest_plugins = [
    "tests.fixtures.synth",
    "tests.fixtures.detector",
    "tests.fixtures.vlm",
]

_LOOPBACK_PREFIXES = ("127.", "::1", "localhost", "0.0.0.0")
_real_connect = socket.socket.connect
_real_getaddrinfo = socket.getaddrinfo


def _is_loopback(host) -> bool:
    return isinstance(host, str) and (host.startswith(_LOOPBACK_PREFIXES) or host == "")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Fail any test that reaches beyond loopback (a model download, a telemetry ping)."""

    def guarded_connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(host):
            raise OSError(f"network access to {host!r} is blocked in tests")
        return _real_connect(sock, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host is not None and not _is_loopback(str(host)):
            raise socket.gaierror(f"name lookup of {host!r} is blocked in tests")
        return _real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)


# --------------------------------------------------------------------------------------------
# --stress N: the whole session runs beside N busy-loop processes (a robot's CPU is never idle).
# CI runs the ROS tests once this way (.ci/run); timing-dependent code must pass on a loaded machine.

BUSY_LOOP = "import time\nwhile True:\n    time.perf_counter()\n"


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--stress", type=int, default=0, metavar="N", help="run the session beside N busy-loop processes"
    )


@pytest.fixture(scope="session", autouse=True)
def _stress(request):
    """Start `--stress` busy-loop processes for the session; stop them at its end."""
    import subprocess
    import sys

    count = int(request.config.getoption("--stress") or 0)
    loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(count)]
    try:
        yield len(loops)
    finally:
        for loop in loops:
            loop.kill()
            loop.wait(timeout=10)


def pytest_report_header(config) -> str | None:
    count = int(config.getoption("--stress") or 0)
    return f"stress: {count} busy-loop process(es) beside the tests" if count else None
