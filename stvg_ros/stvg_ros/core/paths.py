"""Where stvg_ros keeps caches, model files and model manifests.

Model files live in a user folder, never in the source or install tree (`models_home`). Manifests ship
inside the Python package (`stvg_ros/models/*.yaml`), so every install has them: a colcon build with
or without `--symlink-install`, a wheel, an editable checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # .../stvg_ros (the Python package)
#: The manifests shipped with the package.
PACKAGED_MANIFESTS = _PACKAGE_ROOT / "models"


def repo_root() -> Path | None:
    """The source checkout this package runs from (editable install), or None when installed."""
    candidate = _PACKAGE_ROOT.parents[1]
    return candidate if (candidate / "stvg_ros_msgs").is_dir() and (candidate / "scripts" / "setup.sh").is_file() else None


def _user_cache() -> Path:
    """$XDG_CACHE_HOME/stvg_ros (~/.cache/stvg_ros); a per-user temporary folder when there is no
    writable home (a service account, a read-only image)."""
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stvg_ros"
        base.mkdir(parents=True, exist_ok=True)
        if os.access(base, os.W_OK):
            return base
    except (OSError, RuntimeError):  # RuntimeError: no home directory at all
        pass
    import tempfile

    return Path(tempfile.gettempdir()) / f"stvg_ros-{os.getuid()}"


def cache_dir(*parts: str) -> Path:
    """A cache folder (created) for build and test artifacts: $STVG_CACHE, else <checkout>/.cache in
    a source checkout, else $XDG_CACHE_HOME/stvg_ros (~/.cache/stvg_ros)."""
    if os.environ.get("STVG_CACHE"):
        base = Path(os.environ["STVG_CACHE"])
    elif (root := repo_root()) is not None:
        base = root / ".cache"
    else:
        base = _user_cache()
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_home() -> Path:
    """The folder (created) of model files — `<name>/<file>` per manifest — and of the manifests
    `stvg-train export` writes: $STVG_ROS_MODELS, else $STVG_CACHE/models, else
    $XDG_CACHE_HOME/stvg_ros/models (~/.cache/stvg_ros/models). Never inside the source or install tree."""
    if os.environ.get("STVG_ROS_MODELS"):
        path = Path(os.environ["STVG_ROS_MODELS"])
    elif os.environ.get("STVG_CACHE"):
        path = Path(os.environ["STVG_CACHE"]) / "models"
    else:
        path = _user_cache() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def manifest_dirs() -> list[Path]:
    """Folders with model manifests, in search order (an earlier folder wins a name):
    $STVG_MODELS_PATH, `models_home()`, the package's own manifests."""
    dirs = [Path(p) for p in os.environ.get("STVG_MODELS_PATH", "").split(os.pathsep) if p]
    dirs += [models_home(), PACKAGED_MANIFESTS]
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]
