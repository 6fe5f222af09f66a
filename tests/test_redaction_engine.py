"""Engine behaviour: actions, spans, overlaps, windows, fail-closed events, content levels, paths."""
from __future__ import annotations

import hashlib
import hmac

import pytest

from redaction import FAILED_MARKER, Finding, Redactor
from redaction.events import apply_content_level, executable_of
from redaction.paths import DEFAULT_NEVER_CAPTURE, PathRules
from redaction.rules import Rule

KEY = b"k" * 32
GHP = "ghp_R8tk2Lm9QpX4sV7nB1cZ6wY3aE5dF0gH2jK4"


def make(**redaction):
    return Redactor.from_policy(redaction, hmac_key=KEY, home="/home/alice", username="alice")


@pytest.mark.parametrize("action,expected", [
    ("replace", "id=[REDACTED:acme] ok"),
    ("mask", "id=ACME[REDACTED:acme] ok"),
    ("hash", "id=[acme:" + hmac.new(KEY, b"ACME-0123456789abcdef", hashlib.sha256).hexdigest()[:8] + "] ok"),
])
def test_actions(action, expected):
    red = Redactor.from_policy({"rules": [{"name": "acme", "pattern": "ACME-[0-9a-f]{16}", "action": action}]},
                               hmac_key=KEY)
    result = red.redact_text("id=ACME-0123456789abcdef ok")
    assert result.text == expected
    assert result.findings == [Finding("acme", 3, 24, action)]


def test_hash_is_stable_per_key_and_differs_between_keys():
    a1 = make().redact_text("mail bob@corp-mail.com").text
    a2 = make().redact_text("again bob@corp-mail.com").text
    other = Redactor.from_policy({}, hmac_key=b"z" * 32).redact_text("mail bob@corp-mail.com").text
    assert a1.split()[-1] == a2.split()[-1] != other.split()[-1]
    assert "bob" not in a1 + other


def test_group_replacement_keeps_the_rest_and_custom_replacement():
    red = Redactor.from_policy({"rules": [
        {"name": "pin", "pattern": r"pin:(\d{4})", "group": 1, "replacement": "****"}]}, hmac_key=KEY)
    assert red.redact_text("card pin:1234 done").text == "card pin:**** done"
    assert make().redact_text("psql postgres://app:S3cr3t-Pa55@db:5432/x").text == \
        "psql postgres://app:[REDACTED:url-credentials]@db:5432/x"


def test_findings_are_offsets_of_the_input_even_after_non_ascii_text():
    text = "naïve café → token " + GHP + " ✓"
    result = make().redact_text(text)
    [f] = result.findings
    assert text[f.start:f.end] == GHP
    assert result.text == "naïve café → token [REDACTED:github-token] ✓"


def test_overlapping_matches_merge_so_no_part_survives():
    red = Redactor([Rule("a", "abc-[0-9]{6}"), Rule("b", "[0-9]{6}-xyz")], hmac_key=KEY)
    result = red.redact_text("v=abc-123456-xyz;")
    assert result.text == "v=[REDACTED:a];"
    assert result.findings == [Finding("a", 2, 16, "replace")]


def test_home_directory_and_user_name_in_paths():
    out = make().redact_text("cd /home/alice/src/app; ls /mnt/backup/alice/x /home/alicex /home/bob")
    assert out.text == "cd ~/src/app; ls /mnt/backup/[user]/x /home/alicex /home/bob"


def test_a_secret_on_a_window_boundary_is_found():
    red = Redactor.from_policy({"max_scan_bytes": 1}, hmac_key=KEY)  # clamps to the minimum window
    window = red._window
    for offset in (window - 20, window - 40, 2 * (window - 16384) - 10):
        text = "x" * offset + " " + GHP + " " + "y" * 100
        assert GHP not in red.redact_text(text).text


def test_a_long_private_key_split_by_windows_is_removed_whole():
    body = "\n".join(["QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2"] * 300)
    text = "a" * 60000 + "\n-----BEGIN RSA PRIVATE KEY-----\n" + body + "\n-----END RSA PRIVATE KEY-----\n"
    out = Redactor.from_policy({"max_scan_bytes": 65536}, hmac_key=KEY).redact_text(text).text
    assert "QUJDREVG" not in out and out.endswith("-----END RSA PRIVATE KEY-----\n")


def test_event_walks_every_string_and_keeps_other_values():
    data = {"cmd": f"export T={GHP}", "cwd": "/home/alice/src", "exit": 0, "ok": True, "t": 1.5,
            "argv": ["curl", "-u", "admin:Pa55w0rd!x", "https://h"], "nested": {"x": [{"y": GHP}]}, "n": None}
    out = make().redact_event("shell.start", data)
    assert out == {"cmd": "export T=[REDACTED:github-token]", "cwd": "~/src", "exit": 0, "ok": True, "t": 1.5,
                   "argv": ["curl", "-u", "admin:[REDACTED:curl-user]", "https://h"],
                   "nested": {"x": [{"y": "[REDACTED:github-token]"}]}, "n": None}
    assert data["cmd"].endswith(GHP)  # the input is not modified


@pytest.mark.parametrize("argv,expected", [
    (["mysql", "--password=Sup3r-S3cret", "db"], ["mysql", "--password=[REDACTED:password-flag]", "db"]),
    (["vault", "login", "--token", "s.Xk2Lm9Pq4Rt6", "-x"], ["vault", "login", "--token", "[REDACTED:password-flag]", "-x"]),
    (["sshpass", "-p", "n0tS0s3cret", "ssh", "h"], ["sshpass", "-p", "[REDACTED:short-password-flag]", "ssh", "h"]),
    (["ls", "-la", "/tmp"], ["ls", "-la", "/tmp"]),
])
def test_argv_is_redacted_as_one_command_line(argv, expected):
    assert make().redact_event("tool.invocation", {"argv": argv})["argv"] == expected


