"""The durable tier's transport for s3:// URLs: an S3-compatible object store reached through obstore.

Shaped like the few fsspec calls `Durable` makes (paths are "bucket/key"), so the durable tier has one code path
above the transport. obstore rather than s3fs: its create-only PUT sends `If-None-Match: *` and reports a taken
name as such, and it does not pull botocore, whose python-dateutil cap conflicts with the pinned matplotlib.

Configuration is the standard AWS one, read from the environment by obstore: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN), AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL for MinIO, Ceph or a test
server. Every failure leaves here as an OSError (FileNotFoundError, FileExistsError) with a one-line message.
"""

from __future__ import annotations

import os
import uuid
from datetime import timedelta

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, PreconditionError
from obstore.store import S3Store

# A durable write that cannot reach the store fails the commit (the previous one stays good); retrying for
# obstore's default three minutes would eat a preemption's grace period.
_RETRY = {"max_retries": 4, "backoff": {"init_backoff": timedelta(milliseconds=100),
                                        "max_backoff": timedelta(seconds=2), "base": 2.0},
          "retry_timeout": timedelta(seconds=30)}


def _one_line(e: BaseException) -> str:
    """obstore's messages carry the whole HTTP exchange over many lines; the first names the request."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return first if len(first) <= 300 else first[:297] + "..."


class S3Objects:
    """The objects of one S3 bucket behind fsspec-like calls; obstore's errors become OSErrors."""

    def __init__(self, bucket: str):
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT") or ""
        self.bucket, self.endpoint = bucket, endpoint or "AWS"
        try:
            self.store = S3Store(bucket, client_options={"allow_http": endpoint.startswith("http://")},
                                 retry_config=_RETRY)
        except (BaseError, OSError, ValueError) as e:
            raise self._err(e, f"opening s3://{bucket}") from None

    def _key(self, path: str) -> str:
        bucket, _, key = path.partition("/")
        if bucket != self.bucket:
            raise ValueError(f"{path!r} is not in bucket {self.bucket!r}")
        return key

    def _err(self, e: BaseException, what: str) -> OSError:
        msg = _one_line(e)
        # no keys in the environment: obstore asks the instance metadata service, or names the missing half
        if "169.254.169.254" in msg or any(w in msg.lower() for w in ("credential", "accesskey")):
            return PermissionError(f"{what}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY): "
                                   f"{msg}")
        if "NoSuchBucket" in str(e):
            return FileNotFoundError(f"{what}: bucket {self.bucket!r} does not exist at {self.endpoint}")
        if isinstance(e, FileNotFoundError):
            return FileNotFoundError(f"{what}: not found")
        if isinstance(e, AlreadyExistsError | PreconditionError):
            return FileExistsError(f"{what}: already exists")
        return OSError(f"{what}: {type(e).__name__}: {msg}")

    def check_bucket(self) -> None:
        """OSError unless the bucket can be listed with the credentials at hand."""
        try:
            next(iter(obstore.list(self.store, chunk_size=1)), None)
        except (BaseError, OSError) as e:
            raise self._err(e, f"listing s3://{self.bucket}") from None

    def refuses_second_create(self, folder: str) -> bool:
        """Whether the store refuses a create-only PUT of a name already taken. AWS S3, MinIO and moto do; some
        S3-compatible stores ignore If-None-Match and overwrite, others answer 501. Asked once at open, under
        `folder` ("bucket/prefix"), with a probe object deleted afterwards."""
        path = f"{folder}/.r2i-probe-{uuid.uuid4().hex}"
        self.pipe_file(path, b"1")  # a plain PUT: a store we cannot write to at all fails here, loudly
        try:
            self.pipe_file(path, b"2", mode="create")
            return False
        except FileExistsError:
            return True
        except OSError:
            return False
        finally:
            self.rm_file(path)

    def pipe_file(self, path: str, data: bytes, mode: str = "overwrite") -> None:
        """One whole PUT. mode="create" is conditional: a name already taken raises FileExistsError."""
        try:
            obstore.put(self.store, self._key(path), data, mode=mode, use_multipart=False)
        except (BaseError, OSError) as e:
            raise self._err(e, f"PUT s3://{path}") from None

    def cat_file(self, path: str, start: int | None = None, end: int | None = None) -> bytes:
        key = self._key(path)
        try:
            if start is None and end is None:
                return obstore.get(self.store, key).bytes().to_bytes()
            return bytes(obstore.get_range(self.store, key, start=start or 0, end=end))
        except (BaseError, OSError) as e:
            raise self._err(e, f"GET s3://{path}") from None

    def exists(self, path: str) -> bool:
        try:
            obstore.head(self.store, self._key(path))
            return True
        except FileNotFoundError:
            return False
        except (BaseError, OSError) as e:
            raise self._err(e, f"HEAD s3://{path}") from None

    def rm_file(self, path: str) -> None:
        try:
            obstore.delete(self.store, self._key(path))  # S3 answers a missing key as deleted
        except (BaseError, OSError) as e:
            raise self._err(e, f"DELETE s3://{path}") from None

    def find(self, path: str, detail: bool = True) -> dict[str, dict]:
        """{"bucket/key": {"size": n}} of every object under the folder `path`."""
        prefix = self._key(path).rstrip("/")
        try:
            found = {f"{self.bucket}/{m['path']}": {"size": m["size"]}
                     for batch in obstore.list(self.store, prefix or None) for m in batch}
        except (BaseError, OSError) as e:
            raise self._err(e, f"LIST s3://{path}/") from None
        return found if detail else dict.fromkeys(found)

    def mv(self, src: str, dst: str) -> None:
        """Copy, then delete: S3 has no rename. A crash in between leaves both copies."""
        try:
            obstore.copy(self.store, self._key(src), self._key(dst))
        except (BaseError, OSError) as e:
            raise self._err(e, f"COPY s3://{src} to s3://{dst}") from None
        self.rm_file(src)
