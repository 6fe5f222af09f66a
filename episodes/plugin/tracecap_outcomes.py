"""pytest plugin used by `tracecap episodes validate`: each test's node id and outcome, as pytest
names them, appended as JSON lines to the file named by $TRACECAP_OUTCOMES.

Standalone on purpose (no tracecap import): it is loaded with `-p tracecap_outcomes` through
PYTHONPATH into whatever Python runs the project's tests. A failure outside the test call (setup,
teardown) is "error", as is a module that cannot be collected (its id is the file's).
"""
import json
import os


def _write(nodeid, outcome):
    path = os.environ.get("TRACECAP_OUTCOMES")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": nodeid, "outcome": outcome}) + "\n")


def pytest_runtest_logreport(report):
    if report.when == "call":
        _write(report.nodeid, "skipped" if report.skipped else report.outcome)
    elif report.failed:
        _write(report.nodeid, "error")
    elif report.when == "setup" and report.skipped:
        _write(report.nodeid, "skipped")


def pytest_collectreport(report):
    if report.failed:
        _write(report.nodeid, "error")
