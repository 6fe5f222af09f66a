"""A third blind set, written before the engine was changed for it: other places again.

Kubernetes manifests, Helm values, Terraform, docker-compose and `docker run`, package-manager
credential files (.npmrc, .pypirc, .netrc, pip.conf, Maven settings.xml, gradle.properties,
NuGet.Config, composer auth.json), appsettings.json and web.config, Spring configuration, source
literals and builder calls in a dozen languages, SQL, command lines of database, cloud and
registry clients, HTTP headers and cookies, private keys in their several armours, webhook URLs,
DSNs in many schemes, percent-encoded and JSON-escaped values, diffs and log lines. The
look-alikes are the things that sit in the same places and are not secrets: references in every
syntax, placeholders, masks, hashes and ids in their usual roles, public keys, paths, versions,
feature flags, design tokens.

Takes a seed; gives `secret_samples()` and `look_alikes()` in the shapes of `generate`. Token
shapes follow each provider's description of its format; the values come from the seeded
generator.
"""
from __future__ import annotations

import base64
import json
import urllib.parse

from tests.redaction_blind.generate import (ALNUM, B64URL, DIGITS, HEX, LOWER, UPPER, Gen, LookAlike,
                                            Sample)

BASE32L = "abcdefghijklmnopqrstuvwxyz234567"


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _openssh_key(g: Gen) -> tuple[str, str]:
    """An OpenSSH private key block and one line of its body."""
    raw = b"openssh-key-v1\x00\x00\x00\x00\x04none\x00\x00\x00\x04none" + g.r.randbytes(360)
    body = base64.b64encode(raw).decode()
    rows = [body[i:i + 70] for i in range(0, len(body), 70)]
    return ("-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(rows) +
            "\n-----END OPENSSH PRIVATE KEY-----", rows[2])


def _putty_key(g: Gen) -> tuple[str, str]:
    pub = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00 " + g.r.randbytes(32)).decode()
    priv = base64.b64encode(b"\x00\x00\x00 " + g.r.randbytes(32)).decode()
    text = ("PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: deploy@build\n"
            f"Public-Lines: 2\n{pub[:64]}\n{pub[64:]}\nPrivate-Lines: 1\n{priv}\n"
            f"Private-MAC: {g.hex(64)}\n")
    return text, priv


def _pgp_key(g: Gen) -> tuple[str, str]:
    body = base64.b64encode(b"\x95\x03\xc6\x04" + g.r.randbytes(400)).decode()
    rows = [body[i:i + 64] for i in range(0, len(body), 64)]
    return ("-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n" + "\n".join(rows) + "\n=" + g.s(ALNUM, 4) +
            "\n-----END PGP PRIVATE KEY BLOCK-----", rows[3])


def _pem_line(pem: str, n: int = 2) -> str:
    return pem.split("\n")[n]


