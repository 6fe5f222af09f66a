"""The user's own names, to redact wherever they appear (as the home directory is).

Takes the account name; gives `own_names(username) -> list[str]`: the account's full name (the
first field of the passwd GECOS entry) and git's global `user.name`, each kept only when it is a
full name of two words or more (a single word such as `build` would redact ordinary text).
Promise: never raises; a missing passwd entry, git or config gives fewer names, not an error.
Person names other than the user's own need a named-entity model, which tracecap does not ship.
"""
from __future__ import annotations

import subprocess


def own_names(username: str | None) -> list[str]:
    names: list[str] = []
    if username:
        try:
            import pwd

            gecos = pwd.getpwnam(username).pw_gecos.split(",", 1)[0]
            names.append(gecos)
        except (ImportError, KeyError, OSError):
            pass
    try:
        out = subprocess.run(["git", "config", "--global", "--get", "user.name"], capture_output=True,
                             text=True, timeout=2, check=False)
        names.append(out.stdout)
    except (OSError, subprocess.SubprocessError):
        pass
    seen: list[str] = []
    for n in names:
        n = " ".join(n.split())
        if len(n.split()) >= 2 and n.lower() not in (s.lower() for s in seen):
            seen.append(n)
    return seen
