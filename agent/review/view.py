"""What the review page shows, as pure functions: events made readable, redaction markers found,
diffs split into coloured lines, the activity chart drawn as SVG, times and sizes in words.

Takes events (already redacted: they come from the journal) and counts; gives plain values and
markup-safe strings for the templates. No I/O. Every piece of event text passes through
`markupsafe.escape` before any markup is added around it, so nothing an event holds can become
markup on the page.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from markupsafe import Markup, escape

# `[REDACTED:rule]`, `[REDACTION-FAILED]`, and the `hash` action's pseudonyms `[rule:1a2b3c4d]`
# (see redaction/engine.py). Matched on escaped text: none of these characters is escaped.
MARKER = re.compile(r"\[REDACTED:[A-Za-z0-9_.-]+\]|\[REDACTION-FAILED\]|\[[a-z0-9][a-z0-9_.-]*:[0-9a-f]{8}\]")

SOURCE_COLOURS = {  # chart rows; colour-blind-safe (Okabe-Ito), each with a text label too
    "shell": "#0072b2",
    "files": "#e69f00",
    "tests": "#009e73",
    "git": "#cc79a7",
    "tools": "#56b4e9",
    "input": "#999999",
}


def mark_redactions(text: Any) -> Markup:
    """Escaped text with every redaction marker wrapped in <mark class="redacted">."""
    safe = str(escape("" if text is None else str(text)))
    return Markup(MARKER.sub(lambda m: f'<mark class="redacted" title="removed by redaction">{m.group(0)}</mark>',
                             safe))


def count_markers(data: Any) -> int:
    if isinstance(data, str):
        return len(MARKER.findall(data))
    if isinstance(data, dict):
        return sum(count_markers(v) for v in data.values())
    if isinstance(data, (list, tuple)):
        return sum(count_markers(v) for v in data)
    return 0


def diff_lines(diff: str, limit: int = 400) -> list[tuple[str, Markup]]:
    """(css class, marked-up line) per line of a unified diff, the first `limit` lines."""
    out = []
    lines = str(diff).splitlines()
    for line in lines[:limit]:
        if line.startswith(("+++", "---")):
            cls = "file"
        elif line.startswith("@@"):
            cls = "hunk"
        elif line.startswith("+"):
            cls = "add"
        elif line.startswith("-"):
            cls = "del"
        else:
            cls = "ctx"
        out.append((cls, mark_redactions(line)))
    if len(lines) > limit:
        out.append(("more", Markup(f"… {len(lines) - limit} more lines")))
    return out


def duration(ms: Any) -> str:
    if not isinstance(ms, (int, float)):
        return ""
    if ms < 1000:
        return f"{ms:.0f} ms"
    s = ms / 1000
    if s < 60:
        return f"{s:.1f} s"
    return f"{int(s // 60)} min {int(s % 60)} s"


def size(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def clock(ts_ns: int) -> str:
    return dt.datetime.fromtimestamp(ts_ns / 1e9).strftime("%H:%M:%S")


def when(ts_ns: int | None, now_ns: int | None = None) -> str:
    """`14:05:09` today, `Tue 2 Dec 14:05` another day."""
    if not ts_ns:
        return "never"
    t = dt.datetime.fromtimestamp(ts_ns / 1e9)
    now = dt.datetime.fromtimestamp(now_ns / 1e9) if now_ns else dt.datetime.now()
    return t.strftime("%H:%M:%S") if t.date() == now.date() else t.strftime("%a %-d %b %H:%M")


def countdown(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h} h {m:02d} min"
    if m:
        return f"{m} min {s:02d} s"
    return f"{s} s"


def period(seconds: float) -> str:
    """A configured span in words: `15 minutes`, `1 hour`, `2 h 30 min`, `1 day`."""
    seconds = int(seconds)
    for size, one, many in ((86400, "day", "days"), (3600, "hour", "hours"), (60, "minute", "minutes")):
        if seconds >= size and seconds % size == 0:
            n = seconds // size
            return f"{n} {one if n == 1 else many}"
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds} s"


def short_sha(sha: Any) -> str:
    return str(sha or "")[:10]


# ---------------------------------------------------------------------------- events
def describe(ev: Any, shell_end: dict | None = None) -> dict[str, Any]:
    """What a row shows for one event: `title` (a line of text), `kind_class`, and the details the
    template lays out per kind. Every string stays a plain string here; the template marks
    redactions (escaping them) where it prints them."""
    d = ev.data if isinstance(ev.data, dict) else {}
    k = ev.kind
    row: dict[str, Any] = {"seq": ev.seq, "kind": k, "source": ev.source, "time": clock(ev.ts), "ts": ev.ts,
                           "family": k.split(".")[0], "markers": count_markers(d)}
    if k == "shell.start":
        row["cmd"] = d.get("cmd", "")
        row["cwd"] = d.get("cwd", "")
        row["actor"] = d.get("actor")
        if shell_end is not None:
            row["exit"] = shell_end.get("exit")
            row["took"] = duration(shell_end.get("duration_ms"))
    elif k == "shell.end":
        row["exit"] = d.get("exit")
        row["took"] = duration(d.get("duration_ms"))
    elif k == "file.save":
        row["path"] = d.get("path", "")
        row["repo"] = d.get("repo", "")
        row["op"] = d.get("op", "")
        row["size"] = size(d.get("size"))
        row["diff"] = diff_lines(d["diff"]) if isinstance(d.get("diff"), str) and d["diff"] else None
        row["diff_omitted"] = d.get("diff_omitted")
    elif k == "test.run":
        row["runner"] = d.get("runner", "")
        row["cmd"] = d.get("cmd", "")
        row["exit"] = d.get("exit")
        row["took"] = duration(d.get("duration_ms"))
        row["counts"] = {n: d.get(n) for n in ("passed", "failed", "skipped") if d.get(n) is not None}
        failures = d.get("failures") if isinstance(d.get("failures"), list) else []
        row["failures"] = [{"name": f.get("name", ""), "message": f.get("message", "")}
                           for f in failures[:20] if isinstance(f, dict)]
        row["more_failures"] = max(0, len(failures) - 20)
    elif k == "git.commit":
        row["repo"] = d.get("repo", "")
        row["sha"] = short_sha(d.get("sha"))
        row["message"] = d.get("message", "")
    elif k == "git.checkout":
        row["repo"] = d.get("repo", "")
        row["from"], row["to"] = d.get("from", ""), d.get("to", "")
    elif k == "git.ref":
        row["repo"] = d.get("repo", "")
        row["ref"], row["action"] = d.get("ref", ""), d.get("action", "")
        row["old"], row["new"] = short_sha(d.get("old")), short_sha(d.get("new"))
    elif k == "repo.state":
        row["repo"] = d.get("repo", "")
        row["branch"], row["head"] = d.get("branch") or "(detached)", short_sha(d.get("head"))
        row["remote"] = d.get("remote")
        row["diff"] = diff_lines(d["diff"]) if isinstance(d.get("diff"), str) and d["diff"] else None
        row["diff_omitted"] = d.get("diff_omitted")
    elif k == "tool.invocation":
        argv = d.get("argv")
        row["cmd"] = " ".join(str(a) for a in argv) if isinstance(argv, list) and argv else d.get("exe", "")
        row["cwd"] = d.get("cwd", "")
        row["took"] = duration(d.get("duration_ms"))
        row["actor"] = d.get("actor")
    elif k == "input.activity":
        span = ""
        if isinstance(d.get("start"), int) and isinstance(d.get("end"), int):
            span = f"{max(0, (d['end'] - d['start'])) / 1e9:.0f} s"
        row["title"] = (f"{d.get('keys', 0)} keys, {d.get('clicks', 0)} clicks, {d.get('scrolls', 0)} scrolls"
                        + (f" in {span}" if span else ""))
    elif k == "app.focus":
        row["title"] = f"{d.get('app', '')}" + (f" — {d['title']}" if d.get("title") else "")
    elif k == "user.note":
        row["title"] = d.get("text", "")
    elif k.startswith("agent."):
        row["title"] = _agent_line(k, d)
    else:
        row["title"] = json.dumps(d, ensure_ascii=False, sort_keys=True)[:400]
    return row


def _agent_line(kind: str, d: dict) -> str:
    if kind == "agent.forget":
        return f"{d.get('count', 0)} events forgotten"
    if kind == "agent.gap":
        return f"{d.get('dropped', 0)} events lost: {d.get('reason', '')}"
    if kind in ("agent.pause", "agent.resume"):
        until = d.get("until")
        if isinstance(until, str):
            try:
                until = dt.datetime.strptime(until, "%Y-%m-%dT%H:%M:%S%z").astimezone().strftime("%a %H:%M")
            except ValueError:
                pass
        return f"{d.get('reason', '')}" + (f" (until {until})" if until else "")
    if kind == "agent.policy":
        return f"policy {d.get('origin', '')} applied"
    if kind in ("agent.start", "agent.stop"):
        return f"tracecap {d.get('version', '')}".strip() if kind == "agent.start" else d.get("reason", "")
    return json.dumps(d, ensure_ascii=False, sort_keys=True)[:200]


# ---------------------------------------------------------------------------- the chart
def chart_svg(counts: dict[str, list[int]], *, now_hour: int | None = None) -> Markup:
    """A stacked bar per hour (0-23), one colour per source, with axis labels, a legend and a
    <title> per bar segment for hover and screen readers. Presentation attributes only (no
    style attributes): the page's Content-Security-Policy allows no inline styles."""
    width, height = 760, 200
    left, right, top, bottom = 40, 10, 14, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(counts[s][h] for s in counts) for h in range(24)]
    peak = max(totals) or 1
    scale = _nice_ceiling(peak)
    bar_w = plot_w / 24
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
             f'class="chart" aria-labelledby="chart-title"><title id="chart-title">Events per hour by '
             f'source: {sum(totals)} in all</title>']
    for frac in (0, 0.5, 1):
        y = top + plot_h - plot_h * frac
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="axis">'
                     f'{int(scale * frac)}</text>')
    if now_hour is not None:
        x = left + now_hour * bar_w
        parts.append(f'<rect x="{x:.1f}" y="{top}" width="{bar_w:.1f}" height="{plot_h}" class="now"/>')
    for h in range(24):
        x = left + h * bar_w + 2
        y = top + plot_h
        for src, colour in SOURCE_COLOURS.items():
            n = counts.get(src, [0] * 24)[h]
            if not n:
                continue
            bh = max(1.0, plot_h * n / scale)
            y -= bh
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 4:.1f}" height="{bh:.1f}" '
                         f'fill="{colour}"><title>{h:02d}:00–{(h + 1) % 24:02d}:00 {src}: {n} '
                         f'event{"s" if n != 1 else ""}</title></rect>')
        if h % 3 == 0:
            parts.append(f'<text x="{left + h * bar_w + bar_w / 2:.1f}" y="{top + plot_h + 14}" '
                         f'text-anchor="middle" class="axis">{h:02d}</text>')
    lx = left
    for src, colour in SOURCE_COLOURS.items():
        total = sum(counts.get(src, []))
        parts.append(f'<rect x="{lx}" y="{height - 16}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{lx + 14}" y="{height - 7}" class="legend">{src} {total}</text>')
        lx += 110
    parts.append("</svg>")
    return Markup("".join(parts))


def _nice_ceiling(n: int) -> int:
    """The next of 1, 2, 5 × 10^k at or above n, so the axis reads in round numbers."""
    k = 1
    while True:
        for m in (1, 2, 5):
            if m * k >= n:
                return m * k
        k *= 10
