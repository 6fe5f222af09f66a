"""`tracecap forget --last DURATION`: delete what was captured in a recent span, before it leaves.

Takes a span ending now; gives the number of events removed. Promise: every event with `ts` in the
span that is not yet delivered is deleted from the journal (segments rewritten, fsynced, renamed)
and from every bundle still in the outbox; an `agent.forget` marker records only the count and the
span. Bundles cannot be edited (they are encrypted to the org key, which this machine may not hold),
so every outbox bundle sealed at or after the start of the span is deleted and the bundler cursor and
chain head are rewound to just before the first of them; the bundler then re-seals that range from
the journal, which keeps every undelivered record (segments are released only after delivery).
Lifecycle markers that explain seq gaps (`agent.gap`, `agent.forget`) are kept. Once the
`agent.forget` marker is durable the journal notes the removed seqs as forgotten, so a later start
does not mistake them for damage (see agent/journal.py).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from schemas.events import Event

KEEP_KINDS = {"agent.gap", "agent.forget"}


def _rewind_outbox(outbox: Path, state: Any, cutoff_ns: int) -> int:
    """Delete outbox bundles created at or after cutoff; rewind the cursor. Returns how many."""
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
        if h.created_ns >= cutoff_ns:
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


def forget_span(daemon: Any, seconds: float) -> dict[str, Any]:
    now = time.time_ns()
    cutoff = now - int(seconds * 1e9)
    delivery = daemon.delivery
    with daemon._state_lock, delivery.lock:
        daemon.journal.flush()
        resealed = _rewind_outbox(delivery.outbox, delivery.state, cutoff)
        removed = daemon.journal.rewrite(_drop(cutoff, delivery.state.uploaded_upto))
        ticket = daemon.journal.append("agent.forget", "agent", None,
                                       {"count": len(removed), "from": cutoff, "to": now}, durable=True)
        ticket.wait(10)
        daemon.journal.record_forgotten(ev.seq for ev in removed)
    delivery.seal_wake.set()
    return {"count": len(removed), "resealed": resealed, "from": cutoff, "to": now}


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
