"""HTTP for the uploader: one PUT with an overall deadline, a capped answer, abortable at any time.

Takes a URL, headers, the bundle's bytes and a deadline; gives `Answer(status, headers, body)`.
Promises, whatever the collector does:
- The whole request (connect, TLS, sending, the answer's headers and body) ends by the deadline: every
  socket operation is given at most the time left, so an answer dripped a byte at a time fails with
  `Timeout` at the deadline, not after a per-read timeout per byte.
- At most `MAX_ANSWER_BYTES` of an answer's body are read (the connection is then dropped): the
  uploader needs a status and a short reason, and a 1 GiB body costs nothing. Bodies are never
  decompressed (httpcore leaves `Content-Encoding` alone), so a compressed bomb costs nothing either;
  h11 caps the headers.
- `abort()` (another thread: stop, forget) shuts down the sockets of the request in flight at once,
  and fails every socket operation until `resume()`, so the request fails with `NetworkError`
  within milliseconds even if it was between sockets (connecting) when aborted.
httpcore (httpx's own transport layer) does the protocol; this module only bounds its I/O.
"""
from __future__ import annotations

import dataclasses
import socket
import ssl
import threading
import time
from typing import Any

import httpcore

MAX_ANSWER_BYTES = 64 << 10
_WRITE_CHUNK = 64 << 10

Timeout = httpcore.TimeoutException
NetworkError = (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol,
                httpcore.ProxyError, ssl.SSLError, OSError)


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes  # at most MAX_ANSWER_BYTES


class _Deadline:
    def __init__(self) -> None:
        self.at: float | None = None  # time.monotonic() by which the request must be over

    def left(self, asked: float | None, exc: type[Exception]) -> float:
        if self.at is None:
            return asked if asked is not None else 60.0
        left = self.at - time.monotonic()
        if left <= 0:
            raise exc("the request's deadline passed")
        return left if asked is None else min(asked, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: "_Backend") -> None:
        self.inner, self.backend = inner, backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self.backend.check()
        return self.inner.read(max_bytes, self.backend.deadline.left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        for i in range(0, len(view), _WRITE_CHUNK):
            self.backend.check()
            self.inner.write(bytes(view[i:i + _WRITE_CHUNK]),
                             self.backend.deadline.left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.backend.forget(self)
        self.inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        tls = self.inner.start_tls(ssl_context, server_hostname,
                                   self.backend.deadline.left(timeout, httpcore.ConnectTimeout))
        self.backend.forget(self)
        return self.backend.track(_Stream(tls, self.backend))

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self.inner = httpcore.SyncBackend()
        self.deadline = _Deadline()
        self._live: set[_Stream] = set()
        self._lock = threading.Lock()
        self.aborted = False

    def check(self) -> None:
        if self.aborted:
            raise httpcore.ReadError("the upload was aborted")

    def track(self, stream: _Stream) -> _Stream:
        with self._lock:
            self._live.add(stream)
        return stream

    def forget(self, stream: _Stream) -> None:
        with self._lock:
            self._live.discard(stream)

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None, socket_options: Any = None) -> httpcore.NetworkStream:
        self.check()
        inner = self.inner.connect_tcp(host, port, self.deadline.left(timeout, httpcore.ConnectTimeout),
                                       local_address, socket_options)
        return self.track(_Stream(inner, self))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        inner = self.inner.connect_unix_socket(path, self.deadline.left(timeout, httpcore.ConnectTimeout),
                                               socket_options)
        return self.track(_Stream(inner, self))

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.deadline.left(seconds, httpcore.PoolTimeout)))

    def abort(self) -> None:
        self.aborted = True
        with self._lock:
            live = list(self._live)
        for s in live:
            sock = s.get_extra_info("socket")
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except (OSError, AttributeError, ValueError):
                pass


def ssl_context(ca_bundle: str = "", client_cert: str = "", client_key: str = "") -> ssl.SSLContext:
    """Verification as httpx does it: the policy's CA bundle, else certifi's."""
    if ca_bundle:
        ctx = ssl.create_default_context(cafile=ca_bundle)
    else:
        import certifi

        ctx = ssl.create_default_context(cafile=certifi.where())
    if client_cert:
        ctx.load_cert_chain(client_cert, client_key or None)
    return ctx


class Uploader:
    """A keep-alive connection pool for one collector; one request at a time."""

    def __init__(self, ctx: ssl.SSLContext | None, op_timeout: float) -> None:
        self.backend = _Backend()
        self.op_timeout = op_timeout
        self.pool = httpcore.ConnectionPool(ssl_context=ctx, network_backend=self.backend,
                                            max_connections=2, keepalive_expiry=30.0)

    def put(self, url: str, headers: dict[str, str], body: bytes, deadline: float) -> Answer:
        """PUT `body`; over by `deadline` (time.monotonic()) or raises Timeout / NetworkError."""
        t = self.op_timeout
        self.backend.deadline.at = deadline
        try:
            hdrs = [(k.encode(), v.encode()) for k, v in headers.items()]
            hdrs.append((b"Content-Length", str(len(body)).encode()))
            with self.pool.stream("PUT", url, headers=hdrs, content=body, extensions={
                    "timeout": {"connect": t, "read": t, "write": t, "pool": t}}) as resp:
                got, size = [], 0
                for chunk in resp.iter_stream():
                    got.append(chunk)
                    size += len(chunk)
                    if size >= MAX_ANSWER_BYTES:
                        break  # leaving the block closes the connection mid-body
                return Answer(resp.status,
                              {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in resp.headers},
                              b"".join(got)[:MAX_ANSWER_BYTES])
        finally:
            self.backend.deadline.at = None

    def abort(self) -> None:
        self.backend.abort()

    def resume(self) -> None:
        """Requests may run again after an `abort()`."""
        self.backend.aborted = False

    def close(self) -> None:
        self.backend.abort()
        try:
            self.pool.close()
        except Exception:  # noqa: BLE001 - closing after an abort may meet a half-closed socket
            pass
