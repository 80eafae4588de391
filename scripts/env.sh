# Source this file (bash/zsh) to use stvg_ros from this checkout: the venv, the colcon install tree,
# and offline-friendly defaults. `scripts/run CMD` does the same for one command.
_stvg_root="$(cd "$(dirname "${BASH_SOURCE[0]:-${(%):-%x}}")/.." && pwd)"
export STVG_ROOT="$_stvg_root"
export VIRTUAL_ENV="${STVG_VENV:-$_stvg_root/.venv}"
export PATH="$VIRTUAL_ENV/bin:$PATH"
# What `source install/setup.bash` would set, without needing a ROS install on the machine.
export AMENT_PREFIX_PATH="$_stvg_root/install/stvg_ros:$_stvg_root/install/stvg_ros_msgs:$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$_stvg_root/install/stvg_ros_msgs:$VIRTUAL_ENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export PYTHONPATH="$_stvg_root/install/stvg_ros_msgs/lib/python3.11/site-packages${PYTHONPATH:+:$PYTHONPATH}"
export LD_LIBRARY_PATH="$_stvg_root/install/stvg_ros_msgs/lib:$VIRTUAL_ENV/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Fast DDS transports are left as they are: stvg-ros demo and the benchmark, which start their own
# camera publisher, apply the package's large-image profile themselves; elsewhere it is a choice
# (`stvg-ros up --large-image-dds`, launch argument large_image_dds:=true; README: Camera images).
# Ultralytics: no telemetry, no run-time pip installs, settings inside the checkout.
export YOLO_OFFLINE="${YOLO_OFFLINE:-1}" YOLO_AUTOINSTALL="${YOLO_AUTOINSTALL:-0}"
export YOLO_CONFIG_DIR="${YOLO_CONFIG_DIR:-$_stvg_root/.cache/ultralytics}"
unset _stvg_root
