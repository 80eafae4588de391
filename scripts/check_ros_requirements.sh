#!/usr/bin/env bash
# Check that requirements/ros.txt (for robots with ROS 2 from apt) resolves for Python 3.11 and 3.12
# on Linux x86_64, and that numpy stays below 2. Nothing is installed and no large wheel is
# downloaded: pip --dry-run reads only the packages' metadata from PyPI (needs network).
#   scripts/check_ros_requirements.sh            # Python 3.11 and 3.12
#   scripts/check_ros_requirements.sh 3.12       # one version
# Prints the resolved numpy, torch, torchvision and opencv versions; exits 1 on any failure.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py=python3
[ -x "$root/.venv/bin/python" ] && py="$root/.venv/bin/python"
# Wheels for glibc up to 2.39 (Ubuntu 24.04), e.g. torch's CUDA libraries are manylinux_2_27/2_28.
platforms=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
for minor in $(seq 39 -1 5); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
versions=("$@")
[ ${#versions[@]} -eq 0 ] && versions=(3.11 3.12)
status=0
for version in "${versions[@]}"; do
  tmp="$(mktemp -d)"
  # PyPI only, as on a robot: no machine-local pip config, wheel folders or constraint files.
  if env -u PIP_FIND_LINKS -u PIP_CONSTRAINT -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
      ${SSL_CERT_FILE:+PIP_CERT="$SSL_CERT_FILE"} "$py" -m pip install --dry-run --ignore-installed \
      --only-binary=:all: --python-version "$version" --implementation cp "${platforms[@]}" \
      --target "$tmp/target" --quiet --report "$tmp/report.json" \
      -r "$root/requirements/ros.txt" >"$tmp/log" 2>&1; then
    "$py" - "$tmp/report.json" "$version" <<'PY' || status=1
import json, sys
report, version = sys.argv[1:]
got = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
       for i in json.load(open(report))["install"]}
keys = ["numpy", "torch", "torchvision", "opencv-python-headless", "scipy", "matplotlib",
        "onnxruntime", "ultralytics-opencv-headless", "transformers"]
print(f"Python {version}: resolves ({len(got)} packages): "
      + ", ".join(f"{k} {got.get(k, 'MISSING')}" for k in keys))
if int(got.get("numpy", "0").split(".")[0]) >= 2 or "opencv-python" in got:
    print("  FAIL: numpy must stay below 2 and only the headless opencv may be pulled in")
    sys.exit(1)
PY
  else
    echo "Python $version: does NOT resolve"; grep -E "ERROR|conflict" "$tmp/log" | tail -8; status=1
  fi
  rm -rf "$tmp"
done
exit $status
