"""Secrets found by where they stand and by what they decode to; look-alikes left alone; personal
data by libphonenumber and python-stdnum; the user's own name; why each finding was made."""
from __future__ import annotations

import base64
import zlib

import pytest

from redaction import Redactor
from redaction.validators import _B62, _base62, github_checksum_ok
from tests.redaction_corpus.generate import pii_clean_sentences, pii_sentences

KEY = b"k" * 32
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM\n-----END RSA PRIVATE KEY-----\n"


@pytest.fixture(scope="module")
def red():
    return Redactor.from_policy({"phone_numbers": True}, hmac_key=KEY, home="/home/alice", username="alice",
                                full_names=["Alice Liddell"])


# Each row: text, the secret that must be gone, the detector that should name it.
FOUND = [
    # connection strings inside quotes and calls
    ('conn = psycopg2.connect("host=db user=app password=Pg-App-771")', "Pg-App-771", "secret-assignment"),
    ('db, _ := sql.Open("postgres", "user=app password=Go-Db-9x dbname=app")', "Go-Db-9x", "secret-assignment"),
    ('"Server=db;Database=app;User Id=sa;Password=Sa-Pw-2024;"', "Sa-Pw-2024", "secret-assignment"),
    ('psql "host=db password=Pq-Cli-55"', "Pq-Cli-55", "secret-assignment"),
    # everyday tools' password arguments
    ("ldapsearch -x -D cn=admin,dc=acme -w Ld-Adm-77 -b dc=acme", "Ld-Adm-77", "cli-ldap"),
    ("redis-cli -h cache -a Rd-Pw-881 ping", "Rd-Pw-881", "cli-redis-cli"),
    ("az login -u bob@acme.io -p Az-Login-4q", "Az-Login-4q", "cli-az"),
    ("openssl enc -aes-256-cbc -in a -out a.enc -k Os-Key-31", "Os-Key-31", "cli-openssl"),
    ("openssl pkcs12 -export -in c.pem -out c.p12 -passout pass:P12-Out-8", "P12-Out-8", "cli-openssl-pass"),
    ("htpasswd -b .htpasswd alice Ht-Alice-6", "Ht-Alice-6", "cli-htpasswd"),
    ("echo Sudo-Pw-42 | sudo -S systemctl restart nginx", "Sudo-Pw-42", "cli-sudo-stdin"),
    # .env keys secret by meaning
    ("SESSION_SALT=q8Vd93kd", "q8Vd93kd", "secret-assignment"),
    ("SMTP_CRED=Mx-77-pq", "Mx-77-pq", "secret-assignment"),
    ("SIGNING_SEED=ab12cd34ef", "ab12cd34ef", "secret-assignment"),
    # pytest's shortened repr of a token
    ("E       AssertionError: assert 'ghp_HQ5GKq3M...RRus2PaErS4kF' == 'x'", "ghp_HQ5GKq3M...RRus2PaErS4kF", "truncated-token"),
    # XML, .NET, Java
    ('<add key="StorageAccountKey" value="Kq9Lm2Zx8Pw4Rt6Vy1Nc3Df5Gh7Jk0=" />', "Kq9Lm2Zx8Pw4Rt6Vy1Nc3Df5Gh7Jk0=", "xml-key-value"),
    ("<password>Xml-Pw-90</password>", "Xml-Pw-90", "xml-secret-element"),
    ('new Dictionary<string,string> { { "AccountKey", "Acc-Key-77" } }', "Acc-Key-77", "code-pair"),
    ('cfg.setClientSecret("Cs-Java-12");', "Cs-Java-12", "code-call"),
    # URLs
    ("https://x.blob.core.windows.net/c/b?sv=2022-11-02&sig=Qm8kZ2xLp9Rt4Vy7Nc1Df3Gh5Jk%2BvB0%3D",
     "Qm8kZ2xLp9Rt4Vy7Nc1Df3Gh5Jk%2BvB0%3D", "azure-sas-signature"),
    ("https://api.acme.io/x?access_token=At-Tok-Zq8Lm2", "At-Tok-Zq8Lm2", "url-query-secret"),
    # percent-encoded syntax, decoded before judging
    ("POST /login body=username%3Dbob%26password%3DPct-Pw-55%26x%3D1", "Pct-Pw-55", "url-query-secret"),
    ("q=%7B%22api_key%22%3A%22Pct-Json-K3y9%22%7D&x=1", "Pct-Json-K3y9", "secret-assignment"),
    # escaped JSON inside JSON (and inside a diff line)
    ('+  "settings": "{\\"db_password\\": \\"Esc-Pw-55\\"}"', "Esc-Pw-55", "secret-assignment"),
]


