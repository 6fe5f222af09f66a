"""A second blind set, written after the engine was changed against the first one and never
used to change it: other files, other languages, other headers and other look-alikes.

Takes a seed; gives `secret_samples()` and `look_alikes()` in the shapes of `generate`. Its
figure says how the engine does on places it was not adjusted to; the first set's figure after
the changes says only that the misses it showed are fixed.
"""
from __future__ import annotations

import base64
import json

from tests.redaction_blind.generate import ALNUM, B64URL, DIGITS, UPPER, Gen, LookAlike, Sample


def secret_samples(seed: int = 5772) -> list[Sample]:
    g = Gen(seed)
    out: list[Sample] = []

    def add(cat: str, name: str, text: str, *secrets: str) -> None:
        out.append(Sample(cat, name, text, tuple(secrets)))

    for _ in range(3):
        p = [g.password() for _ in range(12)]
        t = [g.s(ALNUM, 32) for _ in range(12)]
        add("ci", "gitlab-ci.yml", f"variables:\n  DOCKER_DRIVER: overlay2\n  DB_PASSWORD: \"{p[0]}\"\n\ntest:\n  script: make test\n", p[0])
        add("ci", "jenkinsfile-env", f"pipeline {{\n  environment {{\n    API_KEY = '{t[0]}'\n    STAGE = 'prod'\n  }}\n}}\n", t[0])
        g.aws_secret()  # a draw of the measured set, kept so that its values stay the same
        aws = g.aws_secret()
        add("ci", "circleci", f"jobs:\n  build:\n    environment:\n      AWS_SECRET_ACCESS_KEY: {aws}\n", aws)
        add("ops", "ansible-inventory", f"[web]\nweb01 ansible_host=10.0.0.5 ansible_user=deploy ansible_password={p[1]} ansible_become_pass={p[2]}\n", p[1], p[2])
        add("ops", "puppet", f"class {{ 'postgresql::server':\n  postgres_password => '{p[3]}',\n}}\n", p[3])
        b = base64.b64encode(f"svc:{p[4]}".encode()).decode()
        add("ops", "nginx-proxy-auth", f"location /api/ {{\n  proxy_set_header Authorization \"Basic {b}\";\n  proxy_pass http://backend;\n}}\n", b)
        add("ops", "haproxy-userlist", f"userlist admins\n  user admin insecure-password {p[5]}\n", p[5])
        add("ops", "postfix-sasl", f"[smtp.mailgun.org]:587 postmaster@mg.acme.io:{t[1]}\n", t[1])
        add("ops", "wpa-supplicant", f"network={{\n    ssid=\"office\"\n    psk=\"{p[6]}\"\n}}\n", p[6])
        add("ops", "smb-credentials", f"username=backup\npassword={p[7]}\ndomain=ACME\n", p[7])
        add("config", "alembic.ini", f"[alembic]\nscript_location = migrations\nsqlalchemy.url = postgresql://app:{t[2]}@db/app\n", t[2])
        add("config", "flyway.conf", f"flyway.url=jdbc:postgresql://db:5432/app\nflyway.user=app\nflyway.password={p[8]}\n", p[8])
        add("config", "airflow-conn", f"export AIRFLOW_CONN_WAREHOUSE='postgres://etl:{t[3]}@dw:5432/dw'\n", t[3])
        add("config", "celery", f"CELERY_BROKER_URL = \"redis://:{t[4]}@cache:6379/0\"\n", t[4])
        add("config", "kafka-client.properties", f"security.protocol=SASL_SSL\nsasl.mechanism=PLAIN\nsasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username=\"{g.s(UPPER + DIGITS, 16)}\" password=\"{t[5]}\";\n", t[5])
        add("config", "kibana.yml", f"elasticsearch.hosts: [\"https://es:9200\"]\nelasticsearch.username: kibana_system\nelasticsearch.password: {p[9]}\n", p[9])
        add("config", "grafana.ini", f"[security]\nadmin_user = admin\nadmin_password = {p[10]}\n", p[10])
        c = g.uuid()
        add("config", "consul-env", f"export CONSUL_HTTP_ADDR=https://consul:8501\nexport CONSUL_HTTP_TOKEN={c}\n", c)
        add("config", "toml-inline-table", f'[databases]\nmain = {{ host = "db", user = "app", password = "{p[11]}" }}\n', p[11])
        q = [g.password() for _ in range(10)]
        u = [g.s(ALNUM, 36) for _ in range(10)]
        add("config", "yaml-flow-mapping", f"smtp: {{ host: smtp.acme.io, user: mailer, pass: {u[0]} }}\n", u[0])
        add("config", "properties-colon", f"db.url: jdbc:mysql://db/app\ndb.password: {q[0]}\n", q[0])
        add("config", "xml-attributes", f'<Credentials User="svc" Password="{q[1]}" Domain="ACME"/>\n', q[1])
        add("config", "json5-unquoted", f"module.exports = {{\n  apiKey: '{u[1]}',\n  region: 'eu',\n}};\n", u[1])
        add("cli", "kubectl-set-credentials", f"kubectl config set-credentials admin --username=admin --password={q[2]}\n", q[2])
        add("cli", "helm-set", f"helm upgrade --install db bitnami/postgresql --set auth.postgresPassword={q[3]}\n", q[3])
        add("cli", "psql-uri-param", f'psql "postgresql://db:5432/app?user=app&password={u[2]}"\n', u[2])
        tg = f"{g.digits(10)}:AA{g.s(B64URL, 33)}"
        add("cli", "telegram-url", f"curl -s https://api.telegram.org/bot{tg}/sendMessage -d chat_id=42 -d text=hi\n", tg)
        add("cli", "az-keyvault", f"az keyvault secret set --vault-name kv --name db --value '{q[4]}'\n", q[4])
        g.aws_key_id(), g.hex(64)  # draws of the measured set
        sig = g.hex(64)
        add("cli", "presigned-url", f"curl 'https://acme.s3.amazonaws.com/a.tgz?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20260301T000000Z&X-Amz-Signature={sig}'\n", sig)
        g.jwt()  # a draw of the measured set
        j = g.jwt()
        add("header", "cookie-jwt", f"Cookie: theme=dark; session={j}\n", j)
        vt = "hvs." + g.s(B64URL, 24)
        add("header", "vault-header", f'curl -H "X-Vault-Token: {vt}" https://vault:8200/v1/secret/data/db\n', vt)
        apim = g.hex(32)
        add("header", "azure-apim", f'curl -H "Ocp-Apim-Subscription-Key: {apim}" https://api.cognitive.microsoft.com/x\n', apim)
        cfk = g.hex(37)
        add("header", "cloudflare-key", f'curl -H "X-Auth-Email: ops@acme.io" -H "X-Auth-Key: {cfk}" https://api.cloudflare.com/client/v4/zones\n', cfk)
        sb = g.jwt()
        add("header", "supabase-apikey", f'curl -H "apikey: {sb}" https://xyz.supabase.co/rest/v1/items\n', sb)
        ddk = g.hex(32)
        add("header", "datadog-header", f'curl -X POST -H "DD-API-KEY: {ddk}" https://api.datadoghq.com/api/v1/series\n', ddk)
        add("code", "kotlin-const", f'const val API_SECRET = "{u[3]}"\n', u[3])
        add("code", "scala-val", f'val password = "{q[5]}"\n', q[5])
        add("code", "elixir-config", f'config :app, App.Repo,\n  username: "app",\n  password: "{q[6]}",\n  hostname: "db"\n', q[6])
        add("code", "rust-unwrap-or", f'let key = env::var("API_KEY").unwrap_or("{u[4]}".to_string());\n', u[4])
        add("code", "dart-const", f"const apiKey = '{u[5]}';\n", u[5])
        add("code", "lua-local", f'local token = "{u[6]}"\n', u[6])
        add("code", "perl-my", f"my $password = '{q[7]}';\n", q[7])
        oa = "sk-proj-" + g.s(B64URL, 120) + "T3BlbkFJ" + g.s(B64URL, 40)
        add("code", "r-setenv", f'Sys.setenv(OPENAI_API_KEY = "{oa}")\n', oa)
        gh = g.github("ghp_")
        add("code", "terraform-provider", f'provider "github" {{\n  token = "{gh}"\n  owner = "acme"\n}}\n', gh)
        add("code", "groovy-def", f"def password = '{q[8]}'\n", q[8])
        add("code", "c-define", f'#define API_KEY "{u[7]}"\n', u[7])
        add("code", "cpp-string", f'const std::string kClientSecret = "{u[8]}";\n', u[8])
        sk = "sk_live_" + g.s(ALNUM, 99)
        add("code", "notebook-cell", json.dumps({"cell_type": "code", "source": ["import stripe\n", f"stripe.api_key = \"{sk}\"\n"]}, indent=1) + "\n", sk)
        add("code", "python-bytes-key", f"SECRET_KEY = b'{u[9]}'\n", u[9])
        g.s(ALNUM, 32)  # a draw of the measured set
        sw = g.s(ALNUM, 32)
        add("code", "swift-dict", f'let config = ["apiKey": "{sw}"]\n', sw)
        add("code", "go-map", f'creds := map[string]string{{"username": "svc", "password": "{q[9]}"}}\n', q[9])
    return out


