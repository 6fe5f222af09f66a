"""The tools source: programs the user runs from a captured shell or an editor, as `tool.invocation`.

Takes the process table (psutil), the policy's `tools.interval_ms`, `tools.allow`, `tools.deny` and
`tools.agents`, and the shell sessions the shell hook reports; gives one `tool.invocation` per
finished process: exe, argv, cwd, pid, ppid, session, start (ns), duration_ms, cpu_ms, exit, actor,
via (the shell or editor it descends from).

How: every interval (`tools.interval_ms`, default 250 ms) the poller learns which pids appeared and
which ended, and reads only the new ones (ppid, create time, uid, name). On Linux it does not even
list /proc on a quiet tick: `/proc/loadavg` names the last pid allocated, so only pids allocated
since are probed, with a full listing every 5 s as a safety net; elsewhere it diffs
`psutil.pids()`. Tracked processes are checked for exit every tick and re-read (one /proc stat
read) every tick while young, every second after 2 s, for CPU time and to notice an exec. A
process is tracked when it belongs to the user, starts while capture is on, and descends from a
capture root: an interactive bash/zsh/fish, any shell the shell hook has a spool session for
(`tools_sessions.py`; the event's `session` is then that shell session's id), or an editor (VS
Code and its forks, JetBrains IDEs, vim/neovim, emacs). `actor` comes from `agent.actor` with the
policy's `tools.agents`. The event is emitted when the process ends, so its duration is known.

Promises and limits:
- The shells themselves, an editor's own helper processes, bare shell forks that never exec, and
  tracecap's own processes are never recorded.
- A process that starts and ends within one interval (250 ms by default) may be missed entirely,
  and durations are accurate to one interval; `cpu_ms` is the last sample, so it may lag by one
  interval (up to a second for programs older than 2 s); processes running when the source stops
  or capture turns off are dropped, and programs that started before capture did are not recorded.
- `exit` is null: Linux and macOS report an exit status only to the parent, which is not tracecap.
- Nothing is written but through `ctx.emit`, which redacts argv and cwd before the journal.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from typing import Any, Callable

from agent import actor as actor_mod
from agent.sources.base import SourceContext
from agent.sources.tools_rules import (
    ROOT_SHELLS,
    editor_name,
    executable_selected,
    is_interactive_shell,
    is_own_process,
    is_shell_fork,
    last_pid_from_loadavg,
    nearest_root,
    parse_proc_stat,
    pid_span,
    proc_stat_tty,
)

# Tracked processes younger than this are re-read every tick (an exec and the CPU time of a short
# program must not be missed); older ones every `_SLOW_EVERY` ticks, which keeps a table of many
# long-running programs within the CPU budget. Their cpu_ms may lag by that much.
_YOUNG_S = 2.0
_SLOW_EVERY = 4
_PROC_STAT = sys.platform.startswith("linux") and os.path.isdir("/proc")
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_FULL_EVERY = 20  # ticks between full listings of the process table on Linux (5 s at 250 ms)
_PROBE_MAX = 64  # more new pids than this in one tick (thread storms): list the table instead

# (session id or None, interactive or None) for a shell pid, from the shell hook's records.
SessionLookup = Callable[[int], "tuple[str | None, bool | None]"]


def _no_sessions(pid: int) -> tuple[str | None, bool | None]:
    return None, None


def policy_section(policy: Any, name: str) -> dict[str, Any]:
    """`policy.data[name]` for an `agent.policy.Policy`, or `policy[name]` for a plain dict."""
    data = getattr(policy, "data", policy) or {}
    return dict(data.get(name) or {})


@dataclasses.dataclass(frozen=True)
class ToolsSettings:
    interval_s: float = 0.25
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    agents: tuple[str, ...] = actor_mod.DEFAULT_AGENTS

    @classmethod
    def from_policy(cls, policy: Any) -> "ToolsSettings":
        sec = policy_section(policy, "tools")
        return cls(
            interval_s=int(sec.get("interval_ms", 250)) / 1000.0,
            allow=tuple(sec.get("allow") or ()),
            deny=tuple(sec.get("deny") or ()),
            agents=tuple(sec.get("agents") or actor_mod.DEFAULT_AGENTS),
        )


@dataclasses.dataclass
class _Root:
    pid: int
    kind: str  # "shell" | "editor"
    name: str
    argv: list[str]
    session: str | None
    interactive: bool


@dataclasses.dataclass
class _Tracked:
    pid: int
    ppid: int
    create_time: float
    name: str
    exe: str
    argv: list[str]
    cwd: str
    root: _Root
    actor: str
    cpu_s: float = 0.0
    comm: str | None = None  # Linux: /proc stat name, to notice an exec
    start_ticks: int | None = None  # Linux: /proc stat starttime, to notice pid reuse


class ProcessWatcher:
    """The process-table diff. `baseline()` once, then `poll()` each tick; `poll()` returns the
    `tool.invocation` data of processes that ended since the last tick."""

    def __init__(self, settings: ToolsSettings, *, sessions: SessionLookup = _no_sessions,
                 own_pid: int | None = None, uid: int | None = None) -> None:
        import psutil

        self._psutil = psutil
        self.settings = settings
        self._sessions = sessions
        self._own_pid = os.getpid() if own_pid is None else own_pid
        self._uid = (os.getuid() if hasattr(os, "getuid") else None) if uid is None else uid
        self._parents: dict[int, int] = {}
        self._ctime: dict[int, float] = {}
        self._roots: dict[int, _Root] = {}
        self._tracked: dict[int, _Tracked] = {}
        self._own: set[int] = {self._own_pid}  # the agent and `tracecap` commands: never recorded
        self._names: dict[int, str] = {}
        # pid -> (ticks left, track): forks seen before their exec, looked at again next tick
        self._pending: dict[int, tuple[int, bool]] = {}
        self._tick = 0
        self._last_pid: int | None = None
        self._pid_max = _pid_max()
        self._clock_skew = _create_time_skew(psutil)

    @property
    def tracked_pids(self) -> list[int]:
        return list(self._tracked)

    @property
    def root_pids(self) -> list[int]:
        return list(self._roots)

    def baseline(self) -> None:
        """Learn the processes already running: roots are registered, nothing else is tracked,
        because those programs started before capture did."""
        self._parents.clear()
        self._ctime.clear()
        self._roots.clear()
        self._tracked.clear()
        self._names.clear()
        self._pending.clear()
        infos = [i for i in (self._read_basic(pid) for pid in self._psutil.pids()) if i]
        self._learn(infos, track=False)

    def poll(self, now_ns: int | None = None) -> list[dict[str, Any]]:
        now_ns = time.time_ns() if now_ns is None else now_ns
        finished: list[dict[str, Any]] = []
        self._tick += 1
        new_pids, gone = self._changes()
        for pid in gone:
            self._gone(pid, now_ns, finished)
        now_s = now_ns / 1e9 + self._clock_skew
        for t in list(self._tracked.values()):
            if (now_s - t.create_time > _YOUNG_S
                    and (self._tick + t.pid) % _SLOW_EVERY):
                continue
            self._refresh(t, now_ns, finished)
        for pid, (left, track) in list(self._pending.items()):
            info = self._read_basic(pid)
            if info is None:
                del self._pending[pid]
            elif info[4] != self._names.get(pid) or left <= 1:
                del self._pending[pid]
                self._names[pid] = info[4]
                self._consider(*info, track=track)
            else:
                self._pending[pid] = (left - 1, track)
        new = [i for i in (self._read_basic(pid) for pid in new_pids) if i]
        self._learn(new, track=True)
        return finished

    def _changes(self) -> tuple[list[int], list[int]]:
        """(pids that appeared, pids that are gone) since the last tick.

        Portable: list every pid and diff. Linux, where listing /proc is most of the poller's cost
        (about half a millisecond per 600 processes): `/proc/loadavg` names the last pid allocated;
        if it has not moved nothing started, else only the few pids allocated since are probed.
        Tracked processes are checked for exit every tick; a full listing every `_FULL_EVERY`
        ticks catches anything the probe missed and forgets processes that ended untracked."""
        last = _last_pid() if _PROC_STAT else None
        span: list[int] | None = None
        if last is not None and self._last_pid is not None and self._tick % _FULL_EVERY:
            span = pid_span(self._last_pid, last, self._pid_max)
            if len(span) > _PROBE_MAX:
                span = None
        self._last_pid = last
        if span is None:
            current = set(self._psutil.pids())
            return ([p for p in current if p not in self._ctime],
                    [p for p in self._ctime if p not in current])
        new = [p for p in span if p not in self._ctime and not _is_thread(p)]
        return new, [p for p in self._tracked if not _pid_alive(p)]

    def _learn(self, infos: list[tuple[int, int, float, int | None, str]], *, track: bool) -> None:
        for pid, ppid, ctime, _uid, name in infos:
            self._parents[pid] = ppid
            self._ctime[pid] = ctime
            self._names[pid] = name
        for info in sorted(infos, key=lambda i: i[2]):
            pid, ppid, name = info[0], info[1], info[4]
            if (name == self._names.get(ppid) and pid not in self._roots
                    and nearest_root(pid, self._parents, self._roots) is None):
                # Same name as its parent and under no root: most likely a fork that has not
                # exec'd yet (a terminal starting its shell). Look again next tick, or a shell
                # caught a moment too early would never become a root.
                self._pending[pid] = (2, track)
                continue
            self._consider(*info, track=track)

    # -- reading ---------------------------------------------------------------------------

    def _read_basic(self, pid: int) -> tuple[int, int, float, int | None, str] | None:
        ps = self._psutil
        try:
            p = ps.Process(pid)
            with p.oneshot():
                uid = p.uids().real if hasattr(p, "uids") else None
                return pid, p.ppid(), p.create_time(), uid, p.name()
        except (ps.NoSuchProcess, ps.AccessDenied, ps.ZombieProcess, ProcessLookupError):
            return None

    def _read_detail(self, pid: int) -> tuple[str, list[str], str, bool] | None:
        ps = self._psutil
        try:
            p = ps.Process(pid)
            argv = p.cmdline()
        except (ps.NoSuchProcess, ps.ZombieProcess, ProcessLookupError):
            return None
        except ps.AccessDenied:
            argv = []
        exe = cwd = ""
        has_tty = False
        for attr in ("exe", "cwd"):
            try:
                value = getattr(p, attr)() or ""
            except (ps.Error, OSError):
                value = ""
            if attr == "exe":
                exe = value
            else:
                cwd = value
        has_tty = _has_tty(ps, p)
        return exe, argv, cwd, has_tty

    # -- deciding --------------------------------------------------------------------------

    def _consider(self, pid: int, ppid: int, ctime: float, uid: int | None, name: str,
                  *, track: bool) -> None:
        if self._uid is not None and uid is not None and uid != self._uid:
            return
        if pid == self._own_pid:
            return
        root_pid = nearest_root(pid, self._parents, self._roots)
        parent_root = self._roots.get(root_pid) if root_pid else None
        low = name.lower()
        maybe_root = low in ROOT_SHELLS or low in ("java",) or editor_name(name, ()) is not None
        if parent_root is None and not maybe_root:
            return  # the common case on a busy machine: not ours to look at further
        detail = self._read_detail(pid)
        if detail is None:
            return
        exe, argv, cwd, has_tty = detail
        if is_own_process(pid, argv, self._own, self._parents):
            self._own.add(pid)
            return
        # A shell's or an editor's fork seen before it execs (vim's `:!make`) looks exactly like
        # its parent: track it as a candidate (an exec turns it into the real program; `_finish`
        # drops it if none came).
        fork = parent_root is not None and is_unexeced_fork(name, argv, parent_root)
        if not fork and self._register_root(pid, name, argv, has_tty, parent_root):
            return
        if parent_root is None or not track:
            return
        if not fork and parent_root.kind == "editor" and editor_name(name, argv) == parent_root.name:
            return  # an editor's own helper (Electron renderer, vim job): part of the editor
        if parent_root.kind == "shell" and parent_root.session is None:
            # The hook writes its spool file at the shell's first command, which may come after
            # we first saw the shell: look again now that it is running something.
            session, interactive = self._sessions(parent_root.pid)
            if session is not None:
                parent_root.session = session
                if interactive is not None:
                    parent_root.interactive = interactive
        chain = actor_mod.ancestry(pid)
        who = actor_mod.classify(chain, interactive=parent_root.interactive,
                                 agents=self.settings.agents)
        t = _Tracked(pid=pid, ppid=ppid, create_time=ctime, name=name, exe=exe,
                     argv=list(argv), cwd=cwd, root=parent_root, actor=who)
        self._tracked[pid] = t
        # No /proc sample here: it would take an exec that already happened as the baseline and
        # hide it. The first refresh, one tick later, compares against `name` (see _sample_fast).
        ed = editor_name(name, argv)
        if ed is not None:  # vim started from a shell: its `:!make` children belong to the session
            self._roots[pid] = _Root(pid, "editor", ed, list(argv), parent_root.session, True)

    def _register_root(self, pid: int, name: str, argv: list[str], has_tty: bool,
                       parent_root: _Root | None) -> bool:
        """Register pid as a capture root if it is a shell session; return True if it is a shell
        (which is never itself recorded). Editors started outside any root become roots here."""
        low = name.lower().lstrip("-")
        if low in ROOT_SHELLS:
            session, interactive = self._sessions(pid)
            if session is not None or is_interactive_shell(name, argv, has_tty):
                if session is None and parent_root is not None:
                    session = parent_root.session  # a subshell of a session stays in it
                self._roots[pid] = _Root(pid, "shell", low, list(argv), session,
                                         bool(interactive) if interactive is not None else True)
                return True
            return False
        if parent_root is None:
            ed = editor_name(name, argv)
            if ed is not None:
                self._roots[pid] = _Root(pid, "editor", ed, list(argv), None, True)
                return True
        return False

    # -- ending ----------------------------------------------------------------------------

    def _refresh(self, t: _Tracked, now_ns: int, finished: list[dict[str, Any]]) -> None:
        sample = self._sample_fast(t) if _PROC_STAT else self._sample_psutil(t)
        if sample is None:  # gone, a zombie, or its pid reused by another program
            self._finish(t, now_ns, finished)
            return
        name = sample
        if name != t.name:  # exec since we first saw it (fork, then exec): read it again
            detail = self._read_detail(t.pid)
            t.name = name
            if detail is not None:
                t.exe, t.argv, t.cwd, has_tty = detail
                if is_own_process(t.pid, t.argv, self._own, self._parents):
                    self._own.add(t.pid)
                    self._tracked.pop(t.pid, None)
                elif self._register_root(t.pid, name, t.argv, has_tty, t.root):
                    self._tracked.pop(t.pid, None)
                else:
                    t.actor = actor_mod.classify(actor_mod.ancestry(t.pid),
                                                 interactive=t.root.interactive,
                                                 agents=self.settings.agents)
                    ed = editor_name(name, t.argv)
                    if ed is not None and t.pid not in self._roots:
                        self._roots[t.pid] = _Root(t.pid, "editor", ed, list(t.argv),
                                                   t.root.session, True)

    def _sample_fast(self, t: _Tracked) -> str | None:
        """One read of /proc/<pid>/stat: CPU time, state, start time. Returns the current name
        (t.name unless comm changed, i.e. an exec), None if the process is over."""
        try:
            with open(f"/proc/{t.pid}/stat", "rb") as f:
                st = parse_proc_stat(f.read())
        except OSError:
            return None
        if st is None:
            return None
        comm, state, ticks, start = st
        if t.start_ticks is not None and start != t.start_ticks:
            return None
        if state in ("Z", "X"):
            return None
        t.start_ticks = start
        t.cpu_s = ticks / _CLK_TCK
        if t.comm is None:
            # The baseline is the name first seen, not what the process is called now: a fork
            # that execs before this first sample (bash -c 'sleep 1') must still count as an exec.
            # comm is the name cut to 15 bytes.
            t.comm = t.name[:15]
        if comm != t.comm:
            t.comm = comm
            try:
                return self._psutil.Process(t.pid).name()  # full name; comm is cut at 15 chars
            except self._psutil.Error:
                return comm
        return t.name

    def _sample_psutil(self, t: _Tracked) -> str | None:
        ps = self._psutil
        try:
            p = ps.Process(t.pid)
            with p.oneshot():
                if abs(p.create_time() - t.create_time) > 0.01:
                    return None  # the pid was reused: ours is gone
                name = p.name()
                if p.status() == ps.STATUS_ZOMBIE:
                    return None
                cpu = p.cpu_times()
                t.cpu_s = cpu.user + cpu.system
                return name
        except (ps.NoSuchProcess, ps.AccessDenied, ps.ZombieProcess, ProcessLookupError):
            return None

    def _gone(self, pid: int, now_ns: int, finished: list[dict[str, Any]]) -> None:
        t = self._tracked.get(pid)
        if t is not None:
            self._finish(t, now_ns, finished)
        self._ctime.pop(pid, None)
        self._parents.pop(pid, None)
        self._roots.pop(pid, None)
        self._names.pop(pid, None)
        self._pending.pop(pid, None)
        if pid != self._own_pid:
            self._own.discard(pid)

    def _finish(self, t: _Tracked, now_ns: int, finished: list[dict[str, Any]]) -> None:
        self._tracked.pop(t.pid, None)
        if is_unexeced_fork(t.name, t.argv, t.root):
            return
        if not executable_selected(t.exe, t.name, self.settings.allow, self.settings.deny):
            return
        finished.append(invocation_data(t, now_ns, self._clock_skew))


def is_unexeced_fork(name: str, argv: list[str], root: _Root) -> bool:
    """A root's own fork that has not exec'd (or never did): a shell's subshell or pipeline stage,
    an editor's child on its way to running a command."""
    if root.kind == "editor":
        return list(argv) == list(root.argv)
    return is_shell_fork(name, argv, root.name, root.argv)


