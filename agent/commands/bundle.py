"""`tracecap keys generate`, `tracecap bundle inspect` and `tracecap bundle decrypt`.

Takes command-line arguments; gives an org key pair on disk, a bundle header as JSON, or a bundle's
events as JSON lines. Promises: any damaged, truncated, reordered, re-keyed or wrongly signed
bundle, and any bad key file, ends in exit 2 with one sentence on stderr; `decrypt` verifies the
whole bundle before it prints the first event, so a bad bundle prints nothing on stdout.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agent.errors import UsageError


def register(sub) -> None:
    keys = sub.add_parser("keys", help="org key pairs")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    gen = keys_sub.add_parser("generate", help="write DIR/org.key (0600) and DIR/org.pub")
    gen.add_argument("--out", required=True, type=Path, metavar="DIR")
    gen.add_argument("--pq", action="store_true", help="hybrid ML-KEM-768+X25519 (post-quantum)")
    gen.set_defaults(func=cmd_keys_generate)

    bundle = sub.add_parser("bundle", help="inspect or decrypt a trace bundle")
    bundle_sub = bundle.add_subparsers(dest="bundle_command", required=True, metavar="COMMAND")
    inspect = bundle_sub.add_parser("inspect", help="print the bundle header as JSON (no key needed)")
    inspect.add_argument("file", type=Path, metavar="FILE")
    inspect.set_defaults(func=cmd_bundle_inspect)
    decrypt = bundle_sub.add_parser("decrypt", help="verify and decrypt; events as JSON lines")
    decrypt.add_argument("file", type=Path, metavar="FILE")
    decrypt.add_argument("--key", required=True, type=Path, metavar="KEYFILE", action="append",
                         help="org private key file (repeat to try several)")
    decrypt.set_defaults(func=cmd_bundle_decrypt)


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from schemas.keys import KeyFileError, generate_org_keypair, write_org_keypair

    priv, pub = generate_org_keypair(pq=args.pq)
    try:
        key_path, pub_path = write_org_keypair(args.out, priv, pub)
    except KeyFileError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {key_path} (private, keep it secret) and {pub_path} ({pub.suite}, key id {pub.key_id})")
    return 0


def _open_file(path: Path):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise UsageError(f"bundle {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not a bundle file; name a bundle file") from None
    except OSError as exc:
        raise UsageError(f"cannot read bundle {path}: {exc.strerror}; check its permissions") from None


def cmd_bundle_inspect(args: argparse.Namespace) -> int:
    from schemas.bundle import BundleError, read_header

    with _open_file(args.file) as f:
        try:
            header = read_header(f)
        except BundleError as exc:
            raise UsageError(f"bundle {args.file} is refused: {exc}") from None
    print(json.dumps(header.to_json(), indent=2))
    return 0


def cmd_bundle_decrypt(args: argparse.Namespace) -> int:
    from schemas.bundle import BundleError, open_bundle
    from schemas.keys import KeyFileError, load_org_private

    try:
        keys = [load_org_private(p) for p in args.key]
    except KeyFileError as exc:
        raise UsageError(str(exc)) from None
    out = sys.stdout
    with _open_file(args.file) as f:
        events = open_bundle(f, keys)
        try:
            # open_bundle raises on the first next() for any damage, before any line is written.
            for ev in events:
                out.write(json.dumps(ev, ensure_ascii=False, separators=(",", ":")))
                out.write("\n")
        except BundleError as exc:
            raise UsageError(f"bundle {args.file} is refused: {exc}") from None
    out.flush()
    return 0
