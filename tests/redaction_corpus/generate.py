"""The redaction evaluation corpus, generated: synthetic secrets in realistic places, and clean text.

Takes a seed; gives `positive_samples()` (each a `Sample`: text, the secret strings that must not
survive, the detector meant to find them, and the place) and `near_misses()` / `stdlib_lines()`
(text that must come through unchanged). Promise: deterministic for a seed; every token has the
real format of its kind (lengths, alphabets, checksums where the format has one) but is random, so
no real credential is in the repository. `python -m tests.redaction_corpus.generate OUT_DIR` writes
the corpus as JSON lines for inspection or other scanners.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import random
import string
import sys
import sysconfig
from pathlib import Path

UPPER, LOWER, DIGITS = string.ascii_uppercase, string.ascii_lowercase, string.digits
ALNUM = UPPER + LOWER + DIGITS
HEX = "0123456789abcdef"
B64 = ALNUM + "+/"
B64URL = ALNUM + "-_"
PASSWORD_CHARS = ALNUM + "!#%^*-_+.~"


@dataclasses.dataclass(frozen=True)
class Sample:
    text: str
    secrets: tuple[str, ...]
    detector: str
    category: str  # known | context | pii
    place: str


def _r(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _mixed(rng: random.Random, alphabet: str, n: int) -> str:
    """Random, but with at least one upper, lower and digit, like real generated tokens."""
    while True:
        s = _r(rng, alphabet, n)
        if any(c.isupper() for c in s) and any(c.islower() for c in s) and any(c.isdigit() for c in s):
            return s


def _luhn_complete(prefix_digits: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(prefix_digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return prefix_digits + str((10 - total % 10) % 10)


def _b64url(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


# ---- known-format token makers: rng -> token -------------------------------------------------
def _jwt(rng):
    head = _b64url({"alg": "HS256", "typ": "JWT"})
    body = _b64url({"sub": _r(rng, DIGITS, 8), "name": _r(rng, LOWER, 6), "iat": rng.randint(10**9, 2 * 10**9)})
    return f"{head}.{body}.{_r(rng, B64URL, 43)}"


TOKEN_MAKERS = {
    "aws-access-key-id": lambda r: rng_choice(r, ("AKIA", "ASIA")) + _r(r, UPPER + "234567", 16),
    "gcp-api-key": lambda r: "AIza" + _r(r, B64URL, 35),
    "google-oauth-secret": lambda r: "GOCSPX-" + _r(r, B64URL, 28),
    "google-oauth-token": lambda r: "ya29." + _r(r, B64URL, 70),
    "digitalocean-token": lambda r: "dop_v1_" + _r(r, HEX, 64),
    "github-token": lambda r: rng_choice(r, ("ghp_", "gho_", "ghs_", "ghu_")) + _mixed(r, ALNUM, 36),
    "github-fine-grained-token": lambda r: "github_pat_" + _r(r, ALNUM, 22) + "_" + _r(r, ALNUM, 59),
    "gitlab-token": lambda r: "glpat-" + _r(r, B64URL, 20),
    "slack-token": lambda r: f"xoxb-{_r(r, DIGITS, 12)}-{_r(r, DIGITS, 13)}-{_r(r, ALNUM, 24)}",
    "slack-webhook": lambda r: f"https://hooks.slack.com/services/T{_r(r, UPPER + DIGITS, 8)}/B{_r(r, UPPER + DIGITS, 10)}/{_r(r, ALNUM, 24)}",
    "discord-webhook": lambda r: f"https://discord.com/api/webhooks/{_r(r, DIGITS, 18)}/{_r(r, B64URL, 68)}",
    "telegram-bot-token": lambda r: f"{r.randint(10**8, 10**9)}:AA{_r(r, B64URL, 33)}",
    "stripe-key": lambda r: rng_choice(r, ("sk_live_", "rk_live_", "sk_test_")) + _mixed(r, ALNUM, 24),
    "stripe-webhook-secret": lambda r: "whsec_" + _mixed(r, ALNUM, 32),
    "shopify-token": lambda r: "shpat_" + _r(r, HEX, 32),
    "npm-token": lambda r: "npm_" + _mixed(r, ALNUM, 36),
    "pypi-token": lambda r: "pypi-AgEIcHlwaS5vcmc" + _r(r, B64URL, 80),
    "openai-key": lambda r: "sk-proj-" + _r(r, B64URL, 74) + "T3BlbkFJ" + _r(r, B64URL, 74),
    "anthropic-key": lambda r: "sk-ant-api03-" + _r(r, B64URL, 93) + "AA",
    "huggingface-token": lambda r: "hf_" + _r(r, UPPER + LOWER, 34),
    "sendgrid-key": lambda r: "SG." + _r(r, B64URL, 22) + "." + _r(r, B64URL, 43),
    "twilio-key": lambda r: "SK" + _r(r, HEX, 32),
    "mailgun-key": lambda r: "key-" + _r(r, LOWER + DIGITS, 32),
    "mailchimp-key": lambda r: _r(r, HEX, 32) + f"-us{r.randint(1, 21)}",
    "databricks-token": lambda r: "dapi" + _r(r, HEX, 32),
    "linear-key": lambda r: "lin_api_" + _r(r, ALNUM, 40),
    "age-secret-key": lambda r: "AGE-SECRET-KEY-1" + _r(r, UPPER + DIGITS, 58),
    # formats added with the wider catalogue (prefixes and lengths as the providers describe them)
    "aws-session-token": lambda r: "IQoJb3JpZ2luX2Vj" + _r(r, B64, 280),
    "azure-ad-client-secret": lambda r: _r(r, ALNUM, 3) + str(r.randint(0, 9)) + "Q~" + _mixed(r, ALNUM + "_~.-", 34),
    "google-refresh-token": lambda r: "1//0" + _r(r, B64URL, 99),
    "alibaba-access-key-id": lambda r: "LTAI" + _mixed(r, ALNUM, 20),
    "heroku-key": lambda r: "HRKU-AA" + _r(r, B64URL, 58),
    "supabase-token": lambda r: "sbp_" + _r(r, HEX, 40),
    "vault-token": lambda r: "hvs." + _r(r, B64URL, 90),
    "doppler-token": lambda r: "dp.st." + _mixed(r, ALNUM, 43),
    "terraform-cloud-token": lambda r: _r(r, ALNUM, 14) + ".atlasv1." + _r(r, B64URL, 67),
    "pulumi-token": lambda r: "pul-" + _r(r, HEX, 40),
    "dockerhub-token": lambda r: "dckr_pat_" + _r(r, B64URL, 27),
    "rubygems-key": lambda r: "rubygems_" + _r(r, HEX, 48),
    "nuget-key": lambda r: "oy2" + _r(r, LOWER + DIGITS, 43),
    "grafana-token": lambda r: "glsa_" + _mixed(r, ALNUM, 32) + "_" + _r(r, HEX, 8),
    "newrelic-key": lambda r: "NRAK-" + _r(r, UPPER + DIGITS, 27),
    "sentry-token": lambda r: "sntryu_" + _r(r, HEX, 64),
    "groq-key": lambda r: "gsk_" + _mixed(r, ALNUM, 52),
    "replicate-token": lambda r: "r8_" + _mixed(r, ALNUM, 37),
    "perplexity-key": lambda r: "pplx-" + _mixed(r, ALNUM, 48),
    "openrouter-key": lambda r: "sk-or-v1-" + _r(r, HEX, 64),
    "langsmith-key": lambda r: "lsv2_pt_" + _r(r, HEX, 32) + "_" + _r(r, HEX, 10),
    "square-token": lambda r: "EAAA" + _r(r, B64URL, 60),
    "atlassian-token": lambda r: "ATATT3xFfGF0" + _r(r, B64URL, 180) + "=" + _r(r, HEX.upper(), 8),
    "postman-key": lambda r: "PMAK-" + _r(r, HEX, 24) + "-" + _r(r, HEX, 34),
    "teams-webhook": lambda r: (f"https://acme.webhook.office.com/webhookb2/{_r(r, HEX, 36)}@{_r(r, HEX, 36)}"
                                f"/IncomingWebhook/{_r(r, HEX, 32)}/{_r(r, HEX, 36)}"),
    "jwt": _jwt,
}


def rng_choice(rng, items):
    return items[rng.randrange(len(items))]


# Neutral places: the key names say nothing secret, so only the token's own format can find it.
KNOWN_PLACES = {
    "shell": ["mytool configure --value {t}", "echo '{t}' | pbcopy", "grep -rn \"{t}\" src/ && echo done",
              "printf '%s\\n' {t} > /tmp/out.txt"],
    "diff": ["@@ -3,7 +3,7 @@ def main():\n-    value = None\n+    value = \"{t}\"\n     return value"],
    "env": ["SERVICE_VALUE={t}\nLOG_LEVEL=debug"],
    "yaml": ["service:\n  name: api\n  value: {t}\n  replicas: 3"],
    "json": ['{{"service": "api", "value": "{t}", "replicas": 3}}'],
    "log": ["2024-05-01T12:00:03.118Z INFO  client.request sent header value={t} status=401"],
    "test": ["E       AssertionError: assert '{t}' == 'expected'\nE         - expected"],
}


def _pem(rng, kind):
    lines = [_r(rng, B64, 64) for _ in range(rng.randint(4, 12))] + [_r(rng, B64, rng.randint(8, 60)) + "=="]
    return f"-----BEGIN {kind}PRIVATE KEY-----", lines, f"-----END {kind}PRIVATE KEY-----"


def _private_keys(rng, n):
    out = []
    for i in range(n):
        begin, body, end = _pem(rng, rng_choice(rng, ("", "RSA ", "EC ", "OPENSSH ", "ENCRYPTED ", "DSA ")))
        place = ("file", "json", "diff", "shell")[i % 4]
        if place == "file":
            text = "\n".join([begin, *body, end]) + "\n"
        elif place == "json":
            text = json.dumps({"type": "service_account", "project_id": "acme-prod",
                               "private_key": "\n".join([begin, *body, end]) + "\n",
                               "client_email": "svc@acme-prod.iam.gserviceaccount.com"}, indent=2)
        elif place == "diff":
            text = "@@ -0,0 +1,%d @@\n" % (len(body) + 2) + "\n".join("+" + x for x in [begin, *body, end])
        else:
            text = "cat > key.pem <<'EOF'\n" + "\n".join([begin, *body, end]) + "\nEOF"
        out.append(Sample(text, tuple(body), "private-key", "known", place))
    return out


def _password(rng):
    if rng.random() < 0.5:
        return _mixed(rng, PASSWORD_CHARS, rng.randint(10, 24))
    word = rng_choice(rng, ("Summer", "winter", "Falcon", "orange", "Rocket", "purple", "Tiger"))
    return f"{word}{rng.randint(10, 9999)}{rng_choice(rng, ('!', '#', '', '_x', '.'))}"


def _context_samples(rng, n):
    """Detectors that rely on what surrounds the value: assignments, URLs, headers, flags."""
    out = []
    keys_env = ("API_TOKEN", "DB_PASSWORD", "STRIPE_SECRET", "SERVICE_API_KEY", "AUTH_TOKEN", "APP_SECRET_KEY",
                "REDIS_PASSWORD", "SMTP_PASS_WORD", "JWT_SECRET", "CLIENT_SECRET", "ACCESS_KEY", "SIGNING_KEY")
    keys_code = ("password", "api_key", "apiKey", "client_secret", "secret", "auth_token", "access_token",
                 "db_password", "secretKey", "private_key", "token", "passwd")
    for _ in range(n):
        pw = _password(rng)
        tok = _mixed(rng, ALNUM, rng.randint(20, 40))
        ke, kc = rng_choice(rng, keys_env), rng_choice(rng, keys_code)
        user = rng_choice(rng, ("app", "deploy", "admin", "svc_ci", "bob"))
        host = rng_choice(rng, ("db.internal", "10.0.4.12", "cache.acme.io", "git.example.com"))
        basic = base64.b64encode(f"{user}:{pw}".encode()).decode()
        out += [
            Sample(f"export {ke}={tok}", (tok,), "secret-assignment", "context", "shell"),
            Sample(f"{ke}=\"{pw}\"\nDEBUG=false", (pw,), "secret-assignment", "context", "env"),
            Sample(f"database:\n  host: {host}\n  {kc}: {pw}\n  pool: 5", (pw,), "secret-assignment", "context", "yaml"),
            Sample(f'{{"{kc}": "{pw}", "timeout": 30}}', (pw,), "secret-assignment", "context", "json"),
            Sample(f"[service]\n{kc} = \"{tok}\"\nretries = 3", (tok,), "secret-assignment", "context", "toml"),
            Sample(f"[client]\n{kc}={pw}\nport=5432", (pw,), "secret-assignment", "context", "ini"),
            Sample(f"@@ -1,3 +1,3 @@\n-{kc} = \"\"\n+{kc} = \"{tok}\"\n client = Client()", (tok,),
                   "secret-assignment", "context", "diff"),
            Sample(f"    const {kc} = '{pw}';", (pw,), "secret-assignment", "context", "source"),
            Sample(f"psql postgres://{user}:{pw}@{host}:5432/app", (pw,), "url-credentials", "context", "shell"),
            Sample(f"2024-05-01 12:00:01 INFO connecting to redis://{user}:{pw}@{host}:6379/0", (pw,),
                   "url-credentials", "context", "log"),
            Sample(f"git clone https://{user}:{tok}@{host}/team/repo.git", (tok,), "url-credentials", "context", "shell"),
            Sample(f'curl -sS -H "Authorization: Bearer {tok}" https://api.acme.io/v1/me', (tok,),
                   "auth-header", "context", "shell"),
            Sample(f"> GET /v1/me HTTP/1.1\n> Authorization: Basic {basic}\n> Accept: */*", (basic,),
                   "auth-header", "context", "log"),
            Sample(f"curl -H 'X-Api-Key: {tok}' https://svc.acme.io/items", (tok,), "api-key-header", "context", "shell"),
            Sample(f"curl -u {user}:{pw} https://{host}/api", (pw,), "curl-user", "context", "shell"),
            Sample(f"mysql -h {host} -u {user} --password={pw} app", (pw,), "password-flag", "context", "shell"),
            Sample(f"mysql -h {host} -u{user} -p{pw} app < dump.sql", (pw,), "mysql-password", "context", "shell"),
            Sample(f"sshpass -p '{pw}' ssh {user}@{host}", (pw,), "short-password-flag", "context", "shell"),
            Sample(f"docker login -u {user} -p {pw} registry.acme.io", (pw,), "short-password-flag", "context", "shell"),
            Sample(f"aws_secret_access_key = {_r(rng, B64, 40)}", (), "aws-secret-access-key", "context", "ini"),
        ]
        last = out[-1]
        out[-1] = dataclasses.replace(last, secrets=(last.text.rsplit(" ", 1)[1],))
    return out


def _valid_phone(rng) -> str:
    """A number libphonenumber calls valid, written as people write them (US, UK, German, French)."""
    import phonenumbers

    fmts = (phonenumbers.PhoneNumberFormat.INTERNATIONAL, phonenumbers.PhoneNumberFormat.NATIONAL)
    while True:
        region, cc, national = rng_choice(rng, (("US", 1, lambda: f"{rng.randint(201, 989)}{rng.randint(200, 999)}{rng.randint(1000, 9999)}"),
                                                ("GB", 44, lambda: f"20{rng.randint(70000000, 89999999)}"),
                                                ("GB", 44, lambda: f"7{rng.randint(400000000, 999999999)}"),
                                                ("DE", 49, lambda: f"30{rng.randint(1000000, 99999999)}"),
                                                ("FR", 33, lambda: f"{rng.randint(1, 7)}{rng.randint(10000000, 99999999)}")))
        num = phonenumbers.parse(f"+{cc}{national()}", None)
        if phonenumbers.is_valid_number(num):
            fmt = rng_choice(rng, fmts) if region == "US" else fmts[0]
            return phonenumbers.format_number(num, fmt)


def _iban(rng) -> str:
    """A German or British IBAN with correct mod-97 check digits, grouped in fours or not."""
    from stdnum import iban

    country, bban = rng_choice(rng, (("DE", lambda: _r(rng, DIGITS, 18)),
                                     ("GB", lambda: rng_choice(rng, ("NWBK", "BARC", "MIDL")) + _r(rng, DIGITS, 14)),
                                     ("FR", lambda: _r(rng, DIGITS, 23)), ("NL", lambda: "ABNA" + _r(rng, DIGITS, 10))))
    body = bban()
    check = iban.calc_check_digits(country + "00" + body)
    value = country + check + body
    return " ".join(value[i:i + 4] for i in range(0, len(value), 4)) if rng.random() < 0.5 else value


def _ssn(rng) -> str:
    from stdnum.us import ssn

    while True:
        v = f"{rng.randint(1, 899):03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
        if ssn.is_valid(v):
            return v


def _pii_samples(rng, n):
    out = []
    for _ in range(n):
        first = rng_choice(rng, ("alice", "bob", "chen", "dana", "emil", "fatima", "goran"))
        email = f"{first}.{_r(rng, LOWER, 5)}@{rng_choice(rng, ('acme-corp.com', 'mail.example.org', 'uni.edu'))}"
        prefix = rng_choice(rng, ("4", "51", "55", "37", "6011"))
        length = 15 if prefix == "37" else 16
        card = _luhn_complete(prefix + _r(rng, DIGITS, length - len(prefix) - 1))
        grouped = " ".join(card[i:i + 4] for i in range(0, len(card), 4)) if rng.random() < 0.5 else card
        phone = _valid_phone(rng)
        ip = f"{rng_choice(rng, (11, 23, 34, 52, 81, 91, 104, 151, 185, 212))}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        out += [
            Sample(f"git commit --author=\"{first.title()} <{email}>\" -m 'fix'", (email,), "email", "pii", "shell"),
            Sample(f"2024-05-01 INFO signup ok user={email}", (email,), "email", "pii", "log"),
            Sample(f"E   AssertionError: charge failed for card {grouped}", (grouped,), "credit-card", "pii", "test"),
            Sample(f'{{"customer": "c_1", "phone": "{phone}"}}', (phone,), "phone-number", "pii", "json"),
            Sample(f"ssh deploy@{ip} -p 2222", (ip,), "ip-address", "pii", "shell"),
            Sample(f"Please call me back on {phone} after lunch.", (phone,), "phone-number", "pii", "log"),
        ]
        iban_v, ssn_v = _iban(rng), _ssn(rng)
        amex = _luhn_complete("37" + _r(rng, DIGITS, 12))
        out += [
            Sample(f"Refund to IBAN {iban_v}, reference 7781.", (iban_v,), "iban", "pii", "log"),
            Sample(f'{{"employee": "e-{rng.randint(100, 999)}", "ssn": "{ssn_v}"}}', (ssn_v,), "us-ssn", "pii", "json"),
            Sample(f"E   AssertionError: amex {amex[:4]} {amex[4:10]} {amex[10:]} declined",
                   (f"{amex[:4]} {amex[4:10]} {amex[10:]}",), "credit-card", "pii", "test"),
        ]
    return out


def _pem_body(rng) -> str:
    return "\n".join(_r(rng, B64, 64) for _ in range(rng.randint(3, 8)))


def _wider_context_samples(rng, n):
    """Secrets by place in the syntaxes engineers write: XML, .NET and Java code, Go and Python
    connection calls, connection strings, URLs, env files by meaning, escaped JSON, base64 that
    hides a secret, and pytest's shortened strings."""
    out = []
    for _ in range(n):
        pw = _password(rng)
        tok = _mixed(rng, ALNUM, rng.randint(20, 40))
        b64key = base64.b64encode(rng.randbytes(64)).decode()
        user = rng_choice(rng, ("app", "deploy", "sa", "svc_ci", "bob"))
        host = rng_choice(rng, ("db.internal", "sql.acme.io", "10.0.4.12"))
        ghp = "ghp_" + _mixed(rng, ALNUM, 36)
        pem = f"-----BEGIN RSA PRIVATE KEY-----\n{_pem_body(rng)}\n-----END RSA PRIVATE KEY-----\n"
        dockerauth = base64.b64encode(f"{user}:{pw}".encode()).decode()
        dockerjson = base64.b64encode(json.dumps({"auths": {"reg.acme.io": {"username": user, "password": pw}}}).encode()).decode()
        sas = base64.b64encode(rng.randbytes(32)).decode().replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
        out += [
            Sample(f"<dataSource>\n  <user>{user}</user>\n  <password>{pw}</password>\n</dataSource>", (pw,),
                   "xml-secret-element", "context", "xml"),
            Sample(f'<appSettings>\n  <add key="StorageAccountKey" value="{b64key}" />\n</appSettings>', (b64key,),
                   "xml-key-value", "context", "xml"),
            Sample(f'<property name="spring.datasource.password" value="{pw}"/>', (pw,), "xml-key-value", "context", "xml"),
            Sample(f'<entry key="api.token">{tok}</entry>', (tok,), "xml-key-text", "context", "xml"),
            Sample(f'var settings = new Dictionary<string, string> {{ {{ "AccountKey", "{tok}" }} }};', (tok,),
                   "code-pair", "context", "source"),
            Sample(f'props.put("db.password", "{pw}");', (pw,), "code-pair", "context", "source"),
            Sample(f'    dataSource.setPassword("{pw}");', (pw,), "code-call", "context", "source"),
            Sample(f'client = Client.builder().apiKey("{tok}").build();', (tok,), "code-call", "context", "source"),
            Sample(f'var cred = new NetworkCredential("{user}", "{pw}");', (pw,), "credential-constructor", "context", "source"),
            Sample(f'r = requests.get(url, auth=("{user}", "{pw}"))', (pw,), "credential-constructor", "context", "source"),
            Sample(f'db, err := sql.Open("postgres", "host={host} user={user} password={pw} dbname=app sslmode=disable")',
                   (pw,), "secret-assignment", "context", "source"),
            Sample(f'conn = psycopg2.connect("host={host} dbname=app user={user} password={pw}")', (pw,),
                   "secret-assignment", "context", "source"),
            Sample(f'"ConnectionStrings": {{ "Default": "Server=tcp:{host},1433;Database=app;User Id={user};Password={pw};Encrypt=True;" }}',
                   (pw,), "secret-assignment", "context", "json"),
            Sample(f"jdbc:sqlserver://{host}:1433;databaseName=app;user={user};password={pw};encrypt=true", (pw,),
                   "secret-assignment", "context", "ini"),
            Sample(f"Driver={{ODBC Driver 18 for SQL Server}};Server={host};Uid={user};Pwd={{{pw}}};", (pw,),
                   "connection-string-braced", "context", "ini"),
            Sample(f'psql "host={host} port=5432 user={user} password={pw} sslmode=require"', (pw,),
                   "secret-assignment", "context", "shell"),
            Sample(f"Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;"
                   f"SharedAccessKey={b64key[:44]}", (b64key[:44],), "azure-storage-key", "context", "ini"),
            Sample(f"curl 'https://acme.blob.core.windows.net/logs/app.log?sv=2022-11-02&sp=r&se=2025-01-01&sig={sas}'",
                   (sas,), "azure-sas-signature", "context", "shell"),
            Sample(f"wget 'https://files.acme.io/dl/build.tgz?token={tok}'", (tok,), "url-query-secret", "context", "shell"),
            Sample(f"GET https://api.acme.io/v2/items?api_key={tok}&limit=50", (tok,), "url-query-secret", "context", "log"),
            Sample(f"{rng_choice(rng, ('SESSION_SALT', 'SMTP_CRED', 'SIGNING_SEED', 'COOKIE_PEPPER', 'WEBHOOK_SIG'))}={pw}",
                   (pw,), "secret-assignment", "context", "env"),
            Sample(json.dumps({"config": json.dumps({"db_password": pw, "pool": 5})}), (pw,), "secret-assignment",
                   "context", "json"),
            Sample(f'{{"auths": {{"reg.acme.io": {{"auth": "{dockerauth}"}}}}}}', (dockerauth,), "base64-credentials",
                   "context", "json"),
            Sample(f"users:\n- name: admin\n  user:\n    client-key-data: {base64.b64encode(pem.encode()).decode()}",
                   (base64.b64encode(pem.encode()).decode(),), "base64-private-key", "context", "yaml"),
            Sample(f"data:\n  .dockerconfigjson: {dockerjson}\ntype: kubernetes.io/dockerconfigjson", (dockerjson,),
                   "base64-json", "context", "yaml"),
            Sample(f"E       AssertionError: assert '{ghp[:12]}...{ghp[-13:]}' == 'expected'", (f"{ghp[:12]}...{ghp[-13:]}",),
                   "truncated-token", "context", "test"),
            Sample(f"spring:\n  datasource:\n    url: jdbc:postgresql://{host}/app\n    password: \"{pw}\"", (pw,),
                   "secret-assignment", "context", "yaml"),
            Sample(f"  :password => \"{pw}\",", (pw,), "secret-assignment", "context", "source"),
            Sample(f"$config['db_password'] = '{pw}';", (pw,), "secret-assignment", "context", "source"),
            Sample(f"machine {host}\n  login {user}\n  password {pw}", (pw,), "netrc-password", "context", "ini"),
            Sample(f"{host}:5432:app:{user}:{pw}", (pw,), "pgpass-line", "context", "ini"),
            Sample(f"FROM node:20\nENV NPM_TOKEN {tok}\nRUN npm ci", (tok,), "dockerfile-env", "context", "source"),
            Sample(f"    env:\n      - name: DB_PASSWORD\n        value: \"{pw}\"", (pw,), "name-value-pair", "context", "yaml"),
            Sample(f'"environment": [{{"name": "STRIPE_SECRET", "value": "{tok}"}}]', (tok,), "name-value-pair",
                   "context", "json"),
            Sample(f"REDIS_URL=redis://:{tok}@{host}:6379/0", (tok,), "url-credentials", "context", "env"),
            Sample(f"az keyvault secret set --vault-name kv --name db --value '{pw}'", (pw,), "cli-positional-secret",
                   "context", "shell"),
        ]
    return out


