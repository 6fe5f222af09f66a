"""The review page's guard, against the real daemon over loopback HTTP: token, cookie, Host (DNS
rebinding), Origin and CSRF on changes, headers, errors that echo nothing, the idle stop, and
forget by seq (uploaded events are out of reach)."""
from __future__ import annotations

import os
import re
import time
from urllib.parse import urlencode

import httpx
import pytest

from agent import control
from tests.daemon_harness import DaemonProcess

pytestmark = pytest.mark.slow

POLICY = """\
[consent]
mode = "opt-in"
[capture]
sources = ["shell"]
[upload]
interval = "1h"
"""


GH_TOKEN = "ghp_" + "Zq8mT3vKp0LwX7sR2yBn5cJd9fHg4aUe1oIx"  # synthetic


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    home = tmp_path_factory.mktemp("review-sec") / "home"
    policy = home.parent / "policy.toml"
    policy.write_text(POLICY)
    os.chmod(policy, 0o644)
    d = DaemonProcess(home, policy=policy).start()
    d.cli("opt-in")
    # Not a run like abcdef...: redaction leaves such placeholders alone.
    d.cli("note", f"remember hunter2 and the token {GH_TOKEN}")
    yield d
    d.stop()


def review(d: DaemonProcess, **params) -> tuple[str, str, str]:
    url = control.request(d.socket, "review", **params)["url"]
    base, token = url.split("/?token=")
    return url, base, token


def session(d: DaemonProcess) -> tuple[httpx.Client, str]:
    url, base, _ = review(d)
    c = httpx.Client(timeout=10)
    r = c.get(url)
    assert r.status_code == 303 and r.headers["location"] == "/"
    return c, base


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)


def test_token_then_cookie(daemon):
    url, base, token = review(daemon)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base) and len(token) >= 40
    # No token, a wrong one, one a character short: refused, and no cookie handed out.
    for attempt in (base + "/", base + "/?token=" + "x" * len(token), base + "/?token=" + token[:-1]):
        r = httpx.get(attempt)
        assert r.status_code == 403, attempt
        assert "set-cookie" not in r.headers
        assert "tracecap review" in r.text
    r = httpx.get(url)
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    name, value = cookie.split(";")[0].split("=", 1)
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    # A forged cookie is refused; the real one opens the page.
    assert httpx.get(base + "/", cookies={name: "forged"}).status_code == 403
    c = httpx.Client(timeout=10, cookies={name: value})
    assert c.get(base + "/").status_code == 200
    # Static files and the Tasks tab need the session too.
    assert httpx.get(base + "/static/review.js").status_code == 403
    assert httpx.get(base + "/tasks").status_code == 403
    assert c.get(base + "/tasks").status_code == 200
    assert c.get(base + "/static/review.js").status_code == 200
    # Each token opens the page once: used again without the cookie it is refused; with the
    # cookie it just leads to the page. Each request gets a new token for the same server.
    assert httpx.get(url).status_code == 403
    again = c.get(url)
    assert again.status_code == 303 and "set-cookie" not in again.headers
    url2, base2, token2 = review(daemon)
    assert base2 == base and token2 != token
    assert httpx.get(url2).status_code == 303 and httpx.get(url2).status_code == 403
    # The log never holds a token.
    logs = (daemon.home / "logs" / "tracecap.log").read_text()
    assert token not in logs and token2 not in logs


def test_host_must_be_the_loopback_address_and_port(daemon):
    c, base = session(daemon)
    port = base.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", f"localhost:{port}", "127.0.0.1",
                 f"127.0.0.1:{int(port) + 1}", f"[::1]:{port}"):
        r = c.get(base + "/", headers={"Host": host})
        assert r.status_code == 421, host
        assert "tracecap" not in r.text.lower() or "127.0.0.1" in r.text
    assert c.get(base + "/", headers={"Host": f"127.0.0.1:{port}"}).status_code == 200


