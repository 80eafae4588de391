#!/usr/bin/env bash
# Idempotent setup of stvg_ros on a fresh Debian 12 machine (or again on a set-up one).
#
#   1. system packages (apt) that are missing
#   2. the project venv (.venv) with the pinned dependencies of requirements/*.txt
#   3. llama-cpp-python, compiled once; its wheel is cached in .cache/wheels (and ~/.cache/stvg_ros/wheels)
#   4. llama.cpp's own GGUF converter, unpacked from the same pinned sdist into .cache/llama_cpp_src
#   5. editable installs of stvg_ros and stvg_train (the `stvg-ros` and `stvg-train` commands)
#   6. a colcon build of stvg_ros_msgs and stvg_ros into install/
#   7. a venv hook so .venv/bin/python finds install/ without sourcing anything
#
# Every step checks a stamp or the installed state first, so a second run rebuilds nothing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${STVG_VENV:-$ROOT/.venv}"
CACHE="$ROOT/.cache"
USER_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/stvg_ros"
LLAMA_VERSION="0.3.36"
PYTHON="${PYTHON:-python3}"
START=$SECONDS

log() { printf '[setup +%3ss] %s\n' "$((SECONDS - START))" "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
# pip's global config here names local mirrors that may not exist; keep its output readable.
pip_quiet() { "$VENV/bin/python" -m pip "$@" 2>&1 | grep -v -e "^WARNING: Location" -e "^$" || true; }
hash_files() { cat "$@" 2>/dev/null | sha256sum | cut -d' ' -f1; }

# --- 1. system packages -------------------------------------------------------------------------
SYSTEM_PACKAGES=(python3 python3-venv python3-dev cmake g++ make git pkg-config libgomp1 ca-certificates)
# A Python 3.11 with headers and venv may come from elsewhere (pyenv); then Debian's is not needed.
python_ready=0
"$PYTHON" -c 'import os, sysconfig, venv; assert os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")' \
  2>/dev/null && python_ready=1
missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  case "$pkg" in
    python3|python3-venv|python3-dev) [ "$python_ready" = 1 ] && continue ;;
    cmake|g++|make|git) command -v "$pkg" >/dev/null && continue ;;
  esac
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "system packages present"
fi

"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || die "Python 3.11 is required (the ROS 2 Kilted wheels are built for CPython 3.11); set PYTHON=/path/to/python3.11"

