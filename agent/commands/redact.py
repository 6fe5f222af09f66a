"""`tracecap redact [--explain]`: stdin to stdout through the effective redaction rules.

Takes text on stdin and the effective policy (admin file or built-in default); gives the redacted
text on stdout, exactly as the daemon would store it, and with `--explain` one line per finding on
stderr: `RULE START-END ACTION REASON` (character offsets of the input; the reason says what the
detector saw: a format, a context key, a tool's flag, what a decoded value held, or personal data).
Promises: the same rules, HMAC key (`hash` pseudonyms match the daemon's), home directory, user
and full names as the daemon; a bad policy or rule ends in exit 2 with one sentence. Bytes that
are not UTF-8 pass through unchanged around the findings.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.errors import UsageError


def register(sub) -> None:
    p = sub.add_parser("redact", help="redact stdin to stdout with the effective policy's rules")
    p.add_argument("--explain", action="store_true",
                   help="list each finding's detector, position, action and reason on stderr")
    p.set_defaults(func=cmd_redact)


def cmd_redact(args: argparse.Namespace) -> int:
    from agent.paths import StatePaths
    from agent.policy import load_effective_policy, load_hmac_key

    policy = load_effective_policy()
    key = load_hmac_key(policy, StatePaths.from_env())
    text = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
    return redact_stream(text, policy.data["redaction"], key, explain=args.explain,
                         out=sys.stdout.buffer, err=sys.stderr)


def redact_stream(text: str, redaction: dict, hmac_key: bytes, *, explain: bool, out, err) -> int:
    """Redact `text` with the [redaction] table `redaction`; write bytes to `out`, findings to `err`."""
    from redaction import Redactor, RuleError
    from redaction.identity import own_names

    try:
        redactor = Redactor.from_policy(redaction, hmac_key=hmac_key, home=str(Path.home()),
                                        username=_username(), full_names=own_names(_username()))
    except RuleError as exc:
        raise UsageError(str(exc)) from None
    result = redactor.redact_text(text)
    out.write(result.text.encode("utf-8", "surrogateescape"))
    out.flush()
    if explain:
        for f in result.findings:
            print(f"{f.rule} {f.start}-{f.end} {f.action} {f.reason}".rstrip(), file=err)
        print(f"{len(result.findings)} finding(s)", file=err)
    return 0


def _username() -> str | None:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers): home-path still applies
        return None
