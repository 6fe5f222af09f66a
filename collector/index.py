"""The collector's index: which device key each device id is pinned to, and one row per stored
bundle. One small interface (`BundleIndex`) with two implementations.

- `SQLiteIndex(PATH)`: today's `index.sqlite3` (WAL, `synchronous=FULL`), for one collector
  process; index rows of concurrent uploads are committed together in one transaction (one WAL
  fsync) by whichever waiting thread takes the commit lock first.
- `PostgresIndex("postgresql://USER@HOST:PORT/DB")`: tables `tracecap_devices` and
  `tracecap_bundles`, shared by any number of collectors, through a small connection pool
  (psycopg 3). Each upload is one transaction committed with PostgreSQL's default durable commit.

Both keep the same rules, in one transaction per bundle:
- Trust on first use: the first bundle indexed for a device id pins its Ed25519 public key
  (`INSERT ... ON CONFLICT DO NOTHING`, then read back: of two collectors racing on a new device,
  exactly one key wins and the other upload is refused with 403).
- A bundle id is indexed once: the same digest again is "already stored", another digest is a
  conflict (409).
- An index that cannot be reached raises `StorageUnavailable` (503, send again); any other index
  failure is `Refused(500)`. Nothing is half-indexed: a transaction commits whole or not at all.

`summaries()` is the chain check as SQL (window functions, both engines): per device the bundle and
event counts, the seq range, and how many bundles are irregular (not exactly following the previous
one in seq and digest, or with forgotten events inside). A device with none is contiguous and
unbroken from 1, which is what almost every device is; only the others need their rows read.
"""
from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Protocol

from collector.records import BundleRow, Refused, StorageConfigError, StorageUnavailable
from schemas.bundle import BundleHeader

SCHEMA_VERSION = 1
MAX_INDEX_INT = (1 << 63) - 1
_COLUMNS = ("bundle_id, device_id, first_seq, last_seq, count, prev_digest, digest, size, "
            "created_ns, received_ns")


@dataclasses.dataclass(frozen=True)
class DeviceSummary:
    """One device as the index sees it; `irregular` 0 means seq 1..last_seq contiguous and chained."""

    device_id: str
    bundles: int
    events: int
    first_seq: int
    last_seq: int
    irregular: int


def _summary_sql(devices: str, bundles: str) -> str:
    return f"""
WITH ordered AS (
    SELECT device_id, first_seq, last_seq, count, prev_digest,
           LAG(last_seq) OVER w AS prev_last, LAG(digest) OVER w AS prev_dig
    FROM {bundles}
    WINDOW w AS (PARTITION BY device_id ORDER BY first_seq, last_seq, bundle_id)
)
SELECT device_id, count(*), sum(count), min(first_seq), max(last_seq),
       sum(CASE WHEN count <> last_seq - first_seq + 1 THEN 1
                WHEN prev_last IS NULL THEN (CASE WHEN first_seq = 1 AND prev_digest = '' THEN 0 ELSE 1 END)
                WHEN first_seq <> prev_last + 1 OR prev_digest <> prev_dig THEN 1
                ELSE 0 END)
FROM ordered GROUP BY device_id
"""


class BundleIndex(Protocol):
    def describe(self) -> str: ...

    def lookup(self, device_id: str, bundle_id: str) -> tuple[bytes | None, str | None]:
        """(the device's pinned key or None, the bundle's indexed digest or None)."""

    def insert(self, header: BundleHeader, digest: str, size: int) -> bool:
        """Pin the device if new and index the bundle, in one durable transaction. True if the row
        was created, False if the same digest was already indexed; `Refused` 403/409/500,
        `StorageUnavailable` when the index cannot be reached."""

    def device_ids(self) -> list[str]: ...

    def device_pub(self, device_id: str) -> bytes | None: ...

    def bundles(self, device_id: str) -> list[BundleRow]:
        """The device's bundles in seq order (first_seq, then last_seq, then bundle id)."""

    def bundle_count(self) -> int: ...

    def summaries(self) -> list[DeviceSummary]: ...

    def close(self) -> None: ...


def _pinned_elsewhere(header: BundleHeader, pinned: bytes) -> Refused:
    return Refused(403, f"device {header.device_id} is pinned to another signing key (key "
                        f"{pinned.hex()[:16]}..., this bundle {header.device_pub.hex()[:16]}...); "
                        f"if the device was reinstalled, an admin must unpin it")


