"""Never-capture path rules: globs naming files whose content must never be captured.

Takes glob strings (`**` any directories, `*` and `?` within one path segment); gives
`PathRules.content_allowed(path) -> bool`. Promise: a pattern without `/` matches the file name in
any directory; one with `/` matches the whole path (absolute or relative, `\\` read as `/`), where a
leading `**/` also matches at the top. Patterns compile with RE2; a path that cannot be checked is
treated as not allowed (fail closed).
"""
from __future__ import annotations

import os

import re2

DEFAULT_NEVER_CAPTURE = ("**/.env*", "**/*.pem", "**/*.key", "**/id_rsa*", "**/secrets/**",
                         "**/.aws/**", "**/.ssh/**", "**/*.kdbx")


def glob_to_regex(glob: str) -> str:
    """RE2 source for one glob, matched against a whole '/'-separated path."""
    g = glob.replace("\\", "/")
    if "/" not in g.rstrip("/"):
        g = "**/" + g
    out = []
    i = 0
    while i < len(g):
        if g.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif g.startswith("**", i):
            out.append(".*")
            i += 2
        elif g[i] == "*":
            out.append("[^/]*")
            i += 1
        elif g[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re2.escape(g[i]))
            i += 1
    return "(?s)^/?" + "".join(out) + "/?$"


class PathRules:
    def __init__(self, globs: list[str] | tuple[str, ...] | None) -> None:
        self._globs = tuple(globs or ())
        self._regexes = [re2.compile(glob_to_regex(g)) for g in self._globs]

    def content_allowed(self, path: str) -> bool:
        if not self._regexes:
            return True
        try:
            p = os.path.expanduser(str(path)).replace("\\", "/")
            return not any(r.search(p) for r in self._regexes)
        except Exception:
            return False
