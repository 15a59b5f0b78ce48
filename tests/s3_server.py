"""An S3 protocol server for the s3:// tests: moto's, on 127.0.0.1, for the whole test session (fixtures that
tests/conftest.py imports) or a chaos run on the dev cluster (`python -m bench.chaos --s3`: `moto`).

moto lives in a venv of its own (`make setup` builds <venv>/s3-server from requirements-s3-server.lock): it
needs botocore, whose python-dateutil cap conflicts with the project's pins. The tests talk to it over HTTP
only, configured the standard AWS way (AWS_ENDPOINT_URL and credentials in the environment), which the
processes they start inherit.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

BUCKET = "r2i-test"


def moto_server() -> Path:
    return Path(os.environ.get("R2I_MOTO_SERVER") or Path(sys.prefix) / "s3-server" / "bin" / "moto_server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
        return True
    except urllib.error.HTTPError:
        return True  # an S3 error document is an answer
    except OSError:
        return False


def _start(exe: Path, log) -> tuple[subprocess.Popen, str]:
    """moto on a free port; another process may take the port between the probe and the bind: try again."""
    for _ in range(3):
        port = _free_port()
        proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            if _answers(url):
                return proc, url
            time.sleep(0.1)
        proc.kill()
        proc.wait()
    raise RuntimeError(f"{exe} did not answer on 127.0.0.1 after 3 tries; its log: {log.name}")


AWS_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@contextlib.contextmanager
def moto(log_path: Path, buckets: tuple[str, ...] = (BUCKET,)) -> Iterator[str]:
    """A moto server on 127.0.0.1 with `buckets` made; its URL and test credentials are in this process's
    environment (so in every process it starts: jobs, sbatch) until the block ends. FileNotFoundError when the
    server's venv is missing."""
    exe = moto_server()
    if not exe.is_file():
        raise FileNotFoundError(f"{exe} not found (run `make setup`, which builds the S3 test server's venv)")
    with open(log_path, "wb") as log:
        proc, url = _start(exe, log)
        try:
            with mock.patch.dict(os.environ, dict(zip(AWS_ENV, (url, "testing", "testing", "us-east-1"), strict=True))):
                for k in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):  # a real account's, which moto would not know
                    os.environ.pop(k, None)
                for b in buckets:
                    urllib.request.urlopen(urllib.request.Request(f"{url}/{b}", method="PUT"), timeout=10).close()
                yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    """The server's URL, with the bucket BUCKET made and the AWS variables set for this process and its children."""
    try:
        with moto(tmp_path_factory.mktemp("moto") / "moto_server.log") as url:
            yield url
    except FileNotFoundError as e:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(str(e))
        pytest.skip(str(e))


@pytest.fixture
def s3_url(s3_endpoint) -> str:
    """A fresh durable URL of its own under the test bucket."""
    return f"s3://{BUCKET}/t-{uuid.uuid4().hex[:12]}"
