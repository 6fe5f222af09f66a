"""The tray icon's logic: daemon status -> what the icon shows, and the menu's actions.

Takes the control socket path (`StatePaths.socket`); gives `TrayController`, whose `refresh()` turns
the daemon's `status` into a `TraySnapshot` (one of four states, a tooltip, the lines of "What is
captured"), and whose `on_*` methods are exactly what the menu items run. `build_menu()` describes
the menu as plain `MenuEntry` values, and `icon_image()` draws each state with Pillow. Nothing here
imports pystray: `agent.commands.tray` is the thin glue that puts these on a real tray, so all of
this is testable without a display.

Promises:
- The tray is only a client of the control socket. The daemon runs without it; when the daemon is
  not reachable the state is `error` and every action that needs the daemon is disabled, and the
  next poll after the daemon comes back shows its real state again (no restart of the tray needed).
- `watch()` polls every `interval` seconds by blocking on a stop event (never a busy loop) and calls
  back only when what the user sees (state, tooltip, menu contents) changed.
- "Pause until tomorrow" means until 09:00 local time on the next calendar day.
- "Review what is captured…" opens the review page (agent/review/) in the default browser, as
  `tracecap review` does.
- "Open the local log" writes what `tracecap log` prints to `<logs>/tray-log.txt` (mode 0600) and
  opens it with the desktop's opener (`xdg-open` on Linux, `open` on macOS, the default app on
  Windows).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

from agent.errors import DaemonNotRunning, RuntimeFailure, TracecapError

RECORDING = "recording"
PAUSED = "paused"
OFF = "off"
ERROR = "error"
STATES = (RECORDING, PAUSED, OFF, ERROR)

POLL_SECONDS = 3.0
FORGET_SECONDS = 15 * 60
PAUSE_CHOICES = (("Pause 15 minutes", 15 * 60), ("Pause 1 hour", 60 * 60))
TOMORROW_HOUR = 9


# ---------------------------------------------------------------------------- pure: status -> view
def classify(status: dict[str, Any] | None) -> str:
    """The icon state for a daemon status (None: the daemon is not reachable)."""
    if status is None:
        return ERROR
    if (status.get("policy") or {}).get("error") or (status.get("journal") or {}).get("error") \
            or (status.get("journal") or {}).get("disk_full"):
        return ERROR
    if status.get("capturing"):
        return RECORDING
    if status.get("paused_until") and status.get("consent") == "opted-in":
        return PAUSED
    return OFF


def _short_time(iso: str) -> str:
    """`2024-05-01T14:05:00+0200` -> `14:05` today, `Wed 09:00` on another day."""
    try:
        when = dt.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S%z")
    except (TypeError, ValueError):
        return str(iso)
    now = dt.datetime.now(when.tzinfo)
    return when.strftime("%H:%M") if when.date() == now.date() else when.strftime("%a %H:%M")


def tooltip(status: dict[str, Any] | None, error: str | None = None) -> str:
    """One line for the icon's tooltip: the state and why."""
    state = classify(status)
    if status is None:
        return f"tracecap: error: {error or 'the daemon is not running'}"
    if state == ERROR:
        why = (status.get("policy") or {}).get("error") or (status.get("journal") or {}).get("error") \
            or status.get("reason") or "the spool disk is full"
        return f"tracecap: error: {why}"
    if state == RECORDING:
        on = [n for n, s in (status.get("sources") or {}).items() if str(s).startswith("on")]
        return f"tracecap: recording ({', '.join(on) or 'no sources running'})"
    if state == PAUSED:
        until = status.get("paused_until")
        return "tracecap: paused " + ("until resumed" if until == "until resumed"
                                       else f"until {_short_time(until)}")
    return f"tracecap: off: {status.get('reason') or status.get('consent')}"


def captured_lines(status: dict[str, Any] | None) -> list[str]:
    """The "What is captured" lines: each source's state, roots, content level, consent, uploads."""
    if status is None:
        return ["nothing: the daemon is not running"]
    lines = [f"{name}: {state}" for name, state in (status.get("sources") or {}).items()]
    lines.append("roots: " + (", ".join(status.get("roots") or []) or "none"))
    lines.append(f"content: {status.get('content')}")
    consent = f"consent: {status.get('consent')}"
    if status.get("paused_until"):
        consent += f", paused {status['paused_until']}"
    lines.append(consent)
    upload = status.get("upload") or {}
    lines.append(f"uploads to: {upload.get('url') or 'nowhere'}")
    return lines


