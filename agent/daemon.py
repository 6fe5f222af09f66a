"""The daemon: one per user, in the foreground, until SIGTERM or SIGINT.

Takes the effective policy and the user's state; runs the pipeline
    sources -> emit (consent gate, redaction) -> journal -> bundler -> outbox -> uploader
and answers the control socket. Promises:
- One daemon per user: an exclusive flock on `<run>/daemon.lock`, which the kernel drops when the
  process dies (even by kill -9), so a crash never leaves a stale lock.
- Nothing is journaled before redaction, and nothing the user does is captured unless the policy's
  consent mode and the user's choice allow it and capture is not paused. While capture is off only
  the `agent.pause` marker written at the moment it stopped (and `agent.resume` when it restarts) are
  journaled; in particular nothing at all is written before a user first opts in. The gate is
  also applied by the event's own time: what happened while capture was off (or before the first
  opt-in) is discarded even when a source reads it later, as the shell source does with commands
  the hook spooled during a pause.
- SIGTERM/SIGINT: sources stop, the journal is flushed and fsynced, `agent.stop` is written (if
  capture was on), pending events are sealed into a bundle, and the process exits 0.
- A policy change on disk (checked every 2 s, or at once on SIGHUP) is applied live and journaled
  as `agent.policy` with the new digest; a policy that stops being valid or safe, or that cannot be
  applied (a key file it names is gone), turns capture off and `status` says why, until it is fixed.
  A daemon that starts with such a policy runs the same way: capture off, the reason in `status`,
  and nothing sealed or uploaded (no destination or key is known) until a policy can be applied.
"""
from __future__ import annotations

import dataclasses
import fcntl
import logging
import logging.handlers
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import agent
from agent import consent as consent_mod
from agent.errors import RuntimeFailure, TracecapError, UsageError
from agent.journal import Journal, JournalFull
from agent.paths import StatePaths
from agent.policy import (Policy, PolicyError, builtin_policy, default_policy_path,
                          load_effective_policy, load_hmac_key)
from agent.replay import JournaledKeys
from agent.sources.base import DurableAcks, SourceContext
from agent.sources.git_state import RepoStates
from agent.supervisor import Supervisor

log = logging.getLogger("tracecap.daemon")

LOG_MAX_BYTES = 5 << 20
LOG_BACKUPS = 3


class DaemonLock:
    """flock-based: held for the life of the process, released by the kernel on any exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pid = os.read(fd, 32).decode().strip()
            finally:
                os.close(fd)
            raise RuntimeFailure(f"a tracecap daemon is already running for this user (pid {pid or '?'}); "
                                 f"stop it first or use `tracecap status`") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def holder_pid(path: Path) -> int | None:
    """The pid holding the daemon lock, or None when no daemon runs."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raw = os.read(fd, 32).decode().strip()
            return int(raw) if raw.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def setup_logging(paths: StatePaths, foreground: bool = True) -> None:
    root = logging.getLogger("tracecap")
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    fh = logging.handlers.RotatingFileHandler(paths.log_file, maxBytes=LOG_MAX_BYTES,
                                              backupCount=LOG_BACKUPS)
    fh.setFormatter(fmt)
    root.addHandler(fh)
    if foreground:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        sh.setLevel(logging.WARNING)
        root.addHandler(sh)


