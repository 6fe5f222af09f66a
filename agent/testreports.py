"""Test reports on disk: where runners leave their JUnit XML, and reading it safely.

Takes a directory a test command ran in (and the span it ran), or report paths; gives the
reports written there (`find_reports`: `junit.xml` and the like in the directory, every `.xml`
under the usual report directories of Maven, Gradle and others) and their merged
`testruns.TestReport` (`read_reports`). Shared by the shell source (a captured run's tests) and
`tracecap episodes validate` (a re-run's), so both name tests the same way.

Promises: a report is opened without blocking and without following links, only when it is a
regular file under `REPORT_MAX_BYTES`, and parsed as a stream (`open_report`); one that cannot
be read is skipped (and logged when a log is given), never fatal; the walk stops after `limit`
candidates.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Callable, Iterable

from agent import testruns

REPORT_DIRS = ("target/surefire-reports", "target/failsafe-reports", "build/test-results",
               "reports", "test-results", "test-reports")
REPORT_FILES = ("junit.xml", "report.xml", "test-results.xml", "junit-report.xml")
REPORT_MAX_BYTES = 32 << 20  # larger test reports are not read (pytest's for 10,000 tests: ~3 MiB)


def find_reports(cwd: str, since_ns: int, until_ns: int, *, limit: int = 500) -> list[Path]:
    """JUnit XML files under `cwd`'s usual report places written between the two times."""
    base = Path(cwd)
    candidates: list[Path] = [base / name for name in REPORT_FILES]
    for d in REPORT_DIRS:
        root = base / d
        if root.is_dir():
            for dirpath, _dirs, files in os.walk(root):
                candidates.extend(Path(dirpath) / f for f in files if f.endswith(".xml"))
                if len(candidates) > limit:
                    break
    found = []
    for path in candidates[:limit]:
        try:
            st = path.stat()
        except OSError:
            continue
        if since_ns - 1_000_000_000 <= st.st_mtime_ns <= until_ns + 1_000_000_000:
            found.append(path)
    return found


def pytest_files(cwd: str, levels: int = 8) -> Callable[[str], bool]:
    """Whether a '/'-separated path names a file under `cwd` or one of the `levels` directories
    above it (pytest's rootdir, which its node ids are relative to, may be an ancestor holding
    its configuration). Asked while the report is read, just after the run; answers cached."""
    bases = [Path(cwd), *list(Path(cwd).parents)[:levels]]
    known: dict[str, bool] = {}

    def is_file(rel: str) -> bool:
        if rel not in known:
            known[rel] = any((b / rel).is_file() for b in bases)
        return known[rel]

    return is_file


class _CappedReader:
    """A report file read as a stream, refused once it passes `limit` bytes (it may grow)."""

    def __init__(self, f: Any, limit: int) -> None:
        self.f, self.left = f, limit

    def read(self, n: int = -1) -> bytes:
        want = self.left + 1 if n is None or n < 0 else min(n, self.left + 1)
        data = self.f.read(want)
        self.left -= len(data)
        if self.left < 0:
            raise testruns.ReportError("the report grew past the size limit while it was read")
        return data


def open_report(path: Path, limit: int = REPORT_MAX_BYTES) -> Any:
    """A test report opened for reading as a stream, or ReportError. Never blocks: a FIFO, device
    or socket is refused (opened O_NONBLOCK, then fstat), as are links (O_NOFOLLOW) and files over
    `limit` bytes (a huge sparse file costs nothing to make)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise testruns.ReportError(f"cannot open {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise testruns.ReportError(f"{path} is not a regular file")
        if st.st_size > limit:
            raise testruns.ReportError(f"{path} is larger than {limit} bytes")
        return _CappedReader(os.fdopen(fd, "rb", buffering=1 << 16), limit)
    except BaseException:
        os.close(fd)
        raise


def read_reports(paths: Iterable[Path], cwd: str | None = None, *, pytest: bool | None = None,
                 log: Any = None, max_tests: int = testruns.MAX_TESTS) -> testruns.TestReport | None:
    """The reports merged; `cwd` (where the command ran) resolves pytest node ids, `pytest`
    True says the reports are pytest's (see testruns.parse_junit); at most `max_tests` tests
    are listed."""
    is_file = pytest_files(cwd) if cwd else None
    reports = []
    for path in paths:
        try:
            stream = open_report(path)
            try:
                reports.append(testruns.parse_junit(stream, pytest=pytest, is_file=is_file, max_tests=max_tests))
            finally:
                stream.f.close()
        except (OSError, testruns.ReportError) as exc:
            if log is not None:
                log.info("test report %s not read: %s", path, exc)
            continue
    return testruns.merge_reports(reports, max_tests)
