"""What the collector's storage pieces hand each other: an indexed bundle row, the verdict on an
upload, and the two ways an upload can fail (refused for good, or the storage is away for now).
No I/O; imported by `blobs`, `index`, `storage` and their readers."""
from __future__ import annotations

import dataclasses
import re

from schemas.bundle import BundleHeader

_BUNDLE_ID_RE = re.compile(r"^[0-9a-f]{16}-[0-9a-f]{12}$")


def valid_bundle_id(text: str) -> bool:
    return bool(_BUNDLE_ID_RE.match(text))


@dataclasses.dataclass(frozen=True)
class BundleRow:
    """One indexed bundle: what the chain and gap analysis works from."""

    bundle_id: str
    device_id: str
    first_seq: int
    last_seq: int
    count: int
    prev_digest: str
    digest: str
    size: int
    created_ns: int
    received_ns: int


@dataclasses.dataclass(frozen=True)
class Stored:
    """An accepted upload: `created` is False when these exact bytes were already stored."""

    created: bool
    header: BundleHeader
    digest: str


class Refused(Exception):
    """An upload the collector will not store; `status` is the HTTP status, `str()` the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class StorageUnavailable(Exception):
    """The object store or the index cannot be reached right now; nothing was acknowledged, and
    the sender should try again after `retry_after` seconds (HTTP 503 with `Retry-After`)."""

    def __init__(self, reason: str, retry_after: int = 5) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class StorageConfigError(Exception):
    """A `--blobs`/`--index` URL that cannot be used (bad form, missing bucket, missing extra);
    `str()` is one sentence naming the URL and the fix."""
