"""Shell sessions for the tools source: spool file names and S1 records (agent/sources/tools_sessions.py)."""
from __future__ import annotations

import pytest

from agent.sources.tools_sessions import SpoolSessions, interactive_from_records, sids_by_pid


@pytest.mark.parametrize("names, expected", [
    ([], {}),
    (["123-ab12.0.rec", "123-ab12.1.rec", "123-ab12.cmd"], {123: ["123-ab12"]}),
    (["123-ab12.0.rec", "456-zz.0.rec"], {123: ["123-ab12"], 456: ["456-zz"]}),
    (["123-ab12.0.rec", "123-cd34.0.rec"], {123: ["123-ab12", "123-cd34"]}),  # pid reused
    (["123-ab12.4.junit.xml", ".reader.json", "x.rec", "123.0.rec"], {}),
])
def test_sids_by_pid(names, expected):
    assert sids_by_pid(names) == expected


S = "S1\tb\t77-q1\t1\t1700000000.5\t77\t{i}\tbash\t/tmp\tmake\n"


@pytest.mark.parametrize("head, expected", [
    (S.format(i="1"), True),
    (S.format(i="0"), False),
    ("D1\tb\t77-q1\t3\n" + S.format(i="1"), True),
    (S.format(i="1")[:-1], None),  # torn line: not yet a record
    (S.format(i="1").replace("77-q1", "78-q1"), None),  # another session's record
    ("garbage\n", None),
])
def test_interactive_from_records(head, expected):
    assert interactive_from_records(head, "77-q1") is expected


def test_lookup_reads_the_spool_directory(tmp_path):
    (tmp_path / "77-q1.0.rec").write_text(S.format(i="0"))
    (tmp_path / "88-r2.cmd").write_text("make\n")
    look = SpoolSessions(tmp_path)
    assert look(77) == ("77-q1", False)
    assert look(88) == ("88-r2", None)
    assert look(99) == (None, None)
    assert SpoolSessions(tmp_path / "missing")(77) == (None, None)
