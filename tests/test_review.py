"""The review page in a real browser (Debian's Chromium driven by Playwright) against a real daemon.

The daemon runs in a temporary TRACECAP_HOME whose journal already holds a working day's events
(written before it starts, as if captured earlier), and captures real notes through the CLI, so
their redaction markers come from the real redaction engine. Screenshots land in docs/review/.
"""
from __future__ import annotations

import json
import os
import random
import re
import time
from pathlib import Path

import pytest

from tests.daemon_harness import DaemonProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "docs" / "review"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

POLICY = """\
[consent]
mode = "opt-in"
[capture]
sources = ["shell", "tests"]
[upload]
interval = "1s"
hold = "1h"
"""

SECRET_NOTE = "deploy to staging with key AKIAIOSFODNN7EXAMPLE before lunch"
MARKER = "[REDACTED:aws-access-key-id]"


def prefill(spool: Path, n: int, end_ns: int) -> None:
    """A day's worth of events, all older than `end_ns`, as the journal would hold them."""
    from agent.journal import Journal
    from bench.review import make_events

    j = Journal(spool, reorder_ms=0)
    j.open()
    j.start()
    try:
        for kind, source, data, ts in make_events(n, end_ns, random.Random(7)):
            j.append(kind, source, None, data, ts)
    finally:
        j.stop()


@pytest.fixture(scope="session")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run packaging/install-test-deps.sh")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    home = tmp_path_factory.mktemp("review") / "home"
    (home / "spool").mkdir(parents=True)
    policy = home.parent / "policy.toml"
    policy.write_text(POLICY)
    os.chmod(policy, 0o644)
    # 600 events over the ten hours that ended 20 minutes ago: outside "Last 15 minutes".
    prefill(home / "spool", 600, time.time_ns() - 20 * 60 * 10**9)
    d = DaemonProcess(home, policy=policy).start()
    d.cli("opt-in")
    d.cli("note", SECRET_NOTE)
    d.cli("note", "looking at the flaky checkout test")
    yield d
    d.stop()


def open_page(browser, d: DaemonProcess, errors: list | None = None):
    url = d.cli("review", "--no-browser").stdout.strip()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\?token=[A-Za-z0-9_-]{40,}", url), url
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    if errors is not None:
        page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    return page, url


def shot(page, name: str, full: bool = False) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=full)


def test_page_shows_the_events_and_highlights_redactions(browser, daemon):
    errors: list = []
    page, url = open_page(browser, daemon, errors)
    try:
        # The token left the address bar for a cookie.
        assert page.url.endswith("/") and "token" not in page.url
        assert page.get_by_role("heading", level=1).inner_text().startswith("Recording")
        row = page.locator("li.event", has_text="deploy to staging")
        assert row.count() == 1
        mark = row.locator("mark.redacted")
        assert mark.inner_text() == MARKER
        assert "AKIAIOSFODNN7EXAMPLE" not in page.content()
        bg = mark.evaluate("m => getComputedStyle(m).backgroundColor")
        assert bg not in ("rgba(0, 0, 0, 0)", "transparent"), bg
        # The prefilled day: commands with their exit codes, saves with coloured diffs, test runs
        # with their failing tests, commits with their messages.
        assert page.locator("li.event .exit").count() > 0
        assert page.locator("pre.diff .d-add").count() > 0
        add_bg = page.locator("pre.diff .d-add").first.evaluate("s => getComputedStyle(s).backgroundColor")
        assert add_bg not in ("rgba(0, 0, 0, 0)", "transparent")
        # The chart: an SVG drawn on the server, a bar per source and hour with a title.
        assert page.locator("svg.chart rect title").count() > 0
        assert page.get_by_role("button", name="Forget…").is_visible()
        shot(page, "page.png")
        shot(page, "page-full.png", full=True)
        # Filters: kind, then text.
        page.get_by_label("Kind").select_option("test.run")
        page.get_by_role("button", name="Filter").click()
        kinds = page.locator("li.event .kind").all_inner_texts()
        assert kinds and set(kinds) == {"test.run"}
        assert page.locator("ul.failures li", has_text="test_total").count() > 0
        page.get_by_label("Kind").select_option("")
        page.get_by_label("Text").fill("flaky checkout")
        page.get_by_role("button", name="Filter").click()
        assert page.locator("li.event").all_inner_texts()[0].count("flaky checkout") == 1
        assert page.locator("li.event").count() == 1
        # Pages: 600 events do not fit on one.
        page.goto(url.split("/?")[0] + "/?day=all")
        page.get_by_role("link", name="Older →").click()
        assert "page 2 of" in page.locator("nav.pager").inner_text()
        # What leaves: the sealed bundles wait out the hold window with a countdown.
        page.goto(url.split("/?")[0] + "/")
        assert page.locator(".countdown").count() > 0
        assert re.match(r"in \d+ (min|h)", page.locator(".countdown").first.inner_text())
        assert not [e for e in errors if "Content Security Policy" in e or "Refused" in e], errors
        assert not errors, errors
    finally:
        page.close()


