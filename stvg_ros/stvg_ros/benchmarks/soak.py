"""`stvg-ros bench soak`: the whole graph left running with a camera and queries, as on a robot.

The graph (tracker + overlay + grounding) runs as one process per node (`--deployment processes`,
as the launch file) or as `stvg-ros up` (`one_process`), with the detector and grounding model the
demo uses by default (the tiny locally built ones: the figures measure our code and its memory, not
a real model's compute). This process is the camera (synthetic frames at `--fps` and `--size`, real
time, sensor_msgs/Image), counts the `tracks` of its frames, and runs `--clients` GroundClients that
each ask every `--query-period` seconds, plus a burst of `--burst` concurrent queries every
`--burst-period` seconds (more than the node's queue holds: the rest must be refused "busy").

Every query ends as one of: `answered` (the model ran: `success` or a raw answer), `refused` (the
node replied without running the model; the reason is counted), `hung` (no reply within the node's
`query_timeout_s` + HUNG_MARGIN_S) or `error` (the call failed). `lost` = sent - answered - refused.
The RSS of every process (and file descriptors and threads, with psutil) is sampled every
`--sample-period` seconds. Warm-up is the first 20 % of the run, at most 2 minutes; a process's RSS
`start` is the median of its samples in the window after warm-up and `end` the median of the last
window (window: 10 % of the run, at most 60 s, at least one sample period), so a query's transient
allocations do not count as growth.

`pass` = the run completed (not interrupted, no process exited), lost == 0, hung == 0, every
refusal gave a reason, every graph process's RSS grew < 5 % after warm-up, and no whole minute after
warm-up went without tracks. Written to `--out`: soak.json (every figure), samples.jsonl (the time
series: RSS samples and every query), report.md and soak.png (RSS, query latency and frames with
tracks over time). SIGINT or SIGTERM ends the run early: what was measured is written, every process
started here is stopped (a second signal stops waiting for queries in flight). Memory here is
bounded by the run's length (per-minute counters, one number per query and per sample), never by
frames.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stvg_ros.benchmarks.perception import (
    NS,
    CameraProbe,
    Deployment,
    deployment_commands,
    large_image_dds,
    make_scene,
    node_overrides,
    prepare_vlm,
    rss_mb,
    warm_up,
)
from stvg_ros.nodes.lifecycle import spawn_logged

log = logging.getLogger(__name__)

QUICK_MINUTES, DEFAULT_MINUTES = 10.0, 60.0
SOAK_DETECTOR, SOAK_VLM = "yolo-synth-tiny", "qwen25vl-tiny-random"
#: Warm-up: this share of the run, at most WARMUP_MAX_S; RSS growth is measured after it.
WARMUP_FRACTION, WARMUP_MAX_S = 0.2, 120.0
#: RSS windows after warm-up and at the end: this share of the run, at most RSS_WINDOW_MAX_S.
RSS_WINDOW_FRACTION, RSS_WINDOW_MAX_S = 0.1, 60.0
RSS_GROWTH_LIMIT_PCT = 5.0
#: A query with no reply this long after the node's own query timeout is hung.
HUNG_MARGIN_S = 30.0
#: What the clients ask, in turn (the synthetic scenes' kinds of objects).
QUERIES = ("the red circle", "the blue square that moves", "the green triangle", "the object that stops")
#: Diagnostics kept in the time series (node prefix + key).
DIAGNOSTIC_KEYS = ("tracker_input_hz", "tracker_output_hz", "tracker_frames_lost", "tracker_detect_every",
                   "grounding_buffer_frames", "grounding_buffer_mb", "grounding_queries",
                   "grounding_queries_refused", "overlay_input_hz")  # fmt: skip
REASONING = {"node": 0, "on": 1, "off": 2}  # Ground request `reasoning` values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    length = parser.add_mutually_exclusive_group()
    length.add_argument(
        "--minutes", type=positive, default=None, help=f"length of the run (default {DEFAULT_MINUTES:g})"
    )
    length.add_argument("--quick", action="store_true", help=f"a {QUICK_MINUTES:g}-minute run")
    parser.add_argument("--fps", type=positive, default=30.0, help="camera frame rate (default 30)")
    parser.add_argument("--size", type=frame_size, default=(640, 480), help="camera WIDTHxHEIGHT (default 640x480)")
    parser.add_argument("--query-period", type=positive, default=10.0, help="seconds between one client's queries")
    parser.add_argument("--clients", type=int, default=2, help="clients asking every --query-period (default 2)")
    parser.add_argument("--burst", type=int, default=8, help="concurrent queries of each burst (0: none)")
    parser.add_argument("--burst-period", type=positive, default=60.0, help="seconds between bursts (default 60)")
    parser.add_argument("--query-timeout", type=positive, default=120.0,
                        help=f"the grounding node's query_timeout_s; no reply {HUNG_MARGIN_S:g} s after it = hung")  # fmt: skip
    parser.add_argument("--reasoning", choices=tuple(REASONING), default="node",
                        help="reasoning of the queries (default: the node's parameter)")  # fmt: skip
    parser.add_argument("--deployment", choices=("processes", "one_process"), default="processes",
                        help="one process per node (as the launch file, default) or `stvg-ros up`")  # fmt: skip
    parser.add_argument("--model", default=SOAK_VLM, help=f"grounding model, llama.cpp on CPU (default {SOAK_VLM})")
    parser.add_argument("--mmproj", default="", help="its vision projector GGUF (default: the manifest's)")
    parser.add_argument("--detector", default=SOAK_DETECTOR, help=f"tracker's detector (default {SOAK_DETECTOR})")
    parser.add_argument("--sample-period", type=positive, default=5.0, help="seconds between RSS samples (default 5)")
    parser.add_argument("--objects", type=int, default=6, help="objects in the synthetic scene (2..8)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", default="", help="output folder (default ./stvg-soak-<UTC time>)")


def positive(text: str) -> float:
    """A number > 0 (lengths, rates and periods)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def frame_size(text: str) -> tuple[int, int]:
    """`--size` value: WIDTHxHEIGHT."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match[1]), int(match[2])) < 32:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (each >= 32), e.g. 640x480; got {text!r}")
    return int(match[1]), int(match[2])


# --------------------------------------------------------------------------------------------
# Bookkeeping shared by the threads


class SampleLog:
    """samples.jsonl, written line by line from any thread (nothing kept in memory)."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("w", buffering=1)
        self._lock = threading.Lock()

    def write(self, record: dict) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()


