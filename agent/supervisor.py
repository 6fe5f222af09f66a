"""The source supervisor: runs each enabled capture source in its own thread and keeps it alive.

Takes source factories (name -> callable building a `Source` from a `SourceContext`); gives each
source's state for `status`. Promise: a source that raises is logged, its error shown in `status`,
and it is restarted with exponential backoff (1 s doubling to 60 s, reset after a minute of healthy
running); the daemon itself never dies because a source did. A source that reports progress
(`SourceContext.heartbeat(quiet_s)`) and then stays quiet longer than it said is stuck (a thread
blocked in a system call cannot be interrupted): `check_stalls()` shows it as stalled, tells the stuck
thread to stop whenever it wakes, and starts a fresh instance beside it. `stop()` sets every source's
stop event and joins them with a bound.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import threading
import time
from typing import Any, Callable

from agent.sources.base import SourceContext

log = logging.getLogger("tracecap.supervisor")

# Where each policy source name lives. "tests" is produced by the shell source (a test run is a
# shell command it recognises), so it has no thread of its own.
SOURCE_CLASSES = {
    "files": "agent.sources.files:FilesSource",
    "git": "agent.sources.git:GitSource",
    "shell": "agent.sources.shell:ShellSource",
    "tools": "agent.sources.tools:ToolsSource",
    "input": "agent.sources.input:InputSource",
}


def load_source_class(name: str) -> Any:
    module, _, cls = SOURCE_CLASSES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


@dataclasses.dataclass
class SourceRun:
    name: str
    state: str = "starting"
    error: str | None = None
    restarts: int = 0
    thread: threading.Thread | None = None
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    last_beat: float | None = None  # monotonic time of the last heartbeat
    quiet_s: float = 0.0  # how long the source may stay quiet
    stalls: int = 0
    stalled: str | None = None  # the last stall, described

    def describe(self) -> str:
        if self.error and self.state.startswith("restarting"):
            return f"{self.state}: {self.error}"
        if self.stalled and self.state == "running":
            return f"running (restarted after it stalled: {self.stalled})"
        return self.state


class Supervisor:
    def __init__(self, make_context: Callable[[str, Callable[[str], None]], SourceContext],
                 backoff_max: float = 60.0) -> None:
        self.make_context = make_context
        self.backoff_max = backoff_max
        self.runs: dict[str, SourceRun] = {}

    def start(self, names: list[str]) -> None:
        for name in names:
            if name not in SOURCE_CLASSES or name in self.runs:
                continue
            run = SourceRun(name)
            run.thread = threading.Thread(target=self._loop, args=(run,), name=f"source-{name}",
                                          daemon=True)
            self.runs[name] = run
            run.thread.start()

    def _loop(self, run: SourceRun, delay: float = 0.0) -> None:
        backoff = 1.0

        def set_state(state: str) -> None:
            run.state = state

        def heartbeat(quiet_s: float) -> None:
            run.last_beat, run.quiet_s = time.monotonic(), quiet_s

        if delay and run.stop.wait(delay):
            run.state = "stopped"
            return
        while not run.stop.is_set():
            started = time.monotonic()
            try:
                cls = load_source_class(run.name)
                ctx = self.make_context(run.name, set_state, heartbeat)
                source = cls(ctx)
                run.state, run.error = "running", None
                source.run(run.stop)
                if run.stop.is_set():
                    break
                raise RuntimeError("the source stopped by itself")
            except Exception as exc:  # a source's failure must not take the daemon down
                run.last_beat = None  # the backoff below is not a stall
                run.error = f"{type(exc).__name__}: {exc}"
                run.restarts += 1
                if time.monotonic() - started > 60:
                    backoff = 1.0
                log.error("source %s failed (%s); restarting in %.0fs", run.name, run.error, backoff,
                          exc_info=not isinstance(exc, ImportError))
                run.state = f"restarting in {backoff:.0f}s"
                if run.stop.wait(backoff):
                    break
                backoff = min(backoff * 2, self.backoff_max)
        run.state = "stopped"

    def check_stalls(self) -> list[str]:
        """Restart every source quiet for longer than its heartbeat promised. Gives their names."""
        now = time.monotonic()
        restarted = []
        for name, run in list(self.runs.items()):
            if run.last_beat is None or run.stop.is_set() or now - run.last_beat <= run.quiet_s:
                continue
            quiet = now - run.last_beat
            run.stop.set()  # the stuck thread stops whenever its call returns
            fresh = SourceRun(name, restarts=run.restarts + 1, stalls=run.stalls + 1,
                              stalled=f"no progress for {quiet:.0f} s, {run.stalls + 1} time(s)")
            fresh.state = f"stalled: no progress for {quiet:.0f} s; restarting"
            log.error("source %s made no progress for %.0f s; starting a fresh one", name, quiet)
            fresh.thread = threading.Thread(target=self._loop, args=(fresh, 1.0),
                                            name=f"source-{name}", daemon=True)
            self.runs[name] = fresh
            fresh.thread.start()
            restarted.append(name)
        return restarted

    def stop(self, timeout: float = 5.0) -> None:
        for run in self.runs.values():
            run.stop.set()
        deadline = time.monotonic() + timeout
        for run in self.runs.values():
            if run.thread is not None:
                run.thread.join(max(0.0, deadline - time.monotonic()))
                if run.thread.is_alive():
                    log.warning("source %s did not stop within %.0fs", run.name, timeout)
        self.runs.clear()

    def states(self) -> dict[str, str]:
        return {name: run.describe() for name, run in self.runs.items()}
