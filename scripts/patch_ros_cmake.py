"""Point the ROS 2 wheels' CMake exports at this machine's Python and NumPy headers.

The ros-*-msgs wheels were built on a manylinux image; their `*__rosidl_generator_pyExport.cmake`
files name that machine's include folders (e.g. /opt/python/cp311-cp311/include/python3.11), which
do not exist here, and CMake refuses to generate with a missing INTERFACE_INCLUDE_DIRECTORIES entry.
Idempotent: only paths that do not exist are rewritten. Run with the venv's Python.
"""

from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

import numpy

PYTHON_INCLUDE = re.compile(r'[^";]*/include/python3\.\d+')
NUMPY_INCLUDE = re.compile(r'[^";]*/site-packages/numpy/_?core/include')


def patch(prefix: Path) -> int:
    replacements = [(NUMPY_INCLUDE, numpy.get_include()), (PYTHON_INCLUDE, sysconfig.get_paths()["include"])]
    changed = 0
    for path in prefix.glob("share/*/cmake/*Export.cmake"):
        text = path.read_text()
        new = text
        for pattern, real in replacements:
            new = pattern.sub(lambda m, real=real: m.group(0) if Path(m.group(0)).exists() else real, new)
        if new != text:
            path.write_text(new)
            changed += 1
    return changed


if __name__ == "__main__":
    print(f"patched {patch(Path(sys.argv[1] if len(sys.argv) > 1 else sys.prefix))} CMake export files")