class Daemon:
    def __init__(self, paths: StatePaths, policy: Policy, policy_error: str | None = None) -> None:
        self.paths = paths
        self.policy = policy
        # Set while the policy on disk is refused; `policy` is then the last one applied (or, when
        # none could be applied since start, the built-in defaults, used for nothing but the spine).
        self.policy_error: str | None = policy_error
        self.policy_path = default_policy_path()
        self._policy_stat = self._stat_policy()
        self.stop_event = threading.Event()
        self._wake = threading.Event()  # the main loop's wait: a signal cuts it short
        self.lock = DaemonLock(paths.lock)
        self.journal = Journal(paths.spool, fsync_ms=policy.get("spool.fsync_ms"),
                               reorder_ms=policy.get("spool.reorder_ms"),
                               segment_bytes=policy.size("spool.segment_bytes"))
        self.redactor: Any = None
        self.journaled = JournaledKeys()
        self.replayed = 0  # events a source re-read after a crash that were journaled already
        self.discarded_full = 0  # events emitted while the disk was full
        self.supervisor = Supervisor(self._make_context)
        self.contexts: dict[str, SourceContext] = {}
        self.repo_states = RepoStates()
        self.decision = consent_mod.decide(policy.get("consent.mode"),
                                           consent_mod.ConsentFile.load(paths.consent_file),
                                           time.time_ns())
        self.discarded = 0
        # When capture was off, by the events' own clock. A source may read something late (the
        # shell spool is read when its source restarts): what happened while capture was off is
        # discarded whenever it is read. Before the first opt-in counts as off.
        self._off_since: int | None = None if self.decision.capturing else 0
        self._off_intervals: list[tuple[int, int]] = []
        cf = consent_mod.ConsentFile.load(paths.consent_file)
        if cf.paused_until is not None and cf.updated:
            end = time.time_ns() if cf.paused_until == consent_mod.PAUSE_INDEFINITE else cf.paused_until
            self._off_intervals.append((cf.updated, min(end, time.time_ns())))
        self.delivery: Any = None
        self.review: Any = None  # the review page's server, started by the first `review` request
        self.review_index: Any = None  # what the review page reads, built in the background at start
        self._state_lock = threading.RLock()
        from agent.control import ControlServer

        self.control = ControlServer(paths.socket, self.handle)

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> int:
        self.lock.acquire()
        try:
            self._build_redactor()
            recovery = self.journal.open(observe=self.journaled.observe)
            self.journal.start()
            from agent.review.index import JournalIndex

            self.review_index = JournalIndex(self.paths.spool)
            self.review_index.build_in_background()
            self._report_damage(recovery)
            if self.policy_error is None:
                self._start_delivery()
            self.control.start()
            self._install_signals()
            if self.capturing():
                self._journal("agent.start", self._lifecycle_data())
            self._apply_sources()
            log.info("tracecap %s started (pid %d, policy %s)", agent.__version__, os.getpid(),
                     self.policy.origin)
            self._main_loop()
        finally:
            self._shutdown()
        return 0

    def _start_delivery(self) -> None:
        from agent.delivery import Delivery

        delivery = Delivery(self)
        delivery.start()
        self.delivery = delivery

    def _report_damage(self, recovery: Any) -> None:
        """What the journal found damaged at open becomes `agent.gap` events; once they are
        durable the journal notes them as reported, so the next start does not report them again.
        If they do not become durable, they are reported again next time rather than never."""
        tickets = [self._journal("agent.gap", gap, durable=True) for gap in recovery.gaps]
        if not tickets:
            return
        try:
            if all(t is not None and t.wait(10) for t in tickets):
                self.journal.record_reported(recovery)
        except (OSError, TimeoutError) as exc:
            log.error("the journal's damage report is not durable yet (%s); it is repeated at the "
                      "next start", exc)

    def _lifecycle_data(self) -> dict[str, Any]:
        return {"version": agent.__version__, "pid": os.getpid(), "policy": self.policy.digest,
                "sources": self.enabled_sources()}

    def _install_signals(self) -> None:
        def stop(*_: Any) -> None:
            self.stop_event.set()
            self._wake.set()

        def reload(*_: Any) -> None:  # SIGHUP: re-read the policy now, not at the next 2 s check
            self._policy_stat = ("reload",)
            self._wake.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def _main_loop(self) -> None:
        while not self.stop_event.is_set():
            timeout = 2.0
            pu = self.decision.paused_until
            if pu not in (None, consent_mod.PAUSE_INDEFINITE):
                timeout = max(0.05, min(timeout, (pu - time.time_ns()) / 1e9 + 0.01))
            self._wake.wait(timeout)
            self._wake.clear()
            if self.stop_event.is_set():
                break
            self._check_policy()
            self._refresh_consent()
            self._record_full_disk()
            self.supervisor.check_stalls()

    def _shutdown(self) -> None:
        log.info("stopping")
        try:
            if self.review is not None:
                self.review.stop()
            self.supervisor.stop()
            if self.capturing():
                self._journal("agent.stop", {"reason": "signal"})
            self.journal.stop()
            if self.delivery is not None:
                self.delivery.stop()
        finally:
            self.control.stop()
            self.lock.release()

    # ------------------------------------------------------------------ capture gate + emit
    def capturing(self) -> bool:
        return self.decision.capturing and self.policy_error is None and not self.journal.disk_full

    def _happened_while_off(self, ts: int | None) -> bool:
        if ts is None:
            return False
        if self._off_since is not None and ts >= self._off_since:
            return True
        return any(start <= ts < end for start, end in self._off_intervals)

    def _track_capture(self, was: bool) -> None:
        """Record the edges of off periods; call after any change that may flip capturing()."""
        now = self.capturing()
        if was and not now:
            self._off_since = time.time_ns()
        elif now and not was and self._off_since is not None:
            self._off_intervals.append((self._off_since, time.time_ns()))
            del self._off_intervals[:-256]  # bounded: the oldest off periods are long read
            self._off_since = None

    def enabled_sources(self) -> list[str]:
        return list(self.policy.get("capture.sources"))

    def _build_redactor(self) -> None:
        from redaction import Redactor
        from redaction.identity import own_names

        self.redactor = Redactor.from_policy(
            self.policy.data["redaction"], hmac_key=load_hmac_key(self.policy, self.paths),
            home=str(Path.home()), username=_username(), full_names=own_names(_username()))

    def _journal(self, kind: str, data: dict[str, Any], *, source: str = "agent",
                 session: str | None = None, ts: int | None = None, durable: bool = False,
                 once: bool = False) -> Any:
        """Redact, then journal. The only path into the journal. `once`: an event with a key (see
        agent/replay.py) that is journaled already is dropped: a source re-read it after a crash."""
        red = self.redactor.redact_event(kind, data)
        if red is None:
            return None
        if once and self.journaled.seen(kind, red):
            self.replayed += 1
            return None
        try:
            ticket = self.journal.append(kind, source, session, red, ts, durable=durable)
        except JournalFull:
            return None
        self.journaled.add(kind, red)
        return ticket

    def _record_full_disk(self) -> None:
        """A period of full disk, once it is over, becomes an `agent.gap` saying what was lost."""
        for start, end, refused in self.journal.take_full_periods():
            dropped, self.discarded_full = refused + self.discarded_full, 0
            span = " to ".join(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t / 1e9))
                               for t in (start, end))
            self._journal("agent.gap", {"dropped": dropped, "reason":
                                        f"the disk holding the journal was full from {span}"})

    def _make_context(self, name: str, set_state: Any, heartbeat: Any = None) -> SourceContext:
        def emit(kind: str, data: dict[str, Any], *, ts: int | None = None,
                 session: str | None = None, source: str | None = None) -> bool:
            if not self.capturing() or self._happened_while_off(ts):
                self.discarded += 1
                if self.journal.disk_full:
                    self.discarded_full += 1
                return False
            self._journal(kind, data, source=source or name, session=session, ts=ts, once=True)
            return True

        journal = self.journal
        acks = DurableAcks(mark=journal.mark, reached=lambda m: journal.durable_mark >= m,
                           subscribe=journal.add_listener, unsubscribe=journal.remove_listener,
                           flush=lambda timeout: journal.flush(timeout),
                           held=lambda: journal.disk_full)
        ctx = SourceContext(name=name, policy=self.policy, paths=self.paths, emit=emit,
                            capturing=self.capturing, log=logging.getLogger(f"tracecap.source.{name}"),
                            set_state=set_state, redactor=self.redactor, acks=acks,
                            heartbeat=heartbeat or (lambda quiet_s: None),
                            repo_states=self.repo_states)
        old = self.contexts.get(name)
        if old is not None:
            ctx.changed = old.changed
        self.contexts[name] = ctx
        return ctx

    def _apply_sources(self) -> None:
        """Sources run while capture is on and stop (listeners unhooked, watchers gone) while off."""
        if self.capturing():
            self.supervisor.start(self.enabled_sources())
        elif self.supervisor.runs:
            self.supervisor.stop()
        for ctx in self.contexts.values():
            ctx.changed.set()

    def _set_decision(self, new: consent_mod.Decision, reason: str) -> None:
        with self._state_lock:
            was = self.capturing()
            if was and not new.capturing:
                # Written while consent still held; nothing follows until capture is on again.
                self._journal("agent.pause", {"reason": reason,
                                              "until": consent_mod.describe_pause(new.paused_until)})
            self.decision = new
            self._track_capture(was)
            now = self.capturing()
            if now and not was:
                self._journal("agent.resume", {"reason": reason})
            if now != was:
                self._apply_sources()

    def _refresh_consent(self, reason: str = "pause ended") -> None:
        new = consent_mod.decide(self.policy.get("consent.mode"),
                                 consent_mod.ConsentFile.load(self.paths.consent_file), time.time_ns())
        if new != self.decision:
            self._set_decision(new, reason)

    # ------------------------------------------------------------------ policy
    def _stat_policy(self) -> tuple | None:
        try:
            st = self.policy_path.stat()
            return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode, st.st_uid)
        except OSError:
            return None

    def _refuse_policy(self, reason: str) -> None:
        with self._state_lock:
            was = self.capturing()
            if was:
                self._journal("agent.pause", {"reason": "policy became invalid"})
            self.policy_error = reason
            self._track_capture(was)
            log.error("%s; capture is off until the policy is fixed", reason)
            self._apply_sources()

    def _check_policy(self, force: bool = False) -> None:
        st = self._stat_policy()
        if st == self._policy_stat and not force:
            return
        self._policy_stat = st
        try:
            new = load_effective_policy()
        except PolicyError as exc:
            self._refuse_policy(str(exc))
            return
        if new.digest == self.policy.digest and self.policy_error is None:
            return
        old, old_redactor = self.policy, self.redactor
        try:
            # Everything that can fail is built before anything is switched, so a policy that
            # passed the checks and still cannot be applied leaves the last one's state intact.
            self.policy = new
            self._build_redactor()
            if self.delivery is None:
                self._start_delivery()
            else:
                with self.delivery.outbox_now():
                    self.delivery.configure()
        except Exception as exc:  # noqa: BLE001 - anything at all: the daemon must keep running
            self.policy, self.redactor = old, old_redactor  # configure() assigns nothing when it fails
            self._refuse_policy(f"policy file {new.origin} cannot be applied: {exc}")
            return
        with self._state_lock:
            was = self.capturing()
            self.supervisor.stop()
            self.policy, self.policy_error = new, None
            self.decision = consent_mod.decide(new.get("consent.mode"),
                                               consent_mod.ConsentFile.load(self.paths.consent_file),
                                               time.time_ns())
            self._track_capture(was)
            if self.capturing() or was:
                self._journal("agent.policy", {"digest": new.digest, "origin": new.origin,
                                               "consent_mode": new.get("consent.mode")})
            if was and not self.capturing():
                self._journal("agent.pause", {"reason": "policy change"})
            if self.delivery is not None:
                self.delivery.policy_changed(configured=True)
            self._apply_sources()
        log.info("policy %s applied (digest %s)", new.origin, new.digest[:12])

    # ------------------------------------------------------------------ control requests
    def handle(self, req: dict[str, Any]) -> Any:
        op = req["op"]
        if op == "status":
            return self.status()
        if op in ("opt-in", "opt-out", "pause", "resume"):
            consent_mod.change(self.paths.consent_file, self.policy.get("consent.mode"), op,
                               pause_seconds=req.get("seconds"))
            self._refresh_consent(reason=op)
            return self.status()
        if op == "note":
            return self.note(str(req.get("text", "")))
        if op == "durable":
            return {"durable_seq": self.journal.durable_seq}
        if op == "forget":
            from agent.forget import forget_seqs, forget_span

            if req.get("seqs") is not None:
                seqs = req["seqs"]
                if not isinstance(seqs, list) or not all(isinstance(s, int) for s in seqs):
                    raise UsageError("forget: seqs must be a list of event seq numbers")
                return forget_seqs(self, seqs)
            return forget_span(self, float(req["seconds"]))
        if op == "review":
            return {"url": self.review_url(req.get("idle"))}
        if op == "flush":
            if self.delivery is None:
                raise RuntimeFailure(f"nothing can be uploaded while the policy is refused "
                                     f"({self.policy_error})")
            return self.delivery.flush(float(req.get("timeout_s", 60)))
        if op == "reload":
            self._check_policy(force=True)
            return self.status()
        raise UsageError(f"unknown control request {op!r}")

    def review_url(self, idle: Any = None) -> str:
        """The review page's address with its token (agent/review/server.py); only ever given
        out over the control socket."""
        from agent.review.server import ReviewServer

        if idle is not None and not (isinstance(idle, (int, float)) and 1 <= idle <= 86400):
            raise UsageError("review: idle must be between 1 and 86400 seconds")
        with self._state_lock:
            if self.review is None:
                self.review = ReviewServer(self)
        return self.review.url(idle)

    def note(self, text: str) -> dict[str, Any]:
        if not self.capturing():
            reason = self.policy_error or self.decision.reason or "the disk is full"
            raise RuntimeFailure(f"capture is off ({reason}); the note was not recorded")
        ticket = self._journal("user.note", {"text": text}, source="user", durable=True)
        if ticket is None:
            raise RuntimeFailure("the note was not recorded (dropped by a redaction rule or the disk is full)")
        try:
            seq = ticket.wait(10)
        except OSError as exc:
            if ticket.seq is None:  # withdrawn before it was written (the disk filled up)
                raise RuntimeFailure(f"the note was not recorded: {exc}") from None
            raise RuntimeFailure(f"the note was written as seq {ticket.seq} but the disk did not "
                                 f"confirm it: {exc}") from None
        except TimeoutError:
            if self.journal.cancel(ticket):
                raise RuntimeFailure("the note was not recorded: the journal could not write it "
                                     "within 10 s") from None
            try:  # written already: its fsync is what is left to wait for
                seq = ticket.wait(20)
            except (TimeoutError, OSError) as exc:
                raise RuntimeFailure(f"the note was written but the disk did not confirm it: "
                                     f"{exc}") from None
        return {"seq": seq}

    def status(self) -> dict[str, Any]:
        cap = self.capturing()
        sources: dict[str, str] = {}
        states = self.supervisor.states()
        for name in ("files", "shell", "tests", "git", "tools", "input"):
            if name not in self.enabled_sources():
                sources[name] = "off: not in policy capture.sources"
            elif not cap:
                sources[name] = "off: capture is off"
            elif name == "tests":
                sources[name] = "on (with shell)" if "shell" in self.enabled_sources() else \
                    "off: needs the shell source"
            else:
                sources[name] = states.get(name, "starting")
        if cap:
            reason = ""
        elif self.policy_error:
            reason = f"policy refused: {self.policy_error}"
        elif self.journal.disk_full:
            reason = "the disk holding the spool is full; capture resumes when space returns"
        else:
            reason = self.decision.reason
        return {
            "version": agent.__version__,
            "pid": os.getpid(),
            "capturing": cap,
            "reason": reason,
            "consent": self.decision.state,
            "paused_until": consent_mod.describe_pause(self.decision.paused_until),
            "sources": sources,
            "roots": list(self.policy.get("capture.roots")),
            "content": self.policy.get("redaction.content"),
            "journal": self.journal.stats() | {"discarded_while_off": self.discarded,
                                                "replayed_dropped": self.replayed},
            "outbox": self.delivery.outbox_status() if self.delivery else {},
            "upload": self.delivery.upload_status() if self.delivery else {},
            "policy": self.policy.summary() | {"error": self.policy_error},
            "redaction": self.redactor.stats.snapshot(),
            "logs": str(self.paths.log_file),
            "state": str(self.paths.spool.parent) if os.environ.get("TRACECAP_HOME") else None,
        }


def _username() -> str | None:
    try:
        import getpass

        return getpass.getuser()
    except Exception:
        return None


def run_daemon() -> int:
    paths = StatePaths.from_env().ensure()
    setup_logging(paths)
    try:
        policy, refused = load_effective_policy(), None
    except PolicyError as exc:
        # Stay up with capture off and say why in `status`, as for a policy refused later: a
        # service manager restarting the daemon would only meet the same policy again.
        log.error("%s; capture is off until the policy is fixed", exc)
        policy = dataclasses.replace(builtin_policy(), personal=False,
                                     origin=f"{default_policy_path()} (refused; none applied yet)")
        refused = str(exc)
    daemon = Daemon(paths, policy, policy_error=refused)
    try:
        return daemon.run()
    except TracecapError:
        raise
    except OSError as exc:
        raise RuntimeFailure(f"the daemon failed: {exc}") from None