def _conflict(header: BundleHeader) -> Refused:
    return Refused(409, f"bundle {header.bundle_id} is already stored with different contents")


# ---- SQLite ------------------------------------------------------------------------------------

_SQLITE_SCHEMA = """
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


@dataclasses.dataclass(eq=False)
class _Pending:
    """A bundle waiting for its index row; `result` is set by the committing thread."""

    header: BundleHeader
    digest: str
    size: int
    result: "bool | Refused | None" = None


class SQLiteIndex:
    """`index.sqlite3` for one collector process. Share it between threads."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._read_lock = threading.Lock()  # guards `_rdb`
        self._commit_lock = threading.Lock()  # one committer at a time; guards `_db`
        self._pending_lock = threading.Lock()  # guards `_pending`
        self._pending: list[_Pending] = []
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            self._db.close()
            raise StorageConfigError(f"the collector index {self.path} is from a newer tracecap "
                                     f"(schema {version}); upgrade tracecap")
        self._db.executescript(_SQLITE_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        # WAL lets this connection read while the writer commits.
        self._rdb = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._rdb.execute("PRAGMA busy_timeout=10000")

    def describe(self) -> str:
        return str(self.path)

    def close(self) -> None:
        with self._commit_lock, self._read_lock:
            self._rdb.close()
            self._db.close()

    def lookup(self, device_id: str, bundle_id: str) -> tuple[bytes | None, str | None]:
        with self._read_lock:
            return self._lookup(self._rdb, device_id, bundle_id)

    @staticmethod
    def _lookup(db: sqlite3.Connection, device_id: str, bundle_id: str) -> tuple[bytes | None, str | None]:
        pub = db.execute("SELECT device_pub FROM devices WHERE device_id=?", (device_id,)).fetchone()
        dig = db.execute("SELECT digest FROM bundles WHERE bundle_id=?", (bundle_id,)).fetchone()
        return (None if pub is None else bytes(pub[0])), (None if dig is None else dig[0])

    def insert(self, header: BundleHeader, digest: str, size: int) -> bool:
        """Group commit: whoever holds the commit lock indexes every pending item in one
        transaction (one WAL fsync), so concurrent uploads share it."""
        item = _Pending(header, digest, size)
        with self._pending_lock:
            self._pending.append(item)
        with self._commit_lock:
            if item.result is None:
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                self._commit_batch(batch)
        assert item.result is not None
        if isinstance(item.result, Refused):
            raise item.result
        return item.result

    def _commit_batch(self, batch: list[_Pending]) -> None:
        db = self._db
        now = time.time_ns()
        results: list[bool | Refused] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for it in batch:
                h = it.header
                db.execute("INSERT OR IGNORE INTO devices(device_id, device_pub, pinned_ns) VALUES (?,?,?)",
                           (h.device_id, h.device_pub, now))
                pinned, known = self._lookup(db, h.device_id, h.bundle_id)
                if pinned != h.device_pub:
                    results.append(_pinned_elsewhere(h, pinned or b""))
                elif known is not None:
                    results.append(False if known == it.digest else _conflict(h))
                else:
                    db.execute(f"INSERT INTO bundles({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                               (h.bundle_id, h.device_id, h.first_seq, h.last_seq, h.count, h.prev_digest,
                                it.digest, it.size, h.created_ns, now))
                    results.append(True)
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

    def device_ids(self) -> list[str]:
        with self._read_lock:
            rows = self._rdb.execute("SELECT device_id FROM devices ORDER BY device_id").fetchall()
        return [r[0] for r in rows]

    def device_pub(self, device_id: str) -> bytes | None:
        with self._read_lock:
            row = self._rdb.execute("SELECT device_pub FROM devices WHERE device_id=?", (device_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def bundles(self, device_id: str) -> list[BundleRow]:
        with self._read_lock:
            rows = self._rdb.execute(f"SELECT {_COLUMNS} FROM bundles WHERE device_id=?"
                                     " ORDER BY first_seq, last_seq, bundle_id", (device_id,)).fetchall()
        return [BundleRow(*r) for r in rows]

    def bundle_count(self) -> int:
        with self._read_lock:
            return self._rdb.execute("SELECT count(*) FROM bundles").fetchone()[0]

    def summaries(self) -> list[DeviceSummary]:
        with self._read_lock:
            rows = self._rdb.execute(_summary_sql("devices", "bundles")).fetchall()
        return sorted((DeviceSummary(*r) for r in rows), key=lambda s: s.device_id)


# ---- PostgreSQL --------------------------------------------------------------------------------

_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS tracecap_devices (
    device_id    TEXT PRIMARY KEY,
    device_pub   BYTEA NOT NULL,
    pinned_ns    BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS tracecap_bundles (
    bundle_id    TEXT PRIMARY KEY,
    device_id    TEXT NOT NULL REFERENCES tracecap_devices(device_id),
    first_seq    BIGINT NOT NULL,
    last_seq     BIGINT NOT NULL,
    count        BIGINT NOT NULL,
    prev_digest  TEXT NOT NULL,
    digest       TEXT NOT NULL,
    size         BIGINT NOT NULL,
    created_ns   BIGINT NOT NULL,
    received_ns  BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS tracecap_bundles_by_device ON tracecap_bundles(device_id, first_seq, last_seq);
"""
_PG_SCHEMA_LOCK = 0x7472_6163_6563_6170  # pg_advisory_xact_lock key: "tracecap", for schema set-up


def redact_url(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class PostgresIndex:
    """`tracecap_devices` and `tracecap_bundles` in a PostgreSQL database, shared by collectors."""

    def __init__(self, url: str, max_connections: int = 16, timeout: float = 3.0) -> None:
        try:
            import psycopg
            import psycopg_pool
        except ImportError:
            raise StorageConfigError("a PostgreSQL index needs the fleet extra; install it with "
                                     "pip install 'tracecap[fleet]'") from None
        self._psycopg = psycopg
        self._pool_mod = psycopg_pool
        self.url = url
        self._shown = redact_url(url)
        try:
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise StorageConfigError(f"--index {self._shown} is not a PostgreSQL URL ({exc}); use "
                                     f"postgresql://USER@HOST:PORT/DB") from None
        try:  # one plain connection first: its error says why (refused, auth, no such database)
            psycopg.connect(url, connect_timeout=max(1, int(timeout)), autocommit=True).close()
        except psycopg.Error as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise StorageConfigError(f"--index {self._shown}: PostgreSQL cannot be reached ({reason}); check "
                                     f"the URL, the server and its pg_hba.conf") from None
        self.pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=max_connections, timeout=timeout, open=False,
            check=psycopg_pool.ConnectionPool.check_connection,
            # Give up a failing reconnection loop soon: its backoff doubles, and a database back
            # after a minute would otherwise wait for the next try; a new request starts afresh.
            reconnect_timeout=8.0,
            kwargs={"connect_timeout": max(1, int(timeout))}, name="tracecap-index")
        try:
            self.pool.open(wait=True, timeout=timeout)
        except psycopg_pool.PoolTimeout:
            self.pool.close()
            raise StorageConfigError(f"--index {self._shown}: PostgreSQL cannot be reached within "
                                     f"{timeout:.0f}s; check the URL, the server and its pg_hba.conf") from None
        try:
            with self.pool.connection() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_SCHEMA_LOCK,))
                for statement in filter(str.strip, _PG_SCHEMA.split(";")):
                    conn.execute(statement)
        except psycopg.Error as exc:
            self.pool.close()
            raise StorageConfigError(f"--index {self._shown}: cannot set up the index tables "
                                     f"({str(exc).strip()}); the user needs CREATE on the database") from None

    def describe(self) -> str:
        return self._shown

    def close(self) -> None:
        self.pool.close()

    def _unavailable(self, exc: Exception) -> StorageUnavailable:
        return StorageUnavailable(f"the index database cannot be reached ({str(exc).strip() or type(exc).__name__})")

    def _run(self, fn, what: str = "read the index"):
        """Run `fn(conn)` in one transaction; reachability failures as `StorageUnavailable`."""
        psycopg = self._psycopg
        try:
            with self.pool.connection() as conn:
                with conn.transaction():
                    return fn(conn)
        except (psycopg.OperationalError, self._pool_mod.PoolTimeout) as exc:
            raise self._unavailable(exc) from None
        except psycopg.Error as exc:
            raise Refused(500, f"the collector could not {what} ({str(exc).strip()}); "
                               f"try again") from None

    def lookup(self, device_id: str, bundle_id: str) -> tuple[bytes | None, str | None]:
        def q(conn):
            pub = conn.execute("SELECT device_pub FROM tracecap_devices WHERE device_id=%s",
                               (device_id,)).fetchone()
            dig = conn.execute("SELECT digest FROM tracecap_bundles WHERE bundle_id=%s", (bundle_id,)).fetchone()
            return (None if pub is None else bytes(pub[0])), (None if dig is None else dig[0])
        return self._run(q)

    def insert(self, header: BundleHeader, digest: str, size: int) -> bool:
        h = header
        now = time.time_ns()

        def q(conn) -> bool:
            # Read committed: a concurrent insert of the same key makes this wait for it to
            # commit, and the read that follows sees the winner.
            conn.execute("INSERT INTO tracecap_devices(device_id, device_pub, pinned_ns) VALUES (%s,%s,%s)"
                         " ON CONFLICT (device_id) DO NOTHING", (h.device_id, h.device_pub, now))
            pinned = bytes(conn.execute("SELECT device_pub FROM tracecap_devices WHERE device_id=%s",
                                        (h.device_id,)).fetchone()[0])
            if pinned != h.device_pub:
                raise _pinned_elsewhere(h, pinned)
            created = conn.execute(
                f"INSERT INTO tracecap_bundles({_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
                " ON CONFLICT (bundle_id) DO NOTHING RETURNING 1",
                (h.bundle_id, h.device_id, h.first_seq, h.last_seq, h.count, h.prev_digest, digest, size,
                 h.created_ns, now)).fetchone()
            if created is not None:
                return True
            known = conn.execute("SELECT digest FROM tracecap_bundles WHERE bundle_id=%s",
                                 (h.bundle_id,)).fetchone()[0]
            if known != digest:
                raise _conflict(h)
            return False
        return self._run(q, "index the bundle")

    def device_ids(self) -> list[str]:
        rows = self._run(lambda c: c.execute("SELECT device_id FROM tracecap_devices").fetchall())
        return sorted(r[0] for r in rows)

    def device_pub(self, device_id: str) -> bytes | None:
        row = self._run(lambda c: c.execute("SELECT device_pub FROM tracecap_devices WHERE device_id=%s",
                                            (device_id,)).fetchone())
        return None if row is None else bytes(row[0])

    def bundles(self, device_id: str) -> list[BundleRow]:
        rows = self._run(lambda c: c.execute(
            f"SELECT {_COLUMNS} FROM tracecap_bundles WHERE device_id=%s"
            " ORDER BY first_seq, last_seq, bundle_id COLLATE \"C\"", (device_id,)).fetchall())
        return [BundleRow(*r) for r in rows]

    def bundle_count(self) -> int:
        return self._run(lambda c: c.execute("SELECT count(*) FROM tracecap_bundles").fetchone()[0])

    def summaries(self) -> list[DeviceSummary]:
        rows = self._run(lambda c: c.execute(_summary_sql("tracecap_devices", "tracecap_bundles")).fetchall())
        return sorted((DeviceSummary(r[0], int(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5])) for r in rows),
                      key=lambda s: s.device_id)


def check_index_url(url: str) -> None:
    """StorageConfigError unless `url` has a form `open_index` takes (nothing is opened)."""
    if "://" in url and not url.startswith(("postgresql://", "postgres://", "sqlite://")):
        raise StorageConfigError(f"--index {redact_url(url)!r} is neither postgresql://… nor sqlite:///PATH")


def sqlite_index_path(url: str) -> Path | None:
    """The SQLite file an `--index` URL names (`sqlite:///PATH` or a plain path), or None for
    PostgreSQL."""
    check_index_url(url)
    if url.startswith(("postgresql://", "postgres://")):
        return None
    if url.startswith("sqlite://"):
        if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
            raise StorageConfigError(f"--index {url!r}: name the file, sqlite:///relative/path or sqlite:////abs/path")
        return Path(urllib.parse.unquote(url[len("sqlite:///"):]))  # as SQLAlchemy reads it
    return Path(url)


def open_index(url: str) -> BundleIndex:
    """`postgresql://…` (or `postgres://…`), `sqlite:///PATH`, or a plain SQLite file path."""
    path = sqlite_index_path(url)
    return PostgresIndex(url) if path is None else SQLiteIndex(path)
