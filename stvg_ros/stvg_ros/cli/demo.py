"""`stvg-ros demo`: the whole graph on a generated video, one query over the service, an annotated video.

Offline and self-contained: it writes a synthetic scene (video + rosbag2), builds the tiny test
models on first use (`yolo-synth-tiny` detector: synthetic/detector.py, about 3 min on 2 cores;
`qwen25vl-tiny-random` VLM: synthetic/tiny_vlm.py; both through the model registry's build hooks,
kept in the models folder, ~/.cache/stvg_ros/models/), starts tracker + overlay + grounding in this
process (the graph of `stvg-ros up`), plays the bag into them with the
player node, asks the scene's caption over the `ground` service, and writes:

    <out>/demo_annotated.mp4   frames with the IDs the model sees (red) and the answer's tube (green)
    <out>/demo_result.json     the answer (same keys as `stvg-ros ask --json`), what produced it, and
                               how it compares with the scene's ground truth

The tiny VLM has random weights, so its answer is not meaningful (the demo says so); every stage
around it is real. The demo checks the answer against the scene's ground truth: the reference track
is the received track that best covers the caption's ground-truth boxes (the evaluation's
perception-ceiling track), and the span is compared by temporal IoU. `--model` takes any grounding
model (a manifest's `note` and `meaningful` are reported).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import cv2

from stvg_ros.core.bag_io import iter_image_bag
from stvg_ros.core.model_registry import ModelRegistryError, pull
from stvg_ros.core.render import render_ids
from stvg_ros.core.types import Tracks, frame_stamp_ns
from stvg_ros.core.video_io import VideoWriter
from stvg_ros.evaluation.errors import EvalError
from stvg_ros.evaluation.loaders import Query, load_annotations, synth_query_id
from stvg_ros.evaluation.metrics import perception_ceiling, temporal_iou_seconds
from stvg_ros.grounding.backends.models import manifest_note
from stvg_ros.nodes.dds import use_large_image_dds
from stvg_ros.nodes.graph import PLAYER_NODE, Graph, graph_nodes, merged_params_file, ros_arguments
from stvg_ros.nodes.ground_client import (
    REASONING_ON,
    GroundClient,
    GroundError,
    GroundTimeout,
    format_result,
    result_to_dict,
)
from stvg_ros.nodes.messages import stamp_to_ns, tracks_from_msg
from stvg_ros.synthetic.scenes import SceneSpec, write_dataset
from stvg_ros.synthetic.tiny_vlm import TINY_DISCLAIMER, is_tiny_model

log = logging.getLogger(__name__)

DEMO_DETECTOR = "yolo-synth-tiny"
DEMO_VLM = "qwen25vl-tiny-random"
#: The scene the demo generates: one easy caption.
DEMO_SECONDS, DEMO_FPS, DEMO_OBJECTS, DEMO_FRAMES = 8.0, 10.0, 3, 8
#: Each run's graph lives under its own namespace (with its camera topic inside it), so two demos on
#: one machine, or a demo beside a robot's own graph, never hear each other's frames or queries.
NAMESPACE_PREFIX = "stvg_demo"
CAMERA_TOPIC = "camera/image_raw"  # relative: inside the run's namespace
TARGET_RGB = (0, 220, 0)  # the answer's box; red is reserved for the IDs the model reads


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "demo",
        help="run the whole graph on a generated video and ask one query",
        description="Generate a scene, run tracker -> grounding over DDS, ask one query, write an annotated video.",
    )
    parser.add_argument("--out", default="stvg-demo", help="output folder (default: ./stvg-demo)")
    parser.add_argument("--seed", type=int, default=3, help="scene seed")
    parser.add_argument(
        "--seconds",
        type=float,
        default=DEMO_SECONDS,
        help=f"length of the generated video (default {DEMO_SECONDS:g})",
    )
    parser.add_argument("--query", help="query to ask (default: the scene's generated caption)")
    parser.add_argument("--backend", default="llama_cpp", choices=("llama_cpp", "transformers"), help="VLM backend")
    parser.add_argument(
        "--model",
        default=DEMO_VLM,
        help=f"grounding model: manifest name or path (default: {DEMO_VLM}, built locally)",
    )
    parser.add_argument("--mmproj", default="", help="vision projector GGUF when --model is a GGUF path")
    parser.add_argument(
        "--detector",
        default=DEMO_DETECTOR,
        help=f"detector: manifest name or file (default: {DEMO_DETECTOR}, built locally)",
    )
    parser.add_argument("--rate", type=float, default=2.0, help="playback speed (x real time)")
    parser.add_argument(
        "--num-frames",
        type=int,
        default=DEMO_FRAMES,
        help=f"frames the model sees (default {DEMO_FRAMES}; a model's recorded input format replaces it)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="give up on the graph run after this many seconds (building the tiny models first is not counted)",
    )
    parser.add_argument(
        "--namespace",
        default="",
        help=f"ROS namespace of the demo's graph (default: {NAMESPACE_PREFIX}_<pid>, one per run)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    return parser


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # Only this machine: the demo must not talk to (or disturb) a robot on the network.
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    # The demo publishes the camera itself, so it chooses the transport for camera images.
    use_large_image_dds()
    try:
        with _stdout_to_stderr():  # model builds and nodes may print; stdout carries only the result
            summary = _demo(args, out)
    except DemoError as exc:
        summary = {"success": False, "message": str(exc)}
        log.error("demo failed: %s", exc)
    summary["elapsed_s"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(_report(summary))
    return 0 if summary.get("success") else 1


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send everything written to file descriptor 1 (Python and C code alike) to stderr meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


class DemoError(RuntimeError):
    """A step of the demo that could not complete (the message says which and why)."""


def _step(text: str) -> None:
    print(f"[demo] {text}", file=sys.stderr, flush=True)


def _demo(args: argparse.Namespace, out: Path) -> dict:
    _step(f"writing a synthetic scene ({args.seconds:g} s, seed {args.seed}) to {out / 'scene'}")
    spec = SceneSpec(seconds=args.seconds, fps=DEMO_FPS, n_objects=DEMO_OBJECTS, difficulty="easy", max_queries=1)
    index = write_dataset(out / "scene", args.seed, 1, spec, bags=True)
    caption = index.load_queries()[0]
    query = args.query or caption["text"]

    _step(
        f"models: detector {args.detector} (built locally on first use: about 3 min on 2 cores, once), "
        f"grounding model {args.model}"
    )
    for name in (args.model, args.detector):  # the quick one first: a wrong path fails before a long build
        if Path(name).expanduser().exists():
            continue
        try:
            pull(name)  # builds the tiny models (registry build hooks); fails clearly offline for hosted ones
        except (ModelRegistryError, OSError) as exc:
            raise DemoError(f"could not get model {name}: {exc}") from exc

    run_info = _run_graph(args, out, index.bags[0], query, time.monotonic() + args.timeout)
    result = run_info["result"]
    reference = _reference_query(index.root, index.names[0])
    gt_track = reference_track_id(reference, run_info["tracks"]) if reference is not None else None
    summary = {
        "answered": True,
        **result,
        "backend": args.backend,
        "grounding_model": args.model,
        **_meaning(args.model),
        "ground_truth": {
            "text": caption["text"],
            "start": caption["start_s"],
            "end": caption["end_s"],
            "track_id": gt_track,
        },
        "check": check_answer(result, (caption["start_s"], caption["end_s"]), gt_track, first_stamp_ns(spec.fps)),
        "frames_played": run_info["frames_played"],
        "tracks_received": len(run_info["tracks"]),
        "track_ids_received": received_track_ids(run_info["tracks"]),
        "namespace": run_info["namespace"],
        "frames": run_info["frames"],
        "scene_video": str(index.videos[0]),
        "bag": str(index.bags[0]),
        "timings_s": run_info["timings_s"],
    }
    _step("writing the annotated video and the result file")
    summary["annotated_video"] = str(
        _write_video(out / "demo_annotated.mp4", index.bags[0], run_info["tracks"], result)
    )
    result_file = out / "demo_result.json"
    summary["result_file"] = str(result_file)
    result_file.write_text(json.dumps(summary, indent=2))
    return summary


def _meaning(model: str) -> dict:
    """{"meaningful", "disclaimer", "manifest_note"}: whether the model's answer can mean anything, in
    plain words. A manifest's `meaningful` decides where it has one; the tiny random model never means
    anything."""
    named = not Path(model).expanduser().exists()
    note = manifest_note(model) if named else ""
    declared = _manifest_meaningful(model) if named else None
    if is_tiny_model(model) or declared is False or (declared is None and "meaningless" in note):
        return {
            "meaningful": False,
            "disclaimer": f"{Path(model).name} is a {TINY_DISCLAIMER}, so the ID and span it chose are not meaningful; "
            "the graph, tracker, buffer, prompt, grammar, parser and tube around it are the real ones",
            "manifest_note": note,
        }
    return {"meaningful": True, "disclaimer": note, "manifest_note": note}


def _manifest_meaningful(model: str) -> bool | None:
    """The manifest's `meaningful` flag, or None (no manifest of that name, or no flag)."""
    from stvg_ros.core import model_registry as registry

    try:
        value = registry.get_manifest(model).extra.get("meaningful")
    except registry.ModelRegistryError:
        return None
    return value if isinstance(value, bool) else None


