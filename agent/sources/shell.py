"""Shell commands and test runs: follow the shell hooks' spool and emit `shell.*` and `test.run`.

Takes the spool directory the hooks of `tracecap shell-init` append to (`StatePaths.shell_spool`);
gives `shell.start` / `shell.end` events (source `shell`), `test.run` events (source `tests`) and
`agent.gap` when the hook had to drop records. Promise: each complete record is emitted once, in
the order its shell wrote it; malformed or partial lines are skipped and counted, never fatal;
consumed spool data is deleted; while capture is off records are consumed and discarded.

Spool format, version 1 (the hooks in agent/shell/ are the writers; this module is the reader)
--------------------------------------------------------------------------------------------------
Files. One writer per file: each shell session (one shell process; nested shells start their own)
appends to `<sid>.<k>.rec`, where `<sid>` is `<pid>-<unique>` and `<k>` = 0, 1, 2, ... is the
segment number. Because a file has one writer that writes whole lines, lines never interleave; the
only partial line is a torn tail being written right now, which the reader leaves until its
newline arrives. The hook starts segment k+1 when segment k would exceed
`shell.spool_max_bytes / 4` bytes; a segment is never written again once the next one exists.
Other files: `<sid>.cmd` (bash's scratch copy of the history line), `<sid>.<n>.junit.xml` (the
pytest report of command n, via PYTEST_ADDOPTS) and `.reader.json` (this reader's offsets).

Records. One line each, UTF-8 (other bytes are kept as `\\xNN`), fields separated by TAB, ended by
LF:
    S1 <enc> <sid> <n> <t> <pid> <interactive> <shell> <cwd> <cmd>    a command starts
    E1 <enc> <sid> <n> <t> <exit> <duration_ms>                       command n ended
    D1 <enc> <sid> <total>                                            the hook has dropped total records
`n` counts the session's commands from 1 and pairs S with E. `t` is the shell's own wall clock,
seconds with a fraction (`.` or `,`; bash EPOCHREALTIME, zsh zsh/datetime); fish has no builtin
clock, so its `t` is empty, its E carries `duration_ms` ($CMD_DURATION), and the reader stamps the
time it reads the record. `<interactive>` is 1 or 0. `<enc>` says how `cwd` and `cmd` are made one
line: `b` backslash escapes (\\\\ \\n \\t \\r, everything else literal), `u` percent-encoding of bytes.

Bounds. With the daemon down a session keeps at most 4 segments: when it starts segment k it
truncates segment k-4 if that still holds data and writes `D1` with the session's running total
of dropped S/E records as the first line of segment k. A total (not a delta) survives the loss of
an earlier `D1` with its segment. The reader emits `agent.gap {dropped, reason}` for each increase.
(A segment the reader had half-consumed before it stopped is counted in full.)

Consumption. The reader keeps a byte offset per file in `.reader.json` (replaced atomically after
each batch), deletes a segment once it has read all of it and a later segment exists or its shell
is gone, and deletes the `.cmd` scratch file and stale reports of gone shells.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
import time
import urllib.parse
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterable

from agent import testruns

SEGMENTS_KEPT = 4
CURSOR_FILE = ".reader.json"
MAX_PENDING = 10_000  # started commands waiting for their end, across sessions
HOUSEKEEPING_S = 5.0  # how often gone shells' files are looked for when nothing else happens
REPORT_DIRS = ("target/surefire-reports", "target/failsafe-reports", "build/test-results",
               "reports", "test-results", "test-reports")
REPORT_FILES = ("junit.xml", "report.xml", "test-results.xml", "junit-report.xml")
_SEGMENT = re.compile(r"^(?P<sid>[0-9]+-[A-Za-z0-9]+)\.(?P<k>[0-9]+)\.rec$")
_ESCAPES = {"\\": "\\", "n": "\n", "t": "\t", "r": "\r"}


# --- records (pure) --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Start:
    sid: str
    n: int
    t_ns: int | None
    pid: int
    interactive: bool
    shell: str
    cwd: str
    cmd: str


@dataclasses.dataclass(frozen=True)
class End:
    sid: str
    n: int
    t_ns: int | None
    exit: int
    duration_ms: int | None


@dataclasses.dataclass(frozen=True)
class Dropped:
    sid: str
    count: int


Record = Start | End | Dropped


def decode_field(enc: str, raw: str) -> str:
    if enc == "u":
        return urllib.parse.unquote(raw, errors="backslashreplace")
    if enc != "b":
        raise ValueError(f"unknown field encoding {enc!r}")
    if "\\" not in raw:
        return raw
    out: list[str] = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw) and raw[i + 1] in _ESCAPES:
            out.append(_ESCAPES[raw[i + 1]])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def parse_time(text: str) -> int | None:
    """'1700000000.123456' (or with a decimal comma) -> ns; '' -> None."""
    if not text:
        return None
    try:
        value = Decimal(text.replace(",", "."))
    except InvalidOperation:
        raise ValueError(f"bad time {text!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"bad time {text!r}")
    return int(value * 1_000_000_000)


def parse_record(line: bytes) -> Record | None:
    """One spool line (without its LF) -> a record, or None when it is malformed."""
    try:
        fields = line.decode("utf-8", errors="backslashreplace").split("\t")
        kind = fields[0]
        if kind == "S1" and len(fields) == 10:
            _, enc, sid, n, t, pid, inter, shell, cwd, cmd = fields
            return Start(sid, int(n), parse_time(t), int(pid), inter == "1", shell,
                         decode_field(enc, cwd), decode_field(enc, cmd))
        if kind == "E1" and len(fields) == 7:
            _, enc, sid, n, t, code, dur = fields
            return End(sid, int(n), parse_time(t), int(code), int(dur) if dur else None)
        if kind == "D1" and len(fields) == 4:
            return Dropped(fields[2], int(fields[3]))
    except ValueError:
        return None
    return None


def split_lines(buf: bytes) -> tuple[list[bytes], int]:
    """Complete lines of `buf` and how many bytes they take; a torn tail is left for later."""
    end = buf.rfind(b"\n")
    if end < 0:
        return [], 0
    return buf[:end].split(b"\n"), end + 1


@dataclasses.dataclass(frozen=True)
class Finished:
    """A command whose end has been read, with its start when the reader saw it."""
    start: Start | None
    end: End
    end_ns: int
    duration_ms: int


def command_id(sid: str, n: int) -> str:
    return f"{sid}:{n}"


@dataclasses.dataclass(frozen=True)
class PairState:
    pending: dict[tuple[str, int], Start] = dataclasses.field(default_factory=dict)
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)  # session -> D1 total seen


def pair_records(state: PairState, records: Iterable[Record], now_ns: int
                 ) -> tuple[list[tuple[str, dict[str, Any], int, str]], list[Finished], PairState]:
    """Turn records into events. Pure: `state` is not mutated; the new state is returned.

    Gives (events as (kind, data, ts, session) without `actor`, finished commands, new state).
    `state.pending` holds starts without an end yet, `state.dropped` the last drop total per
    session. `now_ns` stamps records whose shell has no clock (fish). A start's event data gets its
    `actor` from the caller, which knows the process tree.
    """
    pending = dict(state.pending)
    totals = dict(state.dropped)
    events: list[tuple[str, dict[str, Any], int, str]] = []
    finished: list[Finished] = []
    for rec in records:
        if isinstance(rec, Dropped):
            lost = rec.count - totals.get(rec.sid, 0)
            if lost > 0:
                totals[rec.sid] = rec.count
                events.append(("agent.gap", {"dropped": lost, "reason": "shell spool full while "
                                             "the daemon was not reading it"}, now_ns, rec.sid))
        elif isinstance(rec, Start):
            ts = rec.t_ns if rec.t_ns is not None else now_ns
            if rec.t_ns is None:
                rec = dataclasses.replace(rec, t_ns=ts)
            pending[(rec.sid, rec.n)] = rec
            events.append(("shell.start", {"id": command_id(rec.sid, rec.n), "cmd": rec.cmd,
                                           "cwd": rec.cwd, "shell": rec.shell}, ts, rec.sid))
        else:
            start = pending.pop((rec.sid, rec.n), None)
            end_ns = rec.t_ns if rec.t_ns is not None else now_ns
            if rec.duration_ms is not None:
                duration = rec.duration_ms
                if start is not None and rec.t_ns is None and start.t_ns is not None:
                    # fish: the start was stamped when read; the duration fish measured is better.
                    end_ns = max(end_ns, start.t_ns + duration * 1_000_000)
            elif start is not None and start.t_ns is not None:
                duration = max(0, (end_ns - start.t_ns) // 1_000_000)
            else:
                duration = 0
            events.append(("shell.end", {"id": command_id(rec.sid, rec.n), "exit": rec.exit,
                                         "duration_ms": duration}, end_ns, rec.sid))
            finished.append(Finished(start, rec, end_ns, duration))
    while len(pending) > MAX_PENDING:
        pending.pop(next(iter(pending)))
    while len(totals) > MAX_PENDING:
        totals.pop(next(iter(totals)))
    return events, finished, PairState(pending, totals)


# --- test runs --------------------------------------------------------------------------------

def find_reports(cwd: str, since_ns: int, until_ns: int, *, limit: int = 500) -> list[Path]:
    """JUnit XML files under `cwd`'s usual report places written between the two times."""
    base = Path(cwd)
    candidates: list[Path] = [base / name for name in REPORT_FILES]
    for d in REPORT_DIRS:
        root = base / d
        if root.is_dir():
            for dirpath, _dirs, files in os.walk(root):
                candidates.extend(Path(dirpath) / f for f in files if f.endswith(".xml"))
                if len(candidates) > limit:
                    break
    found = []
    for path in candidates[:limit]:
        try:
            st = path.stat()
        except OSError:
            continue
        if since_ns - 1_000_000_000 <= st.st_mtime_ns <= until_ns + 1_000_000_000:
            found.append(path)
    return found


