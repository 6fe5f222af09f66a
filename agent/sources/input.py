"""The input source: how much the user types, clicks, scrolls and moves, and which app is in front.

Takes the policy's `input.window` (default 10s), `input.idle_timeout` (120s) and `input.titles`
(true), and the desktop: pynput keyboard and mouse listeners (X11 RECORD on Linux, Quartz event taps
on macOS, hooks on Windows) and, on X11, the active-window property. Gives:
- `input.activity` {start, end, keys, clicks, scrolls, moves} (ns, counts) once per window that had
  any input; never which key, which character, which button or where the pointer was: the callbacks
  count and drop their arguments (see `input_activity.ActivityCounter`).
- `input.idle` {since} once no input has arrived for `idle_timeout`, then `input.active` {idle_ms}
  on the next input.
- `app.focus` {app, process, title} on every change of the active window under X11 (title absent
  when `input.titles` is false; redacted by emit otherwise).
Promises: while `ctx.capturing()` is False the listeners are stopped (unhooked from the desktop),
and they are started again when capture resumes. Under Wayland or without a display the state is
`unavailable: <reason>` and `run` blocks until stopped, so the daemon lives on; on macOS a missing
accessibility permission is detected and named in the state. Every wait blocks on an event.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from agent.sources.base import SourceContext
from agent.sources.input_activity import (
    ActivityCounter,
    activity_data,
    idle_step,
    unavailable_reason,
)
from agent.sources.tools import policy_section

MACOS_PERMISSION = ("accessibility permission not granted: allow tracecap (or the terminal running "
                    "it) in System Settings > Privacy & Security > Accessibility, then restart it")


def _duration(value: Any, default: float) -> float:
    if value is None:
        return default
    from agent.policy import parse_duration

    return parse_duration(value)


class InputUnavailable(Exception):
    """Input capture cannot run on this desktop; str() is the reason shown in status."""


class InputSource:
    """Source "input"; see the module docstring."""

    name = "input"

    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx
        self._listeners: list[Any] = []
        self._focus: Any = None

    # -- settings ---------------------------------------------------------------------------

    def _settings(self) -> tuple[float, float, bool]:
        sec = policy_section(self.ctx.policy, "input")
        return (_duration(sec.get("window"), 10.0), _duration(sec.get("idle_timeout"), 120.0),
                bool(sec.get("titles", True)))

    # -- the loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        ctx = self.ctx
        reason = unavailable_reason(os.environ, sys.platform)
        if reason:
            ctx.set_state(f"unavailable: {reason}")
            stop.wait()
            return
        wake = threading.Event()
        threading.Thread(target=_forward, args=(stop, [wake, ctx.changed]), daemon=True,
                         name="input-stop").start()
        threading.Thread(target=_forward_changes, args=(stop, ctx.changed, wake), daemon=True,
                         name="input-changed").start()
        counter = ActivityCounter(on_wake=wake.set)
        try:
            self._loop(stop, wake, counter)
        except InputUnavailable as exc:
            ctx.set_state(f"unavailable: {exc}")
            self._unhook()
            stop.wait()
        finally:
            self._unhook()

    def _loop(self, stop: threading.Event, wake: threading.Event, counter: ActivityCounter) -> None:
        ctx = self.ctx
        hooked = False
        idle = False
        idle_since = 0.0
        window_s = idle_s = 0.0
        win_start = win_start_ns = 0.0
        while not stop.is_set():
            if not ctx.capturing():
                if hooked:
                    self._flush(counter, win_start_ns)
                    self._unhook()
                    hooked = False
                    ctx.set_state("running (capture off: listeners stopped)")
                wake.wait(5.0)  # consent changes set it; 5 s bounds a pause that simply expires
                wake.clear()
                continue
            if not hooked:
                window_s, idle_s, titles = self._settings()
                counter.take()
                self._hook(counter, titles)
                hooked, idle = True, False
                counter.sleeping = False
                counter.last_activity = time.monotonic()
                win_start, win_start_ns = time.monotonic(), time.time_ns()
                ctx.set_state("running")
            if not all(li.is_alive() for li in self._listeners):
                # The X server went away (or the hook failed): the supervisor restarts the source.
                raise RuntimeError("an input listener ended unexpectedly")
            now = time.monotonic()
            if now - win_start >= window_s:
                self._flush(counter, win_start_ns)
                win_start, win_start_ns = now, time.time_ns()
            idle, kind = idle_step(idle, counter.last_activity, now, idle_s)
            if kind == "input.idle":
                self._flush(counter, win_start_ns)
                idle_since = counter.last_activity
                ctx.emit("input.idle", {"since": counter.last_activity_ns,
                                        "after_ms": int(idle_s * 1000)})
                counter.sleeping = True
                if counter.last_activity > idle_since:  # input raced the flag: do not sleep on it
                    wake.set()
            elif kind == "input.active":
                ctx.emit("input.active",
                         {"idle_ms": int((counter.last_activity - idle_since) * 1000)})
                counter.sleeping = False
                win_start, win_start_ns = now, time.time_ns()  # the first input opens a window
            if idle:
                # The next input, a consent change or stop sets it; the minute bound is only to
                # notice a listener that died while nothing was happening.
                wake.wait(60.0)
            else:
                timeout = min(win_start + window_s, counter.last_activity + idle_s) - time.monotonic()
                if timeout > 0:
                    wake.wait(timeout)
            wake.clear()
        if hooked:
            self._flush(counter, win_start_ns)

    def _flush(self, counter: ActivityCounter, start_ns: float) -> None:
        data = activity_data(int(start_ns), time.time_ns(), counter.take())
        if data is not None:
            self.ctx.emit("input.activity", data, ts=data["end"])

    # -- hooking ----------------------------------------------------------------------------

    def _hook(self, counter: ActivityCounter, titles: bool) -> None:
        try:
            from pynput import keyboard, mouse
        except Exception as exc:  # pynput picks its backend at import and raises if it has none
            raise InputUnavailable(f"no input backend ({_one_line(exc)})") from None
        try:
            kb = _key_counting_listener(keyboard)(on_press=counter.on_press)
            ms = mouse.Listener(on_move=counter.on_move, on_click=counter.on_click,
                                on_scroll=counter.on_scroll)
            for listener in (kb, ms):
                listener.daemon = True
                listener.start()
                self._listeners.append(listener)
            for listener in (kb, ms):
                listener.wait()
        except Exception as exc:
            self._unhook()
            raise InputUnavailable(f"input listener failed ({_one_line(exc)})") from None
        if sys.platform == "darwin" and not all(getattr(li, "IS_TRUSTED", True)
                                                for li in self._listeners):
            self._unhook()
            raise InputUnavailable(MACOS_PERMISSION)
        if os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
            self._start_focus(titles)

    def _start_focus(self, titles: bool) -> None:
        from agent.sources.input_focus import X11FocusWatcher

        watcher = X11FocusWatcher(lambda data: self.ctx.emit("app.focus", data), titles=titles,
                                  log=self.ctx.log)
        try:
            watcher.start()
        except Exception as exc:  # input counts still work without focus
            self.ctx.log.warning("input: focus tracking unavailable: %s", _one_line(exc))
            return
        self._focus = watcher

    def _unhook(self) -> None:
        for listener in self._listeners:
            try:
                listener.stop()
                _end_x_record(listener)
            except Exception as exc:
                self.ctx.log.warning("input: stopping a listener failed: %s", _one_line(exc))
        for listener in self._listeners:
            if listener is not threading.current_thread():
                listener.join(5.0)
        self._listeners = []
        if self._focus is not None:
            self._focus.stop()
            self._focus = None


def _key_counting_listener(keyboard: Any) -> type:
    """pynput's keyboard listener; on X11 a subclass that asks the server for key presses only
    and never decodes them. pynput's own handler turns every press and release into a key object
    (keycode to keysym lookups) that we would drop at once: that costs CPU at every keystroke and
    puts the key identity in memory for no reason. Here the callback receives None."""
    base = keyboard.Listener
    if not base.__module__.endswith("._xorg"):
        return base
    from Xlib import X

    class XorgKeyPressCounter(base):  # type: ignore[misc, valid-type]
        _EVENTS = (X.KeyPress, X.KeyPress)  # the RECORD device-event range: presses only

        def _handler(self, events: Any) -> None:
            # RECORD hands over raw 32-byte X events; the low 7 bits of byte 0 are the type.
            # Counting them directly skips parsing each event into an object.
            if not self.running:
                raise self.StopException()
            data = events.data
            if not data:
                return
            for i in range(0, len(data) - 31, 32):
                if data[i] & 0x7F == X.KeyPress:
                    self.on_press(None, False)

    return XorgKeyPressCounter


def _end_x_record(listener: Any) -> None:
    """pynput's X11 `stop()` queues RecordDisableContext on the very connection its thread is
    blocked reading, without flushing, so the listener never ends until another input event
    arrives. Disabling the context from a fresh connection (contexts are server-wide XIDs)
    ends `record_enable_context` at once."""
    context = getattr(listener, "_context", None)
    if context is None or not sys.platform.startswith("linux"):
        return
    from Xlib import display

    d = display.Display()
    try:
        d.record_disable_context(context)
        d.flush()
        d.sync()
    finally:
        d.close()


def _forward(stop: threading.Event, targets: list[threading.Event]) -> None:
    stop.wait()
    for t in targets:
        t.set()


def _forward_changes(stop: threading.Event, changed: threading.Event, wake: threading.Event) -> None:
    while True:
        changed.wait()
        if stop.is_set():
            return
        changed.clear()
        wake.set()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
