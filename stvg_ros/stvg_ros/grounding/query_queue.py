"""ROS-free parts of the grounding node: the bounded query queue and the target follower.

`QueryQueue` runs queries one at a time on its own worker thread; at most `waiting` more may wait,
and `submit` never blocks (False = no room: the node answers "busy"). `TargetFollower` turns each
new frame's tracks into the followed target's state (tracking, occluded, lost once, stopped), and
reports the target lost when the tracks stop coming altogether (`check_silence`).
`last_sighting` finds where an answer's target was last seen. Used by nodes/grounding_node.py; no
rclpy here, so it is tested without ROS.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stvg_ros.core.prompt import QueryError, normalize_query
from stvg_ros.core.types import Tracks

#: Share of the whole query each stage covers: (stage, start, end) for the action's `progress`.
STAGE_SPANS = {"queued": (0.0, 0.0), "sampling": (0.0, 0.1), "encoding": (0.1, 0.3), "reasoning": (0.3, 0.95),
               "parsing": (0.95, 1.0)}  # fmt: skip


def overall_progress(stage: str, fraction: float) -> float:
    """Progress over the whole query (0..1) from the pipeline's (stage, fraction of that stage)."""
    start, end = STAGE_SPANS.get(stage, (0.0, 1.0))
    return start + (end - start) * min(max(float(fraction), 0.0), 1.0)


@dataclass
class QueryJob:
    """One query on its way through the queue; the caller waits on `done`.

    `report` (the pipeline's progress callback) records every stage change and every step of at
    least `min_step` overall progress in a bounded list that `take_updates` drains, so a caller that
    polls (the action's feedback loop) sees every stage even when a stage lasts less than its poll.
    """

    request: Any  # grounding.pipeline.GroundingRequest
    snapshot: Any  # perception.buffer.ClipSnapshot
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    stage: str = "queued"
    progress: float = 0.0  # over the whole query
    outcome: Any = None  # grounding.pipeline.GroundingOutcome once it ran
    error: str = ""  # why it did not run or failed outside the pipeline
    note: str = ""  # said with the answer (e.g. the buffered frames are old: the camera stopped)
    camera: str = ""  # which camera's history `snapshot` is (a node serving several cameras)
    min_step: float = 0.05
    _updates: deque = field(default_factory=lambda: deque([("queued", 0.0)], maxlen=64))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def report(self, stage: str, fraction: float) -> None:
        """Progress callback of the pipeline: `fraction` of `stage` is done."""
        stage, progress = str(stage), overall_progress(str(stage), fraction)
        with self._lock:
            if stage != self.stage or progress - self.progress >= self.min_step or progress >= 1.0 > self.progress:
                self._updates.append((stage, progress))
            self.stage, self.progress = stage, max(progress, self.progress)

    def take_updates(self) -> list[tuple[str, float]]:
        """(stage, overall progress) reported since the last call, oldest first."""
        with self._lock:
            updates = list(self._updates)
            self._updates.clear()
        return updates

    def finish(self, outcome: Any = None, error: str = "") -> None:
        self.outcome, self.error = outcome, error
        self.done.set()