@pytest.mark.parametrize("text,secret,detector", FOUND, ids=[r[2] + ":" + r[1] for r in FOUND])
def test_secrets_found_by_their_place(red, text, secret, detector):
    result = red.redact_text(text)
    assert secret not in result.text, result.text
    assert detector in {f.rule for f in result.findings}


NEAR_MISSES = [
    "GITLAB_TOKEN=glpat-XXXXXXXXXXXXXXXXXXXX", "token: ghu_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    'password: "<your-password>"', "password: ${DB_PASSWORD}", 'secret = "%(secret)s"', 'password: "{{ db_password }}"',
    "DB_PASSWORD=changeme", "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE", 'api_key = "your_api_key_here"', 'password = "dummy"',
    "SECRET_KEY=aaaaaaaaaaaaaaaa", "password=12345678", "token = get_token()", 'key = os.environ["API_KEY"]',
    "password:", '{ "key": "ctrl+shift+down", "command": "cursorDown" }', "echo hello | sudo tee /etc/motd",
    "ssh-keygen -t ed25519 -N ''", "redis-cli -h cache -p 6379 ping", "openssl rsa -passin env:PW -in k.pem",
    '    "integrity": "sha512-Qm9yZW1pcHN1bWRvbG9yc2l0YW1ldGNvbnNlY3RldHVyYWRpcGlzY2luZ2VsaXQ=",',
    "git checkout 3f4e5d6c7b8a99887766554433221100ffeeddcc", "request_id=6f1c2d3e-0a1b-4c5d-8e9f-001122334455",
    "client-certificate-data: " + base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode(),
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGk2Zq8Lm2Pw4Rt6Vy1Nc3Df5Gh7Jk0Xq9Zs8Bv7Cn6 alice@laptop",
    'secret: "mysecretvalue"', 'password = "%DB_PASSWORD%"', 'api_key: "1234-5678-abcd-efgh"',
    "passwordFile: /run/secrets/pw", "secretName: prod-db", "Stripe('pk_live_51HqLm2Xv9Rt4Yb7Nc1Kd6Wf')",
    "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "password: !!python/name:getpass.getpass",
]


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_look_alikes_come_through_unchanged(red, text):
    assert red.redact_text(text).text == text


def test_kubeconfig_client_key_in_a_file_save_diff_is_removed_whole(red):
    b64 = base64.b64encode(PEM.encode()).decode()
    cert = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").decode()
    diff = f"@@ -1,3 +1,5 @@\n users:\n-- name: a\n+- name: admin\n+  user:\n+    client-certificate-data: {cert}\n" \
           f"+    client-key-data: {b64}\n"
    out = red.redact_event("file.save", {"repo": "/r", "path": "kube/config.yaml", "op": "modify", "size": 9,
                                         "diff": diff})
    assert b64 not in out["diff"] and "[REDACTED:base64-private-key]" in out["diff"]
    assert cert in out["diff"]  # the public certificate stays


def test_docker_auth_and_base64_json_are_judged_decoded(red):
    auth = base64.b64encode(b"bot:Reg-Push-77x").decode()
    cfg = base64.b64encode(b'{"auths": {"r.io": {"password": "Kt8Reg-T0ken"}}}').decode()
    harmless = base64.b64encode(b'{"auths": {"r.io": {"username": "bot"}}}').decode()
    text = f'{{"auths": {{"r.io": {{"auth": "{auth}"}}}}}}\n.dockerconfigjson: {cfg}\nother: {harmless}'
    result = red.redact_text(text)
    assert auth not in result.text and cfg not in result.text and harmless in result.text
    assert {f.reason for f in result.findings} == {"decoded: base64 of user:password", "decoded: base64 of JSON holding a secret"}


