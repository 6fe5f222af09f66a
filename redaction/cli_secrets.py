"""Command-line tools and the flags that take a secret, as data.

Takes nothing; gives `CLI_RULES`, one `Rule` per row of `TOOL_FLAGS` plus the tools whose secret is
not a plain flag (`echo PW | sudo -S`, `htpasswd -b FILE USER PW`, `openssl ... pass:PW`, ...).
Promise: a row's rule runs only when one of its tools is named in the text (its keywords), takes
the value of one of its flags (`-w PW`, `-w=PW`, `--pass PW`, quoted or not; for `attached` flags
also `-pPW`), and judges it as a context value (not `$VAR`, not a placeholder, not the next flag).
Flags are case-sensitive, as the tools read them (`sqlcmd -P` is a password, `-p` is not).

Adding a tool is one `ToolFlags` row and its example.
"""
from __future__ import annotations

import dataclasses

from redaction.rules import Rule

# A flag's value: quoted, or a word that is not the start of a pipe, redirect or next command.
VALUE = r"(\"[^\"\n]+\"|'[^'\n]+'|[^\s\"'|;&<>][^\s|;&<>]*)"
_REST = r"[^\n|;&]*?"  # the rest of the same command, up to the flag


@dataclasses.dataclass(frozen=True)
class ToolFlags:
    name: str
    tools: tuple[str, ...]
    flags: tuple[str, ...]  # the value follows after a space or `=`
    attached: tuple[str, ...] = ()  # the value may also follow with nothing between (`-pPW`)
    examples: tuple[tuple[str, str], ...] = ()
    negatives: tuple[str, ...] = ()


