"""The output folder of `eval run` / `eval replay`: results are written as each query finishes, so
a stopped or failed run keeps what it finished, and `--resume` continues it.

Files (all in `--out`)::

    run.json           the manifest: kind ("eval run" | "eval replay"), command, fingerprint (the
                       settings that decide the answers), status (running | complete | interrupted |
                       failed), queries_total / queries_done, videos_done, state (what a resume
                       needs to go on as the run would have: `eval run`'s next track ID), one
                       entry per segment (each start or resume); rewritten atomically
    records.jsonl      the journal: one line per finished query, appended, flushed and fsync'ed as
                       it finishes: the query's record with its prediction entry under "prediction";
                       rewritten once, atomically, with the scores added when the run completes
    predictions.json   {query_id: entry} of every finished query (`predictions.prediction_to_json`,
                       the prediction-file format `eval score` reads), rewritten atomically after
                       every query: always complete, valid and scoreable
    tracks.jsonl       every frame's tracks, appended as they come (`tracks.TrackWriter`)
    .run.lock          held (flock) while a run writes the folder: two runs never share it

Rules:
- A new run (no `--resume`) refuses a folder that holds results (finished queries, or the files of
  a run without run.json); a folder without results is (re)started from scratch.
- `--resume` refuses a run of the other kind or with a different fingerprint (the differing settings
  are named); on a missing or empty folder it starts a new run. Finished queries are kept and not
  asked again. A video counts as done once its frames and queries are all written (`video_done`);
  the tracks of the other videos are dropped from tracks.jsonl, because those videos are played
  again, so every video's tracks appear once, as in an uninterrupted run.
- Predictions are kept as predictions.json has them (boxes rounded to 3 decimals) and tracks as
  tracks.jsonl has them, so the scores of a resumed run, of an uninterrupted one and of
  `eval score` on the files are the same numbers.
- While a run is inside `signals()`, SIGINT and SIGTERM raise `RunInterrupted` in the main thread
  (never while a query's results are being written): the current query is abandoned, the manifest
  says interrupted, and the finished queries stay scoreable.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from stvg_ros.evaluation.errors import EvalError
from stvg_ros.evaluation.predictions import Prediction, parse_prediction, prediction_to_json
from stvg_ros.evaluation.tracks import TrackLog

log = logging.getLogger(__name__)

MANIFEST = "run.json"
JOURNAL = "records.jsonl"
PREDICTIONS = "predictions.json"
TRACKS = "tracks.jsonl"
LOCK = ".run.lock"
#: Files that mean "this folder holds a run's results" when there is no run.json.
RESULT_FILES = (JOURNAL, PREDICTIONS, TRACKS, "report.json")
#: Scores copied from the summary's per_video entries into each record when a run completes.
SCORE_KEYS = ("tIoU", "vIoU", "ceiling_vIoU", "error_source")


class RunInterrupted(BaseException):
    """SIGINT or SIGTERM stopped the run; `exit_code` is the shell's 128 + signal number. A
    BaseException, as KeyboardInterrupt: code that turns errors into a failed answer (`except
    Exception`) must not record the interrupted query as answered."""

    def __init__(self, signum: int, done: int = 0, total: int = 0, out: Path | None = None) -> None:
        self.signum, self.done, self.total, self.out = signum, done, total, out
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, fsync it, and rename it over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:  # disk full, interrupted: the old file stays whole, no temporary is left
        tmp.unlink(missing_ok=True)
        raise


def normalized(value) -> object:
    """`value` as JSON gives it back (paths and other objects as strings): comparable with run.json."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def fingerprint_difference(old: Mapping, new: Mapping) -> list[str]:
    """Names of the settings that differ (`parameters.<node>.<name>` inside nested mappings)."""
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            found += [f"{key}.{k}" for k in fingerprint_difference(a, b)]
        elif a != b:
            found.append(key)
    return found