def read_reports(paths: Iterable[Path]) -> testruns.TestReport | None:
    reports = []
    for path in paths:
        try:
            reports.append(testruns.parse_junit(path.read_bytes()))
        except (OSError, testruns.ReportError):
            continue
    return testruns.merge_reports(reports)


# --- the source -------------------------------------------------------------------------------

class ShellSource:
    """Follows the spool with file events; see the module docstring for the format."""

    name = "shell"

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.spool = Path(ctx.paths.shell_spool)
        self.offsets: dict[str, int] = {}
        self.state = PairState()
        self.actors: dict[str, str] = {}
        self.malformed = 0
        self.dropped = 0
        self._wake = threading.Event()

    # policy
    def _policy(self, dotted: str, default: Any) -> Any:
        node: Any = getattr(self.ctx.policy, "data", None) or {}
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def run(self, stop: threading.Event) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        self.spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._load_cursor()
        wake = self._wake

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                wake.set()

        observer = Observer()
        observer.schedule(_Handler(), str(self.spool), recursive=False)
        observer.start()
        # One wait for both: a spool change (watchdog's thread) or stop (this helper).
        threading.Thread(target=lambda: (stop.wait(), wake.set()), name="shell-stop-waker",
                         daemon=True).start()
        self.ctx.set_state("running")
        last_sweep = 0.0
        try:
            while not stop.is_set():
                self.drain()
                now = time.monotonic()
                if now - last_sweep >= HOUSEKEEPING_S:
                    self.sweep()
                    last_sweep = now
                wake.wait(HOUSEKEEPING_S)
                wake.clear()
        finally:
            observer.stop()
            observer.join(timeout=5)
            self.drain()

    # reading
    def _segments(self) -> dict[str, list[tuple[int, str]]]:
        by_sid: dict[str, list[tuple[int, str]]] = {}
        try:
            entries = list(os.scandir(self.spool))
        except FileNotFoundError:
            return by_sid
        for entry in entries:
            m = _SEGMENT.match(entry.name)
            if m:
                by_sid.setdefault(m["sid"], []).append((int(m["k"]), entry.name))
        for segs in by_sid.values():
            segs.sort()
        return by_sid

    def drain(self) -> int:
        """Read every complete new record, emit it, advance and persist offsets. Gives the count."""
        total = 0
        changed = False
        for sid, segs in self._segments().items():
            for i, (_k, fname) in enumerate(segs):
                path = self.spool / fname
                offset = self.offsets.get(fname, 0)
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    continue
                if size < offset:  # truncated by the hook (spool full): nothing left to read
                    offset = 0
                    self.offsets[fname] = 0
                    changed = True
                if size > offset:
                    try:
                        with open(path, "rb") as fh:
                            fh.seek(offset)
                            buf = fh.read(size - offset)
                    except OSError as exc:
                        self.ctx.log.warning("cannot read shell spool file %s: %s", path, exc)
                        continue
                    lines, used = split_lines(buf)
                    if used:
                        total += self._consume(lines)
                        offset += used
                        self.offsets[fname] = offset
                        changed = True
                later = i + 1 < len(segs)
                if later and offset >= size:
                    self._remove(path)
                    self.offsets.pop(fname, None)
                    changed = True
        if changed:
            self._save_cursor()
        return total

    def _consume(self, lines: list[bytes]) -> int:
        records: list[Record] = []
        for line in lines:
            rec = parse_record(line)
            if rec is None:
                self.malformed += 1
            else:
                records.append(rec)
        now = time.time_ns()
        events, finished, self.state = pair_records(self.state, records, now)
        self.dropped += sum(d["dropped"] for k, d, _, _ in events if k == "agent.gap")
        if not self.ctx.capturing():
            for fin in finished:
                self._remove(self._junit_path(fin.end.sid, fin.end.n))
            return 0
        emit = self.ctx.emit
        for kind, data, ts, session in events:
            if kind == "shell.start":
                start = self.state.pending.get(_key_of(data["id"]))
                data["actor"] = self._actor(session, start)
            emit(kind, data, ts=ts, session=session)
        if "tests" in self._policy("capture.sources", ["tests"]):
            for fin in finished:
                self._test_run(fin)
        else:
            for fin in finished:
                self._remove(self._junit_path(fin.end.sid, fin.end.n))
        return len(events)

    def _actor(self, sid: str, start: Start | None) -> str:
        if sid in self.actors:
            return self.actors[sid]
        from agent import actor

        agents = self._policy("tools.agents", list(actor.DEFAULT_AGENTS))
        pid = start.pid if start else int(sid.split("-", 1)[0])
        interactive = start.interactive if start else True
        who = actor.classify(actor.ancestry(pid), interactive=interactive, agents=agents)
        if len(self.actors) > MAX_PENDING:
            self.actors.clear()
        self.actors[sid] = who
        return who

    def _junit_path(self, sid: str, n: int) -> Path:
        return self.spool / f"{sid}.{n}.junit.xml"

    def _test_run(self, fin: Finished) -> None:
        own = self._junit_path(fin.end.sid, fin.end.n)
        if fin.start is None:
            self._remove(own)
            return
        runner = testruns.recognise_runner(fin.start.cmd)
        if runner is None:
            self._remove(own)
            return
        data: dict[str, Any] = {"runner": runner, "cmd": fin.start.cmd, "exit": fin.end.exit,
                                "duration_ms": fin.duration_ms}
        if own.exists():
            report = read_reports([own])
        else:
            since = fin.start.t_ns or (fin.end_ns - fin.duration_ms * 1_000_000)
            report = read_reports(find_reports(fin.start.cwd, since, time.time_ns()))
        self._remove(own)
        if report is not None:
            data.update(report.as_data())
        self.ctx.emit("test.run", data, ts=fin.end_ns, session=fin.end.sid, source="tests")

    # housekeeping
    def sweep(self) -> None:
        """Delete fully read segments, scratch files and reports of shells that are gone."""
        changed = False
        live: dict[str, bool] = {}
        for sid, segs in self._segments().items():
            if _alive(sid, live):
                continue
            for _k, fname in segs:
                path = self.spool / fname
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    continue
                if self.offsets.get(fname, 0) >= size:
                    self._remove(path)
                    self.offsets.pop(fname, None)
                    changed = True
        try:
            names = os.listdir(self.spool)
        except FileNotFoundError:
            names = []
        for name in names:
            if name.endswith(".cmd") or name.endswith(".junit.xml"):
                sid = name.split(".", 1)[0]
                if not _alive(sid, live):
                    self._remove(self.spool / name)
        for fname in [f for f in self.offsets if not (self.spool / f).exists()]:
            self.offsets.pop(fname)
            changed = True
        if changed:
            self._save_cursor()

    def _remove(self, path: Path) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            self.ctx.log.warning("cannot remove shell spool file %s: %s", path, exc)

    def _load_cursor(self) -> None:
        try:
            raw = json.loads((self.spool / CURSOR_FILE).read_text())
            self.offsets = {str(k): int(v) for k, v in raw.get("offsets", {}).items()}
            self.state = PairState({}, {str(k): int(v) for k, v in raw.get("dropped", {}).items()})
        except (OSError, ValueError, AttributeError):
            self.offsets = {}

    def _save_cursor(self) -> None:
        tmp = self.spool / (CURSOR_FILE + ".tmp")
        try:
            tmp.write_text(json.dumps({"v": 1, "offsets": self.offsets, "dropped": self.state.dropped}))
            os.replace(tmp, self.spool / CURSOR_FILE)
        except OSError as exc:
            self.ctx.log.warning("cannot save the shell spool cursor: %s", exc)


def _key_of(command_id_: str) -> tuple[str, int]:
    sid, n = command_id_.rsplit(":", 1)
    return sid, int(n)


def _alive(sid: str, cache: dict[str, bool]) -> bool:
    if sid not in cache:
        try:
            pid = int(sid.split("-", 1)[0])
            os.kill(pid, 0)
            cache[sid] = True
        except ProcessLookupError:
            cache[sid] = False
        except (PermissionError, ValueError):
            cache[sid] = True  # another user's process (sudo -s): keep its files
    return cache[sid]