TOOL_FLAGS: tuple[ToolFlags, ...] = (
    ToolFlags("ldap", ("ldapsearch", "ldapmodify", "ldapadd", "ldapdelete", "ldapwhoami", "ldapcompare",
                       "ldapmodrdn", "ldapexop", "ldapurl"), ("-w",),
              examples=(('ldapsearch -x -H ldap://ldap.acme.io -D "cn=admin,dc=acme,dc=io" -w Ld4pAdm1n-77 -b dc=acme,dc=io',
                         "Ld4pAdm1n-77"),),
              negatives=("ldapsearch -x -D cn=admin -W -b dc=acme",)),
    ToolFlags("ldappasswd", ("ldappasswd",), ("-w", "-s", "-a"),
              examples=(("ldappasswd -x -D cn=admin,dc=acme -w Adm-9q2 -s N3w-Us3r-Pw uid=bob,dc=acme", "N3w-Us3r-Pw"),)),
    ToolFlags("redis-cli", ("redis-cli", "valkey-cli", "keydb-cli"), ("-a", "--pass"),
              examples=(("redis-cli -h cache.acme.io -p 6379 -a R3dis-s3cr3t-9 PING", "R3dis-s3cr3t-9"),
                        ("redis-cli --pass 'k8&Zq!Lp' --no-auth-warning INFO", "k8&Zq!Lp")),
              negatives=("redis-cli -h cache -p 6379 PING", "redis-cli -a $REDIS_PASSWORD PING")),
    ToolFlags("az", ("az",), ("-p", "--password", "--secret", "--client-secret", "--account-key", "--sas-token",
                              "--connection-string"),
              examples=(("az login --service-principal -u 6f1c2d3e-0a1b-4c5d-8e9f-001122334455 -p Xq8~Zt2.Lm9_Pw4-Rv7 --tenant acme.io",
                         "Xq8~Zt2.Lm9_Pw4-Rv7"),
                        ("az storage blob list -c logs --account-name acmelogs --account-key bH4kZ9q2Lm8xPw3Rt6Vy1Nc5Df7Gj0Ks==",
                         "bH4kZ9q2Lm8xPw3Rt6Vy1Nc5Df7Gj0Ks==")),
              negatives=("az login --service-principal -u $APP_ID -p $APP_SECRET --tenant $TENANT",)),
    ToolFlags("openssl", ("openssl",), ("-k", "-K"),
              examples=(("openssl enc -aes-256-cbc -salt -in db.sql -out db.sql.enc -k Bkp-Pa55-2024", "Bkp-Pa55-2024"),)),
    ToolFlags("mongo", ("mongo", "mongosh", "mongodump", "mongorestore", "mongoexport", "mongoimport", "mongostat",
                        "mongotop", "mongofiles"), ("-p", "--password"),
              examples=(("mongosh mongodb://db.acme.io:27017/app -u admin -p M0ng0-Adm1n --authenticationDatabase admin",
                         "M0ng0-Adm1n"),)),
    ToolFlags("sqlcmd", ("sqlcmd", "bcp", "osql", "isql"), ("-P",),
              examples=(("sqlcmd -S db.acme.io -U sa -P 'Sql$erver2022!' -Q \"SELECT 1\"", "Sql$erver2022!"),),
              negatives=("sqlcmd -S db.acme.io -E -Q \"SELECT 1\"",)),
    ToolFlags("cassandra-neo4j", ("cqlsh", "cypher-shell", "nodetool"), ("-p", "--password", "-pw"),
              examples=(("cqlsh cass.acme.io -u cassandra -p C4ss-Pw-771", "C4ss-Pw-771"),)),
    ToolFlags("mosquitto", ("mosquitto_pub", "mosquitto_sub", "mosquitto_rr"), ("-P", "--pw"),
              examples=(("mosquitto_pub -h mq.acme.io -u sensor -P Mq77-Tt-x1 -t t/1 -m 21", "Mq77-Tt-x1"),)),
    ToolFlags("ipmitool", ("ipmitool",), ("-P",),
              examples=(("ipmitool -I lanplus -H 10.1.2.3 -U ADMIN -P Ipm1-B0ard chassis status", "Ipm1-B0ard"),)),
    ToolFlags("keytool", ("keytool",), ("-storepass", "-keypass", "-srcstorepass", "-deststorepass", "-srckeypass",
                                        "-destkeypass", "-new"),
              examples=(("keytool -importkeystore -srckeystore a.p12 -srcstorepass Ks-9f2Lq -destkeystore b.jks",
                         "Ks-9f2Lq"),),
              negatives=("keytool -list -keystore cacerts -storepass changeit",)),
    ToolFlags("zip", ("zip", "unzip", "zipcloak"), ("-P",),
              examples=(("zip -r -P Z1p-Arch1ve-pw backup.zip data/", "Z1p-Arch1ve-pw"),)),
    ToolFlags("7z-rar", ("7z", "7za", "7zz", "rar", "unrar"), (), ("-p",),
              examples=(("7z a -pS3v3n-Z1p-x -mhe=on out.7z secrets/", "S3v3n-Z1p-x"),),
              negatives=("7z a -mx=9 out.7z src/",)),
    ToolFlags("rdp", ("rdesktop", "xfreerdp", "wlfreerdp", "sdl-freerdp"), ("-p",), ("/p:",),
              examples=(("xfreerdp /v:10.0.0.5 /u:alice /p:Rdp-L0gin-42 /cert:ignore", "Rdp-L0gin-42"),)),
    ToolFlags("ssh-keygen", ("ssh-keygen",), ("-N", "-P"),
              examples=(("ssh-keygen -t ed25519 -f deploy_key -N 'K3y-Phr4se-x'", "K3y-Phr4se-x"),),
              negatives=("ssh-keygen -t ed25519 -f deploy_key -N ''",)),
    ToolFlags("snmp", ("snmpwalk", "snmpget", "snmpset", "snmpbulkwalk", "snmpbulkget", "snmptrap"), ("-A", "-X"),
              examples=(("snmpwalk -v3 -l authPriv -u mon -a SHA -A Snmp-Auth-77 -x AES -X Snmp-Priv-88 10.0.0.1",
                         "Snmp-Auth-77"),)),
    ToolFlags("rabbitmqadmin-influx", ("rabbitmqadmin", "influx"), ("-p", "--password"),
              examples=(("rabbitmqadmin -u admin -p Rmq-Adm-Pw-2 list queues", "Rmq-Adm-Pw-2"),
                        ("influx setup -u admin -p Infl-Setup-Pw-3 -o acme -b main -f", "Infl-Setup-Pw-3"))),
    ToolFlags("macos-security", ("security",), ("-w",),
              examples=(("security add-generic-password -a me -s api -w Kc-Gen-Pw-3 -U", "Kc-Gen-Pw-3"),),
              negatives=("security find-generic-password -s api -w",)),
    ToolFlags("codecov", ("codecov", "codecovcli"), ("-t", "--token"),
              examples=(("codecov -t 6f1c2d3e-9a1b-4c5d-8e9f-a01b22c34d55 -f coverage.xml", "6f1c2d3e-9a1b-4c5d-8e9f-a01b22c34d55"),)),
    ToolFlags("doctl", ("doctl",), ("-t", "--access-token"),
              examples=(("doctl auth init -t 4cd7e1b2a9f8c3d6e5b4a39281706f5e4d3c2b1a0f9e8d7c6b5a4938271605f4",
                         "4cd7e1b2a9f8c3d6e5b4a39281706f5e4d3c2b1a0f9e8d7c6b5a4938271605f4"),)),
    ToolFlags("registry-login", ("docker", "podman", "nerdctl", "helm", "buildah", "skopeo", "oras", "crane",
                                 "regctl", "oc"), ("--password", "-p"),
              examples=(("podman login quay.io -u robot -p Qy7-Rb0t-Pw9", "Qy7-Rb0t-Pw9"),
                        ("oc login https://api.ocp.acme.io:6443 -u kubeadmin -p Oc-Login-Pw-3", "Oc-Login-Pw-3")),
              negatives=("docker run -p 8080:80 nginx", "podman run -p 5432:5432 postgres")),
)


