"""A real S3 API server on 127.0.0.1 for the tests: moto's server mode, started by
the first test that asks for it (one per pytest process) and stopped at the end.

The fixtures (in tests/conftest.py): `s3` (the running `S3Server`) and
`s3_bucket` (a new, empty bucket per test, as its `s3://` URL). The server's
address and test credentials go into the environment (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, ...), which s3fs and boto3 read, so subprocesses started
by a test reach the same server. Where moto or s3fs is missing, the tests
that need them skip, saying so.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import pytest

ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
       "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    """moto's S3 server in a thread of this process, on a free port of 127.0.0.1."""

    _buckets = itertools.count()

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.env = dict(ENV, AWS_ENDPOINT_URL=self.endpoint)
        self._saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        import boto3

        self.client = boto3.client("s3", endpoint_url=self.endpoint)

    def new_bucket(self) -> str:
        """A new, empty bucket; returns its name."""
        name = f"kb-test-{os.getpid()}-{next(self._buckets)}"
        self.client.create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str) -> dict[str, int]:
        """Every object of `bucket`: key -> size in bytes."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}

    def multipart_uploads(self, bucket: str) -> list[dict[str, Any]]:
        """The unfinished multipart uploads of `bucket` (not shown in a listing, billed on S3)."""
        return self.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])

    def stop(self) -> None:
        self._server.stop()
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start() -> S3Server:
    """A running server, or a skip that says what is missing."""
    for module in ("moto", "s3fs", "boto3", "flask"):
        pytest.importorskip(module, reason=f"the S3 tests need {module} (pip install -e '.[test]')")
    try:
        return S3Server()
    except Exception as e:  # noqa: BLE001 - any reason the server cannot start
        pytest.skip(f"moto's S3 server could not start on 127.0.0.1: {type(e).__name__}: {e}")
