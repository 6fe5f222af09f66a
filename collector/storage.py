"""The collector's store: bundle files on disk, content-addressed, and their index in SQLite.

Takes the bytes of an uploaded bundle (already streamed to a temporary file under the store);
gives a verdict (stored, already stored, or refused with a status and a one-sentence reason) and,
for readers, each device's indexed bundles. Never needs the org private key: it checks the
structure and the device signature (`schemas.bundle.verify_bundle`) and nothing inside.

Layout of `DIR`:

    objects/ab/cdef...   one file per stored bundle, named by the sha256 of its bytes
    tmp/                 uploads being received; emptied when the store opens
    index.sqlite3        WAL-mode SQLite: `devices` (the pinned key of each device id) and
                         `bundles` (one row per bundle id: device, seq range, count, prev_digest,
                         digest, size, created and received times)

Promises:
- Atomic and durable before acknowledged: an object is written to `tmp/`, fsynced, renamed into
  `objects/` and its directories fsynced, and only then indexed in a transaction committed with
  `synchronous=FULL`. A crash at any point leaves either no row, or a row whose object is whole;
  a file in `objects/` always holds exactly the bytes its name hashes (a crash between the rename
  and the commit leaves an unindexed object, which the re-upload the client makes re-indexes).
- Trust on first use: the first accepted bundle from a device id pins its Ed25519 public key;
  later bundles from that id signed by another key are refused (403) and never written.
- Idempotent: the same bundle id with the same bytes is acknowledged again (200) and stored once;
  the same bundle id with other bytes is a conflict (409).
- Thread-safe, with group commit: verification and the object's fsyncs run in the caller's
  thread; index rows of concurrent uploads are committed together in one transaction (one WAL
  fsync), by whichever waiting thread gets the commit lock first. Readers use their own
  connection (WAL), so status queries never wait for a commit.
"""
from __future__ import annotations

import dataclasses
import os
import re
import sqlite3
import threading
import time
from pathlib import Path

from schemas.bundle import BundleError, BundleHeader, BundleSignatureError, verify_bundle