def _tool_rule(row: ToolFlags) -> Rule:
    tools = "|".join(t.replace(".", r"\.").replace("-", r"\-") for t in row.tools)
    branches = []
    if row.flags:
        branches.append("(?:" + "|".join(f.replace("-", r"\-") for f in row.flags) + r")(?:\s+|=)")
    if row.attached:
        branches.append("(?:" + "|".join(f.replace("-", r"\-") for f in row.attached) + ")")
    pattern = (r"(?:^|[\s/;&|(`\"'])(?:" + tools + r")(?:\.exe)?\b" + _REST + r"\s(?:" + "|".join(branches) + ")"
               + VALUE)
    if row.name == "registry-login":  # `-p` is a port in `docker run`: only after `login`
        pattern = (r"\b(?:" + tools + r")\s+(?:registry\s+)?login\b" + _REST + r"\s(?:\-\-password|\-p)(?:\s+|=)" + VALUE)
    flags = ", ".join(row.flags + row.attached)
    repeat = _REST + r"\s(?:" + "|".join(branches) + ")" + VALUE
    # registry logins are found after `login`, which is rarer in text than a short tool name (`oc`)
    keywords = ("login",) if row.name == "registry-login" else tuple(t.lower() for t in row.tools)
    return Rule(f"cli-{row.name}", pattern, repeat=repeat, keywords=keywords, group=1,
                validator="context", category="context", reason=f"command line: {row.tools[0]} {flags}",
                examples=row.examples, negatives=row.negatives)


