"""DDS transport for camera images: the Fast DDS shared-memory profile for large images (opt-in)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from stvg_ros.nodes.paths import config_dir

#: Fast DDS profile in config/: a shared-memory segment that holds camera images (the default
#: 512 KB segment cannot hold a 900 KB 640x480 frame, which then goes over UDP and is mostly lost).
DDS_PROFILE_FILE = "fastdds_large_images.xml"
#: Where Fast DDS looks for a profiles file: FASTDDS_* from Fast DDS 3 (ROS 2 Kilted), FASTRTPS_*
#: in Fast DDS 2.x (Jazzy, Humble; Fast DDS 3 still reads it but warns that it is deprecated).
DDS_PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
#: ROS 2 distributions that ship Fast DDS 2.x.
FAST_DDS_2_DISTROS = ("humble", "iron", "jazzy")
#: Any of these set by the user: their Fast DDS transport choice stands.
DDS_USER_VARIABLES = (*DDS_PROFILE_VARIABLES, "FASTDDS_BUILTIN_TRANSPORTS")


def large_image_dds_settings(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment variables that make Fast DDS carry camera images between processes on one
    machine ({the profile variable this Fast DDS reads: config/fastdds_large_images.xml}), or {} when the environment
    already chooses the transports (see DDS_USER_VARIABLES).

    Nodes never apply this on their own: it replaces the transports of the whole process, so it is
    the user's choice (`stvg-ros up --large-image-dds`, launch argument `large_image_dds`), on by
    default only where stvg_ros itself starts the camera publisher (`stvg-ros demo`, the benchmark).
    """
    environ = os.environ if environ is None else environ
    if any(environ.get(name) for name in DDS_USER_VARIABLES):
        return {}
    profile = str(config_dir() / DDS_PROFILE_FILE)
    return dict.fromkeys(_profile_variables(environ), profile)


def _profile_variables(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The profile variable(s) this machine's Fast DDS reads: by the installed `ros-fastdds` wheel's
    version, else by ROS_DISTRO (set by a ROS install's setup.bash); both when neither says."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major = int(version("ros-fastdds").split(".")[0])
    except (PackageNotFoundError, ValueError):
        distro = environ.get("ROS_DISTRO", "").strip().lower()
        major = 2 if distro in FAST_DDS_2_DISTROS else 3 if distro else 0
    return {2: DDS_PROFILE_VARIABLES[1:], 3: DDS_PROFILE_VARIABLES[:1]}.get(major, DDS_PROFILE_VARIABLES)


def use_large_image_dds() -> dict[str, str]:
    """Apply `large_image_dds_settings()` to this process (and the processes it starts); call it
    before `rclpy.init`. Returns what it set."""
    settings = large_image_dds_settings()
    os.environ.update(settings)
    return settings