INDEX_NAME = "index.sqlite3"
SCHEMA_VERSION = 1
_MAX_SQLITE_INT = (1 << 63) - 1
_BUNDLE_ID_RE = re.compile(r"^[0-9a-f]{16}-[0-9a-f]{12}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id    TEXT PRIMARY KEY,
    device_pub   BLOB NOT NULL,
    pinned_ns    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bundles (
    bundle_id    TEXT PRIMARY KEY,
    device_id    TEXT NOT NULL REFERENCES devices(device_id),
    first_seq    INTEGER NOT NULL,
    last_seq     INTEGER NOT NULL,
    count        INTEGER NOT NULL,
    prev_digest  TEXT NOT NULL,
    digest       TEXT NOT NULL,
    size         INTEGER NOT NULL,
    created_ns   INTEGER NOT NULL,
    received_ns  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS bundles_by_device ON bundles(device_id, first_seq, last_seq);
"""


def valid_bundle_id(text: str) -> bool:
    return bool(_BUNDLE_ID_RE.match(text))


@dataclasses.dataclass(frozen=True)
class BundleRow:
    """One indexed bundle: what the chain and gap analysis works from."""

    bundle_id: str
    device_id: str
    first_seq: int
    last_seq: int
    count: int
    prev_digest: str
    digest: str
    size: int
    created_ns: int
    received_ns: int


@dataclasses.dataclass(frozen=True)
class Stored:
    """An accepted upload: `created` is False when these exact bytes were already stored."""

    created: bool
    header: BundleHeader
    digest: str


class Refused(Exception):
    """An upload the collector will not store; `status` is the HTTP status, `str()` the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclasses.dataclass(eq=False)
class _PendingIndex:
    """An object in place, waiting for its index row; `result` is set by the committing thread."""

    header: BundleHeader
    digest: str
    size: int
    result: "Stored | Refused | None" = None


class BundleStore:
    """A collector data directory. Open one per process; share it between threads."""

    def __init__(self, data_dir: Path | str) -> None:
        self.root = Path(data_dir)
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        for d in (self.root, self.objects, self.tmp):
            d.mkdir(mode=0o750, parents=True, exist_ok=True)
        # Leftovers are uploads that were never acknowledged; the client sends them again.
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)
        self._read_lock = threading.Lock()  # guards `_rdb`
        self._commit_lock = threading.Lock()  # one committer at a time; guards `_db`
        self._pending_lock = threading.Lock()  # guards `_pending`
        self._pending: list[_PendingIndex] = []
        self._db = sqlite3.connect(self.root / INDEX_NAME, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            self._db.close()
            raise RuntimeError(f"the collector index in {self.root} is from a newer tracecap "
                               f"(schema {version}); upgrade tracecap")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        # WAL lets this connection read while the writer commits.
        self._rdb = sqlite3.connect(self.root / INDEX_NAME, check_same_thread=False, isolation_level=None)
        self._rdb.execute("PRAGMA busy_timeout=10000")

    def close(self) -> None:
        with self._commit_lock, self._read_lock:
            self._rdb.close()
            self._db.close()

    def __enter__(self) -> "BundleStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- writing ---------------------------------------------------------------------------

    def temp_path(self) -> Path:
        """A fresh path under `tmp/` to receive an upload into (same filesystem as `objects/`)."""
        return self.tmp / f"{os.getpid()}-{threading.get_ident()}-{os.urandom(8).hex()}.part"

    def object_path(self, digest: str) -> Path:
        return self.objects / digest[:2] / digest[2:]

    def ingest(self, temp: Path, bundle_id: str) -> Stored:
        """Verify the upload in `temp` (sent as `bundle_id`) and store it; raise `Refused`.

        `temp` is consumed: renamed into `objects/` or deleted.
        """
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
        if header.last_seq > _MAX_SQLITE_INT or header.created_ns > _MAX_SQLITE_INT:
            raise Refused(400, "the bundle's seq range or creation time is beyond what the collector indexes (2^63-1)")
        with self._read_lock:
            known = self._check(self._rdb, header, digest)
        if known:
            return Stored(created=False, header=header, digest=digest)
        self._place(temp, digest)
        item = _PendingIndex(header, digest, self.object_path(digest).stat().st_size)
        result = self._commit(item)
        if isinstance(result, Refused):
            if result.status in (403, 409):  # lost a race: these bytes are indexed under no bundle
                self.object_path(digest).unlink(missing_ok=True)
            raise result
        return result

    def _check(self, db: sqlite3.Connection, header: BundleHeader, digest: str) -> bool:
        """True if already stored; raise `Refused` on a key or id conflict."""
        row = db.execute("SELECT device_pub FROM devices WHERE device_id=?", (header.device_id,)).fetchone()
        if row is not None and bytes(row[0]) != header.device_pub:
            raise Refused(403, f"device {header.device_id} is pinned to another signing key (key "
                               f"{bytes(row[0]).hex()[:16]}..., this bundle {header.device_pub.hex()[:16]}...); "
                               f"if the device was reinstalled, an admin must unpin it")
        row = db.execute("SELECT digest FROM bundles WHERE bundle_id=?", (header.bundle_id,)).fetchone()
        if row is None:
            return False
        if row[0] != digest:
            raise Refused(409, f"bundle {header.bundle_id} is already stored with different contents")
        if not self.object_path(digest).is_file():
            return False  # indexed but its object was lost (manual deletion): store it again
        return True

    def _place(self, temp: Path, digest: str) -> None:
        """fsync `temp` and rename it to its content address, fsyncing the directories."""
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        target = self.object_path(digest)
        fresh_dir = not target.parent.exists()
        target.parent.mkdir(mode=0o750, exist_ok=True)
        os.replace(temp, target)  # same content under the same name: replacing is harmless
        _fsync_dir(target.parent)
        if fresh_dir:
            _fsync_dir(self.objects)

    def _commit(self, item: "_PendingIndex") -> "Stored | Refused":
        """Index `item` durably. Group commit: whoever holds the commit lock indexes every
        pending item in one transaction (one WAL fsync), so concurrent uploads share it."""
        with self._pending_lock:
            self._pending.append(item)
        with self._commit_lock:
            if item.result is None:
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                self._commit_batch(batch)
        assert item.result is not None
        return item.result

    def _commit_batch(self, batch: list["_PendingIndex"]) -> None:
        db = self._db
        now = time.time_ns()
        results: list[Stored | Refused] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for it in batch:
                h = it.header
                try:
                    if self._check(db, h, it.digest):
                        results.append(Stored(created=False, header=h, digest=it.digest))
                        continue
                except Refused as exc:
                    results.append(exc)
                    continue
                db.execute("INSERT OR IGNORE INTO devices(device_id, device_pub, pinned_ns) VALUES (?,?,?)",
                           (h.device_id, h.device_pub, now))
                db.execute(
                    "INSERT OR REPLACE INTO bundles(bundle_id, device_id, first_seq, last_seq, count,"
                    " prev_digest, digest, size, created_ns, received_ns) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (h.bundle_id, h.device_id, h.first_seq, h.last_seq, h.count, h.prev_digest, it.digest,
                     it.size, h.created_ns, now))
                results.append(Stored(created=True, header=h, digest=it.digest))
            db.execute("COMMIT")
        except BaseException as exc:
            db.execute("ROLLBACK")
            failure = Refused(500, f"the collector could not index the bundle ({exc}); send it again")
            for it in batch:
                it.result = failure
            if not isinstance(exc, Exception):
                raise
            return
        for it, res in zip(batch, results):
            it.result = res

    # ---- reading ---------------------------------------------------------------------------

    def device_ids(self) -> list[str]:
        with self._read_lock:
            rows = self._rdb.execute("SELECT device_id FROM devices ORDER BY device_id").fetchall()
        return [r[0] for r in rows]

    def device_pub(self, device_id: str) -> bytes | None:
        with self._read_lock:
            row = self._rdb.execute("SELECT device_pub FROM devices WHERE device_id=?", (device_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def bundles(self, device_id: str) -> list[BundleRow]:
        """The device's bundles in seq order (first_seq, then last_seq, then bundle id)."""
        with self._read_lock:
            rows = self._rdb.execute(
                "SELECT bundle_id, device_id, first_seq, last_seq, count, prev_digest, digest, size,"
                " created_ns, received_ns FROM bundles WHERE device_id=?"
                " ORDER BY first_seq, last_seq, bundle_id", (device_id,)).fetchall()
        return [BundleRow(*r) for r in rows]

    def bundle_count(self) -> int:
        with self._read_lock:
            return self._rdb.execute("SELECT count(*) FROM bundles").fetchone()[0]
