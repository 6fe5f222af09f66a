"""The everyday commands: daemon, status, consent, note, log, forget, flush, policy.

Each handler talks to the running daemon over the control socket where the contract needs it, and
works on the user's state directly where the contract says it must also work without the daemon
(opt-in, opt-out, forget, log).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from agent.errors import DaemonNotRunning, UsageError


def _paths():
    from agent.paths import StatePaths

    return StatePaths.from_env()


def _request(op: str, timeout: float = 30.0, **params: Any) -> Any:
    from agent import control

    return control.request(_paths().socket, op, timeout=timeout, **params)


def _duration(text: str) -> float:
    from agent.policy import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("daemon", help="run the agent in the foreground until SIGTERM/SIGINT")
    p.set_defaults(func=cmd_daemon)

    p = sub.add_parser("status", help="what is captured right now, and where it goes")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_status)

    for name, helptext in (("opt-in", "consent to capture (persists)"),
                           ("opt-out", "withdraw consent: capture stops at once (persists)")):
        p = sub.add_parser(name, help=helptext)
        p.set_defaults(func=cmd_consent, op=name)

    p = sub.add_parser("pause", help="stop capturing for DURATION (e.g. 30m), or until resumed")
    p.add_argument("duration", nargs="?", help="90s, 15m, 2h, 1d; omit to pause until resumed")
    p.set_defaults(func=cmd_consent, op="pause")
    p = sub.add_parser("resume", help="end a pause")
    p.set_defaults(func=cmd_consent, op="resume")

    p = sub.add_parser("forget", help="delete captured events of a recent span not yet uploaded")
    p.add_argument("--last", required=True, metavar="DURATION", help="e.g. 15m")
    p.set_defaults(func=cmd_forget)

    p = sub.add_parser("note", help="record a user.note event (task start, intent)")
    p.add_argument("text", nargs="+")
    p.set_defaults(func=cmd_note)

    p = sub.add_parser("log", help="captured (already redacted) events still held locally")
    p.add_argument("--since", metavar="DURATION")
    p.add_argument("--kind", metavar="KIND", help="exact kind, or a prefix ending in '.' (e.g. shell.)")
    p.add_argument("--json", action="store_true", help="one event per line")
    p.set_defaults(func=cmd_log)

    p = sub.add_parser("flush", help="seal pending events and upload every pending bundle now")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS")
    p.set_defaults(func=cmd_flush)

    p = sub.add_parser("policy", help="validate or show the policy")
    psub = p.add_subparsers(dest="policy_cmd", metavar="ACTION", required=True)
    c = psub.add_parser("check", help="validate a policy file (exit 0 valid, 2 invalid)")
    c.add_argument("file")
    c.set_defaults(func=cmd_policy_check)
    g = psub.add_parser("sign", help="write FILE.sig, a detached signature by the org policy signing key")
    g.add_argument("file")
    g.add_argument("--key", required=True, help="policy-signing.key")
    g.set_defaults(func=cmd_policy_sign)
    k = psub.add_parser("keygen", help="create an org policy signing key pair in DIR")
    k.add_argument("--out", required=True, metavar="DIR")
    k.set_defaults(func=cmd_policy_keygen)
    s = psub.add_parser("show", help="print the effective policy")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_policy_show)


# ---------------------------------------------------------------------------- daemon / status
def cmd_daemon(args: argparse.Namespace) -> int:
    from agent.daemon import run_daemon

    return run_daemon()


def cmd_status(args: argparse.Namespace) -> int:
    st = _request("status")
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
    else:
        print(render_status(st))
    return 0


def _ago(ns: int | None) -> str:
    if not ns:
        return "never"
    secs = max(0, time.time() - ns / 1e9)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs / size:.0f}{unit} ago"
    return f"{secs:.0f}s ago"


def _size(n: int | None) -> str:
    n = n or 0
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def pause_line(until: str | None) -> str:
    """`paused until 2026-…`, or `paused until resumed` (describe_pause already says "until")."""
    if not until:
        return "paused"
    return f"paused {until}" if until == "until resumed" else f"paused until {until}"


def render_status(st: dict[str, Any]) -> str:
    lines = []
    if st["capturing"]:
        lines.append(f"tracecap {st['version']}: RECORDING ({st['consent']})")
    else:
        lines.append(f"tracecap {st['version']}: not recording: {st['reason']}")
    if st.get("paused_until"):
        lines.append("  " + pause_line(st["paused_until"]))
    lines.append("sources:")
    for name, state in st["sources"].items():
        lines.append(f"  {name:<7} {state}")
    lines.append(f"roots:   {', '.join(st['roots'])}")
    lines.append(f"content: {st['content']}")
    j = st["journal"]
    held = f"seq {j['first_seq']}..{j['durable_seq']}" if j.get("first_seq") else "nothing"
    lines.append(f"journal: {held} held locally, {_size(j['bytes'])}"
                 + (f", {j['lost_at_start']} record{'s' if j['lost_at_start'] != 1 else ''} found lost"
                    f" at start (agent.gap in tracecap log)" if j.get("lost_at_start") else "")
                 + (f", ERROR {j['error']}" if j.get("error") else ""))
    ob = st.get("outbox") or {}
    if ob:
        lines.append(f"outbox:  {ob.get('bundles', 0)} bundles, {_size(ob.get('bytes'))}"
                     + (f", {ob['quarantined']} quarantined" if ob.get("quarantined") else ""))
    up = st.get("upload") or {}
    if up:
        lines.append(f"upload:  {up.get('url')}; last success {_ago(up.get('last_success_ns'))}"
                     + (f"; last error: {up['last_error']}" if up.get("last_error") else ""))
        fl = up.get("in_flight")
        if fl:
            age = (time.time_ns() - fl["since_ns"]) / 1e9
            left = max(0.0, (fl["deadline_ns"] - time.time_ns()) / 1e9)
            lines.append(f"         uploading {fl['bundle']} for {age:.0f}s"
                         + (f" (stalled? given up in {left:.0f}s)" if age >= 5 else ""))
    pol = st["policy"]
    lines.append(f"policy:  {pol['origin']} ({pol['digest'][:12]})"
                 + (f"; REFUSED: {pol['error']}" if pol.get("error") else ""))
    lines.append(f"logs:    {st['logs']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- consent
def cmd_consent(args: argparse.Namespace) -> int:
    seconds = _duration(args.duration) if getattr(args, "duration", None) else None
    try:
        st = _request(args.op, seconds=seconds)
    except DaemonNotRunning:
        if args.op in ("pause", "resume"):
            raise DaemonNotRunning(f"the tracecap daemon is not running, so nothing is being captured; "
                                   f"`tracecap {args.op}` needs it (start it with `tracecap daemon`)") from None
        # Consent must be changeable without the daemon: write the user's choice directly.
        from agent import consent
        from agent.policy import load_effective_policy

        policy = load_effective_policy()
        consent.change(_paths().ensure().consent_file, policy.get("consent.mode"), args.op)
        dec = consent.decide(policy.get("consent.mode"), consent.ConsentFile.load(_paths().consent_file),
                             time.time_ns())
        print(f"{args.op}: saved; capture will be {'on' if dec.capturing else 'off'} when the daemon runs")
        return 0
    if args.op == "opt-in":
        print("opted in: capture is " + ("on" if st["capturing"] else f"off ({st['reason']})"))
    elif args.op == "opt-out":
        print("opted out: capture is off; nothing more is recorded until you opt in again")
    elif args.op == "pause":
        print(pause_line(st.get("paused_until")))
    else:
        print("resumed: capture is " + ("on" if st["capturing"] else f"off ({st['reason']})"))
    return 0


# ---------------------------------------------------------------------------- note / log / forget / flush
def cmd_note(args: argparse.Namespace) -> int:
    res = _request("note", text=" ".join(args.text))
    print(f"noted (seq {res['seq']})")
    return 0


def _kind_matches(kind: str, want: str | None) -> bool:
    if not want:
        return True
    return kind.startswith(want) if want.endswith(".") else kind == want


def cmd_log(args: argparse.Namespace) -> int:
    from agent.journal import read_segments

    paths = _paths()
    try:
        limit = _request("durable", timeout=5)["durable_seq"]
    except DaemonNotRunning:
        limit = None  # no writer: every valid record on disk is durable
    since_ns = time.time_ns() - int(_duration(args.since) * 1e9) if args.since else None
    out = sys.stdout
    for ev in read_segments(paths.spool, 1, limit):
        if since_ns is not None and ev.ts < since_ns:
            continue
        if not _kind_matches(ev.kind, args.kind):
            continue
        if args.json:
            out.write(json.dumps(ev.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n")
        else:
            out.write(render_event(ev.to_dict()) + "\n")
    out.flush()
    return 0


def render_event(e: dict[str, Any]) -> str:
    t = time.strftime("%H:%M:%S", time.localtime(e["ts"] / 1e9))
    d = e["data"]
    summary = {
        "shell.start": lambda: f"$ {d.get('cmd', '')}  [{d.get('cwd', '')}]",
        "shell.end": lambda: f"exit {d.get('exit')} after {d.get('duration_ms')} ms",
        "file.save": lambda: (f"{d.get('op')} {d.get('path')} ({d.get('size')} B)"
                              + (f", chain broken: {d['chain_break']}" if d.get("chain_break") else "")),
        "repo.state": lambda: _render_repo_state(d),
        "test.run": lambda: (f"{d.get('runner')}: exit {d.get('exit')}"
                             + (f", {d.get('passed')} passed, {d.get('failed')} failed"
                                if d.get("passed") is not None else "")),
        "user.note": lambda: d.get("text", ""),
        "git.commit": lambda: f"{str(d.get('sha', ''))[:10]} {d.get('message', '')}".strip(),
        "tool.invocation": lambda: " ".join(d.get("argv") or [d.get("exe", "")]),
    }.get(e["kind"], lambda: json.dumps(d, ensure_ascii=False)[:160])()
    summary = " ".join(str(summary).splitlines())[:200]
    return f"{e['seq']:>8}  {t}  {e['kind']:<16} {summary}"


def _render_repo_state(d: dict[str, Any]) -> str:
    """`~/src/app main @ 1a2b3c4d5e, 2 files changed`: where the repo stands and how dirty."""
    where = f"{d.get('repo')} {d.get('branch') or '(detached)'} @ {str(d.get('head') or 'no commit')[:10]}"
    if d.get("diff_omitted"):
        return f"{where}, uncommitted diff left out: {d['diff_omitted']}"
    files = str(d.get("diff") or "").count("diff --git ")
    return f"{where}, " + (f"{files} file{'s' if files != 1 else ''} changed" if files else "clean")


def cmd_forget(args: argparse.Namespace) -> int:
    seconds = _duration(args.last)
    try:
        res = _request("forget", timeout=120, seconds=seconds)
    except DaemonNotRunning:
        from agent.forget import forget_offline

        res = forget_offline(_paths().ensure(), seconds)
    print(f"forgot {res['count']} events from the last {args.last}"
          + (f" (and re-sealed {res['resealed']} pending bundles)" if res.get("resealed") else ""))
    return 0


def cmd_flush(args: argparse.Namespace) -> int:
    res = _request("flush", timeout=args.timeout + 10, timeout_s=args.timeout)
    if res.get("pending"):
        from agent.errors import RuntimeFailure

        raise RuntimeFailure(f"{res['pending']} bundles still pending: {res.get('reason') or 'upload did not finish'}")
    print(f"flushed: {res.get('uploaded', 0)} bundles uploaded, nothing pending")
    return 0


# ---------------------------------------------------------------------------- policy
def cmd_policy_check(args: argparse.Namespace) -> int:
    from agent.policy import default_policy_path, load_policy_file

    # A draft anywhere is checked for content; the policy in force (the file the daemon reads) is
    # also held to the daemon's ownership and directory rules, so check refuses what it would.
    in_force = os.path.abspath(args.file) == os.path.abspath(default_policy_path())
    pol = load_policy_file(args.file, strict_modes=in_force)
    print(f"{args.file}: valid (digest {pol.digest[:12]})")
    return 0


def cmd_policy_sign(args: argparse.Namespace) -> int:
    import tomllib

    from agent import policy_signing
    from agent.policy import PolicyError, validate_document

    # Validate the content (not the signature, which is what is being made) before vouching for it.
    try:
        validate_document(tomllib.loads(open(args.file, encoding="utf-8").read()), args.file)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"policy file {args.file} cannot be signed: {exc}") from None
    sig = policy_signing.sign(args.file, args.key)
    print(f"wrote {sig}")
    return 0


def cmd_policy_keygen(args: argparse.Namespace) -> int:
    from agent import policy_signing

    priv, pub = policy_signing.generate(args.out)
    print(f"wrote {priv} (keep it offline, mode 0600) and {pub} (install beside the policy as {pub.name})")
    return 0


def cmd_policy_show(args: argparse.Namespace) -> int:
    from agent.policy import load_effective_policy

    pol = load_effective_policy()
    if args.json:
        print(json.dumps({"origin": pol.origin, "digest": pol.digest, "policy": pol.data}, indent=2))
        return 0
    print(f"# effective policy: {pol.origin}")
    print(f"# digest: {pol.digest}")
    print(_to_toml(pol.data))
    return 0


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def _to_toml(data: dict[str, Any]) -> str:
    out = []
    for section, table in data.items():
        out.append(f"[{section}]")
        for k, v in table.items():
            if k == "token" and v:
                v = "(set)"
            out.append(f"{k} = {_toml_value(v)}")
        out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------------------- first run
def first_run(args: argparse.Namespace) -> int:
    """`tracecap` with no arguments: where things stand and the one next step."""
    from agent import consent
    from agent.policy import load_effective_policy

    try:
        st = _request("status", timeout=5)
    except DaemonNotRunning:
        policy = load_effective_policy()
        dec = consent.decide(policy.get("consent.mode"), consent.ConsentFile.load(_paths().consent_file),
                             time.time_ns())
        print("tracecap is installed but the daemon is not running.")
        print(f"  policy:  {policy.origin}")
        print(f"  consent: {dec.state}" + (f" ({dec.reason})" if dec.reason else ""))
        from agent.service import next_step_for_this_host

        print(next_step_for_this_host())
        return 0
    print(render_status(st))
    print()
    if st["consent"] in ("pending", "opted-out") and st["policy"]["consent_mode"] != "disabled":
        print("next step: `tracecap opt-in` to start recording (see what is captured above)")
    elif st["capturing"] and not os.environ.get("TRACECAP_SHELL_SESSION"):
        print('next step: add the shell hook to your rc file: eval "$(tracecap shell-init bash)" '
              "(or zsh, fish)")
    return 0
