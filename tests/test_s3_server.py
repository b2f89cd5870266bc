"""The S3 server of the tests works as the other S3 tests assume (tests/s3server.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.backend_neutral


def test_a_bucket_is_new_and_reachable_from_fsspec_and_subprocesses(s3, s3_bucket):
    import fsspec

    fs, _ = fsspec.core.url_to_fs(s3_bucket)
    fs.pipe(f"{s3_bucket}/run/a.bin", b"abc")
    bucket = s3_bucket[len("s3://"):]
    assert s3.objects(bucket) == {"run/a.bin": 3}
    code = f"import fsspec; print(fsspec.open({s3_bucket + '/run/a.bin'!r}).open().read())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "b'abc'", out.stderr
    upload = s3.client.create_multipart_upload(Bucket=bucket, Key="big")
    assert [u["UploadId"] for u in s3.multipart_uploads(bucket)] == [upload["UploadId"]]
