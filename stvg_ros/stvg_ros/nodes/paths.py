"""Where the shipped parameter files (config/) are: the checkout's, else the installed package share's."""

from __future__ import annotations

from pathlib import Path


def config_dir() -> Path:
    """config/ of this checkout, else of the installed package share."""
    here = Path(__file__).resolve().parents[2] / "config"  # <pkg>/config in a checkout
    if here.is_dir():
        return here
    try:
        from ament_index_python.packages import get_package_share_directory

        shared = Path(get_package_share_directory("stvg_ros")) / "config"
        if shared.is_dir():
            return shared
    except Exception:
        pass
    raise FileNotFoundError(f"cannot find the parameters folder: neither {here} nor the stvg_ros package share")
