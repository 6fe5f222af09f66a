"""Shell commands and test runs: follow the shell hooks' spool and emit `shell.*` and `test.run`.

Takes the spool directory the hooks of `tracecap shell-init` append to (`StatePaths.shell_spool`);
gives `shell.start` / `shell.end` events (source `shell`), `test.run` events (source `tests`) and
`agent.gap` when the hook had to drop records. Promise: each complete record is emitted once, in
the order its shell wrote it; malformed or partial records are skipped and counted, never fatal;
once the events of a record are durable in the journal (or were discarded while capture is off),
its bytes in the spool are overwritten with NUL bytes, so no raw command text outlives its
consumption and no command is lost to a crash; a segment is deleted once it is read to the end,
its events are durable, and its shell has moved on or is gone. A record whose events reached the
journal just before a crash is read again after it: its events carry a command `id`, and the
daemon drops those already journaled (agent/replay.py). While the journal's disk is full the spool
is left unread: the commands wait there, within the hook's bounds. Test reports are found and read
by agent/testreports.py (without blocking, without following links, size-capped, as a stream).

Spool format, version 2 (the hooks in agent/shell/ are the writers; this module is the reader)
--------------------------------------------------------------------------------------------------
Files. The directory is the user's and private (0700); a hook writes into nothing else, and into
no segment that is not the user's private (0600) regular file: it checks when it makes a segment.
One writer per file: each shell session (one shell process; nested shells start their own)
appends to `<sid>.<k>.rec`, where `<sid>` is `<pid>-<unique>` and `<k>` = 0, 1, 2, ... is the
segment number. Writers only append (O_APPEND) and create segments with mode 0600 whatever their
umask (bash: the umask set to 077 around the creating redirection, the current one read back
through `<sid>.umask`, itself made 0600 by a subshell under umask 077; zsh: `sysopen -m 600`, or
without zsh/system a subshell under umask 077; fish: `$umask`). bash and zsh keep the current segment
open on a descriptor (bash: `exec {fd}>>`, close-on-exec where bash's loadable `fdflags` is
installed; zsh: `sysopen -o cloexec`) and write each record with one write to it; fish opens the
file for each record (`>>`). The hook starts segment k+1 when
segment k would exceed `shell.spool_max_bytes / 4` bytes; a segment is never written again once the
next one exists. Other files: `<sid>.<n>.junit.xml` (the pytest report of command n, through
PYTEST_ADDOPTS; in `StatePaths.report_dir()`, a memory-backed directory, which is the spool itself
unless TRACECAP_HOME is set; the hooks ask for reports only while it exists and is private, and
the reader makes it again within HOUSEKEEPING_S when it is removed), `<sid>.umask` (bash's
scratch copy of its umask while it creates a segment; no command text) and `.reader.json` (this
reader's offsets).

Records. Each record ends with one NUL byte; fields are separated by TAB. A record's last field
may hold any byte but NUL (shells cannot hold NUL in a string; zsh, which can, writes `^@` for it),
so a command's text is written raw, never escaped, in the same single write as its record.
    H2 <sid> <pid> <interactive> <shell>     the first record of every segment: who writes it
    S2 <n> <t> <cwd> <form><cmd>             command n starts
    E2 <n> <t> <exit> <duration_ms>          command n ended
    D2 <total>                               the hook has dropped total S2/E2 records so far
`n` pairs S2 with E2 and grows within a session: bash and zsh count commands from 1; fish,
which has no arithmetic without a command substitution, hands numbers out in blocks of up to
100 (100-199, 200-299, ...) and skips the rest of a block when it starts a new one. `t` is the
shell's own wall clock, seconds with a fraction (`.` or `,`; bash EPOCHREALTIME, zsh zsh/datetime); fish has no builtin
clock, so its `t` is empty, its E2 carries `duration_ms` ($CMD_DURATION), and the reader stamps the
time it reads the record. `<interactive>` is 1 or 0. `cwd` is escaped (\\\\ \\n \\t \\r, the rest
literal). `<form>` is one letter: `r` the text follows raw; `h` what follows is bash's `history 1`
output for the line (`%5d%c %s\\n`: number, `*` or space, space, text, newline), which the reader
strips to the text. Text is UTF-8; other bytes are kept as `\\xNN`.

Consumption. A reader skips NUL bytes between records: once the journal has fsynced the events of
a batch of records it overwrites their byte range (never the H2 header) with NUL bytes in place
(pwrite), which cannot race the writer because the writer only appends past the range read. It
keeps the byte offset up to which each file is erased in `.reader.json` (replaced atomically at
most once a second; an older copy only makes the reader skip NUL bytes again). A torn tail (no NUL yet) is left
until its NUL arrives. (Overwriting in place removes the text from the file; a copy-on-write file
system may still hold the old blocks until they are reused.)

Bounds. With the daemon down a session keeps at most 4 segments: when it starts segment k it
truncates segment k-4 if that still holds data and writes `D2` with the session's running total
of dropped S2/E2 records right after the header of segment k. A total (not a delta) survives the
loss of an earlier `D2` with its segment. The reader emits `agent.gap {dropped, reason}` for each
increase. (A segment the reader had half-consumed before it stopped is counted in full.) bash
cannot see a line's full text without writing it, so it counts a start record's size from the
line's first simple command ($BASH_COMMAND): a line of many commands can overrun the bound by its
remaining text.
fish charges each block of numbers up front for the longest record a short command (under 256
characters, 4 bytes each) can make in the current cwd, and a longer command for its own
length; so its segments stay under the bound but usually hold fewer bytes than it allows.

Version 1 (one LF-ended line per record, `S1 <enc> <sid> ...`) is still read from segments whose
first record is a version 1 record, so shells that loaded an older hook keep being captured.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import select
import threading
import time
import urllib.parse
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterable

from agent import testruns
from agent.testreports import find_reports, read_reports
from agent.sources import files_inotify

SEGMENTS_KEPT = 4
CURSOR_FILE = ".reader.json"
MAX_PENDING = 10_000  # started commands waiting for their end, across sessions
HOUSEKEEPING_S = 5.0  # how often gone shells' files are looked for when nothing else happens
READ_CHUNK = 1 << 22  # at most this many bytes of one segment per read
SCRATCH_SUFFIXES = (".cmd", ".umask", ".junit.xml")  # .cmd: bash's history copy in version 1
_SEGMENT = re.compile(r"^(?P<sid>[0-9]+-[A-Za-z0-9]+)\.(?P<k>[0-9]+)\.rec$")
# The hooks put a pytest report path in PYTEST_ADDOPTS only for lines holding one of these words.
_MAY_HAVE_REPORT = re.compile(r"test|tox|nox|check")
CURSOR_SAVE_S = 1.0  # the cursor is saved at most this often while reading (and on stop)
QUIET_S = 30.0  # a loop that has not come round for this long is stuck (it comes every 5 s)
STOP_FLUSH_S = 3.0  # on stop, how long to wait for the last events to be durable before erasing
ORPHAN_REPORT_S = 600  # a report no command read for this long is deleted unread
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


@dataclasses.dataclass(frozen=True)
class Header:
    """Who writes a segment (its H2 record); `size` is the header's length in bytes with its NUL."""
    sid: str
    pid: int
    interactive: bool
    shell: str
    size: int = 0


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
    sec, sep, frac = text.replace(",", ".").partition(".")
    if sec.isdigit() and sec.isascii() and (not sep or (frac.isdigit() and frac.isascii())):
        return int(sec) * 1_000_000_000 + (int(frac[:9].ljust(9, "0")) if frac else 0)
    try:
        value = Decimal(text.replace(",", "."))
    except InvalidOperation:
        raise ValueError(f"bad time {text!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"bad time {text!r}")
    return int(value * 1_000_000_000)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="backslashreplace")


