"""The collector's store: bundle files under their content address (`collector.blobs`) and their
index (`collector.index`), composed into the one operation an upload needs.

Takes the bytes of an uploaded bundle (already streamed to a local temporary file); gives a
verdict (stored, already stored, or refused with a status and a one-sentence reason) and, for
readers, each device's indexed bundles and their bytes. Never needs the org private key: it checks
the structure and the device signature (`schemas.bundle.verify_bundle`) and nothing inside.

Backends: `BundleStore(DIR)` is `collector serve --data DIR` as it has always been:

    objects/ab/cdef...   one file per stored bundle, named by the sha256 of its bytes
    tmp/                 uploads being received; emptied when the store opens
    index.sqlite3        WAL-mode SQLite: `devices` (the pinned key of each device id) and
                         `bundles` (one row per bundle id: device, seq range, count, prev_digest,
                         digest, size, created and received times)

and `BundleStore(blobs=S3Blobs(...), index=PostgresIndex(...))` is the same store shared by any
number of collectors (`--blobs s3://BUCKET/PREFIX --index postgresql://…`).

Promises, on every backend:
- Durable before acknowledged, object first: the object is stored under its content address
  (fsynced, renamed and its directories fsynced; or a conditional put the store acknowledged) and
  only then indexed in a transaction (SQLite: `synchronous=FULL`, concurrent uploads group-
  committed; PostgreSQL: a durable commit). A crash at any point leaves either no row, or a row whose object is whole; an
  object without a row is harmless and the client's re-upload indexes it.
- Trust on first use: the first accepted bundle from a device id pins its Ed25519 public key;
  later bundles from that id signed by another key are refused (403), and their bytes removed.
- Idempotent: the same bundle id with the same bytes is acknowledged again (200) and stored once;
  the same bundle id with other bytes is a conflict (409).
- Storage that cannot be reached raises `StorageUnavailable` (answered 503 with Retry-After):
  nothing was acknowledged, and the sender keeps the bundle and tries again.
- Thread-safe; verification and the object's writes run in the caller's thread.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import BinaryIO

from collector.blobs import BlobStore, LocalBlobs, open_blobs
from collector.index import (MAX_INDEX_INT, BundleIndex, DeviceSummary, SQLiteIndex, check_index_url,
                              open_index, sqlite_index_path)
from collector.records import (BundleRow, Refused, Stored, StorageConfigError, StorageUnavailable,
                               valid_bundle_id)
from schemas.bundle import BundleError, BundleSignatureError, verify_bundle

INDEX_NAME = "index.sqlite3"

__all__ = ["BundleStore", "BundleRow", "Stored", "Refused", "StorageUnavailable", "StorageConfigError",
           "DeviceSummary", "valid_bundle_id", "open_store", "INDEX_NAME"]


class BundleStore:
    """A collector's bundles and index. Open one per process; share it between threads.

    `BundleStore(DIR)`: local files and SQLite under DIR. `BundleStore(blobs=..., index=...)`:
    any pair (`open_store` builds one from `--blobs`/`--index` URLs)."""

    def __init__(self, data_dir: Path | str | None = None, *, blobs: BlobStore | None = None,
                 index: BundleIndex | None = None) -> None:
        if data_dir is not None:
            self.root: Path | None = Path(data_dir)
            blobs = LocalBlobs(self.root)
            index = SQLiteIndex(self.root / INDEX_NAME)
        else:
            if blobs is None or index is None:
                raise TypeError("BundleStore needs a data directory, or both blobs and index")
            self.root = None
        self.blobs: BlobStore = blobs
        self.index: BundleIndex = index

    def describe(self) -> str:
        if self.root is not None:
            return str(self.root)
        return f"{self.blobs.describe()} (index {self.index.describe()})"

    def close(self) -> None:
        try:
            self.index.close()
        finally:
            self.blobs.close()

    def __enter__(self) -> "BundleStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- writing ---------------------------------------------------------------------------

    def temp_path(self) -> Path:
        """A fresh local path to receive an upload into."""
        return self.blobs.temp_path()

    def object_path(self, digest: str) -> Path:
        """The file of a local store's object (local blobs only)."""
        return self.blobs.object_path(digest)  # type: ignore[attr-defined]

    def ingest(self, temp: Path, bundle_id: str) -> Stored:
        """Verify the upload in `temp` (sent as `bundle_id`) and store it; raise `Refused` or
        `StorageUnavailable`. `temp` is consumed: moved into the store or deleted."""
        try:
            return self._ingest(temp, bundle_id)
        finally:
            temp.unlink(missing_ok=True)

    def _ingest(self, temp: Path, bundle_id: str) -> Stored:
        try:
            with open(temp, "rb") as f:
                header, digest = verify_bundle(f)
        except BundleSignatureError as exc:
            raise Refused(422, f"the bundle is refused: {exc}") from None
        except BundleError as exc:
            raise Refused(400, f"the bundle is refused: {exc}") from None
        if header.bundle_id != bundle_id:
            raise Refused(400, f"the URL names bundle {bundle_id} but the bundle's header says "
                               f"{header.bundle_id}; PUT it to /v1/bundles/{header.bundle_id}")
        if header.last_seq > MAX_INDEX_INT or header.created_ns > MAX_INDEX_INT:
            raise Refused(400, "the bundle's seq range or creation time is beyond what the collector indexes (2^63-1)")
        pinned, known = self.index.lookup(header.device_id, header.bundle_id)
        if pinned is not None and pinned != header.device_pub:
            raise Refused(403, f"device {header.device_id} is pinned to another signing key (key "
                               f"{pinned.hex()[:16]}..., this bundle {header.device_pub.hex()[:16]}...); "
                               f"if the device was reinstalled, an admin must unpin it")
        if known is not None:
            if known != digest:
                raise Refused(409, f"bundle {header.bundle_id} is already stored with different contents")
            if self.blobs.exists(digest):
                return Stored(created=False, header=header, digest=digest)
            # indexed but its object was lost (manual deletion): store it again below
        size = temp.stat().st_size
        created_object = self.blobs.put(temp, digest)
        try:
            created = self.index.insert(header, digest, size)
        except Refused as exc:
            if exc.status in (403, 409) and created_object:
                # Lost a race: these bytes are indexed under no bundle. Only the put that made the
                # object removes it; a concurrent copy of the same bytes is refused the same way.
                with contextlib.suppress(StorageUnavailable):
                    self.blobs.delete(digest)
            raise
        # A lost object stored again counts as created, as it always has with `--data`.
        return Stored(created=created or (known is not None and created_object), header=header, digest=digest)

    # ---- reading ---------------------------------------------------------------------------

    def device_ids(self) -> list[str]:
        return self.index.device_ids()

    def device_pub(self, device_id: str) -> bytes | None:
        return self.index.device_pub(device_id)

    def bundles(self, device_id: str) -> list[BundleRow]:
        """The device's bundles in seq order (first_seq, then last_seq, then bundle id)."""
        return self.index.bundles(device_id)

    def bundle_count(self) -> int:
        return self.index.bundle_count()

    def summaries(self) -> list[DeviceSummary]:
        return self.index.summaries()

    def open_object(self, digest: str, limit: int | None = None) -> "contextlib.AbstractContextManager[BinaryIO]":
        """The stored bytes (at least the first `limit`) as a seekable file; OSError if missing
        or unreadable."""
        return self.blobs.open(digest, limit)


def open_store(blobs_url: str, index_url: str, *, create: bool = True) -> BundleStore:
    """A store from `--blobs` and `--index` URLs; `StorageConfigError` in one sentence if either
    cannot be used. `create` False (verify, export): a SQLite index that is not there is a wrong
    path, not an empty fleet, and is refused rather than made."""
    check_index_url(index_url)
    blobs = open_blobs(blobs_url)
    try:
        sqlite = sqlite_index_path(index_url)
        if not create and sqlite is not None and not sqlite.is_file():
            raise StorageConfigError(f"--index {index_url}: no SQLite index at {sqlite}; pass the "
                                     f"--index that 'tracecap collector serve' uses")
        index = open_index(index_url)
    except BaseException:
        blobs.close()
        raise
    return BundleStore(blobs=blobs, index=index)
