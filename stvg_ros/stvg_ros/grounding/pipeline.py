"""The grounding pipeline: query + clip snapshot -> target ID, span in ROS time, and tube.

sample N frames of the window -> render_ids -> backend.generate -> parse_answer -> build_tube.
`GroundingPipeline.ground` never raises for bad input or bad model output: it returns a
GroundingOutcome with success=False and a message that says what went wrong.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from stvg_ros.core.answer import parse_answer
from stvg_ros.core.prompt import QueryError, build_question, normalize_query
from stvg_ros.grounding.backends.base import GenerationError, GenerationResult, ModelLoadError
from stvg_ros.grounding.sampling import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    DEFAULT_NUM_FRAMES,
    ID_NUMBERINGS,
    AnchorProvider,
    SampledClip,
    SamplingError,
    sample_clip,
)
from stvg_ros.grounding.tube import TubeEntry, build_tube
from stvg_ros.perception.sam2_refine import Sam2Config, build_mask_anchors

log = logging.getLogger(__name__)

#: Progress stages reported to `progress(stage, fraction)`, in order.
STAGES = ("sampling", "encoding", "reasoning", "parsing")


@dataclass
class GroundingConfig:
    """How queries are answered (the grounding node maps its parameters onto this)."""

    num_frames: int = DEFAULT_NUM_FRAMES
    max_pixels: int = DEFAULT_MAX_PIXELS  # per frame
    min_pixels: int = DEFAULT_MIN_PIXELS  # per frame
    max_new_tokens: int = 512
    reasoning: bool = True  # default when a request does not say
    strict: bool = False  # True: the official parser only; False: lenient (brackets, units, swapped bounds)
    timeout_s: float = 120.0  # per query; generation is cancelled at the deadline
    hold_tube_ends: bool = False  # repeat the nearest box before/after the track's life (official behaviour)
    sam2: Sam2Config = field(default_factory=Sam2Config)  # IDs at SAM2 mask centres on the sampled frames (off)
    anchors: AnchorProvider | None = None  # a ready ID-placement provider; used instead of `sam2` when set
    id_numbering: str = "track"  # the numbers drawn: track IDs, or 1..K per clip (sampling.ID_NUMBERINGS)

    def problems(self) -> list[str]:
        """What is wrong with these settings (empty when nothing is)."""
        problems = []
        if self.num_frames < 1:
            problems.append(f"num_frames must be >= 1, got {self.num_frames}")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens} (0 would not bound generation)")
        if not self.timeout_s > 0:
            problems.append(f"timeout_s must be > 0, got {self.timeout_s}")
        if not 0 < self.min_pixels <= self.max_pixels:
            problems.append(f"pixels per frame: need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        if self.id_numbering not in ID_NUMBERINGS:
            problems.append(f"id_numbering must be one of {', '.join(ID_NUMBERINGS)}, got {self.id_numbering!r}")
        return problems


@dataclass
class GroundingRequest:
    query: str | bytes
    window_s: float = 0.0  # the last N seconds of the buffer; 0 = all of it
    reasoning: bool | None = None  # None: GroundingConfig.reasoning


@dataclass
class GroundingOutcome:
    """The answer to one query. Times: *_ns are ROS stamps, *_s seconds from clip_start_ns."""

    success: bool
    message: str = ""
    target_id: int | None = None  # the track ID (the tracker's, also with "clip" numbering)
    drawn_id: int | None = None  # the number the model answered, as drawn on the frames
    start_ns: int | None = None
    end_ns: int | None = None
    start_s: float | None = None
    end_s: float | None = None
    clip_start_ns: int | None = None
    confidence: float = 0.0  # 0: the backend gives no confidence (see docs/grounding.md)
    reasoning: str = ""
    raw: str = ""
    model: str = ""
    tube: list[TubeEntry] = field(default_factory=list)
    sampled_stamps_ns: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    query: str = ""  # as sent to the model (normalized)
    window_s: float = 0.0  # the window actually used
    duration_s: float = 0.0  # the clip length the model answered about
    track_ids: list[int] = field(default_factory=list)  # IDs drawn on the sampled frames
    finish_reason: str = ""  # stop | length | cancelled | timeout | error

    def to_json(self) -> dict:
        """Plain-JSON form (the `stvg-ros ground --json` keys); times in seconds."""
        return {
            "success": self.success,
            "message": self.message,
            "query": self.query,
            "target_id": self.target_id,
            "drawn_id": self.drawn_id,
            "start": self.start_s,
            "end": self.end_s,
            "start_stamp": self.start_ns / 1e9 if self.start_ns is not None else None,
            "end_stamp": self.end_ns / 1e9 if self.end_ns is not None else None,
            "clip_start_stamp": self.clip_start_ns / 1e9 if self.clip_start_ns is not None else None,
            "window_s": round(self.window_s, 3),
            "duration_s": round(self.duration_s, 3),
            "confidence": self.confidence,
            "reasoning": self.reasoning,
            "raw": self.raw,
            "model": self.model,
            "track_ids": list(self.track_ids),
            "sampled_stamps": [s / 1e9 for s in self.sampled_stamps_ns],
            "tube": [entry.to_json(self.clip_start_ns) for entry in self.tube],
            "timings": {k: round(v, 1) for k, v in self.timings.items()},
            "finish_reason": self.finish_reason,
        }


class _CancelOrDeadline:
    """is_set() once the caller cancels or the query's deadline passes."""

    def __init__(self, cancel, deadline: float) -> None:
        self.cancel, self.deadline = cancel, deadline

    def cancelled(self) -> bool:
        return self.cancel is not None and bool(self.cancel.is_set())

    def timed_out(self) -> bool:
        return time.monotonic() >= self.deadline

    def is_set(self) -> bool:
        return self.cancelled() or self.timed_out()


