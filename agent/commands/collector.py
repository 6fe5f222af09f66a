"""`tracecap collector serve|verify` and `tracecap export`: the org's side of the wire.

Takes command-line arguments; gives a running reference collector, a per-device report of a
collector's data directory (exit 1 on any missing seq range, chain break or damaged object), or
an export of every stored bundle as ordered, deduplicated, schema-checked JSON lines or Parquet.
Promises: bad arguments, an unreadable data directory and a bad or non-matching org key end in
exit 2 with one sentence on stderr; heavy modules (uvicorn, pyarrow) load only when used.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from agent.errors import RuntimeFailure, UsageError
from agent.policy import parse_size

TOKEN_ENV = "TRACECAP_COLLECTOR_TOKEN"


def register(sub) -> None:
    col = sub.add_parser("collector", help="the reference collector and its checks")
    col_sub = col.add_subparsers(dest="collector_command", required=True, metavar="COMMAND")
    serve = col_sub.add_parser("serve", help="run the reference collector (HTTP, foreground)")
    serve.add_argument("--data", required=True, type=Path, metavar="DIR", help="where bundles and the index live")
    serve.add_argument("--listen", default="127.0.0.1:8787", metavar="HOST:PORT",
                       help="address to listen on (default 127.0.0.1:8787; port 0 picks a free one)")
    serve.add_argument("--token", default=None, metavar="TOKEN",
                       help=f"bearer token uploads must send (default: ${TOKEN_ENV})")
    serve.add_argument("--max-bundle-bytes", default="64MiB", metavar="SIZE",
                       help="largest bundle accepted (default 64MiB)")
    serve.set_defaults(func=cmd_collector_serve)

    verify = col_sub.add_parser("verify", help="per device: contiguous seq and unbroken chain, or the gaps")
    verify.add_argument("--data", required=True, type=Path, metavar="DIR")
    verify.add_argument("--json", action="store_true", help="one JSON object with every device's report")
    verify.set_defaults(func=cmd_collector_verify)

    export = sub.add_parser("export", help="decrypt, dedupe, order, validate and write stored bundles")
    export.add_argument("--data", required=True, type=Path, metavar="DIR", help="a collector data directory")
    export.add_argument("--key", required=True, type=Path, metavar="KEYFILE", action="append",
                        help="org private key file (repeat for rotated keys)")
    export.add_argument("--out", required=True, type=Path, metavar="DIR", help="a new or empty directory")
    export.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    export.add_argument("--json", action="store_true", help="print the summary as JSON")
    export.set_defaults(func=cmd_export)


def _open_store(data: Path, create: bool):
    from collector.storage import BundleStore

    if not create and not (data / "index.sqlite3").is_file():
        raise UsageError(f"{data} is not a collector data directory (no index.sqlite3); "
                         f"pass the --data DIR that 'tracecap collector serve' uses")
    try:
        return BundleStore(data)
    except OSError as exc:
        raise UsageError(f"cannot use collector data directory {data}: {exc.strerror}; "
                         f"check the path and its permissions") from None
    except RuntimeError as exc:
        raise UsageError(str(exc)) from None


def _private_files(data: Path) -> None:
    """Everything the collector makes is its own alone (umask 077: files 0600, directories 0700);
    the index and the directories of a data directory made before are tightened as well."""
    os.umask(0o077)
    for name in ("", "objects", "tmp", "index.sqlite3", "index.sqlite3-wal", "index.sqlite3-shm"):
        p = data / name
        try:
            st = p.lstat()
            if st.st_uid == os.getuid() and not p.is_symlink() and st.st_mode & 0o077:
                os.chmod(p, 0o700 if p.is_dir() else 0o600)
        except OSError:
            continue


def cmd_collector_serve(args: argparse.Namespace) -> int:
    from collector.server import bind, parse_listen, serve

    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    try:
        max_bytes = parse_size(args.max_bundle_bytes)
    except ValueError as exc:
        raise UsageError(f"--max-bundle-bytes: {exc}") from None
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("tracecap.collector")
    _private_files(args.data)
    _open_store(args.data, create=True).close()  # fail early, in one sentence, on a bad --data
    _private_files(args.data)
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise RuntimeFailure(f"cannot listen on {args.listen}: {exc.strerror}; "
                             f"choose another --listen address") from None
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    if not token:
        log.warning("no token configured (--token or $%s): accepting uploads from anyone who can "
                    "reach this address", TOKEN_ENV)
    log.info("tracecap collector listening on http://%s:%d, data in %s, bundles up to %d bytes",
             shown, bound_port, args.data, max_bytes)
    serve(args.data, sock, token, max_bytes)
    return 0


def cmd_collector_verify(args: argparse.Namespace) -> int:
    from collector.verify import format_report, verify_store

    os.umask(0o077)  # the index's WAL files it may create are the collector's alone
    with _open_store(args.data, create=False) as store:
        reports = verify_store(store)
    ok = all(r.ok for r in reports)
    if args.json:
        print(json.dumps({"ok": ok, "devices": [r.to_json() for r in reports]}, indent=2))
    else:
        for r in reports:
            print(format_report(r))
        bad = sum(not r.ok for r in reports)
        if not reports:
            print(f"no bundles in {args.data}")
        else:
            print(f"{len(reports)} devices, {bad} with gaps, chain breaks or damaged objects")
    return 0 if ok else 1


def cmd_export(args: argparse.Namespace) -> int:
    from collector.export import ExportError, export_store
    from schemas.keys import KeyFileError, load_org_private

    try:
        keys = [load_org_private(p) for p in args.key]
    except KeyFileError as exc:
        raise UsageError(str(exc)) from None
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise UsageError(f"--out {args.out} is not an empty directory; name a new or empty one")
    with _open_store(args.data, create=False) as store:
        try:
            summary = export_store(store, keys, args.out, args.format,
                                   progress=sys.stderr if sys.stderr.isatty() else None)
        except ExportError as exc:
            raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        print(summary.describe())
    if summary.unreadable:
        print(f"tracecap: {len(summary.unreadable)} bundles could not be exported; see "
              f"{args.out / 'manifest.json'}", file=sys.stderr)
        return 1
    return 0
