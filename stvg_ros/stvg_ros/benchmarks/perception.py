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
3. **deployments** over DDS, each in its own namespace: the nodes started the ways users start
   them (`tracker_process`: the tracker node alone, its figures are also the top-level `ros_*`,
   `ros_ratio` = its frames with tracks per second / the core run's;
   `graph_one_process`: `stvg-ros up`; `graph_processes`: one process per node, as the launch file;
   `*_query`: the same while a client here calls `ground` back to back, so llama.cpp computes the
   whole time). This process is the camera (sensor_msgs/Image, best effort, real time) and receives
   `tracks`: per deployment `frames_with_tracks_fraction`, latency p50/p95 (capture -> tracks
   received), `goal_met`, the nodes' /diagnostics values (`tracker_*`, `grounding_*`, ...), their
   integer values' change over the measured window (`diagnostics_delta`), queries answered and their
   median latency, and whether the grounding buffer holds every frame its sampling rate asks for.

The process is pinned to `--cores` CPUs (default 2) where the machine has more. Camera frames
(900 KB each at 640x480) are larger than Fast DDS's default shared-memory segment (512 KB), and
over its UDP fallback (64 KB fragments) a best-effort subscriber loses most of them; the benchmark
therefore runs every process with the package's Fast DDS profile (config/fastdds_large_images.xml:
a 16 MB shared-memory segment) unless the environment already chooses the Fast DDS transports, and
reports what it ran with (`dds_profiles_file`, `dds_builtin_transports`).
"""

from __future__ import annotations

import argparse
import contextlib
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
    parser.add_argument("--no-ros", action="store_true", help="skip every deployment over DDS")
    parser.add_argument(
        "--deployments",
        type=deployment_list,
        default="all",
        help=f"comma list of node deployments to measure over DDS (default all: {', '.join(DEPLOYMENTS)})",
    )
    parser.add_argument(
        "--vlm", default="qwen25vl-tiny-random", help="grounding model (llama.cpp, CPU) of the graph deployments"
    )
    parser.add_argument("--vlm-mmproj", default="", help="its vision projector GGUF (default: the manifest's)")
    parser.add_argument("--query-reasoning", choices=("off", "on"), default="off", help="reasoning of the queries")
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
    from stvg_ros.synthetic.scenes import SceneSpec, generate_scene

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
# 3. deployments: the nodes over DDS, started the ways users start them

#: What the `ground` client asks, back to back, in the query deployments.
QUERY = "the red circle"
#: Grounding buffer for the run: long and large enough that nothing is evicted during a run.
BUFFER = {"buffer_seconds": 3600.0, "buffer_max_mb": 2048.0, "buffer_sample_fps": 2.0}
#: Goal of every deployment at 640x480, 30 FPS.
GOAL_FRACTION, GOAL_P95_MS = 0.95, 100.0
#: The tracker_process diagnostics that keep today's `ros_node_*` names at the top level.
ROS_NODE_KEYS = ("input_hz", "output_hz", "detector_hz", "processing_ms_p95", "frames_received", "frames_lost",
                 "lost_in_transport", "lost_in_reader_queue", "dropped_backlog", "caught_up", "detect_every")  # fmt: skip


@dataclass(frozen=True)
class Deployment:
    """One way of running the nodes: which of them (empty: the whole graph), all in one process
    (`stvg-ros up`) or one process each (as the launch file), and with grounding queries or not."""

    nodes: tuple[str, ...] = ()
    one_process: bool = False
    queries: bool = False


DEPLOYMENTS: dict[str, Deployment] = {
    "tracker_process": Deployment(nodes=("tracker_node",)),
    "graph_one_process": Deployment(one_process=True),
    "graph_processes": Deployment(),
    "graph_one_process_query": Deployment(one_process=True, queries=True),
    "graph_processes_query": Deployment(queries=True),
}


def deployment_list(text: str) -> list[str]:
    """`--deployments` value: a comma list of DEPLOYMENTS names ("all": every one)."""
    names = list(DEPLOYMENTS) if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    if unknown := [n for n in names if n not in DEPLOYMENTS]:
        raise argparse.ArgumentTypeError(f"unknown deployment(s) {unknown}; choose from {', '.join(DEPLOYMENTS)}")
    return names


def large_image_dds() -> dict[str, str]:
    """Point Fast DDS at the package's large-image profile in this process's environment (call it
    before rclpy.init) unless the user chose the transports: this benchmark publishes the camera
    itself. Returns the transport variables for every child process."""
    from stvg_ros.nodes.dds import DDS_USER_VARIABLES, use_large_image_dds

    use_large_image_dds()
    return {name: os.environ[name] for name in DDS_USER_VARIABLES if os.environ.get(name)}


def node_overrides(args: argparse.Namespace) -> dict[str, dict]:
    """{node: {parameter: value}} of every deployment (None: the node's own default)."""
    return {
        "tracker_node": {
            "detector": args.model,
            "backend": args.backend,
            "precision": args.precision,
            "threads": args.threads,
            "diagnostics_period_s": 1.0,
            "publish_detection2d": False,
        },
        "grounding_node": {
            "backend": "llama_cpp",
            "model": args.vlm,
            "mmproj": args.vlm_mmproj or None,
            "n_gpu_layers": 0,
            "diagnostics_period_s": 1.0,
            **BUFFER,
        },
    }


def prepare_vlm(args: argparse.Namespace) -> None:
    """Build the grounding model's files where its manifest builds them (the tiny test VLM) and check
    that llama.cpp would find them; RuntimeError saying what is missing otherwise."""
    from stvg_ros.core import model_registry
    from stvg_ros.grounding.backends import resolve_model_files

    try:
        if not Path(args.vlm).exists() and args.vlm in model_registry.load_manifests():
            model_registry.resolve_all(args.vlm, build=True)
        resolve_model_files(model=args.vlm, mmproj=args.vlm_mmproj, backend="llama_cpp")
    except Exception as exc:  # ModelLoadError, ModelRegistryError, a failed build
        raise RuntimeError(f"grounding model {args.vlm!r}: {exc}") from exc


def deployment_commands(
    deployment: Deployment, namespace: str, camera_topic: str, overrides: dict, log_dir: Path
) -> tuple[dict[str, list[str]], list[str]]:
    """(command per process name, names of the nodes started) for `deployment`."""
    from stvg_ros.nodes.graph import graph_nodes, merged_params_file, ros_arguments

    specs = [s for s in graph_nodes() if not deployment.nodes or s.name in deployment.nodes]
    nodes = [s.name for s in specs]
    if deployment.one_process:
        params = [f"{node}:{k}={v}" for node, values in overrides.items() for k, v in values.items() if v is not None]
        up = [sys.executable, "-m", "stvg_ros.cli.main", "up", "--namespace", namespace, "--camera-topic", camera_topic]
        return {"graph": up + [a for p in params for a in ("-p", p)]}, nodes
    ros_args = ros_arguments(merged_params_file(None, overrides, log_dir, specs), camera_topic, namespace)
    return {s.name: [sys.executable, "-m", s.module, *ros_args] for s in specs}, nodes


def _stop(process: subprocess.Popen) -> None:
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


class CameraProbe:
    """The benchmark's node in one deployment: the camera publisher, the `tracks` and /diagnostics
    subscribers and the `ground` client, spun by its own executor thread."""

    def __init__(self, context, namespace: str, camera_topic: str, reasoning: bool) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, qos_profile_sensor_data
        from sensor_msgs.msg import Image

        from stvg_ros_msgs.msg import TrackedObjectArray
        from stvg_ros_msgs.srv import Ground

        self.namespace, self.Ground = namespace, Ground
        self.reasoning = Ground.Request.REASONING_ON if reasoning else Ground.Request.REASONING_OFF
        self.node = rclpy.create_node("stvg_bench_camera", namespace=namespace, context=context)
        self.publisher = self.node.create_publisher(Image, camera_topic, qos_profile_sensor_data)
        self.node.create_subscription(TrackedObjectArray, "tracks", self._on_tracks, QoSProfile(depth=100))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.client = self.node.create_client(Ground, "ground")
        self.capture: dict[int, float] = {}  # stamp -> capture time of the measured frames
        self.result = RealtimeResult()
        self.tracks_seen = 0  # tracks messages, warm-up included
        self.diagnostics: dict[str, dict[str, str]] = {}  # "tracker" -> the latest KeyValues
        self.diagnostics_at: dict[str, float] = {}  # "tracker" -> when they came
        from stvg_ros.nodes.lifecycle import spin_until_shutdown

        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        threading.Thread(target=spin_until_shutdown, args=(self.executor,), daemon=True).start()

    def _on_tracks(self, msg) -> None:
        from stvg_ros.nodes.messages import stamp_to_ns

        self.tracks_seen += 1
        captured = self.capture.get(stamp_to_ns(msg.header.stamp))
        if captured is not None:
            self.result.latencies_s.append(time.monotonic() - captured)
            self.result.frames_with_tracks += 1
            self.result.frames_with_objects += len(msg.objects) > 0

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:  # named "/<namespace>/<node>: <component>"
            node = status.name.split(":")[0]
            if node.startswith(f"/{self.namespace}/"):
                prefix = node.rsplit("/", 1)[-1].removesuffix("_node")
                self.diagnostics[prefix] = {kv.key: kv.value for kv in status.values}
                self.diagnostics_at[prefix] = time.monotonic()

    def fresh_diagnostics(self, timeout_s: float = 5.0) -> dict[str, str]:
        """Every node's next /diagnostics values, flat with the node as prefix (`tracker_input_hz`)."""
        asked = time.monotonic()
        while time.monotonic() < asked + timeout_s and any(t <= asked for t in self.diagnostics_at.values()):
            time.sleep(0.05)
        return {f"{node}_{k}": v for node, values in sorted(self.diagnostics.items()) for k, v in values.items()}

    def publish(self, rgb: np.ndarray, stamp_ns: int) -> None:
        self.publisher.publish(_image_msg(rgb, stamp_ns))

    def ask(self, timeout_s: float):
        """One `ground` call: the GroundingResult, or None when no reply came in `timeout_s`."""
        done = threading.Event()
        request = self.Ground.Request(query=QUERY, window_seconds=0.0, reasoning=self.reasoning)
        future = self.client.call_async(request)
        future.add_done_callback(lambda _f: done.set())
        if not done.wait(timeout_s):
            self.client.remove_pending_request(future)
            return None
        return future.result().result


class _Queries(threading.Thread):
    """Calls `ground` back to back until stopped; `latencies_s` of the answered queries (the model
    ran: an answer, usable or not), `sent` and `succeeded` counts."""

    def __init__(self, probe: CameraProbe, timeout_s: float = 150.0) -> None:
        super().__init__(name="ground-client", daemon=True)
        self.probe, self.timeout_s, self.stopped = probe, timeout_s, threading.Event()
        self.latencies_s: list[float] = []
        self.sent = self.succeeded = 0

    def run(self) -> None:
        while not self.stopped.is_set():
            began = time.monotonic()
            self.sent += 1
            result = self.probe.ask(self.timeout_s)
            if result is not None and (result.success or result.raw_answer):
                self.latencies_s.append(time.monotonic() - began)
                self.succeeded += bool(result.success)
            else:
                self.stopped.wait(0.2)  # refused (busy, not active yet) or no reply: do not spin

    def stop(self, timeout_s: float = 150.0) -> None:
        self.stopped.set()
        self.join(timeout_s)


def warm_up(probe: CameraProbe, scene, processes: dict, condition, timeout_s: float, what: str) -> None:
    """Publish warm-up frames (10 per second; their stamps are not measured) until
    `condition()`; RuntimeError when `timeout_s` passes or a process exits."""
    deadline, i = time.monotonic() + timeout_s, 0
    while not condition():
        for name, process in processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited ({process.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} within {timeout_s:.0f} s")
        probe.publish(scene.render_frame(i % scene.num_frames), time.time_ns())
        i += 1
        time.sleep(0.1)


def run_deployment(scene, args: argparse.Namespace, name: str, dds_env: dict[str, str]) -> dict:
    """Start the nodes as `name` says, feed them the camera in real time for `--seconds` (with
    queries back to back in the query deployments) and return the figures of that run."""
    import rclpy

    from stvg_ros.nodes.lifecycle import spawn_logged

    deployment = DEPLOYMENTS[name]
    namespace = f"stvg_bench_{os.getpid()}_{name}"
    camera_topic = f"/{namespace}/camera/image_raw"
    log_dir = Path(tempfile.mkdtemp(prefix=f"stvg-bench-{name}-"))
    commands, nodes = deployment_commands(deployment, namespace, camera_topic, node_overrides(args), log_dir)
    env = {**os.environ, **dds_env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(max(1, args.threads))}
    processes: dict[str, subprocess.Popen] = {}
    context = rclpy.Context()
    queries: _Queries | None = None
    try:
        for process_name, command in commands.items():
            processes[process_name] = spawn_logged(command, log_dir / f"{process_name}.log", env)
        rclpy.init(context=context)
        probe = CameraProbe(context, namespace, camera_topic, args.query_reasoning == "on")
        grounding = "grounding_node" in nodes
        waits = [
            (lambda: probe.publisher.get_subscription_count() >= len(nodes), 180, "camera subscriptions of all nodes"),
            (lambda: probe.tracks_seen > 0, 60, "tracks from the tracker"),
        ]
        if grounding:  # active: the grounding node buffers frames only once its model is loaded
            buffered = lambda: int(probe.diagnostics.get("grounding", {}).get("buffer_frames", 0)) > 0  # noqa: E731
            waits.append((buffered, 180, "frames in the grounding node's buffer"))
        for condition, timeout_s, what in waits:
            warm_up(probe, scene, processes, condition, timeout_s, what)
        if deployment.queries:  # the first answer (llama.cpp's first run is slower), then measure
            queries = _Queries(probe)
            queries.start()
            warm_up(probe, scene, processes, lambda: queries.latencies_s, 300, "answer to a warm-up query")
            queries.stop()
            queries = _Queries(probe)
        time.sleep(1.0)
        before = probe.fresh_diagnostics()
        rss_start = {n: rss_mb(p.pid) for n, p in processes.items()}
        if queries is not None:
            queries.start()
        camera = Camera(scene, args.fps, args.seconds)
        started = time.monotonic()
        for _, captured, stamp_ns, rgb in camera.frames():
            probe.capture[stamp_ns] = captured
            probe.publish(rgb, stamp_ns)
            probe.result.camera_frames += 1
        time.sleep(1.0)  # let the last tracks arrive
        result = probe.result
        result.seconds = time.monotonic() - started - 1.0
        after = probe.fresh_diagnostics()
        rss_end = {n: rss_mb(p.pid) for n, p in processes.items()}
        if queries is not None:
            queries.stop()
        probe.executor.shutdown(timeout_sec=5)
    except RuntimeError as exc:
        tails = {n: (log_dir / f"{n}.log").read_text(errors="replace")[-1500:] for n in processes}
        raise RuntimeError(f"{exc}; logs in {log_dir}; their ends: {tails}") from exc
    finally:
        if queries is not None:
            queries.stopped.set()
        rclpy.try_shutdown(context=context)
        for process in processes.values():
            _stop(process)
    fraction = round(result.frames_with_tracks / max(1, result.camera_frames), 4)
    answered = queries.latencies_s if queries else []
    figures: dict = {
        "processes": list(processes),
        "log_dir": str(log_dir),
        "camera_frames": result.camera_frames,
        "frames_with_tracks_fraction": fraction,
        "frames_with_objects_fraction": round(result.frames_with_objects / max(1, result.camera_frames), 4),
        "latency_p50_ms": result.percentile_ms(50),
        "latency_p95_ms": result.percentile_ms(95),
        "throughput_fps": round(result.throughput, 2),
        "goal_met": fraction >= GOAL_FRACTION and result.percentile_ms(95) <= GOAL_P95_MS,
        "rss_mb_start": rss_start,
        "rss_mb_end": rss_end,
        "queries_sent": queries.sent if queries else None,
        "queries_answered": len(answered) if queries else None,
        "queries_succeeded": queries.succeeded if queries else None,
        "query_latency_p50_s": round(float(np.median(answered)), 2) if answered else None,
        **after,  # the nodes' diagnostics at the end (counters since the node started)
        # integer diagnostics over the measured window: value at its end - at its start
        "diagnostics_delta": {k: int(v) - int(before[k]) for k, v in after.items() if _is_int(v, before.get(k))},
    }
    if grounding:  # does the history hold every frame the sampling rate asks for?
        expected = round(result.camera_frames / args.fps * BUFFER["buffer_sample_fps"])
        held = figures["diagnostics_delta"].get("grounding_buffer_frames")
        complete = held is not None and held >= expected - 1
        figures.update(buffer_expected_frames=expected, buffer_frames_in_window=held, buffer_complete=complete)
    return figures


def _is_int(*values: str | None) -> bool:
    return all(v is not None and v.lstrip("-").isdigit() for v in values)


def _image_msg(rgb: np.ndarray, stamp_ns: int):
    from sensor_msgs.msg import Image

    from stvg_ros.core.image_codec import encode_image
    from stvg_ros.nodes.messages import ns_to_stamp

    msg = Image(**encode_image(rgb))
    msg.header.stamp, msg.header.frame_id = ns_to_stamp(stamp_ns), "camera"
    return msg


# --------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    """Every measurement; what libraries print while measuring (ultralytics building a model) goes
    to stderr, so that stdout carries only the figures (`--json`)."""
    with contextlib.redirect_stdout(sys.stderr):
        return _measure(args)


def _measure(args: argparse.Namespace) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    dds_env = large_image_dds()  # before rclpy.init here and in every node's process
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
    figures["deployments"] = {} if args.no_ros else run_deployments(scene, args, dds_env)
    baseline = figures["deployments"].get("tracker_process")
    if baseline is None or "error" in baseline:
        figures["ros_error"] = baseline["error"] if baseline else "skipped (--no-ros or --deployments)"
    else:
        figures.update(
            ros_frames_with_tracks_fraction=baseline["frames_with_tracks_fraction"],
            ros_latency_p50_ms=baseline["latency_p50_ms"],
            ros_latency_p95_ms=baseline["latency_p95_ms"],
            ros_throughput_fps=baseline["throughput_fps"],
            ros_ratio=round(baseline["throughput_fps"] / core.throughput, 3) if core.throughput else None,
            ros_node_log=f"{baseline['log_dir']}/tracker_node.log",
            ros_node_rss_mb_start=baseline["rss_mb_start"].get("tracker_node"),
            ros_node_rss_mb_end=baseline["rss_mb_end"].get("tracker_node"),
            **{f"ros_node_{key}": baseline.get(f"tracker_{key}") for key in ROS_NODE_KEYS},
        )
    return figures


def run_deployments(scene, args: argparse.Namespace, dds_env: dict[str, str]) -> dict[str, dict]:
    """{deployment: its figures, or {"error": why}} for every deployment in `--deployments`."""
    vlm_error = None
    if any(not DEPLOYMENTS[name].nodes for name in args.deployments):
        try:
            prepare_vlm(args)
        except RuntimeError as exc:
            vlm_error = str(exc)
    out: dict[str, dict] = {}
    for name in args.deployments:
        log.info("deployment %s: %.0f s at %.0f FPS", name, args.seconds, args.fps)
        if vlm_error and not DEPLOYMENTS[name].nodes:
            out[name] = {"error": vlm_error}
            continue
        try:
            out[name] = run_deployment(scene, args, name, dds_env)
        except (ImportError, RuntimeError, OSError, ValueError) as exc:
            out[name] = {"error": str(exc)}
    return out