def parse_command(form_and_text: str) -> str:
    """An S2 record's `<form><cmd>` field -> the command text; ValueError when it is not one."""
    form, text = form_and_text[:1], form_and_text[1:]
    if form == "r":
        return text
    if form == "h":  # `%5d%c %s\n`: spaces, the number, `*` or a space, a space, the text
        rest = text.lstrip(" ")
        digits = len(rest) - len(rest.lstrip("0123456789"))
        if digits == 0 or rest[digits:digits + 1] not in ("*", " ") or rest[digits + 1:digits + 2] != " ":
            raise ValueError("not a history line")
        body = rest[digits + 2:]
        return body[:-1] if body.endswith("\n") else body
    raise ValueError(f"unknown command form {form!r}")


def parse_header(piece: bytes) -> Header | None:
    """An H2 record (without its NUL) -> its header, or None."""
    fields = piece.split(b"\t")
    if len(fields) != 5 or fields[0] != b"H2":
        return None
    try:
        return Header(_text(fields[1]), int(fields[2]), fields[3] == b"1", _text(fields[4]),
                      len(piece) + 1)
    except ValueError:
        return None


def parse_record2(piece: bytes, header: Header) -> Record | None:
    """One version 2 record (without its NUL) of a segment written by `header`'s shell, or None."""
    try:
        kind = piece[:3]
        if kind == b"S2\t":
            fields = piece.split(b"\t", 4)
            if len(fields) == 5:
                _, n, t, cwd, cmd = fields
                return Start(header.sid, int(n), parse_time(_text(t)), header.pid,
                             header.interactive, header.shell, decode_field("b", _text(cwd)),
                             parse_command(_text(cmd)))
        elif kind == b"E2\t":
            fields = piece.split(b"\t")
            if len(fields) == 5:
                _, n, t, code, dur = fields
                return End(header.sid, int(n), parse_time(_text(t)), int(code),
                           int(dur) if dur else None)
        elif kind == b"D2\t":
            fields = piece.split(b"\t")
            if len(fields) == 2:
                return Dropped(header.sid, int(fields[1]))
    except ValueError:
        return None
    return None


