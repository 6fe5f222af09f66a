"""The one event type that crosses every boundary: journal, bundle, collector, export.

Takes nothing; gives `Event`, its contract dict form and its msgpack encoding.
Promise: `Event.from_dict(e.to_dict()) == e` and `decode_event(encode_event(e)) == e` for every
event whose `data` holds msgpack-representable values (str, int, float, bool, None, lists, dicts
with str keys). Byte strings are never put in `data`: everything a user can read is text.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import msgpack

EVENT_VERSION = 1

# The kinds the contract names, each with its source. Sources may add kinds; these are fixed.
CONTRACT_KINDS = (
    "file.save",
    "shell.start",
    "shell.end",
    "test.run",
    "tool.invocation",
    "git.commit",
    "git.checkout",
    "git.ref",
    "repo.state",
    "input.activity",
    "input.idle",
    "input.active",
    "app.focus",
    "user.note",
    "agent.start",
    "agent.stop",
    "agent.pause",
    "agent.resume",
    "agent.gap",
    "agent.forget",
    "agent.policy",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    seq: int
    ts: int  # wall clock, ns since the epoch
    kind: str
    source: str
    session: str | None
    data: dict[str, Any]
    v: int = EVENT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The contract form, keys in the contract's order."""
        return {
            "v": self.v,
            "seq": self.seq,
            "ts": self.ts,
            "kind": self.kind,
            "source": self.source,
            "session": self.session,
            "data": self.data,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Event":
        return cls(
            seq=d["seq"],
            ts=d["ts"],
            kind=d["kind"],
            source=d["source"],
            session=d.get("session"),
            data=d.get("data") or {},
            v=d.get("v", EVENT_VERSION),
        )


def encode_event(event: Event) -> bytes:
    """msgpack of the contract dict: the on-disk and in-bundle encoding of one event."""
    return msgpack.packb(event.to_dict(), use_bin_type=True)


def decode_event(raw: bytes) -> Event:
    return Event.from_dict(msgpack.unpackb(raw, raw=False, strict_map_key=True))
