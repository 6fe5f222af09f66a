"""Keys of events recently journaled, so that input re-read after a crash is not journaled twice.

Takes events as they are journaled (and, at start, as the journal's recovery reads them); gives
`seen(kind, data)`. A source that erases its input only once its events are durable (the shell
spool) re-reads, after a crash, input whose events reached the disk just before the crash and was
not erased yet. Those events carry a stable key, and the daemon drops the ones already here.
Keys: `shell.start`, `shell.end` and `test.run` by the command `id` they carry, and the shell
source's `agent.gap` by the `id` of the drop total it reports (after redaction, as the journal holds
them; the daemon's own gaps carry none). Bounded: the newest `KEEP` keys, far more than one fsync batch, which is
all a crash can leave unerased.
"""
from __future__ import annotations

import threading
from typing import Any

KEYED = frozenset({"shell.start", "shell.end", "test.run", "agent.gap"})
KEEP = 32768


def event_key(kind: Any, data: Any) -> tuple[str, str] | None:
    if kind in KEYED and isinstance(data, dict):
        ident = data.get("id")
        if isinstance(ident, str):
            return kind, ident
    return None


class JournaledKeys:
    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._keys: dict[tuple[str, str], None] = {}  # in the order journaled
        self._lock = threading.Lock()

    def add(self, kind: str, data: Any) -> None:
        key = event_key(kind, data)
        if key is None:
            return
        with self._lock:
            self._keys[key] = None
            if len(self._keys) > self.keep:
                del self._keys[next(iter(self._keys))]

    def observe(self, event: dict[str, Any]) -> None:
        """An event dict as the journal's recovery decoded it."""
        self.add(event.get("kind"), event.get("data"))

    def seen(self, kind: str, data: Any) -> bool:
        key = event_key(kind, data)
        if key is None:
            return False
        with self._lock:
            return key in self._keys