def with_recorded_input_format(config: GroundingConfig, recorded: dict) -> tuple[GroundingConfig, list[str]]:
    """`config` with the frame count, pixel budget and ID numbering a model was trained with (its
    manifest's `input_format`, backends.models.recorded_input_format), and what changed, one line each.
    A model sees clips the way it learnt them: the recorded values win over the settings."""
    import dataclasses

    changes: dict = {}
    frames = [int(n) for n in recorded.get("frames_per_clip") or [] if int(n) > 0]
    if frames and config.num_frames != max(frames):
        changes["num_frames"] = max(frames)
    for key, field_name in (("max_pixels_per_frame", "max_pixels"), ("min_pixels_per_frame", "min_pixels")):
        value = recorded.get(key)
        if isinstance(value, int) and value > 0 and getattr(config, field_name) != value:
            changes[field_name] = value
    numbering = recorded.get("id_numbering")
    if numbering in ID_NUMBERINGS and config.id_numbering != numbering:
        changes["id_numbering"] = numbering
    if changes.get("min_pixels", config.min_pixels) > changes.get("max_pixels", config.max_pixels):
        changes.pop("min_pixels", None)  # a record with only a smaller max keeps a valid pair
        changes["min_pixels"] = min(config.min_pixels, changes.get("max_pixels", config.max_pixels))
    notes = [f"{k} {getattr(config, k)} -> {v} (the model's recorded input format)" for k, v in changes.items()]
    return (dataclasses.replace(config, **changes) if changes else config), notes


