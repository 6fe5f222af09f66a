"""The collector's HTTP API: a Starlette app over a `BundleStore` (any backend), served by uvicorn.

Takes HTTP requests; gives JSON. Routes:
- `PUT /v1/bundles/{id}` (bearer token): the body is one bundle. 201 stored, 200 already stored
  (same bytes), 400 malformed or the URL id is not the header's, 401 missing or wrong token,
  403 the device is pinned to another key, 409 the id is stored with other bytes, 413 too
  large, 422 the device signature does not verify, 500 the index could not be written (send
  again), 503 with `Retry-After` the object store or the index database cannot be reached (send
  again after that many seconds). Every answer is JSON; every refusal is `{"error": "<one sentence>"}`.
- `GET /v1/devices/{device}` (bearer token): the device's chain report (`collector.verify`), 404
  for a device with no bundles.
- `GET /v1/health`: 200 `{"status": "ok"}`, no token needed (load balancer probes).

Promises: the body is streamed to a temporary file and never held in memory; a body beyond the
size cap is refused as soon as the cap is passed (or at once, from `Content-Length`); a response
of 2xx means the bundle is durably stored and indexed. Verification and the store's fsyncs run in
worker threads so one slow disk write never stalls the event loop.

Against slow or idle clients (`serve`): a connection must deliver a request's headers within
`HEADER_TIMEOUT` of opening or of its previous answer, a body that stops for `BODY_IDLE_TIMEOUT`
is answered 408, idle keep-alive connections close after `KEEP_ALIVE`, and open connections are
capped below the open-file limit (raised to its hard limit at start): past the cap a new
connection closes the oldest one that is not in a request. So half-open connections cannot starve
`/v1/health` or real uploads, whatever the process's file limit.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import socket
import time

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from collector.storage import BundleStore, Refused, StorageUnavailable, valid_bundle_id
from collector.verify import analyse_device

log = logging.getLogger("tracecap.collector")

DEFAULT_LISTEN = "127.0.0.1:8787"
DEFAULT_MAX_BUNDLE_BYTES = 64 * 1024 * 1024
HEADER_TIMEOUT = 10.0
BODY_IDLE_TIMEOUT = 30.0
KEEP_ALIVE = 15
MAX_CONNECTIONS = 4096


def _error(status: int, reason: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


def _unavailable(exc: StorageUnavailable) -> JSONResponse:
    return _error(503, f"{exc}; nothing was stored, send it again later",
                  headers={"Retry-After": str(exc.retry_after)})


def create_app(store: BundleStore, token: str | None, max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES) -> Starlette:
    """The ASGI app. `token` None or "" accepts every request (the caller warns about it)."""
    expected = f"Bearer {token}".encode() if token else None

    def authorized(request: Request) -> bool:
        if expected is None:
            return True
        given = request.headers.get("authorization", "").encode()
        return hmac.compare_digest(given, expected)

    def unauthorized(request: Request) -> JSONResponse:
        what = "wrong" if request.headers.get("authorization") else "missing"
        return _error(401, f"the collector token is {what}; send 'Authorization: Bearer <upload.token>'",
                      headers={"WWW-Authenticate": 'Bearer realm="tracecap"'})

    async def put_bundle(request: Request) -> JSONResponse:
        if not authorized(request):
            return unauthorized(request)
        bundle_id = request.path_params["bundle_id"]
        if not valid_bundle_id(bundle_id):
            return _error(400, f"{bundle_id!r} is not a bundle id (16 hex digits, '-', 12 hex digits)")
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return _error(400, "the Content-Length header is not a number")
            if int(length) > max_bundle_bytes:
                return _error(413, f"the bundle is {int(length)} bytes, over the collector's limit of "
                                   f"{max_bundle_bytes} bytes")
        temp = store.temp_path()
        try:
            received = 0
            with open(temp, "wb") as f:
                blocks = request.stream().__aiter__()
                while True:
                    try:
                        block = await asyncio.wait_for(blocks.__anext__(), BODY_IDLE_TIMEOUT)
                    except StopAsyncIteration:
                        break
                    except asyncio.TimeoutError:
                        return _error(408, f"the bundle's bytes stopped arriving for "
                                           f"{BODY_IDLE_TIMEOUT:.0f}s; send it again")
                    received += len(block)
                    if received > max_bundle_bytes:
                        return _error(413, f"the bundle is over the collector's limit of {max_bundle_bytes} bytes")
                    f.write(block)
            if received == 0:
                return _error(400, "the request has no body; PUT the bundle file's bytes")
            try:
                stored = await run_in_threadpool(store.ingest, temp, bundle_id)
            except Refused as exc:
                log.info("refused bundle %s: %s %s", bundle_id, exc.status, exc)
                return _error(exc.status, str(exc))
            except StorageUnavailable as exc:
                log.warning("bundle %s not stored, storage unavailable: %s", bundle_id, exc)
                return _unavailable(exc)
        except ClientDisconnect:
            log.info("client went away while sending bundle %s", bundle_id)
            return _error(400, "the client disconnected before the whole bundle arrived")
        finally:
            temp.unlink(missing_ok=True)
        h = stored.header
        body = {"bundle_id": h.bundle_id, "device_id": h.device_id, "digest": stored.digest,
                "first_seq": h.first_seq, "last_seq": h.last_seq, "count": h.count,
                "stored": "created" if stored.created else "already stored"}
        return JSONResponse(body, status_code=201 if stored.created else 200)

    async def get_device(request: Request) -> JSONResponse:
        if not authorized(request):
            return unauthorized(request)
        device_id = request.path_params["device_id"]
        try:
            rows = await run_in_threadpool(store.bundles, device_id)
        except StorageUnavailable as exc:
            return _unavailable(exc)
        if not rows:
            return _error(404, f"the collector holds no bundles from device {device_id!r}")
        return JSONResponse(analyse_device(device_id, rows).to_json())

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        store.close()

    return Starlette(routes=[
        Route("/v1/bundles/{bundle_id}", put_bundle, methods=["PUT"]),
        Route("/v1/devices/{device_id:path}", get_device, methods=["GET"]),
        Route("/v1/health", health, methods=["GET"]),
    ], lifespan=lifespan)


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:8787', '[::1]:8787', ':8787' (all interfaces) -> (host, port); ValueError if not."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {text!r} is not HOST:PORT; use for example 127.0.0.1:8787")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 picks a free port (read it back with `getsockname`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def raise_file_limit() -> int:
    """Raise the soft open-file limit to the hard one (at most 65,536); returns the soft limit."""
    try:
        import resource
    except ImportError:  # not POSIX
        return MAX_CONNECTIONS + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


def _guarded_h11(max_connections: int):
    """uvicorn's h11 protocol with a deadline for each request's headers and a connection cap
    that closes the oldest connection not in a request (uvicorn has neither)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Guarded(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            self.opened = time.monotonic()
            self._header_timer = None
            super().connection_made(transport)
            self._arm_header_timer()
            if len(self.connections) > max_connections:
                idle = [c for c in self.connections
                        if c is not self and not c.transport.is_closing()
                        and getattr(c, "_waiting_for_headers", lambda: False)()]
                if idle:
                    oldest = min(idle, key=lambda c: c.opened)
                    oldest.transport.close()
                else:  # every connection is in a request: this one waits its turn no longer
                    transport.close()

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(HEADER_TIMEOUT, self._headers_overdue)

        def _headers_overdue(self) -> None:
            self._header_timer = None
            if self._waiting_for_headers() and not self.transport.is_closing():
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()

        def connection_lost(self, exc) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().connection_lost(exc)

    return Guarded


def serve(store: BundleStore, sock: socket.socket, token: str | None, max_bundle_bytes: int) -> None:
    """Run the collector over `store` on `sock` until SIGINT/SIGTERM (uvicorn's graceful
    shutdown); the store is closed when the server stops."""
    import uvicorn

    limit = raise_file_limit()
    # Room under the file limit for the listening socket, the index, bundles being written, the
    # threads' files, and the connections accepted or closed but not yet through the event loop
    # (asyncio accepts up to a backlog per pass of its loop, and an evicted connection's file is
    # released a pass later); below that, the oldest idle connection makes way for a new one.
    backlog = max(64, min(1024, (limit - 64) // 6))
    max_connections = max(16, min(MAX_CONNECTIONS, limit - 64 - 2 * backlog))
    app = create_app(store, token, max_bundle_bytes)
    config = uvicorn.Config(app, log_level=os.environ.get("TRACECAP_COLLECTOR_LOG_LEVEL", "warning"),
                            access_log=False, lifespan="on", timeout_keep_alive=KEEP_ALIVE,
                            server_header=False, http=_guarded_h11(max_connections),
                            h11_max_incomplete_event_size=16 * 1024, backlog=backlog)
    uvicorn.Server(config).run(sockets=[sock])
