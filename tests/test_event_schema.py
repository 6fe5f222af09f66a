"""The event JSON Schema (schemas/event.schema.json) and its validator (schemas/validate.py).

Samples live in tests/samples/: `valid.jsonl` (every contract kind, several each, at content level
"full"), `valid_metadata.jsonl` (the same events cut down by content level "metadata") and
`invalid.jsonl` (one broken event per line with the field path its error must name). Beyond the
samples: the fast path agrees with jsonschema on random mutations, the real redaction keeps
events valid at both content levels, real git reflogs and a real pytest JUnit report go through the
sources' own builders, and a real daemon's `tracecap log --json` validates.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from schemas.events import CONTRACT_KINDS, Event, decode_event, encode_event
from schemas.validate import (EventValidator, UnsupportedSchema, compile_schema, field_path,
                              load_event_schema, reference_validator)

SAMPLES = Path(__file__).resolve().parent / "samples"
REPO = Path(__file__).resolve().parent.parent


def _lines(name: str) -> list[dict]:
    with open(SAMPLES / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


VALID = _lines("valid.jsonl")
VALID_METADATA = _lines("valid_metadata.jsonl")
INVALID = _lines("invalid.jsonl")


@pytest.fixture(scope="module")
def validator() -> EventValidator:
    return EventValidator()


@pytest.fixture(scope="module")
def reference():
    """jsonschema alone, with the same strict integers: what the fast path must agree with."""
    return reference_validator()


def _event(kind: str, data: dict, *, seq: int = 1, source: str = "test", session: str | None = None) -> dict:
    return {"v": 1, "seq": seq, "ts": 1_732_190_400_000_000_000, "kind": kind, "source": source,
            "session": session, "data": data}


# --- the schema itself ---------------------------------------------------------------------------

def test_schema_is_a_valid_draft_2020_12_schema():
    schema = load_event_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_every_contract_kind_has_a_data_schema():
    dispatched = set()
    for entry in load_event_schema()["allOf"]:
        kind = entry["if"]["properties"]["kind"]
        dispatched |= {kind["const"]} if "const" in kind else set(kind["enum"])
    assert set(CONTRACT_KINDS) <= dispatched


def test_input_activity_allows_counts_only():
    data = load_event_schema()["$defs"]["input.activity"]
    assert data["additionalProperties"] is False
    assert set(data["properties"]) == {"start", "end", "keys", "clicks", "scrolls", "moves"}
    assert "counts only" in data["description"].lower()


def test_samples_cover_every_contract_kind_several_times():
    counts = {k: sum(e["kind"] == k for e in VALID) for k in CONTRACT_KINDS}
    assert {k: n for k, n in counts.items() if n < 2} == {}
    metadata_kinds = {e["kind"] for e in VALID_METADATA}
    assert {"file.save", "shell.start", "test.run", "tool.invocation", "git.commit", "git.ref",
            "app.focus"} <= metadata_kinds


# --- samples ----------------------------------------------------------------------------------

@pytest.mark.parametrize("event", VALID + VALID_METADATA,
                         ids=[f"{e['kind']}#{e['seq']}" for e in VALID + VALID_METADATA])
def test_valid_sample_is_accepted(validator, event):
    assert validator.errors(event) == []
    assert validator.is_valid(event)


@pytest.mark.parametrize("case", INVALID, ids=[f"{c['field']}:{c['why']}" for c in INVALID])
def test_invalid_sample_is_rejected_naming_the_field(validator, case):
    event = case["event"]
    assert not validator.is_valid(event)
    errors = validator.errors(event)
    assert any(e.startswith(case["field"] + " ") for e in errors), errors
    for e in errors:  # one sentence each
        assert e.endswith(".") and "\n" not in e


def test_samples_survive_the_msgpack_round_trip(validator):
    for event in VALID:
        again = decode_event(encode_event(Event.from_dict(event))).to_dict()
        assert again == event and validator.is_valid(again)


# --- messages ---------------------------------------------------------------------------------

@pytest.mark.parametrize("parts, expected", [
    ([], "event"),
    (["seq"], "seq"),
    (["data", "op"], "data.op"),
    (["data", "failures", 0, "name"], "data.failures[0].name"),
    (["data", "argv", 12], "data.argv[12]"),
])
def test_field_path(parts, expected):
    assert field_path(parts) == expected


@pytest.mark.parametrize("event, expected", [
    ([1, 2], ["event is a list, expected an object."]),
    (_event("file.save", {"repo": "/r", "path": "a.py", "op": "rename", "size": 3}),
     ["data.op is the string \"rename\", expected one of create, modify, delete, move."]),
    (_event("shell.end", {"id": "1-a:1", "exit": 0}),
     ["data.duration_ms is missing; shell.end data requires id, exit, duration_ms."]),
    (_event("input.activity", {"start": 1, "end": 2, "keys": 3, "clicks": 0, "scrolls": 0, "key": "q"}),
     ["data.key is not allowed: input.activity carries counts and times only (start, end, keys, "
      "clicks, scrolls, moves), never which key or what was typed."]),
    (_event("agent.gap", {"dropped": 2, "reason": "x", "from": 5}),
     ["data.to is missing; agent.gap data has all of from, to or none of them."]),
    ({**_event("user.note", {"text": "hi"}), "ts": 1.5e18, "extra": 1},
     ["extra is not allowed; an event has exactly v, seq, ts, kind, source, session, data.",
      "ts is the number 1.5e+18, expected an integer."]),
    (_event("user.note", {"text": "x" * 500}), []),
    (_event("test.run", {"runner": "pytest", "cmd": "pytest", "exit": 0, "duration_ms": 1,
                         "failures": [{"name": 7}]}),
     ["data.passed is missing; test.run data has all of passed, failed, skipped, failures or none of them.",
      "data.failed is missing; test.run data has all of passed, failed, skipped, failures or none of them.",
      "data.skipped is missing; test.run data has all of passed, failed, skipped, failures or none of them.",
      "data.failures[0].name is 7, expected a string."]),
])
def test_error_sentences(validator, event, expected):
    assert sorted(validator.errors(event)) == sorted(expected)


def test_long_values_are_cut_in_messages(validator):
    [message] = validator.errors(_event("file.save", {"repo": "/r", "path": "a", "op": "x" * 500, "size": 1}))
    assert len(message) < 200 and "…" in message


# --- envelope rules ---------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, ok", [
    ("ts", 0, True),
    ("ts", 2**63 + 5, True),
    ("ts", 1.0, False),  # integers are ints: a float is a source bug, even with no fraction
    ("ts", False, False),
    ("seq", 1, True),
    ("seq", 0, False),
    ("seq", True, False),
    ("v", 1, True),
    ("v", 1.0, False),
    ("v", True, False),
    ("session", None, True),
    ("session", "48211-k3f9q2", True),
    ("session", "", False),
    ("kind", "editor.lsp_diagnostic", True),  # unknown kinds of the right shape pass
    ("kind", "a.b.c", True),
    ("kind", "editor", False),
    ("kind", "editor.", False),
    ("kind", "Editor.save", False),
    ("kind", "1x.save", False),
    ("kind", "file.save2", False),
    ("source", "tests", True),
    ("source", "Tests", False),
])
def test_envelope_fields(validator, reference, field, value, ok):
    event = {**_event("agent.resume", {"reason": "resume"}), field: value}
    assert validator.is_valid(event) is ok
    assert reference.is_valid(event) is ok
    if not ok:
        assert any(e.startswith(field + " ") for e in validator.errors(event))


def test_unknown_kinds_carry_any_data(validator):
    assert validator.is_valid(_event("editor.lsp_diagnostic", {"anything": [1, {"x": None}]}))


def test_sources_may_add_fields_except_to_input_events(validator):
    assert validator.is_valid(_event("file.save", {"repo": "/r", "path": "a", "op": "modify", "size": 1,
                                                   "encoding": "utf-8"}))
    assert not validator.is_valid(_event("input.activity", {"start": 1, "end": 2, "keys": 3, "clicks": 0,
                                                            "scrolls": 0, "window": "firefox"}))


# --- the fast path agrees with jsonschema ------------------------------------------------------

def test_fast_path_agrees_on_every_sample(validator, reference):
    for event in VALID + VALID_METADATA + [c["event"] for c in INVALID]:
        assert validator.is_valid(event) == reference.is_valid(event), event
        assert (validator.errors(event) == []) == validator.is_valid(event)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**64) | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["", "human", "agent", "modify", "file.save", "a" * 40, "0" * 64, "x.y"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["name", "message", "key", "text"]), inner, max_size=2),
    max_leaves=6)
_FIELDS = st.sampled_from(["v", "seq", "ts", "kind", "source", "session", "data", "extra", "repo",
                           "path", "op", "size", "diff", "id", "cmd", "exit", "duration_ms", "actor",
                           "failures", "passed", "failed", "skipped", "argv", "pid", "sha", "parent",
                           "from", "to", "keys", "clicks", "key", "dropped", "reason", "count", "app"])


def _mutate(event: dict, where: int, action: int, field: str, value) -> dict:
    """Remove or set `field` (in the envelope or in data), grow `failures`, or change `kind`."""
    event = json.loads(json.dumps(event))
    data = event.get("data")
    target = data if where == 1 and isinstance(data, dict) else event
    if action == 0:
        target.pop(field, None)
    elif action == 1:
        target[field] = value
    elif action == 2 and isinstance(data, dict) and isinstance(data.get("failures"), list):
        data["failures"].append(value)
    elif isinstance(value, str):
        event["kind"] = value
    return event


@settings(max_examples=600, deadline=None)
@given(base=st.sampled_from(VALID + VALID_METADATA), steps=st.lists(
    st.tuples(st.integers(0, 1), st.integers(0, 3), _FIELDS, _JSON_VALUES), min_size=1, max_size=3))
def test_fast_path_agrees_on_mutations(base, steps):
    validator, reference = _VALIDATORS
    event = base
    for where, action, field, value in steps:
        event = _mutate(event, where, action, field, value)
    assert validator.is_valid(event) == reference.is_valid(event), event
    assert (validator.errors(event) == []) == validator.is_valid(event), event


_VALIDATORS = (EventValidator(), reference_validator())


def test_a_schema_outside_the_compiled_subset_falls_back_to_jsonschema():
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
              "patternProperties": {"^x": {"type": "integer"}}}
    with pytest.raises(UnsupportedSchema):
        compile_schema(schema)
    v = EventValidator(schema)
    assert v.is_valid({"xa": 1}) and not v.is_valid({"xa": "1"})
    assert v.errors({"xa": "1"}) == ["xa is the string \"1\", expected an integer."]


# --- what the real redaction and the real sources produce -------------------------------------

def _redactor(content: str):
    from redaction import Redactor

    return Redactor.from_policy({"content": content}, hmac_key=b"k" * 32, home="/home/ana",
                                username="ana")


@pytest.mark.parametrize("content", ["full", "metadata"])
def test_redacted_samples_stay_valid(validator, content):
    redactor = _redactor(content)
    for event in VALID:
        data = redactor.redact_event(event["kind"], event["data"])
        if data is None:
            continue
        red = {**event, "data": data}
        assert validator.errors(red) == [], (content, event["kind"])


def test_metadata_level_leaves_out_what_the_contract_allows_to_be_absent(validator):
    """diff and title may be absent; a note keeps its text, which the schema requires."""
    redactor = _redactor("metadata")
    for kind, field, kept in [("file.save", "diff", False), ("app.focus", "title", False),
                              ("user.note", "text", True)]:
        event = next(e for e in VALID if e["kind"] == kind and field in e["data"])
        data = redactor.redact_event(kind, event["data"])
        assert (field in data) is kept
        assert validator.errors({**event, "data": data}) == []


def _git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Ana", "GIT_AUTHOR_EMAIL": "ana@example.com",
           "GIT_COMMITTER_NAME": "Ana", "GIT_COMMITTER_EMAIL": "ana@example.com",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, timeout=30)


def test_git_source_builders_on_a_real_reflog(validator, tmp_path):
    reflog = pytest.importorskip("agent.sources.git_reflog")
    repo = tmp_path / "app"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "a.txt").write_text("one\n")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "first")
    _git(repo, "checkout", "-q", "-b", "topic")
    (repo / "a.txt").write_text("two\n")
    _git(repo, "commit", "-q", "-am", "second\n\nwith a body")
    _git(repo, "checkout", "-q", "main")
    _git(repo, "merge", "-q", "--ff-only", "topic")
    _git(repo, "reset", "-q", "--hard", "HEAD~1")
    _git(repo, "branch", "-m", "topic", "feature")
    kinds = set()
    logs = repo / ".git" / "logs"
    for log in [logs / "HEAD", *sorted((logs / "refs").rglob("*"))]:
        if not log.is_file():
            continue
        name = "HEAD" if log.name == "HEAD" else log.relative_to(logs).as_posix()
        entries, _ = reflog.parse_reflog(log.read_bytes())
        for entry in entries:
            found = reflog.classify(name, entry, "main")
            if found is None:
                continue
            kind, data = found
            event = _event(kind, {"repo": str(repo), **data}, source="git")
            assert validator.errors(event) == [], (kind, data)
            kinds.add(kind)
    assert {"git.commit", "git.checkout", "git.ref"} <= kinds


def test_test_run_from_a_real_pytest_report(validator, tmp_path):
    testruns = pytest.importorskip("agent.testruns")
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "def test_ok():\n    assert 1\n"
        "def test_bad():\n    assert 2 + 2 == 5, 'arithmetic'\n"
        "@pytest.mark.skip\ndef test_skipped():\n    pass\n")
    report = tmp_path / "report.xml"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          f"--junitxml={report}", "test_x.py"], cwd=tmp_path, capture_output=True,
                         timeout=60)
    data = {"runner": testruns.recognise_runner("pytest -q") or "pytest", "cmd": "pytest -q",
            "exit": run.returncode, "duration_ms": 420,
            **testruns.parse_junit(report.read_bytes()).as_data()}
    assert (data["passed"], data["failed"], data["skipped"]) == (1, 1, 1)
    for content in ("full", "metadata"):
        red = _redactor(content).redact_event("test.run", data)
        assert validator.errors(_event("test.run", red, source="tests")) == []


def test_shell_source_pairing_gives_valid_events(validator):
    shell = pytest.importorskip("agent.sources.shell")
    lines = [b"S1\tb\t4242-ab12\t1\t1732190400.250000\t4242\t1\tbash\t/home/ana/src\tmake test",
             b"E1\tb\t4242-ab12\t1\t1732190401.750000\t2\t",
             b"S1\tb\t4242-ab12\t2\t\t4242\t1\tfish\t/home/ana\tls -la",
             b"E1\tb\t4242-ab12\t2\t\t0\t15",
             b"D1\tb\t4242-ab12\t7"]
    records = [shell.parse_record(line) for line in lines]
    assert None not in records
    events, _finished, _state = shell.pair_records(shell.PairState(), records, 1_732_190_402_000_000_000)
    assert {k for k, *_ in events} == {"shell.start", "shell.end", "agent.gap"}
    for kind, data, ts, session in events:
        if kind == "shell.start":
            data = {**data, "actor": "human"}  # the source adds it from the process tree
        event = {**_event(kind, data, source="shell", session=session), "ts": ts}
        assert validator.errors(event) == [], (kind, data)


def test_input_activity_builder_gives_counts_only(validator):
    activity = pytest.importorskip("agent.sources.input_activity")
    counts = activity.Counts(keys=12, clicks=2, scrolls=0, moves=40)
    data = activity.activity_data(1_732_190_400_000_000_000, 1_732_190_410_000_000_000, counts)
    assert validator.errors(_event("input.activity", data, source="input")) == []


# --- a real daemon ----------------------------------------------------------------------------

def _tracecap(home: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRACECAP_HOME": str(home), "TRACECAP_POLICY": str(home / "policy.toml")}
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


@pytest.mark.slow
@pytest.mark.parametrize("content", ["full", "metadata"])
def test_a_real_daemons_log_is_schema_valid(validator, tmp_path, content):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "policy.toml").write_text(
        f'[consent]\nmode = "opt-in"\n[capture]\nsources = []\n[redaction]\ncontent = "{content}"\n'
        f'[upload]\nurl = "file://{tmp_path}/collect"\n')
    assert _tracecap(home, "opt-in").returncode == 0
    env = {**os.environ, "TRACECAP_HOME": str(home), "TRACECAP_POLICY": str(home / "policy.toml")}
    daemon = subprocess.Popen([sys.executable, "-m", "agent.cli", "daemon"], env=env, cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while _tracecap(home, "status").returncode != 0:
            assert daemon.poll() is None, daemon.stderr.read().decode()
            assert time.monotonic() < deadline, "the daemon did not come up within 20 s"
            time.sleep(0.2)
        assert _tracecap(home, "note", "start: schema check — «ünïcode»").returncode == 0
        assert _tracecap(home, "pause", "5m").returncode == 0
        assert _tracecap(home, "resume").returncode == 0
        deadline = time.monotonic() + 10
        while True:  # events younger than the journal's reorder window are not in the log yet
            before = _tracecap(home, "log", "--json")
            if '"agent.resume"' in before.stdout or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert _tracecap(home, "forget", "--last", "1d").returncode == 0
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    after = _tracecap(home, "log", "--json")
    events = [json.loads(line) for out in (before.stdout, after.stdout) for line in out.splitlines()]
    kinds = {e["kind"] for e in events}
    assert {"agent.start", "user.note", "agent.pause", "agent.resume", "agent.forget", "agent.stop"} <= kinds
    for event in events:
        assert validator.errors(event) == [], event
    note = next(e for e in events if e["kind"] == "user.note")
    assert note["data"]["text"] == "start: schema check — «ünïcode»"
