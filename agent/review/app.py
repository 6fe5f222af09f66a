"""The review page as a Starlette app: what is captured, what leaves, and the controls to take it back.

Takes a `DaemonState` (the running daemon seen through the few things the page needs) and the
secrets of one server run; gives an ASGI app. Routes:
    GET  /            the page (query: day=YYYY-MM-DD, kind, repo, q, page); with ?token=… once
    GET  /tasks       the Tasks tab: the coding tasks mined from the held events (query: day)
    POST /consent     action = opt-in | opt-out | resume | pause-15m | pause-1h | pause-tomorrow
    POST /forget      scope = 15m | 1h | today | selected (with seq=N fields)
    GET  /static/…    the page's stylesheet and script (package data; nothing from the network)

Security (the page shows everything the daemon holds), checked by `Guard` before any route runs:
- Host must be exactly 127.0.0.1:PORT (a DNS-rebinding page's Host names its own domain).
- The URL's token (from `tracecap review`, over the private control socket; a new one for each
  request, each good once) is compared in constant time, then exchanged for the session cookie
  (HttpOnly, SameSite=Strict, Path=/) and dropped from the address bar by a redirect. Every other
  request needs that cookie. A used or unknown token with a good cookie just goes to the page.
- Only GET, HEAD and POST. A POST needs Origin = http://127.0.0.1:PORT, a Sec-Fetch-Site (when the
  browser sends one) of same-origin, and the CSRF token of the session in its form.
- Every response carries a strict Content-Security-Policy (scripts and styles from 'self' only, no
  inline script or style, no frames, forms post only to itself), nosniff, no-store, and a
  same-origin referrer policy (under no-referrer, browsers send `Origin: null` with a form POST).
- Error pages are fixed sentences: they never include event content or the request's input.
Only requests that pass the guard count as use (a probe cannot keep the server alive).
"""
from __future__ import annotations

import datetime as dt
import hmac
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from agent.review import view
from agent.forget import KEEP_KINDS
from agent.review.index import JournalIndex, Query, day_bounds

log = logging.getLogger("tracecap.review")

PAGE_SIZE = 50
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; connect-src 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
FORGET_SCOPES = {"15m": ("Last 15 minutes", 15 * 60), "1h": ("Last hour", 3600), "today": ("Today", None)}
DONE = {  # the only sentences a redirect after a change can ask the page to show
    "opt-in": "You opted in: capture is on.",
    "opt-out": "You opted out: nothing more is recorded until you opt in again.",
    "resume": "Capture resumed.",
    "pause": "Capture paused.",
    "forgot": "Forgot {n} events. They are gone from this machine's journal and from every bundle "
              "not yet uploaded.",
    "refused": "That change was refused: {reason}",
}
REFUSALS = {"disabled": "your organisation's policy has disabled tracecap.",
            "daemon": "the daemon could not apply it; see its log."}


