"""`stvg-ros eval`: score prediction files, run the pipeline over a dataset, replay bags, make sets.

    stvg-ros eval score --annotations A --predictions P [--protocol tubedetr|hcstvg_official|stvgr1]
                        [--frame-ids decoded|one_based] [--json]
    stvg-ros eval run --videos DIR --annotations A --out DIR [--backend B --model M] [--resume]
    stvg-ros eval replay --bag B --sidecar S --out DIR [--resume]
    stvg-ros eval make-set --out DIR --level occlusion [--count N --seed S] [--paraphrase]

Bad input ends with exit code 2 and one line on stderr (`stvg-ros eval: error: ...`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from stvg_ros.core.bag_io import BagError
from stvg_ros.core.video_io import VideoError
from stvg_ros.evaluation.benchsets import LEVELS, make_set
from stvg_ros.evaluation.errors import EvalError
from stvg_ros.evaluation.loaders import FORMATS, FRAME_ID_CONVENTIONS
from stvg_ros.evaluation.metrics import DEFAULT_PROTOCOL, PROTOCOLS
from stvg_ros.evaluation.replay import ReplayConfig, replay
from stvg_ros.evaluation.report import summary_lines
from stvg_ros.evaluation.run_store import RunInterrupted
from stvg_ros.evaluation.runner import RunConfig, run_dataset
from stvg_ros.evaluation.scoring import score_files
from stvg_ros.nodes.graph import parse_overrides

log = logging.getLogger("stvg_ros.eval")

RESUME_HELP = (
    "continue the stopped or failed run in --out (same arguments): finished queries are kept, the rest "
    "are run; without it, an --out that holds another run's results is refused"
)
PROTOCOL_HELP = (
    "tubedetr (default; TubeDETR's evaluator, 5 fps sampling, end-exclusive spans), "
    "hcstvg_official (HC-STVG eval_hcvg.py: all frames, inclusive ends), "
    "stvgr1 (STVG-R1 evaluate.py: seconds, >= thresholds)"
)


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("eval", help="score predictions, run the pipeline on a dataset, replay bags")
    actions = parser.add_subparsers(dest="eval_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--protocol", choices=PROTOCOLS, default=DEFAULT_PROTOCOL, help=PROTOCOL_HELP)
        p.add_argument("--format", dest="annotation_format", choices=FORMATS, default="auto",
                       help="annotation format (default: detected)")  # fmt: skip
        p.add_argument("--vidor-dir", default=None, help="VidOR annotation folder (original VidSTG files only)")
        p.add_argument("--json", action="store_true", help="print the result as one JSON object")

    score = actions.add_parser("score", help="score a prediction file against annotations")
    score.add_argument("--annotations", required=True, help="annotation file (HC-STVG, TubeDETR list, VidSTG, synth)")
    score.add_argument("--predictions", required=True, help="prediction JSON {query_id: {sted, boxes}}")
    score.add_argument("--tracks", default=None, help="tracks.jsonl of the run: adds the perception ceiling")
    score.add_argument("--require-all", action="store_true", help="fail when a query has no prediction")
    score.add_argument("--report", default=None, metavar="DIR", help="also write report.json/.md and plots here")
    score.add_argument("--frame-ids", choices=tuple(FRAME_ID_CONVENTIONS), default=None,
                       help="frame ids of the annotations and predictions: decoded (0-based decoded frames, "
                       "st_frame as written: TubeDETR's; default for HC-STVG, TubeDETR lists, VidSTG) or "
                       "one_based (decoded frame d has id d + 1; default for stvg-ros synthetic sets)")  # fmt: skip
    common(score)

    run = actions.add_parser("run", help="videos + annotations -> the pipeline -> predictions, metrics, report")
    run.add_argument("--videos", required=True, help="folder with the video files (name = video id + extension)")
    run.add_argument("--annotations", required=True)
    run.add_argument("--out", required=True, help="output folder")
    run.add_argument("--baseline", choices=("random", "most-visible"), default=None,
                     help="answer with a trivial baseline instead of the model (no model is loaded): a random "
                          "track ID, or the most visible track, with the whole video as the span")  # fmt: skip
    common(run)
    add_run_arguments(run)

    replay = actions.add_parser("replay", help="replay a rosbag2 into the running graph with sim time and score")
    replay.add_argument("--sidecar", required=True, help="the bag's queries and annotations (JSON, see docs)")
    replay.add_argument("--bag", default=None, help="rosbag2 folder or file (sqlite3 or MCAP); default: the sidecar's")
    replay.add_argument("--out", required=True, help="output folder")
    common(replay)
    add_replay_arguments(replay)

    make = actions.add_parser("make-set", help="write a seeded synthetic benchmark set (videos, bags, annotations)")
    add_make_set_arguments(make)
    make.add_argument("--json", action="store_true", help="print the set's manifest as JSON")
    return parser


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", choices=("auto", "video", "bag"), default="auto",
                        help="read <videos>/<video_id>/ rosbag2 folders or video files (default: what exists)")  # fmt: skip
    parser.add_argument("--params", default=None, metavar="FILE",
                        help="ROS parameters file for the graph's nodes, applied over their config/*.yaml "
                        "(as `stvg-ros up --params`)")  # fmt: skip
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NODE:NAME=VALUE",
                        help="override one parameter, e.g. grounding_node:num_frames=8 (repeatable)")  # fmt: skip
    parser.add_argument("--backend", default=None, help="grounding backend (llama_cpp, transformers, http)")
    parser.add_argument("--model", default=None, help="grounding model: manifest name or path")
    parser.add_argument("--perception", choices=("tracker", "gt"), default="tracker",
                        help="tracker: the detector + tracker (default); gt: a synthetic set's ground-truth "
                        "tracks, to judge the model alone")  # fmt: skip
    parser.add_argument("--limit", type=int, default=None, help="only the first N videos")
    parser.add_argument("--frame-tolerance", type=int, default=0,
                        help="allowed difference between decoded and annotated frame counts")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--resume", action="store_true", help=RESUME_HELP)


def add_make_set_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--level", choices=LEVELS, default="mixed", help="difficulty (default: mixed)")
    parser.add_argument("--count", type=int, default=8, help="videos in the set (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the whole set (default 0)")
    parser.add_argument("--seconds", type=float, default=20.0, help="clip length (default 20, as HC-STVG)")
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--objects", type=int, default=4, help="objects per scene (2-8)")
    parser.add_argument("--queries-per-video", type=int, default=1, help="queries per scene (default 1)")
    parser.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3", help="bag storage")
    parser.add_argument("--no-bags", action="store_true", help="videos and annotations only")
    parser.add_argument("--paraphrase", action="store_true",
                        help="also write annotations_paraphrased.json: the same queries with reworded captions")  # fmt: skip


def run_config(args: argparse.Namespace) -> RunConfig:
    """The RunConfig of `eval run`'s arguments (`--backend`/`--model` are grounding_node overrides)."""
    try:
        overrides = parse_overrides(args.param)
    except ValueError as exc:
        raise EvalError(str(exc)) from None
    grounding = overrides.setdefault("grounding_node", {})
    if args.backend:
        grounding["backend"] = args.backend
    if args.model:
        grounding["model"] = args.model
    return RunConfig(
        videos=Path(args.videos),
        annotations=Path(args.annotations),
        out=Path(args.out),
        protocol=args.protocol,
        annotation_format=args.annotation_format,
        vidor_dir=args.vidor_dir,
        source=args.source,
        perception=args.perception,
        params_file=args.params,
        overrides=overrides,
        limit=args.limit,
        frame_tolerance=args.frame_tolerance,
        progress=not args.no_progress,
        resume=args.resume,
        baseline=(args.baseline or "").replace("-", "_"),
    )


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--more-sidecars", nargs="*", default=[], metavar="S", help="further sidecars, played in order")
    parser.add_argument("--pace", choices=("lockstep", "rate"), default="lockstep",
                        help="lockstep: next frame once the tracker answered the last (default); rate: by stamps")  # fmt: skip
    parser.add_argument("--rate", type=float, default=1.0, help="with --pace rate: x real time (0 = no waiting)")
    parser.add_argument("--camera-topic", default="/camera/image_raw", help="topic the graph's tracker listens to")
    parser.add_argument("--tracks-topic", default="/tracks", help="the tracker's TrackedObjectArray topic")
    parser.add_argument("--service", default="/ground", help="the grounding node's Ground service")
    parser.add_argument("--start-graph", action="store_true", help="start `stvg-ros up --use-sim-time` for the run")
    parser.add_argument("--params", default=None, metavar="FILE",
                        help="with --start-graph: the graph's ROS parameters file")  # fmt: skip
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NODE:NAME=VALUE",
                        help="with --start-graph: override one parameter of the graph, as `stvg-ros up -p` and "
                        "`eval run -p` (repeatable)")  # fmt: skip
    parser.add_argument("--graph-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for `stvg-ros up` (repeatable), e.g. --graph-arg=--backend=llama_cpp")  # fmt: skip
    parser.add_argument("--graph-timeout", type=float, default=120.0, help="seconds to wait for the graph")
    parser.add_argument(
        "--frame-timeout", type=float, default=10.0, help="lockstep: seconds to wait for a frame's tracks"
    )
    parser.add_argument("--query-timeout", type=float, default=300.0, help="seconds to wait for one answer")
    parser.add_argument("--decompress", action="store_true", help="publish CompressedImage bags as Image")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--resume", action="store_true", help=RESUME_HELP)


