"""`stvg-ros bench perception`: does detection + tracking keep up with a 640x480, 30 FPS camera?

Three measurements on the same synthetic scene, same model, same run:

1. **core**: a camera thread renders frames at `--fps` in real time into a one-frame slot (like a
   depth-1 sensor-data subscription: a newer frame replaces one not yet taken); the perception
   pipeline (detector on every k-th frame, Kalman prediction in between) takes the newest frame.
   `frames_with_tracks_fraction` = camera frames that got tracks / camera frames; latency = time
   from capture to tracks; `detector_hz` = detector runs per second.
2. **naive**: a loop that calls ultralytics `model.track()` on every frame (the usual recipe),
   against our pipeline on the same pre-rendered frames, both as fast as they can:
   `naive_ratio` = our frames per second / the naive loop's.
3. **ros**: the tracker node in its own process; this process publishes the camera frames as
   sensor_msgs/Image over DDS and receives the tracks: `ros_ratio` = frames with tracks per second
   over DDS / in the core run.

The process is pinned to `--cores` CPUs (default 2) where the machine has more. Camera frames
(900 KB each at 640x480) are larger than Fast DDS's default shared-memory segment (512 KB), and
over its UDP fallback (64 KB fragments) a best-effort subscriber loses most of them; the benchmark
therefore runs both processes with the package's Fast DDS profile (config/fastdds_large_images.xml:
a 16 MB shared-memory segment) unless the environment already chooses the Fast DDS transports, and
reports what it ran with (`dds_profiles_file`, `dds_builtin_transports`).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

NS = 1_000_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each real-time run (default 20)")
    parser.add_argument("--fps", type=float, default=30.0, help="camera frame rate (default 30)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--objects", type=int, default=6, help="objects in the synthetic scene (2..8)")
    parser.add_argument(
        "--model", default="yolo-synth-tiny", help="detector: manifest name or .onnx/.pt path (default yolo-synth-tiny)"
    )
    parser.add_argument("--backend", default="onnx", choices=("onnx", "ultralytics"))
    parser.add_argument("--precision", default="int8", choices=("int8", "fp32"))
    parser.add_argument(
        "--naive-model", default=None, help="checkpoint for the naive loop (default: the .pt of the same model)"
    )
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime / torch threads (default 1)")
    parser.add_argument("--cores", type=int, default=2, help="pin the benchmark to this many CPUs (0: all)")
    parser.add_argument("--naive-frames", type=int, default=90, help="frames for the throughput comparison")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive ultralytics loop")
    parser.add_argument("--no-ros", action="store_true", help="skip the run over DDS")
    parser.add_argument("--seed", type=int, default=3)


# --------------------------------------------------------------------------------------------
# Helpers


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process in MiB (this one by default); 0 when unknown."""
    try:
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def pin_cores(cores: int) -> list[int]:
    """Restrict this process (and the children it starts) to the first `cores` allowed CPUs."""
    allowed = sorted(os.sched_getaffinity(0))
    if cores > 0 and len(allowed) > cores:
        os.sched_setaffinity(0, allowed[:cores])
    return sorted(os.sched_getaffinity(0))


def make_scene(args: argparse.Namespace):
    from stvg_ros.core.synth import SceneSpec, generate_scene

    spec = SceneSpec(
        seconds=max(4.0, float(args.seconds)),
        fps=float(args.fps),
        width=args.width,
        height=args.height,
        n_objects=args.objects,
        difficulty="mixed",
    )
    return generate_scene(args.seed, spec)


def model_files(args: argparse.Namespace) -> tuple[str, Path | None]:
    """(detector for our pipeline, .pt checkpoint for the naive loop or None when there is none)."""
    from stvg_ros.core import model_registry

    if args.naive_model:
        return args.model, Path(args.naive_model)
    candidate = Path(args.model)
    if candidate.is_file():
        stem = candidate.stem.removesuffix("-int8")
        pt = candidate.with_name(stem + ".pt")
        return args.model, (pt if pt.is_file() else (candidate if candidate.suffix == ".pt" else None))
    try:
        return args.model, model_registry.resolve(args.model, "pt", build=True)
    except model_registry.ModelRegistryError as exc:
        log.warning("no .pt checkpoint for the naive loop: %s", exc)
        return args.model, None


