"""An evaluation set written apart from the detectors: secrets in the places engineers put them,
and look-alikes that must come through unchanged.

Takes a seed; gives `secret_samples()` (each a small file or fragment, its category and the exact
secret strings it holds) and `look_alikes()` (texts that hold no secret). Token shapes follow the
providers' own descriptions of their formats (prefix, alphabet, length, checksum where there is
one); the random parts come from a seeded RNG, so every value is this set's own and the set is the
same on every run. The categories are the places, not the detectors: a token format counts as
found only when the value is gone from the output, whichever detector took it.
"""
from __future__ import annotations

import base64
import binascii
import json
import random
from dataclasses import dataclass

UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LOWER = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
ALNUM = UPPER + LOWER + DIGITS
HEX = "0123456789abcdef"
B64 = ALNUM + "+/"
B64URL = ALNUM + "-_"
BASE32 = UPPER + "234567"
BASE62 = DIGITS + UPPER + LOWER
WORDS = ["river", "copper", "lantern", "orbit", "maple", "falcon", "harbor", "velvet", "quartz",
         "meadow", "ember", "tundra", "cobalt", "willow", "saffron", "glacier", "pepper", "summit"]


@dataclass(frozen=True)
class Sample:
    category: str
    name: str
    text: str
    secrets: tuple[str, ...]


@dataclass(frozen=True)
class LookAlike:
    category: str
    name: str
    text: str


class Gen:
    """Seeded random values in the shapes credentials take."""

    def __init__(self, seed: int):
        self.r = random.Random(seed)

    def s(self, alphabet: str, n: int) -> str:
        return "".join(self.r.choice(alphabet) for _ in range(n))

    def hex(self, n: int) -> str:
        return self.s(HEX, n)

    def b64(self, nbytes: int) -> str:
        return base64.b64encode(self.r.randbytes(nbytes)).decode()

    def b64url(self, nbytes: int) -> str:
        return base64.urlsafe_b64encode(self.r.randbytes(nbytes)).decode().rstrip("=")

    def digits(self, n: int) -> str:
        return str(self.r.randint(1, 9)) + self.s(DIGITS, n - 1)

    def password(self) -> str:
        """What people type as a password: words, digits, a symbol, or a generator's output."""
        kind = self.r.randrange(5)
        if kind == 0:
            return (self.r.choice(WORDS).capitalize() + self.r.choice("!@#%&*-_.") +
                    self.digits(4) + self.r.choice(WORDS))
        if kind == 1:
            return self.s(ALNUM + "!#%^*-_=+", self.r.randint(14, 24))
        if kind == 2:
            return self.s(ALNUM, self.r.randint(16, 32))
        if kind == 3:
            w = [self.r.choice(WORDS) for _ in range(3)]
            return "-".join(w) + self.digits(2)
        return self.s(LOWER + DIGITS, 6) + self.s(UPPER, 2) + self.s(DIGITS + "@$!", 4)

    def uuid(self) -> str:
        h = self.hex(32)
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{self.r.choice('89ab')}{h[17:20]}-{h[20:]}"

    def pem_key(self, kind: str = "PRIVATE KEY", lines: int = 6) -> str:
        body = base64.b64encode(self.r.randbytes(48 * lines)).decode()
        rows = [body[i:i + 64] for i in range(0, len(body), 64)]
        return f"-----BEGIN {kind}-----\n" + "\n".join(rows) + f"\n-----END {kind}-----"

    def jwt(self, claims: dict | None = None) -> str:
        head = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').decode().rstrip("=")
        body = claims or {"sub": self.digits(8), "iat": 1760000000 + self.r.randrange(10**6),
                          "role": self.r.choice(["service_role", "admin", "user"])}
        b = base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")
        return f"{head}.{b}.{self.b64url(32)}"

    # ---- provider formats, from each provider's description of its tokens ----
    def github(self, prefix: str) -> str:
        rnd = self.s(ALNUM, 30)
        crc = binascii.crc32(rnd.encode())
        tail = ""
        while crc:
            crc, d = divmod(crc, 62)
            tail = BASE62[d] + tail
        return prefix + rnd + tail.rjust(6, "0")

    def github_fine(self) -> str:
        return "github_pat_11" + self.s(UPPER + DIGITS, 20) + "_" + self.s(ALNUM, 59)

    def azure_storage_key(self) -> str:
        return self.b64(64)

    def azure_client_secret(self) -> str:
        return self.s(ALNUM, 3) + self.r.choice(DIGITS) + "Q~" + self.s(ALNUM + "_-.~", 34)

    def aws_key_id(self, prefix: str = "AKIA") -> str:
        return prefix + self.s(BASE32, 16)

    def aws_secret(self) -> str:
        return self.s(ALNUM + "/+", 40)

    def slack(self, prefix: str) -> str:
        return f"{prefix}-{self.digits(11)}-{self.digits(13)}-{self.s(ALNUM, 24)}"


