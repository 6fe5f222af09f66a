"""Table tests for the input source's pure parts: windows, idle state machine, availability, focus."""
from __future__ import annotations

import threading

import pytest

from agent.sources.input_activity import (
    ActivityCounter,
    Counts,
    activity_data,
    idle_step,
    unavailable_reason,
)
from agent.sources.input_focus import focus_data


@pytest.mark.parametrize("counts, expected", [
    (Counts(), None),
    (Counts(keys=3), {"start": 1, "end": 2, "keys": 3, "clicks": 0, "scrolls": 0, "moves": 0}),
    (Counts(0, 1, 2, 3), {"start": 1, "end": 2, "keys": 0, "clicks": 1, "scrolls": 2, "moves": 3}),
])
def test_activity_data(counts, expected):
    assert activity_data(1, 2, counts) == expected


@pytest.mark.parametrize("idle, last, now, timeout, expected", [
    (False, 0.0, 119.9, 120.0, (False, None)),
    (False, 0.0, 120.0, 120.0, (True, "input.idle")),
    (True, 0.0, 500.0, 120.0, (True, None)),  # still idle: nothing new to say
    (True, 499.0, 500.0, 120.0, (False, "input.active")),
    (False, 499.0, 500.0, 120.0, (False, None)),
])
def test_idle_step(idle, last, now, timeout, expected):
    assert idle_step(idle, last, now, timeout) == expected


@pytest.mark.parametrize("env, platform, expected", [
    ({"DISPLAY": ":0"}, "linux", None),
    ({}, "linux", "no X display"),
    ({"DISPLAY": ":0", "XDG_SESSION_TYPE": "wayland"}, "linux", "Wayland session"),
    ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", "Wayland session"),
    ({"DISPLAY": ":0", "XDG_SESSION_TYPE": "x11"}, "linux", None),
    ({}, "darwin", None),  # macOS: permission is checked once the listener starts
    ({}, "win32", None),
])
def test_unavailable_reason(env, platform, expected):
    got = unavailable_reason(env, platform)
    if expected is None:
        assert got is None
    else:
        assert got is not None and got.startswith(expected)


@pytest.mark.parametrize("wm_class, process, title, titles, expected", [
    (("code", "Code"), "code", "main.py - repo", True,
     {"app": "Code", "process": "code", "title": "main.py - repo"}),
    (("code", "Code"), "code", "main.py - repo", False, {"app": "Code", "process": "code"}),
    (("xterm", ""), None, None, True, {"app": "xterm", "process": "", "title": ""}),
    (None, "python3", "x", True, {"app": "python3", "process": "python3", "title": "x"}),
    (None, None, None, False, {"app": "unknown", "process": ""}),
])
def test_focus_data(wm_class, process, title, titles, expected):
    assert focus_data(wm_class, process, title, titles=titles) == expected


def test_counter_counts_presses_and_keeps_no_argument():
    woke = threading.Event()
    c = ActivityCounter(on_wake=woke.set)
    secret = object()
    for _ in range(5):
        c.on_press(secret)
    c.on_click(10, 20, secret, True)
    c.on_click(10, 20, secret, False)  # a release is not a click
    c.on_scroll(1, 2, 0, -1)
    c.on_move(3, 4)
    assert not woke.is_set()
    assert c.take() == Counts(keys=5, clicks=1, scrolls=1, moves=1)
    assert c.take() == Counts()
    # Nothing the listener passed in is referenced by the counter.
    assert all(v is not secret for v in vars(c).values())
    c.sleeping = True
    c.on_move(0, 0)
    assert woke.is_set() and not c.sleeping