def tomorrow_morning(now: dt.datetime) -> dt.datetime:
    """09:00 local time on the calendar day after `now` (aware or naive, kept as given)."""
    nxt = (now + dt.timedelta(days=1)).date()
    return dt.datetime.combine(nxt, dt.time(TOMORROW_HOUR), tzinfo=now.tzinfo)


def seconds_until_tomorrow(now: dt.datetime | None = None) -> float:
    """Seconds from `now` (default: the local now) until 09:00 local time tomorrow."""
    now = now or dt.datetime.now().astimezone()
    if now.tzinfo is None:
        now = now.astimezone()
    target = tomorrow_morning(now)
    # Re-resolve the offset at the target so a DST change overnight lands on 09:00 wall-clock.
    target = target.replace(tzinfo=None).astimezone()
    return max(0.0, (target - now).total_seconds())


# ---------------------------------------------------------------------------- pure: icons
COLOURS = {
    "red": (211, 47, 47, 255),
    "amber": (249, 168, 37, 255),
    "grey": (158, 158, 158, 255),
    "white": (255, 255, 255, 255),
    "dark": (33, 33, 33, 255),
}


def icon_image(state: str, size: int = 64, background: tuple[int, int, int] | None = None) -> Any:
    """A Pillow image for `state`: red filled dot (recording), amber pause bars (paused), grey
    hollow ring (off), red warning triangle with a white "!" (error). RGBA with a transparent
    background, or RGB flattened onto `background` for trays that ignore alpha (plain X11)."""
    from PIL import Image, ImageDraw

    if state not in STATES:
        raise ValueError(f"unknown tray state {state!r}")
    k = 4  # draw large, then downsample: smooth edges without a font or an antialiasing backend
    s = size * k
    img = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    m = s // 8  # margin
    if state == RECORDING:
        d.ellipse((m, m, s - m, s - m), fill=COLOURS["red"], outline=COLOURS["white"], width=s // 24)
    elif state == PAUSED:
        bar_w, gap = s // 5, s // 8
        left = (s - 2 * bar_w - gap) // 2
        r = bar_w // 3
        for x in (left, left + bar_w + gap):
            d.rounded_rectangle((x, m, x + bar_w, s - m), radius=r, fill=COLOURS["amber"])
    elif state == OFF:
        d.ellipse((m + s // 32, m + s // 32, s - m - s // 32, s - m - s // 32),
                  outline=COLOURS["grey"], width=s // 9)
    else:
        top, bottom = (s // 2, m // 2), s - m // 2
        d.polygon([top, (m // 2, bottom), (s - m // 2, bottom)], fill=COLOURS["red"])
        cx, w = s // 2, s // 12
        d.rounded_rectangle((cx - w // 2, s * 5 // 16, cx + w // 2, s * 11 // 16), radius=w // 2,
                            fill=COLOURS["white"])
        d.ellipse((cx - w * 2 // 3, s * 12 // 16, cx + w * 2 // 3, s * 12 // 16 + w * 4 // 3),
                  fill=COLOURS["white"])
    img = img.resize((size, size), Image.LANCZOS)
    if background is None:
        return img
    flat = Image.new("RGB", img.size, background)
    flat.paste(img, mask=img.getchannel("A"))
    return flat


# ---------------------------------------------------------------------------- the controller
@dataclasses.dataclass(frozen=True)
class TraySnapshot:
    state: str
    tooltip: str
    status: dict[str, Any] | None
    error: str | None = None  # why the daemon could not be reached, or the last action's failure

    @property
    def reachable(self) -> bool:
        return self.status is not None

    @property
    def recording_checked(self) -> bool:
        return bool(self.status and self.status.get("capturing"))

    def view(self) -> tuple:
        """What the user sees; `watch()` calls back only when this changes."""
        return (self.state, self.tooltip, tuple(captured_lines(self.status)), self.recording_checked)


@dataclasses.dataclass(frozen=True)
class MenuEntry:
    """One menu item. `action` is what clicking runs; `items` makes it a submenu."""
    label: str
    action: Callable[[], Any] | None = None
    checked: bool | None = None  # None: not a check item
    enabled: bool = True
    items: tuple["MenuEntry", ...] = ()
    default: bool = False


Requester = Callable[..., Any]


class TrayController:
    """Menu actions and state for the tray, over the control socket at `socket_path`.

    Every `on_*` method sends one control request (or two, for turning recording on from a pause),
    then refreshes, and returns the new state; a failure is kept in `snapshot.error` and shown in
    the tooltip instead of being raised, because a menu click has nobody to raise to."""

    def __init__(self, socket_path: Path, *, timeout: float = 5.0, logs_dir: Path | None = None,
                 opener: Sequence[str] | None = None, requester: Requester | None = None) -> None:
        from agent import control

        self.socket_path = Path(socket_path)
        self.timeout = timeout
        self.logs_dir = logs_dir
        self.opener = list(opener) if opener is not None else None
        self._request = requester or control.request
        self._lock = threading.Lock()
        self.snapshot = TraySnapshot(ERROR, tooltip(None), None, "not yet connected")

    # ------------------------------------------------------------------ reading state
    def _call(self, op: str, **params: Any) -> Any:
        return self._request(self.socket_path, op, timeout=self.timeout, **params)

    def refresh(self) -> str:
        """Ask the daemon for its status; returns the new state (`error` if unreachable)."""
        try:
            status = self._call("status")
            error = None
        except DaemonNotRunning:
            status, error = None, "the daemon is not running"
        except (TracecapError, OSError, ValueError) as exc:
            status, error = None, str(exc) or type(exc).__name__
        with self._lock:
            self.snapshot = TraySnapshot(classify(status), tooltip(status, error), status, error)
        return self.snapshot.state

    def _act(self, *requests: tuple[str, dict[str, Any]]) -> str:
        failure = None
        for op, params in requests:
            try:
                self._call(op, **params)
            except TracecapError as exc:
                failure = str(exc)
                break
        state = self.refresh()
        if failure:
            with self._lock:
                snap = self.snapshot
                self.snapshot = dataclasses.replace(snap, error=failure,
                                                    tooltip=f"{snap.tooltip} ({failure})")
        return state

    # ------------------------------------------------------------------ menu actions
    def on_toggle_recording(self) -> str:
        """Recording on -> opt out. Off -> opt in, and end a pause, so recording really starts."""
        st = self.snapshot.status
        if st is None:
            self.refresh()
            st = self.snapshot.status
        if st is not None and st.get("capturing"):
            return self.on_opt_out()
        requests: list[tuple[str, dict[str, Any]]] = [("opt-in", {})]
        if st is not None and st.get("paused_until"):
            requests.append(("resume", {}))
        return self._act(*requests)

    def on_opt_in(self) -> str:
        return self._act(("opt-in", {}))

    def on_opt_out(self) -> str:
        return self._act(("opt-out", {}))

    def on_pause(self, seconds: float | None) -> str:
        """Pause for `seconds`, or until resumed when None."""
        return self._act(("pause", {"seconds": seconds}))

    def on_pause_until_tomorrow(self, now: dt.datetime | None = None) -> str:
        return self.on_pause(seconds_until_tomorrow(now))

    def on_resume(self) -> str:
        return self._act(("resume", {}))

    def on_forget(self, seconds: float = FORGET_SECONDS) -> int | None:
        """Forget the last `seconds`; returns how many events were removed (None on failure)."""
        try:
            res = self._request(self.socket_path, "forget", timeout=max(self.timeout, 120.0),
                                seconds=seconds)
        except TracecapError as exc:
            self._act()
            with self._lock:
                self.snapshot = dataclasses.replace(self.snapshot, error=str(exc))
            return None
        self.refresh()
        return int(res.get("count", 0))

    def on_review(self) -> str:
        """Open the review page (what `tracecap review` does); returns its address."""
        try:
            url = self._call("review")["url"]
        except DaemonNotRunning:
            raise RuntimeFailure("the daemon is not running, and it serves the review page") from None
        if self.opener is not None:  # the same opener as the log, when one was given
            subprocess.Popen([*self.opener, url], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
            return url
        import webbrowser

        if not webbrowser.open(url, new=2):
            raise RuntimeFailure("no browser could be opened; run `tracecap review --no-browser` "
                                 "and open the address it prints")
        return url

    def on_open_log(self) -> Path:
        """Write `tracecap log` output to `<logs>/tray-log.txt` and open it; returns the file."""
        out = self.log_view_path()
        out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            r = subprocess.run([sys.executable, "-m", "agent.cli", "log"], stdout=f,
                               stderr=subprocess.PIPE, text=True, timeout=60,
                               stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeFailure(f"`tracecap log` failed: {r.stderr.strip() or r.returncode}")
        opener = self.opener if self.opener is not None else default_opener()
        if opener is None:
            os.startfile(str(out))  # type: ignore[attr-defined]  # Windows only
            return out
        try:
            subprocess.Popen([*opener, str(out)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        except FileNotFoundError:
            raise RuntimeFailure(f"cannot open {out}: {opener[0]} is not installed; "
                                 f"open that file yourself or run `tracecap log`") from None
        return out

    def log_view_path(self) -> Path:
        if self.logs_dir is None:
            from agent.paths import StatePaths

            self.logs_dir = StatePaths.from_env().logs
        return Path(self.logs_dir) / "tray-log.txt"

    def safe(self, action: Callable[[], Any]) -> Callable[[], None]:
        """Wrap a menu action: a failure becomes the tooltip's last words, never a crash."""
        def run() -> None:
            try:
                action()
            except (TracecapError, OSError, subprocess.SubprocessError) as exc:
                with self._lock:
                    snap = self.snapshot
                    self.snapshot = dataclasses.replace(snap, error=str(exc),
                                                        tooltip=f"{snap.tooltip} ({exc})")
        return run

    # ------------------------------------------------------------------ polling
    def watch(self, stop: threading.Event, on_change: Callable[[TraySnapshot], None],
              interval: float = POLL_SECONDS) -> None:
        """Refresh every `interval` s until `stop` is set; call `on_change` when the view changes
        (and once at the start). A daemon restart shows as error, then its real state again."""
        last = None
        while True:
            self.refresh()
            snap = self.snapshot
            if snap.view() != last:
                last = snap.view()
                on_change(snap)
            if stop.wait(interval):
                return


def default_opener() -> list[str] | None:
    """The command that opens a file in the desktop's default app; None means `os.startfile`."""
    if sys.platform == "darwin":
        return ["open"]
    if sys.platform == "win32":
        return None
    return ["xdg-open"]


def build_menu(ctl: TrayController, on_quit: Callable[[], Any],
               now: Callable[[], dt.datetime] | None = None) -> list[MenuEntry]:
    """The tray menu for the controller's current snapshot. Each entry's `action` is the exact
    callable the real menu runs (wrapped by `ctl.safe`)."""
    snap = ctl.snapshot
    live = snap.reachable
    st = snap.status or {}
    paused = bool(st.get("paused_until"))
    consent_disabled = st.get("consent") == "disabled"
    entries = [
        MenuEntry("Recording", ctl.safe(ctl.on_toggle_recording), checked=snap.recording_checked,
                  enabled=live and not consent_disabled, default=False),
    ]
    for label, secs in PAUSE_CHOICES:
        entries.append(MenuEntry(label, ctl.safe(lambda s=secs: ctl.on_pause(s)),
                                 enabled=live and snap.state == RECORDING))
    entries.append(MenuEntry("Pause until tomorrow 09:00",
                             ctl.safe(lambda: ctl.on_pause_until_tomorrow(now() if now else None)),
                             enabled=live and snap.state == RECORDING))
    entries.append(MenuEntry("Resume", ctl.safe(ctl.on_resume), enabled=live and paused))
    entries.append(MenuEntry("Forget last 15 minutes", ctl.safe(ctl.on_forget), enabled=live))
    entries.append(MenuEntry("Review what is captured…", ctl.safe(ctl.on_review), enabled=live))
    entries.append(MenuEntry("What is captured…", items=tuple(
        MenuEntry(line, enabled=False) for line in captured_lines(snap.status))))
    entries.append(MenuEntry("Open the local log", ctl.safe(ctl.on_open_log)))
    entries.append(MenuEntry("Quit tray", on_quit))
    return entries