def page_environment() -> Environment:
    """The page's templates, compiled: the review server keeps one for the daemon's life."""
    env = Environment(loader=PackageLoader("agent.review", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    env.filters["marked"] = view.mark_redactions
    env.get_template("page.html")
    env.get_template("tasks.html")
    return env


def build_app(state: Any, *, port: int, tokens: Tokens, session: str, csrf: str,
              on_use: Callable[[], None] = lambda: None, env: Environment | None = None,
              index: JournalIndex | None = None, miner: Any = None) -> Any:
    """`state`: a `DaemonState` (agent/review/server.py). `on_use` is called for every request
    that passes the guard. `env`, `index` and `miner` (a `tasks.TaskMiner`) are the daemon's (kept
    across server runs); without them the app makes its own."""
    env = env or page_environment()
    index = index or JournalIndex(state.spool)
    if miner is None:
        from agent.review.tasks import TaskMiner

        miner = TaskMiner(index)

    async def page(request: Request) -> Response:
        return _render_page(request, env, state, index, csrf)

    async def tasks(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        # Mining reads and decodes up to tasks.MAX_EVENTS events: off the server's event loop.
        return await run_in_threadpool(_render_tasks, request, env, state, index, miner, csrf)

    async def consent(request: Request) -> Response:
        form = await _checked_form(request, csrf)
        action = form.get("action", "")
        ops = {"opt-in": ("opt-in", None), "opt-out": ("opt-out", None), "resume": ("resume", None),
               "pause-15m": ("pause", 15 * 60), "pause-1h": ("pause", 3600),
               "pause-tomorrow": ("pause", "tomorrow")}
        if action not in ops:
            raise HTTPException(400, "unknown action")
        op, seconds = ops[action]
        if seconds == "tomorrow":
            from agent.tray import seconds_until_tomorrow

            seconds = seconds_until_tomorrow()
        try:
            state.consent(op, seconds)
        except Exception as exc:
            from agent.errors import UsageError

            log.warning("review page: %s refused: %s", op, exc)
            reason = "disabled" if isinstance(exc, UsageError) else "daemon"
            return _back(request, done="refused", reason=reason)
        return _back(request, done=op)

    async def forget(request: Request) -> Response:
        form = await _checked_form(request, csrf)
        scope = form.get("scope", "")
        if scope == "selected":
            try:
                seqs = sorted({int(s) for s in form.getlist("seq")})
            except ValueError:
                raise HTTPException(400, "bad selection") from None
            res = state.forget_seqs(seqs)
        elif scope in FORGET_SCOPES:
            seconds = FORGET_SCOPES[scope][1]
            if seconds is None:
                seconds = time.time() - day_bounds(dt.date.today())[0] / 1e9
            res = state.forget_span(float(seconds))
        else:
            raise HTTPException(400, "unknown scope")
        return _back(request, done="forgot", n=int(res.get("count", 0)))

    routes = [
        Route("/", page, methods=["GET", "HEAD"]),
        Route("/tasks", tasks, methods=["GET", "HEAD"]),
        Route("/consent", consent, methods=["POST"]),
        Route("/forget", forget, methods=["POST"]),
        Mount("/static", app=StaticFiles(packages=[("agent.review", "static")]), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error, Exception: _crash})
    return Guard(app, port=port, tokens=tokens, session=session, on_use=on_use)


# ---------------------------------------------------------------------------- the guard
class Tokens:
    """The URL tokens handed out and not yet used: each is good once (`take`)."""

    KEEP = 16  # the newest tokens not yet used; an older one is refused

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: list[str] = []

    def issue(self) -> str:
        import secrets

        token = secrets.token_urlsafe(32)
        with self._lock:
            self._open = [*self._open, token][-self.KEEP:]
        return token

    def take(self, token: str) -> bool:
        """True once for each issued token; compared in constant time against every open one."""
        sent = token.encode()
        with self._lock:
            hit = None
            for t in self._open:
                if hmac.compare_digest(sent, t.encode()):
                    hit = t
            if hit is None:
                return False
            self._open.remove(hit)
            return True


class Guard:
    """Pure ASGI middleware: Host, token/cookie, method, Origin checks; security headers."""

    def __init__(self, app: Any, *, port: int, tokens: Tokens, session: str,
                 on_use: Callable[[], None]) -> None:
        self.app = app
        self.host = f"127.0.0.1:{port}".encode()
        self.origin = f"http://127.0.0.1:{port}".encode()
        self.tokens = tokens
        self.session = session
        self.cookie = f"tracecap_review_{port}"
        self.on_use = on_use

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # no websockets, no lifespan needs
        headers = dict(scope["headers"])  # latin-1 bytes; duplicates: the last wins
        if headers.get(b"host") != self.host:
            return await _plain(scope, receive, send, 421, "This page is served only as 127.0.0.1 on its own port.")
        method = scope["method"]
        if method not in ("GET", "HEAD", "POST"):
            return await _plain(scope, receive, send, 405, "Method not allowed.")
        request = Request(scope)
        token = request.query_params.get("token")
        cookie_ok = hmac.compare_digest(request.cookies.get(self.cookie, "").encode(), self.session.encode())
        if token is not None and scope["path"] == "/" and method == "GET":
            if self.tokens.take(token):
                self.on_use()
                resp = RedirectResponse("/", status_code=303)
                resp.set_cookie(self.cookie, self.session, httponly=True, samesite="strict", path="/")
                return await _secure(resp)(scope, receive, send)
            if cookie_ok:  # an old link of this session (history, a second tab): drop the token
                self.on_use()
                return await _secure(RedirectResponse("/", status_code=303))(scope, receive, send)
            return await _plain(scope, receive, send, 403, EXPIRED)
        if not cookie_ok:
            return await _plain(scope, receive, send, 403, EXPIRED)
        if method == "POST":
            origin = headers.get(b"origin")
            site = headers.get(b"sec-fetch-site")
            if origin != self.origin or (site is not None and site != b"same-origin"):
                return await _plain(scope, receive, send, 403, "Changes are accepted only from this page itself.")
        self.on_use()

        async def send_secure(message: dict) -> None:
            if message["type"] == "http.response.start":
                extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                names = {k for k, _ in extra}
                message["headers"] = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names] + extra
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                self.on_use()  # idle time counts from the end of the last answer, not its start
            await send(message)

        await self.app(scope, receive, send_secure)


EXPIRED = ("This review link is not valid (each link opens the page once, and none outlives the "
           "page's server). Run `tracecap review` for a new one.")


def _secure(resp: Response) -> Response:
    for k, v in SECURITY_HEADERS.items():
        resp.headers[k] = v
    return resp


async def _plain(scope: dict, receive: Any, send: Any, status: int, text: str) -> None:
    await _secure(PlainTextResponse(text, status_code=status))(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 400)
    text = {404: "Not found.", 405: "Method not allowed.", 403: "The request was refused: reload the "
            "page and try again."}.get(status, "The request was refused.")
    if status == 400:
        text = "The request was not understood. Go back and try again."
    return PlainTextResponse(text, status_code=status)


async def _crash(request: Request, exc: Exception) -> Response:
    # An exception's message may quote event content: the log gets its type and where it was
    # raised (file, line, function), the page a fixed sentence.
    import traceback

    where = " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}"
                       for f in reversed(traceback.extract_tb(exc.__traceback__)[-6:]))
    log.error("review page failed: %s at %s", type(exc).__name__, where)
    return PlainTextResponse("Something went wrong showing this page; the details are in the "
                             "tracecap log.", status_code=500)


class Form:
    """A posted urlencoded form (the page posts nothing else)."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        self.fields = fields

    def get(self, name: str, default: str = "") -> str:
        values = self.fields.get(name)
        return values[0] if values else default

    def getlist(self, name: str) -> list[str]:
        return self.fields.get(name, [])


MAX_FORM_BYTES = 1 << 20


async def _checked_form(request: Request, csrf: str) -> Form:
    """The form, once its CSRF token is the session's. Parsed by the standard library's
    urlencoded parser: the page's forms are never multipart."""
    from urllib.parse import parse_qs

    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise HTTPException(415, "form")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, "form")
    try:
        fields = parse_qs(body.decode("ascii"), keep_blank_values=True, max_num_fields=20000)
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "form") from None
    form = Form(fields)
    if not hmac.compare_digest(form.get("csrf").encode(), csrf.encode()):
        raise HTTPException(403, "csrf")
    return form