class GroundingPipeline:
    """Answers GroundingRequests over ClipSnapshots with one VLM backend. Thread-safe.

    The backend's `input_format` (recorded at training; {} for a released checkpoint) sets the frame
    count and pixel budget: `config` always holds the values queries use (`with_recorded_input_format`).
    """

    def __init__(self, backend, config: GroundingConfig | None = None) -> None:
        self.backend = backend
        self._config = GroundingConfig()
        self.config = config or GroundingConfig()
        self._lock = threading.Lock()
        # Raises Sam2Unavailable when SAM2 refinement is enabled but cannot run (package or checkpoint).
        self.anchors: AnchorProvider | None = self.config.anchors or build_mask_anchors(self.config.sam2)

    @property
    def config(self) -> GroundingConfig:
        return self._config

    @config.setter
    def config(self, config: GroundingConfig) -> None:
        recorded = getattr(self.backend, "input_format", None)
        config, notes = with_recorded_input_format(config, recorded if isinstance(recorded, dict) else {})
        for note in notes:
            log.warning("%s: %s", self.model_name or "model", note)
        self._config = config

    @property
    def model_name(self) -> str:
        return str(getattr(self.backend, "model_name", "") or getattr(self.backend, "name", ""))

    def ground(
        self,
        snapshot,
        request: GroundingRequest,
        progress: Callable[[str, float], None] | None = None,
        cancel=None,
    ) -> GroundingOutcome:
        """Answer one request. Never raises for bad input or bad model output."""
        started = time.perf_counter()
        outcome = GroundingOutcome(success=False, model=self.model_name)
        try:
            self._ground(snapshot, request, progress, cancel, outcome, started)
        except Exception as exc:  # the contract: a failed outcome, never an exception
            log.exception("grounding failed unexpectedly")
            self._fail(outcome, f"internal error: {type(exc).__name__}: {exc}", "error")
        outcome.timings["total_ms"] = (time.perf_counter() - started) * 1000.0
        for key in ("prep_ms", "encode_ms", "generate_ms"):
            outcome.timings.setdefault(key, 0.0)
        return outcome

    @staticmethod
    def _fail(outcome: GroundingOutcome, message: str, finish: str = "") -> GroundingOutcome:
        outcome.success, outcome.message = False, message
        if finish:
            outcome.finish_reason = finish
        outcome.target_id = outcome.drawn_id = outcome.start_ns = outcome.end_ns = None
        outcome.tube = []
        return outcome

    def _report(self, progress, stage: str, fraction: float) -> None:
        if progress is None:
            return
        try:
            progress(stage, max(0.0, min(1.0, float(fraction))))
        except Exception:  # a broken progress callback must not break the query
            log.warning("progress callback raised; ignoring", exc_info=True)

    def _ground(self, snapshot, request, progress, cancel, outcome: GroundingOutcome, started: float) -> None:
        config = self.config
        deadline = time.monotonic() + max(0.0, float(config.timeout_s))
        stop = _CancelOrDeadline(cancel, deadline)
        notes: list[str] = []

        # ---- validate the request
        try:
            outcome.query = normalize_query(request.query)
            question = build_question(outcome.query)
        except QueryError as exc:
            self._fail(outcome, f"bad query: {exc}", "error")
            return
        window_s = request.window_s
        try:
            window_s = float(window_s or 0.0)
        except (TypeError, ValueError):
            self._fail(outcome, f"bad window: {request.window_s!r} is not a number of seconds", "error")
            return
        if not math.isfinite(window_s) or window_s < 0:
            self._fail(outcome, f"bad window: {request.window_s!r}; give seconds >= 0 (0 = the whole buffer)", "error")
            return
        reasoning = config.reasoning if request.reasoning is None else bool(request.reasoning)

        # ---- sampling
        self._report(progress, "sampling", 0.0)
        if snapshot is None or (not getattr(snapshot, "track_frames", None) and not getattr(snapshot, "frames", None)):
            self._fail(outcome, "no camera frames in the buffer yet; nothing to ground (is the camera publishing?)",
                       "error")
            return
        anchor_failures: list[str] = []
        anchor_ms = [0.0]

        def placed_anchors(rgb, tracks) -> dict[int, tuple[int, int]]:
            # A refinement failure costs the mask centres of that frame, not the query: box centres.
            began = time.perf_counter()
            try:
                return dict(self.anchors(rgb, tracks))
            except Exception as exc:
                log.warning("ID placement (SAM2) failed on a frame; using box centres", exc_info=True)
                anchor_failures.append(f"{type(exc).__name__}: {exc}")
                return {}
            finally:
                anchor_ms[0] += (time.perf_counter() - began) * 1000.0

        try:
            clip: SampledClip = sample_clip(snapshot, window_s, config.num_frames, max_pixels=config.max_pixels,
                                            min_pixels=config.min_pixels,
                                            anchors=placed_anchors if self.anchors is not None else None,
                                            id_numbering=config.id_numbering)
        except (SamplingError, ValueError) as exc:
            self._fail(outcome, str(exc), "error")
            return
        if self.anchors is not None:
            outcome.timings["anchors_ms"] = anchor_ms[0]
        if anchor_failures:
            notes.append(f"ID placement failed on {len(anchor_failures)} of {len(clip.stamps_ns)} frames "
                         f"({anchor_failures[0]}); their IDs are at box centres")
        outcome.clip_start_ns, outcome.window_s, outcome.duration_s = clip.clip_start_ns, clip.window_s, clip.duration_s
        outcome.sampled_stamps_ns, outcome.track_ids = list(clip.stamps_ns), list(clip.track_ids)
        if clip.clamped:
            notes.append(f"the requested window of {clip.requested_window_s:.1f} s is longer than the "
                         f"{clip.window_s:.1f} s buffered; used {clip.window_s:.1f} s")
        if not clip.track_ids:
            self._fail(outcome, f"no tracked objects on the {len(clip.stamps_ns)} sampled frames of the last "
                       f"{clip.window_s:.1f} s; nothing to point at", "error")
            self._append_notes(outcome, notes)
            return
        prep_ms = (time.perf_counter() - started) * 1000.0
        self._report(progress, "sampling", 1.0)

        # ---- encoding + reasoning (the backend)
        self._report(progress, "encoding", 0.0)
        produced = [0]

        def on_token(_piece: str) -> None:
            if produced[0] == 0:
                self._report(progress, "encoding", 1.0)
            produced[0] += 1
            self._report(progress, "reasoning", produced[0] / max(1, config.max_new_tokens))

        try:
            result: GenerationResult = self.backend.generate(
                clip.frames_rgb_with_ids, clip.timestamps_s, question, reasoning=reasoning,
                max_new_tokens=config.max_new_tokens, cancel=stop, on_token=on_token,
                track_ids=clip.prompt_ids, duration_s=clip.duration_s,
            )
        except (GenerationError, ModelLoadError, ValueError) as exc:
            outcome.timings["prep_ms"] = prep_ms
            self._fail(outcome, f"the model failed: {exc}", "error")
            self._append_notes(outcome, notes)
            return
        outcome.raw = result.text
        outcome.timings.update(prep_ms=prep_ms + result.preprocess_ms, encode_ms=result.encode_ms,
                               generate_ms=result.generate_ms)
        outcome.finish_reason = result.finish_reason
        if result.finish_reason == "cancelled":
            if stop.cancelled():
                self._fail(outcome, "cancelled", "cancelled")
            else:
                self._fail(outcome, f"timed out after {config.timeout_s:.1f} s (timeout_s); generation was stopped",
                           "timeout")
            self._append_notes(outcome, notes)
            return

        # ---- parsing
        self._report(progress, "parsing", 0.0)
        parsed = parse_answer(result.text, strict=config.strict, duration=clip.duration_s, track_ids=clip.prompt_ids)
        outcome.reasoning = parsed.reasoning
        if not parsed.ok:
            why = parsed.reason
            if result.finish_reason == "length":
                why += f" (the answer was cut off at max_new_tokens={config.max_new_tokens})"
            self._fail(outcome, f"the model's answer could not be used: {why}")
            self._append_notes(outcome, notes)
            self._report(progress, "parsing", 1.0)
            return
        outcome.success = True
        outcome.drawn_id = int(parsed.target_id)
        outcome.target_id = clip.track_id_of(outcome.drawn_id)
        outcome.start_s, outcome.end_s = float(parsed.start), float(parsed.end)
        outcome.start_ns, outcome.end_ns = clip.stamp_ns_at(parsed.start), clip.stamp_ns_at(parsed.end)
        outcome.tube = build_tube(snapshot, outcome.target_id, outcome.start_ns, outcome.end_ns,
                                  hold_ends=config.hold_tube_ends)
        if not outcome.tube:
            notes.append(f"target {outcome.target_id} has no box between {outcome.start_s:.2f} s and "
                         f"{outcome.end_s:.2f} s (empty tube)")
        outcome.message = f"target {outcome.target_id} from {outcome.start_s:.2f} s to {outcome.end_s:.2f} s"
        if clip.drawn_numbers:
            outcome.message += f" (drawn as {outcome.drawn_id})"
        self._append_notes(outcome, notes)
        self._report(progress, "parsing", 1.0)

    @staticmethod
    def _append_notes(outcome: GroundingOutcome, notes: list[str]) -> None:
        if notes:
            outcome.message = "; ".join([outcome.message, *notes]) if outcome.message else "; ".join(notes)
