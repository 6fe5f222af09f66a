"""Consent: whether capture may run right now.

Takes the policy's `consent.mode` and the user's own choice and pause, kept in
`<config>/consent.json`; gives `capturing()`, the one gate every source and `note` pass through.
Promise: capture is off unless both the policy and the user allow it; the user's choice persists
(atomic replace + fsync) across restarts and upgrades, and can be changed whether or not the daemon
runs. `disabled` is the admin's kill switch: nothing is captured and opting in is refused.

The rule, as a pure function (`decide`):
    mode disabled                    -> off ("disabled by policy")
    mode opt-in,  choice != "in"     -> off ("not opted in")
    mode opt-out, choice == "out"    -> off ("opted out")
    paused (until a time, or until resumed) -> off ("paused")
    otherwise                        -> on
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from agent.errors import UsageError

PAUSE_INDEFINITE = -1


@dataclasses.dataclass(frozen=True)
class ConsentFile:
    choice: str | None = None  # "in", "out" or None (never chosen)
    paused_until: int | None = None  # ns since the epoch, PAUSE_INDEFINITE, or None
    updated: int = 0

    @classmethod
    def load(cls, path: Path) -> "ConsentFile":
        try:
            raw = json.loads(Path(path).read_text())
        except FileNotFoundError:
            return cls()
        except (ValueError, OSError):
            # An unreadable choice must not turn capture on: treat it as never chosen.
            return cls()
        choice = raw.get("choice") if raw.get("choice") in ("in", "out") else None
        paused = raw.get("paused_until")
        return cls(choice=choice, paused_until=paused if isinstance(paused, int) else None,
                   updated=int(raw.get("updated", 0) or 0))

    def save(self, path: Path) -> None:
        from agent.durable import write_atomic

        path = Path(path)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, json.dumps(dataclasses.asdict(self)).encode())


@dataclasses.dataclass(frozen=True)
class Decision:
    capturing: bool
    state: str  # opted-in | opted-out | pending | disabled
    reason: str  # why capture is off, or "" when on
    paused_until: int | None


def decide(mode: str, consent: ConsentFile, now_ns: int) -> Decision:
    paused = consent.paused_until
    if paused is not None and paused != PAUSE_INDEFINITE and paused <= now_ns:
        paused = None
    if mode == "disabled":
        return Decision(False, "disabled", "capture is disabled by your organisation's policy", None)
    if mode == "opt-in":
        state = "opted-in" if consent.choice == "in" else ("opted-out" if consent.choice == "out" else "pending")
        if state != "opted-in":
            return Decision(False, state, "not opted in (run: tracecap opt-in)", paused)
    else:
        state = "opted-out" if consent.choice == "out" else "opted-in"
        if state == "opted-out":
            return Decision(False, state, "opted out (run: tracecap opt-in)", paused)
    if paused is not None:
        return Decision(False, state, "paused (run: tracecap resume)", paused)
    return Decision(True, state, "", None)


def change(path: Path, mode: str, op: str, *, pause_seconds: float | None = None,
           now_ns: int | None = None) -> ConsentFile:
    """Apply a user's consent command to the stored choice and return the new one.
    Raises UsageError when the policy forbids it (opt-in under `disabled`)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    cur = ConsentFile.load(path)
    if op == "opt-in":
        if mode == "disabled":
            raise UsageError("your organisation's policy has disabled tracecap (consent.mode = "
                             "\"disabled\"); ask your admin if you believe this is wrong")
        new = dataclasses.replace(cur, choice="in", updated=now_ns)
    elif op == "opt-out":
        new = dataclasses.replace(cur, choice="out", updated=now_ns)
    elif op == "pause":
        until = PAUSE_INDEFINITE if pause_seconds is None else now_ns + int(pause_seconds * 1e9)
        new = dataclasses.replace(cur, paused_until=until, updated=now_ns)
    elif op == "resume":
        new = dataclasses.replace(cur, paused_until=None, updated=now_ns)
    else:
        raise ValueError(op)
    new.save(path)
    return new


def describe_pause(paused_until: int | None) -> Any:
    """For status: None, "until resumed", or an ISO time."""
    if paused_until is None:
        return None
    if paused_until == PAUSE_INDEFINITE:
        return "until resumed"
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(paused_until / 1e9))
