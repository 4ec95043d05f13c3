"""The output lease (``_lease.json``): one live job per output directory.

A job takes the lease before it touches its output and renews it every :data:`LEASE_HEARTBEAT_S`; another
job into the same output is refused while the lease is live (:class:`OutputInUseError`) and takes it over
once it is stale (the holder is dead)."""

from __future__ import annotations

import getpass
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from bm_ray.layout import (
    LEASE_FILE,
)
from bm_ray.storage import (
    join,
    read_json,
    redact_uri,
    resolve_uri,
    write_json_atomic,
)

logger = logging.getLogger(__name__)

LEASE_HEARTBEAT_S = 10.0
"""How often a running job renews its lease."""


LEASE_STALE_S = 60.0
"""A lease whose heartbeat is older than this is stale: its job is taken to be dead and the lease is
taken over. A lease of a process on this host that no longer exists is stale at once."""


class OutputInUseError(ValueError):
    """Another live job holds the output's lease."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLease:
    """``_lease.json`` in an output while a job writes it: owner, host, pid, started, heartbeat.

    :meth:`acquire` refuses (:class:`OutputInUseError`, naming the owner) while another job's lease is
    live; a stale one (heartbeat older than :data:`LEASE_STALE_S`, or a dead process on this host) is
    taken over. A daemon thread renews the heartbeat every :data:`LEASE_HEARTBEAT_S`; :meth:`release`
    deletes the lease. Writes are whole-file replacements, so on object stores (no create-if-absent)
    two jobs starting in the same instant are caught by the read-back after writing, not excluded.
    """

    def __init__(self, output: str, kind: str) -> None:
        self.output = output
        self.fs, root = resolve_uri(output)
        self.root = root
        self.path = join(root, LEASE_FILE)
        self.token = uuid.uuid4().hex
        self.record = {
            "owner": f"{getpass.getuser()}@{socket.gethostname()} ({kind}, pid {os.getpid()})",
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "kind": kind,
            "token": self.token,
            "started": time.time(),
            "heartbeat": time.time(),
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def _read(self) -> dict[str, Any] | None:
        try:
            return read_json(self.fs, self.path)
        except (FileNotFoundError, OSError, ValueError):
            return None

    @staticmethod
    def is_live(lease: dict[str, Any]) -> bool:
        """Whether a lease's job may still be running."""
        if lease.get("host") == socket.gethostname() and not _pid_alive(int(lease.get("pid", 0))):
            return False
        return time.time() - float(lease.get("heartbeat", 0)) < LEASE_STALE_S

    def acquire(self) -> None:
        """Take the lease, or raise :class:`OutputInUseError` naming the live owner."""
        self.fs.create_dir(self.root, recursive=True)
        current = self._read()
        if current is not None and current.get("token") != self.token:
            if self.is_live(current):
                age = time.time() - float(current.get("heartbeat", 0))
                raise OutputInUseError(
                    f"{redact_uri(self.output)} is in use by {current.get('owner')}, last heartbeat {age:.0f} s ago; "
                    f"wait for that job to end (a dead job's lease goes stale {LEASE_STALE_S:.0f} s after "
                    "its last heartbeat) or choose another output"
                )
            logger.warning(
                "%s: taking over the stale lease of %s", redact_uri(self.output), current.get("owner")
            )
        self._write()
        if (self._read() or {}).get("token") != self.token:
            raise OutputInUseError(
                f"{redact_uri(self.output)}: another job took the lease at the same moment"
            )
        self._thread = threading.Thread(target=self._beat, name="bm-ray-lease", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        self.record["heartbeat"] = time.time()
        write_json_atomic(self.fs, self.path, self.record)

    def _beat(self) -> None:
        while not self._stop.wait(LEASE_HEARTBEAT_S):
            if (self._read() or {}).get("token") != self.token:
                self.lost = True
                return
            self._write()

    def release(self) -> None:
        """Stop the heartbeat and delete the lease (if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if (self._read() or {}).get("token") == self.token:
            self.fs.delete_file(self.path)
