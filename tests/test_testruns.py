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
    assert data["failures"][0]["name"] == "test_m::test_bad"
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
