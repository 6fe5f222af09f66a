"""`tracecap collector serve|verify` and `tracecap export`: the org's side of the wire.

Takes command-line arguments; gives a running collector, a per-device report of a collector's
store (exit 1 on any missing seq range, chain break or damaged object), or an export of every
stored bundle as ordered, deduplicated, schema-checked JSON lines or Parquet files, or appended
exactly once to an Iceberg table.

The store is `--data DIR` (bundles and SQLite in one directory, the default) or `--blobs URL
--index URL` (`s3://BUCKET/PREFIX` and `postgresql://…`, shared by any number of collectors;
a local directory and `sqlite:///PATH` work too).
Promises: bad arguments, an unusable store URL, an unreadable data directory and a bad or
non-matching org key end in exit 2 with one sentence on stderr; storage that cannot be reached
while verifying or exporting is exit 1; heavy modules (uvicorn, pyarrow, boto3, psycopg,
pyiceberg) load only when used.
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
DEFAULT_TABLE = "traces.events"


def _add_store_args(parser: argparse.ArgumentParser, data_help: str) -> None:
    parser.add_argument("--data", type=Path, metavar="DIR", help=data_help)
    parser.add_argument("--blobs", metavar="URL",
                        help="where bundle files live: s3://BUCKET/PREFIX (with --index)")
    parser.add_argument("--index", metavar="URL",
                        help="the bundle index: postgresql://USER@HOST:PORT/DB (with --blobs)")


def register(sub) -> None:
    col = sub.add_parser("collector", help="the reference collector and its checks")
    col_sub = col.add_subparsers(dest="collector_command", required=True, metavar="COMMAND")
    serve = col_sub.add_parser("serve", help="run the reference collector (HTTP, foreground)")
    _add_store_args(serve, "where bundles and the index live (one directory)")
    serve.add_argument("--listen", default="127.0.0.1:8787", metavar="HOST:PORT",
                       help="address to listen on (default 127.0.0.1:8787; port 0 picks a free one)")
    serve.add_argument("--token", default=None, metavar="TOKEN",
                       help=f"bearer token uploads must send (default: ${TOKEN_ENV})")
    serve.add_argument("--max-bundle-bytes", default="64MiB", metavar="SIZE",
                       help="largest bundle accepted (default 64MiB)")
    serve.set_defaults(func=cmd_collector_serve)

    verify = col_sub.add_parser("verify", help="per device: contiguous seq and unbroken chain, or the gaps")
    _add_store_args(verify, "a collector data directory")
    verify.add_argument("--json", action="store_true", help="one JSON object with every device's report")
    verify.add_argument("--check-objects", action="store_true",
                        help="re-read and re-hash every stored object (always done for --data)")
    verify.set_defaults(func=cmd_collector_verify)

    export = sub.add_parser("export", help="decrypt, dedupe, order, validate and write stored bundles")
    _add_store_args(export, "a collector data directory")
    export.add_argument("--key", required=True, type=Path, metavar="KEYFILE", action="append",
                        help="org private key file (repeat for rotated keys)")
    export.add_argument("--out", type=Path, metavar="DIR", help="a new or empty directory (jsonl, parquet)")
    export.add_argument("--format", choices=("jsonl", "parquet", "iceberg"), default="jsonl")
    export.add_argument("--catalog", metavar="URL",
                        help="iceberg: the SQL catalog's database, sqlite:///PATH or postgresql://…")
    export.add_argument("--warehouse", metavar="URL", help="iceberg: where table files go, file:///DIR or s3://…")
    export.add_argument("--table", default=None, metavar="NS.NAME",
                        help=f"iceberg: the table (default {DEFAULT_TABLE})")
    export.add_argument("--json", action="store_true", help="print the summary as JSON")
    export.set_defaults(func=cmd_export)


def _open_store(args: argparse.Namespace, create: bool):
    """The store named by `--data DIR` or `--blobs URL --index URL`, as a `BundleStore`."""
    from collector.storage import INDEX_NAME, BundleStore, StorageConfigError, open_store

    data, blobs, index = args.data, args.blobs, args.index
    if data is not None and (blobs or index):
        raise UsageError("give either --data DIR or --blobs URL --index URL, not both")
    if data is None:
        if not (blobs and index):
            raise UsageError("name the store: --data DIR, or --blobs s3://BUCKET/PREFIX together with "
                             "--index postgresql://USER@HOST:PORT/DB")
        try:
            return open_store(blobs, index, create=create)
        except StorageConfigError as exc:
            raise UsageError(str(exc)) from None
    if not create and not (data / INDEX_NAME).is_file():
        raise UsageError(f"{data} is not a collector data directory (no {INDEX_NAME}); "
                         f"pass the --data DIR that 'tracecap collector serve' uses")
    try:
        return BundleStore(data)
    except OSError as exc:
        raise UsageError(f"cannot use collector data directory {data}: {exc.strerror}; "
                         f"check the path and its permissions") from None
    except StorageConfigError as exc:
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
    os.umask(0o077)  # what the collector makes is its own alone
    store = _open_store(args, create=True)  # fail early, in one sentence, on a bad store
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    log = logging.getLogger("tracecap.collector")
    if args.data:
        _private_files(args.data)
    try:
        sock = bind(host, port)
    except OSError as exc:
        store.close()
        raise RuntimeFailure(f"cannot listen on {args.listen}: {exc.strerror}; "
                             f"choose another --listen address") from None
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    if not token:
        log.warning("no token configured (--token or $%s): accepting uploads from anyone who can "
                    "reach this address", TOKEN_ENV)
    log.info("tracecap collector listening on http://%s:%d, data in %s, bundles up to %d bytes",
             shown, bound_port, store.describe(), max_bytes)
    serve(store, sock, token, max_bytes)
    return 0


def cmd_collector_verify(args: argparse.Namespace) -> int:
    from collector.storage import Refused, StorageUnavailable
    from collector.verify import format_report, verify_store

    os.umask(0o077)  # the index's WAL files it may create are the collector's alone
    with _open_store(args, create=False) as store:
        try:
            reports = verify_store(store, check_objects=args.check_objects or args.data is not None)
        except (StorageUnavailable, Refused) as exc:
            raise RuntimeFailure(f"cannot verify {store.describe()}: {exc}") from None
        where = store.describe()
    ok = all(r.ok for r in reports)
    if args.json:
        print(json.dumps({"ok": ok, "devices": [r.to_json() for r in reports]}, indent=2))
    else:
        for r in reports:
            print(format_report(r))
        bad = sum(not r.ok for r in reports)
        if not reports:
            print(f"no bundles in {where}")
        else:
            print(f"{len(reports)} devices, {bad} with gaps, chain breaks or damaged objects")
    return 0 if ok else 1


def cmd_export(args: argparse.Namespace) -> int:
    from collector.export import ExportError, export_store
    from collector.storage import Refused, StorageUnavailable
    from schemas.keys import KeyFileError, load_org_private

    iceberg = args.format == "iceberg"
    if iceberg:
        if args.out is not None:
            raise UsageError("--format iceberg appends to a table: give --catalog and --warehouse, not --out")
        if not (args.catalog and args.warehouse):
            raise UsageError("--format iceberg needs --catalog (sqlite:///PATH or postgresql://…) and "
                             "--warehouse (file:///DIR or s3://BUCKET/PREFIX)")
    else:
        if args.out is None:
            raise UsageError(f"--format {args.format} writes files: give --out DIR")
        if args.catalog or args.warehouse or args.table:
            raise UsageError("--catalog, --warehouse and --table go with --format iceberg")
    try:
        keys = [load_org_private(p) for p in args.key]
    except KeyFileError as exc:
        raise UsageError(str(exc)) from None
    if not iceberg and args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise UsageError(f"--out {args.out} is not an empty directory; name a new or empty one")
    progress = sys.stderr if sys.stderr.isatty() else None
    with _open_store(args, create=False) as store:
        try:
            if iceberg:
                from collector.iceberg import IcebergConfigError, IcebergWriteError, export_iceberg

                try:
                    summary = export_iceberg(store, keys, catalog=args.catalog, warehouse=args.warehouse,
                                             table=args.table or DEFAULT_TABLE, progress=progress)
                except IcebergConfigError as exc:
                    raise UsageError(str(exc)) from None
                except IcebergWriteError as exc:
                    raise RuntimeFailure(str(exc)) from None
            else:
                summary = export_store(store, keys, args.out, args.format, progress=progress)
        except ExportError as exc:
            raise UsageError(str(exc)) from None
        except (StorageUnavailable, Refused) as exc:
            raise RuntimeFailure(f"cannot export from {store.describe()}: {exc}; run it again") from None
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        print(summary.describe())
    if summary.unreadable:
        where = "the summary above" if iceberg else args.out / "manifest.json"
        print(f"tracecap: {len(summary.unreadable)} bundles could not be exported; see {where}",
              file=sys.stderr)
        return 1
    return 0