def test_drop_event_rule_drops_the_whole_event_and_counts_it():
    red = Redactor.from_policy({"rules": [{"name": "nda", "pattern": "PROJECT-ORCHID", "action": "drop-event"}]},
                               hmac_key=KEY)
    assert red.redact_event("user.note", {"text": "working on PROJECT-ORCHID"}) is None
    assert red.redact_event("user.note", {"text": "working on other things"}) == {"text": "working on other things"}
    assert red.stats.snapshot()["dropped_events"] == 1


class _BrokenRedactor(Redactor):
    """An engine whose scanner fails, standing for any internal error."""

    def _scan(self, text):
        raise RuntimeError("scanner failure")


def test_internal_errors_fail_closed_with_a_marker_and_a_count():
    red = _BrokenRedactor.from_policy({}, hmac_key=KEY)
    out = red.redact_event("shell.start", {"cmd": f"echo {GHP}", "exit": 0})
    assert out == {"cmd": FAILED_MARKER, "exit": 0}
    assert red.stats.snapshot()["failures"] == 1


def test_values_of_unexpected_type_never_pass_raw():
    red = make()
    out = red.redact_event("user.note", {"text": b"raw bytes " + GHP.encode(), "obj": object()})
    assert out == {"text": FAILED_MARKER, "obj": FAILED_MARKER}
    assert red.stats.snapshot()["failures"] == 2


def test_stats_count_findings_per_rule():
    red = make()
    red.redact_text(f"{GHP} {GHP} bob@corp-mail.com")
    assert red.stats.snapshot()["findings"] == {"github-token": 2, "email": 1}


@pytest.mark.parametrize("kind,data,expected", [
    ("file.save", {"repo": "/r", "path": "a.py", "op": "modify", "size": 3, "diff": "+x"},
     {"repo": "/r", "path": "a.py", "op": "modify", "size": 3}),
    ("shell.start", {"id": "1", "cmd": "FOO=1 git push --force origin main", "cwd": "/r", "shell": "bash", "actor": "human"},
     {"id": "1", "cmd": "git", "cwd": "/r", "shell": "bash", "actor": "human"}),
    ("test.run", {"runner": "pytest", "cmd": "pytest -k secret", "exit": 1, "duration_ms": 5, "failed": 1,
                  "failures": [{"name": "test_a", "message": "assert 'x' == 'y'"}]},
     {"runner": "pytest", "cmd": "pytest", "exit": 1, "duration_ms": 5, "failed": 1, "failures": [{"name": "test_a"}]}),
    ("tool.invocation", {"exe": "/usr/bin/ssh", "argv": ["ssh", "host", "ls"], "pid": 3},
     {"exe": "/usr/bin/ssh", "argv": ["ssh"], "pid": 3}),
    ("git.commit", {"repo": "/r", "sha": "abc", "message": "fix secret leak"}, {"repo": "/r", "sha": "abc"}),
    ("app.focus", {"app": "firefox", "title": "Inbox (3)"}, {"app": "firefox"}),
    ("user.note", {"text": "starting the parser task"}, {"text": "starting the parser task"}),
    ("shell.end", {"id": "1", "exit": 0, "duration_ms": 10}, {"id": "1", "exit": 0, "duration_ms": 10}),
    ("custom.kind", {"path": "x", "stdout": "hello", "count": 2}, {"path": "x", "count": 2}),
])
def test_metadata_content_level_per_kind(kind, data, expected):
    assert apply_content_level(kind, data) == expected
    assert make(content="metadata").redact_event(kind, data) == expected


@pytest.mark.parametrize("cmd,exe", [("git status", "git"), ("A=1 B_2=x make -j4", "make"), ("", ""),
                                     ("  ls", "ls"), ("./run.sh --x=1", "./run.sh")])
def test_executable_of(cmd, exe):
    assert executable_of(cmd) == exe


@pytest.mark.parametrize("path,allowed", [
    (".env", False), ("app/.env.local", False), ("/home/a/proj/.env", False), ("certs/server.pem", False),
    ("k/tls.key", False), ("/home/a/.ssh/id_rsa", False), ("id_rsa.pub", False), ("deploy/secrets/db.yaml", False),
    ("/home/a/.aws/credentials", False), ("vault.kdbx", False), ("src/env.py", True), ("src/keys.py", True),
    ("docs/secrets.md", True), ("src/app/main.py", True), ("monkey.txt", True), ("README.md", True),
])
def test_default_never_capture_globs(path, allowed):
    assert PathRules(DEFAULT_NEVER_CAPTURE).content_allowed(path) is allowed
    assert make().content_allowed(path) is allowed


def test_never_capture_file_save_keeps_metadata_only():
    out = make().redact_event("file.save", {"repo": "/r", "path": "config/.env", "op": "modify", "size": 9,
                                            "diff": "+DB_PASSWORD=x"})
    assert out == {"repo": "/r", "path": "config/.env", "op": "modify", "size": 9}


def test_admin_never_capture_list_replaces_the_defaults():
    red = make(never_capture=["**/private/**", "*.sqlite"])
    assert not red.content_allowed("a/private/b.txt") and not red.content_allowed("/x/db.sqlite")
    assert red.content_allowed(".env")


def test_policy_sizes_and_an_empty_key():
    assert make(max_scan_bytes="256KiB")._window == 256 * 1024
    with pytest.raises(ValueError):
        Redactor.from_policy({}, hmac_key=b"")