def provider_tokens(g: Gen) -> list[tuple[str, str]]:
    """(format name, token) pairs: one of each format this set knows."""
    return [
        ("aws-access-key-id", g.aws_key_id("AKIA")),
        ("aws-temp-key-id", g.aws_key_id("ASIA")),
        ("gcp-api-key", "AIza" + g.s(B64URL, 35)),
        ("gcp-oauth-access", "ya29." + g.s(B64URL, 120)),
        ("gcp-oauth-refresh", "1//0" + g.s(B64URL, 99)),
        ("azure-client-secret", g.azure_client_secret()),
        ("github-pat", g.github("ghp_")),
        ("github-oauth", g.github("gho_")),
        ("github-app-user", g.github("ghu_")),
        ("github-app-install", g.github("ghs_")),
        ("github-refresh", g.github("ghr_")),
        ("github-fine-grained", g.github_fine()),
        ("gitlab-pat", "glpat-" + g.s(B64URL, 20)),
        ("gitlab-deploy", "gldt-" + g.s(B64URL, 20)),
        ("gitlab-runner", "glrt-" + g.s(B64URL, 20)),
        ("gitlab-pipeline-trigger", "glptt-" + g.hex(40)),
        ("gitlab-runner-registration", "GR1348941" + g.s(B64URL, 20)),
        ("bitbucket-app-password", "ATBB" + g.s(ALNUM, 32)),
        ("atlassian-api-token", "ATATT3xFfGF0" + g.s(B64URL, 170) + "=" + g.s(HEX.upper(), 8)),
        ("slack-bot", g.slack("xoxb")),
        ("slack-user", g.slack("xoxp")),
        ("slack-app-level", f"xapp-1-A{g.s(UPPER + DIGITS, 10)}-{g.digits(13)}-{g.hex(64)}"),
        ("slack-webhook", f"https://hooks.slack.com/services/T{g.s(UPPER + DIGITS, 10)}/"
                          f"B{g.s(UPPER + DIGITS, 10)}/{g.s(ALNUM, 24)}"),
        ("discord-bot", base64.b64encode(g.digits(18).encode()).decode().rstrip("=") + "."
                        + g.s(B64URL, 6) + "." + g.s(B64URL, 38)),
        ("discord-webhook", f"https://discord.com/api/webhooks/{g.digits(19)}/{g.s(B64URL, 68)}"),
        ("stripe-secret", "sk_live_" + g.s(ALNUM, 99)),
        ("stripe-restricted", "rk_live_" + g.s(ALNUM, 99)),
        ("stripe-webhook-secret", "whsec_" + g.s(ALNUM, 32)),
        ("twilio-api-key-secret", "SK" + g.hex(32)),
        ("sendgrid", f"SG.{g.s(B64URL, 22)}.{g.s(B64URL, 43)}"),
        ("mailgun", "key-" + g.hex(32)),
        ("npm", "npm_" + g.s(ALNUM, 36)),
        ("pypi", "pypi-AgEIcHlwaS5vcmc" + g.s(B64URL, 140)),
        ("dockerhub-pat", "dckr_pat_" + g.s(B64URL, 27)),
        ("huggingface", "hf_" + g.s(UPPER + LOWER, 34)),
        ("openai-project", "sk-proj-" + g.s(B64URL, 120) + "T3BlbkFJ" + g.s(B64URL, 40)),
        ("openai-legacy", "sk-" + g.s(ALNUM, 20) + "T3BlbkFJ" + g.s(ALNUM, 20)),
        ("anthropic", "sk-ant-api03-" + g.s(B64URL, 93) + "AA"),
        ("anthropic-admin", "sk-ant-admin01-" + g.s(B64URL, 93) + "AA"),
        ("newrelic-user-key", "NRAK-" + g.s(UPPER + DIGITS, 27)),
        ("newrelic-license", g.hex(36) + "NRAL"),
        ("sentry-user-token", "sntryu_" + g.hex(64)),
        ("sentry-org-token", "sntrys_" + base64.b64encode(json.dumps(
            {"iat": 1760000000, "url": "https://sentry.io", "region_url": "https://us.sentry.io",
             "org": "acme"}).encode()).decode().rstrip("=") + "_" + g.s(B64URL, 43)),
        ("shopify-access", "shpat_" + g.hex(32)),
        ("shopify-shared-secret", "shpss_" + g.hex(32)),
        ("shopify-custom-app", "shpca_" + g.hex(32)),
        ("square-access", "EAAA" + g.s(B64URL, 60)),
        ("square-oauth-secret", "sq0csp-" + g.s(B64URL, 43)),
        ("braintree-access", f"access_token$production${g.s(LOWER + DIGITS, 16)}${g.hex(32)}"),
        ("okta-api", "00" + g.s(B64URL, 40)),
        ("vault-service", "hvs." + g.s(B64URL, 24)),
        ("vault-batch", "hvb." + g.s(B64URL, 138)),
        ("terraform-cloud", f"{g.s(ALNUM, 14)}.atlasv1.{g.s(ALNUM, 67)}"),
        ("digitalocean-pat", "dop_v1_" + g.hex(64)),
        ("digitalocean-oauth", "doo_v1_" + g.hex(64)),
        ("heroku", "HRKU-AA" + g.s(B64URL, 58)),
        ("linear", "lin_api_" + g.s(ALNUM, 40)),
        ("notion-legacy", "secret_" + g.s(ALNUM, 43)),
        ("notion", "ntn_" + g.digits(11) + g.s(ALNUM, 35)),
        ("postman", f"PMAK-{g.hex(24)}-{g.hex(34)}"),
        ("databricks", "dapi" + g.hex(32)),
        ("supabase-pat", "sbp_" + g.hex(40)),
        ("supabase-secret", "sb_secret_" + g.s(B64URL, 31)),
        ("planetscale-password", "pscale_pw_" + g.s(B64URL, 43)),
        ("planetscale-token", "pscale_tkn_" + g.s(B64URL, 43)),
        ("grafana-service-account", f"glsa_{g.s(ALNUM, 32)}_{g.hex(8)}"),
        ("grafana-cloud", "glc_" + g.s(B64, 120) + "=="),
        ("telegram-bot", f"{g.digits(10)}:AA{g.s(B64URL, 33)}"),
        ("age-secret-key", "AGE-SECRET-KEY-1" + g.s("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58)),
        ("doppler", "dp.st.prd." + g.s(ALNUM, 40)),
        ("pulumi", "pul-" + g.hex(40)),
        ("groq", "gsk_" + g.s(ALNUM, 52)),
        ("replicate", "r8_" + g.s(ALNUM, 37)),
        ("perplexity", "pplx-" + g.s(ALNUM, 48)),
        ("xai", "xai-" + g.s(ALNUM, 80)),
        ("tailscale", f"tskey-auth-{g.s(ALNUM, 12)}CNTRL-{g.s(ALNUM, 33)}"),
        ("mapbox-secret", "sk." + g.jwt({"u": "acme", "a": "ck" + g.s(LOWER + DIGITS, 20)})),
        ("airtable-pat", f"pat{g.s(ALNUM, 14)}.{g.hex(64)}"),
        ("figma", "figd_" + g.s(B64URL, 40)),
        ("mailchimp", g.hex(32) + "-us" + str(g.r.randint(2, 21))),
        ("contentful", "CFPAT-" + g.s(B64URL, 43)),
        ("alibaba-access-key-id", "LTAI" + g.s(ALNUM, 20)),
        ("rubygems", "rubygems_" + g.hex(48)),
        ("clojars", "CLOJARS_" + g.hex(60)),
        ("jwt", g.jwt()),
        ("flyio", "FlyV1 fm2_" + g.s(B64, 300)),
        ("langsmith", "lsv2_pt_" + g.hex(32) + "_" + g.hex(10)),
        ("onepassword-service-account", "ops_eyJ" + g.s(B64URL, 400)),
        ("stripe-test-secret", "sk_test_" + g.s(ALNUM, 99)),
        ("gitlab-ci-build", "glcbt-" + g.s(B64URL, 20)),
        ("gitlab-oauth-app-secret", "gloas-" + g.hex(64)),
        ("gitlab-agent", "glagent-" + g.s(B64URL, 50)),
        ("gitlab-feed", "glft-" + g.s(B64URL, 20)),
        ("atlassian-repo-token", "ATCTT3xFfGN0" + g.s(B64URL, 170) + "=" + g.s(HEX.upper(), 8)),
        ("slack-config-refresh", "xoxe-1-" + g.s(ALNUM, 140)),
        ("slack-legacy-workspace", f"xoxa-2-{g.digits(12)}-{g.digits(12)}-{g.digits(12)}-{g.hex(64)}"),
        ("sonarqube-user", "squ_" + g.hex(40)),
        ("sonarqube-project", "sqp_" + g.hex(40)),
        ("jfrog-api-key", "AKCp" + g.s(ALNUM, 69)),
        ("dynatrace", f"dt0c01.{g.s(UPPER + DIGITS, 24)}.{g.s(UPPER + DIGITS, 64)}"),
        ("doppler-personal", "dp.pt." + g.s(ALNUM, 43)),
        ("launchdarkly-sdk", "sdk-" + g.uuid()),
        ("launchdarkly-api", "api-" + g.uuid()),
        ("shippo", "shippo_live_" + g.hex(40)),
        ("adafruit-io", "aio_" + g.s(ALNUM, 28)),
        ("plaid-access", "access-production-" + g.uuid()),
        ("infracost", "ico-" + g.s(ALNUM, 32)),
        ("prefect", "pnu_" + g.s(ALNUM, 36)),
        ("readme", "rdme_" + g.s(LOWER + DIGITS, 70)),
        ("scalingo", "tk-us-" + g.s(B64URL, 48)),
        ("huggingface-org", "api_org_" + g.s(UPPER + LOWER, 34)),
        ("easypost", "EZAK" + g.s(ALNUM, 54)),
        ("facebook-access", "EAAB" + g.s(ALNUM, 180)),
        ("twitter-bearer", "AAAAAAAAAAAAAAAAAAAAA" + g.s(ALNUM + "%", 80)),
        ("firebase-fcm-server", f"AAAA{g.s(B64URL, 7)}:APA91b{g.s(B64URL, 134)}"),
        ("mailgun-new", f"{g.hex(32)}-{g.hex(8)}-{g.hex(8)}"),
        ("cloudinary-url", f"cloudinary://{g.digits(15)}:{g.s(B64URL, 27)}@acme"),
        ("sentry-legacy-dsn", f"https://{g.hex(32)}:{g.hex(32)}@sentry.acme.io/12"),
        ("azure-sas-query", "?sv=2022-11-02&ss=bfqt&srt=sco&sp=rwdlacupiytfx&se=2027-01-01T00:00:00Z"
                            f"&spr=https&sig={g.b64(32).replace('+', '%2B').replace('/', '%2F').replace('=', '%3D')}"),
    ]


def context_tokens(g: Gen) -> list[tuple[str, str, str]]:
    """(format, env-style key, value) for credentials with no prefix: only where they stand says
    what they are."""
    return [
        ("datadog-api-key", "DD_API_KEY", g.hex(32)),
        ("datadog-app-key", "DD_APP_KEY", g.hex(40)),
        ("twilio-auth-token", "TWILIO_AUTH_TOKEN", g.hex(32)),
        ("azure-devops-pat", "AZURE_DEVOPS_EXT_PAT", g.s(LOWER + "234567", 52)),
        ("azure-storage-key", "AZURE_STORAGE_KEY", g.azure_storage_key()),
        ("azure-openai", "AZURE_OPENAI_API_KEY", g.hex(32)),
        ("cloudflare-api-token", "CLOUDFLARE_API_TOKEN", g.s(B64URL, 40)),
        ("cloudflare-global-key", "CLOUDFLARE_API_KEY", g.hex(37)),
        ("heroku-legacy", "HEROKU_API_KEY", g.uuid()),
        ("snyk", "SNYK_TOKEN", g.uuid()),
        ("auth0-client-secret", "AUTH0_CLIENT_SECRET", g.s(B64URL, 64)),
        ("paypal-client-secret", "PAYPAL_CLIENT_SECRET", "E" + g.s(B64URL, 79)),
        ("okta-client-secret", "OKTA_CLIENT_SECRET", g.s(B64URL, 40)),
        ("algolia-admin", "ALGOLIA_ADMIN_API_KEY", g.hex(32)),
        ("mistral", "MISTRAL_API_KEY", g.s(ALNUM, 32)),
        ("cohere", "COHERE_API_KEY", g.s(ALNUM, 40)),
        ("vault-legacy", "VAULT_TOKEN", "s." + g.s(ALNUM, 24)),
        ("postmark", "POSTMARK_SERVER_TOKEN", g.uuid()),
        ("pagerduty", "PAGERDUTY_TOKEN", "u+" + g.s(B64URL, 18)),
        ("segment", "SEGMENT_WRITE_KEY", g.s(ALNUM, 32)),
        ("vercel", "VERCEL_TOKEN", g.s(ALNUM, 24)),
        ("zendesk", "ZENDESK_API_TOKEN", g.s(ALNUM, 40)),
        ("circleci", "CIRCLE_TOKEN", g.hex(40)),
        ("netlify", "NETLIFY_AUTH_TOKEN", g.s(B64URL, 43)),
        ("codecov", "CODECOV_TOKEN", g.uuid()),
        ("rails-master-key", "RAILS_MASTER_KEY", g.hex(32)),
        ("laravel-app-key", "APP_KEY", "base64:" + g.b64(32)),
        ("nextauth-secret", "NEXTAUTH_SECRET", g.b64(32)),
        ("jwt-secret", "JWT_SECRET", g.s(ALNUM, 48)),
        ("encryption-key", "ENCRYPTION_KEY", g.hex(64)),
        ("webhook-secret", "GITHUB_WEBHOOK_SECRET", g.hex(40)),
        ("smtp-password", "SMTP_PASSWORD", g.password()),
        ("ldap-bind", "LDAP_BIND_PASSWORD", g.password()),
        ("minio-secret", "MINIO_ROOT_PASSWORD", g.s(ALNUM, 32)),
        ("gcs-hmac-secret", "GCS_HMAC_SECRET", g.s(B64, 40)),
        ("kafka-sasl", "KAFKA_SASL_PASSWORD", g.s(B64URL, 64)),
        ("elastic", "ELASTIC_PASSWORD", g.s(ALNUM, 20)),
        ("grafana-admin", "GF_SECURITY_ADMIN_PASSWORD", g.password()),
        ("keycloak-admin", "KEYCLOAK_ADMIN_PASSWORD", g.password()),
        ("openvpn-auth", "VPN_PASS", g.password()),
    ]


def _camel(key: str) -> str:
    parts = key.lower().split("_")
    return parts[0] + "".join(p.capitalize() for p in parts[1:])


def _context_wrappers(key: str, value: str) -> list[tuple[str, str]]:
    sect, _, rest = key.partition("_")
    return [
        ("env", f"{key}={value}\n"),
        ("yaml", f"{sect.lower()}:\n  {rest.lower() or 'key'}: {value}\n  timeout: 30\n"),
        ("json", f'{{\n  "{_camel(key)}": "{value}",\n  "retries": 3\n}}\n'),
        ("python", f'{key} = "{value}"\n'),
        ("gha", f"env:\n  {key}: '{value}'\n"),
        ("shell", f"export {key}='{value}'\n"),
        ("docker-run", f"docker run --rm -e {key}={value} acme/app:1.4\n"),
        ("k8s-env", f"        - name: {key}\n          value: \"{value}\"\n"),
    ]


def _token_wrappers(g: Gen, fmt: str, tok: str) -> list[tuple[str, str]]:
    """Places a provider token stands in, most with a key that names the provider only."""
    env = fmt.upper().replace("-", "_").split("_")[0] + "_" + g.r.choice(["KEY", "TOKEN", "SECRET"])
    return [
        ("env", f"# added by setup script\n{env}={tok}\nLOG_LEVEL=info\n"),
        ("yaml", f"integrations:\n  {fmt.split('-')[0]}:\n    enabled: true\n    value: \"{tok}\"\n"),
        ("code", f'client = Client(\n    "{tok}",\n    timeout=30,\n)\n'),
        ("header", f"curl -sS -H 'Authorization: Bearer {tok}' https://api.example.net/v1/me\n"),
        ("log", f"2026-03-04T10:22:01Z DEBUG http: sending request with credential '{tok}' "
                f"to upstream\n"),
        ("test-output", f"E       AssertionError: assert '{tok}' == 'expected'\n"),
    ]


def secret_samples(seed: int = 2718) -> list[Sample]:
    g = Gen(seed)
    out: list[Sample] = []

    # ---- provider formats in six places each (two rounds of random values) ----
    for rnd in range(2):
        for fmt, tok in provider_tokens(g):
            wrappers = _token_wrappers(g, fmt, tok)
            for i in (rnd * 3, rnd * 3 + 1, rnd * 3 + 2):
                place, text = wrappers[i]
                out.append(Sample("provider-token", f"{fmt}/{place}", text, (tok,)))

    def add(cat: str, name: str, text: str, *secrets: str) -> None:
        out.append(Sample(cat, name, text, tuple(secrets)))

    # ---- credentials without a prefix, in the places their keys stand ----
    for rnd in range(2):
        for fmt, key, value in context_tokens(g):
            wrappers = _context_wrappers(key, value)
            for i in range(rnd * 4, rnd * 4 + 4):
                place, text = wrappers[i]
                add("context-token", f"{fmt}/{place}", text, value)

    for _ in range(3):
        pw, pw2, key = g.password(), g.password(), g.b64(32)
        ak, sk = g.aws_key_id(), g.aws_secret()

        # ---- YAML ----
        add("yaml", "spring-application.yml", f"""spring:
  application:
    name: billing
  datasource:
    url: jdbc:postgresql://db.internal:5432/billing
    username: billing_app
    password: {pw}
  jpa:
    hibernate:
      ddl-auto: validate
""", pw)
        add("yaml", "docker-compose.yml", f"""services:
  db:
    image: postgres:16
    environment:
      POSTGRES_USER: app
      POSTGRES_PASSWORD: "{pw}"
  api:
    build: .
    environment:
      - SECRET_KEY={key}
      - DEBUG=0
""", pw, key)
        t = g.s(ALNUM, 40)
        add("yaml", "k8s-secret.yaml", f"""apiVersion: v1
kind: Secret
metadata:
  name: api-credentials
type: Opaque
stringData:
  api-token: {t}
  db-password: '{pw2}'
""", t, pw2)
        cs = g.s(B64URL, 40)
        add("yaml", "github-actions.yml", f"""jobs:
  deploy:
    runs-on: ubuntu-latest
    env:
      REGISTRY: ghcr.io
      DEPLOY_TOKEN: {cs}
    steps:
      - uses: actions/checkout@v4
""", cs)
        cid, csec = g.uuid(), g.s(ALNUM + "-_~.", 40)
        add("yaml", "oauth-client.yml", f"""security:
  oauth2:
    client:
      registration:
        corp:
          client-id: {cid}
          client-secret: {csec}
          scope: openid,profile
""", csec)
        rp = g.password()
        add("yaml", "ansible-vars.yml", f"""---
mysql_root_password: {rp}
mysql_databases:
  - name: wordpress
""", rp)
        hp = g.password()
        add("yaml", "helm-values.yaml", f"""redis:
  auth:
    enabled: true
    password: "{hp}"
  master:
    persistence:
      size: 8Gi
""", hp)

        # ---- JSON ----
        js = g.s(ALNUM, 32)
        add("json", "appsettings.json", json.dumps({
            "Logging": {"LogLevel": {"Default": "Information"}},
            "ConnectionStrings": {"Default": f"Server=sql01;Database=Shop;User Id=shop;Password={pw};"},
            "Jwt": {"Issuer": "shop", "SigningKey": js},
        }, indent=2) + "\n", pw, js)
        pk = g.pem_key()
        sa = {"type": "service_account", "project_id": "acme-prod-" + g.digits(6),
              "private_key_id": g.hex(40), "private_key": pk + "\n",
              "client_email": "deployer@acme-prod.iam.gserviceaccount.com",
              "client_id": g.digits(21), "auth_uri": "https://accounts.google.com/o/oauth2/auth",
              "token_uri": "https://oauth2.googleapis.com/token"}
        body = pk.splitlines()[3]
        add("json", "gcloud-service-account.json", json.dumps(sa, indent=2) + "\n", body)
        user, dpw = "ci-bot", g.password()
        auth = base64.b64encode(f"{user}:{dpw}".encode()).decode()
        add("docker-cloud", "docker-config.json", json.dumps(
            {"auths": {"registry.acme.io": {"auth": auth}, "https://index.docker.io/v1/": {}},
             "credsStore": "desktop"}, indent="\t") + "\n", auth)
        tok = g.s(ALNUM, 36)
        add("json", "vscode-settings.json", json.dumps(
            {"editor.tabSize": 2, "sonarlint.connectedMode.connections.sonarqube": [
                {"serverUrl": "https://sonar.acme.io", "token": tok}]}, indent=4) + "\n", tok)
        ak2 = g.s(HEX, 32)
        add("json", "package-config.json", '{\n  "name": "web",\n  "config": {\n'
            f'    "apiKey": "{ak2}",\n    "port": 8080\n  }}\n}}\n', ak2)
        mp = g.password()
        add("json", "terraform-state-fragment.json", json.dumps({"resources": [{"type": "aws_db_instance",
            "instances": [{"attributes": {"username": "admin", "password": mp, "port": 5432}}]}]},
            indent=2) + "\n", mp)

        # ---- XML ----
        xp = g.password()
        add("xml", "web.config", f"""<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <connectionStrings>
    <add name="Main" connectionString="Data Source=sql02;Initial Catalog=Orders;User ID=orders;Password={xp};" providerName="System.Data.SqlClient" />
  </connectionStrings>
  <appSettings>
    <add key="StorageAccountKey" value="{key}" />
    <add key="PageSize" value="50" />
  </appSettings>
</configuration>
""", xp, key)
        mvn = g.password()
        add("xml", "maven-settings.xml", f"""<settings>
  <servers>
    <server>
      <id>nexus-releases</id>
      <username>deploy</username>
      <password>{mvn}</password>
    </server>
  </servers>
</settings>
""", mvn)
        nug = g.s(LOWER + DIGITS, 46)
        add("xml", "NuGet.Config", f"""<configuration>
  <packageSourceCredentials>
    <AcmeFeed>
      <add key="Username" value="build" />
      <add key="ClearTextPassword" value="{nug}" />
    </AcmeFeed>
  </packageSourceCredentials>
</configuration>
""", nug)
        tp = g.password()
        add("xml", "tomcat-users.xml", f"""<tomcat-users>
  <role rolename="manager-gui"/>
  <user username="tomcat" password="{tp}" roles="manager-gui"/>
</tomcat-users>
""", tp)
        hk = g.password()
        add("xml", "hibernate.cfg.xml", f"""<hibernate-configuration>
  <session-factory>
    <property name="hibernate.connection.url">jdbc:mysql://localhost/shop</property>
    <property name="hibernate.connection.username">shop</property>
    <property name="hibernate.connection.password">{hk}</property>
  </session-factory>
</hibernate-configuration>
""", hk)

        # ---- INI / TOML / properties / env ----
        add("ini-toml", "aws-credentials", f"""[default]
aws_access_key_id = {ak}
aws_secret_access_key = {sk}

[prod]
aws_access_key_id={g.aws_key_id()}
region=eu-west-1
""", ak, sk)
        sts_key, sts_sec, sts_tok = g.aws_key_id("ASIA"), g.aws_secret(), "IQoJb3JpZ2luX2Vj" + g.s(B64, 300)
        add("ini-toml", "aws-credentials-session", f"""[sso-dev]
aws_access_key_id = {sts_key}
aws_secret_access_key = {sts_sec}
aws_session_token = {sts_tok}
""", sts_key, sts_sec, sts_tok)
        pypi = "pypi-AgEIcHlwaS5vcmc" + g.s(B64URL, 140)
        add("ini-toml", ".pypirc", f"""[distutils]
index-servers =
    pypi

[pypi]
username = __token__
password = {pypi}
""", pypi)
        npm = "npm_" + g.s(ALNUM, 36)
        add("ini-toml", ".npmrc", f"""registry=https://registry.npmjs.org/
//registry.npmjs.org/:_authToken={npm}
@acme:registry=https://npm.pkg.github.com
""", npm)
        legacy = base64.b64encode(f"deploy:{g.password()}".encode()).decode()
        add("ini-toml", ".npmrc-legacy", f"""registry=https://nexus.acme.io/repository/npm/
_auth={legacy}
always-auth=true
""", legacy)
        dp = g.password()
        add("ini-toml", "application.properties", f"""server.port=8080
spring.datasource.url=jdbc:mysql://db:3306/app
spring.datasource.username=app
spring.datasource.password={dp}
spring.mail.password = {pw2}
""", dp, pw2)
        tfp = g.password()
        tfs = g.azure_client_secret()
        add("ini-toml", "terraform.tfvars", f"""region           = "eu-central-1"
db_password      = "{tfp}"
arm_client_secret = "{tfs}"
instance_count   = 3
""", tfp, tfs)
        cp = g.s(ALNUM, 24)
        add("ini-toml", "pyproject-like.toml", f"""[tool.poetry]
name = "svc"

[database]
host = "db.internal"
user = "svc"
password = "{cp}"
""", cp)
        e1, e2, e3 = g.s(ALNUM, 40), g.password(), g.hex(64)
        add("ini-toml", ".env", f"""NODE_ENV=production
DATABASE_URL=postgres://app:{e2}@db:5432/app
SESSION_SECRET={e3}
MAILER_API_KEY="{e1}"
PORT=3000
""", e1, e2, e3)
        dj = g.s(ALNUM + "!@#$%^&*(-_=+)", 50)
        add("ini-toml", "django-settings.py", f"""DEBUG = False
SECRET_KEY = '{dj}'
ALLOWED_HOSTS = ["app.acme.io"]
""", dj)
        pgp = g.password()
        add("ini-toml", ".pgpass", f"db.internal:5432:billing:billing_app:{pgp}\n", pgp)
        netrc = g.s(ALNUM, 40)
        add("ini-toml", ".netrc", f"machine api.heroku.com\n  login ops@acme.io\n  password {netrc}\n", netrc)
        gitc = g.github("ghp_")
        add("ini-toml", ".git-credentials", f"https://deploy:{gitc}@github.com\n", gitc)
        gp = g.password()
        add("ini-toml", "odbc.ini", f"""[ReportsDSN]
Driver = PostgreSQL Unicode
Servername = reports.db
Username = reporter
Password = {gp}
""", gp)
        ex = g.s(ALNUM, 32)
        add("ini-toml", "shell-export", f"export OPENWEATHER_API_KEY={ex}\nexport PATH=$PATH:~/bin\n", ex)

        # ---- .NET ----
        acct = "acme" + g.s(LOWER + DIGITS, 6)
        ask = g.azure_storage_key()
        add("dotnet", "azure-storage-connection", f"""var cs = "DefaultEndpointsProtocol=https;AccountName={acct};AccountKey={ask};EndpointSuffix=core.windows.net";
var client = new BlobServiceClient(cs);
""", ask)
        sbk = g.b64(32)
        add("dotnet", "service-bus", f"""services.AddSingleton(new ServiceBusClient(
    "Endpoint=sb://{acct}.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={sbk}"));
""", sbk)
        sqp = g.password()
        add("dotnet", "sqlconnection", f"""using var conn = new SqlConnection(@"Server=tcp:acme.database.windows.net,1433;Initial Catalog=prod;User ID=sqladmin;Password={sqp};Encrypt=True;");
conn.Open();
""", sqp)
        ncp = g.password()
        add("dotnet", "network-credential", f"""var smtp = new SmtpClient("smtp.acme.io", 587)
{{
    Credentials = new NetworkCredential("mailer", "{ncp}"),
    EnableSsl = true
}};
""", ncp)
        dct = g.s(ALNUM, 32)
        add("dotnet", "dictionary-init", f"""var settings = new Dictionary<string, string>
{{
    {{ "Endpoint", "https://search.acme.io" }},
    {{ "ApiKey", "{dct}" }},
}};
""", dct)
        csc = g.azure_client_secret()
        add("dotnet", "client-secret-credential", f"""var credential = new ClientSecretCredential(
    tenantId: "{g.uuid()}",
    clientId: "{g.uuid()}",
    clientSecret: "{csc}");
""", csc)
        cpp = g.password()
        add("dotnet", "const-field", f"""public static class Secrets
{{
    private const string AdminPassword = "{cpp}";
}}
""", cpp)
        sas = f"sv=2022-11-02&ss=b&srt=sco&sp=rwdlacup&se=2026-12-31T00:00:00Z&st=2026-01-01T00:00:00Z&spr=https&sig={g.b64(32).replace('+', '%2B').replace('/', '%2F').replace('=', '%3D')}"
        sig = sas.split("sig=")[1]
        add("dotnet", "sas-url", f"""var uri = new Uri("https://{acct}.blob.core.windows.net/backups?{sas}");
""", sig)

        # ---- Java ----
        jp = g.password()
        add("java", "jdbc-driver-manager", f"""Connection conn = DriverManager.getConnection(
    "jdbc:postgresql://db:5432/app", "app", "{jp}");
""", jp)
        jp2 = g.password()
        add("java", "jdbc-url-password", f"""String url = "jdbc:mysql://db:3306/shop?user=shop&password={jp2}&useSSL=true";
""", jp2)
        jk = g.s(ALNUM, 40)
        add("java", "static-final", f"""public class Config {{
    private static final String API_KEY = "{jk}";
    private static final int RETRIES = 3;
}}
""", jk)
        hds = g.password()
        add("java", "hikari-setter", f"""HikariConfig cfg = new HikariConfig();
cfg.setJdbcUrl("jdbc:postgresql://db/app");
cfg.setUsername("app");
cfg.setPassword("{hds}");
""", hds)
        bsec = g.s(ALNUM, 40)
        add("java", "builder", f"""AmazonS3 s3 = AmazonS3ClientBuilder.standard()
    .withCredentials(new AWSStaticCredentialsProvider(new BasicAWSCredentials("{ak}", "{bsec}")))
    .build();
""", ak, bsec)
        ksp = g.password()
        add("java", "keystore-props", f"""System.setProperty("javax.net.ssl.keyStorePassword", "{ksp}");
""", ksp)

        # ---- connection strings / URLs ----
        u1 = g.password().replace("@", "").replace("/", "").replace(":", "").replace("#", "").replace("%", "")
        add("connection-string", "mongodb-srv", f'MONGO_URI = "mongodb+srv://app:{u1}@cluster0.ab1cd.mongodb.net/prod?retryWrites=true"\n', u1)
        u2 = g.s(ALNUM, 24)
        add("connection-string", "redis-url", f"redis_url: rediss://default:{u2}@cache.acme.io:6380/0\n", u2)
        u3 = g.s(ALNUM, 20)
        add("connection-string", "amqp-url", f"broker_url = 'amqp://worker:{u3}@rabbit.internal:5672/%2F'\n", u3)
        u4 = g.s(ALNUM, 18)
        add("connection-string", "postgres-url", f"$ psql postgresql://admin:{u4}@10.0.3.4:5432/postgres\n", u4)
        u5 = g.password()
        add("connection-string", "libpq-keyword", f'conn = psycopg2.connect("host=db.internal dbname=app user=app password={u5} sslmode=require")\n', u5)
        u6 = g.password()
        add("connection-string", "odbc", f'cnxn = pyodbc.connect("DRIVER={{ODBC Driver 18 for SQL Server}};SERVER=sql01;DATABASE=dw;UID=etl;PWD={{{u6}}}")\n', u6)
        u7 = g.s(ALNUM, 16)
        add("connection-string", "oracle-jdbc", f'url=jdbc:oracle:thin:scott/{u7}@//ora01:1521/ORCL\n', u7)
        u8 = g.s(ALNUM, 20)
        add("connection-string", "mysql-dsn-go", f'db, err := sql.Open("mysql", "app:{u8}@tcp(db:3306)/shop?parseTime=true")\n', u8)
        u9 = g.s(ALNUM, 22)
        add("connection-string", "sqlalchemy", f'engine = create_engine("mysql+pymysql://etl:{u9}@warehouse:3306/dw")\n', u9)
        u10 = g.s(ALNUM, 20)
        add("connection-string", "smtp-url", f"EMAIL_URL=smtp://postmaster%40mg.acme.io:{u10}@smtp.mailgun.org:587\n", u10)
        u11 = g.hex(40)
        add("connection-string", "url-token-query", f"GET https://api.acme.io/v2/export?format=csv&access_token={u11}\n", u11)
        u12 = g.s(B64URL, 54)
        add("connection-string", "azure-function-key", f"curl https://acme-fn.azurewebsites.net/api/ingest?code={u12}==\n", u12)

        # ---- docker / cloud config ----
        kd = base64.b64encode((g.pem_key("RSA PRIVATE KEY") + "\n").encode()).decode()
        cert = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIC" + g.r.randbytes(30) + b"\n").decode()
        ktok = g.s(LOWER + DIGITS, 6) + "." + g.s(LOWER + DIGITS, 16)
        add("docker-cloud", "kubeconfig", f"""apiVersion: v1
clusters:
- cluster:
    server: https://10.0.0.1:6443
  name: prod
users:
- name: admin
  user:
    client-certificate-data: {cert}
    client-key-data: {kd}
- name: ci
  user:
    token: {ktok}
""", kd, ktok)
        gh = g.github("ghp_")
        add("docker-cloud", "dockerfile-arg", f"""FROM python:3.12-slim
ENV PIP_INDEX_URL=https://__token__:{gh}@pypi.acme.io/simple
RUN pip install -r requirements.txt
""", gh)
        az = g.azure_client_secret()
        add("docker-cloud", "azure-sp-json", json.dumps({"appId": g.uuid(), "displayName": "ci-sp",
            "password": az, "tenant": g.uuid()}, indent=2) + "\n", az)
        dcj = base64.b64encode(json.dumps({"auths": {"ghcr.io": {"username": "bot", "password": gh,
            "auth": base64.b64encode(f"bot:{gh}".encode()).decode()}}}).encode()).decode()
        add("docker-cloud", "k8s-dockerconfigjson", f"""apiVersion: v1
kind: Secret
type: kubernetes.io/dockerconfigjson
data:
  .dockerconfigjson: {dcj}
""", dcj)
        b64pw = base64.b64encode(g.password().encode()).decode()
        add("docker-cloud", "k8s-secret-data", f"""apiVersion: v1
kind: Secret
data:
  username: YWRtaW4=
  password: {b64pw}
""", b64pw)
        gac = g.s(B64URL, 40)
        add("docker-cloud", "gcloud-adc", json.dumps({"client_id": g.digits(12) + "-" + g.s(LOWER + DIGITS, 32) + ".apps.googleusercontent.com",
            "client_secret": "GOCSPX-" + gac[:28], "refresh_token": "1//0" + g.s(B64URL, 99),
            "type": "authorized_user"}, indent=2) + "\n", "GOCSPX-" + gac[:28])
        awsc = g.aws_secret()
        add("docker-cloud", "aws-cli-json", json.dumps({"Credentials": {"AccessKeyId": g.aws_key_id("ASIA"),
            "SecretAccessKey": awsc, "Expiration": "2026-03-04T12:00:00Z"}}, indent=4) + "\n", awsc)
        tfc = f"{g.s(ALNUM, 14)}.atlasv1.{g.s(ALNUM, 67)}"
        add("docker-cloud", "terraformrc", f"""credentials "app.terraform.io" {{
  token = "{tfc}"
}}
""", tfc)
        b2 = g.s(ALNUM, 31)
        add("docker-cloud", "rclone.conf", f"""[b2]
type = b2
account = {g.hex(12)}
key = {b2}
""", b2)

        # ---- CLI ----
        c1, c2, c3, c4 = g.password(), g.s(ALNUM, 20), g.password(), g.s(ALNUM, 32)
        add("cli", "mysql-p", f"mysql -h db -u root -p'{c1}' shop < dump.sql\n", c1)
        add("cli", "docker-login", f"docker login -u ci --password {c2} registry.acme.io\n", c2)
        add("cli", "curl-user", f"curl -u admin:{c3} https://jenkins.acme.io/api/json\n", c3)
        add("cli", "curl-header-apikey", f'curl -H "X-Api-Key: {c4}" https://api.acme.io/items\n', c4)
        c5 = g.s(ALNUM, 40)
        add("cli", "gh-auth", f"echo {c5} | gh auth login --with-token\n", c5)
        c6 = g.password()
        add("cli", "psql-env", f"PGPASSWORD='{c6}' psql -h db -U postgres -c 'select 1'\n", c6)
        c7 = g.s(ALNUM, 24)
        add("cli", "redis-cli", f"redis-cli -h cache.internal -p 6379 -a {c7} INFO\n", c7)
        c8 = g.password()
        add("cli", "sshpass", f"sshpass -p '{c8}' ssh deploy@web01 uptime\n", c8)
        c9 = g.s(ALNUM, 30)
        add("cli", "helm-repo", f"helm repo add acme https://charts.acme.io --username ci --password {c9}\n", c9)
        c10 = g.s(ALNUM, 40)
        add("cli", "kubectl-secret", f"kubectl create secret generic api --from-literal=token={c10}\n", c10)
        c11 = g.password()
        add("cli", "az-login", f"az login --service-principal -u {g.uuid()} -p {c11} --tenant {g.uuid()}\n", c11)
        c12 = g.s(ALNUM, 28)
        add("cli", "history-export", f"  512  export GITHUB_TOKEN={c12}\n  513  git push\n", c12)
        c13 = g.password()
        add("cli", "wget", f"wget --user=ci --password='{c13}' https://artifacts.acme.io/build.tgz\n", c13)
        c14 = g.s(ALNUM, 32)
        add("cli", "terraform-var", f"terraform apply -var 'db_password={c14}' -auto-approve\n", c14)
        c15 = g.s(ALNUM, 24)
        add("cli", "docker-run-env", f"docker run -e POSTGRES_PASSWORD={c15} -p 5432:5432 postgres:16\n", c15)
        c16 = g.s(ALNUM, 36)
        add("cli", "npm-config", f"npm config set //registry.npmjs.org/:_authToken {c16}\n", c16)
        c17 = g.password()
        add("cli", "mongosh", f"mongosh mongodb://db:27017/admin -u admin -p '{c17}'\n", c17)
        c18 = g.s(ALNUM, 32)
        add("cli", "vault-login", f"vault login -method=userpass username=ops password={c18}\n", c18)
        c19 = g.s(B64, 40)
        add("cli", "aws-configure", f"aws configure set aws_secret_access_key {c19} --profile prod\n", c19)
        c20 = g.s(ALNUM, 20)
        add("cli", "http-bearer", f"http GET https://api.acme.io/me 'Authorization:Bearer {c20}'\n", c20)

        # ---- code ----
        k1 = g.s(ALNUM, 32)
        add("code", "go-const", f"""package config

const (
	apiBase   = "https://api.acme.io"
	apiSecret = "{k1}"
)
""", k1)
        k2 = g.password()
        add("code", "go-struct", f"""cfg := Config{{
	Host:     "db",
	User:     "app",
	Password: "{k2}",
}}
""", k2)
        k3 = g.s(HEX, 40)
        add("code", "ruby-hash", f"""Stripe.api_key = ENV.fetch("STRIPE_KEY")
client = Acme::Client.new(api_key: "{k3}", timeout: 5)
""", k3)
        k4 = g.password()
        add("code", "ruby-database-yml", f"""production:
  adapter: postgresql
  database: app
  password: <%= ENV['DB_PASSWORD'] || '{k4}' %>
""", k4)
        k5 = g.s(ALNUM, 32)
        add("code", "php-define", f"""<?php
define('DB_PASSWORD', '{k5}');
define('DB_HOST', 'localhost');
""", k5)
        k6 = g.s(ALNUM, 40)
        add("code", "php-array", f"""return [
    'mailgun' => [
        'domain' => 'mg.acme.io',
        'secret' => '{k6}',
    ],
];
""", k6)
        k7 = g.s(ALNUM, 40)
        add("code", "js-object", f"""const config = {{
  region: "us-east-1",
  accessKeyId: "{ak}",
  secretAccessKey: "{k7}",
}};
""", ak, k7)
        k8 = g.password()
        add("code", "js-fetch-header", f"""await fetch(url, {{
  headers: {{ "Content-Type": "application/json", Authorization: `Basic ${{btoa("admin:{k8}")}}` }},
}});
""", k8)
        k9 = g.s(ALNUM, 32)
        add("code", "ts-class", f"""export class Payments {{
  private readonly secretKey = '{k9}';
}}
""", k9)
        k10 = g.password()
        add("code", "python-kwarg", f"""conn = pymysql.connect(host="db", user="etl", password="{k10}", database="dw")
""", k10)
        k11 = g.s(ALNUM, 40)
        add("code", "python-dict", f"""HEADERS = {{
    "Accept": "application/json",
    "X-Auth-Token": "{k11}",
}}
""", k11)
        k12 = g.password()
        add("code", "python-requests-auth", f'r = requests.get(url, auth=("svc-report", "{k12}"))\n', k12)
        k13 = g.s(ALNUM, 32)
        add("code", "python-env-default", f'API_KEY = os.environ.get("API_KEY", "{k13}")\n', k13)
        k14 = g.s(B64, 44)
        add("code", "rust-const", f'const SIGNING_KEY: &str = "{k14}";\n', k14)
        k15 = g.password()
        add("code", "kotlin", f'val dataSource = PGSimpleDataSource().apply {{ user = "app"; password = "{k15}" }}\n', k15)
        k16 = g.s(ALNUM, 30)
        add("code", "swift", f'let apiToken = "{k16}"\n', k16)

        # ---- more files as they are found on disk ----
        f1 = g.password()
        add("ini-toml", ".my.cnf", f"[client]\nuser=root\npassword=\"{f1}\"\nhost=127.0.0.1\n", f1)
        f2, f3 = g.s(ALNUM, 20), g.s(ALNUM + "/+", 40)
        add("ini-toml", ".s3cfg", f"[default]\naccess_key = {g.aws_key_id()}\nsecret_key = {f3}\nhost_base = s3.amazonaws.com\n", f3)
        f4 = g.password()
        add("ini-toml", "gradle.properties", f"org.gradle.jvmargs=-Xmx2g\nsigning.keyId=24875D73\nsigning.password={f4}\nossrhUsername=acme\nossrhPassword={f2}\n", f4, f2)
        f5 = g.github("gho_")
        f6 = g.password()
        add("json", "composer-auth.json", json.dumps({"github-oauth": {"github.com": f5},
            "http-basic": {"repo.packagist.com": {"username": "token", "password": f6}}}, indent=4) + "\n", f5, f6)
        f7 = "rubygems_" + g.hex(48)
        add("yaml", ".gem-credentials", f"---\n:rubygems_api_key: {f7}\n", f7)
        f8 = "cio" + g.s(ALNUM, 32)
        add("ini-toml", "cargo-credentials.toml", f'[registry]\ntoken = "{f8}"\n', f8)
        f9 = g.s(ALNUM, 24)
        add("ini-toml", "pip.conf", f"[global]\nindex-url = https://build:{f9}@pypi.acme.io/simple\ntimeout = 60\n", f9)
        f10 = "npm_" + g.s(ALNUM, 36)
        add("yaml", ".yarnrc.yml", f'npmScopes:\n  acme:\n    npmRegistryServer: "https://npm.pkg.github.com"\n    npmAuthToken: "{f10}"\n', f10)
        f11 = g.s(ALNUM + "!#$%^&*()-_=+", 64)
        f12 = g.password()
        add("code", "wp-config.php", f"<?php\ndefine( 'DB_NAME', 'wordpress' );\ndefine( 'DB_USER', 'wp' );\ndefine( 'DB_PASSWORD', '{f12}' );\ndefine( 'AUTH_KEY',         '{f11}' );\n", f12, f11)
        f13 = g.password()
        add("ini-toml", "redis.conf", f"bind 127.0.0.1\nport 6379\nrequirepass {f13}\nmaxmemory 2gb\n", f13)
        f14 = g.password()
        add("ini-toml", "supervisord.conf", f"[inet_http_server]\nport=127.0.0.1:9001\nusername=admin\npassword={f14}\n", f14)
        f15 = "sntrys_" + g.s(B64URL, 120)
        add("ini-toml", "sentry.properties", f"defaults.org=acme\ndefaults.project=web\nauth.token={f15}\n", f15)
        f16, f17 = g.password(), g.password()
        add("ini-toml", "android-keystore.properties", f"storeFile=release.jks\nstorePassword={f16}\nkeyAlias=upload\nkeyPassword={f17}\n", f16, f17)
        f18 = g.password()
        add("xml", "jenkins-credentials.xml", f"""<com.cloudbees.plugins.credentials.impl.UsernamePasswordCredentialsImpl>
  <scope>GLOBAL</scope>
  <id>deploy</id>
  <username>deploy</username>
  <password>{f18}</password>
</com.cloudbees.plugins.credentials.impl.UsernamePasswordCredentialsImpl>
""", f18)
        f19 = g.password()
        add("xml", "log4j-jdbc-appender.xml", f"""<JDBC name="db" tableName="logs">
  <DriverManager connectionString="jdbc:postgresql://db/logs" userName="logger" password="{f19}"/>
</JDBC>
""", f19)
        f20 = g.password()
        add("xml", "server.xml-resource", f"""<Resource name="jdbc/app" auth="Container" type="javax.sql.DataSource"
          username="app" password="{f20}" driverClassName="org.postgresql.Driver"
          url="jdbc:postgresql://db:5432/app"/>
""", f20)
        f21 = g.b64(64)
        add("docker-cloud", "cosmos-connection", f'COSMOS_CONNECTION_STRING="AccountEndpoint=https://acme.documents.azure.com:443/;AccountKey={f21};"\n', f21)
        f22 = g.b64(32)
        add("docker-cloud", "event-hub", f"Endpoint=sb://acme-events.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey={f22};EntityPath=clicks\n", f22)
        f23 = g.b64(32)
        add("docker-cloud", "signalr", f'"Azure:SignalR:ConnectionString": "Endpoint=https://acme.service.signalr.net;AccessKey={f23};Version=1.0;"\n', f23)
        f24 = g.s(ALNUM, 40)
        add("docker-cloud", "gcloud-hmac-boto", f"[Credentials]\ngs_access_key_id = GOOG1E{g.s(UPPER + DIGITS, 55)}\ngs_secret_access_key = {f24}\n", f24)
        f25 = g.password()
        add("docker-cloud", "compose-secret-inline", f"services:\n  app:\n    image: acme/app\n    command: [\"--db-password\", \"{f25}\"]\n", f25)
        f26 = g.s(ALNUM, 32)
        add("docker-cloud", "fly-toml", f'app = "acme"\n[env]\n  LOG_LEVEL = "info"\n  STRIPE_WEBHOOK_SECRET = "{f26}"\n', f26)
        f27 = g.password()
        add("docker-cloud", "pgbouncer-ini", f"[databases]\napp = host=db port=5432 dbname=app user=app password={f27}\n", f27)

        # ---- more command lines ----
        h1 = g.github("ghp_")
        add("cli", "git-clone-token", f"git clone https://oauth2:{h1}@github.com/acme/infra.git\n", h1)
        h2 = g.password()
        add("cli", "mysqldump", f"mysqldump --user=backup --password={h2} --all-databases > all.sql\n", h2)
        h3 = g.password()
        add("cli", "java-sysprop", f"java -Djavax.net.ssl.trustStorePassword={h3} -jar app.jar\n", h3)
        h4 = g.password()
        add("cli", "mvn-gpg", f"mvn deploy -Dgpg.passphrase={h4} -DskipTests\n", h4)
        h5 = g.password()
        add("cli", "gradle-signing", f"./gradlew publish -PsigningPassword={h5} -PossrhUsername=acme\n", h5)
        h6 = "pypi-AgEIcHlwaS5vcmc" + g.s(B64URL, 140)
        add("cli", "twine", f"twine upload -u __token__ -p {h6} dist/*\n", h6)
        h7 = "sntryu_" + g.hex(64)
        add("cli", "sentry-cli", f"sentry-cli --auth-token {h7} releases new 1.4.2\n", h7)
        h8 = g.s(ALNUM, 24)
        add("cli", "vercel", f"vercel deploy --prod --token {h8}\n", h8)
        h9 = g.s(ALNUM, 32)
        add("cli", "curl-data-secret", f"curl -X POST https://login.acme.io/oauth/token -d grant_type=client_credentials -d client_id=cli -d client_secret={h9}\n", h9)
        h10 = g.password()
        add("cli", "curl-form-password", f"curl -s -X POST https://app.acme.io/login --data-urlencode 'username=ops' --data-urlencode 'password={h10}'\n", h10)
        h11 = g.b64(64)
        add("cli", "az-storage", f"az storage blob upload --account-name acme --account-key {h11} -c backups -f db.gz\n", h11)
        h12 = g.s(ALNUM, 32)
        add("cli", "heroku-config", f"heroku config:set STRIPE_SECRET={h12} -a acme-web\n", h12)
        h13 = g.s(ALNUM, 40)
        add("cli", "gh-secret", f"gh secret set DEPLOY_KEY --body '{h13}' --repo acme/web\n", h13)
        h14 = g.password()
        add("cli", "openssl-pass", f"openssl pkcs12 -export -in cert.pem -inkey key.pem -out cert.p12 -passout pass:{h14}\n", h14)
        h15 = g.password()
        add("cli", "pg-dump-url", f'pg_dump "postgresql://backup:{h15.replace("@", "").replace("/", "").replace("#", "").replace(":", "").replace("%", "")}@db:5432/app" > app.sql\n', h15.replace("@", "").replace("/", "").replace("#", "").replace(":", "").replace("%", ""))
        h16 = g.password()
        add("cli", "sqlcmd", f"sqlcmd -S sql01 -U sa -P '{h16}' -Q 'SELECT 1'\n", h16)
        h17 = g.password()
        add("cli", "fish-history", f"- cmd: mysql -u root --password='{h17}' -e 'show databases'\n  when: 1760000000\n", h17)
        h18 = g.s(ALNUM, 40)
        add("cli", "zsh-history", f": 1760000000:0;export CF_API_TOKEN={h18}\n", h18)
        h19 = g.password()
        add("cli", "rabbitmqctl", f"rabbitmqctl add_user worker '{h19}'\n", h19)
        h20 = g.password()
        add("cli", "htpasswd", f"htpasswd -b -c /etc/nginx/.htpasswd admin {h20}\n", h20)

        # ---- more code ----
        j1, j2 = g.aws_key_id(), g.aws_secret()
        add("code", "boto3-client", f's3 = boto3.client("s3", aws_access_key_id="{j1}", aws_secret_access_key="{j2}")\n', j1, j2)
        j3, j4 = g.aws_key_id(), g.aws_secret()
        add("code", "go-static-creds", f'cfg.Credentials = credentials.NewStaticCredentialsProvider("{j3}", "{j4}", "")\n', j3, j4)
        j5 = g.password()
        add("code", "node-pg-pool", f"const pool = new Pool({{\n  host: 'db',\n  user: 'app',\n  password: '{j5}',\n  port: 5432,\n}});\n", j5)
        j6 = g.password()
        add("code", "php-pdo", f"$pdo = new PDO('mysql:host=db;dbname=shop', 'shop', '{j6}');\n", j6)
        j7 = g.password()
        add("code", "ruby-basic-auth", f"req = Net::HTTP::Get.new(uri)\nreq.basic_auth 'reporter', '{j7}'\n", j7)
        j8 = g.password()
        add("code", "spring-value-default", f'@Value("${{db.password:{j8}}}")\nprivate String dbPassword;\n', j8)
        j9 = g.s(B64URL, 40)
        add("code", "csharp-options", f'services.AddAuthentication().AddOpenIdConnect(o => {{\n    o.ClientId = "web";\n    o.ClientSecret = "{j9}";\n}});\n', j9)
        j10 = g.s(ALNUM, 48)
        add("code", "jwt-sign", f"const token = jwt.sign({{ sub: user.id }}, '{j10}', {{ expiresIn: '1h' }});\n", j10)
        j11 = g.s(ALNUM, 32)
        add("code", "python-hmac", f'SIGNING_SECRET = b"{j11}"\nsig = hmac.new(SIGNING_SECRET, body, hashlib.sha256).hexdigest()\n', j11)
        j12 = g.password()
        add("code", "go-dsn-fmt", f'dsn := "host=db user=app password={j12} dbname=app sslmode=disable"\ndb, err := gorm.Open(postgres.Open(dsn), &gorm.Config{{}})\n', j12)
        j13 = g.s(ALNUM, 40)
        add("code", "python-settings-class", f'class Settings(BaseSettings):\n    api_token: str = "{j13}"\n    debug: bool = False\n', j13)
        j14 = g.password()
        add("code", "java-properties-put", f'props.put("sasl.jaas.config", "org.apache.kafka.common.security.plain.PlainLoginModule required username=\\"app\\" password=\\"{j14}\\";");\n', j14)
        j15 = g.s(ALNUM, 32)
        add("code", "js-env-fallback", f"const secret = process.env.SESSION_SECRET || '{j15}';\n", j15)
        j16 = g.password()
        add("code", "ruby-config", f"config.action_mailer.smtp_settings = {{\n  user_name: 'apikey',\n  password: '{j16}',\n  address: 'smtp.sendgrid.net'\n}}\n", j16)
        j17 = g.s(ALNUM, 36)
        add("code", "powershell", f'$env:AZURE_DEVOPS_PAT = "{j17}"\n$secure = ConvertTo-SecureString "{j17}" -AsPlainText -Force\n', j17)
        j18 = g.s(ALNUM, 32)
        add("code", "bash-script-var", f'#!/usr/bin/env bash\nset -euo pipefail\nAPI_TOKEN="{j18}"\ncurl -fsS -H "Authorization: token $API_TOKEN" "$URL"\n', j18)

        # ---- decoded ----
        bpw = g.password()
        basic = base64.b64encode(f"admin:{bpw}".encode()).decode()
        add("decoded", "basic-header", f"curl -H 'Authorization: Basic {basic}' https://grafana.acme.io/api/health\n", basic)
        add("decoded", "escaped-json", '{"body": "{\\"password\\": \\"' + bpw + '\\", \\"user\\": \\"x\\"}"}\n', bpw)
        pct = g.s(ALNUM, 20)
        add("decoded", "percent-encoded", f"POST /login body=username%3Dalice%26password%3D{pct}\n", pct)
        pemb = g.pem_key("EC PRIVATE KEY", 3)
        add("decoded", "pem-in-file", f"# saved from vault\n{pemb}\n", pemb.splitlines()[1])
        oks = g.pem_key("OPENSSH PRIVATE KEY", 5)
        add("decoded", "openssh-key", oks + "\n", oks.splitlines()[2])
        dflt = g.password()
        add("decoded", "diff-added-line", f"""--- a/config/settings.py
+++ b/config/settings.py
@@ -10,3 +10,3 @@
-DB_PASSWORD = os.environ["DB_PASSWORD"]
+DB_PASSWORD = "{dflt}"
 DB_HOST = "localhost"
""", dflt)
    return out


# ---------------------------------------------------------------------------------------------
def look_alikes(seed: int = 3141) -> list[LookAlike]:
    g = Gen(seed)
    out: list[LookAlike] = []

    def add(cat: str, name: str, text: str) -> None:
        out.append(LookAlike(cat, name, text))

    for _ in range(3):
        sha = g.hex(40)
        integ = "sha512-" + g.b64(64)
        add("placeholder", "yaml-env-ref", f"""spring:
  datasource:
    url: jdbc:postgresql://${{DB_HOST:localhost}}:5432/app
    username: ${{DB_USER}}
    password: ${{DB_PASSWORD}}
""")
        add("placeholder", "compose-env-ref", """services:
  db:
    environment:
      POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set it in .env}
      POSTGRES_USER: app
""")
        add("placeholder", "helm-template", """apiVersion: v1
kind: Secret
stringData:
  password: {{ .Values.db.password | quote }}
  token: "{{ required "token is required" .Values.api.token }}"
""")
        add("placeholder", "jinja", "api_key: \"{{ vault_api_key }}\"\npassword: '{{ lookup(\"env\", \"DB_PASS\") }}'\n")
        add("placeholder", "env-example", """# copy to .env and fill in
DATABASE_URL=postgres://user:password@localhost:5432/app
STRIPE_SECRET_KEY=sk_live_your_key_here
GITHUB_TOKEN=
SESSION_SECRET=changeme
OPENAI_API_KEY=<your-openai-api-key>
""")
        add("placeholder", "readme-xxxx", "export GITLAB_TOKEN=glpat-xxxxxxxxxxxxxxxxxxxx\n"
            "export GH_TOKEN=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n")
        add("placeholder", "aws-docs-example", "[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\n"
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n")
        add("placeholder", "masked", "token: ****************\npassword: '********'\n"
            "api_key = sk-...a1b2 (masked)\n")
        add("placeholder", "python-format", "dsn = \"postgresql://%(user)s:%(password)s@%(host)s/db\"\n"
            "password = '%s' % secret\n")
        add("placeholder", "dotnet-config-ref", """{
  "ConnectionStrings": {
    "Default": "Server=(localdb)\\\\mssqllocaldb;Database=App;Trusted_Connection=True;"
  },
  "Jwt": { "SigningKey": "" }
}
""")
        add("placeholder", "xml-property-ref", """<datasource>
  <user-name>${env.DB_USER}</user-name>
  <password>${env.DB_PASSWORD}</password>
</datasource>
""")
        add("placeholder", "dummy-test", 'def test_login(client):\n    client.login(username="alice", password="test")\n'
            '    assert client.get("/me").status_code == 200\n')
        add("placeholder", "angle-bracket", "curl -H 'Authorization: Bearer <ACCESS_TOKEN>' https://api.example.com/v1/me\n")
        add("placeholder", "shell-var", 'curl -H "Authorization: Bearer $TOKEN" "$API/v1/items"\n'
            'mysql -u root -p"$MYSQL_ROOT_PASSWORD" < dump.sql\n')
        add("placeholder", "azure-keyvault-ref", "DbPassword=@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/db/)\n")
        add("placeholder", "sequential", "PIN = '123456'\npassword: abcdefgh\n")

        # ---- code references ----
        add("reference", "python-environ", 'password = os.environ["DB_PASSWORD"]\ntoken = os.getenv("GITHUB_TOKEN")\n')
        add("reference", "python-kwarg-passthrough", "conn = connect(host=host, user=user, password=password)\n"
            "client = Client(api_key=settings.API_KEY, secret=self.secret)\n")
        add("reference", "js-process-env", "const token = process.env.NPM_TOKEN;\nconst { apiKey } = config;\n"
            "headers.Authorization = `Bearer ${token}`;\n")
        add("reference", "java-getter", 'String password = props.getProperty("db.password");\n'
            'ds.setPassword(System.getenv("DB_PASSWORD"));\n')
        add("reference", "csharp-config", 'var key = Configuration["Storage:AccountKey"];\n'
            'var secret = await client.GetSecretAsync("db-password");\n')
        add("reference", "go-env", 'token := os.Getenv("SLACK_BOT_TOKEN")\npassword := cfg.Password\n')
        add("reference", "ruby-credentials", "Stripe.api_key = Rails.application.credentials.stripe[:secret_key]\n")
        add("reference", "php-env", "'password' => env('DB_PASSWORD', ''),\n'secret' => env('MAILGUN_SECRET'),\n")
        add("reference", "key-names-only", "required_keys = ['api_key', 'api_secret', 'access_token']\n"
            "token_type: bearer\ntoken_expires_in: 3600\npassword_min_length: 12\n")
        add("reference", "function-def", "def rotate_secret(secret_id: str, new_password: str) -> None:\n"
            "    vault.write(secret_id, password=new_password)\n")
        add("reference", "gh-actions-secret", "env:\n  NPM_TOKEN: ${{ secrets.NPM_TOKEN }}\n"
            "  AWS_SECRET_ACCESS_KEY: ${{ secrets.AWS_SECRET_ACCESS_KEY }}\n")
        add("reference", "terraform-ref", 'password = var.db_password\nsecret    = data.aws_secretsmanager_secret_version.db.secret_string\n')
        add("reference", "cli-password-stdin", "aws ecr get-login-password | docker login --username AWS --password-stdin 123456789012.dkr.ecr.us-east-1.amazonaws.com\n")
        add("reference", "cli-prompt", "mysql -u root -p shop\npsql -h db -U postgres -W\n")

        # ---- hashes, ids, versions ----
        add("hash-id", "package-lock", json.dumps({"node_modules/lodash": {"version": "4.17.21",
            "resolved": "https://registry.npmjs.org/lodash/-/lodash-4.17.21.tgz", "integrity": integ}}, indent=2) + "\n")
        add("hash-id", "poetry-lock", f'[[package]]\nname = "requests"\nversion = "2.32.3"\nfiles = [\n'
            f'    {{file = "requests-2.32.3-py3-none-any.whl", hash = "sha256:{g.hex(64)}"}},\n]\n')
        add("hash-id", "go-sum", f"github.com/google/uuid v1.6.0 h1:{g.b64(32)}\n"
            f"github.com/google/uuid v1.6.0/go.mod h1:{g.b64(32)}\n")
        add("hash-id", "git-log", f"commit {sha}\nAuthor: CI <ci>\n\n    Merge pull request #42\n")
        add("hash-id", "git-rev", f"$ git rev-parse HEAD\n{g.hex(40)}\n$ git checkout {g.hex(12)}\n")
        add("hash-id", "uuid-ids", f'{{"id": "{g.uuid()}", "tenant_id": "{g.uuid()}", "request_id": "{g.uuid()}"}}\n')
        add("hash-id", "docker-digest", f"FROM python:3.12-slim@sha256:{g.hex(64)}\n")
        add("hash-id", "yarn-lock", f'"@babel/core@^7.24.0":\n  version "7.24.5"\n  resolved "https://registry.yarnpkg.com/@babel/core/-/core-7.24.5.tgz#{g.hex(40)}"\n  integrity {integ}\n')
        add("hash-id", "checksum-file", f"{g.hex(64)}  tracecap-1.4.2-linux-amd64.tar.gz\n")
        add("hash-id", "versions", "python 3.12.3\nnode v20.11.1\nkubectl v1.30.2\n__version__ = '2.8.0rc1'\n")
        add("hash-id", "etag", f'ETag: "{g.hex(32)}"\nX-Request-Id: {g.uuid()}\n')
        add("hash-id", "aws-arn", "arn:aws:iam::123456789012:role/deploy\narn:aws:s3:::acme-artifacts/builds/*\n")
        add("hash-id", "twilio-sid-alone", f"AccountSid is shown on the console: AC{g.hex(32)}\n")
        add("hash-id", "css-colors", "color: #1f2937;\nbackground: #fafafa;\n--brand: #4f46e5;\n")
        add("hash-id", "cache-key", f"key: ${{{{ runner.os }}}}-pip-${{{{ hashFiles('**/requirements.txt') }}}}\ncache-hit: {g.hex(16)}\n")

        # ---- key bindings, editor settings ----
        add("keybinding", "vscode-keybindings", json.dumps([{"key": "ctrl+shift+down", "command": "editor.action.copyLinesDownAction"},
            {"key": "cmd+k cmd+s", "command": "workbench.action.openGlobalKeybindings"}], indent=2) + "\n")
        add("keybinding", "tmux-conf", "bind-key -n M-Left select-pane -L\nset -g prefix C-a\n")
        add("keybinding", "settings-token-colors", '"editor.tokenColorCustomizations": {"textMateRules": [{"scope": "keyword", "settings": {"foreground": "#C586C0"}}]}\n')

        # ---- public material ----
        pub = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI" + g.s(B64, 43) + " alice@laptop"
        add("public", "authorized-keys", pub + "\n")
        add("public", "cert", g.pem_key("CERTIFICATE", 8) + "\n")
        add("public", "public-key-pem", g.pem_key("PUBLIC KEY", 4) + "\n")
        add("public", "kubeconfig-ca", f"clusters:\n- cluster:\n    certificate-authority-data: {base64.b64encode(g.pem_key('CERTIFICATE', 4).encode()).decode()}\n    server: https://k8s.acme.io\n")
        add("public", "stripe-publishable", f"const stripe = Stripe('pk_live_{g.s(ALNUM, 99)}');\n")
        add("public", "sentry-dsn-frontend", f'Sentry.init({{ dsn: "https://{g.hex(32)}@o{g.digits(6)}.ingest.sentry.io/{g.digits(7)}" }});\n')
        add("public", "gpg-public", "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBF" + g.s(B64, 60) + "\n=ab12\n-----END PGP PUBLIC KEY BLOCK-----\n")
        add("public", "google-client-id", f'GOOGLE_CLIENT_ID="{g.digits(12)}-{g.s(LOWER + DIGITS, 32)}.apps.googleusercontent.com"\n')

        # ---- prose about tokens ----
        add("prose", "docs-token", "Create a personal access token under Settings > Developer settings and paste it when\n"
            "prompted for a password. Tokens start with ghp_ and are 40 characters long.\n")
        add("prose", "changelog", "- Rotate the API token every 90 days\n- The password field is now optional when SSO is on\n")
        add("prose", "error-msg", "Error: invalid token: token has expired (code 401)\npassword authentication failed for user \"app\"\n")
        add("prose", "comment", "# TODO: move secret to vault; the key is read from the environment\n")
        add("prose", "log-line", "2026-03-04 10:00:01 INFO auth: token refreshed for user_id=4812 (expires_in=3600)\n")
        add("prose", "commit-msg", "fix(auth): stop logging the session token on refresh\n\nThe secret manager is now the only source of the key.\n")
        add("prose", "pytest-output", "tests/test_auth.py::test_token_expired PASSED\ntests/test_auth.py::test_password_reset FAILED\n")

        # ---- ordinary config that merely resembles ----
        add("config", "yaml-bools", "auth:\n  enabled: true\n  provider: oidc\n  token_ttl: 15m\npassword_policy:\n  min_length: 12\n")
        add("config", "ini-plain", "[server]\nhost = 0.0.0.0\nport = 8080\nsecret_file = /run/secrets/app_key\n")
        add("config", "json-keyfile-path", '{"credentials_file": "~/.config/gcloud/application_default_credentials.json", "key_path": "./certs/server.key"}\n')
        add("config", "cli-normal", "docker run -p 8080:80 -v $(pwd):/app nginx:1.27\nkubectl get pods -n kube-system -o wide\n"
            "git log --oneline -n 20\n")
        add("config", "k8s-secret-ref", "env:\n  - name: DB_PASSWORD\n    valueFrom:\n      secretKeyRef:\n        name: db\n        key: password\n")
        add("config", "long-identifiers", "useAuthenticationTokenRefreshInterceptorFactory\n"
            "AbstractSingletonProxyFactoryBeanPasswordEncoderConfigurer\n")
        add("config", "base64-image", f'"icon": "data:image/png;base64,{g.b64(60)}"\n')
        add("config", "url-no-creds", "https://github.com/acme/tracecap/pull/128/files\nhttps://docs.python.org/3/library/secrets.html\n")
        add("config", "path-with-token-word", "src/auth/token_store.py\nlib/secrets/manager.rb\n")
        # ---- empty, null and boolean values under secret keys ----
        add("empty", "yaml-empty", "database:\n  password: \"\"\n  token: null\n  api_key: ~\n")
        add("empty", "python-none", "API_KEY = None\nSECRET = ''\npassword: str | None = None\n")
        add("empty", "json-bool", '{"password": true, "token": false, "secret": null, "auth": {"type": "oauth2"}}\n')
        add("empty", "ini-empty", "[auth]\npassword =\ntoken =\nsecret_key =\n")
        add("empty", "cli-password-file", "pg_dump --no-password -h db app > app.sql\n"
            "restic -r s3:s3.amazonaws.com/bk --password-file /etc/restic/pass backup /srv\n"
            "docker secret create db_password ./db_password.txt\n")
        add("empty", "password-prompt", "Enter password: \nPassword for 'https://github.com': \n[sudo] password for ops: \n")

        # ---- placeholders in many spellings ----
        add("placeholder", "your-key-here", 'SENDGRID_API_KEY="your-sendgrid-api-key-here"\nMAPBOX_TOKEN=INSERT_TOKEN_HERE\n')
        add("placeholder", "redacted-markers", "password: [REDACTED]\ntoken: <redacted>\nsecret: ***hidden***\n")
        add("placeholder", "example-conn", 'Server=myServerAddress;Database=myDataBase;User Id=myUsername;Password=myPassword;\n')
        add("placeholder", "mongodb-doc", "mongodb+srv://<username>:<password>@cluster0.example.mongodb.net/?retryWrites=true\n")
        add("placeholder", "docker-login-doc", "docker login -u <username> -p <password> registry.example.com\n")
        add("placeholder", "curl-doc", 'curl -u "$USER:$PASS" https://api.example.com/v1/ping\ncurl -H "X-Api-Key: ${API_KEY}" https://api.example.com\n')
        add("placeholder", "ps1-var", "$cred = New-Object PSCredential($user, $securePassword)\n")
        add("placeholder", "erb", "password: <%= ENV['DB_PASSWORD'] %>\n")
        add("placeholder", "mustache", 'token = "{{TOKEN}}"\nsecret = "%SECRET%"\n')
        add("placeholder", "xxx-numbers", "card-token: tok_xxxxxxxxxxxxxxxx\nAPI_KEY=XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX\n")
        add("placeholder", "stars-in-cli", "mysql -u root -p******** app\ncurl -u admin:**** https://ci\n")
        add("placeholder", "sample-values", 'aws_secret_access_key = "<secret-access-key>"\nclient_secret: "REPLACE_ME"\n')
        add("placeholder", "dotnet-user-secrets", 'dotnet user-secrets set "Stripe:SecretKey" "<key>"\n')
        add("placeholder", "todo", 'password = "TODO"\ntoken = "FIXME"\n')
        add("placeholder", "default-local", "POSTGRES_PASSWORD=postgres\nMYSQL_ROOT_PASSWORD=root\nRABBITMQ_DEFAULT_PASS=guest\n")

        # ---- code that names secrets without holding one ----
        add("reference", "python-getpass", "password = getpass.getpass('Password: ')\ntoken = keyring.get_password('svc', user)\n")
        add("reference", "secret-generation", "SECRET_KEY = secrets.token_urlsafe(50)\napi_key = generate_api_key(length=32)\n")
        add("reference", "js-destructure", "const { password, ...rest } = req.body;\nif (!token) throw new Error('missing token');\n")
        add("reference", "sql-schema", "CREATE TABLE users (id serial, password_hash text NOT NULL, api_token_prefix char(8));\n")
        add("reference", "orm-field", "password = models.CharField(max_length=128)\ntoken = Column(String(64), unique=True)\n")
        add("reference", "typescript-type", "interface Credentials {\n  username: string;\n  password: string;\n  apiKey?: string;\n}\n")
        add("reference", "go-struct-tags", 'type Config struct {\n\tPassword string `json:"password" env:"DB_PASSWORD"`\n\tToken    string `yaml:"token"`\n}\n')
        add("reference", "java-annotation", '@JsonProperty("client_secret")\nprivate String clientSecret;\n')
        add("reference", "csharp-property", "public string Password { get; set; }\npublic string ApiKey => _options.Value.ApiKey;\n")
        add("reference", "f-string-header", 'headers = {"Authorization": f"Bearer {self.token}"}\n')
        add("reference", "template-literal", "const url = `https://${user}:${password}@${host}/db`;\n")
        add("reference", "assert-message", "assert resp.json()['token_type'] == 'Bearer'\n")
        add("reference", "vault-path", "vault kv get -field=password secret/prod/db\n"
            "aws secretsmanager get-secret-value --secret-id prod/db/password\n")
        add("reference", "ansible-vault-ref", "db_password: \"{{ vault_db_password }}\"\napi_token: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n")
        add("reference", "k8s-secret-name", "imagePullSecrets:\n  - name: regcred\nserviceAccountName: deployer\n")
        add("reference", "sops-metadata", "sops:\n  kms:\n    - arn: arn:aws:kms:us-east-1:123456789012:key/abcd\n  version: 3.8.1\n")

        # ---- ids, digests, generated names that are not secrets ----
        add("hash-id", "pipfile-lock", json.dumps({"default": {"flask": {"hashes": ["sha256:" + g.hex(64), "sha256:" + g.hex(64)],
            "version": "==3.0.3"}}}, indent=4) + "\n")
        add("hash-id", "cargo-lock", f'[[package]]\nname = "serde"\nversion = "1.0.203"\nsource = "registry+https://github.com/rust-lang/crates.io-index"\nchecksum = "{g.hex(64)}"\n')
        add("hash-id", "terraform-lock", f'provider "registry.terraform.io/hashicorp/aws" {{\n  version = "5.54.1"\n  hashes = [\n    "h1:{g.b64(32)}",\n    "zh:{g.hex(64)}",\n  ]\n}}\n')
        add("hash-id", "composer-lock", f'"dist": {{\n    "type": "zip",\n    "reference": "{g.hex(40)}",\n    "shasum": ""\n}}\n')
        add("hash-id", "html-sri", f'<script src="https://cdn.jsdelivr.net/npm/bootstrap@5.3.3/dist/js/bootstrap.min.js" integrity="sha384-{g.b64(48)}" crossorigin="anonymous"></script>\n')
        add("hash-id", "gradle-wrapper", f"distributionUrl=https\\://services.gradle.org/distributions/gradle-8.8-bin.zip\ndistributionSha256Sum={g.hex(64)}\n")
        add("hash-id", "docker-ps", f"CONTAINER ID   IMAGE          COMMAND\n{g.hex(12)}   redis:7        \"docker-entrypoint.s…\"\n")
        add("hash-id", "docker-inspect", f'"Id": "sha256:{g.hex(64)}",\n"RepoDigests": ["redis@sha256:{g.hex(64)}"]\n')
        add("hash-id", "k8s-pod-names", f"api-{g.s(LOWER[:6] + DIGITS, 10)}-{g.s(LOWER + DIGITS, 5)}   1/1   Running   0   3d\n")
        add("hash-id", "k8s-uid", f"metadata:\n  uid: {g.uuid()}\n  resourceVersion: \"{g.digits(8)}\"\n")
        add("hash-id", "git-diff-index", f"diff --git a/app.py b/app.py\nindex {g.hex(7)}..{g.hex(7)} 100644\n--- a/app.py\n+++ b/app.py\n")
        add("hash-id", "gerrit-change-id", f"Fix retry loop\n\nChange-Id: I{g.hex(40)}\n")
        add("hash-id", "traceparent", f"traceparent: 00-{g.hex(32)}-{g.hex(16)}-01\n")
        add("hash-id", "azure-ids", f'subscription_id = "{g.uuid()}"\ntenant_id       = "{g.uuid()}"\nclient_id       = "{g.uuid()}"\n')
        add("hash-id", "webpack-assets", f"main.{g.hex(8)}.js  142 KiB\nvendor.{g.hex(20)}.chunk.js  1.2 MiB\n")
        add("hash-id", "ssh-fingerprint", f"ED25519 key fingerprint is SHA256:{g.b64(32).rstrip('=')}.\n")
        add("hash-id", "gpg-fingerprint", f"pub   rsa4096 2024-01-01 [SC]\n      {g.hex(40).upper()}\n")
        add("hash-id", "md5sum", f"{g.hex(32)}  backup-2026-03-01.tar.zst\n")
        add("hash-id", "s3-etag", f'"ETag": "\\"{g.hex(32)}-12\\""\n')
        add("hash-id", "aws-request-id", f"x-amzn-RequestId: {g.uuid()}\nx-amz-id-2: {g.b64(48)}\n")
        add("hash-id", "session-id-in-log", f"GET /api/items 200 12ms request_id={g.hex(16)}\n")
        add("hash-id", "serial-version", f"private static final long serialVersionUID = {g.digits(18)}L;\n")
        add("hash-id", "mac-ipv6", "ether 52:54:00:12:34:56\ninet6 fe80::5054:ff:fe12:3456/64\n")
        add("hash-id", "nix-hash", f'sha256 = "sha256-{g.b64(32)}";\n')

        # ---- public values by design ----
        add("public", "mapbox-public", f"mapboxgl.accessToken = 'pk.{g.b64url(60)}.{g.s(B64URL, 22)}';\n")
        add("public", "recaptcha-site-key", f'<div class="g-recaptcha" data-sitekey="6Lc{g.s(B64URL, 37)}"></div>\n')
        add("public", "ssh-rsa-pub", "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ" + g.s(B64, 340) + " deploy@ci\n")
        add("public", "known-hosts", "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI" + g.s(B64, 43) + "\n")
        add("public", "jwks", json.dumps({"keys": [{"kty": "RSA", "kid": g.hex(16), "use": "sig", "alg": "RS256",
            "n": g.b64url(256), "e": "AQAB"}]}, indent=2) + "\n")
        add("public", "oidc-discovery", '{"issuer": "https://login.acme.io", "token_endpoint": "https://login.acme.io/oauth2/token", "jwks_uri": "https://login.acme.io/.well-known/jwks.json"}\n')

        # ---- key bindings and UI text ----
        add("keybinding", "vim-map", "nnoremap <leader>k :bnext<CR>\ninoremap jk <Esc>\n")
        add("keybinding", "i3-config", "bindsym $mod+Shift+q kill\nbindsym $mod+Return exec alacritty\n")
        add("keybinding", "emacs", '(global-set-key (kbd "C-c k") #\'kill-this-buffer)\n')
        add("keybinding", "vscode-when", json.dumps({"key": "ctrl+alt+k", "command": "workbench.action.tasks.runTask",
            "args": "build", "when": "editorTextFocus"}) + "\n")
        add("keybinding", "json-key-field", '{"key": "Content-Type", "value": "application/json"}\n{"key": "app.kubernetes.io/name", "operator": "In"}\n')
        add("keybinding", "i18n", '"login.password.label": "Password",\n"settings.token.help": "Paste your access token"\n')

        # ---- prose ----
        add("prose", "security-md", "Never commit your API key. If a token leaks, revoke it in the dashboard and rotate the secret.\n")
        add("prose", "release-notes", "Passwords must now be at least 12 characters. Tokens issued before v2.3 expire on 2026-06-01.\n")
        add("prose", "stack-trace", 'Traceback (most recent call last):\n  File "auth.py", line 42, in verify_token\n    raise InvalidSignature("signature mismatch")\n')
        add("prose", "http-401", 'HTTP/1.1 401 Unauthorized\nWWW-Authenticate: Bearer realm="api", error="invalid_token"\n')
        add("prose", "man-page", "-p, --password[=PASSWORD]\n    The password to use when connecting to the server.\n")
        add("prose", "jira-like-title", "Add SSO login; keep password login for service accounts (token auth later)\n")

        # ---- plain config ----
        add("config", "nginx", "server {\n  listen 443 ssl;\n  ssl_certificate_key /etc/ssl/private/site.key;\n  auth_basic_user_file /etc/nginx/.htpasswd;\n}\n")
        add("config", "sshd-config", "PasswordAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n")
        add("config", "postgres-hba", "host  all  all  10.0.0.0/8  scram-sha-256\nlocal all  postgres       peer\n")
        add("config", "java-props-plain", "spring.security.oauth2.resourceserver.jwt.issuer-uri=https://login.acme.io\nserver.ssl.key-store=classpath:keystore.p12\nserver.ssl.key-store-type=PKCS12\n")
        add("config", "appsettings-plain", json.dumps({"Authentication": {"Authority": "https://login.acme.io", "Audience": "api",
            "RequireHttpsMetadata": True}, "AllowedHosts": "*"}, indent=2) + "\n")
        add("config", "github-workflow-permissions", "permissions:\n  id-token: write\n  contents: read\n")
        add("config", "rate-limits", "token_bucket:\n  capacity: 100\n  refill_per_second: 10\n")
        add("config", "tokenizer", 'tokenizer = AutoTokenizer.from_pretrained("bert-base-uncased")\ntokens = tokenizer("hello")["input_ids"]\n')
        add("config", "cli-flags-plain", "pytest -k 'test_token and not slow' -p no:cacheprovider\n"
            "ssh -p 2222 -i ~/.ssh/id_ed25519 deploy@web01\n")
        add("config", "long-random-path", f"/var/lib/docker/overlay2/{g.hex(64)}/merged\n")
        add("config", "feature-flags", "FEATURE_PASSWORDLESS_LOGIN=true\nTOKEN_CACHE_SIZE=512\nMAX_SECRET_AGE_DAYS=90\n")
    return out