# --------------------------------------------------------------------------------------------
# the answer against the ground truth (ROS-free)


def first_stamp_ns(fps: float) -> int:
    """Stamp of the generated scene's first frame (the player sends the bag's stamps as they are)."""
    return frame_stamp_ns(0, fps)


def _reference_query(scene_root: Path, name: str) -> Query | None:
    """The scene's caption as the evaluation loads it (GT span and boxes; frame ids one_based)."""
    try:
        return load_annotations(scene_root).queries.get(synth_query_id(name, 0))
    except EvalError as exc:
        log.warning("could not read the scene's ground truth: %s", exc)
        return None


def reference_track_id(query: Query, tracks: dict) -> int | None:
    """The ground-truth target among the received tracks: the track whose boxes best cover the
    caption's GT tube (highest vIoU over the GT span; ties to the smaller ID), as `stvg-ros eval`
    picks its reference ID (`metrics.perception_ceiling`). `tracks`: stamp_ns -> Tracks, as the demo
    receives them; stamps of frames outside the scene are ignored. None when no received track
    overlaps the tube (or none arrived)."""
    frame_of = {frame_stamp_ns(d, query.fps): query.to_annotation(d) for d in range(query.num_frames)}
    frame_tracks = {}
    for stamp, frame in tracks.items():
        if (frame_id := frame_of.get(int(stamp))) is not None and len(frame):
            frame_tracks[frame_id] = (frame.track_id, frame.xyxy)
    return perception_ceiling(query, frame_tracks).track_id


