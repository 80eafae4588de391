"""Model registry (models/*.yaml manifests) and `stvg-ros models list|pull|verify|path`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from stvg_ros.core import model_registry as registry
from stvg_ros.core.paths import PACKAGED_MANIFESTS

REPO = Path(__file__).resolve().parents[1]
URL = "https://example.org/weights/hosted.bin"


def build_fake_model(out_dir: Path, manifest=None) -> None:
    """Build hook used by the `built-test-model` manifest below."""
    (Path(out_dir) / "built.bin").write_bytes(b"built here")


@pytest.fixture
def models_env(tmp_path, monkeypatch):
    """A manifest folder and a cache of this test's own; returns the environment for child processes."""
    manifests, cache = tmp_path / "manifests", tmp_path / "cache"
    manifests.mkdir()
    local = tmp_path / "local.bin"
    local.write_bytes(b"local weights")
    digest = hashlib.sha256(b"local weights").hexdigest()
    (manifests / "hosted.yaml").write_text(
        "name: hosted-test-model\nkind: detector\ndescription: hosted file\nfiles:\n"
        f"  - name: hosted.bin\n    sha256: {'0' * 64}\n    source: {{url: {URL}}}\n"
    )
    (manifests / "built.yaml").write_text(
        "name: built-test-model\nkind: detector\nfiles:\n"
        "  - name: built.bin\n    format: pt\n    source: {build: 'tests.test_models_cli:build_fake_model'}\n"
    )
    (manifests / "pinned.yaml").write_text(
        f"name: pinned-test-model\nfiles:\n  - name: local.bin\n    sha256: {digest}\n    source: {{}}\n"
    )
    env = {"STVG_MODELS_PATH": str(manifests), "STVG_CACHE": str(cache)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("STVG_OFFLINE", raising=False)
    return {"env": env, "manifests": manifests, "cache": cache, "local": local}


def stvg_ros(*args: str, env: dict) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "stvg_ros.cli.main", "models", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, **env}
    )


def test_packaged_manifests_parse_and_name_their_files():
    manifests = registry.load_manifests([PACKAGED_MANIFESTS])
    assert {"yolo-synth-tiny", "yolo11n", "yolo11s"} <= set(manifests)
    tiny = manifests["yolo-synth-tiny"]
    assert tiny.kind == "detector" and {f.format for f in tiny.files} == {"pt", "onnx", "onnx-int8"}


def test_a_local_path_is_used_as_is(models_env):
    assert registry.resolve(models_env["local"]) == models_env["local"].resolve()


def test_the_models_folder_is_stvg_ros_models_else_the_user_cache_never_the_source_tree(monkeypatch, tmp_path):
    from stvg_ros.core.paths import manifest_dirs, models_home

    for name in ("STVG_ROS_MODELS", "STVG_CACHE", "STVG_MODELS_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models_home() == tmp_path / "xdg" / "stvg_ros" / "models"
    assert registry.model_cache_dir("yolo11n") == tmp_path / "xdg" / "stvg_ros" / "models" / "yolo11n"
    monkeypatch.setenv("STVG_ROS_MODELS", str(tmp_path / "robot-models"))
    assert models_home() == tmp_path / "robot-models"
    assert manifest_dirs() == [tmp_path / "robot-models", PACKAGED_MANIFESTS]  # exported manifests win
    with pytest.raises(registry.ModelFileMissing, match=str(tmp_path / "robot-models" / "yolo11n")):
        registry.resolve("yolo11n")
    monkeypatch.delenv("STVG_ROS_MODELS")
    monkeypatch.setenv("XDG_CACHE_HOME", "/proc/no-home")  # no writable home: a per-user temporary folder
    assert models_home() == Path(tempfile.gettempdir()) / f"stvg_ros-{os.getuid()}" / "models"


def test_a_file_in_the_cache_is_found(models_env):
    cached = models_env["cache"] / "models" / "hosted-test-model" / "hosted.bin"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert registry.resolve("hosted-test-model") == cached


def test_offline_pull_names_the_file_and_how_to_get_it(models_env, monkeypatch):
    monkeypatch.setenv("STVG_OFFLINE", "1")
    with pytest.raises(registry.ModelFileMissing) as error:
        registry.pull("hosted-test-model")
    message = str(error.value)
    assert "'hosted.bin'" in message and "stvg-ros models pull hosted-test-model" in message and URL in message
    assert "downloads are disabled" in message


def test_a_failed_download_is_a_clear_error(models_env, monkeypatch):
    # not marked offline, but the tests block the network (conftest), like a robot without one
    for name in registry.OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(registry.ModelFileMissing, match=r"hosted\.bin.*download failed"):
        registry.resolve("hosted-test-model", download=True)


def test_a_missing_file_is_not_fetched_unless_asked(models_env):
    with pytest.raises(registry.ModelFileMissing, match=r"built\.bin.*stvg-ros models pull built-test-model"):
        registry.resolve("built-test-model")
    assert registry.resolve("built-test-model", "pt", build=True).read_bytes() == b"built here"


def test_unknown_names_list_the_known_ones(models_env):
    with pytest.raises(registry.UnknownModel, match="built-test-model"):
        registry.resolve("no-such-model")
    with pytest.raises(registry.ModelFileMissing, match="does not exist"):
        registry.resolve("/no/such/file.onnx")


def test_verify_reports_each_file(models_env):
    (models_env["manifests"] / "local.bin").write_bytes(b"local weights")  # next to the manifest
    assert [c.status for c in registry.verify("pinned-test-model")] == ["ok"]
    (models_env["manifests"] / "local.bin").write_bytes(b"tampered")
    check = registry.verify("pinned-test-model")[0]
    assert check.status == "mismatch" and "differs" in check.message
    assert registry.verify("hosted-test-model")[0].status == "missing"
    registry.pull("built-test-model")
    assert registry.verify("built-test-model")[0].status == "unpinned"


def test_cli_list_pull_verify_path(models_env):
    env = models_env["env"]
    listing = stvg_ros("list", "--json", env=env)
    assert listing.returncode == 0, listing.stderr
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert rows["built-test-model"]["files"][0]["present"] is False
    assert "yolo-synth-tiny" in rows  # the repo's manifests are listed too

    offline = stvg_ros("pull", "hosted-test-model", env={**env, "STVG_OFFLINE": "1"})
    assert offline.returncode == 1 and "Traceback" not in offline.stderr
    assert "hosted.bin" in offline.stderr and "stvg-ros models pull hosted-test-model" in offline.stderr

    pulled = stvg_ros("pull", "built-test-model", "--json", env=env)
    assert pulled.returncode == 0, pulled.stderr
    path = Path(json.loads(pulled.stdout)["built-test-model"]["built.bin"])
    assert path.read_bytes() == b"built here" and path.is_relative_to(models_env["cache"])

    (models_env["manifests"] / "local.bin").write_bytes(b"local weights")
    verified = stvg_ros("verify", "pinned-test-model", "built-test-model", "--json", env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    statuses = {name: [c["status"] for c in checks] for name, checks in json.loads(verified.stdout).items()}
    assert statuses == {"pinned-test-model": ["ok"], "built-test-model": ["unpinned"]}
    assert stvg_ros("verify", "hosted-test-model", env=env).returncode == 1

    where = stvg_ros("path", "built-test-model", "--file", "pt", env=env)
    assert where.returncode == 0 and where.stdout.strip() == str(path)
    assert stvg_ros("path", "hosted-test-model", env=env).returncode == 1
    assert stvg_ros("--help", env=env).returncode == 0