def refusal_reason(message: str) -> str:
    """A refusal's message as a countable reason (known causes by name, numbers removed otherwise)."""
    text = message.strip().lower()
    for needle, reason in (("busy", "busy"), ("timed out", "timed out"), ("not active", "not active"),
                           ("no camera frames", "no camera frames"), ("deactivated", "deactivated"),
                           ("cancel", "cancelled")):  # fmt: skip
        if needle in text:
            return reason
    return re.sub(r"\d+(\.\d+)?", "N", text)[:80] or "(no message)"


@dataclass
class QueryStats:
    """Every query's outcome: counters, the answered latencies (one float per query), refusal reasons."""

    samples: SampleLog
    started: float = 0.0  # monotonic start of the soak
    sent: int = 0
    answered: int = 0
    succeeded: int = 0  # answered with a usable answer (success)
    refused: int = 0
    hung: int = 0
    errors: int = 0
    reasons: Counter = field(default_factory=Counter)
    errors_seen: Counter = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)  # answered
    refusal_latencies_s: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ask(self, client, query: str, reasoning: int, timeout_s: float, who: str) -> None:
        """Send one query over `client` (a GroundClient) and record how it ended."""
        from stvg_ros.nodes.ground_client import GroundError, GroundTimeout

        with self.lock:
            self.sent += 1
        began = time.monotonic()
        outcome, reason, success = "answered", "", False
        try:
            result = client.ask(query, 0.0, reasoning, timeout_s=timeout_s)
        except GroundTimeout:
            outcome, reason = "hung", f"no reply within {timeout_s:.0f} s"
        except GroundError as exc:
            outcome, reason = "error", str(exc)
        else:
            success = bool(result.success)
            if not (success or result.raw_answer):
                outcome, reason = "refused", refusal_reason(result.message)
        latency = time.monotonic() - began
        with self.lock:
            if outcome == "answered":
                self.answered += 1
                self.succeeded += success
                self.latencies_s.append(latency)
            elif outcome == "refused":
                self.refused += 1
                self.reasons[reason] += 1
                self.refusal_latencies_s.append(latency)
            elif outcome == "hung":
                self.hung += 1
            else:
                self.errors += 1
                self.errors_seen[reason[:120]] += 1
        self.samples.write({"kind": "query", "t_s": round(began - self.started, 2), "who": who, "query": query,
                            "outcome": outcome, "success": success, "latency_s": round(latency, 3),
                            "reason": reason})  # fmt: skip


