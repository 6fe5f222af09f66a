"""Test runs: which shell commands run tests, and what their JUnit XML reports say.

Takes a command line or the bytes of a JUnit XML report; gives the runner's name
(`recognise_runner`) or a `TestReport` (`parse_junit`, `merge_reports`). Pure: no I/O, no clock
(a report comes as bytes or as a stream the caller opened, and is parsed a testcase at a time, so a
large report does not have to fit in memory as a tree).
Every runner is one row of `RUNNERS` with commands it must match and commands it must not; the
test-suite runs every example, so adding a runner is one row plus its examples. Reports are parsed
with defusedxml (no entities, no external references); a malformed report raises `ReportError`.
Failure messages are cut to `MESSAGE_LIMIT` characters; redaction happens later, in emit.
"""
from __future__ import annotations

import dataclasses
import io
import re
from typing import BinaryIO, Iterable, Iterator

MESSAGE_LIMIT = 2000
MAX_FAILURES = 200


@dataclasses.dataclass(frozen=True)
class TestRunner:
    name: str
    pattern: str  # matched against one command of the line, wrappers and env assignments removed
    examples: tuple[str, ...]
    counterexamples: tuple[str, ...]


RUNNERS: tuple[TestRunner, ...] = (
    TestRunner("pytest", r"(py\.test|pytest(-3)?|python[0-9.]*\s+(-\S+\s+)*-m\s+pytest)(\s|$)",
               ("pytest", "pytest -x tests/", "python -m pytest -k foo", "python3.11 -m pytest",
                "uv run pytest", "poetry run pytest -q", "PYTHONPATH=. pytest", "cd x && pytest"),
               ("pytest-watch", "pip install pytest", "cat pytest.ini", "echo pytest")),
    TestRunner("tox", r"tox(\s|$)", ("tox", "tox -e py311"), ("toxic", "pip install tox")),
    TestRunner("nox", r"nox(\s|$)", ("nox", "nox -s tests"), ("noxfile.py", "vim noxfile.py")),
    TestRunner("unittest", r"python[0-9.]*\s+(-\S+\s+)*-m\s+unittest(\s|$)",
               ("python -m unittest", "python3 -m unittest discover -s tests",
                "/usr/bin/python3 -m unittest", ".venv/bin/python -m unittest"),
               ("python unittest.py", "python -m unittest_helper")),
    TestRunner("npm", r"(npm|yarn|pnpm|bun)\s+(run\s+)?test(\s|$|:)",
               ("npm test", "npm run test", "yarn test", "pnpm test -- --watch=false", "npm run test:unit",
                "bun test"),
               ("npm install", "npm run build", "yarn add test-utils", "npm testing")),
    TestRunner("jest", r"jest(\s|$)", ("jest", "npx jest src/", "jest --ci"), ("jester", "npm i jest")),
    TestRunner("vitest", r"vitest(\s+run)?(\s|$)", ("vitest", "npx vitest run"), ("npm i vitest",)),
    TestRunner("mocha", r"mocha(\s|$)", ("mocha", "npx mocha test/"), ("mochaccino",)),
    TestRunner("go", r"go\s+test(\s|$)", ("go test ./...", "go test -run TestX ./pkg"),
               ("go build ./...", "go testing", "go vet")),
    TestRunner("cargo", r"cargo\s+(\+\S+\s+)?(test|nextest)(\s|$)",
               ("cargo test", "cargo nextest run", "cargo +nightly test -p x"),
               ("cargo build", "cargo testify")),
    TestRunner("maven", r"(mvn|mvnw)\s+(\S+\s+)*(test|verify)(\s|$)",
               ("mvn test", "mvn -q clean verify", "./mvnw test"), ("mvn package", "mvn install")),
    TestRunner("gradle", r"(gradle|gradlew)\s+(\S+\s+)*(test|check)(\s|$)",
               ("gradle test", "./gradlew clean test", "./gradlew check"), ("./gradlew build",)),
    TestRunner("make", r"make\s+(\S+\s+)*(test|tests|check)(\s|$)",
               ("make test", "make -j4 check", "make tests"), ("make", "make build", "make testdata")),
    TestRunner("ctest", r"ctest(\s|$)", ("ctest", "ctest --output-on-failure"), ("ctestify",)),
    TestRunner("rspec", r"rspec(\s|$)", ("rspec", "bundle exec rspec spec/x_spec.rb"), ("rspec-rails-gen",)),
    TestRunner("rails", r"(rails|rake)\s+test(\s|$)", ("rails test", "bin/rails test", "rake test"),
               ("rails server", "rails generate test")),
    TestRunner("phpunit", r"phpunit(\s|$)", ("phpunit", "vendor/bin/phpunit tests"),
               ("composer require phpunit/phpunit",)),
    TestRunner("dotnet", r"dotnet\s+test(\s|$)", ("dotnet test", "dotnet test MyApp.sln"), ("dotnet build",)),
    TestRunner("bazel", r"(bazel|bazelisk)\s+(\S+\s+)*test(\s|$)", ("bazel test //...", "bazelisk test //x:y"),
               ("bazel build //...", "bazel run //x:test")),
)