def perception_config(args: argparse.Namespace):
    from stvg_ros.perception.pipeline import PerceptionConfig

    return PerceptionConfig(
        model=args.model, backend=args.backend, precision=args.precision, threads=args.threads, build_missing=True
    )


@dataclass
class RealtimeResult:
    camera_frames: int = 0
    frames_with_tracks: int = 0
    frames_with_objects: int = 0
    detector_runs: int = 0
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.frames_with_tracks / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        return round(float(np.percentile(self.latencies_s, q)) * 1e3, 2) if self.latencies_s else float("nan")


class Camera:
    """Renders scene frames in real time; `frames()` yields (index, capture time, stamp_ns, rgb)."""

    def __init__(self, scene, fps: float, seconds: float) -> None:
        self.scene, self.fps = scene, fps
        self.count = min(scene.num_frames, round(seconds * fps))

    def frames(self):
        start = time.monotonic()
        wall0 = time.time_ns()
        for i in range(self.count):
            due = start + i / self.fps
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            rgb = self.scene.render_frame(i)
            yield i, time.monotonic(), wall0 + round(i * NS / self.fps), rgb


# --------------------------------------------------------------------------------------------
# 1. core, in process, real time


def run_core(scene, args: argparse.Namespace) -> tuple[RealtimeResult, dict]:
    from stvg_ros.perception.pipeline import build_perception

    pipeline = build_perception(perception_config(args))
    pipeline.process(0, scene.render_frame(0))  # warm-up (ORT allocations), then a fresh pipeline
    pipeline = build_perception(perception_config(args))
    camera = Camera(scene, args.fps, args.seconds)
    slot: list = []
    cond = threading.Condition()
    done = threading.Event()
    result = RealtimeResult()

    def worker() -> None:
        while True:
            with cond:
                cond.wait_for(lambda: slot or done.is_set(), timeout=1.0)
                if not slot:
                    if done.is_set():
                        return
                    continue
                _, captured, stamp_ns, rgb = slot.pop()
            tracks = pipeline.process(stamp_ns, rgb)
            result.latencies_s.append(time.monotonic() - captured)
            result.frames_with_tracks += 1
            result.frames_with_objects += len(tracks) > 0

    thread = threading.Thread(target=worker, name="perception", daemon=True)
    rss_start = rss_mb()
    started = time.monotonic()
    thread.start()
    for item in camera.frames():
        with cond:
            slot[:] = [item]  # depth 1: a frame not taken yet is replaced (dropped)
            cond.notify()
        result.camera_frames += 1
    done.set()
    with cond:
        cond.notify()
    thread.join(timeout=30)
    result.seconds = time.monotonic() - started
    result.detector_runs = pipeline.stats.detector_runs
    extra = {
        "rss_mb_start": rss_start,
        "rss_mb_end": rss_mb(),
        "detect_every": pipeline.stats.detect_every,
        "detect_ms": round(pipeline.stats.detect_ms, 2),
        "predict_ms": round(pipeline.stats.predict_ms, 2),
    }
    return result, extra


# --------------------------------------------------------------------------------------------
# 2. naive loop vs ours, as fast as possible on the same frames


def _frames_per_second(pipeline, frames: list[np.ndarray], stamps: list[int] | None) -> float:
    """Frames per second through `pipeline`, back to back; stamps None: each frame is stamped
    when it is handed over (a camera exactly as fast as the pipeline)."""
    pipeline.process(1, frames[0])  # warm-up, then a fresh tracker
    pipeline.reset()
    base = time.time_ns()
    started = time.perf_counter()
    for i, rgb in enumerate(frames):
        pipeline.process(base + 10 * NS + (stamps[i] if stamps else time.time_ns() - base), rgb)
    return len(frames) / (time.perf_counter() - started)


