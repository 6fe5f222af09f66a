"""Test runs: which shell commands run tests, and what their JUnit XML reports say.

Takes a command line or the bytes of a JUnit XML report; gives the runner's name
(`recognise_runner`) or a `TestReport` (`parse_junit`, `merge_reports`). Pure: no I/O, no clock
(a report comes as bytes or as a stream the caller opened, and is parsed a testcase at a time, so a
large report does not have to fit in memory as a tree).
Every runner is one row of `RUNNERS` with commands it must match and commands it must not; the
test-suite runs every example, so adding a runner is one row plus its examples. Reports are parsed
with defusedxml (no entities, no external references); a malformed report raises `ReportError`.
Failure messages are cut to `MESSAGE_LIMIT` characters; redaction happens later, in emit. Each
test's id and outcome (passed, failed, skipped, error) are listed, at most `MAX_TESTS` of them
(`tests_truncated` past that); a pytest report's ids are pytest's node ids (`pytest_node_id`).
"""
from __future__ import annotations

import dataclasses
import io
import re
from typing import Any, BinaryIO, Callable, Iterable, Iterator

MESSAGE_LIMIT = 2000
MAX_FAILURES = 200
MAX_TESTS = 1000


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
    TestRunner("node", r"node\s+(-\S+\s+)*--test(\s|$)",
               ("node --test", "node --test --test-reporter=junit --test-reporter-destination=junit.xml",
                "node --experimental-strip-types --test test/"),
               ("node test.js", "node --test-reporter=spec app.js", "node app.js --test")),
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


OUTCOME_RANK = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}  # the worse wins a tie


@dataclasses.dataclass(frozen=True)
class TestReport:
    passed: int
    failed: int
    skipped: int
    failures: tuple[tuple[str, str], ...]  # (test id, message), at most MAX_FAILURES
    tests: tuple[tuple[str, str], ...] = ()  # (test id, outcome), at most MAX_TESTS
    tests_truncated: bool = False

    def as_data(self) -> dict:
        data = {"passed": self.passed, "failed": self.failed, "skipped": self.skipped,
                "failures": [{"name": n, "message": m} for n, m in self.failures],
                "tests": [{"name": n, "outcome": o} for n, o in self.tests]}
        if self.tests_truncated:
            data["tests_truncated"] = True
        return data


