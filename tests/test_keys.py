"""Org key pairs and the device key: generation, files on disk, loading, and refusal of bad files."""
from __future__ import annotations

import os
import stat
import threading

import pytest

from schemas.keys import (
    PRIVATE_TAG,
    PUBLIC_TAG,
    KeyFileError,
    OrgPrivateKey,
    OrgPublicKey,
    generate_org_keypair,
    load_or_create_device_key,
    load_org_private,
    load_org_public,
    write_org_keypair,
)


@pytest.mark.parametrize("pq,suite,pub_len", [(False, "X25519", 32), (True, "MLKEM768-X25519", 1216)])
def test_generate_write_load_round_trip(tmp_path, pq, suite, pub_len):
    priv, pub = generate_org_keypair(pq=pq)
    assert priv.suite == pub.suite == suite
    assert len(pub.public_bytes()) == pub_len
    assert priv.key_id == pub.key_id and len(pub.key_id) == 16
    key_path, pub_path = write_org_keypair(tmp_path / "keys", priv, pub)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub_path.stat().st_mode) == 0o644
    loaded = load_org_private(key_path)
    assert loaded.private_bytes() == priv.private_bytes()
    assert loaded.public_key() == pub
    assert load_org_public(pub_path) == pub


def test_files_are_two_copyable_text_lines(tmp_path):
    priv, pub = generate_org_keypair()
    key_path, pub_path = write_org_keypair(tmp_path, priv, pub)
    first, second = key_path.read_text().splitlines()
    assert first == f"{PRIVATE_TAG} X25519 {priv.key_id}"
    assert second.isascii() and len(second) == 44
    assert pub_path.read_text().splitlines()[0] == f"{PUBLIC_TAG} X25519 {pub.key_id}"


def test_repr_and_str_never_show_key_material():
    for pq in (False, True):
        priv, pub = generate_org_keypair(pq=pq)
        for text in (repr(priv), str(priv), f"{priv}", repr(pub), str(pub)):
            assert priv.key_id in text
            assert priv.private_bytes().hex()[:16] not in text
            assert pub.public_bytes().hex()[:16] not in text
        with pytest.raises(TypeError):
            import pickle
            pickle.dumps(priv)


def test_key_ids_differ_between_keys_and_suites():
    ids = {generate_org_keypair(pq=pq)[1].key_id for pq in (False, True, False, True)}
    assert len(ids) == 4


def test_refuses_to_overwrite(tmp_path):
    priv, pub = generate_org_keypair()
    write_org_keypair(tmp_path, priv, pub)
    before = (tmp_path / "org.key").read_bytes()
    priv2, pub2 = generate_org_keypair()
    with pytest.raises(KeyFileError, match="already exists"):
        write_org_keypair(tmp_path, priv2, pub2)
    assert (tmp_path / "org.key").read_bytes() == before


def test_refuses_when_only_the_public_half_exists(tmp_path):
    (tmp_path / "org.pub").write_text("x")
    priv, pub = generate_org_keypair()
    with pytest.raises(KeyFileError, match="org.pub already exists"):
        write_org_keypair(tmp_path, priv, pub)
    assert not (tmp_path / "org.key").exists()


def test_mismatched_pair_is_a_programming_error(tmp_path):
    priv, _ = generate_org_keypair()
    _, other = generate_org_keypair()
    with pytest.raises(ValueError):
        write_org_keypair(tmp_path, priv, other)


def _valid_files(tmp_path):
    priv, pub = generate_org_keypair()
    return write_org_keypair(tmp_path, priv, pub)


# (what is wrong, file contents maker, expected fragment of the one-sentence error)
BAD_PRIVATE = [
    ("empty", lambda k, p: "", "is not an org private key file"),
    ("public key given", lambda k, p: p.read_text(), "other half of the pair"),
    ("bad base64", lambda k, p: k.read_text().replace(k.read_text().splitlines()[1], "!!!!"), "damaged base64"),
    ("short key", lambda k, p: k.read_text().splitlines()[0] + "\nAAAA\n", "damaged X25519 private key"),
    ("unknown suite", lambda k, p: k.read_text().replace("X25519", "RSA", 1), "unknown key suite"),
    ("wrong key id", lambda k, p: k.read_text().replace(k.read_text().split()[2], "0" * 16), "does not match"),
    ("binary", lambda k, p: "\xff\xfe", "not an org private key file"),
]


@pytest.mark.parametrize("name,make,fragment", BAD_PRIVATE, ids=[b[0] for b in BAD_PRIVATE])
def test_bad_private_key_files(tmp_path, name, make, fragment):
    key_path, pub_path = _valid_files(tmp_path)
    bad = tmp_path / "bad.key"
    bad.write_text(make(key_path, pub_path), encoding="latin-1")
    with pytest.raises(KeyFileError) as exc:
        load_org_private(bad)
    msg = str(exc.value)
    assert str(bad) in msg and fragment in msg and "\n" not in msg


def test_private_key_given_as_public(tmp_path):
    key_path, _ = _valid_files(tmp_path)
    with pytest.raises(KeyFileError, match="other half of the pair"):
        load_org_public(key_path)


def test_missing_key_file_names_path(tmp_path):
    with pytest.raises(KeyFileError, match="does not exist"):
        load_org_private(tmp_path / "nope.key")


def test_comment_lines_are_ignored(tmp_path):
    key_path, pub_path = _valid_files(tmp_path)
    pub_path.write_text("# rotated 2025\n" + pub_path.read_text())
    assert load_org_public(pub_path).key_id == load_org_private(key_path).key_id


def test_direct_constructors_validate():
    with pytest.raises(ValueError):
        OrgPublicKey("X25519", b"\x00" * 31)
    with pytest.raises(ValueError):
        OrgPrivateKey("X448", b"\x00" * 56)


def test_device_key_created_once_0600(tmp_path):
    path = tmp_path / "keys" / "device.key"
    k1 = load_or_create_device_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    k2 = load_or_create_device_key(path)
    assert k1.public_key().public_bytes_raw() == k2.public_key().public_bytes_raw()
    assert [p.name for p in path.parent.iterdir()] == ["device.key"]


def test_device_key_concurrent_first_use_agrees(tmp_path):
    path = tmp_path / "device.key"
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        load_or_create_device_key(path).public_key().public_bytes_raw())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(results) == 8 and len(set(results)) == 1


def test_damaged_device_key_is_refused_not_replaced(tmp_path):
    path = tmp_path / "device.key"
    path.write_text("garbage\n")
    with pytest.raises(KeyFileError, match="damaged"):
        load_or_create_device_key(path)
    assert path.read_text() == "garbage\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_directory(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        priv, pub = generate_org_keypair()
        with pytest.raises(KeyFileError, match="cannot create"):
            write_org_keypair(d, priv, pub)
        with pytest.raises(KeyFileError, match="cannot create device key"):
            load_or_create_device_key(d / "device.key")
    finally:
        d.chmod(0o700)