def look_alikes(seed: int = 1618) -> list[LookAlike]:
    g = Gen(seed)
    out: list[LookAlike] = []

    def add(cat: str, name: str, text: str) -> None:
        out.append(LookAlike(cat, name, text))

    for _ in range(3):
        add("schema", "json-schema", '{"properties": {"password": {"type": "string", "minLength": 8}, "token": {"type": "string"}}}\n')
        add("schema", "openapi-security", "components:\n  securitySchemes:\n    bearerAuth:\n      type: http\n      scheme: bearer\n      bearerFormat: JWT\n")
        add("schema", "terraform-sensitive", 'variable "db_password" {\n  type      = string\n  sensitive = true\n}\n')
        add("config", "api-version", 'api_version = "2024-06-01"\nAPI_VERSION=v2\n')
        add("config", "cookie-plain", "Set-Cookie: theme=dark; Path=/; SameSite=Lax\n")
        add("config", "key-path", 'private_key_path = "/etc/ssl/private/server.key"\nssl_key: /etc/ssl/private/site.key\n')
        add("config", "token-url", "TOKEN_URL=https://oauth2.googleapis.com/token\nAUTH_URL=https://accounts.google.com/o/oauth2/auth\n")
        add("config", "secret-ref", "secret_ref: projects/123456/secrets/db-password/versions/latest\n")
        add("config", "reset-ttl", "password_reset_token_ttl_hours: 24\nauth: false\n")
        add("config", "keyserver", "keyserver hkps://keys.openpgp.org\n")
        add("config", "kms-key-id", f'kms_key_id = "{g.uuid()}"\nkey_alias  = "alias/aws/s3"\n')
        add("config", "label-yaml", 'password_label: "Your password"\ntoken_hint: "Starts with ghp_"\n')
        add("code", "redux-action", "export const SET_TOKEN = 'SET_TOKEN';\nexport const TOKEN_KEY = 'auth_token';\n")
        add("code", "password-regex", "const PASSWORD_REGEX = /^(?=.*\\d)(?=.*[a-z]).{8,}$/;\n")
        add("code", "html-input", '<input type="password" name="password" placeholder="Password" autocomplete="current-password">\n')
        add("code", "go-header-get", 'token := r.Header.Get("Authorization")\nsecret := viper.GetString("jwt.secret")\n')
        add("code", "java-char-array", "char[] password = console.readPassword();\n")
        add("code", "password-compare", "if (bcrypt.compareSync(password, user.passwordHash)) { return token; }\n")
        add("code", "csharp-secret-manager", 'var secret = await secretClient.GetSecretAsync("api-key");\n')
        add("code", "rust-env", 'let token = std::env::var("GITHUB_TOKEN")?;\n')
        add("cli", "ssh-keygen-comment", 'ssh-keygen -t ed25519 -C "ci@acme" -f ~/.ssh/ci\n')
        add("cli", "password-prompt-flag", "kubectl create secret generic db --from-file=password=./db_password.txt\nvault write -f auth/approle/role/ci/secret-id\n")
        add("cli", "git-branch", "git checkout -b feature/token-refresh\ngit push origin fix/password-reset-email\n")
        g.hex(40), g.s(ALNUM, 20)  # draws of the measured set
        out.append(LookAlike("hash-id", "github-api-sha", json.dumps({"sha": g.hex(40), "url": "https://api.github.com/repos/acme/x/git/commits/1"}) + "\n"))
        add("hash-id", "image-tag", f"image: ghcr.io/acme/api:sha-{g.hex(7)}\n")
        add("hash-id", "yarn-berry-checksum", f'"lodash@npm:^4.17.21":\n  version: 4.17.21\n  checksum: 10c0/{g.hex(128)}\n')
        add("hash-id", "pnpm-lock", f"  /lodash@4.17.21:\n    resolution: {{integrity: sha512-{g.b64(64)}}}\n")
        add("hash-id", "sourcemap", '{"version": 3, "sources": ["app.ts"], "mappings": "AAAA,SAASA,GAAG,CAACC,CAAS;IAC1B,OAAOA,CAAC,GAAG,CAAC,CAAC"}\n')
        add("hash-id", "content-hash", f'"content-hash": "{g.hex(32)}"\n')
        add("hash-id", "sqlite-row", f"INSERT INTO sessions_meta (id, created) VALUES ('{g.uuid()}', '2026-03-01');\n")
        add("prose", "api-doc", "Pass the token in the Authorization header. The key is valid for one hour; request a new one with the refresh token.\n")
        add("prose", "log-rotate", "INFO  secrets: rotated 3 credentials (next rotation in 30d)\n")
        add("prose", "ui-string", '"errors.password.tooShort": "Password must be at least 12 characters",\n')
    return out
