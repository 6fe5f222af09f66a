"""The review page in a real browser (Debian's Chromium driven by Playwright) against a real daemon.

The daemon runs in a temporary TRACECAP_HOME whose journal already holds a working day's events
(written before it starts, as if captured earlier), and captures real notes through the CLI, so
their redaction markers come from the real redaction engine. Screenshots are taken and checked in
every run, in the test's temporary directory; with TRACECAP_SCREENSHOTS=1 they replace the ones
in docs/review/ (the README shows them).
"""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.daemon_harness import TRACECAP, DaemonProcess
from tests.test_end_to_end import Shell, wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DOCS_SHOTS = ROOT / "docs" / "review"
VIEWPORT = {"width": 1280, "height": 900}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

POLICY = """\
[consent]
mode = "opt-in"
[capture]
roots = ["{src}"]
sources = ["files", "shell", "tests", "git"]
[upload]
interval = "1s"
hold = "1h"
"""

# Not the documented example key: redaction leaves placeholders such as `...EXAMPLE` alone.
AWS_KEY = "AKIA" + "Z3MHQWERTY7UIOPA"  # synthetic, in the format the detector knows
SECRET_NOTE = f"deploy to staging with key {AWS_KEY} before lunch"
MARKER = "[REDACTED:aws-access-key-id]"
STRIPE = "sk_live_" + "51HqLm2Xv9Rt4Yb7Nc1Kd6Wf"  # synthetic, in the format the detector knows
GIT_ENV = {"GIT_AUTHOR_NAME": "dev", "GIT_AUTHOR_EMAIL": "dev@example.invalid",
           "GIT_COMMITTER_NAME": "dev", "GIT_COMMITTER_EMAIL": "dev@example.invalid"}


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
    """A real daemon whose journal holds a day of earlier events, then a real coding loop in bash
    (a failing test, a fix, a secret typed, a passing test, a commit) and a note with a key."""
    top = tmp_path_factory.mktemp("review")
    home, src = top / "home", top / "src"
    repo = src / "shop"
    repo.mkdir(parents=True)
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (repo / "test_calc.py").write_text("from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n")
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "init"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env={**os.environ, **GIT_ENV}, timeout=30)
    home.mkdir(mode=0o700)  # the daemon refuses state directories other users can read
    (home / "spool").mkdir(mode=0o700)
    policy = top / "policy.toml"
    policy.write_text(POLICY.format(src=src))
    os.chmod(policy, 0o644)
    # 600 events over the ten hours that ended 20 minutes ago: outside "Last 15 minutes".
    prefill(home / "spool", 600, time.time_ns() - 20 * 60 * 10**9)
    d = DaemonProcess(home, policy=policy).start()
    d.cli("opt-in")
    deadline = time.monotonic() + 20
    while not all(s.startswith("running") for n, s in d.status()["sources"].items()
                  if n in ("files", "shell", "git")) and time.monotonic() < deadline:
        time.sleep(0.2)
    env = {"HOME": str(top), "PATH": f"{os.path.dirname(TRACECAP)}:/usr/bin:/bin", "TERM": "xterm",
           "TRACECAP_HOME": str(home), "TRACECAP_POLICY": str(policy), "LANG": "C.UTF-8", **GIT_ENV}
    sh = Shell(env, repo)
    try:
        sh.run('eval "$(tracecap shell-init bash)"')
        sh.run("python3 -m pytest -q -p no:cacheprovider", settle=3)
        sh.run("sed -i 's/a - b/a + b/' calc.py", settle=1)
        sh.run(f"export STRIPE_KEY={STRIPE}")
        sh.run("python3 -m pytest -q -p no:cacheprovider", settle=3)
        sh.run('git commit -qam "Fix add: it subtracted"', settle=1)
        wait_for(d, lambda evs: any(e["kind"] == "git.commit" for e in evs)
                 and sum(e["kind"] == "test.run" for e in evs) >= 2
                 and any(e["kind"] == "file.save" for e in evs), timeout=30)
    finally:
        sh.close()
    d.cli("note", "looking at the flaky checkout test")
    d.cli("note", SECRET_NOTE)
    yield d
    d.stop()


def open_page(browser, d: DaemonProcess, errors: list | None = None):
    url = d.cli("review", "--no-browser").stdout.strip()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\?token=[A-Za-z0-9_-]{40,}", url), url
    page = browser.new_page(viewport=VIEWPORT)
    if errors is not None:
        page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    return page, url


@pytest.fixture(scope="session")
def shots(tmp_path_factory) -> Path:
    """Where screenshots go: docs/review/ only when TRACECAP_SCREENSHOTS=1 asks for it."""
    if os.environ.get("TRACECAP_SCREENSHOTS") == "1":
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        return DOCS_SHOTS
    return tmp_path_factory.mktemp("review-screenshots")


def shot(target, path: Path, size: tuple[int, int] | None = None) -> None:
    """Screenshot a page (the viewport) or an element, and check the picture: a PNG of the
    viewport's size (a page) or of the element's box (an element), not blank."""
    from PIL import Image

    target.screenshot(path=str(path))
    if size is None:
        box = target.bounding_box()
        size = (round(box["width"]), round(box["height"]))
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert abs(img.size[0] - size[0]) <= 1 and abs(img.size[1] - size[1]) <= 1, (img.size, size)
        lo, hi = img.convert("L").getextrema()
        assert hi - lo > 64, f"{path.name} is blank"


