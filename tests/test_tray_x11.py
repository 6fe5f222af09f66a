"""`tracecap tray` end to end on a real X server: Xvfb, trayer as the XEMBED system tray, a real
daemon in a temporary TRACECAP_HOME and the tray as its own process.

The menu's actions are driven through `TrayController` (the code the menu items run) and, once,
by clicking the real icon and its popup menu with xdotool; the daemon's state is read back with
`tracecap status --json`, and the tray process's own view with its X window name (its tooltip)
and a screenshot of the tray. Set TRACECAP_TRAY_SCREENSHOTS=DIR to keep the four screenshots
(docs/tray/ holds the checked-in ones)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.commands.tray import X11_TILE
from agent.tray import ERROR, OFF, PAUSED, RECORDING, TrayController
from tests.xdisplay import start_xvfb

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not all(shutil.which(t) for t in ("Xvfb", "trayer", "xdotool", "import", "convert")),
    reason="needs Xvfb, trayer, xdotool and imagemagick")]

TRACECAP = shutil.which("tracecap", path=os.path.dirname(sys.executable)) or "tracecap"
PANEL_HEIGHT = 26  # trayer's border is 1 px, so the icon window is 24x24: square, not stretched
SCREEN = (1024, 768)
SCALE = 4  # screenshots are enlarged with nearest-neighbour so every pixel stays what X drew


def wait_for(pred, timeout: float, what):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def xdisplay(tmp_path_factory):
    """Xvfb on a display number it picks itself (-displayfd), with trayer docked at the top right."""
    xvfb, display = start_xvfb("%dx%dx24" % SCREEN)
    procs = [xvfb]
    try:
        env = dict(os.environ, DISPLAY=display)
        procs.append(start_trayer(env, tmp_path_factory.mktemp("trayer")))
        yield env
    finally:
        for p in reversed(procs):
            _end(p)


def start_trayer(env: dict, logs: Path) -> subprocess.Popen:
    """trayer, the XEMBED system tray, as a panel at the top right; returns once its panel is up."""
    log = logs / "trayer.log"
    with open(log, "ab") as out:
        trayer = subprocess.Popen(["trayer", "--edge", "top", "--align", "right", "--widthtype", "request",
                                   "--height", str(PANEL_HEIGHT), "--SetDockType", "true",
                                   "--transparent", "false", "--tint", "0x2b2b2b"], env=env,
                                  stdout=out, stderr=out)
    wait_for(lambda: _xdo(env, "search", "--classname", "panel") or trayer.poll() is not None, 15,
             lambda: f"trayer's panel: {log.read_text(errors='replace')!r}")
    assert trayer.poll() is None, f"trayer exited {trayer.returncode}: {log.read_text(errors='replace')!r}"
    return trayer


def _end(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


def _xdo(env, *args) -> str:
    r = subprocess.run(["xdotool", *args], env=env, capture_output=True, text=True, timeout=15)
    return r.stdout.strip() if r.returncode == 0 else ""


class Daemon:
    def __init__(self, home: Path) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        policy = home / "policy.toml"
        policy.write_text("")  # built-in defaults, never the machine's /etc policy
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TRACECAP_")}
        self.env.pop("DISPLAY", None)  # the daemon's input source must not watch the test display
        self.env.update(TRACECAP_HOME=str(home), TRACECAP_POLICY=str(policy))
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Daemon":
        log = open(self.home / "daemon.stderr", "ab")
        self.proc = subprocess.Popen([TRACECAP, "daemon"], env=self.env, stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)
        wait_for(lambda: self.cli("status", "--json").returncode == 0, 20, "the daemon to answer")
        return self

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([TRACECAP, *args], env=self.env, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)

    def status(self) -> dict:
        r = self.cli("status", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path / "home").start()
    yield d
    d.stop()


@pytest.fixture
def tray(xdisplay, daemon):
    t = start_tray(dict(daemon.env, DISPLAY=xdisplay["DISPLAY"]), daemon.home)
    try:
        yield t
    finally:
        _end(t.proc)


def start_tray(env: dict, home: Path) -> "Tray":
    """`tracecap tray` as its own process; returns once its icon window exists."""
    with open(home / "tray.stderr", "wb") as err:
        proc = subprocess.Popen([TRACECAP, "tray", "--interval", "0.5"], env=env, stdout=err,
                                stderr=err, stdin=subprocess.DEVNULL)

    def said() -> str:
        return (home / "tray.stderr").read_text(errors="replace")

    try:
        wid = wait_for(lambda: _xdo(env, "search", "--classname", "tracecap") or proc.poll() is not None,
                       20, lambda: f"the tray icon window (the tray said {said()!r})")
        assert proc.poll() is None, f"the tray exited {proc.returncode}: {said()!r}"
    except BaseException:
        _end(proc)
        raise
    return Tray(proc, env, wid.split()[0], home / "tray.stderr")


class Tray:
    def __init__(self, proc, env, wid, stderr_path) -> None:
        self.proc, self.env, self.wid, self.stderr_path = proc, env, wid, stderr_path

    def title(self) -> str:
        return _xdo(self.env, "getwindowname", self.wid)

    def wait_title(self, prefix: str, timeout: float = 10) -> str:
        return wait_for(lambda: (t := self.title()).startswith(prefix) and t, timeout,
                        lambda: f"the tray to show {prefix!r} (it shows {self.title()!r})")

    def docked(self) -> bool:
        """In trayer's panel at the top right, at full size, inside a window of the tray."""
        field = self._xwininfo("-children", "-stats")
        x, y, w, h = _geometry(field)
        return (field["Map State"] == "IsViewable" and x >= SCREEN[0] - 100 and y < PANEL_HEIGHT
                and min(w, h) >= 16 and "(the root window)" not in field["Parent window id"])

    def geometry(self) -> tuple[int, int, int, int]:
        return _geometry(self._xwininfo())

    def _xwininfo(self, *options: str) -> dict[str, str]:
        out = subprocess.run(["xwininfo", *options, "-id", self.wid], env=self.env,
                             capture_output=True, text=True, timeout=15).stdout
        return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}

    def screenshot(self, out: Path) -> tuple[int, int, int]:
        """The tray area, cropped, enlarged; returns the colour at the icon's centre.

        The title (a window property) can change before the redrawn icon reaches the screen, so
        capture until two consecutive captures of the icon agree and it is drawn (more than one
        colour; a loaded machine can show the empty window for a while), at most about 10 s."""
        from PIL import Image

        raw = out.with_suffix(".raw.png")
        previous = None
        for _ in range(50):
            x, y, w, h = self.geometry()
            subprocess.run(["import", "-window", "root", str(raw)], env=self.env, check=True, timeout=30)
            with Image.open(raw) as img:
                icon = img.convert("RGB").crop((x, y, x + w, y + h)).tobytes()
            # trayer re-lays icons out after changes; a capture counts only once the icon's window
            # has its full size and neither it nor its pixels moved since the last capture
            current = ((x, y, w, h), icon)
            drawn = len(set(icon[i:i + 3] for i in range(0, len(icon), 3))) > 1
            if current == previous and min(w, h) >= 16 and drawn:
                break
            previous = current
            time.sleep(0.2)
        else:
            raise AssertionError(f"the icon at {x},{y} {w}x{h} was not drawn and still within "
                                 f"10 s:\n{self.diagnose()}")
        pad = 6
        left, width = max(0, x - pad * 3), w + pad * 4
        subprocess.run(["convert", str(raw), "-crop", f"{width}x{PANEL_HEIGHT}+{left}+0", "+repage",
                        "-filter", "point", "-resize", f"{SCALE * 100}%", str(out)], check=True, timeout=30)
        with Image.open(raw) as img:
            rgb = img.convert("RGB")
            self.last_icon_pixels = [rgb.getpixel((i, j)) for j in range(y, y + h) for i in range(x, x + w)]
            return rgb.getpixel((x + w // 2, y + h // 2))

    def diagnose(self) -> str:
        """What X says of the icon window and its parents, and what the tray printed."""
        def run(*cmd: str) -> str:
            r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=15)
            return r.stdout + r.stderr
        return "\n".join([run("xwininfo", "-root", "-tree"), run("xwininfo", "-id", self.wid),
                          run("xprop", "-id", self.wid), self.stderr_path.read_text(errors="replace")])

    def alive(self) -> bool:
        return self.proc.poll() is None


def _geometry(field: dict[str, str]) -> tuple[int, int, int, int]:
    return (int(field["Absolute upper-left X"]), int(field["Absolute upper-left Y"]),
            int(field["Width"]), int(field["Height"]))


def _keep(shot: Path) -> None:
    keep = os.environ.get("TRACECAP_TRAY_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)


def test_tray_follows_menu_actions_and_the_daemon(tray, daemon, tmp_path):
    ctl = TrayController(daemon.home / "run" / "control.sock")
    centre = {}

    # off: a fresh personal-mode daemon waits for the user's opt-in
    assert ctl.refresh() == OFF
    tray.wait_title("tracecap: off: not opted in")
    centre[OFF] = tray.screenshot(tmp_path / "off.png")

    # the "Recording" item opts in
    assert ctl.on_toggle_recording() == RECORDING
    st = daemon.status()
    assert st["capturing"] and st["consent"] == "opted-in"
    tray.wait_title("tracecap: recording")
    centre[RECORDING] = tray.screenshot(tmp_path / "recording.png")

    # "Pause 15 minutes": the daemon's pause ends 15 minutes from now
    before = time.time()
    assert ctl.on_pause(15 * 60) == PAUSED
    st = daemon.status()
    assert not st["capturing"] and st["paused_until"] and st["paused_until"] != "until resumed"
    until = time.mktime(time.strptime(st["paused_until"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert 14 * 60 <= until - before <= 16 * 60
    tray.wait_title("tracecap: paused until ")
    centre[PAUSED] = tray.screenshot(tmp_path / "paused.png")

    # "Resume"
    assert ctl.on_resume() == RECORDING
    assert daemon.status()["capturing"]
    tray.wait_title("tracecap: recording")

    # "Forget last 15 minutes": a note journaled just now is gone afterwards
    assert daemon.cli("note", "about to be forgotten").returncode == 0
    assert any(e["kind"] == "user.note" for e in _events(daemon))
    removed = ctl.on_forget()
    assert removed is not None and removed >= 1
    kinds = [e["kind"] for e in _events(daemon)]
    assert "user.note" not in kinds and "agent.forget" in kinds

    # the "Recording" item again: opts out
    assert ctl.on_toggle_recording() == OFF
    st = daemon.status()
    assert not st["capturing"] and st["consent"] == "opted-out"
    tray.wait_title("tracecap: off: not opted in")

    # the daemon goes away: error; it comes back: the tray reconnects by itself
    assert ctl.on_toggle_recording() == RECORDING
    tray.wait_title("tracecap: recording")
    daemon.stop()
    tray.wait_title("tracecap: error: the daemon is not running")
    centre[ERROR] = tray.screenshot(tmp_path / "error.png")
    error_pixels = tray.last_icon_pixels
    assert ctl.refresh() == ERROR
    daemon.start()
    tray.wait_title("tracecap: recording", timeout=15)
    assert ctl.refresh() == RECORDING
    assert tray.alive(), tray.stderr_path.read_text()

    # what the screen shows at the icon's centre: red dot, amber bar, hollow ring, white "!"
    r, g, b = centre[RECORDING]
    assert r > 180 and g < 80 and b < 80, centre
    # the "!" is a few pixels wide, so which pixel is exactly central depends on the size the tray
    # gives the icon: look for the white glyph on the red sign anywhere in the icon instead
    assert any(min(px) > 200 for px in error_pixels), centre
    assert any(px[0] > 180 and px[1] < 90 and px[2] < 90 for px in error_pixels), centre
    assert centre[OFF] == (43, 43, 43), centre  # the tile shows through the ring
    shots = {s: (tmp_path / f"{s}.png").read_bytes() for s in (RECORDING, PAUSED, OFF, ERROR)}
    assert len(set(shots.values())) == 4
    for s in shots:
        _keep(tmp_path / f"{s}.png")


def test_clicking_the_icon_opens_the_menu_and_its_items_work(tray, daemon):
    """The real menu: left click on the icon, then click "Pause 15 minutes" in the popup."""
    assert daemon.cli("opt-in").returncode == 0
    tray.wait_title("tracecap: recording")
    wait_for(tray.docked, 15, lambda: f"the icon to dock:\n{tray.diagnose()}")
    x, y, w, h = tray.geometry()

    def visible_menu() -> str:
        return (_xdo(tray.env, "search", "--onlyvisible", "--class", "Menu")
                or _xdo(tray.env, "search", "--onlyvisible", "--classname", "menu"))

    # On a loaded machine the first click can land before the icon takes input: click again, as
    # a person would, up to three times.
    for attempt in range(3):
        subprocess.run(["xdotool", "mousemove", str(x + w // 2), str(y + h // 2), "click", "1"],
                       env=tray.env, check=True, timeout=15)
        try:
            menu = wait_for(visible_menu, 8, "the popup menu")
            break
        except AssertionError:
            if attempt == 2:
                raise
    mwid = menu.split()[-1]
    geo = subprocess.run(["xwininfo", "-id", mwid], env=tray.env, capture_output=True, text=True,
                         timeout=15).stdout
    field = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in geo.splitlines())}
    mx, my = int(field["Absolute upper-left X"]), int(field["Absolute upper-left Y"])
    mh = int(field["Height"])
    # ten equal rows: Recording, Pause 15 minutes, ...; click the middle of the second
    row = mh / 10
    subprocess.run(["xdotool", "mousemove", str(mx + 40), str(int(my + row * 1.5)), "click", "1"],
                   env=tray.env, check=True, timeout=15)
    st = wait_for(lambda: (s := daemon.status())["paused_until"] and s, 10, "the pause to reach the daemon")
    assert not st["capturing"] and st["paused_until"] != "until resumed"
    tray.wait_title("tracecap: paused until ")
    assert tray.alive()


def _events(daemon: Daemon) -> list[dict]:
    r = daemon.cli("log", "--json")
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def test_the_icon_docks_into_a_tray_that_starts_after_it_and_into_a_restarted_one(daemon, tmp_path):
    """At login the tray icon can start before the desktop's panel, and panels restart: the icon
    appears in whichever tray takes the system tray selection, whenever it does."""
    xvfb, display = start_xvfb("%dx%dx24" % SCREEN)
    procs = [xvfb]
    try:
        tray = start_tray(dict(daemon.env, DISPLAY=display), daemon.home)
        procs.append(tray.proc)
        time.sleep(1.5)  # it has looked for a tray, found none and drawn nothing
        assert not tray.docked()
        for round_ in ("first", "restarted"):
            trayer = start_trayer(tray.env, tmp_path)
            procs.append(trayer)
            wait_for(tray.docked, 15, lambda: f"the icon to dock into the {round_} tray:\n{tray.diagnose()}")
            assert tray.screenshot(tmp_path / f"{round_}.png") == X11_TILE  # off: the ring's hollow
            assert tray.alive(), tray.stderr_path.read_text()
            _end(trayer)
        assert tray.alive(), tray.stderr_path.read_text()
    finally:
        for p in reversed(procs):
            _end(p)