def received_track_ids(tracks: dict) -> list[int]:
    """Every track ID in the received tracks messages (untracked detections, -1, left out), sorted."""
    return sorted({int(t) for frame in tracks.values() for t in frame.track_id if int(t) >= 0})


def check_answer(result: dict, gt_span: tuple[float, float], gt_track_id: int | None, first_ns: int) -> dict:
    """{"id_correct", "tiou", "span_overlaps"} of an answer (`result_to_dict` keys) against the
    caption's GT span (seconds from the scene's first frame) and the GT track ID among the received
    tracks. The answered span is placed on the scene's time line by its ROS stamps (`first_ns`: the
    first frame's stamp). id_correct is None when there is no answer or no GT track; tiou is None
    without an answer; span_overlaps says whether the spans share any time (a one-instant answer
    inside the GT span overlaps it)."""
    if not result.get("success") or result.get("start_stamp") is None or result.get("end_stamp") is None:
        return {"id_correct": None, "tiou": None, "span_overlaps": False}
    span = (result["start_stamp"] - first_ns / 1e9, result["end_stamp"] - first_ns / 1e9)
    gt = (float(gt_span[0]), float(gt_span[1]))
    tiou = temporal_iou_seconds(span, gt)
    overlaps = min(span[1], gt[1]) > max(span[0], gt[0]) or (span[0] == span[1] and gt[0] <= span[0] <= gt[1])
    correct = None
    if gt_track_id is not None and result.get("target_id") is not None:
        correct = int(result["target_id"]) == int(gt_track_id)
    return {"id_correct": correct, "tiou": round(tiou, 4), "span_overlaps": bool(overlaps)}


