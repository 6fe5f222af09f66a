"""Policy loading: defaults, validation errors that name file, key and reason, StrictModes."""
from __future__ import annotations

import os
import subprocess

import pytest

from agent.policy import (PolicyError, builtin_policy, load_effective_policy, load_policy_file,
                          parse_duration, parse_size)
from tests.daemon_harness import TRACECAP


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400),
                                          ("250ms", 0.25)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "15", "m", "1.5h", "-3s", "3 s", "1w"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("value,n", [(0, 0), ("512", 512), ("1KiB", 1024), ("64MiB", 64 << 20),
                                     ("1GiB", 1 << 30), ("1GB", 10**9)])
def test_parse_size(value, n):
    assert parse_size(value) == n


def write(tmp_path, body, mode=0o644):
    p = tmp_path / "policy.toml"
    p.write_text(body)
    os.chmod(p, mode)
    return p


CONTRACT_EXAMPLE = '''
[consent]
mode = "opt-in"
[capture]
roots = ["~/src"]
exclude = ["**/node_modules/**"]
sources = ["files", "shell", "tests", "git", "tools", "input"]
[redaction]
content = "full"
rules = [{ name = "acme-token", pattern = "ACME-[0-9a-f]{32}", action = "replace" }]
[upload]
url = "file:///var/lib/tracecap/outbox"
recipients = ["/etc/tracecap/org.pub"]
token = ""
interval = "60s"
hold = "0s"
[spool]
max_bytes = "1GiB"
'''


def with_org_key(tmp_path, body):
    """The example with its recipient replaced by a real org public key (check loads it)."""
    from schemas.keys import generate_org_keypair, write_org_keypair

    priv, pub = generate_org_keypair()
    write_org_keypair(tmp_path / "org", priv, pub)
    return body.replace("/etc/tracecap/org.pub", str(tmp_path / "org" / "org.pub"))


def test_contract_example_is_valid_and_fills_defaults(tmp_path):
    pol = load_policy_file(write(tmp_path, with_org_key(tmp_path, CONTRACT_EXAMPLE)))
    assert pol.get("capture.roots") == ["~/src"]
    assert pol.get("spool.fsync_ms") == 200 and pol.get("spool.reorder_ms") == 250
    assert not pol.personal


@pytest.mark.parametrize("body,key,reason", [
    ("[capture]\nrootz = ['~']\n", "capture.rootz", "unknown key"),
    ("[captur]\nroots = ['~']\n", "captur", "unknown key"),
    ("[consent]\nmode = 'maybe'\n", "consent.mode", "must be one of"),
    ("[capture]\nroots = '~'\n", "capture.roots", "must be of type array"),
    ("[upload]\ninterval = 'soon'\n", "upload.interval", "expected form"),
    ("[capture]\nsources = ['files', 'webcam']\n", "capture.sources.1", "must be one of"),
    ("[redaction]\nrules = [{ name = 'x', pattern = 'a', action = 'explode' }]\n",
     "redaction.rules.0.action", "must be one of"),
    ("[spool]\nfsync_ms = -1\n", "spool.fsync_ms", ""),
])
def test_invalid_policy_names_file_key_and_reason(tmp_path, body, key, reason):
    p = write(tmp_path, body)
    with pytest.raises(PolicyError) as err:
        load_policy_file(p)
    msg = str(err.value)
    assert str(p) in msg and f"key {key}:" in msg and reason in msg
    assert "\n" not in msg


def test_rule_re2_cannot_compile_is_rejected_naming_the_rule(tmp_path):
    p = write(tmp_path, "[redaction]\nrules = [{ name = 'backref', pattern = '(a)\\1' }]\n")
    with pytest.raises(PolicyError) as err:
        load_policy_file(p)
    assert "backref" in str(err.value) and "redaction.rules" in str(err.value)
    r = run("policy", "check", str(p))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "backref" in r.stderr


def test_toml_syntax_error(tmp_path):
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy_file(write(tmp_path, "[consent\n"))


def test_strict_modes_refuses_group_writable(tmp_path):
    p = write(tmp_path, "[consent]\nmode = 'opt-out'\n", mode=0o664)
    with pytest.raises(PolicyError, match="writable by other users"):
        load_policy_file(p)
    assert load_policy_file(p, strict_modes=False).get("consent.mode") == "opt-out"


def test_no_policy_file_means_personal_mode(tmp_path):
    pol = load_effective_policy({})  # default path /etc/tracecap/policy.toml is absent in tests
    if os.path.exists("/etc/tracecap/policy.toml"):
        pytest.skip("a machine-wide policy is installed here")
    assert pol.personal and pol.get("consent.mode") == "opt-in"
    assert pol.digest == builtin_policy().digest


def test_missing_file_named_by_env_is_an_error(tmp_path):
    with pytest.raises(PolicyError, match="TRACECAP_POLICY"):
        load_effective_policy({"TRACECAP_POLICY": str(tmp_path / "nope.toml")})


def run(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACECAP_")}
    env.update(env_extra or {})
    return subprocess.run([TRACECAP, *args], capture_output=True, text=True, env=env, timeout=60)


def test_cli_policy_check_exit_codes(tmp_path):
    good = write(tmp_path, with_org_key(tmp_path, CONTRACT_EXAMPLE))
    r = run("policy", "check", str(good))
    assert r.returncode == 0 and "valid" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[capture]\nrootz = []\n")
    r = run("policy", "check", str(bad))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "capture.rootz" in r.stderr and "Traceback" not in r.stderr


def test_cli_policy_show_prints_effective_policy(tmp_path):
    p = write(tmp_path, with_org_key(tmp_path, CONTRACT_EXAMPLE))
    r = run("policy", "show", env_extra={"TRACECAP_POLICY": str(p), "TRACECAP_HOME": str(tmp_path)})
    assert r.returncode == 0
    assert 'roots = ["~/src"]' in r.stdout and "fsync_ms = 200" in r.stdout


def test_signed_policy(tmp_path):
    keys = tmp_path / "keys"
    r = run("policy", "keygen", "--out", str(keys))
    assert r.returncode == 0 and (keys / "policy-signing.key").stat().st_mode & 0o077 == 0
    etc = tmp_path / "etc"
    etc.mkdir()
    p = write(etc, '[consent]\nmode = "opt-out"\n[policy]\nrequire_signature = true\nsigning_key = "'
              + str(keys / "policy-signing.pub") + '"\n')
    with pytest.raises(PolicyError, match="is missing"):
        load_policy_file(p)
    assert run("policy", "sign", str(p), "--key", str(keys / "policy-signing.key")).returncode == 0
    assert load_policy_file(p).get("consent.mode") == "opt-out"
    p.write_text(p.read_text().replace("opt-out", "opt-in"))  # tampered after signing
    with pytest.raises(PolicyError, match="does not match its signature"):
        load_policy_file(p)


def test_signing_key_beside_policy_makes_signature_mandatory(tmp_path):
    keys = tmp_path / "keys"
    run("policy", "keygen", "--out", str(keys))
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "policy-signing.pub").write_text((keys / "policy-signing.pub").read_text())
    p = write(etc, '[consent]\nmode = "opt-in"\n')  # says nothing about signatures
    with pytest.raises(PolicyError, match="must be signed"):
        load_policy_file(p)
    run("policy", "sign", str(p), "--key", str(keys / "policy-signing.key"))
    assert load_policy_file(p).get("consent.mode") == "opt-in"
