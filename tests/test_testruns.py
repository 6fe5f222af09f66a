"""The test-runner table runs its own examples; JUnit parsing on real-shaped reports."""
from __future__ import annotations

import pytest

from agent import testruns
from agent.testruns import RUNNERS, ReportError, merge_reports, parse_junit, recognise_runner

POSITIVE = [(r.name, ex) for r in RUNNERS for ex in r.examples]
NEGATIVE = [(r.name, ex) for r in RUNNERS for ex in r.counterexamples]


@pytest.mark.parametrize("runner,cmd", POSITIVE)
def test_runner_examples_are_recognised(runner, cmd):
    assert recognise_runner(cmd) == runner


@pytest.mark.parametrize("runner,cmd", NEGATIVE)
def test_runner_counterexamples_are_not(runner, cmd):
    assert recognise_runner(cmd) != runner


def test_every_runner_named_in_the_issue_has_a_row_with_examples():
    names = {r.name for r in RUNNERS}
    assert {"pytest", "tox", "nox", "unittest", "npm", "jest", "vitest", "mocha", "go", "cargo",
            "maven", "gradle", "make", "ctest", "rspec", "rails", "phpunit", "dotnet",
            "bazel"} <= names
    assert all(r.examples and r.counterexamples for r in RUNNERS)


@pytest.mark.parametrize("cmd", ["ls -la", "git commit -m 'add test'", "echo test", "vim test_x.py",
                                 "cat tests/test_a.py", ""])
def test_ordinary_commands_are_not_test_runs(cmd):
    assert recognise_runner(cmd) is None


SUREFIRE = b"""<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="com.acme.CalcTest" tests="4" failures="1" errors="1" skipped="1">
  <testcase name="adds" classname="com.acme.CalcTest" time="0.01"/>
  <testcase name="divides" classname="com.acme.CalcTest">
    <failure message="expected:&lt;2&gt; but was:&lt;3&gt;" type="AssertionError">at Calc.java:10</failure>
  </testcase>
  <testcase name="parses" classname="com.acme.CalcTest"><error message="NPE"/></testcase>
  <testcase name="later" classname="com.acme.CalcTest"><skipped/></testcase>
</testsuite>"""

PYTEST = b"""<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0"
failures="1" skipped="0" tests="2"><testcase classname="test_m" name="test_ok" time="0.001"/>
<testcase classname="test_m" name="test_bad" time="0.001"><failure message="assert 1 == 2">def
test_bad():
&gt;       assert 1 == 2
E       assert 1 == 2</failure></testcase></testsuite></testsuites>"""


def test_surefire_report():
    r = parse_junit(SUREFIRE)
    assert (r.passed, r.failed, r.skipped) == (1, 2, 1)
    assert r.failures[0] == ("com.acme.CalcTest::divides", "expected:<2> but was:<3>\nat Calc.java:10")
    assert r.failures[1] == ("com.acme.CalcTest::parses", "NPE")


def test_pytest_report_and_as_data():
    data = parse_junit(PYTEST).as_data()
    assert data["passed"] == 1 and data["failed"] == 1 and data["skipped"] == 0
    assert data["failures"][0]["name"] == "test_m.py::test_bad"  # named as in `tests`
    assert "assert 1 == 2" in data["failures"][0]["message"]


def test_messages_are_truncated():
    big = b"<testsuite><testcase name='x'><failure message='" + b"m" * 10_000 + b"'/></testcase></testsuite>"
    (name, msg), = parse_junit(big).failures
    assert name == "x" and len(msg) == testruns.MESSAGE_LIMIT


@pytest.mark.parametrize("raw", [b"", b"<testsuite>", b"<html></html>", b"\xff\xfe garbage"])
def test_unreadable_reports_raise_report_error(raw):
    with pytest.raises(ReportError):
        parse_junit(raw)


def test_entity_expansion_is_refused():
    bomb = (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
            b"<testsuite><testcase name='&b;'/></testsuite>")
    with pytest.raises(ReportError):
        parse_junit(bomb)


