"""Test support (never imported by bm_ray): a real S3-compatible server for the object-storage tests.

:func:`moto_server` runs ``python -m moto.server`` on a free loopback port with one bucket and stops it
afterwards; :class:`S3` is the running server as the tests see it (a boto3 client that talks to it
directly, and URI builders for bm-ray). Used by ``tests/integration/test_s3.py`` and, behind the
fault-injecting proxy of :mod:`s3_faults`, by ``tests/integration/test_s3_faults.py``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx

from bm_ray.runtime.ray_init import free_port

BUCKET = "bm-ray-test"
KEY_ID, SECRET = "AKIAMOTOKEYID0001", "motoSecretValue0001"
START_TIMEOUT_S = 30.0


class S3:
    """The running server: its endpoint, a boto3 client, and URI builders for both styles."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        )

    def uri(self, key: str, endpoint: str | None = None) -> str:
        """Credentials in the URI, endpoint as the endpoint_override option (no environment needed).

        `endpoint` (e.g. a fault proxy's) replaces the server's own in the URI; the boto3 client of
        this object still talks to the server directly.
        """
        host = (endpoint or self.endpoint).removeprefix("http://")
        return f"s3://{KEY_ID}:{SECRET}@{BUCKET}/{key}?endpoint_override={host}&scheme=http&region=us-east-1"

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """A subprocess environment with the endpoint (the server's, or `endpoint`) in AWS_ENDPOINT_URL
        and the credentials in AWS_*."""
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(
            AWS_ENDPOINT_URL=endpoint or self.endpoint,
            AWS_ACCESS_KEY_ID=KEY_ID,
            AWS_SECRET_ACCESS_KEY=SECRET,
            AWS_DEFAULT_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
        )
        return env

    def keys(self, prefix: str) -> list[str]:
        """Every object key under `prefix`."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def read(self, key: str) -> bytes:
        """One object's bytes."""
        return self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        """Upload bytes as one object."""
        self.client.put_object(Bucket=BUCKET, Key=key, Body=data)

    def upload_dir(self, local: Path, prefix: str) -> None:
        """Upload a local directory tree under `prefix`."""
        for path in sorted(local.rglob("*")):
            if path.is_file():
                self.put(f"{prefix}/{path.relative_to(local)}", path.read_bytes())


@contextlib.contextmanager
def moto_server() -> Iterator[S3]:
    """`python -m moto.server` on a free loopback port with one bucket (:data:`BUCKET`); stopped on exit."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        store = S3(endpoint)
        store.client.create_bucket(Bucket=BUCKET)
        yield store
    finally:
        server.terminate()
        server.wait(timeout=10)