class QueryQueue:
    """At most `waiting + 1` queries in flight (one running, the rest waiting), served in order by
    one worker thread; `submit` never blocks and returns False when there is no room."""

    def __init__(self, run: Callable[[QueryJob], Any], waiting: int) -> None:
        if waiting < 0:
            raise ValueError(f"queue_size must be >= 0, got {waiting}")
        self._run = run
        self._slots = threading.BoundedSemaphore(waiting + 1)
        self._jobs: queue.Queue[QueryJob | None] = queue.Queue()  # bounded by the slots
        self._running: QueryJob | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="grounding-worker", daemon=True)
        self._thread.start()

    def submit(self, job: QueryJob) -> bool:
        if self._stopping.is_set() or not self._slots.acquire(blocking=False):
            return False
        self._jobs.put(job)
        return True

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                if self._stopping.is_set():
                    job.finish(error="the grounding node was deactivated before the query ran")
                elif job.cancel.is_set():
                    job.finish(error="cancelled while queued")
                else:
                    self._running = job
                    job.finish(outcome=self._run(job))
            except Exception as exc:
                job.finish(error=f"grounding failed: {type(exc).__name__}: {exc}")
            finally:
                self._running = None
                self._slots.release()

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Cancel the running query, fail the waiting ones, and end the worker; False when the
        worker is still running after `timeout_s` (a backend that ignores the cancel)."""
        self._stopping.set()
        if (running := self._running) is not None:
            running.cancel.set()
        self._jobs.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout_s)
        return not self._thread.is_alive()


@dataclass
class TargetUpdate:
    """What to publish on `target` for one tracks message."""

    status: str  # tracking | occluded | lost | stopped
    target_id: int
    query: str
    seconds_since_seen: float
    box: np.ndarray | None


class TargetFollower:
    """Follows one track ID over incoming tracks; thread-safe. Times are source stamps (ns), except in
    `check_silence`: when no tracks message comes at all (the camera or the tracker stopped), source
    time stops too, so the target's loss is then told by the clock of this process."""

    def __init__(self, lost_timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.lost_timeout_ns = int(lost_timeout_s * 1e9)
        self._clock = clock
        self._lock = threading.Lock()
        self._target: tuple[int, str] | None = None
        self._last_seen_ns = 0
        self._last_box: np.ndarray | None = None
        self._last_update_s = 0.0  # self._clock() of the last follow() or tracks message
        self._last_stamp_ns = 0  # source stamp of the last tracks message (or of the sighting followed)

    @property
    def target_id(self) -> int | None:
        with self._lock:
            return self._target[0] if self._target else None

    def follow(self, target_id: int, query: str, last_seen_ns: int, box: np.ndarray | None) -> TargetUpdate | None:
        """Start following `target_id`; returns a `stopped` update for the previous target, if any."""
        with self._lock:
            previous = self._stop_locked()
            self._target = (int(target_id), query)
            self._last_seen_ns, self._last_box = int(last_seen_ns), box
            self._last_update_s, self._last_stamp_ns = self._clock(), int(last_seen_ns)
            return previous

    def stop(self) -> TargetUpdate | None:
        with self._lock:
            return self._stop_locked()

    def _stop_locked(self) -> TargetUpdate | None:
        if self._target is None:
            return None
        update = TargetUpdate("stopped", self._target[0], self._target[1], 0.0, self._last_box)
        self._target = None
        return update

    def update(self, stamp_ns: int, tracks: Tracks) -> TargetUpdate | None:
        """The target's state on a new frame, or None when nothing is being followed."""
        with self._lock:
            if self._target is None:
                return None
            target_id, query = self._target
            self._last_update_s, self._last_stamp_ns = self._clock(), max(self._last_stamp_ns, int(stamp_ns))
            rows = np.flatnonzero(tracks.track_id == target_id)
            if len(rows):
                self._last_box = tracks.xyxy[rows[0]].copy()
                if bool(tracks.detected[rows[0]]):
                    self._last_seen_ns = max(self._last_seen_ns, int(stamp_ns))
            since_s = max(0, int(stamp_ns) - self._last_seen_ns) / 1e9
            if since_s * 1e9 > self.lost_timeout_ns:
                self._target = None
                return TargetUpdate("lost", target_id, query, since_s, self._last_box)
            status = "tracking" if len(rows) and bool(tracks.detected[rows[0]]) else "occluded"
            return TargetUpdate(status, target_id, query, since_s, self._last_box)

    def check_silence(self, silence_s: float) -> TargetUpdate | None:
        """A `lost` update (once) when no tracks message came for `silence_s` seconds of this process's
        clock since the last one (or since following began); None otherwise or when not following."""
        with self._lock:
            if self._target is None:
                return None
            silent_s = self._clock() - self._last_update_s
            if silent_s <= silence_s:
                return None
            target_id, query = self._target
            self._target = None
            since_s = max(0, self._last_stamp_ns - self._last_seen_ns) / 1e9 + silent_s
            return TargetUpdate("lost", target_id, query, since_s, self._last_box)


def reasoning_for(flag: int, default: bool) -> bool:
    """REASONING_DEFAULT (0) -> the node's parameter; ON (1) -> True; OFF (2) -> False."""
    return {1: True, 2: False}.get(int(flag), bool(default))


def check_window(window_s: float) -> str:
    """'' when `window_s` is a usable window (0 = whole buffer), else why not."""
    if not math.isfinite(window_s) or window_s < 0:
        return f"window_seconds must be a finite number >= 0 (0 = the whole buffer), got {window_s}"
    return ""


def last_sighting(snapshot, target_id: int, default_ns: int | None) -> tuple[int, np.ndarray | None]:
    """(stamp, box) of the newest frame in `snapshot` where `target_id` was detected
    ((default_ns or 0, None) when it never was)."""
    for frame in reversed(list(getattr(snapshot, "track_frames", []) or [])):
        tracks = frame.tracks
        rows = np.flatnonzero((tracks.track_id == target_id) & tracks.detected)
        if len(rows):
            return int(frame.stamp_ns), tracks.xyxy[rows[0]].copy()
    return int(default_ns or 0), None


def query_problem(query: str, window_s: float) -> str:
    """Why a query is refused before it takes a queue slot ("" when it is fine): text that is not
    UTF-8 (rclpy decodes with errors="replace", so the sender's bad bytes arrive as U+FFFD), a query
    `normalize_query` rejects, or a bad window."""
    if "\ufffd" in query:
        return "bad query: the query is not valid UTF-8 (undecodable bytes arrived as U+FFFD)"
    try:
        normalize_query(query)
    except QueryError as exc:
        return f"bad query: {exc}"
    return check_window(window_s)
