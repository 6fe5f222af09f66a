"""The contract between the daemon and a capture source.

A source is a class with a `name` and a `run(stop)` method that blocks until `stop` is set,
emitting events through `SourceContext.emit`. It takes the effective policy and state paths; it
gives events. It promises: no busy loops (every wait blocks on something, or on `stop.wait(t)`),
no writes of raw captured content anywhere (emit is the only way out, and emit redacts before the
journal sees anything), and an exception out of `run` means "restart me": the supervisor logs it,
shows it in `status`, and restarts the source with backoff. Sources never import the daemon.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, Callable, Protocol

from agent.paths import StatePaths


class Emit(Protocol):
    def __call__(
        self,
        kind: str,
        data: dict[str, Any],
        *,
        ts: int | None = None,
        session: str | None = None,
        source: str | None = None,  # defaults to the emitting source's name
    ) -> bool | None: ...  # False: dropped, capture was off when it happened (or is off now)


@dataclasses.dataclass(frozen=True)
class DurableAcks:
    """What a source that must keep its input until its events are on disk (the shell spool) is
    told by the journal. `mark()` covers every event emitted so far; `reached(mark)` is True once
    all of them are fsynced (or were discarded); `subscribe(fn)` calls `fn()` (quick, on the
    journal's thread) after each fsync; `flush(timeout)` makes everything emitted so far durable;
    `held()` is True while the journal cannot take events (disk full): input is better left where
    it is safe."""
    mark: Callable[[], int]
    reached: Callable[[int], bool]
    subscribe: Callable[[Callable[[], None]], None]
    unsubscribe: Callable[[Callable[[], None]], None]
    flush: Callable[[float], None]
    held: Callable[[], bool]


@dataclasses.dataclass
class SourceContext:
    name: str
    policy: Any  # agent.policy.Policy
    paths: StatePaths
    emit: Emit  # thread-safe; drops the event when capture is off; redacts; then journals
    capturing: Callable[[], bool]  # True while consent allows and not paused
    log: logging.Logger
    set_state: Callable[[str], None]  # e.g. "running", "unavailable: no X display"
    redactor: Any = None  # redaction.Redactor: redact_text(text).text, content_allowed(path)
    # Sources that keep captured text in memory (the files source's diff cache) keep only what has
    # passed `redactor`, so nothing raw outlives the moment of capture.
    changed: threading.Event = dataclasses.field(default_factory=threading.Event)
    # `changed` is set by the daemon when consent, pause or policy changes, so a source blocked on
    # its own wait can wake up and re-read `capturing()` / `policy`.
    # The last `repo.state` of each repository (agent.sources.git_state.RepoStates), one registry
    # shared by the git source, which announces states, and the files source, whose saves chain
    # from them. None: no chain (the files source diffs as if no state had been announced).
    repo_states: Any = None
    acks: DurableAcks | None = None  # None: emit is durable when it returns (a test's list)
    heartbeat: Callable[[float], None] = lambda quiet_s: None
    # A source calls `heartbeat(quiet_s)` whenever it makes progress (at least every `quiet_s`
    # seconds while healthy); one that stays quiet longer is shown stalled and restarted.


class Source(Protocol):
    name: str

    def __init__(self, ctx: SourceContext) -> None: ...

    def run(self, stop: threading.Event) -> None: ...