def test_changes_need_post_same_origin_and_csrf(daemon):
    c, base = session(daemon)
    page = c.get(base + "/").text
    csrf = csrf_of(page)
    form = {"csrf": csrf, "action": "pause-15m"}
    same = {"Origin": base}
    # GET cannot change state; other methods are refused.
    assert c.get(base + "/consent").status_code == 405
    assert c.request("PUT", base + "/consent", data=form, headers=same).status_code == 405
    # POST without Origin, from another origin, from a null origin, cross-site per Fetch metadata.
    assert c.post(base + "/consent", data=form).status_code == 403
    assert c.post(base + "/consent", data=form, headers={"Origin": "http://evil.example"}).status_code == 403
    assert c.post(base + "/consent", data=form, headers={"Origin": "null"}).status_code == 403
    assert c.post(base + "/consent", data=form,
                  headers={**same, "Sec-Fetch-Site": "cross-site"}).status_code == 403
    # Same origin but no, or a wrong, CSRF token.
    assert c.post(base + "/consent", data={"action": "pause-15m"}, headers=same).status_code == 403
    assert c.post(base + "/consent", data={**form, "csrf": "0" * len(csrf)}, headers=same).status_code == 403
    # Without the session cookie, even with everything else right.
    assert httpx.post(base + "/consent", data=form, headers=same).status_code == 403
    assert daemon.status()["capturing"]  # none of that paused capture
    r = c.post(base + "/consent", data=form, headers={**same, "Sec-Fetch-Site": "same-origin"})
    assert r.status_code == 303
    assert daemon.status()["paused_until"]
    r = c.post(base + "/consent", data={"csrf": csrf, "action": "resume"}, headers=same)
    assert r.status_code == 303 and daemon.status()["capturing"]


def test_headers_and_errors_that_echo_nothing(daemon):
    c, base = session(daemon)
    r = c.get(base + "/")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "http" not in csp
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    # The page links nothing from elsewhere and has no inline script or style.
    assert not re.search(r'(src|href)="(https?:)?//', r.text)
    assert "<script>" not in r.text and " style=" not in r.text and "<style" not in r.text
    # The held note is shown redacted, and bad input gets a fixed sentence, never an echo.
    assert "remember hunter2" in r.text and GH_TOKEN not in r.text and "[REDACTED:github-token]" in r.text
    for bad in ("/?day=<script>alert(1)</script>", "/?page=hunter2", "/nope-hunter2", "/tasks?day=hunter2"):
        r = c.get(base + bad)
        assert r.status_code in (400, 404), bad
        assert "hunter2" not in r.text and "script" not in r.text
    r = c.post(base + "/forget", content=b"scope=selected&seq=hunter2&csrf=" + csrf_of(c.get(base + "/").text).encode(),
               headers={"Origin": base, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and "hunter2" not in r.text


def test_forget_selected_spares_what_was_uploaded(daemon):
    c, base = session(daemon)
    daemon.cli("flush")  # everything so far is uploaded
    uploaded = [e["seq"] for e in daemon.events() if e["kind"] == "user.note"]
    daemon.cli("note", "a note still held")
    held = [e["seq"] for e in daemon.events() if e["kind"] == "user.note" and e["seq"] not in uploaded]
    page = c.get(base + "/").text
    # Uploaded events have no checkbox; a forged selection of them removes nothing.
    assert f'value="{uploaded[0]}" form="forget-form"' not in page
    assert f'value="{held[0]}" form="forget-form"' in page
    body = [("csrf", csrf_of(page)), ("scope", "selected")] + [("seq", str(s)) for s in uploaded + held]
    r = c.post(base + "/forget", content=urlencode(body),
               headers={"Origin": base, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 303 and "n=1" in r.headers["location"]
    left = {e["seq"] for e in daemon.events()}
    assert set(uploaded) <= left and not set(held) & left
    # What was uploaded is listed as such, with where it went.
    page = c.get(base + "/").text
    assert "uploads" in page and "Nothing has been uploaded" not in page


def test_the_server_stops_when_idle_and_a_new_one_starts(daemon):
    url, base, token = review(daemon, idle=2)
    c = httpx.Client(timeout=5)
    assert c.get(url).status_code == 303
    # Requests that fail the guard do not keep it alive.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(base + "/", timeout=1)
        except httpx.HTTPError:
            break
        time.sleep(0.3)
    else:
        pytest.fail("the review server did not stop after 2 s without use")
    url2, base2, token2 = review(daemon, idle=600)
    assert token2 != token
    c2 = httpx.Client(timeout=5)
    assert c2.get(url2).status_code == 303 and c2.get(base2 + "/").status_code == 200


def test_the_tray_item_opens_the_page(daemon, tmp_path):
    import sys

    from agent.tray import TrayController, build_menu

    got = tmp_path / "opened.txt"
    opener = [sys.executable, "-c", f"import sys; open({str(got)!r}, 'w').write(sys.argv[1])"]
    ctl = TrayController(daemon.socket, opener=opener)
    ctl.refresh()
    item = {e.label: e for e in build_menu(ctl, lambda: None)}["Review what is captured…"]
    assert item.enabled
    item.action()
    deadline = time.monotonic() + 15
    while not (got.exists() and got.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    url = got.read_text()
    assert url.startswith("http://127.0.0.1:") and "token=" in url
    assert httpx.get(url).status_code == 303