class TrackCounts:
    """Frames published and frames whose `tracks` came back, per minute of the run (bounded by its length).

    Frame i of the run is stamped `base_ns + round(i * NS / fps)`, so a tracks message's stamp gives
    back its frame (and minute) without remembering any frame."""

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.base_ns: int | None = None
        self.published: list[int] = []
        self.with_tracks: list[int] = []
        self.with_objects: list[int] = []
        self.skipped = 0  # frames the camera did not send because it fell behind real time
        self.last_index = -1
        self._lock = threading.Lock()

    def _minute(self, index: int) -> int:
        minute = int(index / (self.fps * 60.0))
        while len(self.published) <= minute:
            self.published.append(0)
            self.with_tracks.append(0)
            self.with_objects.append(0)
        return minute

    def stamp(self, index: int) -> int:
        return self.base_ns + round(index * NS / self.fps)

    def on_published(self, index: int) -> None:
        with self._lock:
            self.published[self._minute(index)] += 1
            self.last_index = index

    def on_tracks(self, stamp_ns: int, objects: int) -> None:
        if self.base_ns is None or stamp_ns < self.base_ns:
            return  # a warm-up frame
        index = round((stamp_ns - self.base_ns) * self.fps / NS)
        with self._lock:
            if index > self.last_index or self.stamp(index) != stamp_ns:
                return  # not one of this run's frames
            minute = self._minute(index)
            self.with_tracks[minute] += 1
            self.with_objects[minute] += objects > 0

    def totals(self) -> tuple[int, int]:
        with self._lock:
            return sum(self.published), sum(self.with_tracks)


class _SoakCamera(CameraProbe):
    """perception's probe (camera publisher, `tracks` and /diagnostics subscriber) counting by minute."""

    def __init__(self, counts: TrackCounts, *args) -> None:
        self.counts = counts  # before the probe starts spinning
        super().__init__(*args)

    def _on_tracks(self, msg) -> None:
        from stvg_ros.nodes.messages import stamp_to_ns

        self.tracks_seen += 1
        self.counts.on_tracks(stamp_to_ns(msg.header.stamp), len(msg.objects))


# --------------------------------------------------------------------------------------------
# Memory sampling


def process_sample(pid: int) -> dict:
    """{"rss_mb", and with psutil "fds", "threads", "cpu_pct"} of a running process ({} once it is gone)."""
    try:
        import psutil
    except ImportError:
        mb = rss_mb(pid)
        return {"rss_mb": mb} if mb else {}
    try:
        process = _PSUTIL_PROCESSES.get(pid) or _PSUTIL_PROCESSES.setdefault(pid, psutil.Process(pid))
        with process.oneshot():
            return {"rss_mb": round(process.memory_info().rss / 2**20, 1), "fds": process.num_fds(),
                    "threads": process.num_threads(), "cpu_pct": round(process.cpu_percent(None), 1)}  # fmt: skip
    except psutil.Error:
        return {}


_PSUTIL_PROCESSES: dict = {}  # pid -> psutil.Process (cpu_percent measures since the previous call)


def rss_figures(series: list[tuple[float, dict]], warmup_s: float, window_s: float) -> dict:
    """One process's memory figures from its (t_s, sample) series; growth_pct None without samples."""
    after = [(t, s) for t, s in series if t >= warmup_s and "rss_mb" in s]
    if not after:
        return {"start_mb": None, "end_mb": None, "growth_pct": None, "peak_mb": None, "slope_mb_per_h": None}
    first = [s["rss_mb"] for t, s in after if t < after[0][0] + window_s]
    last = [s["rss_mb"] for t, s in after if t > after[-1][0] - window_s]
    start, end = statistics.median(first), statistics.median(last)
    times = np.array([t for t, _ in after])
    slope = None
    if len(after) >= 3 and times[-1] - times[0] > 0:
        slope = round(float(np.polyfit(times / 3600.0, [s["rss_mb"] for _, s in after], 1)[0]), 2)
    out = {
        "start_mb": round(start, 1),
        "end_mb": round(end, 1),
        "growth_pct": round(100.0 * (end - start) / start, 2) if start else None,
        "peak_mb": max(s["rss_mb"] for _, s in series if "rss_mb" in s),
        "slope_mb_per_h": slope,
    }
    for key in ("fds", "threads"):
        if key in after[0][1] and key in after[-1][1]:
            out[f"{key}_start"], out[f"{key}_end"] = after[0][1][key], after[-1][1][key]
    return out


# --------------------------------------------------------------------------------------------
# The run


