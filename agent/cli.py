"""`tracecap`: the command line. Parses arguments, dispatches to the command groups in
`agent/commands/`, and turns every user-facing error into one sentence on stderr with the contract's
exit code (0 ok, 1 failure, 2 bad usage or input, 3 daemon not running). Never a traceback for an
error a user can cause; an unexpected one is logged in full to the state log and summarised.
"""
from __future__ import annotations

import argparse
import importlib
import sys

import agent
from agent.errors import EXIT_FAILURE, EXIT_USAGE, TracecapError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors: exit 2, one line
        self.exit(EXIT_USAGE, f"tracecap: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from agent.commands import COMMAND_MODULES

    parser = _Parser(prog="tracecap", description="Record the coding loop as redacted, encrypted "
                     "trace bundles, with your consent.")
    parser.add_argument("--version", action="version", version=f"tracecap {agent.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # a command group this build does not ship
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        from agent.commands.core import first_run

        func = first_run
    try:
        return int(func(args) or 0)
    except TracecapError as exc:
        print(f"tracecap: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: say so in one line, keep the detail in the log
        _log_crash(exc)
        print(f"tracecap: internal error: {type(exc).__name__}: {exc} (details in the tracecap log)",
              file=sys.stderr)
        return EXIT_FAILURE


def _log_crash(exc: BaseException) -> None:
    import logging
    import traceback

    try:
        from agent.paths import StatePaths

        paths = StatePaths.from_env()
        paths.logs.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(paths.log_file, "a") as f:
            f.write("".join(traceback.format_exception(exc)))
    except OSError:
        logging.getLogger("tracecap").debug("could not write the crash log")


if __name__ == "__main__":
    sys.exit(main())