def _pct(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def secret_samples(seed: int = 9091) -> list[Sample]:
    g = Gen(seed)
    out: list[Sample] = []

    def add(cat: str, name: str, text: str, *secrets: str) -> None:
        out.append(Sample(cat, name, text, tuple(secrets)))

    def pw() -> str:
        return g.password()

    def tok(n: int = 32) -> str:
        return g.s(ALNUM, n)

    for _ in range(3):
        # ---- Kubernetes ----
        p1, p2, t1 = pw(), pw(), tok(40)
        add("k8s", "secret-stringdata",
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: app-secrets\n  namespace: prod\ntype: Opaque\n"
            f"stringData:\n  DB_PASSWORD: \"{p1}\"\n  STRIPE_KEY: sk_live_{t1}\n  DB_HOST: db.prod.svc\n",
            p1, "sk_live_" + t1)
        d1, d2 = _b64(p2), _b64(tok(48))
        add("k8s", "secret-data-base64",
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db-credentials\ntype: Opaque\ndata:\n"
            f"  username: {_b64('app')}\n  password: {d1}\n  api-token: {d2}\n", d1, d2)
        p3 = pw()
        add("k8s", "deployment-env-value",
            "spec:\n  containers:\n    - name: api\n      image: acme/api:1.4.2\n      env:\n"
            f"        - name: DATABASE_PASSWORD\n          value: \"{p3}\"\n        - name: LOG_LEVEL\n          value: info\n", p3)
        k1 = tok(36)
        add("k8s", "deployment-env-flow",
            f"      env:\n      - {{name: REDIS_PASSWORD, value: {k1}}}\n      - {{name: PORT, value: \"8080\"}}\n", k1)
        sat = g.jwt({"iss": "kubernetes/serviceaccount", "kubernetes.io/serviceaccount/namespace": "ci",
                     "sub": "system:serviceaccount:ci:deployer"})
        add("k8s", "kubeconfig-token",
            "apiVersion: v1\nkind: Config\nusers:\n- name: deployer\n  user:\n"
            f"    token: {sat}\ncontexts:\n- name: ci\n", sat)
        pem = g.pem_key("RSA PRIVATE KEY", 8)
        ckd = _b64(pem + "\n")
        add("k8s", "kubeconfig-client-key", f"users:\n- name: admin\n  user:\n    client-key-data: {ckd}\n", ckd)
        auth = _b64(f"robot$ci:{tok(32)}")
        dcj = _b64(json.dumps({"auths": {"harbor.acme.io": {"auth": auth}}}))
        add("k8s", "dockerconfigjson",
            "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/dockerconfigjson\ndata:\n"
            f"  .dockerconfigjson: {dcj}\n", dcj)
        envfile_pw = pw()
        add("k8s", "secret-stringdata-envfile",
            "kind: Secret\nstringData:\n  app.env: |\n    APP_ENV=production\n"
            f"    SMTP_PASSWORD={envfile_pw}\n    SMTP_HOST=smtp.acme.io\n", envfile_pw)
        # ---- Helm values ----
        hp, hr, hc, hs = pw(), pw(), tok(32), tok(40)
        add("iac", "helm-postgresql",
            f"postgresql:\n  enabled: true\n  auth:\n    username: app\n    password: {hp}\n    postgresPassword: \"{hr}\"\n    database: app\n",
            hp, hr)
        add("iac", "helm-rabbitmq-cookie", f"rabbitmq:\n  auth:\n    username: user\n    erlangCookie: {hc}\n", hc)
        add("iac", "helm-oauth", f"oauth2-proxy:\n  config:\n    clientID: acme-web\n    clientSecret: \"{hs}\"\n    cookieSecret: {g.b64(32)}\n",
            hs)
        ga = pw()
        add("iac", "helm-grafana", f"grafana:\n  adminUser: admin\n  adminPassword: '{ga}'\n  persistence:\n    enabled: false\n", ga)
        mr = pw()
        add("iac", "helm-set-string", f"helm install minio minio/minio --set-string rootPassword={mr} --set rootUser=admin\n", mr)
        # ---- Terraform ----
        tp, tt = pw(), tok(40)
        add("iac", "tfvars", f'region      = "eu-west-1"\ndb_password = "{tp}"\ncloudflare_api_token = "{tt}"\ninstance_count = 3\n', tp, tt)
        ak, sk = g.aws_key_id(), g.aws_secret()
        add("iac", "tf-provider-aws", f'provider "aws" {{\n  region     = "us-east-1"\n  access_key = "{ak}"\n  secret_key = "{sk}"\n}}\n', ak, sk)
        cs = g.azure_client_secret()
        add("iac", "tf-provider-azurerm",
            f'provider "azurerm" {{\n  features {{}}\n  subscription_id = "{g.uuid()}"\n  client_id       = "{g.uuid()}"\n  client_secret   = "{cs}"\n  tenant_id       = "{g.uuid()}"\n}}\n', cs)
        dda, ddp = g.hex(32), g.hex(40)
        add("iac", "tf-provider-datadog", f'provider "datadog" {{\n  api_key = "{dda}"\n  app_key = "{ddp}"\n}}\n', dda, ddp)
        mp = pw()
        add("iac", "tf-db-instance",
            f'resource "aws_db_instance" "main" {{\n  engine         = "postgres"\n  username       = "app"\n  password       = "{mp}"\n  instance_class = "db.t3.micro"\n}}\n', mp)
        vt = "hvs." + g.s(B64URL, 90)
        add("iac", "tf-provider-vault", f'provider "vault" {{\n  address = "https://vault.acme.io:8200"\n  token   = "{vt}"\n}}\n', vt)
        tv = pw()
        add("iac", "terraform-var-flag", f"terraform apply -var 'admin_password={tv}' -auto-approve\n", tv)
        so = pw()
        add("iac", "tfstate-output",
            json.dumps({"outputs": {"db_password": {"value": so, "type": "string", "sensitive": True}}}, indent=2) + "\n", so)
        # ---- docker-compose and docker run ----
        c1, c2, c3 = pw(), pw(), tok(50)
        add("compose", "compose-env-list",
            f"services:\n  db:\n    image: postgres:16\n    environment:\n      - POSTGRES_USER=app\n      - POSTGRES_PASSWORD={c1}\n      - \"PGADMIN_DEFAULT_PASSWORD={c2}\"\n",
            c1, c2)
        add("compose", "compose-env-map",
            f"services:\n  web:\n    environment:\n      RAILS_ENV: production\n      SECRET_KEY_BASE: {c3}\n", c3)
        c4 = pw()
        add("compose", "compose-redis-command", f"  cache:\n    image: redis:7\n    command: redis-server --appendonly yes --requirepass {c4}\n", c4)
        c5 = pw()
        add("compose", "compose-mssql", f"  mssql:\n    image: mcr.microsoft.com/mssql/server:2022-latest\n    environment:\n      ACCEPT_EULA: \"Y\"\n      MSSQL_SA_PASSWORD: \"{c5}\"\n", c5)
        c6 = pw()
        add("compose", "compose-database-url", f"    environment:\n      DATABASE_URL: postgres://app:{c6}@db:5432/app?sslmode=disable\n", c6)
        c7, c8 = pw(), tok(32)
        add("compose", "docker-run-e", f"docker run -d --name mysql -e MYSQL_ROOT_PASSWORD={c7} -p 3306:3306 mysql:8\n", c7)
        add("compose", "docker-run-env", f"docker run --rm --env API_KEY={c8} --env LOG_LEVEL=debug acme/worker:latest\n", c8)
        c9 = pw()
        add("compose", "docker-run-quoted", f'docker run -e "KEYCLOAK_ADMIN_PASSWORD={c9}" quay.io/keycloak/keycloak start-dev\n', c9)
        c10 = pw()
        add("compose", "dockerfile-env", f"FROM node:20-alpine\nENV NODE_ENV=production \\\n    DB_PASS={c10}\nCMD [\"node\", \"server.js\"]\n", c10)
        c11 = tok(40)
        add("compose", "dockerfile-arg", f"ARG NPM_TOKEN={c11}\nRUN npm ci\n", c11)
        # ---- package manager credentials ----
        nt = "npm_" + tok(36)
        add("pkg", "npmrc-authtoken", f"registry=https://registry.npmjs.org/\n//registry.npmjs.org/:_authToken={nt}\n", nt)
        gt = g.github("ghp_")
        add("pkg", "npmrc-github", f"@acme:registry=https://npm.pkg.github.com\n//npm.pkg.github.com/:_authToken={gt}\n", gt)
        na = _b64(f"deploy:{pw()}")
        add("pkg", "npmrc-auth", f"registry=https://nexus.acme.io/repository/npm/\n_auth={na}\nalways-auth=true\n", na)
        np_ = _b64(pw())
        add("pkg", "npmrc-password", f"//nexus.acme.io/repository/npm/:username=deploy\n//nexus.acme.io/repository/npm/:_password={np_}\n", np_)
        pt = "pypi-AgEIcHlwaS5vcmc" + g.b64url(90)
        add("pkg", "pypirc", f"[distutils]\nindex-servers =\n    pypi\n\n[pypi]\nusername = __token__\npassword = {pt}\n", pt)
        pp = pw()
        add("pkg", "pypirc-private", f"[internal]\nrepository = https://pypi.acme.io/\nusername = ci\npassword = {pp}\n", pp)
        nr1, nr2 = pw(), tok(40)
        add("pkg", "netrc", f"machine ftp.acme.io\n  login backup\n  password {nr1}\nmachine api.heroku.com login ops@acme.io password {nr2}\n", nr1, nr2)
        pi = pw()
        pi_enc = _pct(pi)
        add("pkg", "pip-conf", f"[global]\nindex-url = https://ci:{pi_enc}@pypi.acme.io/simple\ntimeout = 60\n", pi_enc)
        mv = pw()
        add("pkg", "maven-settings",
            f"<settings>\n  <servers>\n    <server>\n      <id>nexus-releases</id>\n      <username>deploy</username>\n      <password>{mv}</password>\n    </server>\n  </servers>\n</settings>\n",
            mv)
        gp1, gp2 = pw(), pw()
        add("pkg", "gradle-properties", f"org.gradle.jvmargs=-Xmx2g\nmavenUser=deploy\nmavenPassword={gp1}\nsigning.keyId=24875D73\nsigning.password={gp2}\n", gp1, gp2)
        ak2 = "AKCp" + tok(69)
        add("pkg", "gradle-artifactory", f"artifactory_user=ci\nartifactory_apikey={ak2}\n", ak2)
        nu = g.s(BASE32L, 52)
        add("pkg", "nuget-config",
            f'<configuration>\n  <packageSourceCredentials>\n    <AcmeFeed>\n      <add key="Username" value="ci" />\n      <add key="ClearTextPassword" value="{nu}" />\n    </AcmeFeed>\n  </packageSourceCredentials>\n</configuration>\n',
            nu)
        nk = "oy2" + g.s(LOWER + DIGITS, 43)
        add("pkg", "nuget-push", f"dotnet nuget push bin/Release/Acme.1.2.0.nupkg --api-key {nk} --source https://api.nuget.org/v3/index.json\n", nk)
        cp = pw()
        add("pkg", "composer-auth", json.dumps({"http-basic": {"repo.packagist.com": {"username": "token", "password": cp}}}, indent=4) + "\n", cp)
        yt = "npm_" + tok(36)
        add("pkg", "yarnrc-yml", f'npmRegistryServer: "https://registry.npmjs.org"\nnpmAuthToken: {yt}\n', yt)
        rg = "rubygems_" + g.hex(48)
        add("pkg", "gem-credentials", f"---\n:rubygems_api_key: {rg}\n", rg)
        ct = "cio" + tok(32)
        add("pkg", "cargo-credentials", f'[registry]\ntoken = "{ct}"\n', ct)
        bu = pw()
        add("pkg", "bundler-env", f"export BUNDLE_GEMS__CONTRIBSYS__COM=acme:{bu}\n", bu)
        # ---- .NET ----
        dp = pw()
        add("dotnet", "appsettings-connstr",
            json.dumps({"ConnectionStrings": {"Default": f"Server=sql.acme.io;Database=App;User Id=app;Password={dp};TrustServerCertificate=True"},
                        "Logging": {"LogLevel": {"Default": "Information"}}}, indent=2) + "\n", dp)
        jk = g.b64(48)
        add("dotnet", "appsettings-jwt", json.dumps({"Jwt": {"Issuer": "acme", "Key": jk, "ExpiresMinutes": 60}}, indent=2) + "\n", jk)
        rp = pw()
        add("dotnet", "appsettings-redis", json.dumps({"Redis": {"Configuration": f"cache.acme.io:6380,password={rp},ssl=True,abortConnect=False"}}, indent=2) + "\n", rp)
        wp = pw()
        add("dotnet", "web-config-connstr",
            f'<connectionStrings>\n  <add name="Main" connectionString="Data Source=sql01;Initial Catalog=Shop;User ID=shop;Password={wp}" providerName="System.Data.SqlClient" />\n</connectionStrings>\n',
            wp)
        vk, dk = g.hex(128).upper(), g.hex(48).upper()
        add("dotnet", "web-config-machinekey", f'<system.web>\n  <machineKey validationKey="{vk}" decryptionKey="{dk}" validation="HMACSHA256" decryption="AES" />\n</system.web>\n',
            vk, dk)
        sa = "sk_live_" + tok(99)
        add("dotnet", "web-config-appsettings", f'<appSettings>\n  <add key="Stripe:SecretKey" value="{sa}" />\n  <add key="Theme" value="dark" />\n</appSettings>\n', sa)
        sbk = g.b64(32)
        add("dotnet", "servicebus-connstr",
            json.dumps({"ServiceBus": f"Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={sbk}"}) + "\n", sbk)
        us = tok(40)
        add("dotnet", "user-secrets", f'dotnet user-secrets set "Authentication:Google:ClientSecret" "{us}"\n', us)
        # ---- Spring ----
        s1, s2 = pw(), pw()
        add("spring", "application-yml",
            f"spring:\n  datasource:\n    url: jdbc:postgresql://db:5432/app\n    username: app\n    password: {s1}\n  mail:\n    host: smtp.acme.io\n    password: '{s2}'\n",
            s1, s2)
        s3 = tok(40)
        add("spring", "oauth-client-secret",
            f"spring.security.oauth2.client.registration.github.client-id=Iv1.{g.hex(16)}\nspring.security.oauth2.client.registration.github.client-secret={s3}\n", s3)
        s4, s5 = pw(), g.b64(32)
        add("spring", "application-properties", f"spring.rabbitmq.username=app\nspring.rabbitmq.password={s4}\njwt.secret={s5}\n", s4, s5)
        s6 = pw()
        add("spring", "redis-yml", f"spring:\n  data:\n    redis:\n      host: cache\n      password: \"{s6}\"\n", s6)
        s7 = pw()
        add("spring", "jasypt-flag", f"java -Djasypt.encryptor.password={s7} -jar app.jar\n", s7)
        s8 = pw()
        add("spring", "value-default", f'@Value("${{db.password:{s8}}}")\nprivate String dbPassword;\n', s8)
        # ---- source code ----
        j1, j2 = pw(), tok(40)
        add("code", "java-getconnection", f'Connection c = DriverManager.getConnection("jdbc:mysql://db/app", "root", "{j1}");\n', j1)
        add("code", "java-static-final", f'    private static final String API_SECRET = "{j2}";\n', j2)
        j3 = pw()
        add("code", "java-builder", f'DataSource ds = DataSourceBuilder.create()\n    .url(url)\n    .username("app")\n    .password("{j3}")\n    .build();\n', j3)
        j4 = pw()
        add("code", "java-props-put", f'Properties props = new Properties();\nprops.put("user", "app");\nprops.put("password", "{j4}");\n', j4)
        k2 = tok(40)
        add("code", "kotlin-header", f'val request = Request.Builder().url(url)\n    .header("Authorization", "Bearer {k2}")\n    .build()\n', k2)
        k3 = pw()
        add("code", "kotlin-named-arg", f'val ds = HikariDataSource(HikariConfig().apply {{\n    username = "app"\n    password = "{k3}"\n}})\n', k3)
        sc = tok(32)
        add("code", "scala-config", f'val awsCreds = new BasicAWSCredentials("{g.aws_key_id()}", "{sc}")\n', sc)
        cs1, cs2 = pw(), tok(40)
        add("code", "csharp-sqlconnection", f'using var conn = new SqlConnection("Server=db;Database=app;User Id=sa;Password={cs1};");\n', cs1)
        add("code", "csharp-auth-header", f'client.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "{cs2}");\n', cs2)
        cs3 = tok(32)
        add("code", "csharp-options", f'options.ClientId = "acme-web";\noptions.ClientSecret = "{cs3}";\n', cs3)
        go1, go2 = pw(), tok(40)
        add("code", "go-redis-options", f'rdb := redis.NewClient(&redis.Options{{\n\tAddr:     "cache:6379",\n\tPassword: "{go1}",\n\tDB:       0,\n}})\n', go1)
        add("code", "go-header-set", f'req.Header.Set("Authorization", "Bearer {go2}")\n', go2)
        go3 = g.aws_secret()
        add("code", "go-static-creds", f'creds := credentials.NewStaticCredentials("{g.aws_key_id()}", "{go3}", "")\n', go3)
        r1, r2 = tok(40), pw()
        add("code", "rust-bearer", f'let resp = client.get(url).bearer_auth("{r1}").send().await?;\n', r1)
        add("code", "rust-basic-auth", f'client.post(url).basic_auth("admin", Some("{r2}"))\n', r2)
        r3 = tok(48)
        add("code", "rust-const", f'const API_TOKEN: &str = "{r3}";\n', r3)
        sw1, sw2 = tok(40), tok(32)
        add("code", "swift-header", f'request.setValue("Bearer {sw1}", forHTTPHeaderField: "Authorization")\n', sw1)
        add("code", "swift-static", f'enum Secrets {{\n    static let clientSecret = "{sw2}"\n}}\n', sw2)
        ph1, ph2 = pw(), pw()
        add("code", "php-define", f"define('DB_USER', 'wp');\ndefine('DB_PASSWORD', '{ph1}');\ndefine('AUTH_KEY', '{g.s(ALNUM + '!@#%^&*()-_[]{{}}<>~+=,.;:/?|', 64)}');\n", ph1)
        add("code", "php-laravel-array", f"'mysql' => [\n    'driver' => 'mysql',\n    'username' => 'forge',\n    'password' => '{ph2}',\n],\n", ph2)
        ph3 = pw()
        add("code", "php-pdo", f'$pdo = new PDO("mysql:host=db;dbname=shop", "shop", "{ph3}");\n', ph3)
        rb1, rb2 = "sk_live_" + tok(99), pw()
        add("code", "ruby-stripe", f"Stripe.api_key = '{rb1}'\n", rb1)
        add("code", "ruby-hash", f"ActiveRecord::Base.establish_connection(adapter: 'postgresql', username: 'app', password: '{rb2}')\n", rb2)
        ex1 = g.b64(48)
        add("code", "elixir-secret-key-base", f'config :app, AppWeb.Endpoint,\n  url: [host: "acme.io"],\n  secret_key_base: "{ex1}"\n', ex1)
        py1, py2 = g.aws_secret(), pw()
        add("code", "python-boto3", f's3 = boto3.client("s3", aws_access_key_id="{g.aws_key_id()}", aws_secret_access_key="{py1}")\n', py1)
        add("code", "python-redis", f'r = redis.Redis(host="cache", port=6379, password="{py2}")\n', py2)
        py3 = tok(40)
        add("code", "python-headers-fstring", f'headers = {{"Authorization": f"Bearer {py3}", "Accept": "application/json"}}\n', py3)
        js1, js2 = pw(), tok(40)
        add("code", "ts-pg-client", f"const client = new Client({{\n  host: 'db',\n  user: 'app',\n  password: '{js1}',\n}});\n", js1)
        add("code", "js-axios-default", f"axios.defaults.headers.common['Authorization'] = 'Bearer {js2}';\n", js2)
        js3 = tok(32)
        add("code", "js-nullish-fallback", f"const apiKey = process.env.API_KEY ?? '{js3}';\n", js3)
        # ---- SQL ----
        q1, q2, q3, q4, q5, q6 = pw(), pw(), pw(), pw(), pw(), pw()
        add("sql", "oracle-create-user", f"CREATE USER app_owner IDENTIFIED BY \"{q1}\" DEFAULT TABLESPACE users;\n", q1)
        add("sql", "mysql-create-user", f"CREATE USER 'app'@'%' IDENTIFIED BY '{q2}';\nGRANT ALL PRIVILEGES ON app.* TO 'app'@'%';\n", q2)
        add("sql", "mysql-alter-native", f"ALTER USER 'root'@'localhost' IDENTIFIED WITH mysql_native_password BY '{q3}';\n", q3)
        add("sql", "postgres-alter-role", f"ALTER ROLE replicator WITH LOGIN REPLICATION PASSWORD '{q4}';\n", q4)
        add("sql", "mssql-create-login", f"CREATE LOGIN app_login WITH PASSWORD = '{q5}', CHECK_POLICY = OFF;\n", q5)
        add("sql", "snowflake-user", f"create user etl password='{q6}' default_role = loader must_change_password = false;\n", q6)
        q7, q8 = pw(), pw()
        add("sql", "user-mapping", f"CREATE USER MAPPING FOR app SERVER legacy OPTIONS (user 'legacy', password '{q7}');\n", q7)
        add("sql", "set-password", f"SET PASSWORD FOR 'report'@'%' = '{q8}';\n", q8)
        # ---- command lines ----
        u1, u2 = pw(), tok(40)
        add("cli", "curl-user", f"curl -sS --user admin:{u1} https://jenkins.acme.io/api/json\n", u1)
        add("cli", "curl-oauth2-bearer", f"curl --oauth2-bearer {u2} https://api.acme.io/v1/me\n", u2)
        u3 = tok(32)
        add("cli", "curl-form-secret", f"curl -X POST https://login.acme.io/oauth/token -d grant_type=client_credentials -d client_id=web -d client_secret={u3}\n", u3)
        u4 = pw()
        add("cli", "curl-json-body", f"curl -X POST https://api.acme.io/login -H 'Content-Type: application/json' -d '{{\"username\":\"ops\",\"password\":\"{u4}\"}}'\n", u4)
        u5 = tok(40)
        add("cli", "httpie-header", f"http GET https://api.acme.io/v1/items 'Authorization:Bearer {u5}'\n", u5)
        u6 = pw()
        add("cli", "httpie-auth", f"http -a ops:{u6} POST https://api.acme.io/v1/deploy\n", u6)
        u7, u8 = pw(), tok(40)
        add("cli", "wget-password", f"wget --user=backup --password={u7} ftp://ftp.acme.io/dump.sql.gz\n", u7)
        add("cli", "wget-header", f'wget --header="Authorization: token {u8}" https://git.acme.io/api/v1/repos/acme/x/archive/main.zip\n', u8)
        u9, u10 = pw(), pw()
        add("cli", "mysql-password-flag", f"mysql -h db.acme.io -u root --password={u9} app < schema.sql\n", u9)
        add("cli", "pgpassword-env", f"PGPASSWORD='{u10}' psql -h db.acme.io -U app -d app -c 'select 1'\n", u10)
        u11 = pw()
        add("cli", "mongosh-srv", f'mongosh "mongodb+srv://admin:{_pct(u11)}@cluster0.ab1cd.mongodb.net/app" --quiet\n', _pct(u11))
        u12 = pw()
        add("cli", "redis-cli-user-pass", f"redis-cli -h cache.acme.io --user app --pass {u12} --tls INFO\n", u12)
        u13 = pw()
        add("cli", "az-login-sp", f"az login --service-principal --username {g.uuid()} --password {u13} --tenant {g.uuid()}\n", u13)
        u14 = g.b64(64)
        add("cli", "az-storage-key", f"az storage blob upload --account-name acmedata --account-key {u14} -c backups -f dump.gz -n dump.gz\n", u14)
        u15 = pw()
        add("cli", "gcloud-secret-pipe", f"echo -n '{u15}' | gcloud secrets versions add db-password --data-file=-\n", u15)
        u16 = g.aws_secret()
        add("cli", "aws-configure-set", f"aws configure set aws_secret_access_key {u16} --profile ci\n", u16)
        u17 = g.aws_secret()
        add("cli", "aws-env-prefix", f"AWS_ACCESS_KEY_ID={g.aws_key_id()} AWS_SECRET_ACCESS_KEY={u17} aws s3 ls s3://acme-backups\n", u17)
        u18 = pw()
        add("cli", "kubectl-docker-registry", f"kubectl create secret docker-registry regcred --docker-server=harbor.acme.io --docker-username=ci --docker-password={u18}\n", u18)
        u19 = pw()
        add("cli", "kubectl-from-literal", f"kubectl -n prod create secret generic api --from-literal=API_KEY={u19} --from-literal=MODE=live\n", u19)
        u20 = pw()
        add("cli", "docker-login-p", f"docker login registry.acme.io -u ci -p {u20}\n", u20)
        u21 = "dckr_pat_" + g.s(B64URL, 27)
        add("cli", "docker-login-stdin", f"echo {u21} | docker login -u acme --password-stdin\n", u21)
        u22 = pw()
        add("cli", "helm-repo-add", f"helm repo add acme https://charts.acme.io --username ci --password {u22}\n", u22)
        u23 = g.github("gho_")
        add("cli", "gh-env-token", f"GH_TOKEN={u23} gh release create v1.2.0 dist/*\n", u23)
        u24 = tok(40)
        add("cli", "gh-secret-body", f"gh secret set DEPLOY_KEY --body '{u24}' --repo acme/api\n", u24)
        u25 = pw()
        add("cli", "git-clone-userinfo", f"git clone https://ci-bot:{u25}@git.acme.io/acme/infra.git\n", u25)
        u26 = "npm_" + tok(36)
        add("cli", "npm-config-set", f"npm config set //registry.npmjs.org/:_authToken {u26}\n", u26)
        u27 = "pypi-AgEIcHlwaS5vcmc" + g.b64url(80)
        add("cli", "twine-upload", f"twine upload -u __token__ -p {u27} dist/*\n", u27)
        u28 = pw()
        add("cli", "vault-kv-put", f"vault kv put secret/app/db username=app password={u28}\n", u28)
        u29 = tok(32)
        add("cli", "heroku-config-set", f"heroku config:set STRIPE_SECRET={u29} -a acme-api\n", u29)
        u30 = pw()
        add("cli", "mysqldump", f"mysqldump -uroot -p{u30} --all-databases > all.sql\n", u30)
        u31 = pw()
        add("cli", "pg-dump-uri", f"pg_dump 'postgresql://backup:{u31}@db.acme.io:5432/app' -Fc -f app.dump\n", u31)
        u32 = tok(64)
        add("cli", "influx-token", f"influx bucket list --host https://influx.acme.io --token {u32}\n", u32)
        u33 = g.uuid()
        add("cli", "consul-token-flag", f"consul kv get -token={u33} config/app\n", u33)
        u34 = pw()
        add("cli", "sshpass", f"sshpass -p '{u34}' ssh deploy@10.0.4.12 'sudo systemctl restart api'\n", u34)
        u35 = pw()
        add("cli", "flyctl-secrets", f"fly secrets set DATABASE_PASSWORD={u35} -a acme-api\n", u35)
        # ---- HTTP headers and cookies ----
        h1, h2, h3 = tok(40), _b64(f"api:{pw()}"), g.hex(40)
        add("header", "authorization-bearer", f"GET /v1/orders HTTP/1.1\nHost: api.acme.io\nAuthorization: Bearer {h1}\nAccept: */*\n", h1)
        add("header", "authorization-basic", f"POST /upload HTTP/1.1\nAuthorization: Basic {h2}\nContent-Length: 0\n", h2)
        add("header", "authorization-token", f"Authorization: Token {h3}\n", h3)
        h4, h5 = tok(32), g.uuid()
        add("header", "x-api-key", f"X-Api-Key: {h4}\nUser-Agent: acme-cli/2.1\n", h4)
        add("header", "x-auth-token", f"X-Auth-Token: {h5}\n", h5)
        h6 = g.s(LOWER + DIGITS, 32)
        add("header", "cookie-sessionid", f"Cookie: csrftoken=abc; sessionid={h6}; theme=dark\n", h6)
        h7 = g.hex(32).upper()
        add("header", "cookie-jsessionid", f"Cookie: JSESSIONID={h7}; Path=/\n", h7)
        h8 = "s%3A" + g.s(B64URL, 32) + "." + g.s(B64URL, 43)
        add("header", "set-cookie-connect-sid", f"Set-Cookie: connect.sid={h8}; Path=/; HttpOnly; Secure\n", h8)
        h9 = "glpat-" + g.s(B64URL, 20)
        add("header", "gitlab-private-token", f'curl --header "PRIVATE-TOKEN: {h9}" https://gitlab.acme.io/api/v4/projects\n', h9)
        h10 = "shpat_" + g.hex(32)
        add("header", "shopify-access-token", f'curl -H "X-Shopify-Access-Token: {h10}" https://acme.myshopify.com/admin/api/2024-01/shop.json\n', h10)
        h11 = g.s(B64URL, 54) + "=="
        add("header", "azure-functions-key", f'curl -H "x-functions-key: {h11}" https://acme-fn.azurewebsites.net/api/run\n', h11)
        h12 = _b64(f"ops:{pw()}")
        add("header", "proxy-authorization", f"Proxy-Authorization: Basic {h12}\n", h12)
        h13 = tok(40)
        add("header", "python-requests-log", f"send: b'GET /api HTTP/1.1\\r\\nHost: api.acme.io\\r\\nAuthorization: Bearer {h13}\\r\\n\\r\\n'\n", h13)
        # ---- keys ----
        rsa = g.pem_key("RSA PRIVATE KEY", 10)
        add("keys", "pem-rsa", f"{rsa}\n", _pem_line(rsa, 3))
        ec = g.pem_key("EC PRIVATE KEY", 3)
        add("keys", "pem-ec-in-yaml", "tls:\n  key: |\n    " + ec.replace("\n", "\n    ") + "\n", _pem_line(ec, 2))
        oss, osl = _openssh_key(g)
        add("keys", "openssh", f"{oss}\n", osl)
        ptk, ptl = _putty_key(g)
        add("keys", "putty-ppk", ptk, ptl)
        pgp, pgl = _pgp_key(g)
        add("keys", "pgp-private", f"{pgp}\n", pgl)
        sak = g.pem_key("PRIVATE KEY", 8)
        sa_json = json.dumps({"type": "service_account", "project_id": "acme-prod", "private_key_id": g.hex(40),
                              "private_key": sak + "\n", "client_email": "ci@acme-prod.iam.gserviceaccount.com"}, indent=2)
        add("keys", "gcp-service-account", sa_json + "\n", _pem_line(sak, 4))
        jw = g.jwt({"sub": "svc-" + g.digits(4), "scope": "admin", "exp": 1893456000})
        add("keys", "jwt-env", f"export ACCESS_TOKEN={jw}\n", jw)
        jw2 = g.jwt()
        add("keys", "jwt-json", json.dumps({"id_token": jw2, "token_type": "Bearer", "expires_in": 3600}) + "\n", jw2)
        epk = g.pem_key("ENCRYPTED PRIVATE KEY", 6)
        add("keys", "pem-encrypted", f"{epk}\n", _pem_line(epk, 2))
        # ---- webhook URLs and DSNs ----
        wh = f"T{g.s(UPPER + DIGITS, 10)}/B{g.s(UPPER + DIGITS, 10)}/{tok(24)}"
        add("url", "slack-webhook", f'SLACK_WEBHOOK_URL="https://hooks.slack.com/services/{wh}"\n', wh)
        dw = g.s(B64URL, 68)
        add("url", "discord-webhook", f"curl -X POST -H 'Content-Type: application/json' -d '{{\"content\":\"deployed\"}}' https://discord.com/api/webhooks/{g.digits(19)}/{dw}\n", dw)
        tw = g.hex(32)
        add("url", "teams-webhook", f"teams_webhook: https://acme.webhook.office.com/webhookb2/{g.uuid()}@{g.uuid()}/IncomingWebhook/{tw}/{g.uuid()}\n", tw)
        gck, gct = "AIza" + g.s(B64URL, 35), g.s(B64URL, 43)
        add("url", "google-chat-webhook", f"url = \"https://chat.googleapis.com/v1/spaces/AAAA{g.s(B64URL, 7)}/messages?key={gck}&token={gct}\"\n", gck, gct)
        mm = g.s(LOWER + DIGITS, 26)
        add("url", "mattermost-webhook", f"MATTERMOST_HOOK=https://chat.acme.io/hooks/{mm}\n", mm)
        d1_, d2_, d3_, d4_, d5_, d6_ = pw(), pw(), tok(24), pw(), pw(), pw()
        add("url", "dsn-mysql-pymysql", f'SQLALCHEMY_DATABASE_URI = "mysql+pymysql://app:{_pct(d1_)}@db:3306/app?charset=utf8mb4"\n', _pct(d1_))
        add("url", "dsn-amqps", f"broker_url: amqps://worker:{d2_}@mq.acme.io:5671/prod\n", d2_)
        add("url", "dsn-rediss", f"REDIS_URL=rediss://default:{d3_}@cache.acme.io:6380/0\n", d3_)
        add("url", "dsn-sqlserver", f'conn = "sqlserver://sa:{_pct(d4_)}@mssql:1433?database=app"\n', _pct(d4_))
        add("url", "dsn-clickhouse", f"clickhouse_url = clickhouse://default:{d5_}@ch.acme.io:9000/analytics\n", d5_)
        add("url", "dsn-neo4j", f"NEO4J_URI=neo4j+s://neo4j:{d6_}@ab12cd34.databases.neo4j.io\n", d6_)
        d7_, d8_, d9_ = pw(), pw(), pw()
        add("url", "dsn-smtp", f"EMAIL_URL=smtp+tls://mailer:{_pct(d7_)}@smtp.acme.io:587\n", _pct(d7_))
        add("url", "dsn-sftp", f"rclone copy ./out sftp://deploy:{d8_}@files.acme.io/upload\n", d8_)
        add("url", "dsn-ldaps", f'ldap_uri = "ldaps://cn=admin,dc=acme,dc=io:{d9_}@ldap.acme.io"\n', d9_)
        d10, d11 = pw(), pw()
        add("url", "dsn-snowflake", f"snowflake://loader:{_pct(d10)}@acme-xy12345/analytics/public?warehouse=load\n", _pct(d10))
        add("url", "dsn-elastic", f"ELASTICSEARCH_URL=https://elastic:{d11}@es.acme.io:9243\n", d11)
        d12 = tok(32)
        add("url", "url-query-api-key", f"GET https://maps.acme.io/v2/geocode?address=Main+St&api_key={d12}\n", d12)
        # ---- encoded forms ----
        e1 = pw()
        add("encoded", "form-body-percent", f"POST /login body: username=ops&password={_pct(e1)}&remember=1\n", _pct(e1))
        e2 = tok(40)
        esc = json.dumps(json.dumps({"API_KEY": e2, "MODE": "live"}))
        add("encoded", "json-escaped-env", f'{{"name": "worker", "env": {esc}}}\n', e2)
        e3 = pw()
        add("encoded", "json-escaped-connstr", json.dumps({"settings": json.dumps({"db": {"password": e3}})}) + "\n", e3)
        e4 = pw()
        add("encoded", "percent-json", "payload=" + _pct(json.dumps({"user": "ops", "password": e4})) + "\n", _pct(e4))
        e5 = tok(40)
        add("encoded", "yaml-in-json-string", json.dumps({"values": f"image: api\nauth:\n  token: {e5}\n"}) + "\n", e5)
        # ---- diffs and logs ----
        f1, f2 = pw(), pw()
        add("diff-log", "diff-ini", f"@@ -3,3 +3,3 @@\n [database]\n host = db\n-password = {f1}\n+password = {f2}\n", f1, f2)
        f3 = tok(40)
        add("diff-log", "diff-yaml", f"@@ -10,2 +10,3 @@\n   slack:\n+    token: {f3}\n     channel: '#ops'\n", f3)
        f4 = g.github("ghp_")
        add("diff-log", "diff-env", f"diff --git a/.env b/.env\n--- a/.env\n+++ b/.env\n+GITHUB_TOKEN={f4}\n", f4)
        f5 = pw()
        add("diff-log", "log-key-value", f"2026-03-01T10:12:44.120Z DEBUG db: connecting host=db.acme.io user=app password={f5} sslmode=require\n", f5)
        f6 = tok(40)
        add("diff-log", "log-python-dict", f"INFO:httpx:request headers={{'accept': '*/*', 'authorization': 'Bearer {f6}'}}\n", f6)
        f7 = pw()
        add("diff-log", "log-json", json.dumps({"level": "debug", "msg": "login", "user": "ops", "password": f7}) + "\n", f7)
        f8 = tok(32)
        add("diff-log", "log-url-token", f'10.0.0.7 - - [01/Mar/2026:10:12:44 +0000] "GET /api/export?access_token={f8} HTTP/1.1" 200 512\n', f8)
        f9 = pw()
        add("diff-log", "log-java-exception", f"java.sql.SQLException: Access denied for user 'app' (using password: YES) url=jdbc:mysql://db/app?user=app&password={f9}\n", f9)
    return out


def look_alikes(seed: int = 4242) -> list[LookAlike]:
    g = Gen(seed)
    out: list[LookAlike] = []

    def add(cat: str, name: str, text: str) -> None:
        out.append(LookAlike(cat, name, text))

    for _ in range(3):
        # ---- references in every syntax ----
        add("reference", "k8s-secret-key-ref",
            "env:\n  - name: DB_PASSWORD\n    valueFrom:\n      secretKeyRef:\n        name: db-credentials\n        key: password\n")
        add("reference", "helm-template", 'password: {{ .Values.db.password | quote }}\ntoken: {{ required "token is required" .Values.token }}\n')
        add("reference", "helm-existing-secret", 'auth:\n  existingSecret: db-credentials\n  secretKeys:\n    adminPasswordKey: postgres-password\n  password: ""\n')
        add("reference", "terraform-var", 'resource "aws_db_instance" "main" {\n  password = var.db_password\n}\nprovider "vault" {\n  token = data.vault_generic_secret.ci.data["token"]\n}\n')
        add("reference", "compose-interpolation", "    environment:\n      POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set it}\n      API_KEY: ${API_KEY:-}\n      - REDIS_PASSWORD_FILE=/run/secrets/redis_password\n")
        add("reference", "npmrc-env", "//registry.npmjs.org/:_authToken=${NPM_TOKEN}\n")
        add("reference", "maven-env", "<server>\n  <id>nexus</id>\n  <username>${env.MAVEN_USER}</username>\n  <password>${env.MAVEN_PASSWORD}</password>\n</server>\n")
        add("reference", "nuget-env", '<add key="ClearTextPassword" value="%NUGET_PAT%" />\n')
        add("reference", "spring-placeholder", "spring.datasource.password=${DB_PASSWORD}\nspring.mail.password=${vcap.services.mail.credentials.password}\n")
        add("reference", "github-actions", "    env:\n      TOKEN: ${{ secrets.DEPLOY_TOKEN }}\n    run: curl -H \"Authorization: Bearer $TOKEN\" https://api.acme.io\n")
        add("reference", "powershell-env", "$password = $env:DB_PASSWORD\n$cred = Get-Credential\n")
        add("reference", "azure-pipelines", "  - script: ./deploy.sh --password $(DbPassword)\n")
        add("reference", "octopus-token", 'password = "#{Database.Password}"\n')
        add("reference", "java-getenv", 'String password = System.getenv("DB_PASSWORD");\n@Value("${jwt.secret}") private String secret;\n')
        add("reference", "csharp-config", 'var key = builder.Configuration["Jwt:Key"];\nvar cs = builder.Configuration.GetConnectionString("Default");\n')
        add("reference", "go-getenv", 'password := os.Getenv("DB_PASSWORD")\ntoken := flag.String("token", "", "API token to use")\n')
        add("reference", "php-env", "'password' => env('DB_PASSWORD', ''),\n$key = getenv('API_KEY');\n")
        add("reference", "ruby-credentials", "Stripe.api_key = Rails.application.credentials.stripe[:secret_key]\ntoken = ENV.fetch(\"API_TOKEN\")\n")
        add("reference", "elixir-env", 'config :app, secret_key_base: System.fetch_env!("SECRET_KEY_BASE")\n')
        add("reference", "cli-variables", 'docker login -u "$REGISTRY_USER" -p "$REGISTRY_PASSWORD" registry.acme.io\nmysql -u root -p"$MYSQL_ROOT_PASSWORD"\n')
        add("reference", "cli-prompts", "mysql -h db -u root -p\npsql -h db -U app -W\ndocker login registry.acme.io -u ci --password-stdin < /run/secrets/registry\n")
        add("reference", "cli-fetches", "kubectl get secret db -o jsonpath='{.data.password}' | base64 -d\nvault kv get -field=password secret/app/db\ngcloud auth print-access-token\n")
        add("reference", "sql-psql-variable", "CREATE ROLE app LOGIN PASSWORD :'app_password';\n\\password app\n")
        # ---- placeholders, masks, examples ----
        add("placeholder", "angle-brackets", "Authorization: Bearer <token>\nX-Api-Key: <YOUR_API_KEY>\n")
        add("placeholder", "docs-dsn", "DATABASE_URL=postgres://user:password@localhost:5432/mydb\nMONGO_URL=mongodb://<username>:<password>@cluster0.example.mongodb.net\n")
        add("placeholder", "example-values", 'api_key: "sample-api-key"\nclient_secret: example-client-secret\n')
        add("placeholder", "tfvars-placeholders", 'db_password = "CHANGE_ME"\napi_token   = "REPLACE_WITH_YOUR_TOKEN"\n')
        add("placeholder", "masks", 'password: ********\n"token": "[REDACTED]"\napi_key=<redacted>\nAuthorization: Bearer ***\n')
        add("placeholder", "test-fixtures", 'TEST_PASSWORD = "test-password"\nfake_token = "fake-token-for-tests"\nmock_api_key = "mock-key"\n')
        add("placeholder", "readme-env", "export OPENAI_API_KEY=your-api-key-here\nexport GITHUB_TOKEN=<paste token>\n")
        add("placeholder", "empty-values", 'password=\nsecret_key = ""\nAPI_TOKEN=\n')
        add("placeholder", "sql-doc", "ALTER USER name WITH PASSWORD 'password';\nCREATE USER username IDENTIFIED BY password;\n")
        # ---- hashes, ids, digests ----
        add("hash-id", "git-log", f"commit {g.hex(40)}\nMerge: {g.hex(7)} {g.hex(7)}\nDate:   Mon Mar 2 10:12:44 2026 +0000\n")
        add("hash-id", "image-digest", f"image: ghcr.io/acme/api@sha256:{g.hex(64)}\n")
        add("hash-id", "go-sum", f"golang.org/x/crypto v0.21.0 h1:{g.b64(32)}\ngolang.org/x/crypto v0.21.0/go.mod h1:{g.b64(32)}\n")
        add("hash-id", "cargo-lock", f'[[package]]\nname = "serde"\nversion = "1.0.197"\nsource = "registry+https://github.com/rust-lang/crates.io-index"\nchecksum = "{g.hex(64)}"\n')
        add("hash-id", "k8s-uid", f"metadata:\n  name: api\n  uid: {g.uuid()}\n  resourceVersion: \"{g.digits(8)}\"\n")
        add("hash-id", "azure-ids", f'subscription_id = "{g.uuid()}"\ntenant_id       = "{g.uuid()}"\nclient_id       = "{g.uuid()}"\n')
        add("hash-id", "trace-headers", f"X-Request-Id: {g.uuid()}\ntraceparent: 00-{g.hex(32)}-{g.hex(16)}-01\nETag: \"{g.hex(32)}\"\n")
        add("hash-id", "sha256sums", f"{g.hex(64)}  tracecap-1.4.0-linux-amd64.tar.gz\n")
        add("hash-id", "ci-sha", f"GITHUB_SHA={g.hex(40)}\nCI_COMMIT_SHORT_SHA={g.hex(8)}\n")
        add("hash-id", "package-lock", f'"node_modules/jsonwebtoken": {{\n  "version": "9.0.2",\n  "resolved": "https://registry.npmjs.org/jsonwebtoken/-/jsonwebtoken-9.0.2.tgz",\n  "integrity": "sha512-{g.b64(64)}"\n}}\n')
        add("hash-id", "password-hash-column", f"INSERT INTO users (id, password_hash) VALUES (42, '$argon2id$v=19$m=65536,t=3,p=4${g.b64(16).rstrip('=')}${g.b64(32).rstrip('=')}');\n")
        # ---- public material ----
        pub = base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00 " + g.r.randbytes(32)).decode()
        add("public", "authorized-keys", f"ssh-ed25519 {pub} alice@laptop\n")
        add("public", "known-hosts", f"github.com ssh-ed25519 {pub}\n")
        add("public", "tf-public-key", f'resource "aws_key_pair" "deploy" {{\n  key_name   = "deploy"\n  public_key = "ssh-ed25519 {pub} deploy"\n}}\n')
        add("public", "pem-public", g.pem_key("PUBLIC KEY", 4) + "\n")
        add("public", "pem-certificate", g.pem_key("CERTIFICATE", 10) + "\n")
        add("public", "jwks", json.dumps({"keys": [{"kty": "RSA", "kid": g.hex(16), "use": "sig", "alg": "RS256", "n": g.b64url(256), "e": "AQAB"}]}) + "\n")
        add("public", "kubeconfig-ca", f"clusters:\n- cluster:\n    certificate-authority-data: {_b64(g.pem_key('CERTIFICATE', 8))}\n    server: https://10.0.0.1:6443\n")
        add("public", "publishable-key", f"NEXT_PUBLIC_STRIPE_PUBLISHABLE_KEY=pk_live_{g.s(ALNUM, 99)}\n")
        # ---- paths, versions, flags, styles, prose ----
        add("other", "secret-paths", "password_file: /etc/app/db.pass\ntls.key: /etc/tls/tls.key\ntoken_path = ~/.config/gh/token\nGOOGLE_APPLICATION_CREDENTIALS=/secrets/sa.json\n")
        add("other", "sa-token-path", "automountServiceAccountToken: true\ntokenPath: /var/run/secrets/kubernetes.io/serviceaccount/token\n")
        add("other", "versions", '"jsonwebtoken": "^9.0.2",\n"passport-local": "1.0.0",\ntoken-bucket==0.3.0\nkeyring>=24.3.1\n')
        add("other", "feature-flags", "ENABLE_TOKEN_REFRESH=true\nfeature.apiKeyRotation.enabled: false\ntoken_expiry_seconds: 3600\npassword_min_length: 12\nmax_tokens: 4096\n")
        add("other", "css-design-tokens", ":root {\n  --token-color-primary: #1f6feb;\n  --secret-banner-bg: #ffeef0;\n}\n.password-field { border-color: #d0d7de; }\n")
        add("other", "design-tokens-json", json.dumps({"token": {"color": {"brand": {"value": "#0055ff"}, "accent": {"value": f"#{g.hex(6)}"}}}}) + "\n")
        add("other", "code-identifiers", 'def validate_password(password: str) -> bool:\n    return len(password) >= 12\ntokenizer = AutoTokenizer.from_pretrained("bert-base-uncased")\n')
        add("other", "log-no-secret", "2026-03-01T10:12:44Z INFO auth: token refreshed for user 42 (expires in 3600s)\n2026-03-01T10:12:45Z WARN password policy: minimum length is 12\n")
        add("other", "diff-reference", "-  password: ${OLD_DB_PASSWORD}\n+  password: ${DB_PASSWORD}\n+  passwordPolicy: strict\n")
        add("other", "data-uri", f'<img alt="logo" src="data:image/png;base64,{g.b64(120)}">\n')
        add("other", "github-content-api", json.dumps({"name": "README.md", "encoding": "base64", "content": _b64("# acme api\n\nThe token service issues short-lived tokens.\n")}) + "\n")
        add("other", "k8s-configmap", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app-config\ndata:\n  LOG_LEVEL: info\n  AUTH_MODE: oidc\n  TOKEN_TTL: 15m\n")
        add("other", "helm-chart-meta", f"apiVersion: v2\nname: api\nversion: 1.{g.r.randrange(30)}.{g.r.randrange(30)}\nappVersion: \"2.4.1\"\nkeywords: [auth, token, secrets]\n")
        add("other", "openapi-apikey", "securitySchemes:\n  ApiKeyAuth:\n    type: apiKey\n    in: header\n    name: X-API-Key\n")
    return out