def replay_config(args: argparse.Namespace) -> ReplayConfig:
    """The ReplayConfig of `eval replay`'s arguments; EvalError for contradicting ones."""
    graph_args = ["--params", args.params] if args.params else []
    graph_args += [a for item in args.param for a in ("-p", item)] + list(args.graph_arg)
    config = ReplayConfig(
        sidecars=[Path(args.sidecar), *map(Path, args.more_sidecars)],
        out=Path(args.out),
        bag=Path(args.bag) if args.bag else None,
        protocol=args.protocol,
        annotation_format=args.annotation_format,
        vidor_dir=args.vidor_dir,
        pace=args.pace,
        rate=args.rate,
        camera_topic=args.camera_topic,
        tracks_topic=args.tracks_topic,
        service=args.service,
        start_graph=args.start_graph,
        graph_args=graph_args,
        graph_timeout_s=args.graph_timeout,
        frame_timeout_s=args.frame_timeout,
        query_timeout_s=args.query_timeout,
        decompress=args.decompress,
        progress=not args.no_progress,
        resume=args.resume,
    )
    if config.pace == "rate" and config.rate < 0:
        raise EvalError("--rate must be >= 0")
    if config.graph_args and not config.start_graph:
        raise EvalError("--params, -p and --graph-arg configure a graph that replay starts: add --start-graph")
    return config


