"""Delivery: journal -> sealed bundles in the outbox -> the collector.

Takes durable journal records; gives bundles to `upload.url`. Promises:
- At least once, never silently lost: a journal range is sealed into a bundle that is durably in the
  outbox (temp file, fsync, rename, fsync dir) before the bundler's cursor moves past it; a bundle
  leaves the outbox only after the destination acknowledged it (2xx, or a durable file copy); journal
  segments are released only once every record in them has been delivered. So a crash at any point
  either repeats an upload (the collector dedupes by bundle id and digest) or repeats a seal of the
  same range (the half-written temp file is discarded on start), never skips one.
- Chain: each bundle names the digest of this device's previous bundle; the cursor and the digest
  are persisted together in `<outbox>/../delivery.json` (atomic replace) after the bundle is in place,
  and reconciled from the outbox on start.
- Bundler: seals when the unsealed journal grows past `upload.bundle_bytes`, when the oldest unsealed
  record is `upload.interval` old, on `flush`, and on stop.
- Uploader: oldest bundle first; nothing leaves before it is `upload.hold` old. Retries connection
  errors, 408, 429 and 5xx with capped exponential backoff and full jitter (jitter on the first retry
  too, so a fleet does not stampede a recovering collector), honouring Retry-After; 401/403 are
  retried on a longer backoff and shown in `status`; 400/413/422 move the bundle to the quarantine
  directory with the reason (retried after a policy change or an upgrade). Every wait blocks on an
  event that stop and flush set, so neither ever waits out a backoff, and no wait is zero (a
  `Retry-After: 0` is taken as one second).
- A hostile or broken collector (`agent/upload_http.py`): each request is over by its deadline,
  `upload.timeout` plus a second per 64 KiB of bundle, whatever the collector sends or withholds;
  at most 64 KiB of an answer is read; a request in flight shows in `status` with its age, and
  becomes the last error when its deadline passes. `flush` returns by its timeout and stop within a
  few seconds even mid-upload: they never wait on a request, and stop shuts its sockets down.
- Quota: journal + outbox are kept under `spool.max_bytes` by dropping the oldest undelivered bundle;
  an `agent.gap` event records exactly which seq range and how many events were lost.
- History: each delivered bundle appends one line to `<outbox>/../uploaded.jsonl` (when, where to,
  how many events, which seqs; the URL without credentials), the newest `UPLOAD_HISTORY` kept; the
  review page shows it. It is written after the delivery is recorded, so losing a line loses
  nothing but a line of history.
"""
from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import os
import random
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlparse

from agent.durable import fsync_dir, write_atomic
from agent.policy import parse_duration, parse_size, resolve_upload

log = logging.getLogger("tracecap.delivery")

BUNDLE_SUFFIX = ".tcb"
RETRYABLE = {408, 425, 429, 500, 502, 503, 504}
AUTH = {401, 403}
REFUSED = {400, 404, 409, 410, 413, 415, 422}
AGENT_VERSION_FILE = "agent-version"
UPLOAD_HISTORY = 500
UPLOAD_HISTORY_FILE = "uploaded.jsonl"


def copy_durably(src: Path, dest_dir: Path, name: str) -> None:
    dest_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = dest_dir / f".{name}.tmp"
    with open(src, "rb") as fi, open(tmp, "wb") as fo:
        shutil.copyfileobj(fi, fo, 1 << 20)
        fo.flush()
        os.fsync(fo.fileno())
    os.replace(tmp, dest_dir / name)
    fsync_dir(dest_dir)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)], never below a tenth of base."""
    return max(base / 10, rng.uniform(0, min(cap, base * (2 ** min(attempt, 30)))))


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class DeliveryState:
    """`delivery.json`: the bundler's cursor and chain head, and the delivered watermark."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sealed_upto = 0
        self.prev_digest = ""
        self.uploaded_upto = 0
        self.uploaded_total = 0
        try:
            raw = json.loads(path.read_text())
            self.sealed_upto = int(raw.get("sealed_upto", 0))
            self.prev_digest = str(raw.get("prev_digest", ""))
            self.uploaded_upto = int(raw.get("uploaded_upto", 0))
            self.uploaded_total = int(raw.get("uploaded_total", 0))
        except (FileNotFoundError, ValueError, TypeError):
            pass

    def save(self) -> None:
        write_atomic(self.path, json.dumps({
            "format": 1, "sealed_upto": self.sealed_upto, "prev_digest": self.prev_digest,
            "uploaded_upto": self.uploaded_upto, "uploaded_total": self.uploaded_total}).encode())