def check_line(summary: dict) -> str:
    """One line: was the ID right, does the span overlap the ground truth (tIoU)."""
    check, gt_track = summary.get("check") or {}, (summary.get("ground_truth") or {}).get("track_id")
    if check.get("tiou") is None:
        return "check: no answer to compare with the ground truth"
    if check.get("id_correct") is None:
        ident = "target ID not judged (no received track covers the ground-truth boxes)"
    elif check["id_correct"]:
        ident = f"right target ID (track {gt_track})"
    else:
        ident = f"WRONG target ID (answered {summary.get('target_id')}, ground truth track {gt_track})"
    span = "span overlaps the ground truth" if check["span_overlaps"] else "span does NOT overlap the ground truth"
    return f"check: {ident}, {span} (tIoU {check['tiou']:.2f})"


def _run_graph(args: argparse.Namespace, out: Path, bag: Path, query: str, deadline: float) -> dict:
    """Start the graph + a player in this process, play the bag, ask `query` over the service."""
    # ROS here, not at import: run() sets the DDS environment first
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Bool

    from stvg_ros_msgs.msg import TrackedObjectArray

    namespace = (args.namespace or f"{NAMESPACE_PREFIX}_{os.getpid()}").strip("/")
    grounding = {
        "backend": args.backend,
        "model": args.model,
        "mmproj": args.mmproj,
        "n_gpu_layers": 0,
        "buffer_seconds": args.seconds + 30.0,
        "max_new_tokens": 256,
        "query_timeout_s": max(10.0, deadline - time.monotonic()),
    }
    if args.num_frames is not None:  # else the model's recorded input format (or the node's parameter)
        grounding["num_frames"] = args.num_frames
    overrides = {
        "tracker_node": {"detector": args.detector},
        "grounding_node": grounding,
        # every image subscriber of the graph (tracker, overlay, grounding) matched before the first frame
        "player_node": {"bag": str(bag), "rate": args.rate, "wait_for_subscribers": 3, "exit_on_end": False},
    }
    params = merged_params_file(None, overrides, out / "params")
    camera_topic = f"/{namespace}/{CAMERA_TOPIC}"
    rclpy.init(args=ros_arguments(params, camera_topic=camera_topic, namespace=namespace))
    graph = Graph(graph_nodes(overlay=True))
    timings: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        _step("starting tracker, overlay and grounding nodes")
        graph.build()
        if graph.failed:
            raise DemoError(f"node(s) {', '.join(graph.failed)} failed to start (see the log above)")
        timings["graph_start"] = round(time.monotonic() - t0, 2)

        client = rclpy.create_node("demo_client", namespace=namespace)
        tracks: dict[int, object] = {}
        finished = threading.Event()
        lock = threading.Lock()

        def on_tracks(msg) -> None:
            with lock:
                tracks[stamp_to_ns(msg.header.stamp)] = tracks_from_msg(msg)

        latched = QoSProfile(
            depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE
        )
        client.create_subscription(TrackedObjectArray, "tracks", on_tracks, 100)
        client.create_subscription(Bool, "player_node/finished", lambda m: finished.set(), latched)
        ground = GroundClient(client)
        graph.add(client)
        graph.start()

        _step(f"playing {bag.name} at {args.rate:g}x into {camera_topic}")
        t0 = time.monotonic()
        player = _make_player(PLAYER_NODE)
        graph.add(player)
        if not finished.wait(timeout=max(1.0, deadline - time.monotonic())):
            raise DemoError("playback did not finish in time")
        _settle(lambda: len(tracks), player.frames_published, min(10.0, max(1.0, deadline - time.monotonic())))
        timings["playback"] = round(time.monotonic() - t0, 2)
        frames = _frame_counts(graph, player.frames_published)
        if frames["frames_lost"]:
            _step(f"WARNING: frames lost in the graph: {json.dumps(frames)}")
        if not tracks:
            raise DemoError("the tracker published no tracks (see the log above)")

        _step(f'asking over the service {ground.service_name}: "{query}"')
        t0 = time.monotonic()
        if not ground.wait_ready(max(1.0, min(30.0, deadline - time.monotonic()))):
            raise DemoError("the grounding service did not appear")
        try:
            answer = ground.ask(query, 0.0, REASONING_ON, timeout_s=deadline - time.monotonic())
        except GroundTimeout:
            raise DemoError(f"no answer within the {args.timeout:.0f} s timeout") from None
        except GroundError as exc:
            raise DemoError(str(exc)) from None
        timings["query"] = round(time.monotonic() - t0, 2)
        with lock:
            recorded = dict(tracks)
        return {
            "result": result_to_dict(answer),
            "tracks": recorded,
            "frames_played": player.frames_published,
            "frames": frames,
            "namespace": namespace,
            "timings_s": timings,
        }
    finally:
        graph.stop()
        if rclpy.ok():
            rclpy.shutdown()


