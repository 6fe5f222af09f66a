"""The tray's logic without a display: status -> state and tooltip, the "What is captured" lines,
"until tomorrow", the four icons, the menu's enabled/checked states, and the controller against a
real daemon's control socket when the daemon is down."""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.tray import (ERROR, OFF, PAUSED, RECORDING, STATES, TrayController, build_menu, captured_lines,
                        classify, icon_image, seconds_until_tomorrow, tomorrow_morning, tooltip)


def status(**over):
    base = {
        "capturing": True, "reason": "", "consent": "opted-in", "paused_until": None,
        "sources": {"files": "on", "shell": "on", "tests": "on (with shell)", "git": "on",
                    "tools": "off: not in policy capture.sources", "input": "unavailable: no display"},
        "roots": ["~/src"], "content": "full",
        "journal": {"error": None, "disk_full": False}, "upload": {"url": "file:///tmp/outbox"},
        "policy": {"error": None, "origin": "built-in"},
    }
    base.update(over)
    return base


@pytest.mark.parametrize("st, want", [
    (None, ERROR),
    (status(), RECORDING),
    (status(capturing=False, paused_until="until resumed", reason="paused"), PAUSED),
    (status(capturing=False, paused_until="2030-01-01T09:00:00+0000"), PAUSED),
    (status(capturing=False, consent="pending", reason="not opted in"), OFF),
    (status(capturing=False, consent="opted-out", reason="opted out"), OFF),
    # a pause left over from before opting out is not "paused": consent is what stops capture
    (status(capturing=False, consent="opted-out", paused_until="until resumed"), OFF),
    (status(capturing=False, consent="disabled", reason="disabled by policy"), OFF),
    (status(capturing=False, policy={"error": "policy.toml is world-writable"}), ERROR),
    (status(capturing=False, journal={"error": "EIO", "disk_full": False}), ERROR),
    (status(capturing=False, journal={"error": None, "disk_full": True}), ERROR),
])
def test_classify(st, want):
    assert classify(st) == want


@pytest.mark.parametrize("st, error, want", [
    (None, None, "tracecap: error: the daemon is not running"),
    (None, "permission denied", "tracecap: error: permission denied"),
    (status(), None, "tracecap: recording (files, shell, tests, git)"),
    (status(capturing=False, paused_until="until resumed"), None, "tracecap: paused until resumed"),
    (status(capturing=False, consent="pending", reason="not opted in (run: tracecap opt-in)"), None,
     "tracecap: off: not opted in (run: tracecap opt-in)"),
    (status(capturing=False, policy={"error": "policy.toml is world-writable"}), None,
     "tracecap: error: policy.toml is world-writable"),
])
def test_tooltip(st, error, want):
    assert tooltip(st, error) == want


def test_tooltip_shows_pause_end_as_clock_time():
    soon = (dt.datetime.now().astimezone() + dt.timedelta(minutes=15)).replace(microsecond=0)
    text = tooltip(status(capturing=False, paused_until=soon.strftime("%Y-%m-%dT%H:%M:%S%z")))
    assert text.startswith("tracecap: paused until ")
    assert soon.strftime("%H:%M") in text


def test_captured_lines_name_every_source_roots_content_consent_and_destination():
    lines = captured_lines(status(capturing=False, paused_until="until resumed"))
    assert lines[:6] == ["files: on", "shell: on", "tests: on (with shell)", "git: on",
                         "tools: off: not in policy capture.sources", "input: unavailable: no display"]
    assert lines[6:] == ["roots: ~/src", "content: full", "consent: opted-in, paused until resumed",
                         "uploads to: file:///tmp/outbox"]
    assert captured_lines(None) == ["nothing: the daemon is not running"]


UTC = dt.timezone.utc
PLUS2 = dt.timezone(dt.timedelta(hours=2))


@pytest.mark.parametrize("now, want", [
    (dt.datetime(2024, 5, 1, 14, 5, tzinfo=UTC), dt.datetime(2024, 5, 2, 9, 0, tzinfo=UTC)),
    (dt.datetime(2024, 5, 1, 0, 30, tzinfo=PLUS2), dt.datetime(2024, 5, 2, 9, 0, tzinfo=PLUS2)),
    (dt.datetime(2024, 5, 1, 8, 59, tzinfo=UTC), dt.datetime(2024, 5, 2, 9, 0, tzinfo=UTC)),
    (dt.datetime(2024, 12, 31, 23, 59, tzinfo=UTC), dt.datetime(2025, 1, 1, 9, 0, tzinfo=UTC)),
    (dt.datetime(2024, 2, 28, 18, 0, tzinfo=UTC), dt.datetime(2024, 2, 29, 9, 0, tzinfo=UTC)),
])
def test_tomorrow_morning(now, want):
    assert tomorrow_morning(now) == want