def _print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        json.dump(summary, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return
    print("\n".join(summary_lines(summary)))


def _score(args: argparse.Namespace) -> int:
    summary = score_files(
        args.annotations,
        args.predictions,
        protocol=args.protocol,
        annotation_format=args.annotation_format,
        vidor_dir=args.vidor_dir,
        tracks=args.tracks,
        require_all=args.require_all,
        report_dir=args.report,
        frame_ids=args.frame_ids,
    )
    _print_summary(summary, args.json)
    return 0


def _interrupted(exc: RunInterrupted) -> int:
    """One line for a run stopped by SIGINT/SIGTERM; the shell's exit code (130 / 143)."""
    print(f"stvg-ros eval: {exc}: {exc.done} of {exc.total} queries finished and kept in {exc.out} "
          "(predictions.json is scoreable); continue with the same arguments and --resume", file=sys.stderr)  # fmt: skip
    return exc.exit_code


def _run(args: argparse.Namespace) -> int:
    try:
        summary = run_dataset(run_config(args))
    except RunInterrupted as exc:
        return _interrupted(exc)
    _print_summary(summary, args.json)
    return 0


def _replay(args: argparse.Namespace) -> int:
    try:
        summary = replay(replay_config(args))
    except RunInterrupted as exc:
        return _interrupted(exc)
    _print_summary(summary, args.json)
    return 0


def _make_set(args: argparse.Namespace) -> int:
    manifest = make_set(args.out, level=args.level, count=args.count, seed=args.seed, seconds=args.seconds,
                        fps=args.fps, width=args.width, height=args.height, objects=args.objects,
                        queries_per_video=args.queries_per_video, storage=args.storage, bags=not args.no_bags,
                        paraphrase=args.paraphrase)  # fmt: skip
    if args.json:
        json.dump(manifest, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(f"wrote {manifest['n_queries']} queries ({manifest['level']}) to {manifest['root']}")
    return 0


def run(args: argparse.Namespace) -> int:
    handlers = {"score": _score, "run": _run, "replay": _replay, "make-set": _make_set}
    expected = (EvalError, OSError, BagError, VideoError)
    try:
        return handlers[args.eval_command](args)
    except expected as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"stvg-ros eval: error: {message}", file=sys.stderr)
        return 2
