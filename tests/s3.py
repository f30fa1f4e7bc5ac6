"""A real S3 endpoint for tests: moto's S3 server on a free local port, reached over HTTP.

The lake learns nothing about it from code: the endpoint and credentials reach s3fs (through
botocore) from the standard AWS environment variables, as a user's would, so
`Lake.open("s3://<bucket>/lake")` alone talks to it.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextmanager
def moto_s3(bucket: str | None = None) -> Iterator[tuple[str, str]]:
    """Start moto's S3 server, point the AWS environment variables at it and create a bucket;
    yields (endpoint URL, bucket). Everything is put back on exit."""
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {**ENV, "AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    # fsspec caches filesystem instances by their arguments: start from a fresh one
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = bucket or f"flywheel-test-{uuid.uuid4().hex[:8]}"
    try:
        s3fs.S3FileSystem().mkdir(bucket)
        yield endpoint, bucket
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
