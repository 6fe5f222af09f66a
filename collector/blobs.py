"""Where bundle files live: one small interface (`BlobStore`) with two implementations.

Takes a bundle already received into a local temporary file and its sha256; gives it a home under
its content address, and reads it back. The address is the digest, so the same bytes always land
on the same name and a second copy is never made.

- `LocalBlobs(DIR)`: `DIR/objects/ab/cdef...` (today's layout of `collector serve --data DIR`),
  uploads received into `DIR/tmp/`. A put fsyncs the file, renames it into place and fsyncs the
  directories before it returns.
- `S3Blobs("s3://BUCKET/PREFIX")`: `PREFIX/ab/<digest>` in any S3-compatible store, written with a
  conditional put (`If-None-Match: *`): 412 means the object is already there (the same bytes,
  since the name is their hash), and the store checks the body against its SHA-256 before it
  keeps it. Endpoint, credentials and region come from `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
  `AWS_SECRET_ACCESS_KEY` and `AWS_REGION`. Uploads are received into a private local directory
  (`$TMPDIR/tracecap-collector-<pid>-*`; those of collectors no longer running are removed).

Promises: `put` returns only once the object is durable (fsynced, or acknowledged by the store);
any failure to reach the store raises `StorageUnavailable` (the upload is answered 503 and sent
again), never a half-written object under a content address.
"""
from __future__ import annotations

import base64
import contextlib
import os
import shutil
import tempfile
import threading
import urllib.parse
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol

from collector.records import StorageConfigError, StorageUnavailable

_SPOOL_IN_MEMORY = 8 * 1024 * 1024  # an S3 object read back stays in memory up to this size


class BlobStore(Protocol):
    """The bundle files of a collector, addressed by the sha256 (hex) of their bytes."""

    def describe(self) -> str: ...

    def temp_path(self) -> Path:
        """A fresh local path to receive an upload into before `put`."""

    def put(self, temp: Path, digest: str) -> bool:
        """Store the file `temp` (whose sha256 is `digest`) durably; True if this call created the
        object, False if it was already there. `temp` may be consumed."""

    def exists(self, digest: str) -> bool: ...

    def open(self, digest: str, limit: int | None = None) -> contextlib.AbstractContextManager[BinaryIO]:
        """The object's bytes as a seekable binary file (at least its first `limit` bytes when
        given: a reader that needs only the header fetches no more); OSError if it is missing."""

    def delete(self, digest: str) -> None: ...

    def close(self) -> None: ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBlobs:
    """Objects as files under `DIR/objects/`, received into `DIR/tmp/` (same filesystem)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        for d in (self.root, self.objects, self.tmp):
            d.mkdir(mode=0o750, parents=True, exist_ok=True)
        # Leftovers are uploads that were never acknowledged; the client sends them again.
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)

    def describe(self) -> str:
        return str(self.root)

    def temp_path(self) -> Path:
        return self.tmp / f"{os.getpid()}-{threading.get_ident()}-{os.urandom(8).hex()}.part"

    def object_path(self, digest: str) -> Path:
        return self.objects / digest[:2] / digest[2:]

    def put(self, temp: Path, digest: str) -> bool:
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        target = self.object_path(digest)
        existed = target.is_file()
        fresh_dir = not target.parent.exists()
        target.parent.mkdir(mode=0o750, exist_ok=True)
        os.replace(temp, target)  # same content under the same name: replacing is harmless
        _fsync_dir(target.parent)
        if fresh_dir:
            _fsync_dir(self.objects)
        return not existed

    def exists(self, digest: str) -> bool:
        return self.object_path(digest).is_file()

    def open(self, digest: str, limit: int | None = None) -> BinaryIO:
        return open(self.object_path(digest), "rb")

    def delete(self, digest: str) -> None:
        self.object_path(digest).unlink(missing_ok=True)

    def close(self) -> None:
        pass


_TMP_PREFIX = "tracecap-collector-"


def _remove_stale_temp_dirs(parent: Path) -> None:
    """Upload directories of collectors that died (kill -9, power loss) hold only uploads that
    were never acknowledged; remove those whose process is gone."""
    for d in parent.glob(f"{_TMP_PREFIX}*-*"):
        pid = d.name[len(_TMP_PREFIX):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass  # another user's live collector


def parse_s3_url(url: str) -> tuple[str, str]:
    """'s3://bucket/some/prefix' -> ('bucket', 'some/prefix'); StorageConfigError if not."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise StorageConfigError(f"--blobs {url!r} is not an S3 URL; use s3://BUCKET/PREFIX")
    return parts.netloc, parts.path.strip("/")


