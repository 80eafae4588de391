"""`stvg-ros eval replay`: play rosbag2 files into the running ROS graph with sim time, ask the
sidecar's queries over the `ground` service at their moments, key every result by the source
stamps, and score.

Sidecar (JSON; relative paths are relative to the sidecar's folder)::

    {"video_id": "synth_0_000",            # the annotation's video this bag holds
     "bag": "../bags/synth_0_000",         # rosbag2 folder or .db3/.mcap file
     "topic": "/camera/image_raw",         # image topic in the bag (null: its only image topic)
     "annotations": "..",                  # annotation file, or a synthetic set's folder
     "queries": [{"query_id": "synth_0_000",
                  "ask_at_frame": null,    # annotation frame after which to ask (null: after the last)
                  "window_s": 0.0}]}       # Ground.window_seconds (0: the whole buffer)

The bag's k-th image message is annotation frame `k + frame_base`; its frame count must equal the
annotation's. Playback is lock-step by default (`--pace lockstep`: the next frame is published once
the tracker's `tracks` for the previous one arrived, so the tracker sees every frame, as offline),
or paced by the stamps (`--pace rate --rate R`, 0 = as fast as possible). /clock follows the header
stamps; nothing loops; sim time stands still while a query is answered. CompressedImage bags are
decoded when the graph does not listen to compressed images. Several sidecars are played one after
another with their stamps shifted by `BAG_GAP_S` so that sim time only moves forward (results are
mapped back to each bag's frames).

Memory stays bounded: frames are streamed one at a time, tracks are kept only for frames inside a
GT span (the perception ceiling needs no others) and written to tracks.jsonl as they come.

Outputs are those of `eval run` (`run_store`: run.json, predictions.json, records.jsonl and
tracks.jsonl written as each query finishes; reports at the end). `--resume` skips the bags whose
queries are all done and plays the others whole, asking only their unfinished queries; against a
graph that keeps running between the two, sim time then starts over: prefer `--start-graph`. The
graph's tracker numbers its tracks afresh after a restart, so the bags played after a resume may
show the model other ID numbers than an uninterrupted replay would (`eval run` restores them). The
fingerprint covers what replay is given (sidecars, bags, pacing, topics, the started graph's
arguments), not the settings of a graph started elsewhere.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from stvg_ros.core.bag_io import BagError, bag_info, iter_image_messages, stamp_ns_of
from stvg_ros.core.image_codec import decode_compressed
from stvg_ros.evaluation.errors import EvalError
from stvg_ros.evaluation.loaders import AnnotationSet, Query, load_annotations
from stvg_ros.evaluation.predictions import Prediction, query_record, span_indices
from stvg_ros.evaluation.report import write_report
from stvg_ros.evaluation.run_store import RunStore
from stvg_ros.evaluation.scoring import score
from stvg_ros.evaluation.tracks import TrackLog, TrackWriter
from stvg_ros.nodes.ground_client import GroundClient, GroundError
from stvg_ros.nodes.lifecycle import spawn_logged, spin_until_shutdown
from stvg_ros.nodes.messages import ns_to_stamp, stamp_to_ns

log = logging.getLogger("stvg_ros.eval.replay")

#: Sim-time gap between consecutive bags (seconds): longer than any buffer, so a query never sees
#: the previous bag's frames.
BAG_GAP_S = 1000.0
#: Most stamps remembered for mapping results back to frames (a tube lies in the node's buffer).
STAMP_MEMORY = 200_000
#: Lock-step playback gives up after this many frames in a row without the tracker's answer.
LOCKSTEP_MAX_MISSES = 3


@dataclass(frozen=True)
class SidecarQuery:
    query_id: str
    ask_at_frame: int | None = None
    window_s: float = 0.0


@dataclass
class Sidecar:
    path: Path
    video_id: str
    bag: Path
    topic: str | None
    annotations: Path
    queries: list[SidecarQuery] = field(default_factory=list)


def load_sidecar(path: str | Path, bag: str | Path | None = None) -> Sidecar:
    """Read and check a sidecar file (`bag` overrides its bag); EvalError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"sidecar not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalError(f"sidecar {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EvalError(f"sidecar {path} must be a JSON object")
    if bag is not None:
        data["bag"] = str(Path(bag).resolve())
    for key in ("video_id", "bag", "annotations"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise EvalError(f"sidecar {path}: missing field {key!r}")
    if data.get("topic") is not None and not isinstance(data["topic"], str):
        raise EvalError(f"sidecar {path}: field 'topic' must be a topic name (a string), got {data['topic']!r}")
    items = data.get("queries") or []
    if not isinstance(items, list):
        raise EvalError(f"sidecar {path}: field 'queries' must be a list of {{query_id, ask_at_frame, window_s}}")
    base = path.parent
    queries = []
    for number, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("query_id"), (str, int)):
            raise EvalError(f"sidecar {path}: query {number} needs a 'query_id' (a string)")
        where = f"sidecar {path}: query {item['query_id']!r}"
        ask = item.get("ask_at_frame")
        if ask is not None and (isinstance(ask, bool) or not isinstance(ask, int) or ask < 0):
            raise EvalError(f"{where}: field 'ask_at_frame' must be a frame number >= 0, got {ask!r}")
        window = item.get("window_s", 0.0) or 0.0
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not math.isfinite(window) or window < 0:
            raise EvalError(f"{where}: field 'window_s' must be a number of seconds >= 0, got {window!r}")
        queries.append(SidecarQuery(str(item["query_id"]), ask, float(window)))
    return Sidecar(
        path=path,
        video_id=data["video_id"],
        bag=(base / data["bag"]).resolve(),
        topic=data.get("topic") or None,
        annotations=(base / data["annotations"]).resolve(),
        queries=queries,
    )


@dataclass
class BagPlan:
    """A sidecar checked against its bag and annotations: what to play and what to ask."""

    sidecar: Sidecar
    topic: str
    msgtype: str
    frames: int
    queries: list[Query]
    asks: dict[int, list[SidecarQuery]]  # bag message index after which to ask -> queries


def plan_bag(sidecar: Sidecar, annotations: AnnotationSet) -> BagPlan:
    """EvalError/BagError for an unreadable bag, an unknown topic, queries the annotations lack,
    or a bag whose frame count differs from the annotation's."""
    info = bag_info(sidecar.bag)
    topics = info.image_topics
    topic = sidecar.topic or (topics[0] if len(topics) == 1 else None)
    if topic is None:
        raise BagError(f"bag {sidecar.bag}: set 'topic' in the sidecar; image topics: {topics or 'none'}")
    if topic not in info.topics:
        listing = ", ".join(sorted(info.topics)) or "none"
        raise BagError(f"bag {sidecar.bag} has no topic {topic!r} (topics: {listing})")
    if topic not in topics:
        raise BagError(f"topic {topic!r} of bag {sidecar.bag} is {info.topics[topic][0]}, not an image type")
    msgtype, frames = info.topics[topic]
    wanted = sidecar.queries or [
        SidecarQuery(q.query_id) for q in annotations if q.video_id == sidecar.video_id
    ]  # fmt: skip
    if not wanted:
        raise EvalError(f"sidecar {sidecar.path}: no queries, and the annotations have none for {sidecar.video_id!r}")
    queries, asks = [], {}
    for item in wanted:
        query = annotations.queries.get(item.query_id)
        if query is None:
            raise EvalError(f"sidecar {sidecar.path}: query {item.query_id!r} is not in {annotations.path}")
        if query.num_frames != frames:
            raise EvalError(
                f"frame-index mismatch: bag {sidecar.bag} has {frames} images on {topic}, the annotation of "
                f"{query.query_id!r} says the video has {query.num_frames} frames"
            )
        index = frames - 1 if item.ask_at_frame is None else query.to_decoded(item.ask_at_frame)
        if not 0 <= index < frames:
            raise EvalError(f"sidecar {sidecar.path}: ask_at_frame {item.ask_at_frame} is outside the bag")
        queries.append(query)
        asks.setdefault(index, []).append(item)
    return BagPlan(sidecar, topic, msgtype, frames, queries, asks)


class StampIndex:
    """Published stamp (ns) -> (video id, annotation frame), for the most recent `capacity` stamps.
    Stamps are added in increasing order (playback only moves forward)."""

    def __init__(self, capacity: int = STAMP_MEMORY) -> None:
        self.capacity = capacity
        self._stamps: list[int] = []
        self._entries: list[tuple[str, int]] = []

    def add(self, stamp_ns: int, video_id: str, frame: int) -> None:
        if self._stamps and stamp_ns <= self._stamps[-1]:
            raise EvalError(f"stamps must increase during replay ({stamp_ns} after {self._stamps[-1]})")
        self._stamps.append(int(stamp_ns))
        self._entries.append((video_id, frame))
        if len(self._stamps) > self.capacity:
            drop = len(self._stamps) - self.capacity
            del self._stamps[:drop], self._entries[:drop]

    def get(self, stamp_ns: int) -> tuple[str, int] | None:
        index = bisect.bisect_left(self._stamps, int(stamp_ns))
        if index < len(self._stamps) and self._stamps[index] == int(stamp_ns):
            return self._entries[index]
        return None

    def span(self, start_ns: int, end_ns: int) -> tuple[tuple[str, int], tuple[str, int]] | None:
        """The first and last frame whose stamps lie in [start_ns, end_ns] (see `span_indices`)."""
        indices = span_indices(self._stamps, int(start_ns), int(end_ns))
        return None if indices is None else (self._entries[indices[0]], self._entries[indices[1]])


def rss_mb(pid: int | None = None) -> float | None:
    """Resident memory (MiB) of a process (default: this one) from /proc; None when unknown."""
    try:
        with open(f"/proc/{pid or os.getpid()}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if pid is None else None


# --------------------------------------------------------------------------------------------
# the replay driver (rclpy is imported only here: the rest works without ROS)


@dataclass
class ReplayConfig:
    sidecars: list[Path]
    out: Path
    bag: Path | None = None  # overrides the first sidecar's bag
    protocol: str = "tubedetr"
    annotation_format: str = "auto"
    vidor_dir: str | None = None
    pace: str = "lockstep"  # lockstep | rate
    rate: float = 1.0
    camera_topic: str = "/camera/image_raw"
    tracks_topic: str = "/tracks"
    service: str = "/ground"
    start_graph: bool = False
    graph_args: list[str] = field(default_factory=list)
    graph_timeout_s: float = 120.0
    frame_timeout_s: float = 10.0
    query_timeout_s: float = 300.0
    reasoning: int = 0  # Ground.srv REASONING_DEFAULT
    decompress: bool = False  # publish CompressedImage bags as sensor_msgs/Image
    progress: bool = True
    resume: bool = False  # continue the run in `out` (run_store)


class _Driver:
    """One rclpy node in this process: camera + /clock publisher, tracks subscriber, GroundClient."""

    def __init__(self, config: ReplayConfig) -> None:
        try:
            import rclpy
            from rclpy.executors import SingleThreadedExecutor
            from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
            from rosgraph_msgs.msg import Clock
            from sensor_msgs.msg import CompressedImage, Image

            from stvg_ros_msgs.msg import TrackedObjectArray
        except ImportError as exc:
            raise EvalError(
                f"replay needs ROS 2 Python and the stvg_ros_msgs interfaces ({exc}); source scripts/env.sh "
                "or a ROS 2 workspace with stvg_ros built"
            ) from None

        self.config = config
        self._owns_context = not rclpy.ok()
        if self._owns_context:
            rclpy.init(args=["--ros-args", "-p", "use_sim_time:=false"])
        self.node = rclpy.create_node("stvg_eval_replay")
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.VOLATILE)  # fmt: skip
        self.image_pub = self.node.create_publisher(Image, config.camera_topic, reliable)
        self.compressed_pub = self.node.create_publisher(
            CompressedImage, config.camera_topic.rstrip("/") + "/compressed", reliable
        )
        self.clock_pub = self.node.create_publisher(Clock, "/clock", 10)
        # reliable: in lock-step a lost tracks message would cost a frame timeout (the tracker publishes reliably)
        tracks_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(TrackedObjectArray, config.tracks_topic, self._on_tracks, tracks_qos)
        self.client = GroundClient(self.node, name=config.service)
        self.Clock, self.Image, self.CompressedImage = Clock, Image, CompressedImage
        self._cond = threading.Condition()
        self._tracks: OrderedDict[int, object] = OrderedDict()  # stamp -> message, bounded
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        # SIGINT/SIGTERM shut the context down: the thread then ends quietly (spin_until_shutdown)
        self._thread = threading.Thread(target=spin_until_shutdown, args=(self.executor,), name="replay-spin",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def _on_tracks(self, msg) -> None:
        stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
        with self._cond:
            self._tracks[stamp] = msg
            while len(self._tracks) > 1000:  # only the recent ones are waited for
                self._tracks.popitem(last=False)
            self._cond.notify_all()

    def take_tracks(self, stamp_ns: int, timeout_s: float):
        """The tracks message of `stamp_ns` (waiting up to timeout_s), or None."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while stamp_ns not in self._tracks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self._tracks.pop(stamp_ns)

    def drain_tracks(self) -> list:
        with self._cond:
            items = list(self._tracks.values())
            self._tracks.clear()
            return items

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        if not self.client.wait_ready(timeout_s):
            raise EvalError(
                f"no grounding service {self.config.service!r} after {timeout_s:.0f} s: start the graph "
                "(`stvg-ros up --use-sim-time`) or pass --start-graph"
            )
        while self.image_pub.get_subscription_count() + self.compressed_pub.get_subscription_count() == 0:
            if time.monotonic() > deadline:
                raise EvalError(f"nothing subscribes to {self.config.camera_topic!r} (is the tracker running?)")
            time.sleep(0.1)

    def publish(self, stamp_ns: int, msgtype: str, message) -> None:
        stamp = ns_to_stamp(stamp_ns)
        self.clock_pub.publish(self.Clock(clock=stamp))
        if msgtype.endswith("CompressedImage"):
            # decoded when asked, or when nothing in the graph listens to compressed images
            if self.config.decompress or self.compressed_pub.get_subscription_count() == 0:
                self.publish_decoded(stamp, message)
                return
            out = self.CompressedImage(format=str(message.format))
            out.data = bytes(message.data)
            pub = self.compressed_pub
        else:
            out = self.Image(height=int(message.height), width=int(message.width), encoding=str(message.encoding),
                             is_bigendian=int(message.is_bigendian), step=int(message.step))  # fmt: skip
            out.data = message.data.tobytes()
            pub = self.image_pub
        out.header.stamp = stamp
        out.header.frame_id = str(message.header.frame_id)
        pub.publish(out)

    def publish_decoded(self, stamp, message) -> None:
        """A CompressedImage published as sensor_msgs/Image (for a graph that listens to raw images)."""
        rgb = decode_compressed(message)
        out = self.Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", is_bigendian=0,
                         step=rgb.shape[1] * 3)  # fmt: skip
        out.data = rgb.tobytes()
        out.header.stamp = stamp
        out.header.frame_id = str(message.header.frame_id)
        self.image_pub.publish(out)

    def ground(self, text: str, window_s: float, timeout_s: float):
        """Call the service; (GroundingResult or None, error text, wall seconds)."""
        started = time.monotonic()
        try:
            result = self.client.ask(text, window_s, self.config.reasoning, timeout_s=timeout_s)
        except GroundError as exc:  # GroundTimeout included
            return None, str(exc), time.monotonic() - started
        return result, "", time.monotonic() - started

    def close(self) -> None:
        import rclpy

        from stvg_ros.nodes.lifecycle import stop_spinner

        if stop_spinner(self.executor, self._thread, 5.0):
            self.node.destroy_node()
        else:  # its wait set still holds the node: the process exit frees it
            log.warning("the replay's spin thread did not stop within 5 s; its node is left to the exit")
        if self._owns_context and rclpy.ok():
            rclpy.try_shutdown()


#: Parameters a started graph gets in lock-step playback, before the user's own (which may override them):
#: reliable image subscriptions, so that a frame the DDS layer would drop on a busy machine (best effort,
#: e.g. over UDP where shared memory is not available) is delivered instead of costing a frame timeout.
LOCKSTEP_GRAPH_PARAMS = ("tracker_node:image_reliability=reliable", "grounding_node:image_reliability=reliable")


def _start_graph(config: ReplayConfig, log_path: Path) -> subprocess.Popen:
    lockstep = [a for p in LOCKSTEP_GRAPH_PARAMS for a in ("-p", p)] if config.pace == "lockstep" else []
    command = [sys.executable, "-m", "stvg_ros.cli.main", "up", "--use-sim-time", "--no-overlay",
               "--camera-topic", config.camera_topic, *lockstep, *config.graph_args]  # fmt: skip
    log.info("starting the graph: %s", " ".join(command))
    return spawn_logged(command, log_path)  # ends with this process, however it ends


def _stop_graph(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def _sample_memory(stats: dict, graph: subprocess.Popen | None) -> None:
    """Append this process's (and a started graph's) resident memory to the replay stats (every
    500 frames during playback)."""
    stats["rss_mb"].append(round(rss_mb() or 0.0, 1))
    if graph is not None and (value := rss_mb(graph.pid)) is not None:
        stats["graph_rss_mb"].append(round(value, 1))


def _result_to_prediction(query: Query, result, stamps: StampIndex, video_start_ns: int):
    """GroundingResult -> (Prediction, problems). Frames come from the source stamps."""
    problems: list[str] = []
    if not result.success:
        return Prediction.failed(query.query_id), problems

    def frame_of(stamp_ns: int) -> int | None:
        hit = stamps.get(stamp_ns)
        if hit is None or hit[0] != query.video_id:
            problems.append(f"stamp {stamp_ns} is not a frame of {query.video_id}")
            return None
        return hit[1]

    span = stamps.span(stamp_to_ns(result.start), stamp_to_ns(result.end))
    if span is None or span[0][0] != query.video_id or span[1][0] != query.video_id:
        problems.append(f"the answer's span is not inside the frames of {query.video_id}")
        return Prediction.failed(query.query_id), problems
    start, end = span[0][1], span[1][1]
    boxes = {}
    for box in result.tube:
        frame = frame_of(stamp_to_ns(box.header.stamp))
        if frame is not None:
            boxes[frame] = (float(box.x1), float(box.y1), float(box.x2), float(box.y2))
    clip_offset_s = (stamp_to_ns(result.clip_start) - video_start_ns) / 1e9
    return (
        Prediction(
            query.query_id,
            start,
            end + 1,
            boxes,
            start_s=clip_offset_s + float(result.start_offset),
            end_s=clip_offset_s + float(result.end_offset),
            target_id=int(result.target_id),
        ),
        problems,
    )


def replay_fingerprint(config: ReplayConfig, sidecars: list[Sidecar]) -> dict:
    """The settings that decide a replay's answers (run.json; `--resume` must match them). Timeouts
    and progress are left out (a resumed run may wait longer), and so is the protocol (it only scores)."""
    return {
        "sidecars": [str(Path(p).resolve()) for p in config.sidecars],
        "bags": [str(s.bag) for s in sidecars],
        "annotation_format": config.annotation_format,
        "vidor_dir": config.vidor_dir,
        "pace": config.pace,
        "rate": config.rate,
        "camera_topic": config.camera_topic,
        "tracks_topic": config.tracks_topic,
        "service": config.service,
        "start_graph": config.start_graph,
        "graph_args": list(config.graph_args),
        "reasoning": config.reasoning,
        "decompress": config.decompress,
    }


def replay(config: ReplayConfig) -> dict:
    """Replay every sidecar's bag into the graph, ask its queries, score. Returns the summary. Each
    query's results are written as it finishes (`run_store`); `config.resume` continues an earlier
    replay in `config.out`. Raises RunInterrupted on SIGINT/SIGTERM, EvalError on bad input or a failure."""
    out = Path(config.out)
    sidecars = [load_sidecar(p, config.bag if i == 0 else None) for i, p in enumerate(config.sidecars)]
    annotation_sets: dict[Path, AnnotationSet] = {}
    plans = []
    for sidecar in sidecars:
        if sidecar.annotations not in annotation_sets:
            annotation_sets[sidecar.annotations] = load_annotations(
                sidecar.annotations, config.annotation_format, config.vidor_dir
            )
        plans.append(plan_bag(sidecar, annotation_sets[sidecar.annotations]))
    queries = {q.query_id: q for plan in plans for q in plan.queries}
    first_set = next(iter(annotation_sets.values()))
    subset = AnnotationSet(queries, first_set.format, first_set.path,
                           [w for s in annotation_sets.values() for w in s.warnings])  # fmt: skip
    gt_frames = {(q.video_id, f) for q in queries.values() for f in range(q.gt_start, q.gt_end)}

    store = RunStore.open(out, "eval replay", replay_fingerprint(config, sidecars), list(queries), config.resume)
    tracks = store.load_tracks(lambda video_id, frame: (video_id, frame) in gt_frames)
    todo = [plan for plan in plans if not store.is_video_done(plan.sidecar.video_id)]
    stats = {"frames_published": 0, "frames_with_tracks": 0, "frames_without_tracks": 0, "rss_mb": [],
             "graph_rss_mb": []}  # fmt: skip
    started = time.monotonic()
    with store.recording((EvalError, OSError, BagError)):
        if todo:
            _play(config, store, todo, queries, tracks, gt_frames, stats)

    stats["frames_without_tracks"] = max(0, stats["frames_published"] - stats["frames_with_tracks"])
    stats["wall_s"] = round(time.monotonic() - started, 2)
    stats["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    stats["resumed_queries"] = store.resumed
    predictions = store.predictions
    summary, _ = score(subset, predictions, config.protocol, tracks)
    summary["replay"] = stats
    write_report(out, summary, subset, predictions)
    store.complete(summary["per_video"])
    return summary


def _play(config: ReplayConfig, store: RunStore, plans: list[BagPlan], queries: dict[str, Query], tracks: TrackLog,
          gt_frames: set, stats: dict) -> None:  # fmt: skip
    """Play `plans` into the graph and ask their unfinished queries, committing each to `store`."""
    out = Path(config.out)
    graph = _start_graph(config, out / "graph.log") if config.start_graph else None
    driver = None
    stamps = StampIndex()
    try:
        driver = _Driver(config)
        driver.wait_ready(config.graph_timeout_s)
        if graph is not None and graph.poll() is not None:
            raise EvalError(f"the graph exited with code {graph.returncode}; see {out / 'graph.log'}")
        total = sum(plan.frames for plan in plans)
        progress = tqdm(total=total, unit="frame", desc="replay", disable=not config.progress, file=sys.stderr)
        offset_ns = 0
        last_published = None
        missed_in_a_row = 0
        with TrackWriter(store.tracks_path, append=True) as tracks_file:

            def keep(msg) -> bool:
                stamp = stamp_to_ns(msg.header.stamp)
                hit = stamps.get(stamp)
                if hit is None:
                    return False
                ids = [int(o.track_id) for o in msg.objects]
                boxes = [[float(o.x1), float(o.y1), float(o.x2), float(o.y2)] for o in msg.objects]
                # the ceiling gets the tracks as tracks.jsonl has them (a resumed run reads them back)
                row = tracks_file.write(hit[0], hit[1], ids, boxes, stamp - offset_ns)
                if hit in gt_frames:
                    tracks.add(hit[0], hit[1], row["ids"], row["boxes"], row["stamp_ns"])
                return True

            for plan in plans:
                video_start_ns = None
                wall_start = time.monotonic()
                for index, (_, msgtype, message) in enumerate(iter_image_messages(plan.sidecar.bag, plan.topic)):
                    source_ns = stamp_ns_of(message)
                    if video_start_ns is None:
                        video_start_ns = source_ns
                        if last_published is not None and source_ns + offset_ns <= last_published:
                            offset_ns = last_published - source_ns + int(BAG_GAP_S * 1e9)
                        first_stamp = source_ns
                    stamp = source_ns + offset_ns
                    frame = plan.queries[0].to_annotation(index)
                    stamps.add(stamp, plan.sidecar.video_id, frame)
                    if config.pace == "rate" and config.rate > 0:
                        due = wall_start + (source_ns - first_stamp) / 1e9 / config.rate - time.monotonic()
                        if due > 0:
                            time.sleep(due)
                    driver.publish(stamp, msgtype, message)
                    last_published = stamp
                    stats["frames_published"] += 1
                    progress.update(1)
                    if config.pace == "lockstep":
                        msg = driver.take_tracks(stamp, config.frame_timeout_s)
                        if msg is not None and keep(msg):
                            stats["frames_with_tracks"] += 1
                            missed_in_a_row = 0
                        else:
                            stats["frames_without_tracks"] += 1
                            missed_in_a_row += 1
                            log.warning("no tracks for frame %d of %s within %.0f s (%d frames missed so far)",
                                        index, plan.sidecar.video_id, config.frame_timeout_s,
                                        stats["frames_without_tracks"])  # fmt: skip
                            if missed_in_a_row >= LOCKSTEP_MAX_MISSES:
                                raise EvalError(
                                    f"no tracks on {config.tracks_topic!r} for {missed_in_a_row} frames in a row "
                                    f"({config.frame_timeout_s:.0f} s each): is the tracker running and listening "
                                    f"to {config.camera_topic!r}? (--pace rate does not wait for it)"
                                )
                    else:
                        for msg in driver.drain_tracks():
                            stats["frames_with_tracks"] += int(keep(msg))
                    if stats["frames_published"] % 500 == 0:
                        _sample_memory(stats, graph)
                    for item in plan.asks.get(index, []):
                        if store.done(item.query_id):
                            continue
                        time.sleep(0.3)  # let the grounding node take in the last frame
                        for msg in driver.drain_tracks():
                            stats["frames_with_tracks"] += int(keep(msg))
                        query = queries[item.query_id]
                        result, error, wall_s = driver.ground(query.caption, item.window_s, config.query_timeout_s)
                        if result is None:
                            log.warning("query %s got no answer after %.1f s: %s", query.query_id, wall_s, error)
                            prediction, problems = Prediction.failed(query.query_id), [error]
                        else:
                            prediction, problems = _result_to_prediction(
                                query, result, stamps, video_start_ns + offset_ns
                            )
                        store.add(prediction, _record(query, prediction, result, error, wall_s, problems, offset_ns))
                if config.pace != "lockstep":
                    time.sleep(0.5)
                    for msg in driver.drain_tracks():
                        stats["frames_with_tracks"] += int(keep(msg))
                store.video_done(plan.sidecar.video_id)
        progress.close()
        # after the queries: the model's working memory is in here, the playback samples are above
        stats["final_rss_mb"] = round(rss_mb() or 0.0, 1)
        if graph is not None:
            stats["final_graph_rss_mb"] = round(rss_mb(graph.pid) or 0.0, 1)
    finally:
        if driver is not None:
            driver.close()
        _stop_graph(graph)


def _record(query: Query, prediction: Prediction, result, error: str, wall_s: float, problems, offset_ns) -> dict:
    record = {
        **query_record(query, prediction, wall_s),
        "problems": problems,
        "success": False,
        "failure": error,
    }
    if result is not None:
        record.update(
            success=bool(result.success),
            failure="" if result.success else str(result.message),
            message=str(result.message),
            # the graph's clock when it answered: sim time (the bag's stamps) when it runs on /clock
            answered_stamp_ns=stamp_to_ns(result.header.stamp) - offset_ns,
            start_stamp_ns=stamp_to_ns(result.start) - offset_ns,
            end_stamp_ns=stamp_to_ns(result.end) - offset_ns,
            sampled_stamps_ns=[stamp_to_ns(s) - offset_ns for s in result.sampled_stamps],
            raw_answer=str(result.raw_answer),
            reasoning=str(result.reasoning),
            model=str(result.model),
            confidence=float(result.confidence),
        )
    return record