def parse_record(line: bytes) -> Record | None:
    """One version 1 spool line (without its LF) -> a record, or None when it is malformed."""
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
    """Complete version 1 lines of `buf` and how many bytes they take; a torn tail is left for
    later. NUL bytes (consumed lines the reader overwrote) are not part of any line."""
    end = buf.rfind(b"\n")
    if end < 0:
        return [], 0
    return [ln for ln in (p.lstrip(b"\0") for p in buf[:end].split(b"\n")) if ln], end + 1


def split_records(buf: bytes) -> tuple[list[bytes], int]:
    """Complete version 2 records of `buf` (NUL runs skipped) and how many bytes they take."""
    end = buf.rfind(b"\0")
    if end < 0:
        return [], 0
    return [p for p in buf[:end].split(b"\0") if p], end + 1


def is_version1(head: bytes) -> bool:
    """Whether a segment starting with `head` (NULs skipped) holds version 1 lines."""
    return head.lstrip(b"\0")[:3] in (b"S1\t", b"E1\t", b"D1\t")


def parse_segment(buf: bytes, header: Header | None
                  ) -> tuple[list[Record], int, int, Header | None]:
    """Version 2 records of `buf`, a segment's bytes from where the last read ended.

    Gives (records, bytes used, malformed count, header). `header` is the segment's H2 when it was
    read before; an H2 in `buf` sets it. Records before any header cannot be attributed and count as
    malformed, as do records that do not parse. A torn tail is not used.
    """
    pieces, used = split_records(buf)
    records: list[Record] = []
    malformed = 0
    for piece in pieces:
        if piece[:3] == b"H2\t":
            got = parse_header(piece)
            if got is None:
                malformed += 1
            else:
                header = got
            continue
        rec = parse_record2(piece, header) if header is not None else None
        if rec is None:
            malformed += 1
        else:
            records.append(rec)
    return records, used, malformed, header


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
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)  # session -> D total seen


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
                # `id` names this total: read again after a crash, it is not journaled twice.
                events.append(("agent.gap", {"dropped": lost, "reason": "shell spool full while "
                                             "the daemon was not reading it",
                                             "id": f"{rec.sid}:dropped:{rec.count}"}, now_ns, rec.sid))
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


