"""`stvg-ros synth`: write deterministic synthetic scenes (mp4, rosbag2, HC-STVG v2 annotations)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from stvg_ros.core.bag_io import BagError
from stvg_ros.core.video_io import VideoError
from stvg_ros.synthetic.scenes import DIFFICULTIES, SceneSpec, write_dataset

log = logging.getLogger("stvg_ros.synth")


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 320x240, got {text!r}") from None
    return width, height


def add_parser(sub) -> argparse.ArgumentParser:
    defaults = SceneSpec()
    parser = sub.add_parser(
        "synth",
        help="write synthetic scenes: videos, rosbag2 files, annotations",
        description="Write deterministic synthetic scenes: videos/<name>.mp4, bags/<name>/ (rosbag2), "
        "gt/<name>.json, annotations.json (HC-STVG v2), queries.json and index.json.",
    )
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--seed", type=int, required=True, help="dataset seed: same seed, same files")
    parser.add_argument("--videos", type=int, default=4, help="number of videos (default 4)")
    parser.add_argument("--seconds", type=float, default=defaults.seconds, help="clip length (default 20)")
    parser.add_argument("--fps", type=float, default=defaults.fps, help="frame rate (default 10)")
    parser.add_argument("--size", type=_size, default=(defaults.width, defaults.height), help="WxH (default 320x240)")
    parser.add_argument("--objects", type=int, default=defaults.n_objects, help="objects per scene (default 4)")
    parser.add_argument(
        "--difficulty", choices=DIFFICULTIES, default=defaults.difficulty, help="preset (default mixed)"
    )
    parser.add_argument(
        "--occlusion-seconds", type=float, default=defaults.occlusion_s, help="full-occlusion gap (default 1.5)"
    )
    parser.add_argument("--queries", type=int, default=defaults.max_queries, help="queries per video (default 4)")
    parser.add_argument("--no-bags", action="store_true", help="write no rosbag2 files")
    parser.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3", help="bag storage")
    parser.add_argument("--compressed", action="store_true", help="CompressedImage (JPEG) instead of raw Image")
    parser.add_argument("--json", action="store_true", help="print what was written as one JSON object")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a dataset already in --out (its videos, bags, gt, indexes)"
    )
    return parser


#: What `write_dataset` writes into --out: a dataset there is replaced whole, never mixed with a new one.
DATASET_ENTRIES = ("videos", "bags", "gt", "annotations.json", "queries.json", "index.json")


def _clear_dataset(out: Path, overwrite: bool) -> None:
    """ValueError when --out holds a dataset and --overwrite is not given; with it, remove that dataset."""
    present = [name for name in DATASET_ENTRIES if (out / name).exists()]
    if not present:
        return
    if not overwrite:
        raise ValueError(f"{out} already holds a dataset ({', '.join(present)}); use another --out, or --overwrite")
    for name in present:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def run(args: argparse.Namespace) -> int:
    width, height = args.size
    spec = SceneSpec(
        seconds=args.seconds,
        fps=args.fps,
        width=width,
        height=height,
        n_objects=args.objects,
        difficulty=args.difficulty,
        occlusion_s=args.occlusion_seconds,
        max_queries=args.queries,
    )
    try:
        spec.validate()
        if args.videos < 1:
            raise ValueError("--videos must be at least 1")
        _clear_dataset(Path(args.out), args.overwrite)
        index = write_dataset(
            args.out,
            args.seed,
            args.videos,
            spec,
            bags=not args.no_bags,
            storage=args.storage,
            compressed=args.compressed,
        )
    except (ValueError, RuntimeError, OSError, BagError, VideoError) as exc:
        print(f"stvg-ros synth: error: {exc}", file=sys.stderr)
        return 2
    summary = index.to_json()
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"wrote {len(index.videos)} videos ({summary['frames']} frames) to {index.root}")
        print(f"annotations: {index.annotations}\nqueries:     {index.queries}")
    return 0
