"""Trajectory: an episode's steps as OpenAI-style chat messages with tool calls.

Takes the events of one span (already in `seq` order and in one repository) and the problem
statement; gives `{"format": "openai-messages", "tools": TOOLS, "messages": [...]}`, the shape
TRL, torchtune and LLaMA-Factory load for tool-calling fine-tuning. Pure and deterministic: call
ids come from `seq`.

- The problem statement is the user's message, after a system message naming the repository.
- A shell command is an assistant message calling `shell` {command, cwd} followed by a `tool`
  message whose content is JSON: exit code, duration and, for a test run, the outcomes (passed,
  failed, skipped, error test ids, capped at OUTCOME_LIMIT each, and the failure messages).
- A save is an assistant message calling `edit` {path, op, diff, from} and a `tool` message "saved".
- A note after the start is an assistant message with the note as its words.
- Each assistant step carries `name`: "human" or "agent", the actor the capture recorded for the
  command; a save takes the actor of the command before it (saves carry none of their own).
"""
from __future__ import annotations

import json
from typing import Any

OUTCOME_LIMIT = 200
MESSAGE_LIMIT = 2000

TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {
        "name": "shell",
        "description": "Run a command line in a shell in the repository. Returns its exit code, its "
                       "duration and, for a test command, each test's outcome.",
        "parameters": {"type": "object", "properties": {
            "command": {"type": "string", "description": "the command line"},
            "cwd": {"type": "string", "description": "directory relative to the repository root"}},
            "required": ["command"]}}},
    {"type": "function", "function": {
        "name": "edit",
        "description": "Save a file of the repository: apply a unified diff to it, or create, "
                       "delete or move it.",
        "parameters": {"type": "object", "properties": {
            "path": {"type": "string", "description": "relative to the repository root"},
            "op": {"type": "string", "enum": ["create", "modify", "delete", "move"]},
            "diff": {"type": "string", "description": "unified diff against the file's previous version"},
            "from": {"type": "string", "description": "for a move: the path it came from"}},
            "required": ["path", "op"]}}},
]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def rel_cwd(repo: str, cwd: str) -> str:
    if cwd == repo:
        return "."
    prefix = repo.rstrip("/") + "/"
    return cwd[len(prefix):] if cwd.startswith(prefix) else cwd


def _outcomes(run: dict) -> dict[str, Any]:
    data = run["data"]
    out: dict[str, Any] = {"runner": data.get("runner")}
    tests = data.get("tests")
    if isinstance(tests, list):
        for outcome in ("passed", "failed", "error", "skipped"):
            ids = [t["name"] for t in tests if isinstance(t, dict) and t.get("outcome") == outcome]
            if ids:
                out[outcome] = ids[:OUTCOME_LIMIT]
    else:
        for k in ("passed", "failed", "skipped"):
            if isinstance(data.get(k), int):
                out[k + "_count"] = data[k]
    failures = data.get("failures")
    if isinstance(failures, list) and failures:
        out["failures"] = [{"name": f.get("name"), "message": (f.get("message") or "")[:MESSAGE_LIMIT]}
                           for f in failures[:OUTCOME_LIMIT] if isinstance(f, dict)]
    return out


def build(repo: str, repo_name: str, problem: str, span_events: list[dict], start_of: dict[int, dict],
          end_of: dict[int, dict], first_note_seq: int | None) -> dict[str, Any]:
    """`start_of`: test.run seq -> its shell.start; `end_of`: shell.start seq -> its shell.end (a
    command that closes the span, such as the commit, ends after it)."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": f"You are a software engineer working in the repository {repo_name}. "
                                      f"Use the shell and edit tools to complete the task."},
        {"role": "user", "content": problem},
    ]
    runs: dict[int, dict] = {}
    for ev in span_events:
        if ev["kind"] == "test.run" and ev["seq"] in start_of:
            runs[start_of[ev["seq"]]["seq"]] = ev
    actor = "human"
    for ev in span_events:
        kind, data, seq = ev["kind"], ev["data"], ev["seq"]
        call_id = f"call_{seq}"
        if kind == "shell.start":
            actor = data.get("actor") if data.get("actor") in ("human", "agent") else actor
            args = {"command": data.get("cmd", ""), "cwd": rel_cwd(repo, data.get("cwd", repo))}
            result: dict[str, Any] = {}
            end = end_of.get(seq)
            result["exit"] = end["data"].get("exit") if end else None
            result["duration_ms"] = end["data"].get("duration_ms") if end else None
            run = runs.get(seq)
            if run is not None:
                result["tests"] = _outcomes(run)
            messages.append(_call(call_id, "shell", args, actor))
            messages.append({"role": "tool", "tool_call_id": call_id, "name": "shell", "content": _dumps(result)})
        elif kind == "file.save":
            args = {"path": data.get("path", ""), "op": data.get("op", "modify")}
            if isinstance(data.get("diff"), str):
                args["diff"] = data["diff"]
            if isinstance(data.get("from"), str):
                args["from"] = data["from"]
            messages.append(_call(call_id, "edit", args, actor))
            messages.append({"role": "tool", "tool_call_id": call_id, "name": "edit", "content": "saved"})
        elif kind == "user.note" and seq != first_note_seq:
            messages.append({"role": "assistant", "content": data.get("text", ""), "name": actor})
    return {"format": "openai-messages", "tools": TOOLS, "messages": messages}


def _call(call_id: str, name: str, args: dict, actor: str) -> dict[str, Any]:
    return {"role": "assistant", "content": "", "name": actor,
            "tool_calls": [{"id": call_id, "type": "function",
                            "function": {"name": name, "arguments": _dumps(args)}}]}
