"""Test support: a real `bm-ray` command as its own process group, so a test can SIGKILL it whole."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO


def start_bm_ray(args: list[str], log: BinaryIO) -> subprocess.Popen[bytes]:
    """Start `bm-ray ARGS --address local` (an embedded Ray of its own), stdout and stderr into `log`."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("bm-ray")), *args, "--address", "local"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the driver and the Ray it started
    )