def test_seconds_until_tomorrow_lands_on_nine_local():
    now = dt.datetime.now().astimezone()
    target = now + dt.timedelta(seconds=seconds_until_tomorrow(now))
    local = target.astimezone()
    assert (local.hour, local.minute) == (9, 0)
    assert local.date() == now.date() + dt.timedelta(days=1)


def _dominant(img):
    """The most common opaque colour of an RGBA icon, and how much of it is opaque."""
    px = img.load()
    opaque = [px[x, y][:3] for x in range(img.width) for y in range(img.height) if px[x, y][3] > 200]
    return max(set(opaque), key=opaque.count), len(opaque) / (img.width * img.height)


def test_four_icons_are_distinct_and_drawn_as_described():
    imgs = {s: icon_image(s, 64) for s in STATES}
    assert all(i.size == (64, 64) and i.mode == "RGBA" for i in imgs.values())
    colours = {s: _dominant(i) for s, i in imgs.items()}
    assert colours[RECORDING][0] == (211, 47, 47) and colours[RECORDING][1] > 0.35  # filled dot
    assert colours[PAUSED][0] == (249, 168, 37)
    assert colours[OFF][0] == (158, 158, 158) and colours[OFF][1] < 0.4  # a ring, not a disc
    assert imgs[OFF].getpixel((32, 32))[3] == 0  # hollow
    assert min(imgs[ERROR].getpixel((32, 36))[:3]) > 240  # the white "!"
    assert imgs[ERROR].getpixel((4, 8))[3] == 0  # a triangle: its top corners are empty
    assert imgs[RECORDING].getpixel((32, 32))[:3] == (211, 47, 47)
    raw = {s: i.tobytes() for s, i in imgs.items()}
    assert len(set(raw.values())) == 4


def test_icon_on_a_tile_is_opaque_rgb():
    img = icon_image(OFF, 24, background=(43, 43, 43))
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (43, 43, 43)
    with pytest.raises(ValueError):
        icon_image("sleeping")


def _fake_requester(st):
    """Answers like the control socket would for a fixed status; records requests."""
    calls = []

    def request(path, op, timeout=30.0, **params):
        calls.append((op, params))
        if op == "forget":
            return {"count": 7}
        return st
    return request, calls


def test_toggle_turns_recording_on_from_a_pause_with_opt_in_and_resume(tmp_path):
    req, calls = _fake_requester(status(capturing=False, paused_until="until resumed"))
    ctl = TrayController(tmp_path / "s.sock", requester=req)
    ctl.refresh()
    calls.clear()
    ctl.on_toggle_recording()
    assert [op for op, _ in calls] == ["opt-in", "resume", "status"]


def test_toggle_opts_out_while_recording(tmp_path):
    req, calls = _fake_requester(status())
    ctl = TrayController(tmp_path / "s.sock", requester=req)
    ctl.refresh()
    calls.clear()
    ctl.on_toggle_recording()
    assert [op for op, _ in calls] == ["opt-out", "status"]
    assert ctl.on_forget() == 7
    assert calls[-2] == ("forget", {"seconds": 900})


def test_menu_enables_what_makes_sense(tmp_path):
    req, _ = _fake_requester(status())
    ctl = TrayController(tmp_path / "s.sock", requester=req)
    ctl.refresh()
    menu = {e.label: e for e in build_menu(ctl, lambda: None)}
    assert list(menu) == ["Recording", "Pause 15 minutes", "Pause 1 hour", "Pause until tomorrow 09:00",
                          "Resume", "Forget last 15 minutes", "Review what is captured…", "What is captured…",
                          "Open the local log", "Quit tray"]
    assert menu["Recording"].checked is True and menu["Pause 15 minutes"].enabled
    assert not menu["Resume"].enabled
    sub = [e.label for e in menu["What is captured…"].items]
    assert "roots: ~/src" in sub and all(not e.enabled for e in menu["What is captured…"].items)


def test_daemon_down_means_error_and_disabled_actions(tmp_path):
    ctl = TrayController(tmp_path / "nobody.sock", timeout=2)
    assert ctl.refresh() == ERROR
    assert ctl.snapshot.tooltip == "tracecap: error: the daemon is not running"
    menu = {e.label: e for e in build_menu(ctl, lambda: None)}
    for label in ("Recording", "Pause 15 minutes", "Resume", "Forget last 15 minutes",
                  "Review what is captured…"):
        assert not menu[label].enabled, label
    assert menu["Open the local log"].enabled and menu["Quit tray"].enabled
    # a click that slips through anyway is reported, not raised
    assert ctl.on_pause(60) == ERROR
    assert ctl.on_forget() is None and "not running" in ctl.snapshot.error


def test_tray_without_a_display_exits_1_with_one_sentence(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["TRACECAP_HOME"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-m", "agent.cli", "tray"], env=env, capture_output=True,
                       text=True, timeout=30, cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "DISPLAY" in r.stderr and "Traceback" not in r.stderr