# One command per tool of the command-line table, and the tools whose secret is not a flag.
CLI_TEMPLATES = (
    ("cli-ldap", "ldapsearch -x -H ldap://ldap.acme.io -D cn=admin,dc=acme,dc=io -w {pw} -b dc=acme,dc=io"),
    ("cli-redis-cli", "redis-cli -h cache.acme.io -p 6379 -a {pw} INFO"),
    ("cli-az", "az login --service-principal -u 6f1c2d3e-0a1b-4c5d-8e9f-001122334455 -p {pw} --tenant acme.io"),
    ("cli-openssl", "openssl enc -aes-256-cbc -in db.sql -out db.sql.enc -k {pw}"),
    ("cli-openssl-pass", "openssl pkcs12 -export -in c.pem -inkey k.pem -out c.p12 -passout pass:{pw}"),
    ("cli-htpasswd", "htpasswd -b /etc/nginx/.htpasswd alice {pw}"),
    ("cli-sudo-stdin", "echo '{pw}' | sudo -S apt-get update"),
    ("cli-mongo", "mongosh mongodb://db.acme.io/app -u admin -p {pw}"),
    ("cli-sqlcmd", "sqlcmd -S db.acme.io -U sa -P '{pw}' -Q \"SELECT 1\""),
    ("cli-mosquitto", "mosquitto_pub -h mq.acme.io -u sensor -P {pw} -t t/1 -m 21"),
    ("cli-keytool", "keytool -importkeystore -srckeystore a.p12 -srcstorepass {pw} -destkeystore b.jks"),
    ("cli-zip", "zip -r -P {pw} backup.zip data/"),
    ("cli-ssh-keygen", "ssh-keygen -t ed25519 -f deploy_key -N '{pw}'"),
    ("cli-userinfo-flag", "smbclient //fs.acme.io/share -U 'alice%{pw}'"),
    ("cli-positional-secret", "rabbitmqctl add_user svc {pw}"),
    ("mysql-password", "mysql -h db -u root -p{pw} app"),
    ("short-password-flag", "sshpass -p '{pw}' ssh deploy@bastion"),
    ("curl-user", "curl -u deploy:{pw} https://ci.acme.io/api"),
    ("sql-password", "psql -c \"ALTER USER app WITH PASSWORD '{pw}'\""),
    ("cli-sudo-stdin", "echo -n '{pw}' | docker login -u bot --password-stdin registry.acme.io"),
)