# --- the source -------------------------------------------------------------------------------

@dataclasses.dataclass
class _Unacked:
    """Records read and handed on whose bytes wait for their events to be durable."""
    mark: int  # the journal's mark after their events were emitted
    fname: str
    start: int  # the byte range to overwrite with NUL bytes (the header stays)
    end: int
    reports: list[Path]  # test reports to delete with them
    dropped: dict[str, int] | None  # the sessions' drop totals once these are consumed, if changed


class ShellSource:
    """Follows the spool with file events; see the module docstring for the format."""

    name = "shell"

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.spool = Path(ctx.paths.shell_spool)
        self.reports = self.spool  # where pytest's reports are: StatePaths.report_dir(), in run
        self.offsets: dict[str, int] = {}  # segment file -> read up to here
        self.acked: dict[str, int] = {}  # segment file -> erased up to here (what the cursor keeps)
        self.acked_dropped: dict[str, int] = {}  # drop totals of what is erased (the cursor's)
        self.unacked: collections.deque[_Unacked] = collections.deque()
        self._reports: list[Path] = []  # reports of the batch being consumed, deleted with it
        self._stop: threading.Event | None = None
        self.headers: dict[str, Header] = {}  # segment file -> its H2 (version 2)
        self.formats: dict[str, int] = {}  # segment file -> record version
        self.unreadable: set[str] = set()  # segment files already warned about
        self.hidden: set[tuple[str, int]] = set()  # space-prefixed commands whose end is to come
        self.state = PairState()
        self.actors: dict[str, str] = {}
        self.malformed = 0
        self.dropped = 0
        self._wake = threading.Event()
        self._cursor_dirty = False
        self._cursor_saved = 0.0

    # policy
    def _policy(self, dotted: str, default: Any) -> Any:
        node: Any = getattr(self.ctx.policy, "data", None) or {}
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        self.spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.reports = Path(self.ctx.paths.report_dir())
        self._load_cursor()
        self.ctx.set_state("running")
        self.ctx.heartbeat(QUIET_S)
        if files_inotify.available():
            self._follow_inotify(stop)
        else:
            self._follow_watchdog(stop)

    def _finish(self) -> None:
        """On stop: wait (bounded) for what was emitted to be durable, and erase it. What is not
        read yet stays in the spool for the next start."""
        try:
            acks = self.ctx.acks
            if self.unacked and acks is not None:
                try:
                    acks.flush(STOP_FLUSH_S)
                except Exception as exc:  # the records stay in the spool, read again next time
                    self.ctx.log.warning("shell events not confirmed durable on stop: %s", exc)
            self._ack()
        finally:
            self._save_cursor()

    def _follow_inotify(self, stop: threading.Event) -> None:
        """One inotify descriptor on the spool directory: the loop wakes when a hook writes (the
        hooks keep segments open, so IN_MODIFY), drops the queued events unread and drains."""
        watcher = files_inotify.InotifyWatcher()
        # The journal's fsyncs wake the loop through this pipe while records wait to be erased.
        ack_r, ack_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

        def on_durable() -> None:
            if self.unacked:
                try:
                    os.write(ack_w, b"\0")
                except BlockingIOError:
                    pass  # a wake-up is pending already

        def wait(timeout: float) -> None:
            poller.poll(timeout * 1000)
            watcher.discard()
            try:
                os.read(ack_r, 4096)
            except BlockingIOError:
                pass

        acks = self.ctx.acks
        try:
            if acks is not None:
                acks.subscribe(on_durable)
            watcher.add(str(self.spool), files_inotify.IN_MODIFY | files_inotify.IN_CREATE
                        | files_inotify.IN_MOVED_TO | files_inotify.IN_CLOSE_WRITE)
            with files_inotify.stop_pipe(stop, "shell-stop-waker") as stop_r:
                poller = select.poll()
                poller.register(watcher.fileno(), select.POLLIN)
                poller.register(stop_r, select.POLLIN)
                poller.register(ack_r, select.POLLIN)
                self._loop(stop, wait)
        finally:
            if acks is not None:
                acks.unsubscribe(on_durable)
            watcher.close()
            self._finish()
            os.close(ack_r)
            os.close(ack_w)

    def _follow_watchdog(self, stop: threading.Event) -> None:
        """Elsewhere, watchdog's observer says when the spool changes."""
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        wake = self._wake
        acks = self.ctx.acks

        def on_durable() -> None:
            if self.unacked:
                wake.set()

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                wake.set()

        observer = Observer()
        observer.schedule(_Handler(), str(self.spool), recursive=False)
        observer.start()
        # One wait for both: a spool change (watchdog's thread) or stop (this helper).
        threading.Thread(target=lambda: (stop.wait(), wake.set()), name="shell-stop-waker",
                         daemon=True).start()
        if acks is not None:
            acks.subscribe(on_durable)
        try:
            self._loop(stop, lambda timeout: (wake.wait(timeout), wake.clear()))
        finally:
            if acks is not None:
                acks.unsubscribe(on_durable)
            observer.stop()
            observer.join(timeout=5)
            self._finish()

    def _loop(self, stop: threading.Event, wait: Any) -> None:
        last_sweep = 0.0
        while not stop.is_set():
            self.ctx.heartbeat(QUIET_S)
            self.drain()
            now = time.monotonic()
            if now - last_sweep >= HOUSEKEEPING_S:
                self.sweep()
                last_sweep = now
            wait(HOUSEKEEPING_S)

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
        """Read every complete new record and emit it; erase what is durable; persist offsets.
        Gives the count of events emitted."""
        total = 0
        changed = False
        self._ack()
        acks = self.ctx.acks
        if acks is not None and acks.held():
            return 0  # the journal cannot take events: the commands are safe where they are
        for segs in self._segments().values():
            for i, (_k, fname) in enumerate(segs):
                self.ctx.heartbeat(QUIET_S)  # a long backlog is progress, not a stall
                got, moved = self._drain_segment(fname, later=i + 1 < len(segs))
                total += got
                changed = changed or moved
        if changed:
            self._cursor_dirty = True
        self._ack()
        # Consumed records are blanked, so a reader that restarts with an older cursor only
        # skips NUL bytes again: the cursor need not be written after every batch.
        if self._cursor_dirty and time.monotonic() - self._cursor_saved >= CURSOR_SAVE_S:
            self._save_cursor()
        return total

    def _drain_segment(self, fname: str, *, later: bool) -> tuple[int, bool]:
        """Consume one segment's new records. Gives (events emitted, whether its offset moved)."""
        if self._stop is not None and self._stop.is_set():
            # Stopped (or stuck and replaced by a fresh instance): what is unread stays for the
            # next reader.
            return 0, False
        path = self.spool / fname
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return 0, False
        except OSError as exc:
            if fname not in self.unreadable:
                self.unreadable.add(fname)
                self.ctx.log.warning("cannot open shell spool file %s: %s", path, exc)
            return 0, False
        total = 0
        moved = False
        try:
            st = os.fstat(fd)
            if st.st_mode & 0o077:  # a writer that could not create it 0600 (an older hook)
                os.fchmod(fd, 0o600)
            offset = self.offsets.get(fname, 0)
            if st.st_size < offset:  # truncated by the hook (spool full): nothing left to read
                offset = 0
                self.acked[fname] = 0
                moved = True
            if st.st_size > offset:
                buf = os.pread(fd, st.st_size - offset, offset)
                if fname not in self.formats:
                    head = buf if offset == 0 else os.pread(fd, 64, 0)
                    if head.lstrip(b"\0"):
                        self.formats[fname] = 1 if is_version1(head) else 2
                records, used, keep = self._parse(fname, fd, offset, buf)
                if used:
                    self._reports = []
                    before = self.state.dropped
                    total += self._consume(records)
                    # Their bytes are erased once their events are durable (see _ack).
                    mark = self.ctx.acks.mark() if self.ctx.acks is not None else 0
                    dropped = dict(self.state.dropped) if self.state.dropped != before else None
                    self.unacked.append(_Unacked(mark, fname, max(offset, keep), offset + used,
                                                 self._reports, dropped))
                    self._reports = []
                    offset += used
                    moved = True
            if moved:
                self.offsets[fname] = offset
            if later and self.acked.get(fname, 0) >= st.st_size:
                self._forget(fname)
                self._remove(path)
                moved = True
        except OSError as exc:
            self.ctx.log.warning("cannot read shell spool file %s: %s", path, exc)
        finally:
            os.close(fd)
        return total, moved

    def _parse(self, fname: str, fd: int, offset: int, buf: bytes
               ) -> tuple[list[Record], int, int]:
        """Records of `buf` (the segment from `offset`), bytes used, and where blanking may start."""
        if self.formats.get(fname) == 1:
            lines, used = split_lines(buf)
            records = []
            for line in lines:
                rec = parse_record(line)
                if rec is None:
                    self.malformed += 1
                else:
                    records.append(rec)
            return records, used, 0
        header = self.headers.get(fname)
        if header is None and offset > 0:
            header = parse_header(os.pread(fd, 4096, 0).split(b"\0", 1)[0])
        records, used, bad, header = parse_segment(buf, header)
        self.malformed += bad
        if header is not None:
            self.headers[fname] = header
        # The header stays for a reader that restarts (and for the tools source) when it leads
        # the segment, as the hooks write it; anything else consumed is blanked.
        at_start = offset == 0 and header is not None and buf.startswith(b"H2\t")
        return records, used, header.size if at_start else 0

    def _ack(self) -> None:
        """Erase the records whose events are durable: NUL bytes over them, in place (the writer
        only appends past them, so this cannot race it), and delete their test reports."""
        acks = self.ctx.acks
        while self.unacked and (acks is None or acks.reached(self.unacked[0].mark)):
            done = self.unacked.popleft()
            for report in done.reports:
                self._remove(report)
            if done.dropped is not None:
                self.acked_dropped = done.dropped
                self._cursor_dirty = True
            if done.fname not in self.offsets:
                continue  # the segment was forgotten (removed, or truncated and read again)
            if done.end > done.start:
                try:
                    fd = os.open(self.spool / done.fname, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    self.ctx.log.warning("cannot erase shell spool file %s: %s", done.fname, exc)
                    continue
                try:
                    if os.fstat(fd).st_size >= done.end:  # not truncated meanwhile (spool full)
                        os.pwrite(fd, bytes(done.end - done.start), done.start)
                except OSError as exc:
                    self.ctx.log.warning("cannot erase shell spool file %s: %s", done.fname, exc)
                    continue
                finally:
                    os.close(fd)
            if done.end > self.acked.get(done.fname, 0):
                self.acked[done.fname] = done.end
                self._cursor_dirty = True

    def _forget(self, fname: str) -> None:
        self.offsets.pop(fname, None)
        self.acked.pop(fname, None)
        self.headers.pop(fname, None)
        self.formats.pop(fname, None)
        self.unreadable.discard(fname)

    def _consume(self, records: list[Record]) -> int:
        if self._policy("shell.ignore_space", True):
            records = self._unhide(records)
        now = time.time_ns()
        events, finished, self.state = pair_records(self.state, records, now)
        self.dropped += sum(d["dropped"] for k, d, _, _ in events if k == "agent.gap")
        if not self.ctx.capturing():
            for fin in finished:
                self._drop_report(fin)
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
                self._drop_report(fin)
        return len(events)

    def _drop_report(self, fin: Finished) -> None:
        """Remove the pytest report the hook may have asked for (only for some lines)."""
        if fin.start is None or _MAY_HAVE_REPORT.search(fin.start.cmd):
            self._reports.append(self._junit_path(fin.end.sid, fin.end.n))

    def _unhide(self, records: list[Record]) -> list[Record]:
        """Without `records` of commands typed with a leading space. bash writes such a line when
        its history keeps them (HISTCONTROL without ignorespace); the hook cannot see the text."""
        kept: list[Record] = []
        for rec in records:
            if isinstance(rec, Start) and rec.cmd.startswith(" "):
                self.hidden.add((rec.sid, rec.n))
            elif isinstance(rec, End) and (rec.sid, rec.n) in self.hidden:
                self.hidden.discard((rec.sid, rec.n))
            else:
                kept.append(rec)
        if len(self.hidden) > MAX_PENDING:
            self.hidden.clear()
        return kept

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
        return self.reports / f"{sid}.{n}.junit.xml"

    def _test_run(self, fin: Finished) -> None:
        own = self._junit_path(fin.end.sid, fin.end.n)
        if fin.start is None:
            self._reports.append(own)
            return
        runner = testruns.recognise_runner(fin.start.cmd)
        if runner is None:
            self._drop_report(fin)
            return
        data: dict[str, Any] = {"runner": runner, "cmd": fin.start.cmd, "exit": fin.end.exit,
                                "duration_ms": fin.duration_ms,
                                "id": command_id(fin.end.sid, fin.end.n)}
        if os.path.lexists(own):
            report = read_reports([own], fin.start.cwd, pytest=True, log=self.ctx.log)
        else:
            since = fin.start.t_ns or (fin.end_ns - fin.duration_ms * 1_000_000)
            report = read_reports(find_reports(fin.start.cwd, since, time.time_ns()), fin.start.cwd,
                                  log=self.ctx.log)
        self._reports.append(own)
        if report is not None:
            data.update(report.as_data())
        self.ctx.emit("test.run", data, ts=fin.end_ns, session=fin.end.sid, source="tests")

    # housekeeping
    def sweep(self) -> None:
        """Delete fully read segments, scratch files and reports of shells that are gone; make the
        report directory again if it has gone."""
        self._keep_report_dir()
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
                if self.acked.get(fname, 0) >= size and self.offsets.get(fname, 0) >= size:
                    self._remove(path)
                    self._forget(fname)
                    changed = True
        acks = self.ctx.acks
        held = acks is not None and acks.held()
        now = time.time()
        for directory in {self.spool, self.reports}:
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                names = []
            for name in names:
                if not name.endswith(SCRATCH_SUFFIXES):
                    continue
                sid, _, rest = name.partition(".")
                if not _alive(sid, live):
                    self._remove(directory / name)
                elif name.endswith(".junit.xml") and not held:
                    # A report whose command is not waiting for its end and that nothing read
                    # for long: its records were dropped (spool full) or it was never asked for.
                    n = rest.split(".", 1)[0]
                    try:
                        old = now - os.lstat(directory / name).st_mtime > ORPHAN_REPORT_S
                    except OSError:
                        continue
                    if old and not (n.isdigit() and (sid, int(n)) in self.state.pending):
                        self._remove(directory / name)
        for fname in [f for f in self.offsets if not (self.spool / f).exists()]:
            self._forget(fname)
            changed = True
        if changed:
            self._save_cursor()

    def _keep_report_dir(self) -> None:
        """The hooks ask pytest for a report only into a report directory that exists (they make
        none: pytest would make it readable by others), and they keep its name until the shell
        exits. One removed under them (a cleaner of /dev/shm, the runtime directory removed at
        logout) is made again here, private, so test runs get their outcomes again within
        HOUSEKEEPING_S instead of never."""
        if self.reports == self.spool or os.path.isdir(self.reports):
            return
        if Path(self.ctx.paths.report_dir()) == self.reports:
            self.ctx.log.info("test report directory %s was gone; made again", self.reports)

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
            self.acked = dict(self.offsets)
            self.state = PairState({}, {str(k): int(v) for k, v in raw.get("dropped", {}).items()})
            self.acked_dropped = dict(self.state.dropped)
        except (OSError, ValueError, AttributeError):
            self.offsets = {}

    def _save_cursor(self) -> None:
        self._cursor_dirty = False
        self._cursor_saved = time.monotonic()
        tmp = self.spool / (CURSOR_FILE + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps({"v": 1, "offsets": self.acked, "dropped": self.acked_dropped}))
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