def read_journal(path: Path) -> Iterator[dict]:
    """The journal's records; a last line cut short (a killed run) is skipped, a bad line before
    it is an EvalError."""
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or "query_id" not in record or "prediction" not in record:
                    raise ValueError("not a record")
            except ValueError as exc:
                if line.endswith("\n"):
                    raise EvalError(
                        f"{path} line {number} is not a run record ({exc}): the folder is damaged"
                    ) from None
                return  # the write of the last line was cut short
            yield record


class RunStore:
    """One run's output folder (see the module docstring). `open` checks and prepares it; `add`
    commits a finished query; `video_done` a finished video; `complete` / `stop` end the segment."""

    def __init__(self, out: Path, kind: str, fingerprint: Mapping, query_ids: Sequence[str]) -> None:
        self.out = Path(out)
        self.kind = kind
        self.fingerprint = normalized(dict(fingerprint))
        self.query_ids = list(query_ids)
        self.predictions: dict[str, Prediction] = {}
        self.latencies: list[float] = []
        self.videos_done: list[str] = []
        self.resumed = 0
        self.manifest: dict = {}
        self._lock = None
        self._journal = None
        self._entries: dict[str, dict] = {}  # predictions.json as written
        self._critical = 0
        self._pending: int | None = None

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(cls, out: str | Path, kind: str, fingerprint: Mapping, query_ids: Sequence[str], resume: bool) -> RunStore:
        """Check the folder against this run (EvalError when it must not be written) and take it."""
        store = cls(Path(out), kind, fingerprint, query_ids)
        store._take(resume)
        return store

    def _take(self, resume: bool) -> None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise EvalError(f"--out {out} is a file, not a folder")
        out.mkdir(parents=True, exist_ok=True)
        self._lock = (out / LOCK).open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise EvalError(f"another run is writing to {out}: wait for it or choose another --out") from None
        try:
            self._check(resume)
        except BaseException:
            self._release()
            raise

    def _check(self, resume: bool) -> None:
        out = self.out
        manifest_path = out / MANIFEST
        manifest = None
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
                if not isinstance(manifest, dict):
                    raise ValueError("not an object")
            except (ValueError, UnicodeDecodeError) as exc:
                raise EvalError(f"{manifest_path} is damaged ({exc}): choose another --out") from None
        if manifest is None:
            found = [name for name in RESULT_FILES if (out / name).exists()]
            if found:
                raise EvalError(
                    f"--out {out} holds results ({', '.join(found)}) of a run without {MANIFEST}: it cannot be "
                    "resumed or mixed with this run; choose another --out"
                )
            self._start_new()
            return
        records = list(read_journal(out / JOURNAL))
        has_results = bool(records or manifest.get("videos_done"))
        if not resume:
            if has_results:
                raise EvalError(
                    f"--out {out} holds the results of an earlier run ({manifest.get('status', '?')}, "
                    f"{len(records)} of {manifest.get('queries_total', '?')} queries done): continue it with "
                    "--resume, or choose another --out"
                )
            self._start_new()
            return
        if manifest.get("kind") != self.kind:
            raise EvalError(f"--resume: --out {out} holds a `{manifest.get('kind')}` run, not `{self.kind}`")
        differ = fingerprint_difference(manifest.get("fingerprint") or {}, self.fingerprint)
        if differ:
            shown = ", ".join(differ[:6]) + (" ..." if len(differ) > 6 else "")
            raise EvalError(
                f"--resume: the run in {out} was made with other settings ({shown}): resume it with the "
                "same arguments, or choose another --out"
            )
        known = set(self.query_ids)
        unknown = sorted({r["query_id"] for r in records} - known)
        if unknown:
            raise EvalError(f"--resume: {out} has results for queries this run does not have: {unknown[:3]}")
        self.manifest = manifest
        self._load(records)

    def _start_new(self) -> None:
        for name in (JOURNAL, PREDICTIONS, TRACKS):
            path = self.out / name
            if path.exists():
                path.unlink()
        self.manifest = {"kind": self.kind, "fingerprint": self.fingerprint, "started_at": _now(), "segments": [],
                         "videos_done": []}  # fmt: skip
        self._begin()

    def _load(self, records: list[dict]) -> None:
        """Keep the finished queries; drop a cut-short last journal line and the tracks of unfinished videos."""
        clean: dict[str, dict] = {}
        for record in records:
            clean[str(record["query_id"])] = record
        order = [q for q in self.query_ids if q in clean]
        # rewrite the journal without a cut-short tail (and in query order: the order the run writes)
        atomic_write(self.out / JOURNAL, "".join(_line(clean[q]) for q in order))
        for query_id in order:
            record = clean[query_id]
            self._keep(parse_prediction(query_id, record["prediction"]))
            self.latencies.append(float(record.get("latency_s") or 0.0))
        self.resumed = len(order)
        self.videos_done = [str(v) for v in self.manifest.get("videos_done") or []]
        self._filter_tracks(set(self.videos_done))
        self._begin()

    def _filter_tracks(self, videos: set[str]) -> None:
        path = self.out / TRACKS
        if not path.is_file():
            return
        tmp = path.with_name(path.name + ".tmp")
        with path.open(encoding="utf-8") as source, tmp.open("w", encoding="utf-8") as target:
            for line in source:
                if not line.endswith("\n"):
                    break  # cut short
                try:
                    video_id = json.loads(line)["video_id"]
                except (ValueError, KeyError, TypeError):
                    raise EvalError(f"{path} has a damaged line: the folder cannot be resumed") from None
                if video_id in videos:
                    target.write(line)
            target.flush()
            os.fsync(target.fileno())
        os.replace(tmp, path)

    def _begin(self) -> None:
        self.manifest.update(command=list(sys.argv), status="running", queries_total=len(self.query_ids),
                             queries_done=len(self.predictions), videos_done=self.videos_done)  # fmt: skip
        self.manifest.setdefault("segments", []).append({"started_at": _now(), "status": "running",
                                                         "resumed_queries": len(self.predictions)})  # fmt: skip
        self._write_manifest()
        self._write_predictions()
        self._journal = (self.out / JOURNAL).open("a", encoding="utf-8")

    # ---------------------------------------------------------------- during the run

    def done(self, query_id: str) -> bool:
        return query_id in self.predictions

    def is_video_done(self, video_id: str) -> bool:
        return video_id in self.videos_done

    @property
    def tracks_path(self) -> Path:
        return self.out / TRACKS

    def load_tracks(self, keep: Callable[[str, int], bool]) -> TrackLog:
        """The tracks of the done videos' frames for which keep(video_id, frame) holds (bounded memory)."""
        log = TrackLog()
        path = self.out / TRACKS
        if self.videos_done and path.is_file():
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    row = json.loads(line)
                    if keep(row["video_id"], int(row["frame"])):
                        log.add(row["video_id"], int(row["frame"]), row["ids"], row["boxes"], row.get("stamp_ns"))
        return log

    def add(self, prediction: Prediction, record: Mapping) -> Prediction:
        """Commit one finished query: the journal line (fsync'ed), then predictions.json. Returns the
        prediction as the files hold it. SIGINT/SIGTERM wait until both are written."""
        entry = prediction_to_json(prediction)
        kept = parse_prediction(prediction.query_id, entry)
        with self._deferred_signals():
            self._journal.write(_line({**record, "prediction": entry}))
            self._journal.flush()
            os.fsync(self._journal.fileno())
            self._keep(kept)
            self.latencies.append(float(record.get("latency_s") or 0.0))
            self._write_predictions()
            if len(self.predictions) % 10 == 0 or len(self.predictions) == len(self.query_ids):
                self.manifest["queries_done"] = len(self.predictions)
                self._write_manifest()
        return kept

    def video_done(self, video_id: str, state: Mapping | None = None) -> None:
        """Every frame's tracks and every query of `video_id` are written; `state` is what a resumed
        run needs to go on from here as this one would (`eval run`: the tracker's next track ID)."""
        with self._deferred_signals():
            self.videos_done.append(video_id)
            self.manifest.update(videos_done=self.videos_done, queries_done=len(self.predictions))
            if state is not None:
                self.manifest["state"] = normalized(dict(state))
            self._write_manifest()

    @property
    def state(self) -> dict:
        """The `state` of the last done video (empty for a new run)."""
        return dict(self.manifest.get("state") or {})

    # ---------------------------------------------------------------- the end

    def complete(self, per_video: Mapping[str, Mapping]) -> None:
        """All queries are done: add the scores to the records (one atomic rewrite), mark complete."""
        self._close_journal()
        path = self.out / JOURNAL
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as target:
            for record in read_journal(path):
                scores = per_video.get(record["query_id"], {})
                record.update({k: scores.get(k) for k in SCORE_KEYS if k in scores})
                target.write(_line(record))
            target.flush()
            os.fsync(target.fileno())
        os.replace(tmp, path)
        self._end("complete")

    def stop(self, status: str, error: str = "") -> None:
        """End the segment as interrupted or failed (results so far stay valid and scoreable). Never
        raises for a manifest it cannot write (the disk that failed the run may still be full): the
        manifest then keeps its last state, which `--resume` handles like an interrupted run."""
        try:
            self._close_journal()
        except OSError as exc:
            log.warning("closing %s failed: %s", self.out / JOURNAL, exc)
        try:
            self._end(status, error)
        except OSError as exc:
            log.warning("could not mark %s %s: %s", self.out / MANIFEST, status, exc)
            self._release()

    def resume_hint(self) -> str:
        done = len(self.predictions)
        return (f"{done} of {len(self.query_ids)} queries finished and kept in {self.out} (predictions.json is "
                "scoreable); continue with the same arguments and --resume")  # fmt: skip

    def _end(self, status: str, error: str = "") -> None:
        segment = self.manifest["segments"][-1]
        segment.update(ended_at=_now(), status=status)
        if error:
            segment["error"] = error
        self.manifest.update(status=status, queries_done=len(self.predictions), videos_done=self.videos_done)
        self._write_manifest()
        self._release()

    def _close_journal(self) -> None:
        journal, self._journal = self._journal, None
        if journal is not None:
            journal.close()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing drops the flock
            self._lock = None

    def _keep(self, prediction: Prediction) -> None:
        self.predictions[prediction.query_id] = prediction
        self._entries[prediction.query_id] = prediction_to_json(prediction)

    def _write_predictions(self) -> None:
        atomic_write(self.out / PREDICTIONS, json.dumps(self._entries, indent=1) + "\n")

    def _write_manifest(self) -> None:
        self.manifest["updated_at"] = _now()
        atomic_write(self.out / MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True) + "\n")

    # ---------------------------------------------------------------- signals

    @contextlib.contextmanager
    def recording(self, user_errors: tuple[type[BaseException], ...]) -> Iterator[None]:
        """The body of a run: SIGINT/SIGTERM raise RunInterrupted (`signals`), and the manifest says how
        the block ended. An error of `user_errors` (a bad video, a model error) after some results is
        re-raised as EvalError with the resume hint; anything else is marked failed and re-raised."""
        try:
            with self.signals():
                yield
        except RunInterrupted as exc:
            self.stop("interrupted", str(exc))
            raise
        except user_errors as exc:
            message = " ".join(str(exc).split())
            self.stop("failed", message)
            if not self.predictions:
                raise
            raise EvalError(f"{message} ({self.resume_hint()})") from None
        except BaseException as exc:
            self.stop("failed", f"{type(exc).__name__}: {exc}")
            raise

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM raise RunInterrupted in the main thread while inside (no-op in other threads)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for signum in previous:
            signal.signal(signum, self._on_signal)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame) -> None:
        if self._critical:
            self._pending = signum
            return
        raise RunInterrupted(signum, len(self.predictions), len(self.query_ids), self.out)

    @contextlib.contextmanager
    def _deferred_signals(self) -> Iterator[None]:
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if not self._critical and self._pending is not None:
            signum, self._pending = self._pending, None
            raise RunInterrupted(signum, len(self.predictions), len(self.query_ids), self.out)


def _line(record: Mapping) -> str:
    return json.dumps(record, sort_keys=True, default=_jsonable) + "\n"


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "value"):  # enums
        return value.value
    return str(value)
