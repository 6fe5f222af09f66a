"""Which application is in front, on X11: `app.focus` data on every change of the active window.

Takes an X display name and a callback; gives the callback `{"app", "process", "title"}` once at
start and then each time the window manager changes `_NET_ACTIVE_WINDOW` on the root window.
Event-driven: the watcher selects PropertyNotify on the root window and blocks in `select()` on the
X connection and a wake pipe, so it costs nothing while focus stays put and `stop()` returns at once.
`app` is the WM_CLASS class (e.g. "Code", "firefox"), `process` the name of the process owning the
window (via `_NET_WM_PID`, else the X-Resource extension's client pid), `title` the window title (the emitter redacts it; `titles=False` drops
it before it leaves this module). Needs an EWMH window manager: without one there is no active
window to report and the watcher simply waits. Window-manager races (a window destroyed between
the event and the query) are absorbed as "unknown" fields, never as an exception.
"""
from __future__ import annotations

import os
import select
import threading
from typing import Any, Callable


def focus_data(wm_class: tuple[str, str] | None, process: str | None, title: str | None,
               *, titles: bool) -> dict[str, Any]:
    """The `app.focus` data: app from WM_CLASS (class, else instance), else the process name."""
    app = ""
    if wm_class:
        app = wm_class[1] or wm_class[0] or ""
    data: dict[str, Any] = {"app": app or process or "unknown", "process": process or ""}
    if titles:
        data["title"] = title or ""
    return data


class X11FocusWatcher:
    """Runs in its own thread between `start()` and `stop()`; see the module docstring."""

    def __init__(self, on_focus: Callable[[dict[str, Any]], None], *, titles: bool,
                 display_name: str | None = None, log: Any = None) -> None:
        self._on_focus = on_focus
        self._titles = titles
        self._display_name = display_name
        self._log = log
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._display: Any = None

    def start(self) -> None:
        """Open the display (raises on failure, so the caller can report it) and start watching."""
        from Xlib import X, display

        self._display = display.Display(self._display_name)
        d = self._display
        root = d.screen().root
        self._atoms = {name: d.intern_atom(name) for name in
                       ("_NET_ACTIVE_WINDOW", "_NET_WM_PID", "_NET_WM_NAME", "UTF8_STRING")}
        root.change_attributes(event_mask=X.PropertyChangeMask)
        d.flush()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._loop, name="input-focus", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        os.write(self._wake_w, b"x")
        self._thread.join(timeout)
        self._thread = None
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._wake_r = self._wake_w = -1
        try:
            self._display.close()
        except Exception:  # the server may already be gone; closing is best effort
            pass
        self._display = None

    def _loop(self) -> None:
        from Xlib import X

        d = self._display
        last = None
        last = self._report(last)
        fd = d.fileno()
        while True:
            changed = False
            try:
                # Replies to our own queries (in `_report`) can carry the next PropertyNotify along
                # and python-xlib queues it; so drain the queue before sleeping in select(), or an
                # event already read off the socket would wait for the one after it.
                while d.pending_events():
                    ev = d.next_event()
                    if ev.type == X.PropertyNotify and ev.atom == self._atoms["_NET_ACTIVE_WINDOW"]:
                        changed = True
            except Exception as exc:  # connection lost: report and end; the source restarts us
                if self._log is not None:
                    self._log.warning("input: X connection lost: %s", exc)
                return
            if changed:
                last = self._report(last)
                continue
            ready, _, _ = select.select([fd, self._wake_r], [], [])
            if self._wake_r in ready:
                return

    def _report(self, last: Any) -> Any:
        win_id = self._active_window_id()
        if win_id is None or win_id == last:
            return last if win_id is None else win_id
        wm_class, process, title = self._describe(win_id)
        self._on_focus(focus_data(wm_class, process, title, titles=self._titles))
        return win_id

    def _active_window_id(self) -> int | None:
        from Xlib import X

        root = self._display.screen().root
        try:
            prop = root.get_full_property(self._atoms["_NET_ACTIVE_WINDOW"], X.AnyPropertyType)
        except Exception:
            return None
        if prop is None or not len(prop.value) or not prop.value[0]:
            return None
        return int(prop.value[0])

    def _client_pid(self, win_id: int) -> int | None:
        if not self._display.has_extension("X-Resource"):
            return None
        try:
            return _x_resource_pid(self._display, win_id)
        except Exception:
            return None

    def _describe(self, win_id: int) -> tuple[tuple[str, str] | None, str | None, str | None]:
        from Xlib import X

        win = self._display.create_resource_object("window", win_id)
        wm_class = process = title = None
        try:
            wm_class = win.get_wm_class()
        except Exception:
            pass
        try:
            pid_prop = win.get_full_property(self._atoms["_NET_WM_PID"], X.AnyPropertyType)
            if pid_prop is not None and len(pid_prop.value):
                process = _process_name(int(pid_prop.value[0]))
        except Exception:
            pass
        if process is None:
            pid = self._client_pid(win_id)
            if pid:
                process = _process_name(pid)
        if self._titles:
            try:
                p = win.get_full_property(self._atoms["_NET_WM_NAME"], self._atoms["UTF8_STRING"])
                if p is not None and p.value:
                    v = p.value
                    title = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                else:
                    title = win.get_wm_name()
                    if isinstance(title, bytes):
                        title = title.decode("latin-1")
            except Exception:
                pass
        return wm_class, process, title


def _x_resource_pid(display: Any, win_id: int) -> int | None:
    """The pid of the local client owning a window, from the X-Resource extension. Toolkits such
    as Tk do not set _NET_WM_PID; the server knows the pid of every local client regardless."""
    from Xlib.ext import res

    reply = display.res_query_client_ids([{"client": win_id, "mask": res.LocalClientPIDMask}])
    for cid in reply.ids:
        if cid.spec.mask & res.LocalClientPIDMask and len(cid.value):
            return int(cid.value[0])
    return None


def _process_name(pid: int) -> str | None:
    import psutil

    try:
        return psutil.Process(pid).name()
    except (psutil.Error, OSError):
        return None