def _settle(count, expected: int, timeout_s: float) -> None:
    """Wait until `count()` reaches `expected` or stops growing for a second (at most `timeout_s`)."""
    end = time.monotonic() + timeout_s
    last, since = count(), time.monotonic()
    while time.monotonic() < end and count() < expected and time.monotonic() - since < 1.0:
        time.sleep(0.05)
        if count() != last:
            last, since = count(), time.monotonic()
    time.sleep(0.2)  # the grounding node's copy of the last tracks


def _frame_counts(graph, played: int) -> dict:
    """Camera frames each node received and lost (by cause), and the grounding buffer's sampled frames."""
    tracker, grounding = graph.node("tracker_node").frame_counts(), graph.node("grounding_node").frame_counts()
    return {
        "played": played,
        "tracker_node": tracker,
        "grounding_node": {k: v for k, v in grounding.items() if not k.startswith("buffer_")},
        "buffer_frames": grounding.get("buffer_frames", 0),
        "buffer_missed_samples": grounding.get("buffer_missed_samples", 0),
        "frames_lost": tracker.get("frames_lost", 0) + grounding.get("frames_lost", 0),
    }


def _make_player(spec):
    return getattr(importlib.import_module(spec.module), spec.class_name)()


def _write_video(path: Path, bag: Path, tracks: dict, result: dict) -> Path:
    """The bag's frames with the drawn IDs (the model's view) and the answer's tube box."""
    tube = {box["stamp_ns"]: box["box"] for box in result.get("tube", [])} if result.get("success") else {}
    writer = None
    try:
        for frame in iter_image_bag(bag):
            rgb = render_ids(frame.rgb, tracks.get(frame.stamp_ns, Tracks()))
            if (box := tube.get(frame.stamp_ns)) is not None:
                x1, y1, x2, y2 = (round(v) for v in box)
                cv2.rectangle(rgb, (x1, y1), (x2, y2), TARGET_RGB, 2)
                label = f"target {result['target_id']}"
                cv2.putText(
                    rgb, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, TARGET_RGB, 1, cv2.LINE_AA
                )
            if writer is None:
                writer = VideoWriter(path, 10.0, (rgb.shape[1], rgb.shape[0]))
            writer.write(rgb)
    finally:
        if writer is not None:
            writer.close()
    return path


def _report(summary: dict) -> str:
    if not summary.get("answered"):
        return f"stvg-ros demo failed: {summary.get('message')}"
    gt = summary["ground_truth"]
    model = summary.get("grounding_model") or summary["model"]
    lines = [
        f'query: "{summary["query"]}"',
        f"answered by the grounding model {model} via {summary['backend']}:",
        *("  " + line for line in format_result(summary).splitlines()),
        *([f"NOTE: {summary['disclaimer']}."] if summary.get("disclaimer") else []),
        f"scene caption span (ground truth): {gt['start']:.2f} s to {gt['end']:.2f} s"
        + (f", target track {gt['track_id']}" if gt.get("track_id") is not None else ", target track unknown"),
        check_line(summary),
        f"played {summary['frames_played']} frames, {summary['tracks_received']} tracks messages, "
        f"{summary['frames']['frames_lost']} frames lost in the graph, {summary['frames']['buffer_frames']} in the "
        f"grounding buffer",
        f"annotated video: {summary['annotated_video']}",
        f"result: {summary['result_file']}",
        f"took {summary['elapsed_s']:.0f} s",
    ]
    return "\n".join(lines)
