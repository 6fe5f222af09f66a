"""Mining as a pure function over hand-written event streams: where tasks start and end, what is
skipped and why, the instance fields, the trajectory, determinism, and the episode schema."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.commands.episodes import EPISODE_SCHEMA
from episodes.mine import difficulty, instance_line, is_test_path, mine_device, repo_name
from schemas.validate import EventValidator
from tests.episode_trace import Trace, unified

HEAD = "a" * 40
CALC = "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n"
FIXED = CALC.replace("return a - b\n\n\ndef sub", "return a + b\n\n\ndef sub")
TEST = "from calc import add\n\n\ndef test_add():\n    assert add(2, 2) == 4\n"
NEW_TEST = TEST + "\n\ndef test_add_negative():\n    assert add(-1, -1) == -2\n"
FAIL = [("test_calc.py::test_add", "failed"), ("test_calc.py::test_sub", "passed")]
PASS = [("test_calc.py::test_add", "passed"), ("test_calc.py::test_sub", "passed"),
        ("test_calc.py::test_add_negative", "passed")]


def started(**kw) -> Trace:
    t = Trace(**kw)
    t.files = {"calc.py": CALC, "test_calc.py": TEST, "README.md": "# app\nwip\n"}
    t.state(HEAD, unified("# app\n", "# app\nwip\n", "README.md"))
    return t


def loop(t: Trace, note: str | None = "fix add: it subtracts", commit: str | None = "b" * 40, actor="human"):
    if note:
        t.note(note)
    t.cmd("python -m pytest -q", exit=1, tests=FAIL, actor=actor)
    t.save("calc.py", FIXED)
    t.save("test_calc.py", NEW_TEST)
    t.cmd("python -m pytest -q", exit=0, tests=PASS, actor=actor)
    if commit:
        t.cmd("git commit -qam 'fix add'", actor=actor)
        t.commit(commit, "fix add\n\nadd subtracted instead of adding.\n", HEAD)


def test_the_loop_makes_one_instance_with_every_field():
    t = started()
    loop(t)
    r = mine_device("dev1", t.events)
    assert (len(r.instances), r.skipped, r.unfinished) == (1, [], 0)
    inst = r.instances[0]
    assert inst["repo"] == "acme/app" and inst["base_commit"] == HEAD
    assert inst["base_patch"] == ("diff --git a/README.md b/README.md\n--- a/README.md\n+++ b/README.md\n"
                                  "@@ -1,1 +1,2 @@\n # app\n+wip\n")
    assert "-    return a - b\n+    return a + b\n" in inst["patch"] and "test_calc" not in inst["patch"]
    assert "+def test_add_negative():" in inst["test_patch"] and "calc.py b/calc.py" not in inst["test_patch"]
    assert inst["problem_statement"] == "fix add: it subtracts"
    assert inst["hints_text"].startswith("fix add")
    assert json.loads(inst["FAIL_TO_PASS"]) == ["test_calc.py::test_add"]
    assert json.loads(inst["PASS_TO_PASS"]) == ["test_calc.py::test_sub"]
    assert inst["test_cmd"] == "python -m pytest -q" and inst["difficulty"] == "<15 min fix"
    meta = inst["meta"]
    assert meta["closing_commit"] == "b" * 40 and meta["start"] == "note" and meta["actor"] == "human"
    assert (meta["edits"], meta["test_runs"], meta["files"], meta["test_files"]) == (2, 2, ["calc.py"], ["test_calc.py"])
    assert (meta["patch_added"], meta["patch_removed"], meta["extensions"]) == (1, 1, ["py"])
    assert inst["created_at"].endswith("Z") and list(inst)[:3] == ["instance_id", "repo", "base_commit"]
    assert EventValidator(json.loads(EPISODE_SCHEMA.read_text())).errors(inst) == []


def test_trajectory_is_chat_messages_with_tool_calls():
    t = started()
    loop(t)
    traj = mine_device("dev1", t.events).instances[0]["trajectory"]
    assert traj["format"] == "openai-messages"
    assert [tool["function"]["name"] for tool in traj["tools"]] == ["shell", "edit"]
    msgs = traj["messages"]
    assert [m["role"] for m in msgs[:2]] == ["system", "user"] and msgs[1]["content"] == "fix add: it subtracts"
    calls = [(m["tool_calls"][0]["function"]["name"], json.loads(m["tool_calls"][0]["function"]["arguments"]))
             for m in msgs if m.get("tool_calls")]
    assert [name for name, _ in calls] == ["shell", "edit", "edit", "shell", "shell"]
    assert calls[0][1] == {"command": "python -m pytest -q", "cwd": "."}
    assert calls[1][1]["path"] == "calc.py" and "+    return a + b" in calls[1][1]["diff"]
    results = {m["tool_call_id"]: m["content"] for m in msgs if m["role"] == "tool"}
    first = json.loads(results[msgs[2]["tool_calls"][0]["id"]])
    assert first["exit"] == 1 and first["tests"]["failed"] == ["test_calc.py::test_add"]
    assert all(m["name"] == "human" for m in msgs if m["role"] == "assistant")


def test_two_tasks_in_one_session_and_one_unfinished():
    t = started()
    loop(t, note="first", commit="b" * 40)
    t.note("second: sub is fine but check mul")
    t.cmd("python -m pytest -q", exit=1, tests=[("test_calc.py::test_mul", "failed")])
    t.save("calc.py", FIXED + "\n\ndef mul(a, b):\n    return a * b\n")
    t.cmd("python -m pytest -q", exit=0, tests=[("test_calc.py::test_mul", "passed")])
    t.note("third, never finished")
    t.cmd("python -m pytest -q", exit=1, tests=[("test_calc.py::test_div", "failed")])
    r = mine_device("dev1", t.events)
    assert [i["problem_statement"] for i in r.instances] == ["first", "second: sub is fine but check mul"]
    assert r.unfinished == 1
    second = r.instances[1]
    assert second["base_commit"] == "b" * 40 and second["base_patch"] == ""  # the commit took it all
    assert "+def mul(a, b):" in second["patch"] and "-    return a - b" not in second["patch"]
    assert second["meta"]["closing_commit"] is None
    assert second["instance_id"] != r.instances[0]["instance_id"]


def test_no_passing_run_makes_no_episode():
    t = started()
    t.note("try")
    t.cmd("python -m pytest -q", exit=1, tests=FAIL)
    t.save("calc.py", FIXED)
    t.cmd("python -m pytest -q", exit=1, tests=FAIL)
    r = mine_device("dev1", t.events)
    assert (r.instances, r.skipped, r.unfinished) == ([], [], 1)


@pytest.mark.parametrize("inject, reason", [
    (lambda t: t.ev("agent.gap", "agent", {"dropped": 3, "reason": "journal"}), "gap"),
    (lambda t: t.ev("agent.forget", "agent", {"count": 2, "from": 1, "to": 2}), "forget"),
    (lambda t: (t.ev("agent.pause", "agent", {"reason": "user"}), t.ev("agent.resume", "agent", {})), "paused"),
    (lambda t: (t.ev("agent.stop", "agent", {"reason": "signal"}), t.ev("agent.start", "agent", {})), "daemon_stopped"),
    (lambda t: t.ev("agent.start", "agent", {}), "daemon_stopped"),  # a crash writes no stop
    (lambda t: t.state(HEAD, ""), "chain_restarted"),  # a reset: README's change is gone
])
def test_capture_off_inside_the_span_skips_it(inject, reason):
    t = started()
    t.note("fix add")
    t.cmd("python -m pytest -q", exit=1, tests=FAIL)
    inject(t)
    t.save("calc.py", FIXED)
    t.cmd("python -m pytest -q", exit=0, tests=PASS)
    r = mine_device("dev1", t.events)
    assert r.instances == [] and [s.reason for s in r.skipped] == [reason]


@pytest.mark.parametrize("save, reason", [
    (dict(chain_break="binary", no_diff=True), "chain_break:binary"),
    (dict(chain_break="redacted"), "chain_break:redacted"),
    (dict(no_diff=True), "chain_break:no_diff"),
])
def test_a_broken_save_chain_skips_with_its_reason(save, reason):
    t = started()
    t.note("fix add")
    t.cmd("python -m pytest -q", exit=1, tests=FAIL)
    t.save("calc.py", FIXED, **save)
    t.cmd("python -m pytest -q", exit=0, tests=PASS)
    r = mine_device("dev1", t.events)
    assert r.instances == [] and [s.reason for s in r.skipped] == [reason]
    assert (r.skipped[0].repo, r.skipped[0].first_seq) == ("/home/ana/src/app", 2)


def test_a_break_is_healed_by_the_next_repo_state():
    t = started()
    t.save("calc.py", CALC + "# x\n", chain_break="too_large", no_diff=True)
    t.cmd("git checkout -q -- .")
    t.files["calc.py"] = CALC
    t.state(HEAD, unified("# app\n", "# app\nwip\n", "README.md"))
    loop(t, commit=None)
    assert len(mine_device("dev1", t.events).instances) == 1


@pytest.mark.parametrize("case, reason", [
    ("no_state", "no_repo_state"),
    ("omitted", "chain_break:too_large"),
    ("tests_only", "no_change_outside_tests"),
    ("checkout", "head_moved"),
])
def test_other_skips(case, reason):
    t = Trace()
    t.files = {"calc.py": CALC, "test_calc.py": TEST}
    if case == "omitted":
        t.state(HEAD, None, omitted="too_large")
    elif case != "no_state":
        t.state(HEAD, "")
    t.cmd("python -m pytest -q", exit=1, tests=FAIL)
    if case == "tests_only":
        t.save("test_calc.py", TEST.replace("== 4", "== 0"))
    else:
        t.save("calc.py", FIXED)
    if case == "checkout":
        t.ev("git.checkout", "git", {"repo": t.repo, "from": "main", "to": "other"})
        t.state("c" * 40, "")
    t.cmd("python -m pytest -q", exit=0, tests=PASS)
    r = mine_device("dev1", t.events)
    if case == "no_state":  # the repository is known from its saves only
        assert [s.reason for s in r.skipped] == [reason]
    else:
        assert r.instances == [] and [s.reason for s in r.skipped] == [reason]


def test_agent_actor_is_labelled():
    t = started()
    loop(t, actor="agent")
    inst = mine_device("dev1", t.events).instances[0]
    assert inst["meta"]["actor"] == "agent" and inst["meta"]["agent_commands"] == 3
    assert {m["name"] for m in inst["trajectory"]["messages"] if m["role"] == "assistant"} == {"agent"}


def test_without_a_note_the_problem_comes_from_the_commit_then_the_tests():
    t = started()
    loop(t, note=None)
    assert mine_device("d", t.events).instances[0]["meta"]["problem_source"] == "commit"
    t = started()
    loop(t, note=None, commit=None)
    inst = mine_device("d", t.events).instances[0]
    assert inst["meta"]["problem_source"] == "tests" and inst["meta"]["start"] == "repo_state"
    assert "test_calc.py::test_add" in inst["problem_statement"]
    assert "AssertionError: assert 0 == 4" in inst["problem_statement"]


def test_saves_before_the_start_are_the_base_patch_not_the_answer():
    t = started()
    t.save("util.py", "# unrelated tweak\n")
    loop(t, commit=None)
    inst = mine_device("d", t.events).instances[0]
    assert "new file mode 100644\n--- /dev/null\n+++ b/util.py\n@@ -0,0 +1,1 @@\n+# unrelated tweak" in inst["base_patch"]
    assert "unrelated" not in inst["patch"] and inst["meta"]["base_files"] == ["README.md", "util.py"]


def test_a_commit_in_the_middle_is_followed_through():
    t = started()
    t.note("fix add")
    t.cmd("python -m pytest -q", exit=1, tests=FAIL)
    t.save("test_calc.py", NEW_TEST)
    t.save("calc.py", CALC.replace("a - b\n\n", "a + b  # wip\n\n", 1))
    t.commit("d" * 40, "wip", HEAD)
    t.save("calc.py", FIXED, base="head")  # the new HEAD's blob: the file as it stands
    t.cmd("python -m pytest -q", exit=0, tests=PASS)
    inst = mine_device("d", t.events).instances[0]
    assert inst["base_commit"] == HEAD and "+    return a + b\n" in inst["patch"] and "wip" not in inst["patch"]
    assert "+def test_add_negative" in inst["test_patch"]


def test_a_file_first_seen_after_a_commit_in_the_middle_cannot_be_rebuilt():
    t = started()
    t.note("fix add")
    t.cmd("python -m pytest -q", exit=1, tests=FAIL)
    t.save("calc.py", FIXED)
    t.commit("d" * 40, "wip", HEAD)  # it may have changed files no save showed
    t.save("test_calc.py", NEW_TEST, base="head")
    t.cmd("python -m pytest -q", exit=0, tests=PASS)
    assert [s.reason for s in mine_device("d", t.events).skipped] == ["chain_break:unknown_base"]


def test_a_new_note_starts_the_task_over():
    t = started()
    t.note("first try")
    t.cmd("python -m pytest -q", exit=1, tests=FAIL)
    t.note("second try")
    t.cmd("python -m pytest -q", exit=1, tests=FAIL)
    t.save("calc.py", FIXED)
    t.cmd("python -m pytest -q", exit=0, tests=PASS)
    r = mine_device("d", t.events)
    assert [i["problem_statement"] for i in r.instances] == ["second try"] and r.unfinished == 1


def test_a_line_that_exits_0_with_failed_tests_still_fails():
    t = started()
    t.note("fix add")
    t.cmd("cd . && python -m pytest -q; cd .", exit=0, tests=FAIL)
    t.save("calc.py", FIXED)
    t.cmd("cd . && python -m pytest -q; cd .", exit=0, tests=PASS)
    assert len(mine_device("d", t.events).instances) == 1


def test_tests_run_in_a_subdirectory_keep_its_cwd():
    t = started()
    t.note("fix")
    t.cmd("pytest", exit=1, tests=[("test_x.py::test_a", "failed")], cwd=t.repo + "/pkg")
    t.save("pkg/x.py", "A = 1\n")
    t.cmd("pytest", exit=0, tests=[("test_x.py::test_a", "passed")], cwd=t.repo + "/pkg")
    inst = mine_device("d", t.events).instances[0]
    assert inst["meta"]["test_cwd"] == "pkg" and inst["patch"].startswith("diff --git a/pkg/x.py b/pkg/x.py\nnew file")


def test_same_events_same_bytes():
    t = started()
    loop(t)
    a = [instance_line(i) for i in mine_device("d", t.events).instances]
    b = [instance_line(i) for i in mine_device("d", json.loads(json.dumps(t.events))).instances]
    assert a == b and len(a) == 1


@pytest.mark.parametrize("seconds, bucket", [
    (0, "<15 min fix"), (899, "<15 min fix"), (900, "15 min - 1 hour"), (3599, "15 min - 1 hour"),
    (3600, "1-4 hours"), (14399, "1-4 hours"), (14400, ">4 hours"), (10**6, ">4 hours"),
])
def test_difficulty_buckets(seconds, bucket):
    assert difficulty(seconds) == bucket


@pytest.mark.parametrize("path, test", [
    ("tests/test_x.py", True), ("test_x.py", True), ("pkg/x_test.go", True), ("src/a.spec.ts", True),
    ("conftest.py", True), ("src/FooTest.java", True), ("spec/models/user_spec.rb", True),
    ("calc.py", False), ("src/testing_utils.py", False), ("contest.py", False), ("docs/tests.md", False),
])
def test_test_paths(path, test):
    assert is_test_path(path) is test


@pytest.mark.parametrize("remote, path, name", [
    ("git@github.com:acme/app.git", "/x", "acme/app"),
    ("https://github.com/acme/app", "/x", "acme/app"),
    ("https://gitlab.example.com/group/sub/app.git", "/x", "sub/app"),
    ("ssh://git@host:2222/acme/app.git", "/x", "acme/app"),
    (None, "/home/ana/src/app", "/home/ana/src/app"),
])
def test_repo_names(remote, path, name):
    assert repo_name(remote, path) == name


def test_every_sample_event_file_mines_without_error():
    samples = Path(__file__).parent / "samples" / "valid.jsonl"
    events = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
    r = mine_device("sample", events)
    assert r.instances == []  # no repo.state in these older events: nothing to rebuild


def test_a_note_belongs_to_the_repository_worked_in_next():
    t = started()
    t.repo = "/home/ana/src/lib"
    t.state("e" * 40, "")
    t.note("lib: tidy the docs")
    t.cmd("git status")
    t.repo = "/home/ana/src/app"
    loop(t, note=None, commit=None)
    inst = mine_device("d", t.events).instances[0]
    assert inst["meta"]["problem_source"] == "tests" and "tidy" not in json.dumps(inst["trajectory"])


def test_the_closing_command_has_its_exit_code():
    t = started()
    loop(t, commit=None)
    t.ev("shell.start", "shell", {"id": "c9", "cmd": "git commit -qam fix", "cwd": t.repo, "shell": "bash",
                                  "actor": "human"}, session=t.session)
    t.commit("b" * 40, "fix", HEAD)  # the commit lands before its command ends
    t.ev("shell.end", "shell", {"id": "c9", "exit": 0, "duration_ms": 900}, session=t.session)
    msgs = mine_device("d", t.events).instances[0]["trajectory"]["messages"]
    assert json.loads(msgs[-1]["content"]) == {"duration_ms": 900, "exit": 0}


def test_a_new_branch_inside_a_task_keeps_its_chain():
    t = started()
    t.note("fix add")
    t.cmd("python -m pytest -q", exit=1, tests=FAIL)
    t.save("calc.py", FIXED)
    t.save("util.py", "x = 1\n")  # untracked: git diff HEAD leaves it out
    t.state(HEAD, unified("# app\n", "# app\nwip\n", "README.md") + unified(CALC, FIXED, "calc.py"), branch="fix")
    t.save("test_calc.py", NEW_TEST, base="head")
    t.cmd("python -m pytest -q", exit=0, tests=PASS)
    inst = mine_device("d", t.events).instances[0]
    assert "+    return a + b" in inst["patch"] and "+def test_add_negative" in inst["test_patch"]
    assert "b/util.py" in inst["patch"]


@pytest.mark.parametrize("line, skipped", [
    ('{"v":1,"seq":1,"ts":2,"kind":"tool.invocation","source":"tools","session":null,"data":{}}', True),
    ('{"v":1,"seq":1,"ts":2,"kind":"file.save","source":"files","session":null,"data":{}}', False),
    ('{"data":{"kind":"app.focus"},"kind":"file.save","v":1}', False),  # not the envelope's order: parsed
    ('{"v": 1, "seq": 1, "kind": "tool.invocation"}', False),  # not compact: parsed, then dropped
])
def test_lines_of_unwanted_kinds_are_skipped_unparsed(line, skipped):
    from episodes.events import _skippable

    assert _skippable(line, frozenset({"file.save"})) is skipped


def test_reading_keeps_only_the_mined_kinds(tmp_path):
    from episodes.events import plan_devices, read_device
    from episodes.mine import MINED_KINDS

    t = started()
    loop(t)
    t.ev("tool.invocation", "tools", {"exe": "/usr/bin/ls"})
    t.ev("app.focus", "input", {"app": "code"})
    path = tmp_path / "laptop.jsonl"
    path.write_text("".join(json.dumps(e, separators=(",", ":")) + "\n" for e in reversed(t.events)))
    ((device, sources),) = plan_devices([str(path)])
    events, read = read_device(sources, None, MINED_KINDS)
    assert device == "laptop" and read == len(t.events) and len(events) == len(t.events) - 2
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)


def test_a_clean_run_over_the_listing_bound_closes_the_task():
    t = started()
    t.note("fix add")
    t.cmd("python -m pytest -q", exit=1, tests=FAIL)
    t.save("calc.py", FIXED)
    t.cmd("python -m pytest -q", exit=0, tests=[(f"test_big.py::test_{k}", "passed") for k in range(5)])
    t.events[-1]["data"]["tests_truncated"] = True
    inst = mine_device("d", t.events).instances[0]
    assert json.loads(inst["FAIL_TO_PASS"]) == ["test_calc.py::test_add"]


def test_without_note_or_commit_the_task_starts_after_the_last_idle_gap():
    t = started()
    t.save("util.py", "a = 1\n")
    t.cmd("ls")
    t.save("calc.py", CALC + "# later\n", dt=45 * 60)  # back after 45 minutes
    loop(t, note=None, commit=None)
    inst = mine_device("d", t.events).instances[0]
    assert inst["meta"]["start"] == "idle" and inst["meta"]["seq_first"] == 5  # the save after the gap
    assert "b/util.py" in inst["base_patch"] and "# later" not in inst["base_patch"] + inst["patch"]


def test_tasks_without_a_commit_between_them_are_mined_as_each_alone():
    """Spans of one `repo.state` go on from the previous span's walk; each must come out as a
    fresh walk from the state gives it, whatever lies between (a skipped span, a commit)."""
    from episodes import mine, segment

    t = started()
    loop(t, note="first", commit=None)
    t.note("second")
    t.cmd("python -m pytest -q", exit=1, tests=[("test_calc.py::test_mul", "failed")])
    t.save("calc.py", FIXED + "\n\ndef mul(a, b):\n    return a * b\n")
    t.cmd("python -m pytest -q", exit=0, tests=[("test_calc.py::test_mul", "passed")])
    t.note("third, with a gap")
    t.cmd("python -m pytest -q", exit=1, tests=[("test_calc.py::test_div", "failed")])
    t.ev("agent.gap", "agent", {"reason": "overflow"})
    t.save("calc.py", t.files["calc.py"] + "\n\ndef div(a, b):\n    return a / b\n")
    t.cmd("python -m pytest -q", exit=0, tests=[("test_calc.py::test_div", "passed")])
    t.note("fourth, committed halfway")
    t.cmd("python -m pytest -q", exit=1, tests=[("test_calc.py::test_pow", "failed")])
    t.save("test_calc.py", NEW_TEST + "\n\ndef test_pow():\n    assert 2 ** 3 == 8\n")
    t.commit("e" * 40, "wip", HEAD)
    t.save("calc.py", t.files["calc.py"] + "\n\ndef pow(a, b):\n    return a ** b\n")
    t.cmd("python -m pytest -q", exit=0, tests=[("test_calc.py::test_pow", "passed")])
    t.note("fifth")
    t.cmd("python -m pytest -q", exit=1, tests=[("test_calc.py::test_neg", "failed")])
    t.save("calc.py", t.files["calc.py"] + "\n\ndef neg(a):\n    return -a\n")
    t.cmd("python -m pytest -q", exit=0, tests=[("test_calc.py::test_neg", "passed")])
    r = mine_device("d", t.events)
    assert [i["problem_statement"] for i in r.instances] == ["first", "second", "fourth, committed halfway", "fifth"]
    assert [s.reason for s in r.skipped] == ["gap"]
    tl = segment.build_timeline("d", t.events)
    alone = [mine._instance(tl, span) for span in segment.find_spans(tl)[0] if not span.excluded]
    assert [instance_line(i) for i in r.instances] == [instance_line(i) for i in alone]
    assert "+def neg(a):" in r.instances[3]["patch"] and "+def pow" not in r.instances[3]["patch"]


def test_reading_orders_by_seq_and_keeps_the_first_of_a_repeated_seq(tmp_path):
    from episodes.events import read_device

    lines = ['{"v":1,"seq":3,"ts":3,"kind":"user.note","source":"user","session":null,"data":{"text":"c"}}',
             '{"v":1,"seq":1,"ts":1,"kind":"user.note","source":"user","session":null,"data":{"text":"a"}}',
             '{"v":1,"seq":3,"ts":3,"kind":"user.note","source":"user","session":null,"data":{"text":"again"}}',
             '', '{"v":1,"seq":2,"ts":2,"kind":"user.note","source":"user","session":null,"data":NaN}']
    path = tmp_path / "laptop.jsonl"
    path.write_text("\n".join(lines) + "\n")
    events, read = read_device([("jsonl", path)])
    assert read == 4 and [(e["seq"], e["data"].get("text")) for e in events] == [(1, "a"), (2, None), (3, "c")]