def run_throughput(scene, args: argparse.Namespace, naive_pt: Path | None) -> dict:
    """Our pipeline and the naive loop as fast as they go on the same frames.

    `ours_max_fps`: the keep-up pipeline fed by a camera as fast as it can take (its detector
    schedule adapts, as it would on a loaded robot); `ours_every_frame_fps`: the detector on every
    frame, the same work per frame as the naive loop."""
    from dataclasses import replace

    from stvg_ros.perception.pipeline import build_perception

    frames = [scene.render_frame(i) for i in range(min(args.naive_frames, scene.num_frames))]
    stamps = [round(i * NS / args.fps) for i in range(len(frames))]
    adaptive = build_perception(perception_config(args))
    ours_fps = _frames_per_second(adaptive, frames, None)
    every_fps = _frames_per_second(build_perception(replace(perception_config(args), detect_every=1)), frames, stamps)
    out = {
        "ours_max_fps": round(ours_fps, 1),
        "ours_max_detect_every": adaptive.stats.detect_every,
        "ours_every_frame_fps": round(every_fps, 1),
        "naive_max_fps": None,
        "naive_ratio": None,
        "naive_ratio_every_frame": None,
    }
    if naive_pt is None:
        out["naive_error"] = "no .pt checkpoint of the model for the naive loop"
        return out
    import torch
    from ultralytics import YOLO

    torch.set_num_threads(max(1, args.threads))
    model = YOLO(str(naive_pt), task="detect")
    imgsz = adaptive.detector.imgsz
    bgr = [np.ascontiguousarray(f[:, :, ::-1]) for f in frames]
    kwargs = {"persist": True, "tracker": "bytetrack.yaml", "imgsz": imgsz, "device": "cpu", "verbose": False}
    model.track(bgr[0], **kwargs)  # warm-up
    model.predictor.trackers[0].reset()
    started = time.perf_counter()
    for frame in bgr:
        model.track(frame, **kwargs)
    naive_fps = len(bgr) / (time.perf_counter() - started)
    out.update(
        naive_max_fps=round(naive_fps, 1),
        naive_ratio=round(ours_fps / naive_fps, 2),
        naive_ratio_every_frame=round(every_fps / naive_fps, 2),
        naive_model=str(naive_pt),
    )
    return out


# --------------------------------------------------------------------------------------------
# 3. the tracker node over DDS


