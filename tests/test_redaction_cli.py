"""`tracecap redact [--explain]` as a real process, with a real policy file."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GHP = "ghp_R8tk2Lm9QpX4sV7nB1cZ6wY3aE5dF0gH2jK4"


def run(tmp_path, stdin: str, *args, policy: str | None = None):
    env = dict(os.environ, TRACECAP_HOME=str(tmp_path / "state"), PYTHONPATH=str(REPO))
    if policy is not None:
        path = tmp_path / "policy.toml"
        path.write_text(policy)
        os.chmod(path, 0o600)
        env["TRACECAP_POLICY"] = str(path)
    return subprocess.run([sys.executable, "-c", "import sys; from agent.cli import main; sys.exit(main())",
                           "redact", *args], input=stdin.encode(), capture_output=True, env=env, timeout=60)


def test_redact_stdin_to_stdout_with_explain(tmp_path):
    p = run(tmp_path, f"export T={GHP}\nnothing here\n", "--explain")
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode() == "export T=[REDACTED:github-token]\nnothing here\n"
    assert "github-token 9-49 replace format: github-token" in p.stderr.decode()
    key = tmp_path / "state" / "keys" / "redaction.key"
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32


def test_admin_rules_from_the_policy_apply(tmp_path):
    policy = '[redaction]\nrules = [{ name = "acme-token", pattern = "ACME-[0-9a-f]{8}" }]\n'
    p = run(tmp_path, "id ACME-0badc0de\n", policy=policy)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode() == "id [REDACTED:acme-token]\n"


def test_a_rule_re2_cannot_compile_is_exit_2_naming_it(tmp_path):
    policy = '[redaction]\nrules = [{ name = "lookbehind", pattern = "(?<=x)y" }]\n'
    p = run(tmp_path, "x\n", policy=policy)
    assert p.returncode == 2
    err = p.stderr.decode()
    assert "lookbehind" in err and "Traceback" not in err and err.count("\n") == 1


def test_explain_names_detector_and_reason_for_context_and_decoded_findings(tmp_path):
    auth = "Ym90OlJlZy1QdXNoLTc3eA=="  # bot:Reg-Push-77x
    p = run(tmp_path, f'DB_PASSWORD=Falcon203\n{{"auth": "{auth}"}}\nredis-cli -a Rd-Pw-881 ping\n', "--explain")
    assert p.returncode == 0, p.stderr
    assert "Falcon203" not in p.stdout.decode() and auth not in p.stdout.decode()
    err = p.stderr.decode().splitlines()
    assert "secret-assignment 12-21 replace context: key 'DB_PASSWORD'" in err
    assert any(line.startswith("base64-credentials ") and line.endswith("decoded: base64 of user:password") for line in err)
    assert any(line.startswith("cli-redis-cli ") and "command line: redis-cli -a" in line for line in err)