def s3_client(max_connections: int = 64):
    """A boto3 S3 client from the standard AWS_* environment, with short timeouts so a store that
    went away gives a quick 503 rather than a hung upload."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise StorageConfigError("S3 storage needs the fleet extra; install it with "
                                 "pip install 'tracecap[fleet]'") from None
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    config = Config(
        region_name=region,
        connect_timeout=3, read_timeout=30,
        retries={"max_attempts": 2, "mode": "standard"},
        max_pool_connections=max_connections,
        # Self-hosted stores (SeaweedFS, MinIO, Ceph) serve buckets by path, not by host name.
        s3={"addressing_style": "path" if endpoint else "auto"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


def _status(exc) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


class S3Blobs:
    """Objects in an S3-compatible bucket under `PREFIX/ab/<digest>`."""

    def __init__(self, url: str) -> None:
        import botocore.exceptions as bexc

        self._bexc = bexc
        self.url = url
        self.bucket, self.prefix = parse_s3_url(url)
        self.client = s3_client()
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except bexc.ClientError as exc:
            code = _status(exc)
            what = {404: "does not exist", 403: "refuses these credentials"}.get(code, f"answered {code}")
            raise StorageConfigError(f"--blobs {url}: bucket {self.bucket!r} {what}; create it or check "
                                     f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY") from None
        except bexc.NoCredentialsError:
            raise StorageConfigError(f"--blobs {url}: no S3 credentials; set AWS_ACCESS_KEY_ID and "
                                     f"AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a store other than AWS)") from None
        except bexc.BotoCoreError as exc:
            raise StorageConfigError(f"--blobs {url}: the S3 endpoint cannot be reached ({exc}); "
                                     f"check AWS_ENDPOINT_URL") from None
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-"))
        _remove_stale_temp_dirs(self.tmp.parent)

    def describe(self) -> str:
        return self.url

    def key(self, digest: str) -> str:
        name = f"{digest[:2]}/{digest}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def temp_path(self) -> Path:
        return self.tmp / f"{threading.get_ident()}-{os.urandom(8).hex()}.part"

    @contextlib.contextmanager
    def _calls(self, what: str) -> Iterator[None]:
        """Store failures as `StorageUnavailable`, naming the operation."""
        try:
            yield
        except self._bexc.ClientError as exc:
            err = exc.response.get("Error", {})
            raise StorageUnavailable(f"the object store refused to {what} ({_status(exc)} "
                                     f"{err.get('Code', '')}: {err.get('Message', '')})") from None
        except self._bexc.BotoCoreError as exc:
            raise StorageUnavailable(f"the object store cannot be reached to {what} ({exc})") from None

    def put(self, temp: Path, digest: str) -> bool:
        checksum = base64.b64encode(bytes.fromhex(digest)).decode()
        size = temp.stat().st_size
        with open(temp, "rb") as body:
            try:
                with self._calls("store a bundle"):
                    try:
                        self.client.put_object(Bucket=self.bucket, Key=self.key(digest), Body=body,
                                               ContentLength=size, IfNoneMatch="*", ChecksumSHA256=checksum,
                                               ContentType="application/octet-stream")
                    except self._bexc.ClientError as exc:
                        if _status(exc) == 412:  # already there: the same bytes, by their name
                            return False
                        raise
            except StorageUnavailable as exc:
                if "ConditionalRequestConflict" in str(exc):  # another put of it is in flight
                    raise StorageUnavailable(str(exc), retry_after=1) from None
                raise
        return True

    def exists(self, digest: str) -> bool:
        with self._calls("look up a bundle"):
            try:
                self.client.head_object(Bucket=self.bucket, Key=self.key(digest))
            except self._bexc.ClientError as exc:
                if _status(exc) == 404:
                    return False
                raise
        return True

    @contextlib.contextmanager
    def open(self, digest: str, limit: int | None = None) -> Iterator[BinaryIO]:
        spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)
        try:
            try:
                ranged = {"Range": f"bytes=0-{limit - 1}"} if limit else {}
                obj = self.client.get_object(Bucket=self.bucket, Key=self.key(digest), **ranged)
                shutil.copyfileobj(obj["Body"], spool, 1 << 20)
            except self._bexc.ClientError as exc:
                raise OSError(2 if _status(exc) == 404 else 5,
                              "not in the object store" if _status(exc) == 404 else f"S3 error {_status(exc)}",
                              self.key(digest)) from None
            except self._bexc.BotoCoreError as exc:
                raise OSError(5, f"the object store cannot be reached ({exc})", self.key(digest)) from None
            spool.seek(0)
            yield spool
        finally:
            spool.close()

    def delete(self, digest: str) -> None:
        with self._calls("delete a refused bundle"):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(digest))

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def open_blobs(url: str) -> BlobStore:
    """`s3://BUCKET/PREFIX`, `file:///DIR` or a plain directory path."""
    if url.startswith("s3://"):
        return S3Blobs(url)
    if url.startswith("file://"):
        parts = urllib.parse.urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise StorageConfigError(f"--blobs {url!r}: a file URL names a local directory, file:///DIR")
        url = urllib.parse.unquote(parts.path)
    elif "://" in url:
        raise StorageConfigError(f"--blobs {url!r} is neither s3://BUCKET/PREFIX nor a local directory")
    return LocalBlobs(Path(url))