def test_every_secret_flag_of_one_command_is_found(red):
    out = red.redact_text("ldappasswd -x -D cn=admin -w Adm-9q2x -a Old-Pw-11 -s N3w-Us3r-Pw uid=bob").text
    assert "Adm-9q2x" not in out and "Old-Pw-11" not in out and "N3w-Us3r-Pw" not in out


def _with_checksum(body: str) -> str:
    return "ghp_" + body + _base62(zlib.crc32(body.encode()), _B62[0], 6)


def test_github_checksum_outweighs_a_plain_looking_body(red):
    token = _with_checksum("a" * 30)
    assert github_checksum_ok(token) and not github_checksum_ok(token[:-1] + ("x" if token[-1] != "x" else "y"))
    result = red.redact_text(f"GH_TOKEN={token}")
    assert token not in result.text
    assert any("checksum verified" in f.reason for f in result.findings)
    # without a valid tail, the same plain body is a stand-in and stays
    plain = "ghp_" + "a" * 36
    assert red.redact_text(f"see {plain}").text == f"see {plain}"


def test_the_users_own_name_is_redacted_like_the_home_directory(red):
    out = red.redact_text("Signed-off-by: Alice Liddell <a@x.io>; cc liddell, alice; ALICE  LIDDELL wrote").text
    assert "Alice Liddell" not in out and "ALICE  LIDDELL" not in out and out.count("[user]") == 3
    assert "liddell, alice" not in out.lower()


def test_explain_reasons_name_the_format_the_key_or_the_decoding(red):
    reasons = {f.rule: f.reason for f in red.redact_text(
        "export T=ghp_R8tk2Lm9QpX4sV7nB1cZ6wY3aE5dF0gH2jK4\ndb_password: Falcon203\nredis-cli -a Rd-Pw-881 ping").findings}
    assert reasons == {"github-token": "format: github-token", "secret-assignment": "context: key 'db_password'",
                       "cli-redis-cli": "command line: redis-cli -a, --pass"}


@pytest.mark.parametrize("kind", ["phone", "card", "iban", "ssn"])
def test_personal_data_recall_on_labelled_sentences(red, kind):
    rows = [(t, v) for t, k, v in pii_sentences() if k == kind]
    found = sum(v not in red.redact_text(t).text for t, v in rows)
    assert len(rows) >= 40 and found / len(rows) >= 0.95


def test_sentences_without_personal_data_are_unchanged(red):
    changed = [s for s in pii_clean_sentences() if red.redact_text(s).text != s]
    assert changed == []


def test_percent_decoded_findings_map_back_to_the_original_text(red):
    text = "next=%2Fapp%3Ftoken%3DRd-Tok-8Lq2Zx%26page%3D2 done"
    result = red.redact_text(text)
    assert result.text == "next=%2Fapp%3Ftoken%3D[REDACTED:url-query-secret]%26page%3D2 done"
    assert result.findings[0].reason.endswith("after percent-decoding")


def test_no_rule_runs_on_text_without_any_keyword_however_many_rules_there_are():
    admin = [{"name": f"corp-{i}", "pattern": f"CORP{i}-[0-9a-f]{{16}}", "keywords": [f"corp{i}-"]} for i in range(300)]
    red = Redactor.from_policy({"rules": admin}, hmac_key=KEY)
    ran = []
    original = red._judge
    red._judge = lambda c, m, g, d: ran.append(c.rule.name) or original(c, m, g, d)
    text = "cd ~/src/project && python -m pytest tests/test_parser.py -k 'not slow' -x --maxfail=3"
    assert red._set.Match(text.encode()) is None  # one RE2 set pass says no rule can apply
    assert red.redact_text(text).text == text and ran == []
    assert red.redact_text("id CORP7-0123456789abcdef").text == "id [REDACTED:corp-7]"
