"""Counting input without knowing what it was, and the rules that turn counts into events.

Takes the listener callbacks' "something happened" signals and the clock; gives per-window counts,
the `input.activity` / `input.idle` / `input.active` data, and the reason input capture cannot run
on this desktop. Promise: `ActivityCounter` holds four integers and two timestamps, nothing else;
the callbacks that feed it receive a key or a position from the listener library and drop it on the
spot (it is never assigned, queued, logged or compared). Everything but the counter is pure.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class Counts:
    keys: int = 0
    clicks: int = 0
    scrolls: int = 0
    moves: int = 0

    def any(self) -> bool:
        return bool(self.keys or self.clicks or self.scrolls or self.moves)


class ActivityCounter:
    """Thread-safe counters fed by listener threads and drained by the source once per window.
    `on_*` methods have the listener callback signatures and ignore every argument."""

    def __init__(self, on_wake: Any = None) -> None:
        self._lock = threading.Lock()
        self._keys = self._clicks = self._scrolls = self._moves = 0
        self.last_activity = time.monotonic()
        self.last_activity_ns = time.time_ns()
        self._on_wake = on_wake  # called (no arguments) on activity while `sleeping` is True
        self.sleeping = False

    def _touch(self) -> None:
        self.last_activity = time.monotonic()
        self.last_activity_ns = time.time_ns()
        if self.sleeping and self._on_wake is not None:
            self.sleeping = False
            self._on_wake()

    # The listener passes the key (or position, button) as arguments: they are deliberately
    # unnamed and unused so nothing about them survives this call.
    def on_press(self, *_: Any) -> None:
        with self._lock:
            self._keys += 1
            self._touch()

    def on_click(self, _x: Any, _y: Any, _button: Any, pressed: bool, *_: Any) -> None:
        if not pressed:
            return
        with self._lock:
            self._clicks += 1
            self._touch()

    def on_scroll(self, *_: Any) -> None:
        with self._lock:
            self._scrolls += 1
            self._touch()

    def on_move(self, *_: Any) -> None:
        with self._lock:
            self._moves += 1
            self._touch()

    def take(self) -> Counts:
        """The counts since the last take, and zero them."""
        with self._lock:
            c = Counts(self._keys, self._clicks, self._scrolls, self._moves)
            self._keys = self._clicks = self._scrolls = self._moves = 0
        return c


def activity_data(start_ns: int, end_ns: int, counts: Counts) -> dict[str, int] | None:
    """`input.activity` data for one window, or None when nothing happened in it."""
    if not counts.any():
        return None
    return {"start": start_ns, "end": end_ns, "keys": counts.keys, "clicks": counts.clicks,
            "scrolls": counts.scrolls, "moves": counts.moves}


def idle_step(idle: bool, last_activity: float, now: float, timeout: float) -> tuple[bool, str | None]:
    """The idle state machine on the monotonic clock: (new idle state, kind to emit or None).
    Idle begins once `timeout` seconds pass without input; any input after that ends it."""
    quiet = now - last_activity
    if not idle and quiet >= timeout:
        return True, "input.idle"
    if idle and quiet < timeout:
        return False, "input.active"
    return idle, None


def unavailable_reason(env: Mapping[str, str], platform: str) -> str | None:
    """Why global input capture cannot run here, before trying to; None if it may."""
    if platform.startswith("linux") or "bsd" in platform:
        session = env.get("XDG_SESSION_TYPE", "").lower()
        if session == "wayland" or env.get("WAYLAND_DISPLAY"):
            return ("Wayland session: the compositor does not let applications see global input "
                    "(log in to an X11 session to capture input activity)")
        if not env.get("DISPLAY"):
            return "no X display (DISPLAY is not set)"
    return None
