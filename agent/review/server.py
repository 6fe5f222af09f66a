"""The review server: the page's ASGI app run by the daemon, on 127.0.0.1, only while it is used.

Takes the running `Daemon`; gives `ReviewServer.url()`, the address (with its token) that the
control socket's `review` request hands to `tracecap review` and the tray.

Why a thread of the daemon and not a process of its own: the page shows and changes the daemon's
live state (consent, the journal's durable seq, the outbox, the delivery cursor) and its Forget must
run under the same locks as the bundler and uploader (`agent/forget.py`). In the daemon's process
it calls the exact functions the control socket calls; a separate process would need a second
protocol for all of that, and its own copy of the journal index. Uvicorn serves it on its own
asyncio loop in one thread, started on the first `review` request. What is costly to make is
made once for the daemon's life, not per server run: the journal index (the daemon builds it at
start, `agent/review/index.py`), the compiled templates (on the first `review` request) and the
Tasks tab's last mining (`agent/review/tasks.py`, made when that tab is first asked for).

Promises:
- Bound to 127.0.0.1 on a port the kernel picks, never another interface.
- A fresh random URL token for each `review` request, good once, and a session secret per server
  run (`secrets.token_urlsafe(32)` each); tokens are given only over the control socket (0600,
  peer uid checked), so another local user cannot learn one.
- Stops after `idle` seconds without a request that passed the guard (default 20 minutes), and
  with the daemon; the next `review` request starts a new one with new secrets. A page left open
  then shows, on its next click, a sentence saying to run `tracecap review` again.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import socket
import threading
import time
from typing import Any

log = logging.getLogger("tracecap.review")

IDLE_SECONDS = 20 * 60


class DaemonState:
    """The daemon as the page sees it: reads, and the same actions the control socket runs."""

    def __init__(self, daemon: Any) -> None:
        self.d = daemon
        self.spool = daemon.paths.spool

    def status(self) -> dict[str, Any]:
        return self.d.status()

    def durable_seq(self) -> int:
        return self.d.journal.durable_seq

    def delivered_upto(self) -> int:
        return self.d.delivery.state.uploaded_upto

    def sealed_upto(self) -> int:
        return self.d.delivery.state.sealed_upto

    def hold_seconds(self) -> float:
        return float(self.d.delivery.hold_s)

    def waiting(self) -> list[dict[str, Any]]:
        return self.d.delivery.waiting_bundles()

    def uploaded(self) -> list[dict[str, Any]]:
        from agent.delivery import read_upload_history

        return read_upload_history(self.d.delivery.outbox, limit=20)

    def consent(self, op: str, seconds: float | None = None) -> Any:
        return self.d.handle({"op": op, "seconds": seconds})

    def forget_span(self, seconds: float) -> dict[str, Any]:
        return self.d.handle({"op": "forget", "seconds": seconds})

    def forget_seqs(self, seqs: list[int]) -> dict[str, Any]:
        return self.d.handle({"op": "forget", "seqs": seqs})


class ReviewServer:
    def __init__(self, daemon: Any, idle: float = IDLE_SECONDS) -> None:
        self.daemon = daemon
        self.idle = idle
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._port = 0
        self._tokens: Any = None
        self._last_use = time.monotonic()
        self._env: Any = None  # the compiled templates, kept for the daemon's life
        self._miner: Any = None  # the Tasks tab's last mining, kept until the journal changes

    def url(self, idle: float | None = None) -> str:
        """The page's address with its token, starting the server if it is not running."""
        with self._lock:
            if idle is not None:
                self.idle = idle
            self._last_use = time.monotonic()  # handing out the URL counts as use
            if self._thread is None or not self._thread.is_alive() or self._server.should_exit:
                self._start()
            return f"http://127.0.0.1:{self._port}/?token={self._tokens.issue()}"

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _touch(self) -> None:
        self._last_use = time.monotonic()

    def _start(self) -> None:
        import uvicorn

        from agent.review.app import Tokens, build_app, page_environment
        from agent.review.index import JournalIndex

        if self._thread is not None:
            self._thread.join(5)
        # proto=IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY on accepted connections
        # only when their proto says TCP. Without it a response's head and body are two writes,
        # and Nagle holds the body until the browser's delayed ACK (40 ms on every request).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        sock.set_inheritable(False)
        port = sock.getsockname()[1]
        tokens = Tokens()
        session = secrets.token_urlsafe(32)
        csrf = hmac.new(session.encode(), b"csrf", hashlib.sha256).hexdigest()
        if self._env is None:
            self._env = page_environment()
        index = getattr(self.daemon, "review_index", None)
        if index is None:  # a daemon that did not build one at start: the first page will
            index = self.daemon.review_index = JournalIndex(self.daemon.paths.spool)
        if self._miner is None or self._miner.index is not index:
            from agent.review.tasks import TaskMiner

            self._miner = TaskMiner(index)
        app = build_app(DaemonState(self.daemon), port=port, tokens=tokens, session=session, csrf=csrf,
                        on_use=self._touch, env=self._env, index=index, miner=self._miner)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                server_header=False, date_header=False, proxy_headers=False,
                                timeout_keep_alive=5, limit_concurrency=64, ws="none")
        server = uvicorn.Server(config)
        self._server, self._port, self._tokens = server, port, tokens
        self._thread = threading.Thread(target=self._run, args=(server, sock), name="review-server",
                                        daemon=True)
        self._thread.start()
        log.info("review page served on 127.0.0.1:%d", port)

    def _run(self, server: Any, sock: socket.socket) -> None:
        async def main() -> None:
            watcher = asyncio.ensure_future(self._watch_idle(server))
            try:
                await server.serve(sockets=[sock])
            finally:
                watcher.cancel()

        try:
            asyncio.run(main())
        except Exception:
            log.exception("the review server failed")
        finally:
            sock.close()
            log.info("review page stopped")

    async def _watch_idle(self, server: Any) -> None:
        while not server.should_exit:
            left = self.idle - (time.monotonic() - self._last_use)
            if left <= 0:
                log.info("review page idle for %.0fs: stopping it", self.idle)
                server.should_exit = True
                return
            await asyncio.sleep(min(left, 5.0))

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            if self._server is not None:
                self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(timeout)
