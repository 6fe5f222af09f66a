"""Errors a user can cause or meet, each mapped to the contract's exit code.

Raise these from command handlers with one sentence that names the thing and the fix; the CLI
prints `tracecap: <sentence>` to stderr and exits with `exit_code`, never a traceback.
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3


class TracecapError(Exception):
    exit_code = EXIT_FAILURE


class RuntimeFailure(TracecapError):
    """Something went wrong at run time (exit 1)."""
    exit_code = EXIT_FAILURE


class UsageError(TracecapError):
    """Bad usage or invalid input: policy, key, bundle, argument (exit 2)."""
    exit_code = EXIT_USAGE


class DaemonNotRunning(TracecapError):
    """The command needs the daemon and it is not running (exit 3)."""
    exit_code = EXIT_NOT_RUNNING
