"""A robot's install: both packages built by colcon **without** `--symlink-install` into a prefix of
their own, the copied sources then deleted, and from that install space alone (sourced the way a ROS
user does, `. install/setup.sh`): the node executables `ros2 run` would start, the model
manifests, the graph, an answer. A second install is a plain wheel of stvg_ros.

Model files come from the models folder (`paths.models_home()`), never from the install or source tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ros_support import REPO, NodeProcess, RosClient, wait_until

pytestmark = [pytest.mark.ros, pytest.mark.slow]
rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (run scripts/setup.sh)")

VENV = Path(sys.prefix)
NAMESPACE = "/installed"
#: Variables through which this checkout's own build would leak into the installed graph.
CHECKOUT_VARS = (
    "AMENT_PREFIX_PATH",
    "CMAKE_PREFIX_PATH",
    "PYTHONPATH",
    "LD_LIBRARY_PATH",
    "COLCON_PREFIX_PATH",
    "_ROS_WHEELS_BOOTSTRAP_COMPLETE",
)  # (the ROS wheels set the library path again in the child)


def _underlay_env() -> dict[str, str]:
    """The environment of a machine with ROS (here: the venv's ROS wheels) and nothing of this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in CHECKOUT_VARS}
    env.update(AMENT_PREFIX_PATH=str(VENV), CMAKE_PREFIX_PATH=str(VENV), VIRTUAL_ENV=str(VENV),
               PATH=f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}")  # fmt: skip
    return env


def _sourced(install: Path, command: list[str]) -> list[str]:
    """`command` run after `. <install>/setup.sh` (colcon-bash, which writes setup.bash, has no wheel here)."""
    return ["bash", "-c", f'. "{install}/setup.sh" && exec "$@"', "stvg-installed", *command]


@pytest.fixture(scope="module")
def install_space(tmp_path_factory) -> Path:
    """colcon build (no --symlink-install) of copies of both packages; the copies are deleted after."""
    root = tmp_path_factory.mktemp("robot_ws")
    src = root / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache", "build", "install", "log")
    for package in ("stvg_ros_msgs", "stvg_ros"):
        shutil.copytree(REPO / package, src / package, ignore=ignore)
    build = subprocess.run(
        [str(VENV / "bin" / "colcon"), "--log-base", str(root / "log"), "build", "--base-paths", str(src),
         "--build-base", str(root / "build"), "--install-base", str(root / "install"),
         "--event-handlers", "console_stderr-", "--cmake-args", f"-DPython3_EXECUTABLE={VENV / 'bin' / 'python'}",
         "-DBUILD_TESTING=OFF", f"-DCMAKE_INSTALL_RPATH=$ORIGIN:$ORIGIN/../../..:{VENV / 'lib'}"],
        cwd=root, env=_underlay_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    shutil.rmtree(src)
    shutil.rmtree(root / "build")
    install = root / "install"
    assert not (install / "stvg_ros" / "lib" / "stvg_ros" / "tracker_node").is_symlink()
    return install


def _run_installed(install: Path, command: list[str], timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(_sourced(install, command), cwd=install.parent, env=_underlay_env(),
                          capture_output=True, text=True, timeout=timeout_s)  # fmt: skip


def test_the_install_space_imports_its_own_copies_and_ships_the_manifests(install_space):
    probe = ("import json, stvg_ros, stvg_ros_msgs; from stvg_ros.core import paths; "
             "print(json.dumps([stvg_ros.__file__, stvg_ros_msgs.__file__, str(paths.PACKAGED_MANIFESTS), "
             "paths.repo_root() is None]))")  # fmt: skip
    done = _run_installed(install_space, ["python", "-c", probe])
    assert done.returncode == 0, done.stderr
    package, messages, manifests, not_a_checkout = json.loads(done.stdout.strip().splitlines()[-1])
    for path in (package, messages, manifests):
        assert Path(path).is_relative_to(install_space), path
    assert not_a_checkout
    assert {"yolo-synth-tiny.yaml", "yolo11n.yaml", "stvg-r1-7b-q4_k_m.yaml"} <= {
        p.name for p in Path(manifests).iterdir()
    }

    # The executables `ros2 run stvg_ros <name>` starts, and the CLI, are files of the install space.
    executables = install_space / "stvg_ros" / "lib" / "stvg_ros"
    for name in ("tracker_node", "overlay_node", "grounding_node", "player_node", "stvg-ros"):
        assert (executables / name).is_file() and os.access(executables / name, os.X_OK), name
    listing = _run_installed(install_space, [str(executables / "stvg-ros"), "models", "list", "--json"])
    assert listing.returncode == 0, listing.stderr
    assert {"yolo-synth-tiny", "yolo11n", "stvg-r1-7b-q4_k_m"} <= {m["name"] for m in json.loads(listing.stdout)}


def test_the_installed_graph_answers_a_query(install_space, tiny_detector, tiny_vlm, synth_dataset, tmp_path):
    """tracker, overlay and grounding nodes started from the install space's executables (the detector by
    manifest name, resolved in the models folder), a bag played by the installed player, the answer
    asked with the installed `stvg-ros ask`."""
    executables = install_space / "stvg_ros" / "lib" / "stvg_ros"
    ros_args = ["--ros-args", "-r", f"__ns:={NAMESPACE}"]
    nodes = {
        "tracker_node": ["-p", "detector:=yolo-synth-tiny", "-p", "threads:=1"],
        "overlay_node": [],
        "grounding_node": ["-p", f"model:={tiny_vlm.gguf_q8_0}", "-p", f"mmproj:={tiny_vlm.mmproj_f32}",
                           "-p", "n_gpu_layers:=0", "-p", "n_threads:=1", "-p", "num_frames:=8"],
    }  # fmt: skip
    processes = {
        name: NodeProcess(_sourced(install_space, [str(executables / name), *ros_args, *params]),
                          tmp_path / f"{name}.log", env=_underlay_env(), cwd=install_space.parent, inherit_env=False)
        for name, params in nodes.items()
    }  # fmt: skip
    client = RosClient(namespace=NAMESPACE, name="install_space_client")
    try:
        for name, process in processes.items():
            assert client.wait_active(name, 120), process.log()
        player = NodeProcess(
            _sourced(install_space, [str(executables / "player_node"), *ros_args, "-p", f"bag:={synth_dataset.bags[0]}",
                                     "-p", "rate:=2.0", "-p", "wait_for_subscribers:=2", "-p", "start_delay_s:=0.5"]),
            tmp_path / "player.log", env=_underlay_env(), cwd=install_space.parent, inherit_env=False,
        )  # fmt: skip
        processes["player_node"] = player
        assert wait_until(lambda: not player.alive(), 90), player.log()
        assert player.proc.returncode == 0, player.log()
        asked = _run_installed(install_space, [str(executables / "stvg-ros"), "ask", "the red circle", "--no-reasoning",
                                               "--namespace", NAMESPACE, "--timeout", "90", "--json"], timeout_s=150)  # fmt: skip
        assert asked.returncode == 0, asked.stdout + asked.stderr + processes["grounding_node"].log()
        answer = json.loads(asked.stdout)
        assert answer["success"] is True and answer["target_id"] >= 0, answer
        for name, process in processes.items():
            assert "Traceback" not in process.log(), (name, process.log())
    finally:
        client.close()
        for process in processes.values():
            process.stop()


def test_a_wheel_of_stvg_ros_carries_the_manifests(tmp_path):
    """`pip install` of a wheel (no source tree, no colcon): the manifests resolve and model files go to
    the models folder of the user, not into site-packages."""
    wheel_dir, target, source = tmp_path / "wheels", tmp_path / "site", tmp_path / "stvg_ros"
    shutil.copytree(REPO / "stvg_ros", source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheel_dir), str(source)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = wheel_dir.glob("stvg_ros-*.whl")
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                                str(wheel)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    probe = (
        "import json, stvg_ros; from stvg_ros.core import model_registry, paths; "
        "m = model_registry.get_manifest('yolo11n'); "
        "print(json.dumps([stvg_ros.__file__, str(m.path), str(model_registry.model_cache_dir('yolo11n'))]))"
    )
    env = {**os.environ, "PYTHONPATH": str(target), "STVG_ROS_MODELS": str(tmp_path / "robot-models")}
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    package, manifest, files = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(package).is_relative_to(target) and Path(manifest).is_relative_to(target)
    assert Path(files) == tmp_path / "robot-models" / "yolo11n"