def run(args: argparse.Namespace) -> dict:
    """The soak run; what libraries print goes to stderr so stdout carries only the figures."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    with contextlib.redirect_stdout(sys.stderr):
        return Soak(args).run()


class Soak:
    """One soak run: start, measure, stop everything, write the report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        minutes = QUICK_MINUTES if args.quick else (args.minutes if args.minutes is not None else DEFAULT_MINUTES)
        self.planned_s = max(1.0, minutes * 60.0)
        self.warmup_s = min(WARMUP_MAX_S, WARMUP_FRACTION * self.planned_s)
        self.window_s = max(args.sample_period, min(RSS_WINDOW_MAX_S, RSS_WINDOW_FRACTION * self.planned_s))
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        self.out = Path(args.out or f"stvg-soak-{stamp}").resolve()
        self.namespace = f"stvg_soak_{os.getpid()}"
        self.stop = threading.Event()  # end the run (signal, a process exited, time is up)
        self.abandon = threading.Event()  # second signal: stop waiting for queries in flight
        self.interrupted = ""
        self.exited: dict[str, int] = {}
        self.processes: dict[str, subprocess.Popen] = {}
        self.rss: dict[str, list[tuple[float, dict]]] = {}
        self.counts = TrackCounts(args.fps)
        self.started = 0.0
        self.elapsed_s = 0.0
        self.error = ""
        self.building = False

    # ---------------------------------------------------------------- signals

    def _on_signal(self, signum, _frame) -> None:
        if self.stop.is_set() and self.interrupted:
            self.abandon.set()
        self.interrupted = self.interrupted or signal.Signals(signum).name
        log.warning("%s: ending the soak (again to stop waiting for queries in flight)", self.interrupted)
        self.stop.set()
        if self.building:  # a model build has no stop flag to check
            raise KeyboardInterrupt

    # ---------------------------------------------------------------- main

    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "logs").mkdir(exist_ok=True)
        self.samples = SampleLog(self.out / "samples.jsonl")
        self.queries = QueryStats(self.samples)
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._soak()
        except KeyboardInterrupt:
            pass  # during a model build; `interrupted` says so
        except (RuntimeError, OSError, ValueError) as exc:
            self.error = str(exc)
            log.error("soak failed: %s", exc)
        finally:
            self.stop.set()
            self._stop_processes()
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            self.samples.close()
        figures = self._figures()
        self._write(figures)
        return figures

    def _soak(self) -> None:
        import rclpy

        from stvg_ros.nodes.ground_client import GroundClient

        args = self.args
        os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        dds_env = large_image_dds()  # before rclpy.init here and in every node's process
        self.building = True
        self._prepare_models()
        self.building = False
        width, height = args.size
        scene = make_scene(argparse.Namespace(seconds=60.0, fps=args.fps, width=width, height=height,
                                              objects=args.objects, seed=args.seed))  # fmt: skip
        camera_topic = f"/{self.namespace}/camera/image_raw"
        deployment = Deployment(one_process=args.deployment == "one_process")
        commands, nodes = deployment_commands(deployment, self.namespace, camera_topic, self._overrides(), self.out / "logs")
        env = {**os.environ, **dds_env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        for name, command in commands.items():
            self.processes[name] = spawn_logged(command, self.out / "logs" / f"{name}.log", env)
        context = rclpy.Context()
        rclpy.init(context=context)
        clients: list = []
        threads: list[threading.Thread] = []
        try:
            camera = _SoakCamera(self.counts, context, self.namespace, camera_topic, False)
            ready = [
                (lambda: camera.publisher.get_subscription_count() >= len(nodes), 180, "camera subscriptions"),
                (lambda: camera.tracks_seen > 0, 120, "tracks from the tracker"),
                (lambda: int(camera.diagnostics.get("grounding", {}).get("buffer_frames", 0)) > 0, 180,
                 "frames in the grounding node's buffer"),
            ]  # fmt: skip
            for condition, timeout_s, what in ready:
                warm_up(camera, scene, self.processes, lambda c=condition: self.stop.is_set() or c(), timeout_s, what)
            if self.stop.is_set():
                return
            make_client = lambda name: GroundClient(context=context, node_name=name, namespace=self.namespace)  # noqa: E731
            clients = [make_client(f"stvg_soak_client_{k}") for k in range(args.clients)]
            if args.burst > 0:
                clients.append(make_client("stvg_soak_burst"))
            for client in clients:
                if not client.wait_ready(60):
                    raise RuntimeError(f"no `ground` service at {client.service_name} within 60 s")
            log.info("soak: %.1f min at %g FPS %dx%d, %s, out %s", self.planned_s / 60, args.fps, width, height,
                     args.deployment, self.out)  # fmt: skip
            self.started = self.queries.started = time.monotonic()
            self.counts.base_ns = time.time_ns()
            for k in range(args.clients):
                threads.append(threading.Thread(target=self._client_loop, args=(clients[k], k), daemon=True))
            if args.burst > 0:
                threads.append(threading.Thread(target=self._burst_loop, args=(clients[-1],), daemon=True))
            threads.append(threading.Thread(target=self._sample_loop, args=(camera,), daemon=True))
            for thread in threads:
                thread.start()
            self._camera_loop(camera, scene)
            self.elapsed_s = time.monotonic() - self.started
            self.stop.set()
            self._drain_tracks()
            self._join(threads)
            self._sample(camera)  # the final sample, after the queries ended
            camera.executor.shutdown(timeout_sec=5)
        finally:
            self.stop.set()
            for client in clients:
                with contextlib.suppress(Exception):
                    client.close()
            rclpy.try_shutdown(context=context)

    def _prepare_models(self) -> None:
        from stvg_ros.core.model_registry import ModelRegistryError, pull

        if not Path(self.args.detector).expanduser().exists():
            try:
                pull(self.args.detector)  # builds the tiny detector on first use (as the demo does)
            except (ModelRegistryError, OSError) as exc:
                raise RuntimeError(f"detector {self.args.detector!r}: {exc}") from exc
        prepare_vlm(argparse.Namespace(vlm=self.args.model, vlm_mmproj=self.args.mmproj))

    def _overrides(self) -> dict[str, dict]:
        """perception's node parameters for this run; the grounding buffer keeps its config/ defaults
        (a bounded history, as on a robot) and the query timeout is `--query-timeout`."""
        args = self.args
        overrides = node_overrides(argparse.Namespace(model=args.detector, backend="onnx", precision="int8",
                                                      threads=1, vlm=args.model, vlm_mmproj=args.mmproj))  # fmt: skip
        grounding = overrides["grounding_node"]
        for key in ("buffer_seconds", "buffer_max_mb", "buffer_sample_fps"):
            grounding.pop(key, None)
        grounding["query_timeout_s"] = float(args.query_timeout)
        return overrides

    # ---------------------------------------------------------------- threads

    def _camera_loop(self, camera: _SoakCamera, scene) -> None:
        """Publish frames in real time until the planned length, a stop or a process exit; frames
        due while the camera was behind by more than one period are skipped (a camera drops them)."""
        period, index, next_check = 1.0 / self.args.fps, 0, self.started
        end_at = self.started + self.planned_s
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= end_at:
                return
            if now >= next_check:
                next_check = now + 1.0
                if self._check_processes():
                    return
            due = self.started + index * period
            if due > now:
                self.stop.wait(due - now)
                continue
            if now - due > period:
                behind = int((now - due) / period)
                self.counts.skipped += behind
                index += behind
                continue
            camera.publish(scene.render_frame(index % scene.num_frames), self.counts.stamp(index))
            self.counts.on_published(index)
            index += 1

    def _check_processes(self) -> bool:
        """True (and the run ends) when a process started here has exited."""
        for name, process in self.processes.items():
            if process.poll() is not None and name not in self.exited:
                self.exited[name] = process.returncode
                log.error("%s exited with code %s; ending the soak", name, process.returncode)
        return bool(self.exited)

    def _query_timeout_s(self) -> float:
        return self.args.query_timeout + HUNG_MARGIN_S

    def _next_query(self) -> str:
        return QUERIES[self.queries.sent % len(QUERIES)]

    def _client_loop(self, client, k: int) -> None:
        """Ask every --query-period (client k starts k/clients of a period late); a slot missed while
        a query ran is skipped, not made up."""
        period = self.args.query_period
        due = self.started + period * k / max(1, self.args.clients)
        while not self.stop.wait(max(0.0, due - time.monotonic())):
            self.queries.ask(client, self._next_query(), REASONING[self.args.reasoning], self._query_timeout_s(),
                             f"client{k}")  # fmt: skip
            due += period * max(1, int((time.monotonic() - due) / period) + 1)

    def _burst_loop(self, client) -> None:
        """Every --burst-period, --burst queries at once from as many threads; the next burst waits for them."""
        period = self.args.burst_period
        due, number = self.started + period, 0
        while not self.stop.wait(max(0.0, due - time.monotonic())):
            number += 1
            who = f"burst{number}"
            reasoning, timeout_s = REASONING[self.args.reasoning], self._query_timeout_s()
            burst = [threading.Thread(target=self.queries.ask, args=(client, QUERIES[(number + i) % len(QUERIES)],
                                                                     reasoning, timeout_s, who), daemon=True)
                     for i in range(self.args.burst)]  # fmt: skip
            for thread in burst:
                thread.start()
            for thread in burst:
                thread.join(timeout_s + 5.0)  # ask() ends by its own timeout
            due += period * max(1, int((time.monotonic() - due) / period) + 1)

    def _sample_loop(self, camera: _SoakCamera) -> None:
        while not self.stop.wait(self.args.sample_period):
            self._sample(camera)

    def _sample(self, camera: _SoakCamera) -> None:
        """One line of the time series: every process's memory, the frame counts, a few diagnostics."""
        t_s = round(time.monotonic() - self.started, 2)
        processes = {name: process_sample(p.pid) for name, p in self.processes.items() if p.poll() is None}
        processes["benchmark"] = process_sample(os.getpid())
        for name, sample in processes.items():
            if sample:
                self.rss.setdefault(name, []).append((t_s, sample))
        published, with_tracks = self.counts.totals()
        diagnostics = {f"{node}_{k}": v for node, values in camera.diagnostics.items() for k, v in values.items()}
        self.samples.write({
            "kind": "sample", "t_s": t_s, "processes": processes, "frames_published": published,
            "frames_with_tracks": with_tracks, "queries_sent": self.queries.sent,
            "diagnostics": {k: diagnostics[k] for k in DIAGNOSTIC_KEYS if k in diagnostics},
        })  # fmt: skip

    def _drain_tracks(self, quiet_s: float = 1.0, timeout_s: float = 5.0) -> None:
        """Wait (at most `timeout_s`) until no tracks came for `quiet_s`: the last frames' tracks arrive."""
        deadline, last = time.monotonic() + timeout_s, self.counts.totals()
        while not self.abandon.wait(quiet_s) and time.monotonic() < deadline:
            now = self.counts.totals()
            if now == last:
                return
            last = now

    def _join(self, threads: list[threading.Thread]) -> None:
        """Wait for the clients' queries in flight (each ends by its own timeout), unless abandoned."""
        deadline = time.monotonic() + self._query_timeout_s() + 10.0
        for thread in threads:
            while thread.is_alive() and not self.abandon.is_set() and time.monotonic() < deadline:
                thread.join(0.2)

    def _stop_processes(self, timeout_s: float = 15.0) -> None:
        """SIGINT to every process group started here, then SIGKILL to those still running after `timeout_s`."""
        self._check_processes()
        running = {n: p for n, p in self.processes.items() if p.poll() is None}
        for process in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        for name, process in running.items():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s of SIGINT; killing it", name, timeout_s)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    # ---------------------------------------------------------------- figures and report

    def _figures(self) -> dict:
        q = self.queries
        published, with_tracks = self.counts.totals()
        per_minute = [round(w / p, 4) if p else None for p, w in zip(self.counts.published, self.counts.with_tracks,
                                                                      strict=True)]  # fmt: skip
        rss = {name: rss_figures(series, self.warmup_s, self.window_s) for name, series in sorted(self.rss.items())}
        for name, figures in rss.items():
            figures["gated"] = name != "benchmark"
        lat = np.array(q.latencies_s) if q.latencies_s else None
        lost = q.sent - q.answered - q.refused
        failures = []
        if self.error:
            failures.append(f"error: {self.error}")
        if self.interrupted:
            failures.append(f"interrupted by {self.interrupted} after {self.elapsed_s:.0f} s")
        failures += [f"{name} exited with code {code}" for name, code in self.exited.items()]
        if lost:
            failures.append(f"{lost} queries lost ({q.hung} hung, {q.errors} failed calls)")
        if q.reasons.get("(no message)"):
            failures.append(f"{q.reasons['(no message)']} refusals without a reason")
        for name, figures in rss.items():
            if not figures["gated"]:
                continue
            if figures["growth_pct"] is None:
                failures.append(f"{name}: no RSS samples after warm-up")
            elif figures["growth_pct"] >= RSS_GROWTH_LIMIT_PCT:
                failures.append(f"{name}: RSS grew {figures['growth_pct']:.1f} % after warm-up")
        if not self.error and not rss:
            failures.append("no RSS samples")
        first_measured = int(self.warmup_s // 60) + (self.warmup_s % 60 > 0)
        stalled = [m for m, p in enumerate(self.counts.published) if m >= first_measured and p >= self.args.fps * 60 * 0.9
                   and self.counts.with_tracks[m] == 0]  # fmt: skip
        if stalled:
            failures.append(f"no tracks at all in minute(s) {stalled}")
        figures = {
            "pass": not failures,
            "failures": failures,
            "completed": not (self.error or self.interrupted or self.exited),
            "duration_s": round(self.elapsed_s, 1),
            "planned_s": self.planned_s,
            "warmup_s": round(self.warmup_s, 1),
            "rss_window_s": round(self.window_s, 1),
            "deployment": self.args.deployment,
            "fps": self.args.fps,
            "size": f"{self.args.size[0]}x{self.args.size[1]}",
            "frames_published": published,
            "frames_skipped": self.counts.skipped,
            "camera_fps": round(published / self.elapsed_s, 2) if self.elapsed_s else 0.0,
            "frames_with_tracks": with_tracks,
            "frames_with_tracks_fraction": round(with_tracks / published, 4) if published else None,
            "frames_with_tracks_fraction_per_minute": per_minute,
            "frames_with_objects_fraction": round(sum(self.counts.with_objects) / published, 4) if published else None,
            "queries_sent": q.sent,
            "answered": q.answered,
            "answered_success": q.succeeded,
            "refused": q.refused,
            "refused_reasons": dict(q.reasons.most_common()),
            "lost": lost,
            "hung": q.hung,
            "errors": q.errors,
            "error_messages": dict(q.errors_seen.most_common(5)),
            "latency_p50_s": round(float(np.percentile(lat, 50)), 3) if lat is not None else None,
            "latency_p95_s": round(float(np.percentile(lat, 95)), 3) if lat is not None else None,
            "latency_max_s": round(float(lat.max()), 3) if lat is not None else None,
            "refusal_latency_max_s": round(max(q.refusal_latencies_s), 3) if q.refusal_latencies_s else None,
            "hung_after_s": self._query_timeout_s(),
            "rss_mb": rss,
            "rss_growth_limit_pct": RSS_GROWTH_LIMIT_PCT,
            "processes": {name: p.pid for name, p in self.processes.items()},
            "exited": self.exited,
            "namespace": self.namespace,
            "detector": self.args.detector,
            "model": self.args.model,
            "model_note": _model_note(self.args.model),
            "out": str(self.out),
        }
        if self.error:
            figures["error"] = self.error
        return figures

    def _write(self, figures: dict) -> None:
        (self.out / "soak.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
        plot = self.out / "soak.png"
        try:
            write_plot(self.out / "samples.jsonl", plot, figures)
        except Exception as exc:  # a plot must not lose the figures
            log.warning("no plot: %s", exc)
            plot = None
        (self.out / "report.md").write_text(report_markdown(figures, plot, sys.argv))


def _model_note(model: str) -> str:
    from stvg_ros.synthetic.tiny_vlm import TINY_DISCLAIMER, is_tiny_model

    if model == SOAK_VLM or is_tiny_model(model):
        return f"{Path(model).name}: {TINY_DISCLAIMER}; the figures measure the graph, its queues and its memory"
    return ""


def write_plot(samples_path: Path, png: Path, figures: dict) -> None:
    """RSS per process, query latency (answered, refused, hung) and frames with tracks per minute over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rss: dict[str, tuple[list, list]] = {}
    tracks: tuple[list, list] = ([], [])  # (minute, fraction of the frames since the previous sample)
    previous = (0, 0)
    queries: dict[str, tuple[list, list]] = {"answered": ([], []), "refused": ([], []), "hung": ([], []),
                                              "error": ([], [])}  # fmt: skip
    with samples_path.open() as lines:
        for line in lines:
            record = json.loads(line)
            minute = record["t_s"] / 60.0
            if record["kind"] == "sample":
                for name, sample in record["processes"].items():
                    if "rss_mb" in sample:
                        xs, ys = rss.setdefault(name, ([], []))
                        xs.append(minute)
                        ys.append(sample["rss_mb"])
                counts = (record["frames_published"], record["frames_with_tracks"])
                if counts[0] > previous[0]:
                    tracks[0].append(minute)
                    tracks[1].append((counts[1] - previous[1]) / (counts[0] - previous[0]))
                previous = counts
            elif record["kind"] == "query":
                xs, ys = queries[record["outcome"]]
                xs.append(minute)
                ys.append(record["latency_s"])
    fig, (ax_rss, ax_lat, ax_tracks) = plt.subplots(3, 1, figsize=(10, 10), sharex=True)
    for name, (xs, ys) in sorted(rss.items()):
        ax_rss.plot(xs, ys, label=name)
    for ax in (ax_rss, ax_lat, ax_tracks):
        ax.axvspan(0, figures["warmup_s"] / 60.0, color="0.9", label="warm-up" if ax is ax_rss else None)
    ax_rss.set_ylabel("RSS (MiB)")
    ax_rss.legend(fontsize="small", loc="upper left")
    ax_rss.set_title(f"soak: {figures['deployment']}, {figures['size']} at {figures['fps']:g} FPS, "
                     f"{'PASS' if figures['pass'] else 'FAIL'}")  # fmt: skip
    styles = {"answered": ("o", "tab:blue"), "refused": ("x", "tab:orange"), "hung": ("v", "tab:red"),
              "error": ("s", "tab:purple")}  # fmt: skip
    for outcome, (xs, ys) in queries.items():
        if xs:
            marker, colour = styles[outcome]
            ax_lat.scatter(xs, ys, marker=marker, color=colour, s=12, label=f"{outcome} ({len(xs)})")
    ax_lat.set_ylabel("query latency (s)")
    ax_lat.legend(fontsize="small", loc="upper left")
    ax_tracks.plot(*tracks, color="0.5", linewidth=0.8, label="between samples")
    per_minute = figures["frames_with_tracks_fraction_per_minute"]
    minutes = [(m, f) for m, f in enumerate(per_minute) if f is not None]
    if minutes:
        ax_tracks.hlines([f for _, f in minutes], [m for m, _ in minutes],
                         [min(m + 1, figures["duration_s"] / 60.0) for m, _ in minutes], color="tab:green",
                         linewidth=2, label="per minute")  # fmt: skip
    ax_tracks.set_ylim(0, 1.05)
    ax_tracks.set_ylabel("frames with tracks")
    ax_tracks.legend(fontsize="small", loc="lower left")
    ax_tracks.set_xlabel("minutes since the soak started")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def report_markdown(figures: dict, plot: Path | None, argv: list[str]) -> str:
    """report.md: verdict, queries, memory per process, frames with tracks, the plot."""
    verdict = "PASS" if figures["pass"] else "FAIL: " + "; ".join(figures["failures"])
    lines = [
        "# Soak run",
        "",
        f"**{verdict}**",
        "",
        f"- command: `{' '.join(argv)}`",
        f"- {figures['duration_s'] / 60:.1f} of {figures['planned_s'] / 60:.1f} min, deployment "
        f"`{figures['deployment']}`, camera {figures['size']} at {figures['fps']:g} FPS "
        f"(sent {figures['camera_fps']} FPS, {figures['frames_skipped']} frames skipped)",
        f"- detector `{figures['detector']}`, grounding model `{figures['model']}`",
    ]
    if figures["model_note"]:
        lines.append(f"- note: {figures['model_note']}")
    lines += [
        f"- warm-up: the first {figures['warmup_s']:g} s; RSS start/end = medians over {figures['rss_window_s']:g} s "
        f"after warm-up / at the end; limit {figures['rss_growth_limit_pct']:g} % growth",
        "",
        "## Queries",
        "",
        "| sent | answered | (usable) | refused | lost | hung | p50 s | p95 s | max s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {figures['queries_sent']} | {figures['answered']} | {figures['answered_success']} | {figures['refused']} "
        f"| {figures['lost']} | {figures['hung']} | {figures['latency_p50_s']} | {figures['latency_p95_s']} "
        f"| {figures['latency_max_s']} |",
        "",
        "Refusal reasons: " + (", ".join(f"{k} ({v})" for k, v in figures["refused_reasons"].items()) or "none"),
        "",
        "## Memory (RSS, MiB)",
        "",
        "| process | start | end | growth % | peak | MiB/h | fds | threads |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in figures["rss_mb"].items():
        label = name if r["gated"] else f"{name} (not gated)"
        fds = f"{r.get('fds_start', '')}→{r.get('fds_end', '')}" if "fds_start" in r else ""
        threads = f"{r.get('threads_start', '')}→{r.get('threads_end', '')}" if "threads_start" in r else ""
        lines.append(f"| {label} | {r['start_mb']} | {r['end_mb']} | {r['growth_pct']} | {r['peak_mb']} "
                     f"| {r['slope_mb_per_h']} | {fds} | {threads} |")  # fmt: skip
    per_minute = figures["frames_with_tracks_fraction_per_minute"]
    lines += [
        "",
        "## Frames with tracks",
        "",
        f"Overall {figures['frames_with_tracks_fraction']} of {figures['frames_published']} frames "
        f"(with objects: {figures['frames_with_objects_fraction']}). Per minute: "
        + (", ".join(f"{f}" for f in per_minute) or "none"),
        "",
    ]
    if plot is not None:
        lines += [f"![RSS, query latency and frames with tracks over time]({plot.name})", ""]
    lines.append("Every figure: soak.json; the time series: samples.jsonl; node logs: logs/.")
    return "\n".join(lines) + "\n"
