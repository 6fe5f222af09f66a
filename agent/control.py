"""The control socket: how the CLI and the tray talk to the running daemon.

Takes requests on a Unix stream socket at `<run>/control.sock` (mode 0600, in a 0700 directory);
gives responses. Only the same user or root may connect: the peer's credentials are checked on every
connection (SO_PEERCRED on Linux, getpeereid on macOS/BSD), not just the file mode.

Protocol: one request per connection. The client sends one JSON object on one line,
`{"op": "status", ...}`, and reads one JSON line back: `{"ok": true, "result": ...}` or
`{"ok": false, "error": "<one sentence>", "code": <exit code>}`. Requests are at most 1 MiB.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import struct
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from agent.errors import DaemonNotRunning, RuntimeFailure, TracecapError

log = logging.getLogger("tracecap.control")

MAX_REQUEST = 1 << 20


def peer_uid(sock: socket.socket) -> int | None:
    if sys.platform.startswith("linux"):
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return uid
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        uid, gid = ctypes.c_uint32(), ctypes.c_uint32()
        if libc.getpeereid(sock.fileno(), ctypes.byref(uid), ctypes.byref(gid)) == 0:
            return uid.value
    except (OSError, AttributeError):
        pass
    return None


Handler = Callable[[dict[str, Any]], Any]


class ControlServer:
    """Serves `handler(request) -> result` on the socket; `TracecapError`s become error responses.

    One thread blocks in accept(); each connection is served on its own short-lived thread.
    `stop()` shuts the listening socket down, which wakes accept() at once (no polling)."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = Path(path)
        self.handler = handler
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        parent = self.path.parent
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(parent, 0o700)
        # The caller holds the daemon lock, so a socket file here is stale (left by a kill -9).
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(64)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept_loop, name="control-socket", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # the socket was shut down by stop()
            threading.Thread(target=self._serve_conn, args=(conn,), name="control-request",
                             daemon=True).start()

    def _serve_conn(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            try:
                with conn.makefile("rb") as rfile, conn.makefile("wb") as wfile:
                    self._serve_one(conn, rfile, wfile)
            except OSError:
                pass

    def _serve_one(self, sock: socket.socket, rfile: Any, wfile: Any) -> None:
        uid = peer_uid(sock)
        if uid is None or uid not in (os.getuid(), 0):
            log.warning("refused a control connection from uid %s", uid)
            # Take its request first (briefly), so the refusal is read, not met with a broken pipe.
            sock.settimeout(1.0)
            try:
                rfile.readline(MAX_REQUEST + 1)
            except OSError:
                pass
            _send(wfile, {"ok": False, "error": "only the user running the daemon (or root) may "
                          "control it", "code": 1})
            return
        line = rfile.readline(MAX_REQUEST + 1)
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise ValueError
        except ValueError:
            _send(wfile, {"ok": False, "error": "malformed control request", "code": 2})
            return
        try:
            result = self.handler(request)
            _send(wfile, {"ok": True, "result": result})
        except TracecapError as exc:
            _send(wfile, {"ok": False, "error": str(exc), "code": exc.exit_code})
        except Exception as exc:  # the daemon lives on; the client gets one sentence
            log.exception("control request %s failed", request.get("op"))
            _send(wfile, {"ok": False, "error": f"the daemon failed to handle {request['op']}: {exc}",
                          "code": 1})

    def stop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
            self._sock = None
        if self._thread is not None:
            self._thread.join(5)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _send(wfile: Any, obj: dict) -> None:
    try:
        wfile.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
        wfile.flush()
    except (BrokenPipeError, ConnectionResetError):
        pass


def request(path: Path, op: str, timeout: float = 30.0, **params: Any) -> Any:
    """Send one request to the daemon. Raises DaemonNotRunning when nobody listens, and the
    daemon's own error (as a TracecapError with its exit code) when it refuses."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise DaemonNotRunning("the tracecap daemon is not running; start it with "
                                   "`tracecap daemon` or `tracecap service install`") from None
        except PermissionError:
            raise RuntimeFailure(f"cannot open the control socket {path}: permission denied") from None
        sock.sendall(json.dumps({"op": op, **params}).encode() + b"\n")
        chunks = []
        while True:
            try:
                chunk = sock.recv(1 << 16)
            except socket.timeout:
                raise RuntimeFailure(f"the daemon did not answer {op} within {timeout:.0f}s") from None
            if not chunk:
                break
            chunks.append(chunk)
            if chunk.endswith(b"\n"):
                break
    finally:
        sock.close()
    if not chunks:
        raise RuntimeFailure(f"the daemon closed the connection without answering {op}")
    reply = json.loads(b"".join(chunks))
    if reply.get("ok"):
        return reply.get("result")
    err = TracecapError(reply.get("error", "the daemon refused the request"))
    err.exit_code = int(reply.get("code", 1))
    raise err