def test_merge_reports():
    merged = merge_reports([parse_junit(SUREFIRE), parse_junit(PYTEST)])
    assert (merged.passed, merged.failed, merged.skipped) == (2, 3, 1)
    assert len(merged.failures) == 3
    assert merge_reports([]) is None


@pytest.mark.parametrize("classname,name,file,files,expected", [
    # the xunit1 `file` attribute decides
    ("tests.test_x.TestC", "test_a", "tests/test_x.py", (), "tests/test_x.py::TestC::test_a"),
    ("tests.test_x", "test_a[1-a.b]", "tests/test_x.py", (), "tests/test_x.py::test_a[1-a.b]"),
    ("tests.v1.2.test_x.TestC.TestD", "test_a", "tests/v1.2/test_x.py", (),
     "tests/v1.2/test_x.py::TestC::TestD::test_a"),
    # inherited from a class in another file: `file` names that file, the disk decides
    ("tests.test_x.TestC", "test_base", "tests/base.py", ("tests/test_x.py",),
     "tests/test_x.py::TestC::test_base"),
    # no `file` (xunit2): the longest leading part that is a file on disk
    ("tests.unit.test_x.TestC", "test_a[p::q]", None, ("tests/unit/test_x.py", "tests/unit.py"),
     "tests/unit/test_x.py::TestC::test_a[p::q]"),
    ("test_x", "test_a", None, ("test_x.py",), "test_x.py::test_a"),
    # nothing on disk: up to the first capitalised part
    ("pkg.test_x.TestC", "test_a", None, (), "pkg/test_x.py::TestC::test_a"),
    ("pkg.test_x", "test_a", None, (), "pkg/test_x.py::test_a"),
    ("", "test_a", None, (), "test_a"),
])
def test_pytest_node_ids(classname, name, file, files, expected):
    assert testruns.pytest_node_id(classname, name, file, lambda p: p in files) == expected


def test_each_test_is_listed_with_its_outcome():
    r = parse_junit(SUREFIRE)
    assert r.tests == (("com.acme.CalcTest::adds", "passed"), ("com.acme.CalcTest::divides", "failed"),
                       ("com.acme.CalcTest::parses", "error"), ("com.acme.CalcTest::later", "skipped"))
    # a suite named "pytest" gives node ids
    assert parse_junit(PYTEST).as_data()["tests"] == [
        {"name": "test_m.py::test_ok", "outcome": "passed"},
        {"name": "test_m.py::test_bad", "outcome": "failed"}]


def test_tests_are_bounded_and_a_repeated_id_keeps_the_worse_outcome():
    cases = "".join(f"<testcase classname='C' name='t{i}'/>" for i in range(1500))
    r = parse_junit(f"<testsuite>{cases}<testcase classname='C' name='t1'><error/></testcase>"
                    "</testsuite>".encode())
    assert len(r.tests) == testruns.MAX_TESTS and r.tests_truncated
    assert r.tests[1] == ("C::t1", "error")
    assert r.as_data()["tests_truncated"] is True
    assert (r.passed, r.failed) == (1500, 1)  # the counts still count every testcase
    merged = merge_reports([r, parse_junit(SUREFIRE)])
    assert len(merged.tests) == testruns.MAX_TESTS and merged.tests_truncated
    small = parse_junit(SUREFIRE)
    assert not small.tests_truncated and "tests_truncated" not in small.as_data()


def test_a_real_pytest_run_of_more_tests_than_listed_is_flagged(tmp_path):
    import subprocess
    import sys

    from agent.testreports import read_reports

    (tmp_path / "test_many.py").write_text(
        "import pytest\n@pytest.mark.parametrize('i', range(1001))\ndef test_i(i):\n    assert i != 7\n")
    report = tmp_path / "r.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                    "-o", "junit_family=xunit1", "test_many.py"], cwd=tmp_path, capture_output=True,
                   timeout=120)
    r = read_reports([report], str(tmp_path), pytest=True)
    assert (r.passed, r.failed) == (1000, 1)
    assert len(r.tests) == testruns.MAX_TESTS and r.tests_truncated
    assert r.tests[7] == ("test_many.py::test_i[7]", "failed")
    assert r.tests[-1] == ("test_many.py::test_i[999]", "passed")
