"""A real second local user for tests of what another user on the machine can do.

`other_user()` creates a throw-away account with useradd (no home, no login shell), yields its
name, uid and gid, and deletes it afterwards. Needs root (CI runs as root); the tests skip otherwise.
Commands run as that user with runuser.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys

import pytest


def _why_not() -> str | None:
    if not hasattr(os, "getuid") or os.getuid() != 0:
        return "needs root to create a second local user (CI runs as root)"
    for tool in ("useradd", "userdel", "runuser"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


@contextlib.contextmanager
def other_user(prefix: str = "tcother"):
    why = _why_not()
    if why:
        pytest.skip(why)
    name = f"{prefix}{os.getpid() % 100000}"
    subprocess.run(["userdel", name], capture_output=True)  # a leftover of a killed run
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True, timeout=30)
    try:
        pw = pwd.getpwnam(name)
        yield name, pw.pw_uid, pw.pw_gid
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=30)


def run_as(user: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True,
                          timeout=kw.pop("timeout", 30), **kw)


def popen_as(user: str, argv: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(["runuser", "-u", user, "--", *argv], **kw)


PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
