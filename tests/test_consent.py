"""Consent rule table: capture is off unless both the policy and the user allow it."""
from __future__ import annotations

import pytest

from agent.consent import PAUSE_INDEFINITE, ConsentFile, change, decide
from agent.errors import UsageError

NOW = 1_800_000_000_000_000_000


@pytest.mark.parametrize("mode,choice,paused,capturing,state", [
    ("opt-in", None, None, False, "pending"),
    ("opt-in", "in", None, True, "opted-in"),
    ("opt-in", "out", None, False, "opted-out"),
    ("opt-out", None, None, True, "opted-in"),
    ("opt-out", "out", None, False, "opted-out"),
    ("opt-out", "in", None, True, "opted-in"),
    ("disabled", "in", None, False, "disabled"),
    ("disabled", None, None, False, "disabled"),
    ("opt-in", "in", PAUSE_INDEFINITE, False, "opted-in"),
    ("opt-in", "in", NOW + 10**9, False, "opted-in"),
    ("opt-in", "in", NOW - 1, True, "opted-in"),  # a pause that has ended
])
def test_decide(mode, choice, paused, capturing, state):
    d = decide(mode, ConsentFile(choice=choice, paused_until=paused), NOW)
    assert (d.capturing, d.state) == (capturing, state)
    assert bool(d.reason) == (not capturing)


def test_choice_persists_and_disabled_refuses_opt_in(tmp_path):
    f = tmp_path / "consent.json"
    change(f, "opt-in", "opt-in")
    assert ConsentFile.load(f).choice == "in"
    change(f, "opt-in", "pause", pause_seconds=60, now_ns=NOW)
    assert ConsentFile.load(f).paused_until == NOW + 60 * 10**9
    change(f, "opt-in", "resume")
    assert ConsentFile.load(f).paused_until is None
    with pytest.raises(UsageError, match="disabled"):
        change(f, "disabled", "opt-in")


def test_damaged_consent_file_means_no_consent(tmp_path):
    f = tmp_path / "consent.json"
    f.write_text("{not json")
    assert not decide("opt-in", ConsentFile.load(f), NOW).capturing


@pytest.mark.parametrize("until, line", [
    (None, "paused"),
    ("until resumed", "paused until resumed"),
    ("2026-12-02T09:00:00+00:00", "paused until 2026-12-02T09:00:00+00:00"),
])
def test_pause_line_says_until_once(until, line):
    from agent.commands.core import pause_line

    assert pause_line(until) == line
