"""`tracecap keys generate`, `bundle inspect` and `bundle decrypt` through the real command line."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.keys import load_org_public
from tests.test_bundle_support import layout, make_events, seal

REPO = Path(__file__).resolve().parent.parent


def tracecap(*args: str, env_home: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, TRACECAP_HOME=str(env_home))
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env=env)


@pytest.fixture(scope="module")
def keys_and_bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    home = d / "home"
    r = tracecap("keys", "generate", "--out", str(d / "org"), env_home=home)
    assert r.returncode == 0, r.stderr
    pub = load_org_public(d / "org" / "org.pub")
    assert pub.key_id in r.stdout
    events = make_events(300, noise=800)
    events[0]["data"]["text"] = "naïve café ✓ \u2028 \"quoted\""
    raw = seal(events, [pub], Ed25519PrivateKey.generate())
    bundle = d / "b.tcb"
    bundle.write_bytes(raw)
    return d, home, events, raw, bundle


def test_keys_generate_modes_and_refuses_overwrite(keys_and_bundle):
    d, home, *_ = keys_and_bundle
    assert stat.S_IMODE((d / "org" / "org.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((d / "org" / "org.pub").stat().st_mode) == 0o644
    before = (d / "org" / "org.key").read_bytes()
    r = tracecap("keys", "generate", "--out", str(d / "org"), env_home=home)
    assert r.returncode == 2 and "already exists" in r.stderr and r.stderr.count("\n") == 1
    assert (d / "org" / "org.key").read_bytes() == before


def test_keys_generate_pq(tmp_path):
    r = tracecap("keys", "generate", "--out", str(tmp_path), "--pq", env_home=tmp_path / "h")
    assert r.returncode == 0, r.stderr
    assert load_org_public(tmp_path / "org.pub").suite == "MLKEM768-X25519"


def test_inspect_prints_header_json_without_a_key(keys_and_bundle):
    _, home, events, _, bundle = keys_and_bundle
    r = tracecap("bundle", "inspect", str(bundle), env_home=home)
    assert r.returncode == 0, r.stderr
    h = json.loads(r.stdout)
    assert (h["first_seq"], h["last_seq"], h["count"]) == (1, 300, 300)
    assert h["compression"] == "zstd" and h["suite"] == "X25519" and h["version"] == 1


def test_decrypt_prints_contract_json_lines(keys_and_bundle):
    d, home, events, _, bundle = keys_and_bundle
    r = tracecap("bundle", "decrypt", str(bundle), "--key", str(d / "org" / "org.key"), env_home=home)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")[:-1]  # not splitlines(): U+2028 inside a string is not a line end
    assert [json.loads(ln) for ln in lines] == events
    assert lines[0] == json.dumps(events[0], ensure_ascii=False, separators=(",", ":"))
    assert "naïve café ✓" in lines[0]


def _damaged(raw: bytes) -> dict[str, bytes]:
    lay = layout(raw)
    flipped = bytearray(raw)
    flipped[lay["chunks"][1][0] + 100] ^= 1
    version = bytearray(raw)
    version[9] = 7
    return {
        "flipped bit": bytes(flipped),
        "truncated": raw[: lay["chunks"][2][0]],
        "unknown version": bytes(version),
        "not a bundle": b"hello world\n",
    }


@pytest.mark.parametrize("case,fragment", [
    ("flipped bit", "signature does not verify"),
    ("truncated", "truncated"),
    ("unknown version", "format version 7"),
    ("not a bundle", "not a tracecap bundle"),
])
def test_decrypt_refuses_damage_with_exit_2_and_no_output(keys_and_bundle, tmp_path, case, fragment):
    d, home, _, raw, _ = keys_and_bundle
    bad = tmp_path / "bad.tcb"
    bad.write_bytes(_damaged(raw)[case])
    r = tracecap("bundle", "decrypt", str(bad), "--key", str(d / "org" / "org.key"), env_home=home)
    assert r.returncode == 2
    assert r.stdout == ""
    assert fragment in r.stderr and str(bad) in r.stderr and r.stderr.count("\n") == 1
    assert "Traceback" not in r.stderr


def test_decrypt_with_the_wrong_key(keys_and_bundle, tmp_path):
    _, home, _, _, bundle = keys_and_bundle
    assert tracecap("keys", "generate", "--out", str(tmp_path), env_home=home).returncode == 0
    r = tracecap("bundle", "decrypt", str(bundle), "--key", str(tmp_path / "org.key"), env_home=home)
    assert r.returncode == 2 and r.stdout == "" and "not encrypted to the given org key" in r.stderr


@pytest.mark.parametrize("args,fragment", [
    (["bundle", "inspect", "/nonexistent/b.tcb"], "does not exist"),
    (["bundle", "decrypt", "{bundle}", "--key", "/nonexistent/org.key"], "does not exist"),
    (["bundle", "decrypt", "{bundle}", "--key", "{pub}"], "other half of the pair"),
    (["bundle", "inspect", "{dir}"], "is a directory"),
])
def test_bad_paths_and_key_files(keys_and_bundle, args, fragment):
    d, home, _, _, bundle = keys_and_bundle
    args = [a.format(bundle=bundle, pub=d / "org" / "org.pub", dir=d) for a in args]
    r = tracecap(*args, env_home=home)
    assert r.returncode == 2 and r.stdout == "" and fragment in r.stderr and "Traceback" not in r.stderr
