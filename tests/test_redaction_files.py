"""Never-capture files judged by name, identity and content: unit checks and the real files source."""
from __future__ import annotations

import os

import pytest

from redaction.paths import DEFAULT_NEVER_CAPTURE, PathRules, looks_like_env_file
from tests.test_files_helpers import Recorder, Running, files_source, init_repo, settle

pytestmark = [pytest.mark.timeout(60), pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")]


@pytest.mark.parametrize("path", ["deploy/production.env", "staging.env", "x/app.env.local", ".env.prod",
                                  "/home/a/.pgpass", "certs/client.p12", "/home/a/.docker/config.json"])
def test_env_and_key_files_by_name(path):
    assert not PathRules(DEFAULT_NEVER_CAPTURE).content_allowed(path)


@pytest.mark.parametrize("text,env", [
    ("# prod\nDB_HOST=db.internal\nDB_PASSWORD=Zq8-Pw-17\nPORT=5432\n", True),
    ("export API_TOKEN=k2Jd8sLq0ZmX7Pw3\nexport REGION=eu-west-1\n", True),
    ("SESSION_SALT=q8Vd93kd\nDEBUG=false\n", True),
    ("DB_PASSWORD=$DB_PASSWORD\nPORT=5432\n", False),  # references only
    ("HOST=db\nPORT=5432\nDEBUG=true\n", False),  # nothing secret-bearing
    ("import os\n\nPASSWORD = os.environ['PW']\n\ndef main():\n    pass\n", False),
    ("# notes\nThe password rotation runs monthly.\nAsk ops for access.\n", False),
])
def test_a_file_that_is_mostly_key_value_secrets_is_an_env_file(text, env):
    assert looks_like_env_file(text) is env


def test_a_hard_link_to_a_never_capture_file_is_refused_under_any_name(tmp_path):
    secret = tmp_path / "repo" / ".env"
    secret.parent.mkdir()
    secret.write_text("not even env-looking\n")
    link = tmp_path / "repo" / "docs" / "notes.txt"
    link.parent.mkdir()
    os.link(secret, link)
    plain = tmp_path / "repo" / "docs" / "plain.txt"
    plain.write_text("not even env-looking\n")
    rules = PathRules(DEFAULT_NEVER_CAPTURE)
    assert not rules.file_allowed(str(link), os.stat(link), link.read_text())
    assert rules.file_allowed(str(plain), os.stat(plain), plain.read_text())
    # remembered once seen: found again even when the other name is out of reach
    other = PathRules(DEFAULT_NEVER_CAPTURE)
    assert not other.file_allowed(str(secret), os.stat(secret))
    far = tmp_path / "elsewhere" / "a" / "b" / "c" / "d" / "copy.txt"
    far.parent.mkdir(parents=True)
    os.link(secret, far)
    assert not other.file_allowed(str(far), os.stat(far), far.read_text())


def test_files_source_keeps_only_metadata_of_env_files_whatever_their_name(tmp_path):
    repo = init_repo(tmp_path / "src" / "r", {"a.py": "1\n"})
    rec = Recorder()
    src = files_source(tmp_path, rec)
    with Running(src) as r:
        r.wait_ready(lambda: len(src.repos) == 1)
        (repo / ".env").write_text("plain words only\n")
        rec.wait_for(lambda ev: len(ev) == 1)
        os.link(repo / ".env", repo / "notes.txt")
        (repo / "deploy").mkdir()
        (repo / "deploy" / "production.env").write_text("LOG_LEVEL=info\n")
        (repo / "app.conf").write_text("DB_HOST=db\nDB_PASSWORD=Zq8-Pw-17\nPORT=5432\n")
        (repo / "main.py").write_text("print('hello')\n")
        rec.wait_for(lambda ev: len(ev) == 5)
        settle(rec, 0.3)
    by_path = {d["path"]: d for d in rec.data("file.save")}
    assert set(by_path) == {".env", "notes.txt", "deploy/production.env", "app.conf", "main.py"}
    for p in (".env", "notes.txt", "deploy/production.env", "app.conf"):
        assert "diff" not in by_path[p], p
    assert "hello" in by_path["main.py"]["diff"]