def _back(request: Request, **params: Any) -> Response:
    """303 back to the page, with one of the fixed sentences (DONE) to show."""
    return RedirectResponse("/?" + urlencode(params), status_code=303)


# ---------------------------------------------------------------------------- the page
def _parse_query(request: Request, today: dt.date) -> tuple[Query, int, str]:
    qp = request.query_params
    day: dt.date | None = today
    raw_day = qp.get("day", "")
    if raw_day == "all":
        day = None
    elif raw_day:
        try:
            day = dt.date.fromisoformat(raw_day)
        except ValueError:
            raise HTTPException(400, "bad day") from None
    try:
        page_no = max(1, int(qp.get("page", "1") or "1"))
    except ValueError:
        raise HTTPException(400, "bad page") from None
    kind = qp.get("kind", "").strip()
    q = Query(day=day, kinds=(kind,) if kind else (), repo=qp.get("repo", "").strip() or None,
              text=qp.get("q", "").strip() or None)
    return q, page_no, raw_day


def _render_page(request: Request, env: Environment, state: Any, index: JournalIndex, csrf: str) -> Response:
    now_ns = time.time_ns()
    today = dt.date.today()
    q, page_no, raw_day = _parse_query(request, today)
    st = state.status()
    durable = state.durable_seq()
    delivered = state.delivered_upto()
    sealed = state.sealed_upto()

    chart_day = q.day or today
    since = {"15m": now_ns - 15 * 60 * 10**9, "1h": now_ns - 3600 * 10**9, "today": day_bounds(today)[0]}
    summary = index.summary(chart_day, durable, delivered, since)
    counts, forgettable = summary.hours, summary.forgettable

    events, total = index.page(q, durable, (page_no - 1) * PAGE_SIZE, PAGE_SIZE)
    ends = index.shell_ends(events, durable)
    rows = []
    for ev in events:
        row = view.describe(ev, ends.get(str(ev.data.get("id"))) if ev.kind == "shell.start" else None)
        row["delivery"] = "uploaded" if ev.seq <= delivered else ("sealed" if ev.seq <= sealed else "held")
        row["forgettable"] = ev.seq > delivered and ev.kind not in KEEP_KINDS
        rows.append(row)

    pages = max(1, -(-total // PAGE_SIZE))
    base_params = {k: v for k, v in (("day", raw_day), ("kind", q.kinds[0] if q.kinds else ""),
                                     ("repo", q.repo or ""), ("q", q.text or "")) if v}

    def link(**changes: Any) -> str:
        params = {**base_params, **{k: str(v) for k, v in changes.items() if v not in (None, "")}}
        for k, v in changes.items():
            if v in (None, ""):
                params.pop(k, None)
        return "/?" + urlencode(params) if params else "/"

    hold = state.hold_seconds()
    waiting = []
    for b in state.waiting():
        leaves = b["created_ns"] / 1e9 + hold
        waiting.append({**b, "created": view.when(b["created_ns"], now_ns), "size_text": view.size(b["bytes"]),
                        "leaves_in": view.countdown(leaves - now_ns / 1e9) if leaves > now_ns / 1e9 else None,
                        "leaves_at": int(leaves)})
    uploaded = [{**u, "when": view.when(u.get("at"), now_ns)} for u in state.uploaded()]

    day_list = sorted(set(summary.days) | {today}, reverse=True)
    chart_hour = dt.datetime.now().hour if chart_day == today else None
    context = {
        **_header(request, st, csrf), "tab": "events",
        "chart": view.chart_svg(counts, now_hour=chart_hour), "chart_total": sum(map(sum, counts.values())),
        "day": q.day, "raw_day": raw_day, "today": today, "days": day_list[:14],
        "day_label": _day_label(q.day, today),
        "kinds": summary.kinds, "repos": index.repos(), "q": q, "rows": rows, "total": total,
        "page_no": page_no, "pages": pages, "link": link,
        "forget_counts": forgettable, "forget_scopes": FORGET_SCOPES,
        "waiting": waiting, "uploaded": uploaded, "hold": view.period(hold) if hold else None,
        "upload": st.get("upload") or {}, "outbox": st.get("outbox") or {},
        "delivered_upto": delivered, "unsealed": index.count_seqs(sealed, durable),
        "now_ns": now_ns,
    }
    html = env.get_template("page.html").render(**context)
    return HTMLResponse(html)


def _header(request: Request, st: dict[str, Any], csrf: str) -> dict[str, Any]:
    """What the top of every tab shows: the capture state, its controls, a sentence after a change."""
    flash = None
    done = request.query_params.get("done")
    if done in DONE:
        n = request.query_params.get("n", "0")
        reason = REFUSALS.get(request.query_params.get("reason", ""), "")
        flash = DONE[done].format(n=int(n) if n.isdigit() else 0, reason=reason)
    return {"st": st, "state_word": _state_word(st), "csrf": csrf, "flash": flash,
            "paused_until": _paused_text(st.get("paused_until"))}


def _render_tasks(request: Request, env: Environment, state: Any, index: JournalIndex, miner: Any,
                  csrf: str) -> Response:
    from agent.review import tasks as tasks_mod

    today = dt.date.today()
    raw_day = request.query_params.get("day", "")
    day: dt.date | None = None
    if raw_day and raw_day != "all":
        try:
            day = dt.date.fromisoformat(raw_day)
        except ValueError:
            raise HTTPException(400, "bad day") from None
    st = state.status()
    mined = miner.mined(state.durable_seq(), day)
    days = index.summary(today, state.durable_seq(), state.delivered_upto(), {}).days
    context = {
        **_header(request, st, csrf), "tab": "tasks",
        "mined": mined, "tasks": [tasks_mod.task_view(i) for i in mined.instances],
        "skips": mined.skip_summary(), "took": view.duration(mined.seconds * 1000),
        "max_events": f"{miner.max_events:,}", "max_size": view.size(miner.max_bytes),
        "day": day, "today": today, "days": sorted(set(days) | {today}, reverse=True)[:14],
        "day_label": _day_label(day, today),
    }
    return HTMLResponse(env.get_template("tasks.html").render(**context))


def _state_word(st: dict[str, Any]) -> str:
    if st.get("capturing"):
        return "recording"
    if st.get("paused_until") and st.get("consent") == "opted-in":
        return "paused"
    return "off"


def _paused_text(until: Any) -> str | None:
    if not until:
        return None
    if until == "until resumed":
        return "until you resume"
    try:
        t = dt.datetime.strptime(until, "%Y-%m-%dT%H:%M:%S%z")
    except ValueError:
        return str(until)
    local = t.astimezone()
    today = dt.date.today()
    if local.date() == today:
        return f"until {local:%H:%M}"
    if local.date() == today + dt.timedelta(days=1):
        return f"until tomorrow {local:%H:%M}"
    return f"until {local:%A %-d %B %H:%M}"


def _day_label(day: dt.date | None, today: dt.date) -> str:
    if day is None:
        return "every day held"
    if day == today:
        return "today"
    if day == today - dt.timedelta(days=1):
        return "yesterday"
    return day.strftime("%A %-d %B")

