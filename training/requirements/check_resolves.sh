#!/usr/bin/env bash
# Check that each training environment's requirements resolve against the package index, without
# installing anything: pip install --dry-run --ignore-installed --report (needs network to PyPI).
#   training/requirements/check_resolves.sh            # all three
#   training/requirements/check_resolves.sh train-vllm # one
# Prints, per file, the resolved versions of the packages that matter and whether the pins of
# requirements/python.txt were kept (base and DeepSpeed paths must not move them). Exit 1 on failure.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
pip_cmd=(python3 -m pip)
[ -x "$root/.venv/bin/python" ] && pip_cmd=("$root/.venv/bin/python" -m pip)
names=("${@:-train-base train-deepspeed train-vllm}")
status=0
for name in ${names[*]}; do
  file="$here/${name%.txt}.txt"
  report="$(mktemp)"
  # PyPI only, as on a GPU server: no machine-local pip config, wheel folders or constraint files
  # (this project's CI machines add a CPU torch wheel and a torch cap). Resolved for the interpreter
  # that runs pip: run the check with the target's Python (3.11, Linux x86_64).
  if env -u PIP_FIND_LINKS -u PIP_CONSTRAINT -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
      ${SSL_CERT_FILE:+PIP_CERT="$SSL_CERT_FILE"} "${pip_cmd[@]}" install --dry-run --ignore-installed --quiet --report "$report" \
      -r "$file" >"$report.log" 2>&1; then
    "${pip_cmd[0]}" - "$report" "$root/requirements/python.txt" "$name" <<'PY' || status=1
import json, sys
report, pinned_file, name = sys.argv[1:]
got = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in json.load(open(report))["install"]}
pins = {}
for line in open(pinned_file):
    line = line.split("#")[0].strip()
    if "==" in line:
        pkg, ver = line.split("==")
        pins[pkg.strip().lower().replace("_", "-")] = ver.strip()
key = ["torch", "torchvision", "transformers", "trl", "accelerate", "deepspeed", "vllm", "tensorboard"]
print(f"{name}: resolves ({len(got)} packages): " + ", ".join(f"{k} {got[k]}" for k in key if k in got))
if name != "train-vllm":
    moved = {k: (v, got[k]) for k, v in pins.items() if k in got and got[k] != v}
    print(f"  requirements/python.txt pins kept: {'yes' if not moved else 'NO ' + str(moved)}")
    sys.exit(1 if moved else 0)
PY
  else
    echo "$name: does NOT resolve"; tail -5 "$report.log"; status=1
  fi
  rm -f "$report" "$report.log"
done
exit $status