def device_id(paths: Any) -> str:
    f = paths.config / "device.json"
    try:
        return json.loads(f.read_text())["device_id"]
    except (FileNotFoundError, ValueError, KeyError):
        pass
    did = uuid.uuid4().hex
    paths.config.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(f, json.dumps({"device_id": did}).encode())
    return did


def ensure_personal_keys(paths: Any) -> None:
    """Personal mode: an org key pair under the user's own keys directory, so the user can decrypt
    their own bundles (`tracecap bundle decrypt FILE --key <keys>/org.key`)."""
    from schemas.keys import generate_org_keypair, write_org_keypair

    if (paths.keys / "org.pub").exists():
        return
    priv, pub = generate_org_keypair()
    try:
        write_org_keypair(paths.keys, priv, pub)
    except FileExistsError:
        pass


def list_bundles(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.suffix == BUNDLE_SUFFIX and not p.name.startswith("."))
    except FileNotFoundError:
        return []


class Delivery:
    def __init__(self, daemon: Any) -> None:
        self.d = daemon
        self.paths = daemon.paths
        self.outbox = self.paths.outbox
        self.quarantine = self.paths.quarantine
        self.state = DeliveryState(self.outbox.parent / "delivery.json")
        self.lock = threading.RLock()  # one of: seal, upload, forget, quota at a time
        self.stop_event = threading.Event()
        self.seal_wake = threading.Event()
        self.upload_wake = threading.Event()
        self.rng = random.Random()
        self.last_success_ns: int | None = None
        self.last_error: str | None = None
        self.next_attempt_ns: int | None = None
        self.held_reason: str | None = None
        self.in_flight: dict[str, Any] | None = None  # the request being made, for `status`
        self._last_seal_mono = time.monotonic()
        self._threads: list[threading.Thread] = []
        self._device_key = None
        self._device_id = ""
        self._recipients: list[Any] = []
        self._client: Any = None
        self.configure()

    # ------------------------------------------------------------------ config
    def configure(self) -> None:
        """Take the policy's upload settings. Everything is loaded before anything is assigned, so
        a key file that cannot be read leaves the previous settings in force."""
        from schemas.keys import load_or_create_device_key, load_org_public

        pol = self.d.policy
        url, recipient_files = resolve_upload(pol, self.paths)
        if pol.personal or not pol.data["upload"]["recipients"]:
            ensure_personal_keys(self.paths)
        recipients = [load_org_public(p) for p in recipient_files]
        device_key = load_or_create_device_key(self.paths.keys / "device.key")
        settings = dict(
            # Floors as in agent.policy's lower bounds: no wait below them can become a spin.
            interval=max(1.0, parse_duration(pol.get("upload.interval"))),
            hold_s=parse_duration(pol.get("upload.hold")),
            bundle_bytes=max(1024, parse_size(pol.get("upload.bundle_bytes"))),
            level=pol.get("upload.zstd_level"),
            backoff_max=max(1.0, parse_duration(pol.get("upload.backoff_max"))),
            timeout=max(1.0, parse_duration(pol.get("upload.timeout"))),
            max_bytes=parse_size(pol.get("spool.max_bytes")))
        self._device_id = device_id(self.paths)
        self.url, self._recipients, self._device_key = url, recipients, device_key
        for k, v in settings.items():
            setattr(self, k, v)
        if self._client is not None:
            self._client.close()
            self._client = None

    def abort_upload(self) -> None:
        """Cut the request in flight short (it fails at once and is retried later)."""
        client = self._client
        if client is not None:
            client.abort()

    @contextlib.contextmanager
    def outbox_now(self) -> Iterator[None]:
        """Hold the outbox (`lock`) at once: an upload in flight, perhaps to a stalled collector,
        is cut short rather than waited for; it is retried afterwards."""
        if not self.lock.acquire(timeout=0.5):
            self.abort_upload()
            self.lock.acquire()
            if self._client is not None:
                self._client.resume()
        try:
            yield
        finally:
            self.lock.release()

    def request_deadline(self, size: int) -> float:
        """Seconds one upload of `size` bytes may take from connect to the last byte of the answer:
        `upload.timeout`, plus a second per 64 KiB sent (a slow link still gets its bundle out)."""
        return self.timeout + size / 65536

    def policy_changed(self, configured: bool = False) -> None:
        with self.lock:
            if not configured:
                self.configure()
            self._requeue_quarantine("the policy changed")
        self.seal_wake.set()
        self.upload_wake.set()

    def _requeue_quarantine(self, why: str) -> None:
        moved = 0
        for b in list_bundles(self.quarantine):
            os.replace(b, self.outbox / b.name)
            try:
                (self.quarantine / (b.name + ".reason")).unlink()
            except FileNotFoundError:
                pass
            moved += 1
        if moved:
            fsync_dir(self.outbox)
            log.info("%d quarantined bundles queued again: %s", moved, why)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._reconcile()
        version_file = self.quarantine / AGENT_VERSION_FILE
        import agent

        if not version_file.exists() or version_file.read_text() != agent.__version__:
            self._requeue_quarantine("tracecap was upgraded")
            write_atomic(version_file, agent.__version__.encode())
        for target, name in ((self._bundler_loop, "bundler"), (self._uploader_loop, "uploader")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, upload_grace: float = 3.0) -> None:
        """Seal what the journal holds; give the uploader a moment; stop. Called after the journal
        has been flushed, so the final bundle holds everything captured. Bounded: about
        `upload_grace` plus two seconds, whatever an upload is doing (its sockets are shut down)."""
        deadline = time.monotonic() + upload_grace
        try:
            if not self.seal_now(lock_timeout=upload_grace):
                log.info("nothing sealed at stop (an upload held the outbox); the events stay in "
                         "the journal and are sealed at the next start")
        except Exception as exc:
            log.error("could not seal the final bundle: %s (the events stay in the journal)", exc)
        self.upload_wake.set()
        while list_bundles(self.outbox) and time.monotonic() < deadline and self.next_attempt_ns is None:
            self.stop_event.wait(0.05)
        self.stop_event.set()
        self.seal_wake.set()
        self.upload_wake.set()
        client = self._client
        if client is not None:
            client.abort()
        end = time.monotonic() + 2.0
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        if client is not None and not any(t.is_alive() for t in self._threads):
            client.close()

    def _reconcile(self) -> None:
        """After a crash: drop half-written temp files; move the cursor past bundles that reached
        the outbox but whose cursor update did not."""
        from schemas.bundle import BundleError, read_header

        for tmp in self.outbox.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        for b in list_bundles(self.outbox):
            try:
                with open(b, "rb") as f:
                    h = read_header(f)
            except BundleError as exc:
                log.error("outbox bundle %s is unreadable (%s); quarantined", b.name, exc)
                self._quarantine(b, str(exc))
                continue
            if h.last_seq > self.state.sealed_upto:
                from schemas.bundle import verify_bundle

                with open(b, "rb") as f:
                    _, digest = verify_bundle(f)
                self.state.sealed_upto, self.state.prev_digest = h.last_seq, digest
                self.state.save()

    # ------------------------------------------------------------------ sealing
    def _bundler_loop(self) -> None:
        while not self.stop_event.is_set():
            self.seal_wake.wait(timeout=min(1.0, self.interval))
            self.seal_wake.clear()
            if self.stop_event.is_set():
                return
            j = self.d.journal
            pending = j.durable_seq > self.state.sealed_upto
            if not pending:
                self._last_seal_mono = time.monotonic()
                continue
            due = time.monotonic() - self._last_seal_mono >= self.interval
            big = self._unsealed_bytes_estimate() >= self.bundle_bytes
            if due or big:
                try:
                    self.seal_now()
                except Exception as exc:
                    self.last_error = f"sealing failed: {exc}"
                    log.exception("sealing failed")

    def _unsealed_bytes_estimate(self) -> int:
        """Journal bytes not yet sealed, pro rata by seq over what the journal holds."""
        j = self.d.journal
        st = j.stats()
        held = max(1, j.durable_seq - (st["first_seq"] or 1) + 1)
        unsealed = j.durable_seq - self.state.sealed_upto
        return int(st["bytes"] * unsealed / held)

    def seal_now(self, lock_timeout: float = -1) -> int:
        """Seal every durable, unsealed journal record into bundles. Returns bundles written; 0
        without sealing when `lock_timeout` (seconds) passes while an upload holds the outbox."""
        written = 0
        if not self.lock.acquire(timeout=lock_timeout):
            return 0
        try:
            batch: list[dict] = []
            size = 0
            for ev in self.d.journal.read(self.state.sealed_upto + 1):
                d = ev.to_dict()
                batch.append(d)
                size += 64 + _approx_size(d["data"])
                if size >= self.bundle_bytes:
                    self._seal(batch)
                    written += 1
                    batch, size = [], 0
            if batch:
                self._seal(batch)
                written += 1
            self._last_seal_mono = time.monotonic()
            self._enforce_quota()
        finally:
            self.lock.release()
        if written:
            self.upload_wake.set()
        return written

    def _seal(self, events: list[dict]) -> None:
        from schemas.bundle import new_bundle_id, seal_bundle

        created = time.time_ns()
        bid = new_bundle_id(created)
        tmp = self.outbox / f".{bid}{BUNDLE_SUFFIX}.tmp"
        with open(tmp, "wb") as f:
            sealed = seal_bundle(f, events, device_id=self._device_id, device_key=self._device_key,
                                 recipients=self._recipients, prev_digest=self.state.prev_digest,
                                 level=self.level, bundle_id=bid, created_ns=created)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.outbox / f"{bid}{BUNDLE_SUFFIX}")
        fsync_dir(self.outbox)
        self.state.sealed_upto = sealed.header.last_seq
        self.state.prev_digest = sealed.digest
        self.state.save()
        log.info("sealed bundle %s: seq %d..%d, %d events, %d bytes", bid, sealed.header.first_seq,
                 sealed.header.last_seq, sealed.header.count, sealed.size)

    # ------------------------------------------------------------------ quota
    def _enforce_quota(self) -> None:
        from schemas.bundle import BundleError, read_header

        while True:
            bundles = list_bundles(self.outbox)
            used = self.d.journal.stats()["bytes"] + sum(_fsize(b) for b in bundles)
            if used <= self.max_bytes or not bundles:
                return
            oldest = bundles[0]
            try:
                with open(oldest, "rb") as f:
                    h = read_header(f)
                first, last, count = h.first_seq, h.last_seq, h.count
            except BundleError:
                first = last = count = None
            oldest.unlink()
            fsync_dir(self.outbox)
            if last is not None:
                self._delivered(last, count=0)
            gap = {"dropped": count if count is not None else 0,
                   "reason": f"spool quota (spool.max_bytes = {self.d.policy.get('spool.max_bytes')}) "
                             f"exceeded while bundles could not be delivered"}
            if first is not None:
                gap |= {"from": first, "to": last}
            log.error("dropped undelivered bundle %s to stay under spool.max_bytes: %s", oldest.name, gap)
            self.d._journal("agent.gap", gap)

    # ------------------------------------------------------------------ uploading
    def _uploader_loop(self) -> None:
        from schemas.bundle import BundleError, read_header

        attempt = 0
        auth_attempt = 0
        while not self.stop_event.is_set():
            bundles = list_bundles(self.outbox)
            if not bundles:
                self.held_reason = None
                self.upload_wake.wait()
                self.upload_wake.clear()
                continue
            b = bundles[0]
            try:
                with open(b, "rb") as f:
                    h = read_header(f)
            except (BundleError, FileNotFoundError) as exc:
                if b.exists():
                    self._quarantine(b, f"unreadable: {exc}")
                continue
            age = (time.time_ns() - h.created_ns) / 1e9
            if age < self.hold_s:
                self.held_reason = f"held for review until {self.hold_s:.0f}s old (upload.hold)"
                self.upload_wake.wait(max(0.05, self.hold_s - age))
                self.upload_wake.clear()
                continue
            self.held_reason = None
            with self.lock:
                if not b.exists():  # forget or quota removed it meanwhile
                    continue
                outcome, detail, retry_after = self._send(b, h)
                if outcome == "ok":
                    b.unlink()
                    fsync_dir(self.outbox)
                    self._delivered(h.last_seq, count=1)
                    self._record_upload(h)
                    self.last_success_ns = time.time_ns()
                    self.last_error = None
                    self.next_attempt_ns = None
                    attempt = auth_attempt = 0
                    continue
                if outcome == "refused":
                    self._quarantine(b, detail)
                    self.last_error = f"bundle {b.name} refused: {detail}"
                    continue
            self.last_error = detail
            if outcome == "auth":
                delay = backoff_delay(auth_attempt, 30.0, max(self.backoff_max, 300.0), self.rng)
                auth_attempt += 1
            else:
                delay = backoff_delay(attempt, 1.0, self.backoff_max, self.rng)
                attempt += 1
            if retry_after is not None:  # honoured, but "at once" from a collector is not a spin
                delay = min(max(retry_after, 1.0), max(self.backoff_max, 1.0))
            self.next_attempt_ns = time.time_ns() + int(delay * 1e9)
            log.warning("upload of %s failed (%s); retrying in %.1fs", b.name, detail, delay)
            if self.upload_wake.wait(delay):
                self.upload_wake.clear()
            self.next_attempt_ns = None

    def _send(self, path: Path, h: Any) -> tuple[str, str, float | None]:
        """Deliver one bundle. Returns (ok|retry|auth|refused, detail, retry_after)."""
        url = urlparse(self.url)
        if url.scheme == "file":
            try:
                copy_durably(path, Path(unquote(url.path)), path.name)
                return "ok", "", None
            except OSError as exc:
                return "retry", f"cannot write to {unquote(url.path)}: {exc.strerror}", None
        from agent import upload_http

        if self._client is None:
            pol = self.d.policy.data["upload"]
            ctx = None
            if url.scheme == "https":
                ctx = upload_http.ssl_context(
                    *(str(Path(pol[k]).expanduser()) if pol[k] else "" for k in
                      ("ca_bundle", "client_cert", "client_key")))
            self._client = upload_http.Uploader(ctx, self.timeout)
        token = self.d.policy.get("upload.token")
        headers = {"Content-Type": "application/octet-stream", "User-Agent": "tracecap",
                   "Accept-Encoding": "identity"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        target = self.url.rstrip("/") + f"/v1/bundles/{h.bundle_id}"
        with open(path, "rb") as f:
            body = f.read()
        limit = self.request_deadline(len(body))
        started = time.monotonic()
        self.in_flight = {"bundle": path.name, "since_ns": time.time_ns(),
                          "deadline_ns": time.time_ns() + int(limit * 1e9)}
        try:
            resp = self._client.put(target, headers, body, started + limit)
        except upload_http.Timeout:
            return "retry", (f"the collector at {self.url} did not answer within {limit:.0f}s "
                             f"(upload.timeout); it accepted the connection but stalled"), None
        except upload_http.NetworkError as exc:
            if self.stop_event.is_set():
                return "retry", "the upload was stopped with the daemon", None
            if self._client.backend.aborted:
                return "retry", "the upload was cut short (forget or a policy change); it is sent again", None
            return "retry", f"cannot reach the collector at {self.url}: {str(exc) or type(exc).__name__}", None
        finally:
            self.in_flight = None
        if 200 <= resp.status < 300:
            return "ok", "", None
        reason = _reason(resp)
        ra = retry_after_seconds(resp.headers.get("retry-after"))
        if resp.status in AUTH:
            return "auth", f"the collector refused the token (HTTP {resp.status}: {reason}); " \
                           f"check upload.token in the policy", ra
        if resp.status in REFUSED:
            return "refused", f"HTTP {resp.status}: {reason}", None
        return "retry", f"the collector answered HTTP {resp.status}: {reason}", ra

    def _record_upload(self, h: Any) -> None:
        path = self.outbox.parent / UPLOAD_HISTORY_FILE
        line = json.dumps({"bundle": h.bundle_id, "at": time.time_ns(), "to": _public_url(self.url),
                           "count": h.count, "first_seq": h.first_seq, "last_seq": h.last_seq})
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as f:
                f.write(line + "\n")
            if path.stat().st_size > UPLOAD_HISTORY * 2 * (len(line) + 1):
                keep = path.read_text().splitlines()[-UPLOAD_HISTORY:]
                write_atomic(path, ("\n".join(keep) + "\n").encode())
        except OSError as exc:
            log.warning("could not record the upload of %s in %s: %s", h.bundle_id, path, exc)

    def _quarantine(self, path: Path, reason: str) -> None:
        self.quarantine.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.replace(path, self.quarantine / path.name)
        write_atomic(self.quarantine / (path.name + ".reason"), reason.encode())
        fsync_dir(self.outbox)
        log.error("bundle %s quarantined: %s", path.name, reason)

    def _delivered(self, last_seq: int, count: int) -> None:
        self.state.uploaded_upto = max(self.state.uploaded_upto, last_seq)
        self.state.uploaded_total += count
        self.state.save()
        # A segment is released only when everything in it is delivered and no older bundle is
        # still waiting in the outbox or quarantine (its events must stay readable for forget/log).
        waiting = [b for d in (self.outbox, self.quarantine) for b in list_bundles(d)]
        floor = self.state.uploaded_upto
        if waiting:
            from schemas.bundle import BundleError, read_header

            for b in waiting:
                try:
                    with open(b, "rb") as f:
                        floor = min(floor, read_header(f).first_seq - 1)
                except (BundleError, FileNotFoundError):
                    continue
        self.d.journal.release(min(floor, self.state.sealed_upto))

    # ------------------------------------------------------------------ flush / status
    def flush(self, timeout: float) -> dict[str, Any]:
        """Seal and upload; returns by `timeout` whatever the collector does (an upload in flight
        holds the outbox at most until its own deadline, and flush does not wait for it)."""
        deadline = time.monotonic() + timeout
        self.d.journal.flush(timeout)
        self.seal_now(lock_timeout=max(0.0, deadline - time.monotonic()))
        before = self.state.uploaded_total
        # Cut a pending backoff short once: the user asked for an attempt now. Waking it again on
        # every check would turn an unreachable collector into a retry storm for the whole timeout.
        self.upload_wake.set()
        while time.monotonic() < deadline and list_bundles(self.outbox) and not self.held_reason:
            self.stop_event.wait(0.05)
        pending = len(list_bundles(self.outbox))
        reason = self.held_reason or self.last_error
        return {"uploaded": self.state.uploaded_total - before, "pending": pending,
                "reason": reason if pending else None}

    def waiting_bundles(self) -> list[dict[str, Any]]:
        """The bundles in the outbox, oldest first: id, created_ns, count, seqs, bytes."""
        from schemas.bundle import BundleError, read_header

        out = []
        for b in list_bundles(self.outbox):
            try:
                with open(b, "rb") as f:
                    h = read_header(f)
            except (BundleError, FileNotFoundError, OSError):
                continue
            out.append({"bundle": h.bundle_id, "created_ns": h.created_ns, "count": h.count,
                        "first_seq": h.first_seq, "last_seq": h.last_seq, "bytes": _fsize(b)})
        return out

    def outbox_status(self) -> dict[str, Any]:
        bundles = list_bundles(self.outbox)
        q = list_bundles(self.quarantine)
        return {"bundles": len(bundles), "bytes": sum(_fsize(b) for b in bundles),
                "quarantined": len(q), "quarantine_dir": str(self.quarantine) if q else None,
                "sealed_upto": self.state.sealed_upto}

    def upload_status(self) -> dict[str, Any]:
        return {"url": self.url, "last_success_ns": self.last_success_ns, "last_error": self.last_error,
                "in_flight": self.in_flight,
                "next_attempt_ns": self.next_attempt_ns, "held": self.held_reason,
                "uploaded_upto": self.state.uploaded_upto, "uploaded_total": self.state.uploaded_total,
                "device_id": self._device_id}


def read_upload_history(outbox: Path, limit: int = 50) -> list[dict[str, Any]]:
    """The newest `limit` delivered bundles, newest first (see History above)."""
    try:
        lines = (Path(outbox).parent / UPLOAD_HISTORY_FILE).read_text().splitlines()
    except (FileNotFoundError, OSError):
        return []
    out = []
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line torn by a crash
        if isinstance(rec, dict):
            out.append(rec)
        if len(out) >= limit:
            break
    return out


def _public_url(url: str) -> str:
    """The upload URL as it may be shown: no user or password."""
    u = urlparse(url)
    if u.username or u.password:
        host = u.hostname or ""
        if u.port:
            host += f":{u.port}"
        u = u._replace(netloc=host)
    return u.geturl()


def _fsize(p: Path) -> int:
    try:
        return p.stat().st_size
    except FileNotFoundError:
        return 0


def _approx_size(obj: Any) -> int:
    if isinstance(obj, str):
        return len(obj)
    if isinstance(obj, dict):
        return sum(len(k) + _approx_size(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return sum(_approx_size(v) for v in obj)
    return 8


def _reason(resp: Any) -> str:
    """The collector's one sentence (`{"error": ...}`), else the start of its answer, printable."""
    text = resp.body.decode("utf-8", "replace")
    try:
        body = json.loads(text)
        if isinstance(body, dict) and body.get("error"):
            text = str(body["error"])
    except ValueError:
        pass
    text = "".join(c if c.isprintable() else " " for c in text[:300]).strip()
    return text or "no reason given"