def test_page_shows_the_events_and_highlights_redactions(browser, daemon, shots):
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
        assert AWS_KEY not in page.content()
        bg = mark.evaluate("m => getComputedStyle(m).backgroundColor")
        assert bg not in ("rgba(0, 0, 0, 0)", "transparent"), bg
        # The coding loop as captured: commands with their exit codes, the save as a coloured
        # diff, the test runs with the failing test, the commit with its message, the secret.
        cmd = page.locator("li.event", has_text="$ python3 -m pytest").last
        assert cmd.locator(".exit").inner_text() == "exit 1"
        failing = page.locator("li.event", has=page.locator(".kind", has_text="test.run")).nth(1)
        assert "test_add" in failing.locator("ul.failures li").first.inner_text()
        save = page.locator("li.event", has_text="calc.py").filter(has=page.locator("pre.diff"))
        assert save.locator(".d-add").first.inner_text().strip() == "+    return a + b"
        assert save.locator(".d-del").first.inner_text().strip() == "-    return a - b"
        commit = page.locator("li.event", has=page.locator(".kind", has_text="git.commit")).first
        assert "Fix add: it subtracted" in commit.inner_text()
        typed = page.locator("li.event", has_text="export STRIPE_KEY=")
        assert typed.locator("mark.redacted").inner_text() == "[REDACTED:stripe-key]"
        assert STRIPE not in page.content()
        add_bg = page.locator("pre.diff .d-add").first.evaluate("s => getComputedStyle(s).backgroundColor")
        assert add_bg not in ("rgba(0, 0, 0, 0)", "transparent")
        # The chart: an SVG drawn on the server, a bar per source and hour with a title.
        assert page.locator("svg.chart rect title").count() > 0
        assert page.get_by_role("button", name="Forget…").is_visible()
        shot(page, shots / "page.png", (VIEWPORT["width"], VIEWPORT["height"]))
        # Filters: kind, then text.
        page.get_by_label("Kind").select_option("test.run")
        page.get_by_role("button", name="Filter").click()
        kinds = page.locator("li.event .kind").all_inner_texts()
        assert kinds and set(kinds) == {"test.run"}
        assert page.locator("ul.failures li", has_text="test_add").count() == 1
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
        leaves = page.locator("section", has=page.get_by_role("heading", name="What leaves this machine"))
        shot(leaves, shots / "leaves.png")
        assert not [e for e in errors if "Content Security Policy" in e or "Refused" in e], errors
        assert not errors, errors
    finally:
        page.close()


def test_tasks_tab_shows_the_task_mined_from_the_coding_loop(browser, daemon, shots):
    errors: list = []
    page, _ = open_page(browser, daemon, errors)
    try:
        page.get_by_role("link", name="Tasks from your work").click()
        assert page.url.endswith("/tasks")
        task = page.locator("li.task")
        assert task.count() == 1
        # The failing pytest run, the fix and the passing run make one task, closed by the commit.
        assert task.get_by_role("heading", level=3).inner_text() == "Fix add: it subtracted"
        assert task.locator("ul.f2p li").all_inner_texts() == ["test_calc.py::test_add"]
        assert task.locator(".difficulty").inner_text() == "<15 min fix"
        head = subprocess.run(["git", "rev-parse", "HEAD~1"], cwd=daemon.home.parent / "src" / "shop",
                              capture_output=True, text=True, check=True).stdout.strip()
        assert task.locator("dd code.sha").get_attribute("title") == head
        assert task.locator(".patch .d-add").first.inner_text().strip() == "+    return a + b"
        assert re.match(r"\d+ steps", task.locator("dt:text('Trajectory') + dd").inner_text())
        assert page.get_by_role("heading", name=re.compile("^Spans not made into tasks")).is_visible()
        shot(page, shots / "tasks.png", (VIEWPORT["width"], VIEWPORT["height"]))
        # The same task, by the same id, as `tracecap log --json | tracecap episodes mine --events -`.
        out = daemon.home.parent / "mine.jsonl"
        daemon.cli("episodes", "mine", "--events", "-", "--out", str(out), input=daemon.cli("log", "--json").stdout)
        mined = [json.loads(line) for line in out.read_text().splitlines()]
        assert [m["instance_id"] for m in mined] == [task.locator("code.instance-id").inner_text()]
        assert not errors, errors
    finally:
        page.close()


def test_pause_and_resume_from_the_page(browser, daemon, shots):
    page, _ = open_page(browser, daemon)
    try:
        page.get_by_role("button", name="Pause 15 minutes").click()
        heading = page.get_by_role("heading", level=1).inner_text()
        assert re.fullmatch(r"Paused until \d\d:\d\d", heading), heading
        st = daemon.status()
        assert not st["capturing"] and st["paused_until"]
        shot(page, shots / "paused.png", (VIEWPORT["width"], VIEWPORT["height"]))
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


def test_forget_the_last_15_minutes_from_the_page(browser, daemon, shots):
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
        shot(page, shots / "forget.png", (VIEWPORT["width"], VIEWPORT["height"]))
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