def _cli_samples(rng, n):
    out = []
    for _ in range(n):
        for detector, template in CLI_TEMPLATES:
            pw = _password(rng)
            out.append(Sample(template.format(pw=pw), (pw,), detector, "context", "shell"))
    return out


def pii_sentences(seed: int = 11, n: int = 40) -> list[tuple[str, str, str]]:
    """Labelled sentences with personal data: (text, kind, the value that must not survive)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        phone, iban_v, ssn_v = _valid_phone(rng), _iban(rng), _ssn(rng)
        prefix = rng_choice(rng, ("4", "51", "55", "6011", "2221"))
        card = _luhn_complete(prefix + _r(rng, DIGITS, 15 - len(prefix)))
        card_txt = rng_choice(rng, (card, " ".join(card[i:i + 4] for i in range(0, 16, 4)),
                                    "-".join(card[i:i + 4] for i in range(0, 16, 4))))
        out += [
            (rng_choice(rng, ("You can reach me at {v}.", "Call {v} if the build breaks.", "phone: {v}",
                              "Her mobile is {v}, office hours only.")).format(v=phone), "phone", phone),
            (rng_choice(rng, ("My card number is {v}, exp 09/27.", "charged {v} twice", "card={v}")).format(v=card_txt),
             "card", card_txt),
            (rng_choice(rng, ("Please wire it to {v}.", "IBAN: {v}", "refund account {v} (checking)")).format(v=iban_v),
             "iban", iban_v),
            (rng_choice(rng, ("His SSN is {v}.", "ssn={v}", "Social security number {v} on the form.")).format(v=ssn_v),
             "ssn", ssn_v),
        ]
    return out


def pii_clean_sentences() -> list[str]:
    """Sentences without personal data that carry numbers which must come through unchanged."""
    return [
        "Meeting moved to 10:30 in room 4B.", "Build 2024.11.3 took 12.5 s on 8 cores.", "Order 123456789 shipped on 2024-05-01.",
        "The ratio was 3.14159 after 1000000 iterations.", "Version 1.2.3.4 fixes CVE-2024-12345.", "Port 5432 and 6379 are open.",
        "Set max_connections = 200 and shared_buffers = 4096MB.", "The invoice total is 1,234.56 EUR.",
        "Released 10 000 units in Q3 2023.", "ISBN 978-3-16-148410-0 is on the shelf.", "Run 42 of 100 passed in 0.95 s.",
        "Timestamp 1700000000123 and seq 998877.", "Coordinates 48.8566, 2.3522.", "Use chmod 0644 on the file.",
        "The hash is 3f4e5d6c7b8a99887766554433221100ffeeddcc.", "Call the function with 3 args, not 4.",
        "Allocated 65536 bytes at 0x7ffd5e8c.", "Sprint 23 ends on 2024-06-14.", "Pin numpy==1.26.4 and scipy==1.13.0.",
        "Error code 0x80070005 means access denied.", "The matrix is 1024 x 768 pixels.", "We have 12 345 users.",
    ]


def positive_samples(seed: int = 5, per_format: int = 12) -> list[Sample]:
    rng = random.Random(seed)
    out: list[Sample] = []
    for name, make in TOKEN_MAKERS.items():
        for place, templates in KNOWN_PLACES.items():
            for i in range(per_format):
                t = make(rng)
                out.append(Sample(templates[i % len(templates)].format(t=t), (t,), name, "known", place))
    out += _private_keys(rng, per_format * 4)
    out += _context_samples(rng, per_format * 3)
    out += _pii_samples(rng, per_format * 3)
    out += _wider_context_samples(rng, per_format * 2)
    out += _cli_samples(rng, per_format)
    return out


def near_misses(seed: int = 5, n: int = 40) -> list[str]:
    """Text that looks a little like a secret and must come through unchanged."""
    rng = random.Random(seed + 1)
    out = [
        'api_key = os.environ["API_KEY"]', "token = os.getenv('GITHUB_TOKEN')", "const key = process.env.STRIPE_KEY;",
        "export GITHUB_TOKEN=$GH_TOKEN", "curl -H \"Authorization: Bearer $TOKEN\" https://api", "password: ${DB_PASSWORD}",
        "    password: ${{ secrets.DB_PASSWORD }}", "docker login --password-stdin < pw.txt", "mkdir -p build/out",
        "ssh -p 2222 deploy@bastion", "docker run -p 8080:80 -p 5432:5432 postgres:16", "self.password = password",
        "def login(self, user, password):", "token = tokens.pop()", "max_tokens = 4096", "if not api_key:",
        "secret_key = settings.SECRET_KEY", "password: str | None = None", "pip install requests==2.31.0",
        "git@github.com:acme/api.git", "npm_config_cache=/tmp/.npm npm ci", "from huggingface_hub import hf_hub_download",
        "python -m pip install -U pip setuptools wheel", "listening on http://127.0.0.1:8000", "bind 0.0.0.0:443",
        "@dataclasses.dataclass(frozen=True)", "assert len(token) == 40", "mysql -u root -p app", "curl -u $USER:$PASS https://h",
        "    def test_password_reset_sends_email(self):", "KEY_FILE=~/.ssh/id_ed25519", "primary_key=True",
        "TOKEN_URL = 'https://oauth2.googleapis.com/token'", "password_hash = bcrypt.hashpw(pw, salt)",
        "    tokenizer = AutoTokenizer.from_pretrained(model_id)", "keys = sorted(secrets_by_name)",
        # placeholders, with and without a real prefix
        "GITLAB_TOKEN=glpat-XXXXXXXXXXXXXXXXXXXX", "token: ghu_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        'password: "<your-password>"', 'api_key = "${API_KEY}"', 'secret = "%(secret)s"', 'password: "{{ db_password }}"',
        "DB_PASSWORD=changeme", "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE", '"api_key": "your_api_key_here"',
        'password = "dummy"', 'token = "test"', "SECRET_KEY=aaaaaaaaaaaaaaaa", "password=12345678",
        "api_key: abcdefghijklmnop", 'STRIPE_KEY="sk_live_000000000000000000000000"', "export OPENAI_API_KEY=sk-...",
        "<password>changeme</password>", '<add key="ApiKey" value="YOUR-API-KEY" />', "SLACK_TOKEN=xoxb-your-token-here",
        'headers = {"Authorization": "Bearer <token>"}', "PASSWORD=********", 'client_secret: "REPLACE_ME"',
        # references and calls
        "password = get_password()", 'token = os.environ.get("TOKEN")', "apiKey: process.env.API_KEY,",
        'secret := os.Getenv("SECRET")', 'password = config["password"]', "$password = getenv('DB_PASSWORD');",
        'secret_key_base = ENV.fetch("SECRET_KEY_BASE")', "ds.setPassword(props.getProperty(\"db.password\"));",
        "var cred = new NetworkCredential(user, password);", 'requests.get(url, auth=(user, password))',
        'psycopg2.connect(host=host, user=user, password=password)', "redis-cli -a $REDIS_PASSWORD ping",
        # keys without values
        "password:", "API_TOKEN=", '"secret": ""', "<password/>", "<password></password>", "--password",
        # wrong length or alphabet for their format
        "ghp_1234abcd", "AKIA12345", "xoxb-123", "sk_live_short", "AIzaSyShort", "glpat-abc",
        # typed, not generated: alphabet runs in the token's body; paths where a key file is named
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789", "sk-proj-abcdefghijklmnopqrstuvwxyz1234567890ABCDEFGH",
        "xoxb-123456789012-123456789012-abcdefghijklmnopqrstuvwx", "private_key: ~/.ssh/id_rsa",
        "kubectl create secret generic db --from-file=password=./pw.txt", 'ssl_key_password_file: "/etc/ssl/private/pw"',
        'mongodb://<username>:<password>@cluster0.mongodb.net/test', "password: !Ref DbPassword",
        # keys that only look secret-bearing
        "credential_source: Ec2InstanceMetadata", "tokenizer: bert-base-uncased", "TOKEN_AUDIENCE=api://default",
        "token_endpoint_auth_method: client_secret_basic", "secret_backend: vault", "keyboard_layout: us-intl",
        # key bindings, public keys and certificates
        '{ "key": "ctrl+shift+down", "command": "editor.action.copyLinesDownAction" }', '"key": "cmd+k cmd+s",',
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGk2Zq8Lm2Pw4Rt6Vy1Nc3Df5Gh7Jk0Xq9Zs8Bv7Cn6 alice@laptop",
        "-----BEGIN PUBLIC KEY-----", "-----BEGIN CERTIFICATE-----",
        "    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJrVENCK3dJSkFPCi0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K",
        '"auth": "b2F1dGgy"', "token_type: bearer", "secret_name: db-creds", "password_min_length = 12",
        # command lines without a secret
        "redis-cli -h cache -p 6379 ping", "ssh-keygen -t ed25519 -N ''", "openssl rsa -passin env:KEY_PW -in a.key",
        "echo hello | sudo tee /etc/motd", "ldapsearch -x -W -b dc=acme", "az login", "htpasswd -c .htpasswd alice",
        "sqlcmd -S db -E -Q 'SELECT 1'", "7z a -mx=9 out.7z src/", "zip -r out.zip src/",
        "https://shop.acme.io/search?key=summer-dress&page=2", "https://x.io/cb?code=200&state=ok",
    ]
    for _ in range(n):
        sha = _r(rng, HEX, 40)
        uuid = "-".join(_r(rng, HEX, k) for k in (8, 4, 4, 4, 12))
        ver = f"{rng.randint(0, 9)}.{rng.randint(0, 40)}.{rng.randint(0, 20)}"
        integrity = base64.b64encode(rng.randbytes(64)).decode()
        out += [
            f"git checkout {sha}", f"git log --oneline {sha[:7]}..HEAD", f"Merge: {sha[:7]} {_r(rng, HEX, 7)}",
            f"request_id={uuid} status=200 duration_ms={rng.randint(1, 900)}",
            f'    "integrity": "sha512-{integrity}",',
            f'    {{file = "pkg-{ver}-py3-none-any.whl", hash = "sha256:{_r(rng, HEX, 64)}"}},',
            f'  resolved "https://registry.yarnpkg.com/lodash/-/lodash-{ver}.tgz#{sha}"',
            f'"version": "{ver}"', f"numpy=={ver}", f"{_r(rng, HEX, 64)}  dist/tracecap-{ver}.tar.gz",
            f"ts={rng.randint(1_600_000_000_000_000_000, 1_800_000_000_000_000_000)} seq={rng.randint(1, 10**6)}",
            f"2024-0{rng.randint(1, 9)}-1{rng.randint(0, 9)} 1{rng.randint(0, 9)}:3{rng.randint(0, 9)}:0{rng.randint(0, 9)},123 INFO ok",
            f"image: ghcr.io/acme/api@sha256:{_r(rng, HEX, 64)}",
        ]
    return out


def stdlib_lines(max_files: int = 120) -> list[str]:
    """Non-empty lines of real standard-library modules, read from the running Python."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))[:max_files]
    for pkg in ("json", "email", "http", "urllib", "logging", "asyncio"):
        files += sorted((root / pkg).glob("*.py"))
    lines = []
    for f in files:
        try:
            lines += [ln for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError):
            continue
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.redaction_corpus.generate OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "positives.jsonl", "w") as f:
        for s in positive_samples():
            f.write(json.dumps(dataclasses.asdict(s)) + "\n")
    (out / "near_misses.txt").write_text("\n".join(near_misses()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
