"""`tracecap episodes mine|validate`: coding tasks from captured work, and their proof.

Takes events (`--events`: export directories, JSON-lines files, `-`) or a file of mined tasks and a
clone; gives one task instance per line in `--out` and a short summary on stdout (on stderr when
`--out -` writes the tasks to stdout). Promises: unreadable input, a bad `--repo` or bad numbers
end in exit 2 with one sentence; `--out` is written whole or not at all (a temporary file renamed
at the end); `validate` exits 1 when some task could not be checked (status "error"), 130 on Ctrl-C
or SIGTERM after removing its worktrees and killing the tests it started. The `episodes` package loads only when a subcommand runs.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import sys
from pathlib import Path
from typing import Iterable

from agent.errors import RuntimeFailure, UsageError

EPISODE_SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "episode.schema.json"


def register(sub) -> None:
    ep = sub.add_parser("episodes", help="mine verified coding tasks from captured events")
    ep_sub = ep.add_subparsers(dest="episodes_command", required=True, metavar="COMMAND")
    mine = ep_sub.add_parser("mine", help="find tasks (failing tests made to pass) in events")
    mine.add_argument("--events", required=True, nargs="+", metavar="PATH",
                      help="a `tracecap export` directory, a JSON-lines file of events, or - for stdin")
    mine.add_argument("--out", required=True, metavar="FILE", help="where to write the tasks (- for stdout)")
    mine.add_argument("--jobs", type=int, default=None, metavar="N",
                      help="devices mined in parallel (default: the number of CPUs, at most 8)")
    mine.add_argument("--json", action="store_true", help="print the summary as JSON")
    mine.set_defaults(func=cmd_mine)

    val = ep_sub.add_parser("validate", help="re-run each task's tests in a fresh worktree of a clone")
    val.add_argument("file", type=Path, metavar="FILE", help="tasks as `episodes mine` wrote them")
    val.add_argument("--repo", required=True, type=Path, metavar="DIR", help="a clone holding the base commits")
    val.add_argument("--runs", type=int, default=2, metavar="N", help="runs per task, to catch flaky tests (default 2)")
    val.add_argument("--test-cmd", default=None, metavar="CMD",
                     help="the pytest command to use instead of the recorded one (test ids are appended)")
    val.add_argument("--timeout", type=float, default=900.0, metavar="SECONDS",
                     help="time limit of one test run (default 900)")
    val.add_argument("--out", required=True, metavar="FILE", help="where to write the checked tasks (- for stdout)")
    val.add_argument("--json", action="store_true", help="print the summary as JSON")
    val.set_defaults(func=cmd_validate)


def _write(out: str, lines: Iterable[str]) -> None:
    if out == "-":
        for line in lines:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
        return
    path = Path(out)
    if path.is_dir():
        raise UsageError(f"--out {out} is a directory; name a file")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for line in lines:
                f.write(line + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise RuntimeFailure(f"cannot write {out}: {exc.strerror}; check the path and its permissions") from None


def _say(args: argparse.Namespace, text: str) -> None:
    print(text, file=sys.stderr if args.out == "-" else sys.stdout)


def cmd_mine(args: argparse.Namespace) -> int:
    from episodes.events import EventsError, plan_devices
    from episodes.mine import instance_line, mine_sources
    from schemas.validate import EventValidator

    if args.events.count("-") > 1:
        raise UsageError("--events names - (standard input) more than once; give it once")
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: give at least 1")
    checker = EventValidator(json.loads(EPISODE_SCHEMA.read_text(encoding="utf-8")))
    instances, skipped, unfinished, events = [], [], 0, 0
    try:
        plan = plan_devices(args.events)
        jobs = min(args.jobs or min(os.cpu_count() or 1, 8), len(plan))
        uses_stdin = any(kind == "stdin" for _, sources in plan for kind, _ in sources)
        if jobs > 1 and not uses_stdin:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(jobs) as pool:
                results = list(pool.map(mine_sources, [d for d, _ in plan], [s for _, s in plan]))
        else:
            results = [mine_sources(device, sources) for device, sources in plan]
    except EventsError as exc:
        raise UsageError(str(exc)) from None
    devices = len(plan)
    for result, read in results:  # in the plan's order: the output does not depend on --jobs
        events += read
        for inst in result.instances:
            errors = checker.errors(inst)
            if errors:  # a bug of ours, never silently shipped: say which field
                raise RuntimeFailure(f"task {inst['instance_id']} does not match schemas/episode.schema.json "
                                     f"({errors[0]}); please report it")
        instances += result.instances
        skipped += result.skipped
        unfinished += result.unfinished
    _write(args.out, (instance_line(i) for i in instances))
    reasons = collections.Counter(s.reason for s in skipped)
    if args.json:
        _say(args, json.dumps({"events": events, "devices": devices, "found": len(instances) + len(skipped),
                               "kept": len(instances), "skipped": len(skipped), "reasons": dict(sorted(reasons.items())),
                               "unfinished": unfinished, "out": args.out,
                               "skipped_spans": [s.to_json() for s in skipped]}, indent=2))
        return 0
    where = "standard output" if args.out == "-" else args.out
    _say(args, f"read {events} events of {devices} device{'s' if devices != 1 else ''}")
    why = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items()))
    found = len(instances) + len(skipped)
    _say(args, f"found {found} episode{'s' if found != 1 else ''}: kept {len(instances)}, skipped {len(skipped)}"
               + (f" ({why})" if why else ""))
    for s in skipped:
        _say(args, f"  skipped {s.repo} seq {s.first_seq}-{s.last_seq}: {s.reason}")
    if unfinished:
        _say(args, f"{unfinished} failing test run{'s' if unfinished != 1 else ''} never followed by a passing one "
                   f"(not episodes)")
    _say(args, f"wrote {len(instances)} task{'s' if len(instances) != 1 else ''} to {where}")
    return 0


REQUIRED = ("instance_id", "base_commit", "base_patch", "patch", "test_patch", "FAIL_TO_PASS", "PASS_TO_PASS", "test_cmd")


def _read_tasks(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file; pass the file `tracecap episodes mine --out` wrote") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path} ({exc}); pass the file `tracecap episodes mine --out` wrote") from None
    tasks = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            inst = json.loads(line)
        except ValueError:
            raise UsageError(f"{path} line {n} is not JSON; pass the file `tracecap episodes mine --out` wrote") from None
        missing = [k for k in REQUIRED if not isinstance(inst, dict) or not isinstance(inst.get(k), str)]
        if missing:
            raise UsageError(f"{path} line {n} is not a task instance (no string `{missing[0]}`); pass the file "
                             f"`tracecap episodes mine --out` wrote")
        tasks.append(inst)
    return tasks


def cmd_validate(args: argparse.Namespace) -> int:
    from episodes.validate import ValidateError, check_repo, validate_instance

    if args.runs < 1:
        raise UsageError(f"--runs {args.runs}: give at least 1")
    if args.timeout <= 0:
        raise UsageError(f"--timeout {args.timeout:g}: give a positive number of seconds")
    tasks = _read_tasks(args.file)
    try:
        check_repo(args.repo)
    except ValidateError as exc:
        raise UsageError(str(exc)) from None
    repo = args.repo.resolve()
    done = []

    def stop(signum, frame):  # SIGTERM cleans up like Ctrl-C: worktrees and test processes go
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        for inst in tasks:
            checked = validate_instance(inst, repo, args.runs, args.test_cmd, args.timeout)
            v = checked["validation"]
            line = f"{checked['instance_id']}: {v['status']}"
            if v["reason"]:
                line += f" ({v['reason']})"
            if v.get("replay"):
                line += f"; replay against {v['replay']['commit'][:10]}: {v['replay']['status']}"
            _say(args, line)
            done.append(checked)
    except KeyboardInterrupt:
        print("tracecap: interrupted; temporary worktrees removed, nothing written", file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    from episodes.mine import instance_line

    _write(args.out, (instance_line(i) for i in done))
    counts = collections.Counter(i["validation"]["status"] for i in done)
    if args.json:
        _say(args, json.dumps({"tasks": len(done), "runs": args.runs, "valid": counts["valid"],
                               "invalid": counts["invalid"], "error": counts["error"], "out": args.out}, indent=2))
    else:
        where = "standard output" if args.out == "-" else args.out
        _say(args, f"validated {len(done)} task{'s' if len(done) != 1 else ''} in {repo} ({args.runs} runs each): {counts['valid']} valid, "
                   f"{counts['invalid']} invalid, {counts['error']} error; wrote {where}")
    return 1 if counts["error"] else 0