# Tools whose secret is not the value of one flag.
SPECIAL_RULES: tuple[Rule, ...] = (
    Rule("cli-openssl-pass", r"\bopenssl\s" + _REST + r"\s-(?:pass|passin|passout|password|passwd|srcpass|destpass)\s+"
         r"[\"']?pass:([^\s\"'|;&<>]+)",
         keywords=("openssl",), group=1, validator="context", category="context",
         reason="command line: openssl -pass pass:",
         examples=(("openssl pkcs12 -export -in c.pem -inkey k.pem -out c.p12 -passout pass:P12-Exp0rt-pw",
                    "P12-Exp0rt-pw"),
                   ("openssl rsa -in enc.key -passin 'pass:Rsa-Key-9!' -out plain.key", "Rsa-Key-9!")),
         negatives=("openssl rsa -in enc.key -passin env:KEY_PASS -out k.pem",
                    "openssl rsa -in enc.key -passin file:/run/pw -out k.pem")),
    Rule("cli-htpasswd", r"\bhtpasswd\s+-[A-Za-z]*b[A-Za-z]*\s+(?:-[A-Za-z]+\s+)*(?:[^\s-]\S*\s+)?[^\s-]\S*\s+" + VALUE,
         keywords=("htpasswd",), group=1, validator="context", category="context",
         reason="command line: htpasswd -b FILE USER PASSWORD",
         examples=(("htpasswd -b /etc/nginx/.htpasswd alice Htp-Al1ce-9", "Htp-Al1ce-9"),
                   ("htpasswd -nbB admin 'W3b-Adm!n'", "W3b-Adm!n")),
         negatives=("htpasswd -c /etc/nginx/.htpasswd alice",)),
    Rule("cli-sudo-stdin",
         r"\b(?:echo(?:\s+-[neE]+)*|printf(?:\s+[\"'][^\"'\n]*%s[^\"'\n]*[\"'])?)\s+" + VALUE
         + r"\s*\|\s*(?:sudo\s+(?:-[A-Za-z]+\s+)*?-[A-Za-z]*S\b"
         r"|[A-Za-z0-9_.-]+\b[^\n|;&]*(?:--password-stdin|--with-token|--token-stdin|--secret-stdin)\b"
         r"|passwd\s+--stdin|(?:sudo\s+)?chpasswd\b"
         r"|[A-Za-z0-9_.-]+\b[^\n|;&]*\s--data-file(?:=|\s+)(?:-|/dev/stdin)(?:\s|$)|wrangler\s+secret\s+put\b"
         r"|(?:docker|podman)\s+secret\s+create\s+(?:-\S+\s+)*\S+\s+-(?:\s|$))",
         keywords=("sudo", "password-stdin", "passwd", "with-token", "token-stdin", "secret-stdin", "data-file",
                   "wrangler", "secret create", "chpasswd"), group=1, validator="context", category="context",
         reason="command line: a password piped to sudo -S or --password-stdin",
         examples=(("echo 'Sud0-L0cal!' | sudo -S apt-get update", "Sud0-L0cal!"),
                   ("echo Passw0rd-77 | sudo -k -S systemctl restart nginx", "Passw0rd-77"),
                   ('echo -n "Ec-Pw-73" | docker login -u bob --password-stdin', "Ec-Pw-73"),
                   ('printf "%s" "Pf-Pw-84" | sudo -S true', "Pf-Pw-84"),
                   ("echo Gh-Tok-Stdin-57 | gh auth login --with-token", "Gh-Tok-Stdin-57"),
                   ("echo -n 'Gc-Sec-Pipe-4' | gcloud secrets versions add db --data-file=-", "Gc-Sec-Pipe-4"),
                   ("echo Wr-Sec-Put-9 | wrangler secret put API_KEY", "Wr-Sec-Put-9"),
                   ('printf "Dkr-Sec-Cr-8" | docker secret create db_password -', "Dkr-Sec-Cr-8"),
                   ('echo "deploy:Chp-Pw-9x" | sudo chpasswd', "deploy:Chp-Pw-9x")),
         negatives=('echo "$PW" | sudo -S true', "echo hello | sudo tee /etc/motd")),
    Rule("cli-herestring-secret",
         r"(?:--password-stdin|--with-token|--token-stdin|--secret-stdin|--data-file(?:=|\s+)-|\bsudo\s+(?:-[A-Za-z]+\s+)*?-[A-Za-z]*S\b"
         r"[^\n<|;&]*|\bchpasswd|\bwrangler\s+secret\s+put\s+\S+)\s*<<<\s*" + VALUE,
         keywords=("<<<",), group=1, validator="context", category="context",
         reason="command line: a secret given on stdin as a here-string",
         examples=(('gh auth login --with-token <<< "Gh-Hstr-Tok-1x"', "Gh-Hstr-Tok-1x"),
                   ("docker login -u me --password-stdin <<< Hstr-Dk-Pw-2", "Hstr-Dk-Pw-2")),
         negatives=('gh auth login --with-token <<< "$GH_TOKEN"',)),
    Rule("cli-userinfo-flag",
         r"(?:\b(?:smbclient|rpcclient|smbcacls|smbget|smbmap)\b" + _REST + r"\s(?:-U|--user(?:name)?)(?:\s+|=)[\"']?[^\s%\"']+%"
         r"|\blftp\b" + _REST + r"\s-u\s+[\"']?[^\s,\"']+,"
         r"|\b(?:http|https|xh|xhs)\b" + _REST + r"\s(?:-a|--auth)(?:\s+|=)[\"']?[^\s:\"']+:"
         r"|\s--(?:src-|dest-)?creds(?:\s+|=)[\"']?[^\s:\"']+:)"
         r"([^\s\"'|;&]+)",
         keywords=("smbclient", "rpcclient", "smbcacls", "smbget", "smbmap", "lftp", "http", "xh", "creds"),
         group=1, validator="context", category="context", reason="command line: USER%PASS / USER:PASS argument",
         examples=(("smbclient //fs.acme.io/share -U 'alice%Smb-Pw-31'", "Smb-Pw-31"),
                   ("lftp -u deploy,Ftp-Dep-88 sftp://files.acme.io", "Ftp-Dep-88"),
                   ("http -a admin:Htt-P13-pw https://api.acme.io/me", "Htt-P13-pw"),
                   ("skopeo copy --src-creds bot:Sk0-Pe0-77 docker://a/b docker://c/d", "Sk0-Pe0-77")),
         negatives=("smbclient -L fs.acme.io -U alice", "http -a admin: https://x")),
    Rule("cli-positional-secret",
         r"(?:\bsqlplus\s+(?:-\S+\s+)*[^\s/@'\"]{1,60}/"
         r"|\brabbitmqctl\s+(?:add_user|change_password)\s+\S+\s+"
         r"|\bvault login\s+(?:token=)?"
         r"|\baws configure set\s+(?:\S+\.)?(?:aws_secret_access_key|aws_session_token)\s+"
         r"|\bkubectl\b" + _REST + r"\s--from-literal(?:\s+|=)[^=\s]+="
         r"|\bgh secret set\b" + _REST + r"\s(?:-b|--body)(?:\s+|=)"
         r"|\bnmcli\b" + _REST + r"\s(?:password|wifi-sec\.psk|802-1x\.password)\s+"
         r"|\bwpa_passphrase\s+(?:\"[^\"\n]*\"|'[^'\n]*'|\S+)\s+"
         r"|\bmc (?:alias set|config host add)\s+\S+\s+\S+\s+\S+\s+"
         r"|\bnet use\s+\S+\s+/user:\S+\s+"
         r"|\bgrafana-cli\s+admin\s+reset-admin-password\s+|\bvault\s+operator\s+unseal\s+"
         r"|\bconsul\s+acl\s+set-agent-token\s+\S+\s+|\bisql\s+(?:-\S+\s+)*[^\s-]\S*\s+[^\s-]\S*\s+|\bcargo login\s+|\bsnyk\s+auth\s+|\bngrok\s+(?:config\s+add-)?authtoken\s+"
         r"|\bmysqladmin\b" + _REST + r"\spassword\s+"
         r"|\bnet user\s+[^\s/]+\s+"
         r"|\bConvertTo-SecureString\s+(?:-String\s+)?"
         r"|\bpulumi config set\s+(?:-\S+\s+)*--secret\s+(?:-\S+\s+)*\S+\s+"
         r"|\b(?:az keyvault secret set|aws ssm put-parameter)\b" + _REST + r"\s--value(?:\s+|=))"
         r"(\"[^\"\n]+\"|'[^'\n]+'|[^\s\"'|;&<>@=][^\s|;&<>@]*)",
         keywords=("sqlplus", "rabbitmqctl", "vault login", "aws configure", "kubectl", "gh secret", "nmcli",
                   "wpa_passphrase", "mc alias", "mc config", "net use", "az keyvault", "aws ssm", "cargo login",
                   "pulumi config", "mysqladmin", "net user", "convertto-securestring", "snyk", "ngrok", "isql", "grafana-cli", "operator unseal",
                   "set-agent-token"),
         group=1, validator="context", category="context", reason="command line: a secret argument of this tool",
         examples=(("sqlplus scott/T1ger-0ra@orcl", "T1ger-0ra"),
                   ("rabbitmqctl add_user svc Rmq-Svc-Pw5", "Rmq-Svc-Pw5"),
                   ("vault login hvs.CAESIJ2k9Lx7Qp4Rt6Vz8Nc1Df3Gj5Km7", "hvs.CAESIJ2k9Lx7Qp4Rt6Vz8Nc1Df3Gj5Km7"),
                   ("aws configure set aws_secret_access_key 9xQ2kL7mP4rT6vZ8nC1dF3gJ5hK7mP9qR2tV4wY6",
                    "9xQ2kL7mP4rT6vZ8nC1dF3gJ5hK7mP9qR2tV4wY6"),
                   ("kubectl create secret generic db --from-literal=pw=Kub3-Db-Pw --from-literal=user=app", "Kub3-Db-Pw"),
                   ("gh secret set NPM_TOKEN --body Np7-Tok3n-xyz", "Np7-Tok3n-xyz"),
                   ("nmcli dev wifi connect Office password Wifi-0ffice-9", "Wifi-0ffice-9"),
                   ("mc alias set prod https://s3.acme.io AKIAQYLPMN5HHHFPZAM2 Mn10-S3cr3t-Key-42x", "Mn10-S3cr3t-Key-42x"),
                   ("net use \\\\fs\\share /user:acme\\bob Net-Use-38", "Net-Use-38"),
                   ("az keyvault secret set --vault-name kv --name db --value Kv-Val-19x", "Kv-Val-19x"),
                   ("aws ssm put-parameter --name /db/pw --type SecureString --value Ssm-Val-28", "Ssm-Val-28"),
                   ("cargo login Crg-Tok-7q2Lm9", "Crg-Tok-7q2Lm9"),
                   ("isql -v PROD_DSN app Isql-Odbc-Pw-4", "Isql-Odbc-Pw-4"),
                   ("grafana-cli admin reset-admin-password Graf-Reset-Pw-5", "Graf-Reset-Pw-5"),
                   ("vault operator unseal Vlt-Unseal-Key-12xx", "Vlt-Unseal-Key-12xx"),
                   ("consul acl set-agent-token agent Csl-Agent-Tok-13", "Csl-Agent-Tok-13"),
                   ("snyk auth 6f1c2d3e-9a1b-4c5d-8e9f-a01b22c34d55", "6f1c2d3e-9a1b-4c5d-8e9f-a01b22c34d55"),
                   ("ngrok config add-authtoken 2Xq8Lm2Zx9Pw4Rt6Yb1Nc3Df5G_7Jk0Xq9Zs8Bv7Cn6Aa", "2Xq8Lm2Zx9Pw4Rt6Yb1Nc3Df5G_7Jk0Xq9Zs8Bv7Cn6Aa"),
                   ("pulumi config set --secret dbPassword Plm-Sec-83", "Plm-Sec-83"),
                   ("mysqladmin -u root password N3w-Root-Pw", "N3w-Root-Pw"),
                   ("net user bob Nu-Pw-28 /add", "Nu-Pw-28"),
                   ('$p = ConvertTo-SecureString "Ps-Sec-39" -AsPlainText -Force', "Ps-Sec-39")),
         negatives=("vault login -method=oidc", "sqlplus /nolog", "gh secret set NPM_TOKEN < token.txt",
                    "kubectl create secret generic db --from-file=./pw.txt")),
)

CLI_RULES: tuple[Rule, ...] = tuple(_tool_rule(r) for r in TOOL_FLAGS) + SPECIAL_RULES