# --- 2. venv with pinned dependencies ------------------------------------------------------------
[ -x "$VENV/bin/python" ] || { log "creating venv $VENV"; "$PYTHON" -m venv "$VENV"; }
REQ_STAMP="$VENV/.stvg-requirements.sha256"
req_hash=$(hash_files "$ROOT"/requirements/*.txt)
if [ "$(cat "$REQ_STAMP" 2>/dev/null)" != "$req_hash" ]; then
  log "installing pinned dependencies (requirements/*.txt); about 2-6 min the first time"
  pip_quiet install -q "pip==26.3" "setuptools==79.0.1" "wheel==0.48.0"
  # sam2 is an sdist: build it without its optional CUDA extension (same result on every machine)
  SAM2_BUILD_CUDA=0 pip_quiet install -q -r "$ROOT/requirements/base.txt"
  "$VENV/bin/python" -c "import torch, torchvision, ultralytics, transformers, trl, rclpy, rosbags, sam2" \
    || die "the pinned dependencies did not install (see the pip output above)"
  echo "$req_hash" > "$REQ_STAMP"
else
  log "dependencies up to date"
fi

# --- 3. llama-cpp-python, compiled once ----------------------------------------------------------
installed_llama=$("$VENV/bin/python" -c "import llama_cpp; print(llama_cpp.__version__)" 2>/dev/null || true)
if [ "$installed_llama" != "$LLAMA_VERSION" ]; then
  mkdir -p "$CACHE/wheels" "$USER_CACHE/wheels"
  wheel=$(ls "$CACHE"/wheels/llama_cpp_python-"$LLAMA_VERSION"-*.whl "$USER_CACHE"/wheels/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    log "building llama-cpp-python $LLAMA_VERSION from source (CPU; about 5-10 min, once)"
    mkdir -p "$CACHE/sdist"
    [ -f "$CACHE/sdist/llama_cpp_python-$LLAMA_VERSION.tar.gz" ] \
      || pip_quiet download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_VERSION" -d "$CACHE/sdist"
    # Portable x86-64 build (AVX2/FMA), not -march=native: the wheel may be reused on another machine.
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF" \
      pip_quiet wheel -q --no-deps "$CACHE/sdist/llama_cpp_python-$LLAMA_VERSION.tar.gz" -w "$CACHE/wheels"
    wheel=$(ls "$CACHE"/wheels/llama_cpp_python-"$LLAMA_VERSION"-*.whl | head -n1)
  fi
  cp -n "$wheel" "$CACHE/wheels/" 2>/dev/null || true
  cp -n "$wheel" "$USER_CACHE/wheels/" 2>/dev/null || true
  pip_quiet install -q --no-deps "$wheel"
  "$VENV/bin/python" -c "import llama_cpp" || die "llama-cpp-python did not install from $wheel"
  log "llama-cpp-python $LLAMA_VERSION installed from $(basename "$wheel")"
else
  log "llama-cpp-python $LLAMA_VERSION present"
fi

# --- 4. llama.cpp's GGUF converter from the same sdist --------------------------------------------
SRC="$CACHE/llama_cpp_src/llama_cpp_python-$LLAMA_VERSION"
if [ ! -f "$SRC/vendor/llama.cpp/convert_hf_to_gguf.py" ]; then
  mkdir -p "$CACHE/sdist" "$CACHE/llama_cpp_src"
  [ -f "$CACHE/sdist/llama_cpp_python-$LLAMA_VERSION.tar.gz" ] \
    || pip_quiet download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_VERSION" -d "$CACHE/sdist"
  tar xzf "$CACHE/sdist/llama_cpp_python-$LLAMA_VERSION.tar.gz" -C "$CACHE/llama_cpp_src"
  log "unpacked llama.cpp converter into $SRC"
fi

# --- 5. editable installs (stvg-ros, stvg-train) --------------------------------------------------
EDIT_STAMP="$VENV/.stvg-editable.sha256"
edit_hash=$(hash_files "$ROOT/stvg_ros/setup.py" "$ROOT/training/pyproject.toml")
if [ "$(cat "$EDIT_STAMP" 2>/dev/null)" != "$edit_hash" ] || [ ! -x "$VENV/bin/stvg-ros" ]; then
  log "installing stvg_ros and stvg_train (editable)"
  targets=(-e "$ROOT/stvg_ros")
  [ -f "$ROOT/training/pyproject.toml" ] && targets+=(-e "$ROOT/training")
  pip_quiet install -q --no-deps --no-build-isolation "${targets[@]}"
  echo "$edit_hash" > "$EDIT_STAMP"
fi

# --- 6. colcon build of both packages -------------------------------------------------------------
"$VENV/bin/python" "$ROOT/scripts/patch_ros_cmake.py" "$VENV" >/dev/null
BUILD_STAMP="$ROOT/install/.stvg-build.sha256"
build_hash=$( (cd "$ROOT" && find stvg_ros_msgs stvg_ros/package.xml stvg_ros/setup.py stvg_ros/setup.cfg \
  stvg_ros/launch stvg_ros/config stvg_ros/resource -type f -print0 | sort -z | xargs -0 sha256sum; echo "$VENV") | sha256sum | cut -d' ' -f1)
if [ "$(cat "$BUILD_STAMP" 2>/dev/null)" != "$build_hash" ]; then
  log "colcon build (stvg_ros_msgs, stvg_ros); about 2 min"
  mkdir -p "$ROOT/log"
  (
    cd "$ROOT"
    export PATH="$VENV/bin:$PATH" AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" VIRTUAL_ENV="$VENV"
    # RPATH: the generated libraries find each other and the ROS wheels' libraries without LD_LIBRARY_PATH.
    colcon --log-base "$ROOT/log" build --base-paths stvg_ros_msgs stvg_ros --symlink-install \
      --event-handlers console_stderr- \
      --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF \
      "-DCMAKE_INSTALL_RPATH=\$ORIGIN:\$ORIGIN/../../..:$VENV/lib" >"$ROOT/log/colcon-build.txt" 2>&1 \
      || { tail -n 40 "$ROOT/log/colcon-build.txt" >&2; exit 1; }
  ) || die "colcon build failed (full log: log/colcon-build.txt)"
  grep -q "CMake Error" "$ROOT/log/colcon-build.txt" && die "CMake reported errors (log/colcon-build.txt)"
  echo "$build_hash" > "$BUILD_STAMP"
else
  log "colcon build up to date"
fi

# --- 7. venv hook: make .venv/bin/python see the colcon install tree ------------------------------
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cat > "$SITE/_stvg_ros_workspace.py" <<EOF
"""Written by scripts/setup.sh: expose $ROOT/install to this venv (what sourcing setup.bash would do)."""
import os
import sys

_INSTALL = "$ROOT/install"


def _prepend(var, value):
    parts = [p for p in os.environ.get(var, "").split(os.pathsep) if p]
    if value not in parts:
        os.environ[var] = os.pathsep.join([value, *parts])


def _sourced_elsewhere():
    """A stvg_ros_msgs of another install space is sourced (setup.bash): that workspace wins."""
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix and not prefix.startswith(_INSTALL) and os.path.isdir(os.path.join(prefix, "share", "stvg_ros_msgs")):
            return True
    return False


if os.path.isdir(_INSTALL) and not _sourced_elsewhere():
    for _pkg in ("stvg_ros", "stvg_ros_msgs"):
        _prepend("AMENT_PREFIX_PATH", os.path.join(_INSTALL, _pkg))
    _site = os.path.join(_INSTALL, "stvg_ros_msgs", "lib", "python3.11", "site-packages")
    if _site not in sys.path:
        sys.path.append(_site)
    # rosidl's type-support dispatch searches LD_LIBRARY_PATH for the generated libraries.
    _prepend("LD_LIBRARY_PATH", os.path.join(_INSTALL, "stvg_ros_msgs", "lib"))
_prepend("AMENT_PREFIX_PATH", sys.prefix)  # the ROS wheels install their share/ and lib/ here
EOF
# Sorted before ros_wheels_bootstrapper.pth, which re-executes Python with the library path set.
echo "import _stvg_ros_workspace" > "$SITE/_stvg_ros_workspace.pth"

"$VENV/bin/python" -c "from stvg_ros_msgs.msg import TrackedObjectArray; from stvg_ros_msgs.action import Ground" \
  || die "the built interfaces do not import (see log/colcon-build.txt)"
log "done: source scripts/env.sh, or prefix commands with scripts/run (e.g. scripts/run stvg-ros demo)"