def _start_tracker_node(args: argparse.Namespace, namespace: str, log_path: Path) -> subprocess.Popen:
    params = [
        f"detector:={args.model}",
        f"backend:={args.backend}",
        f"precision:={args.precision}",
        f"threads:={args.threads}",
        "diagnostics_period_s:=1.0",
        "publish_detection2d:=false",
    ]
    command = [sys.executable, "-m", "stvg_ros.nodes.tracker_node", "--ros-args", "-r", f"__ns:=/{namespace}"]
    for p in params:
        command += ["-p", p]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(max(1, args.threads))}
    with open(log_path, "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def run_ros(scene, args: argparse.Namespace) -> tuple[RealtimeResult, dict]:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from stvg_ros.nodes.common import stamp_to_ns
    from stvg_ros_msgs.msg import TrackedObjectArray

    namespace = f"stvg_bench_{os.getpid()}"
    log_dir = Path(tempfile.mkdtemp(prefix="stvg-bench-"))
    node_log = log_dir / "tracker_node.log"
    process = _start_tracker_node(args, namespace, node_log)
    context = rclpy.Context()
    rclpy.init(context=context)
    result = RealtimeResult()
    extra: dict = {"ros_node_log": str(node_log)}
    try:
        node = rclpy.create_node("stvg_bench_camera", namespace=namespace, context=context)
        publisher = node.create_publisher(Image, "image", qos_profile_sensor_data)
        capture: dict[int, float] = {}
        received: list[int] = []

        def on_tracks(msg) -> None:
            stamp = stamp_to_ns(msg.header.stamp)
            captured = capture.get(stamp)
            if captured is not None:
                result.latencies_s.append(time.monotonic() - captured)
                result.frames_with_tracks += 1
                result.frames_with_objects += len(msg.objects) > 0
            received.append(stamp)

        node.create_subscription(TrackedObjectArray, "tracks", on_tracks, QoSProfile(depth=100))
        diagnostics: dict[str, str] = {}

        def on_diagnostics(msg) -> None:
            for status in msg.status:
                if status.name.startswith(f"/{namespace}/tracker_node"):
                    diagnostics.update({kv.key: kv.value for kv in status.values})

        node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "tracking on" not in node_log.read_text(errors="replace"):
            if process.poll() is not None:
                raise RuntimeError(f"tracker node exited: {node_log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        while time.monotonic() < deadline and publisher.get_subscription_count() == 0:
            time.sleep(0.05)
        if publisher.get_subscription_count() == 0:
            raise RuntimeError(f"tracker node did not subscribe within 120 s; log {node_log}")
        # Warm-up frames (not counted), so the detector's first run is not in the figures.
        for i in range(5):
            msg = _image_msg(scene.render_frame(i), time.time_ns() - 60 * NS)
            publisher.publish(msg)
            time.sleep(1 / args.fps)
        time.sleep(1.0)
        extra["ros_node_rss_mb_start"] = rss_mb(process.pid)
        camera = Camera(scene, args.fps, args.seconds)
        started = time.monotonic()
        for _, captured, stamp_ns, rgb in camera.frames():
            capture[stamp_ns] = captured
            publisher.publish(_image_msg(rgb, stamp_ns))
            result.camera_frames += 1
        time.sleep(1.0)  # let the last tracks arrive
        result.seconds = time.monotonic() - started - 1.0
        extra["ros_node_rss_mb_end"] = rss_mb(process.pid)
        keys = ("input_hz", "output_hz", "detector_hz", "processing_ms_p95", "dropped", "dropped_transport",
                "dropped_stale", "detect_every")  # fmt: skip
        for key in keys:
            extra[f"ros_node_{key}"] = diagnostics.get(key)
        executor.shutdown(timeout_sec=5)
    finally:
        rclpy.try_shutdown(context=context)
        _stop(process)
    return result, extra


def _image_msg(rgb: np.ndarray, stamp_ns: int):
    from sensor_msgs.msg import Image

    from stvg_ros.core.image_codec import encode_image
    from stvg_ros.nodes.common import ns_to_stamp

    msg = Image(**encode_image(rgb))
    msg.header.stamp, msg.header.frame_id = ns_to_stamp(stamp_ns), "camera"
    return msg


# --------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    from stvg_ros.nodes.common import use_large_image_dds

    use_large_image_dds()  # before rclpy.init here and in the tracker node's process
    cpus = pin_cores(args.cores)
    scene = make_scene(args)
    model, naive_pt = model_files(args)
    core, core_extra = run_core(scene, args)
    figures: dict = {
        "model": model,
        "backend": args.backend,
        "precision": args.precision,
        "width": args.width,
        "height": args.height,
        "fps": args.fps,
        "seconds": round(core.seconds, 2),
        "cpus": len(cpus),
        "threads": args.threads,
        "camera_frames": core.camera_frames,
        "frames_with_tracks_fraction": round(core.frames_with_tracks / max(1, core.camera_frames), 4),
        "frames_with_objects_fraction": round(core.frames_with_objects / max(1, core.camera_frames), 4),
        "latency_p50_ms": core.percentile_ms(50),
        "latency_p95_ms": core.percentile_ms(95),
        "detector_hz": round(core.detector_runs / core.seconds, 2) if core.seconds else 0.0,
        "core_throughput_fps": round(core.throughput, 2),
        **core_extra,
    }
    if args.no_naive:
        figures.update(naive_ratio=None, naive_error="skipped (--no-naive)")
    else:
        figures.update(run_throughput(scene, args, naive_pt))
    profiles = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE") or os.environ.get("FASTRTPS_DEFAULT_PROFILES_FILE")
    figures.update(
        ros_ratio=None,
        dds_profiles_file=profiles,
        dds_builtin_transports=os.environ.get("FASTDDS_BUILTIN_TRANSPORTS") or "DEFAULT",
        ros_discovery_range=os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") or "SYSTEM_DEFAULT",
    )
    if args.no_ros:
        figures["ros_error"] = "skipped (--no-ros)"
    else:
        try:
            ros, ros_extra = run_ros(scene, args)
        except (ImportError, RuntimeError) as exc:
            figures["ros_error"] = str(exc)
        else:
            figures.update(
                ros_frames_with_tracks_fraction=round(ros.frames_with_tracks / max(1, ros.camera_frames), 4),
                ros_latency_p50_ms=ros.percentile_ms(50),
                ros_latency_p95_ms=ros.percentile_ms(95),
                ros_throughput_fps=round(ros.throughput, 2),
                ros_ratio=round(ros.throughput / core.throughput, 3) if core.throughput else None,
                **ros_extra,
            )
    return figures
