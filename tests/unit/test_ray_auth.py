"""Which Ray auth token bm-ray presents (Ray's variables and precedence), without a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from bm_ray.runtime import auth
from bm_ray.runtime.auth import RayAuthError, ray_auth_headers, ray_auth_token


def test_token_sources_follow_rays_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n", encoding="utf-8")
    default = tmp_path / "default"
    default.write_text("from-default", encoding="utf-8")
    monkeypatch.setattr(auth, "DEFAULT_TOKEN_PATH", default)
    assert ray_auth_token({"RAY_AUTH_TOKEN": "env", "RAY_AUTH_TOKEN_PATH": str(token_file)}) == "env"
    assert ray_auth_token({"RAY_AUTH_TOKEN_PATH": str(token_file)}) == "from-file"
    assert ray_auth_token({"RAY_AUTH_MODE": "token"}) == "from-default"
    # The default file goes out only in token mode: a local token never reaches a server that did not ask.
    assert ray_auth_token({}) is None
    assert ray_auth_token({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "env"}) is None
    assert ray_auth_headers({"RAY_AUTH_TOKEN": " t "}) == {"Authorization": "Bearer t"}
    assert ray_auth_headers({}) == {}


def test_unreadable_token_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RayAuthError, match=f"{tmp_path / 'missing'}"):
        ray_auth_token({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("\n", encoding="utf-8")
    with pytest.raises(RayAuthError, match="is empty"):
        ray_auth_token({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "empty")})