# Words that run the rest of the line as a command.
_WRAPPERS = re.compile(
    r"^((sudo|time|nice|env|exec|command|noglob|nocorrect|npx|pnpx|bunx|uv\s+run|poetry\s+run|pipenv\s+run|"
    r"hatch\s+run|pdm\s+run|rye\s+run|bundle\s+exec|dotenv|xvfb-run)(\s+-{1,2}[\w-]+(=\S+)?)*\s+"
    r"|[A-Za-z_][A-Za-z0-9_]*=(\"[^\"]*\"|'[^']*'|\S*)\s+)"
)
_LEADING_DIRS = re.compile(r"^[^\s/]*/(?:\S*/)?")
_SEPARATORS = re.compile(r"\s*(?:&&|\|\||;|\||\n|&(?!>))\s*")


def _commands(line: str) -> Iterable[str]:
    """The simple commands of a line, wrappers removed. Quotes are not parsed: a separator inside
    quotes splits too early, which at worst misses a runner after it."""
    for part in _SEPARATORS.split(line):
        part = part.strip().lstrip("({ ").strip()
        while True:
            m = _WRAPPERS.match(part)
            if not m:
                break
            part = part[m.end():]
        if part:
            # /usr/bin/pytest, ./gradlew, vendor/bin/phpunit: the program's name decides.
            yield _LEADING_DIRS.sub("", part, count=1)


def _compiled() -> list[tuple[str, re.Pattern[str]]]:
    return [(r.name, re.compile(r.pattern)) for r in RUNNERS]


def recognise_runner(cmd: str) -> str | None:
    """The runner's name if `cmd` runs tests, else None. The first matching command wins."""
    table = _compiled()
    for part in _commands(cmd):
        for name, pattern in table:
            if pattern.match(part):
                return name
    return None


class ReportError(ValueError):
    """A JUnit XML report that cannot be read."""


@dataclasses.dataclass(frozen=True)
class TestReport:
    passed: int
    failed: int
    skipped: int
    failures: tuple[tuple[str, str], ...]  # (name, message), at most MAX_FAILURES

    def as_data(self) -> dict:
        return {"passed": self.passed, "failed": self.failed, "skipped": self.skipped,
                "failures": [{"name": n, "message": m} for n, m in self.failures]}


def _truncate(text: str, limit: int = MESSAGE_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _testcases(raw: bytes | BinaryIO) -> Iterator:
    """Each complete `<testcase>` element of a report, parsed incrementally; each is dropped from
    the tree once the caller is done with it, so memory stays that of one testcase."""
    from defusedxml import ElementTree
    from defusedxml.common import DefusedXmlException

    source = io.BytesIO(raw) if isinstance(raw, (bytes, bytearray, memoryview)) else raw
    open_elements: list = []
    try:
        for event, elem in ElementTree.iterparse(source, events=("start", "end")):
            if event == "start":
                if not open_elements and _local(elem.tag) not in ("testsuites", "testsuite"):
                    raise ReportError(f"not a JUnit XML report: root element is <{_local(elem.tag)}>")
                open_elements.append(elem)
                continue
            open_elements.pop()
            if _local(elem.tag) == "testcase":
                yield elem
                elem.clear()
                if open_elements:
                    open_elements[-1].remove(elem)
    except ReportError:
        raise
    except (ElementTree.ParseError, DefusedXmlException, ValueError) as exc:
        raise ReportError(f"not a readable JUnit XML report: {exc}") from None


def parse_junit(raw: bytes | BinaryIO) -> TestReport:
    """Counts and failures of a JUnit XML report (`<testsuites>` or `<testsuite>` root), given as
    bytes or as a binary stream."""
    passed = failed = skipped = 0
    failures: list[tuple[str, str]] = []
    for case in _testcases(raw):
        if _local(case.tag) != "testcase":
            continue
        outcome = "passed"
        message = ""
        for child in case:
            kind = _local(child.tag)
            if kind in ("failure", "error"):
                outcome = "failed"
                head = child.get("message") or ""
                body = (child.text or "").strip()
                message = head if not body else (f"{head}\n{body}" if head and head not in body else body)
                break
            if kind == "skipped":
                outcome = "skipped"
        if outcome == "failed":
            failed += 1
            if len(failures) < MAX_FAILURES:
                cls = case.get("classname") or ""
                name = case.get("name") or ""
                failures.append((f"{cls}::{name}" if cls else name, _truncate(message)))
        elif outcome == "skipped":
            skipped += 1
        else:
            passed += 1
    return TestReport(passed, failed, skipped, tuple(failures))


def merge_reports(reports: Iterable[TestReport]) -> TestReport | None:
    """One report for a run that wrote several (one file per test class, per module, per env)."""
    reports = list(reports)
    if not reports:
        return None
    failures = tuple(f for r in reports for f in r.failures)[:MAX_FAILURES]
    return TestReport(sum(r.passed for r in reports), sum(r.failed for r in reports),
                      sum(r.skipped for r in reports), failures)
