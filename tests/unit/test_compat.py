"""Private Ray/Keras APIs are used in bm_ray.runtime.compat only, and compat stays importable from any layer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import bm_ray

PACKAGE = Path(bm_ray.__file__).parent
COMPAT = PACKAGE / "runtime" / "compat.py"
PRIVATE_MARKERS = (
    "._private",
    "._internal",
    "_internal=",
    "._create_all_weights",
    "._raylet",
    ".get_num_ongoing_requests",
    "ray.dashboard.",
)
"""How a private Ray/Keras use reads in source: private modules and methods, Serve's `_internal` flag, and
the dashboard's own Python modules."""


def test_private_apis_are_used_in_compat_only() -> None:
    found = [
        f"{path.relative_to(PACKAGE)}:{number}: {marker}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != COMPAT
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        for marker in PRIVATE_MARKERS
        if marker in line
    ]
    assert found == []


def test_compat_imports_neither_ray_nor_tensorflow() -> None:
    probe = (
        "import sys, bm_ray.runtime.compat, bm_ray.runtime.logs; "
        "print(sorted(m for m in ('ray', 'tensorflow', 'tf_keras', 'keras') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
