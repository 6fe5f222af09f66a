"""Never-capture path rules: which files' content must never be captured, by name, identity and content.

Takes glob strings (`**` any directories, `*` and `?` within one path segment); gives
`PathRules.content_allowed(path) -> bool` (by name) and `PathRules.file_allowed(path, st, text)`
(by name, by identity and by content). Promises:
- A pattern without `/` matches the file name in any directory; one with `/` matches the whole path
  (absolute or relative, `\\` read as `/`), where a leading `**/` also matches at the top. Patterns
  compile with RE2; a path that cannot be checked is treated as not allowed (fail closed).
- Identity: a file with more than one link is refused when another of its names is a never-capture
  file: one seen before (its device and inode are remembered), or one found beside it, in the
  directories above it (three levels) or in the usual secret places under home (`~/.ssh`, `~/.aws`,
  `~/.netrc`, ...). A hard link `notes.txt` to `.env` is still `.env`.
- Content: a file that is mostly `KEY=value` lines (env style, `export` allowed, comments and blank
  lines aside) with at least one secret-bearing key holding a real value is an env file, whatever
  its name, and is refused.
"""
from __future__ import annotations

import os

import re2

DEFAULT_NEVER_CAPTURE = ("**/.env*", "**/*.env", "**/*.env.*", "**/*.pem", "**/*.key", "**/id_rsa*",
                         "**/id_ed25519*", "**/id_ecdsa*", "**/secrets/**", "**/.aws/**", "**/.ssh/**", "**/*.kdbx",
                         "**/.netrc", "**/.pgpass", "**/*.p12", "**/*.pfx", "**/*.jks", "**/*.keystore",
                         "**/.git-credentials", "**/.pypirc", "**/.docker/config.json", "**/.kube/config")
# Where secrets usually live under home: looked at when a hard-linked file's other names are sought.
_HOME_SECRET_PLACES = (".ssh", ".aws", ".docker", ".kube", ".gnupg", ".config/gcloud")
_HOME_SECRET_FILES = (".netrc", ".pgpass", ".git-credentials", ".pypirc", ".env")
_MAX_ENTRIES = 512  # per directory looked through for another name of a hard-linked file
_ENV_LINE = re2.compile(r"^(?:export\s+)?[A-Za-z_][A-Za-z0-9_.]{0,80}=(.*)$")
_SECRET_KEY = re2.compile(r"(?i)secret|pass|pwd|token|key|credential|cred|salt|seed|auth|private|signature|sig\b"
                          r"|dsn|cookie|session")


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


def looks_like_env_file(text: str) -> bool:
    """Mostly `KEY=value` lines (three quarters of those that are not blank or comments), at least
    two of them, and a secret-bearing key among them with a value that is not a `$VAR` reference."""
    assignments = other = secrets = 0
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "//")):
            continue
        m = _ENV_LINE.match(line)
        if m is None:
            other += 1
            if other > 64 and other > assignments:
                return False
            continue
        assignments += 1
        key = line.split("=", 1)[0]
        value = m.group(1).strip().strip("\"'")
        if value and not value.startswith("$") and _SECRET_KEY.search(key):
            secrets += 1
    return assignments >= 2 and secrets >= 1 and assignments >= 3 * other


class PathRules:
    def __init__(self, globs: list[str] | tuple[str, ...] | None) -> None:
        self._globs = tuple(globs or ())
        self._regexes = [re2.compile(glob_to_regex(g)) for g in self._globs]
        self._denied_ids: set[tuple[int, int]] = set()  # (device, inode) of never-capture files seen

    def content_allowed(self, path: str) -> bool:
        """By name only: False when `path` matches a never-capture glob."""
        if not self._regexes:
            return True
        try:
            p = os.path.expanduser(str(path)).replace("\\", "/")
            return not any(r.search(p) for r in self._regexes)
        except Exception:
            return False

    def file_allowed(self, path: str, st: os.stat_result | None = None, text: str | None = None) -> bool:
        """By name, by identity (`st`: the file's stat) and by content (`text`, when read): False
        when any says this is a never-capture file."""
        try:
            if not self.content_allowed(path):
                if st is not None:
                    self._remember((st.st_dev, st.st_ino))
                return False
            if st is not None and st.st_nlink > 1 and self._another_name_denied(str(path), st):
                return False
            return text is None or not looks_like_env_file(text)
        except Exception:
            return False

    def _remember(self, ident: tuple[int, int]) -> None:
        if len(self._denied_ids) >= 65536:
            self._denied_ids.clear()
        self._denied_ids.add(ident)

    def _another_name_denied(self, path: str, st: os.stat_result) -> bool:
        ident = (st.st_dev, st.st_ino)
        if ident in self._denied_ids:
            return True
        path = os.path.abspath(os.path.expanduser(path))
        places = []
        d = os.path.dirname(path)
        for _ in range(4):
            places.append(d)
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
        home = os.path.expanduser("~")
        places += [os.path.join(home, p) for p in _HOME_SECRET_PLACES]
        candidates = [os.path.join(home, f) for f in _HOME_SECRET_FILES]
        for place in places:
            try:
                with os.scandir(place) as it:
                    for i, entry in enumerate(it):
                        if i >= _MAX_ENTRIES:
                            break
                        if entry.is_file(follow_symlinks=False):
                            candidates.append(entry.path)
            except OSError:
                continue
        for cand in candidates:
            if cand == path or self.content_allowed(cand):
                continue
            try:
                other = os.stat(cand, follow_symlinks=False)
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == ident:
                self._remember(ident)
                return True
        return False
