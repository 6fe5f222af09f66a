"""`tracecap forget --last DURATION`: delete what was captured in a recent span, before it leaves.

Takes a span ending now (or, from the review page, a set of `seq`s); gives the number of events
removed. Promise: every event with `ts` in the span (or whose `seq` is in the set) that is not yet
delivered is deleted from the journal (segments rewritten, fsynced, renamed) and from every bundle
still in the outbox; an `agent.forget` marker records only the count and the span (for a set: the
time from the earliest to the latest event removed). Bundles cannot be edited (they are encrypted to
the org key, which this machine may not hold), so every outbox bundle that may hold a forgotten event
(sealed at or after the start of the span; for a set, ending at or after its lowest `seq`) is deleted,
and the bundler cursor and chain head are rewound to just before the first of them; the bundler then
re-seals that range from the journal, which keeps every undelivered record (segments are released
only after delivery). Lifecycle markers that explain seq gaps (`agent.gap`, `agent.forget`) are kept. Once the
`agent.forget` marker is durable the journal notes the removed seqs as forgotten, so a later start
does not mistake them for damage (see agent/journal.py).
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Iterable

from schemas.events import Event

KEEP_KINDS = {"agent.gap", "agent.forget"}


def _rewind_outbox(outbox: Path, state: Any, cutoff_ns: int | None = None, *,
                   from_seq: int | None = None) -> int:
    """Delete outbox bundles created at or after `cutoff_ns` (or holding any seq >= `from_seq`);
    rewind the cursor. Returns how many."""
    from agent.delivery import list_bundles
    from agent.durable import fsync_dir
    from schemas.bundle import BundleError, read_header

    doomed = []
    for b in list_bundles(outbox):
        try:
            with open(b, "rb") as f:
                h = read_header(f)
        except (BundleError, FileNotFoundError):
            continue
        if (cutoff_ns is not None and h.created_ns >= cutoff_ns) or \
                (from_seq is not None and h.last_seq >= from_seq):
            doomed.append(h)
    if not doomed:
        return 0
    first = min(doomed, key=lambda h: h.first_seq)
    for h in doomed:
        (outbox / f"{h.bundle_id}.tcb").unlink(missing_ok=True)
    fsync_dir(outbox)
    state.sealed_upto = first.first_seq - 1
    state.prev_digest = first.prev_digest
    state.save()
    return len(doomed)


def _drop(cutoff_ns: int, delivered_upto: int):
    """Events of the span that have not left the machine; delivered ones are out of reach."""
    def drop(ev: Event) -> bool:
        return ev.ts >= cutoff_ns and ev.seq > delivered_upto and ev.kind not in KEEP_KINDS
    return drop


def _drop_seqs(seqs: frozenset[int], delivered_upto: int):
    def drop(ev: Event) -> bool:
        return ev.seq in seqs and ev.seq > delivered_upto and ev.kind not in KEEP_KINDS
    return drop


def forget_seqs(daemon: Any, seqs: Iterable[int]) -> dict[str, Any]:
    """Forget exactly these events (the ones a user selected on the review page), where they are
    not yet delivered. The marker's `from`/`to` are the earliest and latest `ts` removed."""
    wanted = frozenset(int(s) for s in seqs)
    if not wanted:
        return {"count": 0, "resealed": 0, "from": None, "to": None}

    def marker(removed: list[Event]) -> dict[str, Any] | None:
        if not removed:
            return None
        return {"count": len(removed), "from": min(e.ts for e in removed),
                "to": max(e.ts for e in removed)}

    return _forget(daemon, {"from_seq": min(wanted)},
                   lambda delivered: _drop_seqs(wanted, delivered), marker)


def forget_span(daemon: Any, seconds: float) -> dict[str, Any]:
    now = time.time_ns()
    cutoff = now - int(seconds * 1e9)
    return _forget(daemon, {"cutoff_ns": cutoff}, lambda delivered: _drop(cutoff, delivered),
                   lambda removed: {"count": len(removed), "from": cutoff, "to": now})


def _forget(daemon: Any, rewind: dict[str, int], drop: Any, marker: Any) -> dict[str, Any]:
    """Rewind the outbox as `rewind` says, rewrite the journal without what `drop(delivered_upto)`
    selects, journal the `agent.forget` marker `marker(removed)` gives (None: no marker) durably,
    and only then note the removed seqs as forgotten."""
    delivery = daemon.delivery
    if delivery is None:  # no policy applied yet (refused at start): nothing seals or uploads
        from agent.delivery import DeliveryState

        outbox, state = daemon.paths.outbox, DeliveryState(daemon.paths.outbox.parent / "delivery.json")
    else:
        outbox, state = delivery.outbox, delivery.state
    # The user's forget does not wait for a stalled upload's deadline: it is cut short, and the
    # bundle it was sending stays, to be forgotten with the rest if it is in the span.
    hold = delivery.outbox_now() if delivery is not None else contextlib.nullcontext()
    with daemon._state_lock, hold:
        daemon.journal.flush()
        resealed = _rewind_outbox(outbox, state, **rewind)
        removed = daemon.journal.rewrite(drop(state.uploaded_upto))
        data = marker(removed)
        if data is not None:
            daemon.journal.append("agent.forget", "agent", None, data, durable=True).wait(10)
            daemon.journal.record_forgotten(ev.seq for ev in removed)
    if delivery is not None:
        delivery.seal_wake.set()
    data = data or {"from": None, "to": None}
    return {"count": len(removed), "resealed": resealed, "from": data["from"], "to": data["to"]}


def forget_offline(paths: Any, seconds: float) -> dict[str, Any]:
    """The same with no daemon running: take the daemon lock so none starts meanwhile."""
    from agent.daemon import DaemonLock
    from agent.delivery import DeliveryState
    from agent.journal import Journal

    lock = DaemonLock(paths.lock)
    lock.acquire()
    try:
        now = time.time_ns()
        cutoff = now - int(seconds * 1e9)
        journal = Journal(paths.spool)
        journal.open()
        journal.start()
        try:
            state = DeliveryState(paths.outbox.parent / "delivery.json")
            resealed = _rewind_outbox(paths.outbox, state, cutoff)
            removed = journal.rewrite(_drop(cutoff, state.uploaded_upto))
            journal.append("agent.forget", "agent", None,
                           {"count": len(removed), "from": cutoff, "to": now}, durable=True).wait(10)
            journal.record_forgotten(ev.seq for ev in removed)
        finally:
            journal.stop()
        return {"count": len(removed), "resealed": resealed, "from": cutoff, "to": now}
    finally:
        lock.release()
