"""The input source on a real X server: Xvfb with RECORD, xdotool as the user, openbox as the window
manager. Counts must match what was typed and clicked, the typed text must appear nowhere, focus
changes must be reported, and listeners must be off while capture is off."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.paths import StatePaths
from agent.sources.base import SourceContext
from agent.sources.input import InputSource
from schemas.validate import EventValidator
from tests.xdisplay import start_xvfb

pytestmark = pytest.mark.skipif(shutil.which("Xvfb") is None or shutil.which("xdotool") is None,
                                reason="Xvfb and xdotool are needed")

VALIDATOR = EventValidator()
SECRET = "zqxjvkwtrmbh"  # typed by xdotool; lowercase so each character is exactly one key press


@pytest.fixture(scope="module")
def xserver():
    xvfb, display = start_xvfb()
    try:
        yield display
    finally:
        xvfb.terminate()
        xvfb.wait(timeout=10)


@pytest.fixture
def display(xserver, monkeypatch):
    monkeypatch.setenv("DISPLAY", xserver)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("XDG_SESSION_TYPE", raising=False)
    return xserver


def xdo(*args: str) -> None:
    subprocess.run(["xdotool", *args], check=True, timeout=20)


class Harness:
    """A SourceContext whose emit writes JSON lines under a state dir, like a journal would."""

    def __init__(self, tmp: Path, policy: dict, capturing: bool = True) -> None:
        self.paths = StatePaths.from_env({"TRACECAP_HOME": str(tmp / "state")}).ensure()
        self.events: list[tuple[str, dict]] = []
        self.invalid: list[str] = []  # schema errors, asserted in close()
        self.states: list[str] = []
        self.on = threading.Event()
        if capturing:
            self.on.set()
        self.out = self.paths.spool / "events.jsonl"
        log = logging.getLogger(f"test.input.{id(self)}")
        log.setLevel(logging.DEBUG)
        self.handler = logging.FileHandler(self.paths.log_file)
        log.addHandler(self.handler)
        self.lock = threading.Lock()
        self.ctx = SourceContext(name="input", policy=policy, paths=self.paths, emit=self.emit,
                                 capturing=self.on.is_set, log=log, set_state=self.states.append)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=InputSource(self.ctx).run, args=(self.stop,),
                                       daemon=True)

    def emit(self, kind, data, *, ts=None, session=None, source=None):
        event = {"v": 1, "seq": 1, "ts": ts or time.time_ns(), "kind": kind, "source": "input",
                 "session": session, "data": data}
        with self.lock:
            self.invalid.extend(VALIDATOR.errors(event))
            self.events.append((kind, dict(data)))
            with self.out.open("a") as f:
                f.write(json.dumps({"kind": kind, "data": data}) + "\n")

    def start(self) -> "Harness":
        self.thread.start()
        self.wait_state("running")
        return self

    def wait_state(self, prefix: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.states and self.states[-1].startswith(prefix):
                return
            time.sleep(0.05)
        raise AssertionError(f"state never became {prefix!r}: {self.states}")

    def wait_for(self, pred, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if pred(self.events):
                    return
            time.sleep(0.05)
        raise AssertionError(f"condition not met; events: {self.events}")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.handler.close()
        assert not self.thread.is_alive(), "run() must return once stop is set"
        assert self.invalid == [], self.invalid

    def totals(self) -> dict[str, int]:
        acts = [d for k, d in self.events if k == "input.activity"]
        return {f: sum(d[f] for d in acts) for f in ("keys", "clicks", "scrolls", "moves")}


def test_counts_match_and_the_typed_text_is_nowhere(display, tmp_path):
    h = Harness(tmp_path, {"input": {"window": "1s", "idle_timeout": "120s"}}).start()
    try:
        time.sleep(0.3)
        xdo("type", "--delay", "30", SECRET)
        xdo("mousemove", "100", "100")
        xdo("click", "1")
        xdo("click", "--repeat", "2", "--delay", "50", "3")
        xdo("click", "--repeat", "3", "--delay", "50", "5")  # button 5: scroll down
        h.wait_for(lambda ev: sum(d["keys"] for k, d in ev if k == "input.activity") >= len(SECRET)
                   and sum(d["scrolls"] for k, d in ev if k == "input.activity") >= 3, timeout=10)
    finally:
        h.close()
    t = h.totals()
    assert t["keys"] == len(SECRET), h.events
    assert t["clicks"] == 3 and t["scrolls"] == 3 and t["moves"] >= 1, t
    for kind, data in h.events:
        if kind == "input.activity":
            assert set(data) == {"start", "end", "keys", "clicks", "scrolls", "moves"}
            assert data["start"] < data["end"]
    for path in Path(h.paths.config).parent.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert SECRET.encode() not in blob and SECRET[:6].encode() not in blob, path
    assert h.out.exists() and h.out.stat().st_size > 0


def test_idle_then_active(display, tmp_path):
    h = Harness(tmp_path, {"input": {"window": "1s", "idle_timeout": "1s"}}).start()
    try:
        xdo("key", "a")
        h.wait_for(lambda ev: any(k == "input.idle" for k, _ in ev), timeout=6)
        time.sleep(0.3)
        xdo("key", "b")
        h.wait_for(lambda ev: any(k == "input.active" for k, _ in ev), timeout=6)
        h.wait_for(lambda ev: [k for k, _ in ev].count("input.activity") >= 2, timeout=6)
    finally:
        h.close()
    kinds = [k for k, _ in h.events]
    assert kinds.index("input.idle") < kinds.index("input.active")
    active = [d for k, d in h.events if k == "input.active"][0]
    assert active["idle_ms"] >= 1000
    assert h.totals()["keys"] == 2


def test_listeners_are_unhooked_while_capture_is_off(display, tmp_path):
    h = Harness(tmp_path, {"input": {"window": "1s"}}, capturing=False)
    before = {t.name for t in threading.enumerate()}
    h.thread.start()
    try:
        time.sleep(0.5)
        xdo("type", "--delay", "20", "abc")
        time.sleep(1.5)
        assert not h.events
        h.on.set()
        h.ctx.changed.set()
        h.wait_state("running")
        time.sleep(0.3)
        xdo("type", "--delay", "20", "de")
        h.wait_for(lambda ev: any(k == "input.activity" for k, _ in ev), timeout=5)
        h.on.clear()
        h.ctx.changed.set()
        h.wait_state("running (capture off")
        # The pynput listener threads are gone, not merely ignored.
        leftover = [t for t in threading.enumerate() if t.name not in before
                    and t.is_alive() and "Listener" in type(t).__name__]
        assert not leftover, leftover
        xdo("type", "--delay", "20", "fgh")
        time.sleep(1.5)
    finally:
        h.close()
    assert h.totals()["keys"] == 2, h.events


def _tk_window(display: str, klass: str, title: str) -> subprocess.Popen:
    code = ("import tkinter as tk, sys\n"
            f"r = tk.Tk(className={klass!r})\nr.title({title!r})\nr.geometry('200x100')\n"
            "r.after(30000, r.destroy)\nr.mainloop()\n")
    return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "DISPLAY": display})


def _wait_window(title: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = subprocess.run(["xdotool", "search", "--name", f"^{title}$"], capture_output=True,
                           text=True, timeout=10)
        if r.stdout.strip():
            return r.stdout.split()[0]
        time.sleep(0.1)
    raise AssertionError(f"window {title} never appeared")


def _root_prop(name: str) -> str:
    return subprocess.run(["xprop", "-root", name], capture_output=True, text=True,
                          timeout=10).stdout


def _until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _activate(win: str) -> None:
    """What a user's click on a window does: the window manager makes it the active window."""
    def active() -> bool:
        subprocess.run(["xdotool", "windowactivate", win], capture_output=True, timeout=10)
        r = subprocess.run(["xdotool", "getactivewindow"], capture_output=True, text=True,
                           timeout=10)
        return r.stdout.strip() == win
    _until(active, 5, f"window {win} to become active")