def _truncate(text: str, limit: int = MESSAGE_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def pytest_node_id(classname: str, name: str, file: str | None = None,
                   is_file: Callable[[str], bool] | None = None) -> str:
    """The pytest node id (`path/to/test_x.py::Class::test[param]`) of a JUnit testcase.

    pytest writes `classname` as the node id's path with "/" made "." and ".py" dropped, then
    its classes, joined by "."; `name` is the function with its parameters. To undo that, in
    order: the testcase's `file` attribute (junit_family xunit1) when its dotted form starts the
    classname (not so for a test inherited from a class in another file); else the longest
    leading part of the classname naming a file that `is_file` finds (a path relative to the
    directory pytest ran in); else the classname up to its first capitalised part (test classes
    are `Test...` by default) taken as the path.
    """
    parts = classname.split(".") if classname else []
    if file:
        path = file.replace("\\", "/")
        dotted = re.sub(r"\.py$", "", path).replace("/", ".")
        if classname == dotted or classname.startswith(dotted + "."):
            rest = classname[len(dotted) + 1:]
            return "::".join([path, *(rest.split(".") if rest else []), name])
    if is_file is not None:
        for i in range(len(parts), 0, -1):
            path = "/".join(parts[:i]) + ".py"
            if is_file(path):
                return "::".join([path, *parts[i:], name])
    if not parts:
        return name
    cut = next((i for i in range(1, len(parts)) if parts[i][:1].isupper()), len(parts))
    return "::".join(["/".join(parts[:cut]) + ".py", *parts[cut:], name])


class _Tests:
    """Test ids in first-seen order with their outcome (a repeated id keeps the worse), at most
    `limit` of them."""

    def __init__(self, limit: int = MAX_TESTS) -> None:
        self.outcomes: dict[str, str] = {}
        self.truncated = False
        self.limit = limit

    def add(self, test_id: str, outcome: str) -> None:
        old = self.outcomes.get(test_id)
        if old is None and len(self.outcomes) >= self.limit:
            self.truncated = True
        elif old is None or OUTCOME_RANK[outcome] > OUTCOME_RANK[old]:
            self.outcomes[test_id] = outcome

    def result(self) -> tuple[tuple[tuple[str, str], ...], bool]:
        return tuple(self.outcomes.items()), self.truncated


def _testcases(raw: bytes | BinaryIO) -> Iterator[tuple[Any, bool]]:
    """Each complete `<testcase>` element of a report, parsed incrementally, with whether a suite
    around it is named "pytest" (pytest's default suite name); each is dropped from the tree once
    the caller is done with it, so memory stays that of one testcase."""
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
                yield elem, any(_local(e.tag) == "testsuite" and e.get("name") == "pytest"
                                for e in open_elements)
                elem.clear()
                if open_elements:
                    open_elements[-1].remove(elem)
    except ReportError:
        raise
    except (ElementTree.ParseError, DefusedXmlException, ValueError) as exc:
        raise ReportError(f"not a readable JUnit XML report: {exc}") from None


def parse_junit(raw: bytes | BinaryIO, *, pytest: bool | None = None,
                is_file: Callable[[str], bool] | None = None, max_tests: int = MAX_TESTS) -> TestReport:
    """Counts, failures and each test's outcome of a JUnit XML report (`<testsuites>` or
    `<testsuite>` root), given as bytes or as a binary stream. Test ids are pytest node ids (see
    `pytest_node_id`; `is_file` is handed on to it) when `pytest` is True, or when it is None and
    the testcase's suite is named "pytest" (pytest's default suite name); else `classname::name`
    as the report has them. At most `max_tests` tests are listed."""
    passed = failed = skipped = 0
    failures: list[tuple[str, str]] = []
    tests = _Tests(max_tests)
    for case, in_pytest_suite in _testcases(raw):
        if _local(case.tag) != "testcase":
            continue
        outcome = "passed"
        message = ""
        for child in case:
            kind = _local(child.tag)
            if kind in ("failure", "error"):
                outcome = "failed" if kind == "failure" else "error"
                head = child.get("message") or ""
                body = (child.text or "").strip()
                message = head if not body else (f"{head}\n{body}" if head and head not in body else body)
                break
            if kind == "skipped":
                outcome = "skipped"
        cls = case.get("classname") or ""
        name = case.get("name") or ""
        if pytest or (pytest is None and in_pytest_suite):
            test_id = pytest_node_id(cls, name, case.get("file"), is_file)
        else:
            test_id = f"{cls}::{name}" if cls else name
        tests.add(test_id, outcome)
        if outcome in ("failed", "error"):
            failed += 1
            if len(failures) < MAX_FAILURES:
                failures.append((test_id, _truncate(message)))
        elif outcome == "skipped":
            skipped += 1
        else:
            passed += 1
    listed, truncated = tests.result()
    return TestReport(passed, failed, skipped, tuple(failures), listed, truncated)


def merge_reports(reports: Iterable[TestReport], max_tests: int = MAX_TESTS) -> TestReport | None:
    """One report for a run that wrote several (one file per test class, per module, per env)."""
    reports = list(reports)
    if not reports:
        return None
    failures = tuple(f for r in reports for f in r.failures)[:MAX_FAILURES]
    tests = _Tests(max_tests)
    for r in reports:
        for test_id, outcome in r.tests:
            tests.add(test_id, outcome)
        tests.truncated = tests.truncated or r.tests_truncated
    listed, truncated = tests.result()
    return TestReport(sum(r.passed for r in reports), sum(r.failed for r in reports),
                      sum(r.skipped for r in reports), failures, listed, truncated)