def _last_pid() -> int | None:
    try:
        with open("/proc/loadavg", "rb") as f:
            return last_pid_from_loadavg(f.read().decode("ascii", "replace"))
    except OSError:
        return None


def _pid_max() -> int:
    try:
        with open("/proc/sys/kernel/pid_max", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 4194304


def _is_thread(pid: int) -> bool:
    """A Linux thread id (not listed in /proc, but /proc/<tid> answers): its Tgid differs."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1]) != pid
    except (OSError, ValueError, IndexError):
        return True  # gone already (or unreadable): nothing to learn from it
    return False


def _has_tty(psutil: Any, proc: Any) -> bool:
    """Whether a process has a controlling terminal. Not `psutil.Process.terminal()`: psutil
    memoizes its map of terminal devices, so in a long-running daemon every terminal opened after
    the first call (each new terminal window, each tmux pane) would read as "no terminal"."""
    if _PROC_STAT:
        try:
            with open(f"/proc/{proc.pid}/stat", "rb") as f:
                return bool(proc_stat_tty(f.read()))
        except OSError:
            return False
    try:
        from psutil import _psposix

        _psposix.get_terminal_map.cache_clear()
        return proc.terminal() is not None
    except (psutil.Error, OSError, AttributeError, ImportError):
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _create_time_skew(psutil: Any) -> float:
    """Seconds by which psutil's create times run ahead of the wall clock. Linux reports boot time
    in whole seconds (/proc/stat btime), so every create time can be up to a second off; the boot
    clock gives the exact offset."""
    if not hasattr(time, "CLOCK_BOOTTIME"):
        return 0.0
    try:
        return psutil.boot_time() - (time.time() - time.clock_gettime(time.CLOCK_BOOTTIME))
    except (OSError, AttributeError):
        return 0.0


def invocation_data(t: _Tracked, end_ns: int, skew_s: float = 0.0) -> dict[str, Any]:
    start_ns = int((t.create_time - skew_s) * 1e9)
    return {
        "exe": t.exe or t.name,
        "argv": list(t.argv) or [t.name],
        "cwd": t.cwd,
        "pid": t.pid,
        "ppid": t.ppid,
        "session": t.root.session,
        "start": start_ns,
        "duration_ms": max(0, (end_ns - start_ns) // 1_000_000),
        "cpu_ms": int(round(t.cpu_s * 1000)),
        "exit": None,
        "actor": t.actor,
        "via": t.root.name,
    }


class ToolsSource:
    """Source "tools": runs a `ProcessWatcher` while capture is on; see the module docstring."""

    name = "tools"

    def __init__(self, ctx: SourceContext, *, sessions: SessionLookup | None = None) -> None:
        self.ctx = ctx
        self._sessions = sessions or _shell_session_lookup(ctx)

    def run(self, stop: threading.Event) -> None:
        ctx = self.ctx
        threading.Thread(target=_forward_stop, args=(stop, ctx.changed), daemon=True,
                         name="tools-stop").start()
        watcher: ProcessWatcher | None = None
        ctx.set_state("starting")  # "running" once the baseline is taken: from then on, new
        while not stop.is_set():     # programs are recorded
            if not ctx.capturing():
                watcher = None  # programs started while capture was off are never recorded
                ctx.changed.wait(5.0)  # the daemon sets it on consent/pause changes; 5 s bounds a
                ctx.changed.clear()    # pause that simply expires
                continue
            if watcher is None:
                watcher = ProcessWatcher(ToolsSettings.from_policy(ctx.policy),
                                         sessions=self._sessions)
                watcher.baseline()
                ctx.set_state("running")
            for data in watcher.poll():
                ctx.emit("tool.invocation", data, session=data["session"])
            stop.wait(watcher.settings.interval_s)


def _forward_stop(stop: threading.Event, changed: threading.Event) -> None:
    stop.wait()
    changed.set()


def _shell_session_lookup(ctx: SourceContext) -> SessionLookup:
    """Shell sessions from the shell hook's spool (see agent/sources/tools_sessions.py)."""
    from agent.sources.tools_sessions import SpoolSessions

    return SpoolSessions(ctx.paths.shell_spool)