def test_pause_and_resume_from_the_page(browser, daemon):
    page, _ = open_page(browser, daemon)
    try:
        page.get_by_role("button", name="Pause 15 minutes").click()
        heading = page.get_by_role("heading", level=1).inner_text()
        assert re.fullmatch(r"Paused until \d\d:\d\d", heading), heading
        st = daemon.status()
        assert not st["capturing"] and st["paused_until"]
        shot(page, "paused.png")
        page.get_by_role("button", name="Resume").click()
        assert page.get_by_role("heading", level=1).inner_text().startswith("Recording")
        assert daemon.status()["capturing"]
    finally:
        page.close()


def test_forget_selected_events(browser, daemon):
    page, _ = open_page(browser, daemon)
    try:
        page.goto(page.url.rstrip("/") + "/?kind=shell.start&day=all")
        boxes = page.locator("li.event input[name=seq]")
        seqs = [int(boxes.nth(i).get_attribute("value")) for i in (0, 1)]
        for i in (0, 1):
            boxes.nth(i).check()
        page.get_by_role("button", name="Forget…").click()
        assert page.get_by_role("radio", name="The selected events").is_checked()
        confirm = page.get_by_role("button", name="Forget 2 events")
        assert confirm.is_visible()
        confirm.click()
        assert "Forgot 2 events" in page.locator(".flash").inner_text()
        held = {e["seq"] for e in daemon.events()}
        assert not held & set(seqs)
        marker = daemon.events("--kind", "agent.forget")[-1]["data"]
        assert marker["count"] == 2
    finally:
        page.close()


def test_forget_the_last_15_minutes_from_the_page(browser, daemon):
    before = daemon.events()
    recent_cut = time.time_ns() - 15 * 60 * 10**9
    assert any(SECRET_NOTE.split()[0] in json.dumps(e["data"]) for e in before if e["kind"] == "user.note")
    older = [e for e in before if e["ts"] < recent_cut - 5 * 10**9]
    page, _ = open_page(browser, daemon)
    try:
        page.get_by_role("button", name="Forget…").click()
        page.get_by_role("radio", name="Last 15 minutes").check()
        confirm = page.get_by_role("button", name=re.compile(r"^Forget \d+ events$"))
        n = int(confirm.inner_text().split()[1])
        assert n >= 2  # the two notes at least, and the pause and resume markers
        shot(page, "forget.png")
        confirm.click()
        assert re.search(r"Forgot \d+ events", page.locator(".flash").inner_text())
    finally:
        page.close()
    # `tracecap log` shows the span gone: nothing but the forget marker in the last 15 minutes.
    recent = daemon.events("--since", "15m")
    assert {e["kind"] for e in recent} == {"agent.forget"}, recent
    after = daemon.events()
    assert not [e for e in after if e["kind"] == "user.note"]
    held = {e["seq"] for e in after}
    assert all(e["seq"] in held for e in older)  # older events are untouched


def test_the_page_after_the_daemon_restarts(browser, daemon):
    _, old_url = open_page(browser, daemon)
    daemon.stop()
    daemon.start()
    from playwright.sync_api import Error as PlaywrightError

    page = browser.new_page()
    try:
        # The old address is gone with the old server: refused, or (same port by chance) expired.
        try:
            resp = page.goto(old_url)
            assert resp is not None and resp.status == 403
            assert "tracecap review" in page.inner_text("body")
        except PlaywrightError:
            pass
    finally:
        page.close()
    page, _ = open_page(browser, daemon)
    try:
        assert page.get_by_role("heading", level=1).inner_text().startswith("Recording")
        page.goto(page.url.rstrip("/") + "/?day=all")
        assert page.locator("li.event").count() == 50  # the held events are all still there
    finally:
        page.close()


def test_review_needs_the_daemon(tmp_path):
    d = DaemonProcess(tmp_path / "home", policy=None)
    r = d.cli("review", "--no-browser", check=False)
    assert r.returncode == 3
    assert r.stderr.count("\n") == 1 and "not running" in r.stderr
