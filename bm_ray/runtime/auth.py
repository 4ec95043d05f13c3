"""The Ray auth token a client presents, found by Ray's own conventions."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

DEFAULT_TOKEN_PATH = Path.home() / ".ray" / "auth_token"
"""Ray's default token file (`ray get-auth-token --generate` writes it)."""


class RayAuthError(RuntimeError):
    """A Ray auth token that was asked for but cannot be read; the message names the variable or file."""


def ray_auth_token(env: Mapping[str, str] | None = None) -> str | None:
    """The Ray token a client presents, by Ray's own conventions; None when there is none to send.

    `RAY_AUTH_MODE=disabled` sends none; else `RAY_AUTH_TOKEN`, else the file `RAY_AUTH_TOKEN_PATH`, else, with
    `RAY_AUTH_MODE=token`, `~/.ray/auth_token` (Ray's precedence). A token given by either variable is sent even
    without `RAY_AUTH_MODE`; the default file is not, so a local token never goes to a server that did not ask.
    """
    env = os.environ if env is None else env
    mode = env.get("RAY_AUTH_MODE", "").lower()
    if mode == "disabled":
        return None
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return env["RAY_AUTH_TOKEN"].strip()
    path = env.get("RAY_AUTH_TOKEN_PATH") or (str(DEFAULT_TOKEN_PATH) if mode == "token" else None)
    if path is None:
        return None
    try:
        token = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except OSError as err:
        raise RayAuthError(f"cannot read the Ray auth token file {path}: {err.strerror}") from None
    if not token:
        raise RayAuthError(f"the Ray auth token file {path} is empty")
    return token


def ray_auth_headers(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`Authorization: Bearer <token>` for Ray's dashboard / job server / Serve API, or {} (see ray_auth_token)."""
    token = ray_auth_token(env)
    return {"Authorization": f"Bearer {token}"} if token else {}