@pytest.fixture(scope="module")
def openbox(xserver):
    if shutil.which("openbox") is None or shutil.which("xprop") is None:
        pytest.skip("openbox (an EWMH window manager) and xprop are needed")
    p = subprocess.Popen(["openbox", "--sm-disable"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env={**os.environ, "DISPLAY": xserver})
    yield p
    p.terminate()
    p.wait(timeout=10)


@pytest.fixture
def wm(openbox, display):
    _until(lambda: "window id" in _root_prop("_NET_SUPPORTING_WM_CHECK"), 10, "openbox")
    return openbox


@pytest.mark.parametrize("titles", [True, False])
def test_focus_changes_are_reported(wm, display, tmp_path, titles):
    a = _tk_window(display, "Alphaedit", "alpha-window")
    b = _tk_window(display, "Betaterm", "beta-window")
    h = None
    try:
        wa, wb = _wait_window("alpha-window"), _wait_window("beta-window")
        _until(lambda: _root_prop("_NET_CLIENT_LIST").count("0x") >= 2, 10, "both windows managed")
        _activate(wb)
        h = Harness(tmp_path, {"input": {"titles": titles}}).start()

        def focused(ev) -> list[str]:
            return [d["app"] for k, d in ev if k == "app.focus"]
        # The watcher reports the window in front once it runs, then each change: a change made
        # before its thread got to the first report (a loaded machine) would be that report, and
        # two changes before it reads the active window are one. Change focus only once the
        # previous focus was reported.
        h.wait_for(lambda ev: len(focused(ev)) >= 1, timeout=8)
        for n, win in enumerate((wa, wb, wa), start=2):
            _activate(win)
            h.wait_for(lambda ev: len(focused(ev)) >= n, timeout=8)
        h.wait_for(lambda ev: [d["app"] for k, d in ev if k == "app.focus"]
                   == ["Betaterm", "Alphaedit", "Betaterm", "Alphaedit"], timeout=8)
    finally:
        if h is not None:
            h.close()
        for p in (a, b):
            p.terminate()
            p.wait(timeout=10)
    focus = [d for k, d in h.events if k == "app.focus"]
    last = focus[-3:]
    if titles:
        assert [d["title"] for d in last] == ["alpha-window", "beta-window", "alpha-window"]
    else:
        assert all("title" not in d for d in focus)
        assert "alpha-window" not in h.out.read_text()
    assert all(d["process"].startswith("python") for d in focus), focus


def test_no_display_reports_unavailable_and_blocks_until_stop(monkeypatch, tmp_path):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("XDG_SESSION_TYPE", raising=False)
    h = Harness(tmp_path, {})
    h.thread.start()
    h.wait_state("unavailable: no X display")
    assert h.thread.is_alive()  # blocks, so the supervisor does not restart it in a loop
    h.close()


def test_wayland_reports_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_SESSION_TYPE", "wayland")
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    h = Harness(tmp_path, {})
    h.thread.start()
    h.wait_state("unavailable: Wayland session")
    h.close()


def test_real_daemon_counts_keys_and_keeps_no_trace_of_the_text(xserver, daemon_factory, tmp_path):
    """The whole pipeline: `tracecap daemon` on the X server, xdotool types, `tracecap log` shows
    the counts, and nothing under TRACECAP_HOME holds the typed text."""
    policy = tmp_path / "policy.toml"
    policy.write_text('[capture]\nsources = ["input"]\n[input]\nwindow = "1s"\n')
    policy.chmod(0o644)
    d = daemon_factory(tmp_path / "home", policy=policy, extra_env={"DISPLAY": xserver})
    d.home.mkdir(parents=True, exist_ok=True)
    d.cli("opt-in")
    d.start()
    try:
        _until(lambda: d.status()["sources"].get("input", "").startswith("running"), 15,
               "the input source to run")
        subprocess.run(["xdotool", "type", "--delay", "30", SECRET], check=True, timeout=20,
                       env={**os.environ, "DISPLAY": xserver})

        def counted() -> bool:
            acts = d.events("--kind", "input.activity")
            return sum(e["data"]["keys"] for e in acts) >= len(SECRET)
        _until(counted, 15, "the key presses to be journaled")
    finally:
        assert d.stop() == 0
    acts = [e for e in d.events("--kind", "input.activity")]
    assert sum(e["data"]["keys"] for e in acts) == len(SECRET)
    assert all(e["source"] == "input" for e in acts)
    for path in d.home.rglob("*"):
        if path.is_file():
            blob = path.read_bytes()
            assert SECRET.encode() not in blob and SECRET[:6].encode() not in blob, path
