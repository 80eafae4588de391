"""Where stvg_ros keeps caches and finds model manifests."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # .../stvg_ros/stvg_ros


def repo_root() -> Path | None:
    """The source checkout this package runs from (editable install), or None when installed."""
    candidate = _PACKAGE_ROOT.parents[1]
    return candidate if (candidate / "stvg_ros_msgs").is_dir() and (candidate / "models").is_dir() else None


def cache_dir(*parts: str) -> Path:
    """A cache folder (created): $STVG_CACHE, else <checkout>/.cache, else ~/.cache/stvg_ros."""
    if os.environ.get("STVG_CACHE"):
        base = Path(os.environ["STVG_CACHE"])
    elif (root := repo_root()) is not None:
        base = root / ".cache"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "stvg_ros"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def manifest_dirs() -> list[Path]:
    """Folders with model manifests, in search order: $STVG_MODELS_PATH, <checkout>/models, share/."""
    dirs = [Path(p) for p in os.environ.get("STVG_MODELS_PATH", "").split(os.pathsep) if p]
    if (root := repo_root()) is not None:
        dirs.append(root / "models")
    try:
        from ament_index_python.packages import get_package_share_directory

        dirs.append(Path(get_package_share_directory("stvg_ros")) / "models")
    except Exception:
        pass
    return [d for d in dirs if d.is_dir()]
