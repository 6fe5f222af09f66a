"""The built-in detectors as data, and the compiler for admin rules from the policy.

Takes rule rows (built-in `BUILTIN_RULES`, or policy `redaction.rules` dicts); gives `Rule` values
whose patterns compiled with google-re2 (linear time, no lookarounds or backreferences).
Promise: every built-in row carries true-positive examples (text, secret) and negatives that the
test suite runs; every keyword of a row is a literal the pattern cannot match without (the engine
only runs a rule when one of its keywords occurs, case-insensitively). `compile_admin_rules` raises
`RuleError`, one sentence naming the rule and the reason, for anything RE2 or the schema rejects.

Adding a detector is one `Rule(...)` row plus its examples: here (the core formats, context
detectors and personal data), in `redaction.catalogue` (more token formats, base64 decoders, the
shortened-token rule) or in `redaction.cli_secrets` (command-line tools and their secret flags).
Context rules name the group holding their key (`key_group`) and say what they recognise
(`reason`), which `tracecap redact --explain` prints; format rows without a check of their own are
judged by `known-token` (placeholder tokens stay).
"""
from __future__ import annotations

import dataclasses

import re2

from redaction.validators import VALIDATORS

ACTIONS = ("replace", "mask", "hash", "drop-event")
# Evaluation classes: `known` formats carry a fixed prefix or structure; `context` detectors rely
# on a key name, URL or header around the value; `pii` are personal data.
CATEGORIES = ("known", "context", "pii")


class RuleError(ValueError):
    """A redaction rule cannot be used; str() names the rule and the reason."""


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    name: str
    pattern: str
    action: str = "replace"
    keywords: tuple[str, ...] = ()
    entropy: float | None = None
    group: int = 0
    replacement: str | None = None
    validator: str | None = None
    category: str = "known"
    policy_flag: str | None = None  # the [redaction] boolean that turns this rule on
    examples: tuple[tuple[str, str], ...] = ()  # (text, the secret that must disappear)
    negatives: tuple[str, ...] = ()  # texts this rule must leave alone
    key_group: int = 0  # context rules: the group holding the key name, for `--explain`
    reason: str = ""  # `--explain`: what this rule recognises (a format, a tool's flag, ...)
    repeat: str | None = None  # matched again right after each match (group 1: the value): more flags


_Q = r"(?:\\?[\"'`])?"  # an optional quote around a key, maybe escaped (JSON inside a string)
# Values: a quoted string (quotes trimmed later, escaped quotes too) or a run up to
# whitespace/quote/separator.
_VALUE = (r"(\"\"\"[^\"\n]+\"\"\"|\\\"[^\"\\\n]+\\\"|[bBrRuU]?\"(?:[^\"\\\n]|\\.)+\"|[bBrRuU]?'[^'\n]+'|`[^`\n]+`"
          r"|[^\s\"'`,;=<>(){}\[\]\\&][^\s\"'`,;<>\\&]*)")
# Key words that make a key secret-bearing whatever the rest of its name (case-insensitive), and, in
# env style (`SESSION_SALT`, `SMTP_CRED`), the suffixes that mean a secret by convention.
_SECRET_WORDS = (
    r"secret|pass[_.-]?w(?:or)?d|passphrase|passcode|\bpwd|passwort|kennwort|contrase(?:n|\x{00f1})a|\bsenha|wachtwoord"
    r"|mot[_.-]?de[_.-]?passe|\bparola\b|\bpass\b|\bpsk\b|token|api[_.-]?key|apikey|access[_.-]?key"
    r"|auth[_.-]?key|private[_.-]?key|signing[_.-]?key|(?:en|de)cryption[_.-]?key|validation[_.-]?key|master[_.-]?key"
    r"|account[_.-]?key"
    r"|shared[_.-]?key|app[_.-]?key|credentials?|\bcreds?\b|client[_.-]?secret|\bsas\b|sas[_.-]?token"
    r"|(?-i:[A-Z0-9]_(?:KEY|SALT|SEED|CREDS?|PASS|PW|PWD|PAT|SIG|SIGNATURE|PEPPER|HMAC|NONCE|PIN|SK)\b)|\bpw\b"
    r"|(?-i:\b[A-Z][A-Z0-9_]*[A-Z]{3}KEY\b)"
    r"|(?-i:[a-z0-9]_(?:salt|seed|creds?|pass|pw|pat|sig|pepper|hmac)\b)"
    r"|(?-i:[a-z0-9](?:Pass|Pwd|Passwd|PW|Pat)\b)"
    r"|\b(?:db|root|admin|user|my|smtp|mail|ftp|ssh|sudo|app|redis|mysql|pg|ldap|bind|vnc|wifi|proxy|master|sa)pass\b"
)
# Between a key and `=`: a type annotation (`password: String`, `api_key: &'static str`,
# `apiKey?: string`), a Go type (`Password string`) or a C# auto-property (`Password { get; set; }`).
_TYPED = (r"(?:[ \t]*\??:[ \t]*&?(?:'static[ \t]+)?[A-Za-z_][A-Za-z0-9_.<>?]{0,30}"
          r"|[ \t]+(?:string|\[\]byte)|[ \t]*\{[ \t]*get;[ \t]*(?:private[ \t]+)?(?:set|init);[ \t]*\})")
_SECRET_KEYWORDS = ("secret", "pass", "pwd", "psk", "token", "key", "credential", "cred", "sas", "_salt", "_seed", "pw", "_sk",
                    "kennwort", "contrase", "senha", "wachtwoord", "parola", 'pat"', "pat'", "pat=", "pat:",
                    "_pat", "_sig", "_pepper", "_hmac", "_nonce", "_pin")
# Names whose value is a secret when written as an element, attribute pair or code pair.
_KEY_NAME = (
    r"[A-Za-z0-9_.:-]*(?:password|passwd|pwd|passphrase|passwort|kennwort|senha|requirepass|masterauth|secret|token|api[_.-]?key|apikey|access[_.-]?key"
    r"|account[_.-]?key|auth[_.-]?key|private[_.-]?key|shared[_.-]?key|signing[_.-]?key|master[_.-]?key"
    r"|encryption[_.-]?key|app[_.-]?key|credential|sas[_.-]?token|salt"
    r"|(?-i:_(?:KEY|PASS|PW|PWD|PAT|SEED|CREDS?|SIG|PEPPER|HMAC))\b)[A-Za-z0-9_.:-]*"
)
_KEY_NAME_KEYWORDS = ("pass", "pwd", "secret", "token", "key", "credential", "salt", "_pw", "_pat", "_seed", "_cred",
                      "kennwort", "senha",
                      "_sig", "_pepper", "_hmac")

_SG = "SG.aBcDeFgHiJkLmNoPqRsTuV." + "wXyZ0123456789aBcDeFgHiJkLmNoPqRsTuVwXyZ012"[:43]
_DISCORD = "Qm8kZ2xLp9Rt4Vy7Nc1Df3Gh5Jk7Lm9Pq2Rt4Vz6Nc8Df0Gh2Jk4Lm6Pq8Rt0Vz2Nc4Df6Gh8Jk0_x"
_DO = "7e3b9a1f04c6d82e5b7a90f13c4d6e8f2a5b7c9d1e3f50a2b4c6d8e0f1a3b5c7"
_AGE = "AGE-SECRET-KEY-1" + ("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L" * 2)[:58]

_KNOWN_RULES: tuple[Rule, ...] = (
    # ---- cloud ----
    Rule("aws-access-key-id", r"\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z2-7]{16}\b",
         keywords=("akia", "asia", "abia", "acca", "a3t"),
         examples=(("aws configure set aws_access_key_id AKIAQYLPMN5HHHFPZAM2", "AKIAQYLPMN5HHHFPZAM2"),
                   ("key=ASIAY34FZKBOKMUTVV7A;", "ASIAY34FZKBOKMUTVV7A")),
         negatives=("AKIAIOSFODNN7EXAMPL", "asian cuisine", "AKIA_LOWERCASE_thing")),
    Rule("aws-secret-access-key",
         r"(?i)aws.{0,24}?(?:secret|private).{0,24}?[=:]\s*[\"']?([A-Za-z0-9/+]{40})\b",
         keywords=("aws",), group=1, category="context", validator="not-reference",
         examples=(("aws_secret_access_key = q8Vd93kdLx7Qp4Rt6Vz8Nc1Df3Gj5Km7Hs9Bw2Ey",
                    "q8Vd93kdLx7Qp4Rt6Vz8Nc1Df3Gj5Km7Hs9Bw2Ey"),
                   ('"AWS_SECRET_ACCESS_KEY": "Zk9pQ2x3Rm1ub3BxcnN0dXZ3eHl6MDEyMzQ1Njc4"',
                    "Zk9pQ2x3Rm1ub3BxcnN0dXZ3eHl6MDEyMzQ1Njc4")),
         negatives=("aws_secret_access_key = os.environ['AWS_SECRET_ACCESS_KEY']",
                    "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")),
    Rule("gcp-api-key", r"\bAIza[0-9A-Za-z_-]{35}", keywords=("aiza",),
         examples=(("curl 'https://maps.googleapis.com/api?key=AIzaSyD3b2Xk9_pQ-7rTzLmN0aBcDeFgHiJkLmN'",
                    "AIzaSyD3b2Xk9_pQ-7rTzLmN0aBcDeFgHiJkLmN"),),
         negatives=("AIzaShort",)),
    Rule("gcp-private-key-id", r"\"private_key_id\"\s*:\s*\"([0-9a-f]{40})\"",
         keywords=("private_key_id",), group=1,
         examples=(('"private_key_id": "3f4e5d6c7b8a99887766554433221100ffeeddcc",',
                    "3f4e5d6c7b8a99887766554433221100ffeeddcc"),),
         negatives=('"private_key_id": "<id>"',)),
    Rule("google-oauth-secret", r"\bGOCSPX-[A-Za-z0-9_-]{28}", keywords=("gocspx-",),
         examples=(("client_secret: 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", "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"),)),
    Rule("google-oauth-token", r"\bya29\.[0-9A-Za-z_-]{30,}", keywords=("ya29.",),
         examples=(("Authorization: OAuth ya29.a0AfH6SMBxQ2xLmN9pQrStUvWxYz0123456789abcd",
                    "ya29.a0AfH6SMBxQ2xLmN9pQrStUvWxYz0123456789abcd"),)),
    Rule("azure-storage-key", r"(?i)(?:AccountKey|SharedAccessKey)\s*=\s*([A-Za-z0-9+/]{40,}={0,2})",
         keywords=("accountkey", "sharedaccesskey"), group=1,
         examples=(("DefaultEndpointsProtocol=https;AccountName=acme;AccountKey="
                    "q0k9V2h3cGFzc3dvcmRfMTIzNDU2Nzg5MGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6QUJDREVGR0g0==;"
                    "EndpointSuffix=core.windows.net",
                    "q0k9V2h3cGFzc3dvcmRfMTIzNDU2Nzg5MGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6QUJDREVGR0g0=="),)),
    Rule("azure-sas-signature", r"[?&]sig=([A-Za-z0-9%+/=]{30,})", keywords=("sig=",), group=1,
         examples=(("https://acme.blob.core.windows.net/c/f?sv=2021-08-06&sig=Xy7k2L9mQpR4sT6vW8zA1bC3dE5fG7hJ%2BkL0mN2o%3D",
                    "Xy7k2L9mQpR4sT6vW8zA1bC3dE5fG7hJ%2BkL0mN2o%3D"),)),
    Rule("digitalocean-token", r"\bdo[por]_v1_[a-f0-9]{64}\b", keywords=("dop_v1_", "doo_v1_", "dor_v1_"),
         examples=(("doctl auth init -t dop_v1_" + _DO, "dop_v1_" + _DO),)),
    # ---- version control ----
    Rule("github-token", r"\bgh[pousr]_[A-Za-z0-9]{36,}\b",
         keywords=("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),
         examples=(("git clone https://ghp_R8tk2Lm9QpX4sV7nB1cZ6wY3aE5dF0gH2jK4@github.com/o/r",
                    "ghp_R8tk2Lm9QpX4sV7nB1cZ6wY3aE5dF0gH2jK4"),),
         negatives=("ghp_short", "the ghs_ prefix")),
    Rule("github-fine-grained-token", r"\bgithub_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}\b",
         keywords=("github_pat_",),
         examples=(("GH_TOKEN=github_pat_11ABCDEFG0aBcDeFgHiJkL_" + "mNoPqRsTuVwXyZ0123456789aBcDeFgHiJkLmNoPqRsTuVwXyZ012345678",
                    "github_pat_11ABCDEFG0aBcDeFgHiJkL_" + "mNoPqRsTuVwXyZ0123456789aBcDeFgHiJkLmNoPqRsTuVwXyZ012345678"),)),
    Rule("gitlab-token", r"\b(?:glpat|gldt|glptt|glrt|glft|glsoat|gloas|glcbt|glimt|glagent|glffct)-[0-9A-Za-z_.-]{20,}",
         keywords=("glpat-", "gldt-", "glptt-", "glrt-", "glft-", "glsoat-", "gloas-", "glcbt-", "glimt-", "glagent-",
                   "glffct-"),
         examples=(("PRIVATE-TOKEN: glpat-x7Yk2LmN9pQrS4tUvW1z", "glpat-x7Yk2LmN9pQrS4tUvW1z"),)),
    # ---- chat ----
    Rule("slack-token", r"\bxox[abposre]-[0-9A-Za-z-]{10,}|\bxapp-\d-[A-Z0-9]+-\d+-[a-f0-9]{20,}",
         keywords=("xoxa-", "xoxb-", "xoxp-", "xoxo-", "xoxs-", "xoxr-", "xoxe-", "xapp-"),
         examples=(("SLACK_BOT=xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
                    "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"),)),
    Rule("slack-webhook", r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_-]{20,}",
         keywords=("hooks.slack.com",),
         examples=(("curl -X POST https://hooks.slack.com/services/T0123ABCD/B0456EFGH/aBcDeFgHiJkLmNoPqRsTuVwX -d @m.json",
                    "https://hooks.slack.com/services/T0123ABCD/B0456EFGH/aBcDeFgHiJkLmNoPqRsTuVwX"),)),
    Rule("discord-webhook", r"https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d+/[A-Za-z0-9_-]{40,}",
         keywords=("/api/webhooks/",),
         examples=(("https://discord.com/api/webhooks/123456789012345678/" + _DISCORD,
                    "https://discord.com/api/webhooks/123456789012345678/" + _DISCORD),)),
    Rule("telegram-bot-token", r"\d{8,10}:AA[0-9A-Za-z_-]{33}", keywords=(":aa",),
         examples=(("https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0/getMe",
                    "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0"),)),
    # ---- payments ----
    # publishable keys (`pk_live_`) are public by design: not redacted
    Rule("stripe-key", r"\b(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{20,}\b",
         keywords=("sk_live_", "sk_test_", "rk_live_", "rk_test_"),
         examples=(("curl https://api.stripe.com/v1/charges -u sk_live_4eC39HqLyjWDarjtT1zdp7dc:",
                    "sk_live_4eC39HqLyjWDarjtT1zdp7dc"),),
         negatives=("sk_live_", "stripe_sk_live_setting", "Stripe('pk_live_51HqLm2Xv9Rt4Yb7Nc1Kd6Wf')")),
    Rule("stripe-webhook-secret", r"\bwhsec_[A-Za-z0-9]{32,}\b", keywords=("whsec_",),
         examples=(("STRIPE_WEBHOOK=whsec_1a2B3c4D5e6F7g8H9i0JkLmNoPqRsTuVwX", "whsec_1a2B3c4D5e6F7g8H9i0JkLmNoPqRsTuVwX"),)),
    Rule("shopify-token", r"\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}\b", keywords=("shpat_", "shpca_", "shppa_", "shpss_"),
         examples=(("X-Shopify-Access-Token: shpat_" + _DO[:32], "shpat_" + _DO[:32]),)),
    # ---- package registries ----
    Rule("npm-token", r"\bnpm_[A-Za-z0-9]{36}\b", keywords=("npm_",),
         examples=(("//registry.npmjs.org/:_authToken=npm_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3fG5",
                    "npm_aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3fG5"),),
         negatives=("npm_config_cache=/tmp/npm",)),
    Rule("npm-auth-token", r"(?im)(?::|^)_auth(?:Token)?(?:\s*=\s*|\s+)[\"']?([^\s\"'()]{8,})(?:\s|$)", keywords=("_auth",), group=1,
         validator="not-reference", category="context",
         examples=(("//npm.acme.dev/:_authToken=7c1e2d3f-94b1-4e8a-b0c5-5f2d81a6e93c", "7c1e2d3f-94b1-4e8a-b0c5-5f2d81a6e93c"),
                   ("npm config set //registry.npmjs.org/:_authToken Npm-Cfg-14x", "Npm-Cfg-14x")),
         negatives=("//registry.npmjs.org/:_authToken=${NPM_TOKEN}",
                    "npm config set //registry.npmjs.org/:_authToken $NPM_TOKEN")),
    Rule("pypi-token", r"\bpypi-AgE[A-Za-z0-9_-]{50,}", keywords=("pypi-age",),
         examples=(("twine upload -p pypi-AgEIcHlwaS5vcmcCJGI0ZDFhOGQ3LTk5YzEtNGM5ZC1iNmY1LTE4MzU5NGU2NmQ5YgACKlsz",
                    "pypi-AgEIcHlwaS5vcmcCJGI0ZDFhOGQ3LTk5YzEtNGM5ZC1iNmY1LTE4MzU5NGU2NmQ5YgACKlsz"),)),
    # ---- AI providers ----
    Rule("openai-key", r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{16,}T3BlbkFJ[A-Za-z0-9_-]{16,}"
                       r"|\bsk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,}",
         keywords=("t3blbkfj", "sk-proj-", "sk-svcacct-", "sk-admin-"),
         examples=(("export OPENAI_API_KEY=sk-proj-Ab3De5Gh7Jk9Mn1Pq3St5Vw7Yz9Bc1De3Fg5Hj7Kl9T3BlbkFJzX2cV4bN6mQ8wE0rT2yU4",
                    "sk-proj-Ab3De5Gh7Jk9Mn1Pq3St5Vw7Yz9Bc1De3Fg5Hj7Kl9T3BlbkFJzX2cV4bN6mQ8wE0rT2yU4"),)),
    Rule("anthropic-key", r"\bsk-ant-[a-z]{3,8}\d{0,2}-[A-Za-z0-9_-]{32,}", keywords=("sk-ant-",),
         examples=(("ANTHROPIC_API_KEY='sk-ant-api03-" + "Xy9_Kp2-Lm4Qr7St" * 6 + "AA'",
                    "sk-ant-api03-" + "Xy9_Kp2-Lm4Qr7St" * 6 + "AA"),)),
    Rule("huggingface-token", r"\b(?:hf|api_org)_[A-Za-z0-9]{34}\b", keywords=("hf_", "api_org_"),
         examples=(("huggingface-cli login --token hf_AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh",
                    "hf_AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh"),),
         negatives=("from huggingface_hub import hf_hub_download",)),
    # ---- other SaaS ----
    Rule("sendgrid-key", r"\bSG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}", keywords=("sg.",),
         examples=(("SENDGRID=" + _SG, _SG),)),
    Rule("twilio-key", r"\b(?:SK|AC)[0-9a-f]{32}\b",
         examples=(("twilio api:core:keys:fetch --sid SK7e3b9a1f04c6d82e5b7a90f13c4d6e8f",
                    "SK7e3b9a1f04c6d82e5b7a90f13c4d6e8f"),),
         negatives=("SKIP0123", "ACCEPTED")),
    Rule("mailgun-key", r"\bkey-[0-9a-z]{32}\b", keywords=("key-",),
         examples=(("curl -s --user 'api:key-3ax6xnjp29jd6fds4gc373sgvjxteol0' https://api.mailgun.net",
                    "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"),)),
    Rule("mailchimp-key", r"\b[0-9a-f]{32}-us\d{1,2}\b", keywords=("-us",),
         examples=(("MAILCHIMP=7e3b9a1f04c6d82e5b7a90f13c4d6e8f-us21", "7e3b9a1f04c6d82e5b7a90f13c4d6e8f-us21"),)),
    Rule("datadog-key", r"(?i)(?:datadog|\bdd)[_-]?(?:api|app(?:lication)?)[_-]?key\s*[\"']?\s*[:=]\s*[\"']?([a-f0-9]{32,40})\b",
         keywords=("datadog", "dd_", "dd-"), group=1, category="context",
         examples=(("DD_API_KEY=0123456789abcdef0123456789abcdef docker compose up", "0123456789abcdef0123456789abcdef"),)),
    Rule("databricks-token", r"\bdapi[a-f0-9]{32}(?:-\d)?\b", keywords=("dapi",),
         examples=(("databricks configure --token dapi7e3b9a1f04c6d82e5b7a90f13c4d6e8f", "dapi7e3b9a1f04c6d82e5b7a90f13c4d6e8f"),)),
    Rule("linear-key", r"\blin_(?:api|oauth)_[A-Za-z0-9]{40}\b", keywords=("lin_api_", "lin_oauth_"),
         examples=(("LINEAR=lin_api_" + "aB3dE5gH7j" * 4, "lin_api_" + "aB3dE5gH7j" * 4),)),
    # A DSN's public key is public by design (it ships in browser code); a legacy DSN's secret is not.
    Rule("sentry-dsn", r"https://[0-9a-f]{32}:([0-9a-f]{32})@[A-Za-z0-9.-]+",
         keywords=("sentry",), group=1,
         examples=(("SENTRY_DSN=https://7e3b9a1f04c6d82e5b7a90f13c4d6e8f:0c1d2e3f4a5b69788796a5b4c3d2e1f0@sentry.acme.io/12",
                    "0c1d2e3f4a5b69788796a5b4c3d2e1f0"),),
         negatives=("Sentry.init({ dsn: 'https://7e3b9a1f04c6d82e5b7a90f13c4d6e8f@o12345.ingest.sentry.io/123' })",)),
    Rule("age-secret-key", r"\bAGE-SECRET-KEY-1[0-9A-Z]{58}\b", keywords=("age-secret-key-1",),
         examples=(("age key: " + _AGE, _AGE),)),
    # ---- structured tokens and key material ----
    Rule("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", keywords=("eyj",), validator="jwt",
         examples=(("Cookie: session=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
                    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),),
         negatives=("eyJ is how base64 JSON starts",
                    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5"
                    "MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")),
    Rule("private-key",
         r"-----BEGIN[ A-Z0-9]{0,20}PRIVATE KEY(?: BLOCK)?-----"
         r"((?s:[A-Za-z0-9+/=\s\\,:.\"'|+-]{16,}?))"
         r"(?:-----END[ A-Z0-9]{0,20}PRIVATE KEY(?: BLOCK)?-----|\z)",
         keywords=("private key",), group=1,
         examples=(("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
                    "-----END OPENSSH PRIVATE KEY-----\n",
                    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW"),
                   ('{"private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\n-----END PRIVATE KEY-----\\n"}',
                    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"),
                   ("+-----BEGIN RSA PRIVATE KEY-----\n+MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM\n+-----END RSA PRIVATE KEY-----",
                    "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM")),
         negatives=('if line.startswith("-----BEGIN RSA PRIVATE KEY-----"):\n    parse(line)',
                    "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----")),
)

_CONTEXT_RULES: tuple[Rule, ...] = (
    Rule("url-credentials", r"\b[A-Za-z][A-Za-z0-9+.-]{1,20}://[^\s:/@\"'<>]*:([^\s/@\"'<>]+)@",
         keywords=("://",), group=1, validator="not-reference", category="context",
         examples=(("psql postgres://app:S3cr3t-Pa55@db.internal:5432/app", "S3cr3t-Pa55"),
                   ("REDIS_URL=redis://:Rds-Pw-99x@cache:6379/0", "Rds-Pw-99x"),
                   ("git remote add o https://bob:hunter2x@git.example.com/r.git", "hunter2x")),
         negatives=("postgres://app:${DB_PASSWORD}@db/app", "git@github.com:org/repo.git",
                    "http://localhost:8080/path@v2", "https://user@example.com/repo")),
    Rule("auth-header",
         r"(?i)(?:\b(?:proxy-)?authorization\s*[\"']?\s*[:=]|\b(?:proxy_set_header|add_header|more_set_headers"
         r"|RequestHeader\s+(?:set|add)|Header\s+(?:always\s+)?set)\s+[\"']?(?:proxy-)?authorization[\"']?\s)"
         r"\s*[\"']?[a-z][a-z0-9_-]{1,20}\s+"
         r"([A-Za-z0-9._~+/:=-]{6,})",
         keywords=("authorization",), group=1, validator="not-reference", category="context",
         examples=(('curl -H "Authorization: Bearer 9f8e7d6c5b4a3210fedcba" https://api', "9f8e7d6c5b4a3210fedcba"),
                   ('proxy_set_header Authorization "Basic c3ZjOkJmMHgyJXNYcXklNFVMUQ==";', "c3ZjOkJmMHgyJXNYcXklNFVMUQ=="),
                   ("Authorization: Basic YWxpY2U6czNjcjN0", "YWxpY2U6czNjcjN0"),
                   ('curl -H "Authorization: Splunk 6f1c2d3e-9a1b-4c5d-8e9f-a01b22c34d55" https://splunk:8088',
                    "6f1c2d3e-9a1b-4c5d-8e9f-a01b22c34d55")),
         negatives=('headers["Authorization"] = f"Bearer {token}"', "Authorization: Bearer $TOKEN")),
    Rule("bearer-token", r"(?i)\bbearer\s+([A-Za-z0-9._~+/-]{20,}=*)", keywords=("bearer",), group=1,
         validator="generated", category="context",
         examples=(("token_type=bearer access=Bearer aB3dE5gH7jK9mN1pQ3sT5vW7", "aB3dE5gH7jK9mN1pQ3sT5vW7"),),
         negatives=("the bearer authentication_scheme_description",)),
    Rule("api-key-header",
         r"(?i)\b(?:x-[a-z0-9-]{0,30}(?:key|token|secret|auth)[a-z0-9-]{0,20}|api-key|apikey|private-token"
         r"|[a-z0-9-]{0,30}subscription-key|[a-z0-9-]{1,30}-(?:access|auth)-token)\s*:\s*([^\s\"',;]{8,})",
         keywords=("x-", "api-key", "apikey", "private-token", "subscription-key", "-access-token", "-auth-token"), group=1, validator="not-reference", category="context",
         examples=(('curl -H "X-Api-Key: 7Fq2Lm9Px4Rt6Vz8" https://svc', "7Fq2Lm9Px4Rt6Vz8"),
                   ("Ocp-Apim-Subscription-Key: 95d8803bf999955a15cf0ac2077051e2", "95d8803bf999955a15cf0ac2077051e2"),
                   ("PRIVATE-TOKEN: k2Jd8sLq0ZmX7Pw3", "k2Jd8sLq0ZmX7Pw3")),
         negatives=("X-Api-Key: $API_KEY",)),
    Rule("curl-user", r"(?i)\b(?:curl|wget|http|https|xh)\b[^\n|;&]*?\s(?:-u|--user|--proxy-user|--http-password|--password)(?:\s+|=)?[\"']?[^\s:\"']*:([^\s\"']+)",
         keywords=("curl", "wget", "http", "xh"), group=1, validator="not-reference", category="context",
         examples=(("curl -u admin:Pa55w0rd! https://host/api", "Pa55w0rd!"),
                   ("curl --user 'deploy:t0ps3cret' -X POST https://h", "t0ps3cret")),
         negatives=("curl -u $USER:$PASS https://host", "curl -u admin https://host")),
    Rule("password-flag",
         r"(?i)(?:^|\s)(--?[a-z0-9-]{0,30}(?:password|passwd|passphrase|secret|token|api-key|apikey|account-key|access-key"
         r"|private-key|auth-key|signing-key|connection-string|conn-str|bearer|secret-string|requirepass|masterauth)"
         r"|--(?:[a-z0-9]+-)*(?:pass|pw|pwd))"
         r"(?:=|\s+)"
         r"([^\s\"'][^\s]*|\"[^\"\n]+\"|'[^'\n]+')",
         keywords=("password", "passwd", "passphrase", "secret", "token", "api-key", "apikey", "account-key",
                   "access-key", "private-key", "auth-key", "signing-key", "connection-string", "conn-str", "bearer",
                   "-pass", "-pw", "requirepass", "masterauth"), group=2, key_group=1,
         validator="not-reference", category="context",
         examples=(("mysql --user=root --password=Sup3r-S3cret db", "Sup3r-S3cret"),
                   ("curl --oauth2-bearer Zq8kLm2Np4Rt6Vx8 https://api.acme.io", "Zq8kLm2Np4Rt6Vx8"),
                   ("app --db-pass Kq2-Lm9-Xz --port 80", "Kq2-Lm9-Xz"),
                   ("influx -username admin -password Infl-Pw-31 -host db", "Infl-Pw-31"),
                   ("aws secretsmanager create-secret --name db --secret-string 'Sm-Str-57x'", "Sm-Str-57x"),
                   ("vault login --token s.Xk2Lm9Pq4Rt6", "s.Xk2Lm9Pq4Rt6"),
                   ("docker login --password 'hunter2!!' registry.example.com", "hunter2!!"),
                   ("command: redis-server --appendonly yes --requirepass Rds-Flag-Pw4", "Rds-Flag-Pw4")),
         negatives=("docker login --password-stdin < pw.txt", "app --token-file /run/tok", "--password $PASS")),
    Rule("mysql-password", r"\b(?:mysql|mysqldump|mysqladmin|mariadb|mysqlsh)\b[^\n|;&]*?\s-p([^\s\"']+|\"[^\"\n]+\"|'[^'\n]+')",
         keywords=("mysql", "mariadb"), group=1, validator="not-reference", category="context",
         examples=(("mysql -u root -pS3cretPw -h db", "S3cretPw"), ("mysqldump -uroot -p'x y z!' app", "x y z!")),
         negatives=("mysql -u root -p app", "mysql -u root -p$MYSQL_PWD")),
    Rule("short-password-flag",
         r"(?:\b(?:sshpass|twine|cf)\b|\b(?:docker|podman|nerdctl|helm|buildah|skopeo|oras)\s+(?:registry\s+)?login\b)"
         r"[^\n|;&]{0,80}?\s-p\s+([^\s\"'-][^\s]*|\"[^\"\n]+\"|'[^'\n]+')",
         keywords=("sshpass", "twine", "cf", "login"),
         group=1, validator="not-reference", category="context",
         examples=(("sshpass -p 'n0tS0s3cret' ssh deploy@host", "n0tS0s3cret"),
                   ("docker login -u bob -p Dkr-P4ss registry.io", "Dkr-P4ss")),
         negatives=("docker run -p 8080:80 nginx", "sshpass -p $PW ssh host")),
    Rule("secret-assignment",
         r"(?i)([A-Za-z0-9_.-]*(?:" + _SECRET_WORDS + r")[A-Za-z0-9_.-]*)" + _Q
         + r"(?:" + _TYPED + r"[ \t]*=|[\]]?[ \t]{0,24}(?:=|:=|:|=>|<-|\|\|=|\?=))[ \t]{0,4}"
         r"(?:!![a-z]+[ \t]+|&[A-Za-z0-9_-]+[ \t]+)?" + _VALUE,
         keywords=_SECRET_KEYWORDS, group=2, key_group=1, validator="literal", category="context",
         examples=(("export API_TOKEN=ab12Cd34Ef56Gh78", "ab12Cd34Ef56Gh78"),
                   ("DB_PASSWORD=hunter2", "hunter2"),
                   ("SMTP_PASS_WORD='*K-T4yycS3vUUeEh'", "*K-T4yycS3vUUeEh"),
                   ("db:\n  password: Falcon203\n", "Falcon203"),
                   ('  "client_secret": "k8Jd-2ls_Qm9Zx",', "k8Jd-2ls_Qm9Zx"),
                   ("password: Tr0ub4dor&3", "Tr0ub4dor&3"),
                   ("api_key = 'A1b2C3d4E5f6'", "A1b2C3d4E5f6"),
                   ('private_key := "c2VjcmV0IGtleSBtYXRlcmlhbA=="', "c2VjcmV0IGtleSBtYXRlcmlhbA=="),
                   ("SESSION_SALT=q8Vd93kd", "q8Vd93kd"), ("SMTP_CRED=Mx-77-pq", "Mx-77-pq"),
                   ("export SIGNING_SEED=ab12cd34ef", "ab12cd34ef"),
                   ('psycopg2.connect("host=db user=app password=Pg4pp-S3cret")', "Pg4pp-S3cret"),
                   ('sql.Open("postgres", "user=app password=G0-Db-Pw dbname=app")', "G0-Db-Pw"),
                   ('"Server=db;Database=app;User Id=sa;Password=Mssql-Pw-2024;"', "Mssql-Pw-2024"),
                   ('psql "host=db.acme.io port=5432 user=app password=Lq-Pg-881"', "Lq-Pg-881"),
                   ('{\\"password\\": \\"Esc-Json-Pw1\\"}', "Esc-Json-Pw1"),
                   ("$password = 'Php-Pw-2x';", "Php-Pw-2x"), (':password => "Rb-Pw-77a",', "Rb-Pw-77a"),
                   ('<connection password="Xml-Attr-Pw9" user="app"/>', "Xml-Attr-Pw9"),
                   ('ENV["API_TOKEN"] ||= "Rb-Or-Eq-71"', "Rb-Or-Eq-71"), ('let secret_key = b"Rs-Bytes-K3y-8";', "Rs-Bytes-K3y-8"),
                   ('<machineKey validationKey="9F8E7D6C5B4A39281706F5E4D3C2B1A0" decryptionKey="A1B2C3D4E5F60718293A4B5C6D7E8F90" />',
                    "A1B2C3D4E5F60718293A4B5C6D7E8F90"),
                   ('db_password      = "Tf-Aligned#Pw-7"', "Tf-Aligned#Pw-7"),
                   ("vpn:\n  pass: Tundra&6854saffron\n", "Tundra&6854saffron"),
                   ('{"vpnPass": "Vpn-Camel-Pw-3"}', "Vpn-Camel-Pw-3"),
                   ("db.url: jdbc:mysql://db/app\ndb.password: YBeRzUNcBBJcqipTcDkiG\n", "YBeRzUNcBBJcqipTcDkiG"),
                   ('network={\n    psk="copper-falcon-meadow57"\n}', "copper-falcon-meadow57"),
                   ("$env:AZURE_DEVOPS_EXT_PAT = 'w2s5kqgxfwtverp4bhyosynfbrnhzskodz3b257ixpqy33dbkpi7'",
                    "w2s5kqgxfwtverp4bhyosynfbrnhzskodz3b257ixpqy33dbkpi7"),
                   ('private val clientSecret: String = "Kt-Typed-Sec-4"', "Kt-Typed-Sec-4"),
                   ("static API_KEY: &'static str = \"Rs-Static-K3y9\";", "Rs-Static-K3y9"),
                   ('public string Password { get; set; } = "Cs-Prop-Pw-4";', "Cs-Prop-Pw-4"),
                   ('var Password string = "Go-Typed-Pw-6"', "Go-Typed-Pw-6"),
                   ("password: !!str Yaml-Tag-Pw-5", "Yaml-Tag-Pw-5"),
                   ("password: &pw Yaml-Anchor-Pw-2", "Yaml-Anchor-Pw-2"),
                   ("//fs/share /mnt cifs username=ci,password=majsbYTFqdnJbCvO,uid=1000 0 0", "majsbYTFqdnJbCvO"), ("olcRootPW: Ldif-Root-Pw-2", "Ldif-Root-Pw-2"), ("DB_PWD=Env-Pwd-61", "Env-Pwd-61"), ('{"password": "Ab\\"cd9#Efgh12"}', 'Ab\\"cd9#Efgh12'), ("kennwort: Geheim-Wort-78", "Geheim-Wort-78"),
                   ('{"azureDevopsExtPat": "w2s5kqgxfwtverp4bhyosynfbrnhzskodz3b257ixpqy33dbkpi7"}',
                    "w2s5kqgxfwtverp4bhyosynfbrnhzskodz3b257ixpqy33dbkpi7"),
                   ('senha: "Minha-Senha-12"', "Minha-Senha-12"), ("STRIPE_SK=Env-Sk-Val-9q", "Env-Sk-Val-9q"),
                   ("HONEYCOMB_WRITEKEY=Vq8Lm2Zx9Pw4Rt6Yb1Nc", "Vq8Lm2Zx9Pw4Rt6Yb1Nc"), ("API_SECRET=8947731172394062", "8947731172394062"),
                   ('password = """Py-Triple-Pw-3"""', "Py-Triple-Pw-3"), ("# pw: Cmt-Pw-77x", "Cmt-Pw-77x")),
         negatives=('api_key = os.environ["API_KEY"]', "TOKEN=$GITHUB_TOKEN", 'password = ""',
                    "password: ${{ secrets.DB_PASSWORD }}", "self.password = password",
                    "token = tokens[0]", "max_tokens = 1024", "token_type = 'quoted-string'", "secret_name: db-creds", "secret_key = settings.SECRET_KEY",
                    "password: str", "password: String", "PASSWORD_HASHER=argon2", "GITHUB_TOKEN_PERMISSIONS=read", "password: '%env(DB_PASSWORD)%'", "api_key: ##API_KEY##", "PGPASSWORD=$$POSTGRES_PASSWORD psql", "password: $${DB_PASSWORD}", "token: eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6"
                    "IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c", "token_hash: 3f4e5d6c7b8a99887766554433221100ffeeddcc3f4e5d6c7b8a998877665544",
                    "password_digest: $2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW", "public_token: Xq2Lm9Pw4Rt6Vz8Nc1Df",
                    "password_changed_at: 2026-01-01T00:00:00Z", 'TEST_TOKEN = "fixture-token-abc123"', "secret: keyboard-cat",
                    'fake_secret = "secret-for-tests"', "TOKEN_TTL=3600", "MONKEY=banana", "api_key: @API_KEY@",
                    "TOKEN=`cat ~/.token`", "password: op://Prod/db/password", "token: vault:secret/data/ci#token",
                    'ClientSecret: "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/cs/)"',
                    "db_password: projects/acme/secrets/db-password/versions/latest", "jasypt_password: ENC(G6N718UuyPE5bHyWKyuLQSm02auQPUtm)",
                    "api_key = :api_key", "SECRET_KEY=@@SECRET_KEY@@", "api_key: api_key_123",
                    "secret: deadbeefdeadbeefdeadbeefdeadbeef", ': "${DB_PASSWORD:?DB_PASSWORD must be set}"',"return {'token': token}",
                    'Password: !Sub "{{resolve:secretsmanager:db:SecretString:password}}"', 'apiKey?: string;', "const apiKey: string = process.env.API_KEY!", 'url = f"https://x/?token={token}"', "password: *default_password", "primary_key=True",
                    'password = "changeme"', "API_KEY=your-api-key-here", 'token: "<your-token>"', "password=%(pw)s",
                    'secret: "{{ vault_secret }}"', "DB_PASSWORD=xxxxxxxx", 'password = "dummy"', "SECRET_KEY=1234567890",
                    "conn = connect(host=h, password=password)", "password:", '"password": "example"',
                    "  password: cGFzc3dvcmQ=", "secret: ***hidden***", "POSTGRES_PASSWORD=postgres",
                    "RABBITMQ_DEFAULT_PASS=guest", '"settings.token.help": "Paste your access token"',
                    "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set it in .env}", "token_bucket:\n  capacity: 100",
                    "mapboxgl.accessToken = 'pk.eyJ1IjoiYWNtZSIsImEiOiJjazEyMyJ9.Xq2Lm9Pw4Rt6Vz8Nc1Df3G';",
                    '"errors.password.tooShort": "Password must be at least 12 characters",')),
    Rule("high-entropy-near-keyword",
         r"(?i)(?:secret|token|passw|pwd|api[_-]?key|credential|\bauth\b|signature|\bsig\b|\bsas\b|salt|cookie|session"
         r"|private|hmac|\bkey\b|_key\b|(?-i:[a-z0-9]Key\b)|bearer|\bencrypt\b)[^\n]{0,24}?[ \t:=\"'`]"
         r"([A-Za-z0-9+/][A-Za-z0-9+/_.~-]{19,}={0,2})",
         keywords=("secret", "token", "passw", "pwd", "key", "credential", "auth", "sig", "sas", "salt", "cookie",
                   "session", "private", "hmac", "bearer", "encrypt"),
         group=1, validator="generated", category="context",
         examples=(("the deploy token is Zx8Kq2Lm9Pw4Rt6Vb1Nc", "Zx8Kq2Lm9Pw4Rt6Vb1Nc"),
                   ('encrypt = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="', "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s="),
                   ('{"segmentWriteKey": "2KNYd4PEMdTkhbDEpIAce5L00c4QUdwo"}', "2KNYd4PEMdTkhbDEpIAce5L00c4QUdwo")),
         negatives=("token sha 3f4e5d6c7b8a99887766554433221100ffeeddcc",
                    'token "integrity": "sha512-Qm9yZW1pcHN1bWRvbG9yc2l0YW1ldGNvbnNlY3RldHVy"',
                    "ED25519 key fingerprint is SHA256:Vq8Lm2Zx9Pw4Rt6Yb1Nc3Df5Gh7Jk0Xq9Zs8Bv7Cn6Aa.",
                    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEq8Lm2Zx9Pw4Rt6Yb1Nc3Df5Gh7Jk0\n",
                    "PublicKey = xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
                    'PASSWORD_HASHERS = ["django.contrib.auth.hashers.Argon2PasswordHasher"]',
                    "key = Ed25519PrivateKey.generate()",
                    '{"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU"}')),
    Rule("xml-secret-element",
         r"(?i)<(" + _KEY_NAME + r")(?:\s[^<>\n]*)?>\s*(?:<!\[CDATA\[)?([^<>\s\[\]][^<>\n\]]*?)\s*(?:\]\]>)?</",
         keywords=_KEY_NAME_KEYWORDS, group=2, key_group=1, validator="context", category="context",
         reason="XML element",
         examples=(("<datasource><password>Xml-El-Pw42</password></datasource>", "Xml-El-Pw42"),
                   ("<password><![CDATA[Xml-Cdata-Pw-7]]></password>", "Xml-Cdata-Pw-7"),
                   ("  <ApiKey>Zk8Lm2Pq9Rt4Vx7Nc1</ApiKey>", "Zk8Lm2Pq9Rt4Vx7Nc1"),
                   ("<password>{AQAAABAAAAAQk2Zq8Lm2Pw4Rt6Vy1Nc3Df5Gh7Jk0Xq9Zs8Bv7Cn6=}</password>",
                    "{AQAAABAAAAAQk2Zq8Lm2Pw4Rt6Vy1Nc3Df5Gh7Jk0Xq9Zs8Bv7Cn6=}")),
         negatives=("<password>${DB_PASSWORD}</password>", "<password></password>", "<token>changeme</token>",
                    "<passwordPolicy>strict</passwordPolicy>")),
    Rule("xml-key-value",
         r"(?i)\b(?:key|name)\s*=\s*[\"'](" + _KEY_NAME + r")[\"'][^<>\n]*?\bvalue\s*=\s*[\"']([^\"'\n]+)[\"']",
         keywords=_KEY_NAME_KEYWORDS, group=2, key_group=1, validator="context", category="context",
         reason="XML key/value pair",
         examples=(('<add key="StorageAccountKey" value="Kq9Lm2Zx8Pw4Rt6Vy1Nc3Df5Gh7Jk0=" />',
                    "Kq9Lm2Zx8Pw4Rt6Vy1Nc3Df5Gh7Jk0="),
                   ('<property name="db.password" value="Sp-Ring-Pw9"/>', "Sp-Ring-Pw9")),
         negatives=('<add key="ApiKeyHeader" value="X-Api-Key" />', '<add key="Password" value="" />',
                    '<add key="SecretName" value="db-creds" />')),
    Rule("xml-key-text",
         r"(?i)\b(?:key|name)\s*=\s*[\"'](" + _KEY_NAME + r")[\"'][^<>\n]*?>\s*(?:<value>)?\s*([^<>\s][^<>\n]*?)\s*<",
         keywords=_KEY_NAME_KEYWORDS, group=2, key_group=1, validator="context", category="context",
         reason="XML element named by its key",
         examples=(('<entry key="api.token">Ent-Tok-77x</entry>', "Ent-Tok-77x"),
                   ('<setting name="ClientSecret" serializeAs="String"><value>Cs-Val-991</value></setting>', "Cs-Val-991")),
         negatives=('<entry key="api.token">${API_TOKEN}</entry>',)),
    Rule("name-value-pair",
         r"(?i)\b(?:name|key|parameterkey|parameter_name)[\"']?\s*[:=]\s*[\"']?(" + _KEY_NAME + r")[\"']?\s*(?:,|\n)"
         r"\s*(?:-\s+)?[\"']?(?:value|parametervalue)[\"']?\s*[:=]\s*(\"[^\"\n]+\"|'[^'\n]+'|[^\s\"',}#]+)",
         keywords=_KEY_NAME_KEYWORDS, group=2, key_group=1, validator="context", category="context",
         reason="a name/value pair (Kubernetes env, ECS, CloudFormation parameters)",
         examples=(("env:\n  - name: DB_PASSWORD\n    value: \"K8s-Env-Pw1\"", "K8s-Env-Pw1"),
                   ('"environment": [{"name": "API_TOKEN", "value": "Ecs-Tok-9Lq2"}]', "Ecs-Tok-9Lq2"),
                   ("- ParameterKey: DBPassword\n  ParameterValue: Cfn-Par-77", "Cfn-Par-77")),
         negatives=("  - name: DB_PASSWORD\n    valueFrom:\n      secretKeyRef:", '{"name": "API_TOKEN", "value": "${TOKEN}"}')),
    Rule("xml-name-value-elements",
         r"(?i)<name>\s*(" + _KEY_NAME + r")\s*</name>\s*<value>\s*([^<>\s][^<>\n]*?)\s*</value>",
         keywords=_KEY_NAME_KEYWORDS, group=2, key_group=1, validator="context", category="context",
         reason="XML <name>/<value> property (Hadoop, Hive)",
         examples=(("<property>\n  <name>fs.s3a.secret.key</name>\n  <value>Hd-S3a-Sk-4q</value>\n</property>", "Hd-S3a-Sk-4q"),
                   ("<property><name>javax.jdo.option.ConnectionPassword</name><value>Hv-Ms-Pw-8</value></property>",
                    "Hv-Ms-Pw-8")),
         negatives=("<property><name>fs.s3a.secret.key</name><value>${env.S3_SECRET}</value></property>",)),
    Rule("code-pair",
         r"(?i)(?:[\"']|(?:^|[\s(]):|\{\s*)(" + _KEY_NAME + r")[\"']?\s*(?:,|\bto\b)\s*(?:[A-Za-z_][A-Za-z0-9_]{0,20}\s*[:=]\s*)?"
         r"[\"']([^\"'\n]+)[\"']",
         keywords=_KEY_NAME_KEYWORDS, group=2, key_group=1, validator="pair", category="context",
         reason="code: a key and its value side by side",
         examples=(('var cfg = new Dictionary<string,string> { { "AccountKey", "Dct-Acc-Key-88" } };', "Dct-Acc-Key-88"),
                   ('new SqlParameter("password", "Prm-Pw-55")', "Prm-Pw-55"),
                   ('props.setProperty("db.password", "Jv-Prop-Pw3");', "Jv-Prop-Pw3"),
                   ('os.getenv("API_TOKEN", "Dflt-Tok-9z")', "Dflt-Tok-9z"),
                   ("define( 'AUTH_KEY', '$(xsW4Um3c)VQbJp+)kz5n2!e#1cK' );", "$(xsW4Um3c)VQbJp+)kz5n2!e#1cK"),
                   ('set :password, "Rb-Sym-Pw-9"', "Rb-Sym-Pw-9"),
                   ('val creds = mapOf("password" to "Kt-Map-Pw-4")', "Kt-Map-Pw-4"),
                   ('{password, "Erl-Tuple-Pw-5"}', "Erl-Tuple-Pw-5")),
         negatives=('parser.add_argument("--password", "-p")', 'os.getenv("API_TOKEN", "")',
                    'jwt.encode({"some": "payload"}, "secret", algorithm="HS256")',
                    '("password", "Password")', 'choices = [("password", "password_hash")]',
                    'form.add("password", "Enter your password")')),
    Rule("code-call",
         r"(?i)\b([A-Za-z0-9_]{0,30}?(?:password|passwd|passphrase|secret|token|api_?key|access_?key|account_?key"
         r"|private_?key|credential)[A-Za-z0-9_]{0,20})\s*\(\s*[\"']([^\"'\n]+)[\"']\s*\)",
         keywords=("pass", "secret", "token", "key", "credential"), group=2, key_group=1, validator="call",
         category="context", reason="code: a setter or builder given a literal",
         examples=(('ds.setPassword("Ds-Set-Pw4");', "Ds-Set-Pw4"),
                   ('Client.builder().apiKey("Bld-Api-K3y9").build()', "Bld-Api-K3y9")),
         negatives=('keyring.get_password("svc")', 'os.getenv_secret("NAME")', 'verify_token("abc")',
                    'hash_password("Pw")', 'getSecret("db-password")')),
    Rule("credential-constructor",
         r"(?:\bPlainAuth\s*\(\s*[\"'][^\"'\n]*[\"']\s*,|\b(?:DBI->)?connect\s*\(\s*[\"'][^\"'\n]+[\"']\s*,"
         r"|\bTransport\.send\s*\(\s*[A-Za-z_][A-Za-z0-9_.]*\s*,"
         r"|\b[A-Za-z_]{0,30}(?i:credentials?|auth|login|simple_bind|bind_s)[A-Za-z]{0,20}\s*\(|\bauth\s*=\s*[\(\[]"
         r"|\bbasic_auth\s+"
         r"|\b(?:getConnection|new\s+PDO|mysqli_connect|new\s+mysqli|mysqli_real_connect|mysql_p?connect|new\s+Sequelize)"
         r"\s*\(\s*(?:\$[A-Za-z_]+\s*,\s*)?[\"'][^\"'\n]+[\"']\s*,)\s*"
         r"(?:[\"'][^\"'\n]*[\"']|[A-Za-z_.]*(?i:user|name|login|email|account)[A-Za-z0-9_]*|[Ss]tring\.Empty|null|None|nil)"
         r"\s*,\s*"
         r"(?:Some\s*\(\s*)?[\"']([^\"'\n]+)[\"']",
         keywords=("credential", "auth", "login", "getconnection", "pdo", "mysqli", "mysql_", "sequelize", "bind", "connect",
                   "transport.send"),
         group=1, validator="pair",
         category="context",
         reason="code: a credential object built from user and password",
         examples=(('var c = new NetworkCredential("svc_build", "Net-Cred-Pw7");', "Net-Cred-Pw7"),
                   ('requests.get(url, auth=("bob", "Req-Auth-99"))', "Req-Auth-99"),
                   ('req.SetBasicAuth("admin", "Go-Basic-42")', "Go-Basic-42"),
                   ('server.login("reports@acme.io", "Smtp-Lg-77")', "Smtp-Lg-77"),
                   ('DriverManager.getConnection("jdbc:mysql://db/app", "root", "Jdbc-Gc-31")', "Jdbc-Gc-31"),
                   ("$db = new PDO('mysql:host=db;dbname=app', 'app', 'Pdo-Pw-62');", "Pdo-Pw-62"),
                   ("$c = mysqli_connect('db', 'app', 'Mysqli-Pw-5', 'shop');", "Mysqli-Pw-5"),
                   ("req.basic_auth 'reporter', 'Rb-Basic-81'", "Rb-Basic-81"),
                   ('client.post(url).basic_auth("admin", Some("Rs-Basic-62"))', "Rs-Basic-62"),
                   ('$pdo = new PDO("mysql:host=db", "shop", "-sQx7#!Pdo-Lead");', "-sQx7#!Pdo-Lead"),
                   ('SecureString s = new NetworkCredential("", "Net-Empty-U-3").SecurePassword;', "Net-Empty-U-3"),
                   ('smtp.login(user, "Smtp-Var-U-5")', "Smtp-Var-U-5"),
                   ('ldap.simple_bind_s("cn=admin,dc=acme,dc=io", "Ldap-Bind-Pw-6")', "Ldap-Bind-Pw-6"),
                   ('mysql_connect("localhost", "root", "My-Conn-Pw-7");', "My-Conn-Pw-7"),
                   ('new Sequelize("app", "app", "Seq-Pw-8x", { dialect: "postgres" });', "Seq-Pw-8x"),
                   ('auth := smtp.PlainAuth("", "me@acme.io", "Go-Plain-Pw-6", "smtp.acme.io")', "Go-Plain-Pw-6"),
                   ('my $dbh = DBI->connect("dbi:mysql:app", "root", "Perl-Dbi-Pw-7");', "Perl-Dbi-Pw-7"),
                   ('transport.connect("smtp.acme.io", "mailer", "Jm-Conn-Pw-8");', "Jm-Conn-Pw-8"),
                   ('Transport.send(msg, "mailer@acme.io", "Jm-Send-Pw-9");', "Jm-Send-Pw-9"),
                   ('new NetworkCredential(string.Empty, "Net-Empty-Pw-2").SecurePassword', "Net-Empty-Pw-2")),
         negatives=('HTTPBasicAuth("user", os.environ["PW"])', 'auth=("bob", "")',
                    'login(request, "Welcome back")', 'auth.bind(handler, "click")')),
    Rule("netrc-password",
         r"(?:\bmachine\s+\S+|\bdefault)\s+login\s+\S+\s+(?:account\s+\S+\s+)?password\s+(\S+)",
         keywords=("machine", "default"), group=1, validator="context", category="context", reason=".netrc entry",
         examples=(("machine api.heroku.com\n  login me@acme.io\n  password 8f2c1e4a-77b0-4d3e-9a61-2c5e8b7d9f01",
                    "8f2c1e4a-77b0-4d3e-9a61-2c5e8b7d9f01"),
                   ("machine git.acme.io login bob password Ntrc-Pw-41", "Ntrc-Pw-41")),
         negatives=("machine learning password reset flow", "machine x login y password $PW")),
    Rule("dockerfile-env",
         r"(?im)(?:^\s*(?:ENV|ARG)\s+|\b(?:setx|setenv|launchctl\s+setenv|set\s+-[gxU]{1,3})\s+"
         r"|\bSet-Item\s+(?:-Path\s+)?env:)"
         r"([A-Za-z0-9_.-]*(?:" + _SECRET_WORDS + r")[A-Za-z0-9_.-]*)[ \t]+(?:-Value[ \t]+)?([^\s=][^\n]*?)\s*$",
         keywords=("env", "arg", "setx", "set -", "set-item"), group=2, key_group=1, validator="context", category="context",
         reason="a variable set by a command (Dockerfile ENV/ARG, setx, setenv, fish set -x)",
         examples=(("FROM python:3.12\nENV API_TOKEN Dkr-Env-Tok9\nRUN make", "Dkr-Env-Tok9"),
                   ('setx API_SECRET "Win-Setx-Sec-3"', "Win-Setx-Sec-3"),
                   ("setenv DB_PASSWORD Csh-Env-Pw-7", "Csh-Env-Pw-7"), ("set -gx GITHUB_TOKEN Fish-Tok-8q", "Fish-Tok-8q"),
                   ("Set-Item env:DB_PASSWORD 'Ps-Item-Pw-6'", "Ps-Item-Pw-6")),
         negatives=("ENV API_TOKEN $API_TOKEN", "ENV PASSWORD_FILE /run/secrets/pw")),
    Rule("pgpass-line", r"(?m)^(?:[A-Za-z0-9_.-]+|\*):(?:\d{1,5}|\*):[^:\s]+:[^:\s]+:(\S+)$",
         group=1, validator="context", category="context", reason=".pgpass entry",
         examples=(("db.acme.io:5432:app:app_user:Pgp-Ass-84", "Pgp-Ass-84"),),
         negatives=("root:x:0:0:root:/root:/bin/bash", "localhost:5432:*:app:*")),
    Rule("signing-key-literal",
         r"(?:\bSymmetricSecurityKey\s*\(\s*Encoding\.\w+\.GetBytes\(\s*"
         r"|\bSecretKeySpec\s*\(\s*"
         r"|\bjwt\.(?:encode|sign|decode|verify)\s*\(\s*[^,()\n]+,\s*"
         r"|\bhmac\.new\s*\(\s*b?)"
         r"[\"']([^\"'\n]+)[\"']",
         keywords=("symmetricsecuritykey", "secretkeyspec", "jwt.", "hmac.new"), group=1, validator="pair",
         category="context", reason="code: a literal signing key",
         examples=(('new SymmetricSecurityKey(Encoding.UTF8.GetBytes("Jwt-Sign-K3y-9x"))', "Jwt-Sign-K3y-9x"),
                   ('token = jwt.encode(payload, "Py-Jwt-K3y-41", algorithm="HS256")', "Py-Jwt-K3y-41"),
                   ('hmac.new(b"Hm-Ac-K3y-22", body, hashlib.sha256)', "Hm-Ac-K3y-22"),
                   ('new SecretKeySpec("Jv-Spec-K3y-5".getBytes(UTF_8), "HmacSHA256")', "Jv-Spec-K3y-5")),
         negatives=('jwt.sign(payload, "secret")', "jwt.encode(payload, key, algorithm='HS256')")),
    Rule("sql-password",
         r"(?i)\b(?:password\s+|set\s+password\s+(?:for\s+\S+\s*)?=\s*"
         r"|sp_addlogin\s+(?:@loginame\s*=\s*)?'[^'\n]+'\s*,\s*(?:@passwd\s*=\s*)?"
         r"|identified\s+(?:with\s+\S+\s+)?by\s+(?:password\s+)?)('[^'\n]+'|\"[^\"\n]+\")",
         keywords=("password", "identified", "sp_addlogin"), group=1, validator="context", category="context",
         reason="SQL: a user's password",
         examples=(("psql -c \"CREATE USER app WITH PASSWORD 'Crt-Pw-06'\"", "Crt-Pw-06"),
                   ("ALTER USER app PASSWORD 'Alt-Pw-95';", "Alt-Pw-95"),
                   ("CREATE USER 'a'@'%' IDENTIFIED BY 'Idb-Pw-17';", "Idb-Pw-17"),
                   ('CREATE USER app_owner IDENTIFIED BY "Ora-Quoted-3" DEFAULT TABLESPACE users;', "Ora-Quoted-3"),
                   ("SET PASSWORD FOR 'report'@'%' = 'Set-Pw-For-8';", "Set-Pw-For-8"),
                   ("EXEC sp_addlogin 'app', 'Sp-Add-Pw-3';", "Sp-Add-Pw-3")),
         negatives=("ALTER USER app PASSWORD NULL;", "CREATE USER app WITH PASSWORD :'pw'")),
    Rule("sql-identified-bare",
         r"(?i)\b(?:user|role|to)\s+\S{1,64}\s+(identified)\s+by\s+([A-Za-z][A-Za-z0-9_#$]{3,29})(?:[\s;]|$)",
         keywords=("identified",), group=2, key_group=1, validator="context", category="context",
         reason="SQL: a user's password (Oracle, unquoted)",
         examples=(("CREATE USER scott IDENTIFIED BY Tiger_Ora_41;", "Tiger_Ora_41"),
                   ("CREATE DATABASE LINK hr CONNECT TO hr IDENTIFIED BY Hr_Link_77 USING 'prod';", "Hr_Link_77")),
         negatives=("CREATE USER username IDENTIFIED BY password;", "ALTER USER u IDENTIFIED BY VALUES 'S:9A8B';",
                    "CREATE USER app IDENTIFIED BY :pw;", "AIX filesets are identified by four decimal values")),
    Rule("connection-string-braced", r"(?i)(?:^|[;\s\"'])(pwd|password)\s*=\s*\{([^}\n]+)\}",
         keywords=("pwd", "password"), group=2, key_group=1, validator="context", category="context",
         reason="ODBC connection string",
         examples=(("Driver={ODBC Driver 18 for SQL Server};Server=db;Uid=sa;Pwd={Od;bc-Pw-1};", "Od;bc-Pw-1"),)),
    Rule("jdbc-oracle-password", r"\bjdbc:oracle:[a-z]+:[^/\s:@\"']{1,60}/([^@\s\"']+)@",
         keywords=("jdbc:oracle",), group=1, validator="context", category="context", reason="JDBC Oracle URL",
         examples=(("jdbc:oracle:thin:scott/Ora-Jdbc-7@db.acme.io:1521:ORCL", "Ora-Jdbc-7"),)),
    Rule("url-query-secret",
         r"[?&](?i:(sig|signature|token|access_token|refresh_token|id_token|auth_?token|api[_-]?key|apikey|key|code"
         r"|client_secret|secret|password|passwd|pwd|pass|x-amz-signature|x-amz-security-token|x-goog-signature"
         r"|x-goog-credential|sas_token|subscription-key|private[_-]token|circle-token|api[_-]?token|access[_-]?key"
         r"|secret[_-]?key|hapikey|jwt|session_?id))=([^&\s#\"'<>]{6,})",
         keywords=("sig=", "signature=", "token=", "key=", "code=", "secret=", "password=", "passwd=", "pwd=",
                   "pass=", "x-amz-", "x-goog-", "jwt=", "sessionid=", "session_id="), group=2, key_group=1,
         validator="url-param", category="context",
         reason="URL query parameter",
         examples=(("https://acme.blob.core.windows.net/c/f?sv=2022-11-02&sp=r&sig=Qm8kZ2%2BxLp9Rt4Vy7Nc1Df3Gh5Jk%3D",
                    "Qm8kZ2%2BxLp9Rt4Vy7Nc1Df3Gh5Jk%3D"),
                   ("wget 'https://dl.acme.io/a.tgz?token=Dl7Tok3nQx9Lm2'", "Dl7Tok3nQx9Lm2"),
                   ("https://maps.example.net/api?key=k9Xq2Lm7Pw4Rt6Vz8Nc1Df3G&q=x", "k9Xq2Lm7Pw4Rt6Vz8Nc1Df3G"),
                   ("https://func.azurewebsites.net/api/run?code=Fn9kLq2Xz8Pw4Rt6Vy1Nc3Df5==", "Fn9kLq2Xz8Pw4Rt6Vy1Nc3Df5=="),
                   ("https://atlas.microsoft.com/search?api-version=1.0&subscription-key=Az8Maps2Key9Lq4Xz", "Az8Maps2Key9Lq4Xz"),
                   ("curl 'https://gitlab.acme.io/api/v4/projects?private_token=Gl8Qry2Tok9Lq4'", "Gl8Qry2Tok9Lq4")),
         negatives=("https://shop.acme.io/search?key=summer-dress&page=2", "https://x.io/cb?code=200",
                    "https://api.acme.io/v1?token=${TOKEN}", "https://x.io/?key=value")),
    Rule("go-mysql-dsn", r"[\"'`]([^\s:\"'`/@]{1,64}):([^\s@\"'`]{1,128})@(?:tcp|unix|udp)(?:\(|/)",
         keywords=("@tcp", "@unix", "@udp"), group=2, validator="context", category="context",
         reason="Go MySQL DSN user:password@tcp(host)",
         examples=(('db, err := sql.Open("mysql", "app:Go-My-Dsn-4@tcp(db:3306)/shop")', "Go-My-Dsn-4"),),
         negatives=('sql.Open("mysql", "app:${DB_PASSWORD}@tcp(db:3306)/shop")', '"root:@tcp(localhost)/test"')),
    Rule("aws-secret-after-key-id",
         r"\b(?:AKIA|ASIA)[A-Z2-7]{16}[\"']\s*,\s*[\"']([A-Za-z0-9/+]{40})[\"']",
         keywords=("akia", "asia"), group=1, validator="generated", category="context",
         reason="AWS secret access key passed right after its key id",
         examples=(('credentials.NewStaticCredentialsProvider("AKIAQYLPMN5HHHFPZAM2", "q8Vd93kdLx7Qp4Rt6Vz8Nc1Df3Gj5Km7Hs9Bw2Ey", "")',
                    "q8Vd93kdLx7Qp4Rt6Vz8Nc1Df3Gj5Km7Hs9Bw2Ey"),)),
    Rule("basic-auth-literal",
         r"\b(?:btoa|b64encode|encodebytes|base64_encode|encode64|strict_encode64|encodeToString|Buffer\.from)"
         r"\s*\(\s*b?[\"'`]([^\s:\"'`$]{1,64}):([^\s\"'`]{3,128})[\"'`]",
         keywords=("btoa", "b64encode", "encodebytes", "base64_encode", "encode64", "encodetostring", "buffer.from"),
         group=2, validator="context", category="context", reason="code: user:password encoded for Basic auth",
         examples=(('headers.Authorization = `Basic ${btoa("admin:Js-Btoa-Pw3")}`', "Js-Btoa-Pw3"),
                   ('base64.b64encode(b"svc:Py-B64-Pw9").decode()', "Py-B64-Pw9")),
         negatives=('btoa(`${user}:${password}`)', 'base64.b64encode(b"user:password")', 'btoa("a:b")')),
    Rule("env-default-literal",
         r"(?i)(?:process\.env\.|\bENV\[\s*[\"']|\bENV\.fetch\(\s*[\"']|getenv\(\s*[\"']|environ\.get\(\s*[\"']"
         r"|environ\[\s*[\"'])(" + _KEY_NAME + r")[\"']?\s*[\])]?\s*(?:\|\||\?\?|\bor\b)\s*[\"'`]([^\"'`\n]+)[\"'`]",
         keywords=_KEY_NAME_KEYWORDS, group=2, key_group=1, validator="context", category="context",
         reason="code: a literal fallback for a secret from the environment",
         examples=(("const secret = process.env.SESSION_SECRET || 'Js-Env-Fb-71';", "Js-Env-Fb-71"),
                   ("password: <%= ENV['DB_PASSWORD'] || 'Rb-Env-Fb-2' %>", "Rb-Env-Fb-2"),
                   ('token = os.environ.get("API_TOKEN") or "Py-Env-Fb-9"', "Py-Env-Fb-9")),
         negatives=("const port = process.env.PORT || '3000'", "const s = process.env.SESSION_SECRET || ''")),
    Rule("config-directive",
         r"(?im)(?:^[ \t]*|^[ \t]*user[ \t]+\S+[ \t]+(?:groups[ \t]+\S+[ \t]+)?|\bconfig[ \t]+set[ \t]+)"
         r"(requirepass|masterauth|rpcpassword|insecure-password|rootpw|bindpw|bind_pw|stats[ \t]+auth[ \t]+[^:\s]+:)"
         r"[ \t]*(\"[^\"\n]+\"|[^\s\"#]\S*)",
         keywords=("requirepass", "masterauth", "rpcpassword", "insecure-password", "rootpw", "bindpw", "bind_pw",
                   "stats"), group=2, key_group=1,
         validator="context", category="context",
         reason="server config directive (redis.conf, haproxy.cfg, slapd.conf, nslcd.conf)",
         examples=(("port 6379\nrequirepass Rds-Conf-Pw8\n", "Rds-Conf-Pw8"),
                   ('127.0.0.1:6379> CONFIG SET requirepass "Rds-Set-Pw-2"', "Rds-Set-Pw-2"),
                   ("rootpw Slapd-Root-Pw-3\n", "Slapd-Root-Pw-3"), ("bindpw Nslcd-Bind-Pw-4\n", "Nslcd-Bind-Pw-4"),
                   ("listen stats\n   stats auth admin:Hap-Stats-Pw-5\n", "Hap-Stats-Pw-5"),
                   ("userlist admins\n  user admin insecure-password Hap-Pw-39\n", "Hap-Pw-39")),
         negatives=("# requirepass foobared",)),
    Rule("sasl-passwd-line",
         r"(?m)^[ \t]*(?:\[[A-Za-z0-9.-]+\]|[A-Za-z0-9.-]*smtp[A-Za-z0-9.-]*)(?::\d{1,5})?[ \t]+[^\s:]+:([^\s/]\S*)[ \t]*$",
         keywords=("smtp", "]:", "] "), group=1, validator="context", category="context",
         reason="Postfix sasl_passwd entry (relay user:password)",
         examples=(("[smtp.mailgun.org]:587 postmaster@mg.acme.io:Sasl-Pw-64\n", "Sasl-Pw-64"),),
         negatives=("[smtp.mailgun.org]:587 postmaster@mg.acme.io:${SMTP_PASSWORD}", "[1] https://www.gnu.org/licenses/")),
    Rule("nested-value",
         r"(?i)[\"']?(" + _KEY_NAME + r")[\"']?[ \t]*(?:[:=][ \t]*\{?|\{)[ \t]*\n?"
         r"(?:[ \t]*[\"']?[A-Za-z]+[\"']?[ \t]*[:=][^\n{},]*,?[ \t]*\n?){0,4}[ \t]*[\"']?(?:value|default|defaultValue)"
         r"[\"']?[ \t]*[:=][ \t]*(\"[^\"\n]+\"|'[^'\n]+'|[^\s\"',}#]+)",
         keywords=("value", "default"), group=2, key_group=1, validator="literal", category="context",
         reason="a secret's value or default one level down (Terraform state and variables, CloudFormation)",
         examples=(('"outputs": {\n  "db_password": {\n    "value": "Tf-State-Pw3",\n    "sensitive": true', "Tf-State-Pw3"),
                   ('variable "api_token" {\n  type    = string\n  default = "Tf-Var-Tok-8"\n}', "Tf-Var-Tok-8"),
                   ("DBPassword:\n  Type: String\n  NoEcho: true\n  Default: Cfn-Def-Pw5\n", "Cfn-Def-Pw5"),
                   ('"adminPassword": {"type": "securestring", "defaultValue": "Arm-Def-Pw-9"}', "Arm-Def-Pw-9")),
         negatives=('variable "db_password" {\n  type      = string\n  sensitive = true\n}',
                    "password:\n  valueFrom:\n    secretKeyRef:", 'token_ttl:\n  default: 3600',
                    '"password": {\n  "value": "${var.db_password}"',
                    'output "db_password" {\n  value     = random_password.db.result\n  sensitive = true\n}')),
    Rule("xml-element-value",
         r"(?i)<(" + _KEY_NAME + r")\s[^<>\n]*?\bvalue\s*=\s*[\"']([^\"'\n]+)[\"']",
         keywords=_KEY_NAME_KEYWORDS, group=2, key_group=1, validator="context", category="context",
         reason="XML element named by its key, the value in an attribute",
         examples=(('<Password Value="Xml-Val-Attr-7"/>', "Xml-Val-Attr-7"),
                   ('<Secret name="api" value="Xml-Sec-Val-9"/>', "Xml-Sec-Val-9")),
         negatives=('<PasswordPolicy value="strict"/>', '<Password value="${DB_PASSWORD}"/>')),
    Rule("xml-key-string",
         r"(?i)(?:<key>\s*|\bproperty\s*=\s*[\"'])(" + _KEY_NAME + r")(?:\s*</key>|[\"']\s*>)\s*<string>\s*"
         r"([^<>\s][^<>\n]*?)\s*</string>",
         keywords=_KEY_NAME_KEYWORDS, group=2, key_group=1, validator="context", category="context",
         reason="property list key and string (Info.plist, Java XMLEncoder)",
         examples=(("<dict>\n  <key>API_KEY</key>\n  <string>Plist-Api-K3y-8</string>\n</dict>", "Plist-Api-K3y-8"),
                   ('<void property="password"><string>Xml-Enc-Pw-9</string></void>', "Xml-Enc-Pw-9")),
         negatives=("<key>API_KEY</key>\n<string>$(API_KEY)</string>",)),
    Rule("keystore-password-literal",
         r"\b(?:load|init|getKey|setKeyEntry|PasswordProtection|[A-Za-z]*(?i:credential|authentication|login))\s*\("
         r"[^()\n]*?(?:\([^()\n]*\)[^()\n]*?)?"
         r"[\"']([^\"'\n]+)[\"']\s*\.toCharArray\(\)",
         keywords=("tochararray",), group=1, validator="pair", category="context",
         reason="code: a key store's password as a literal",
         examples=(('ks.load(new FileInputStream("ks.jks"), "Ks-Load-Pw-3".toCharArray());', "Ks-Load-Pw-3"),
                   ('kmf.init(ks, "Kmf-Init-Pw-4".toCharArray());', "Kmf-Init-Pw-4"),
                   ('MongoCredential.createCredential("app", "admin", "Mongo-Cred-Pw-5".toCharArray());', "Mongo-Cred-Pw-5")),
         negatives=('ks.load(in, password.toCharArray());', 'chars = "abc".toCharArray();')),
    Rule("cli-output-secret",
         r"(?m)^[ \t]*(secret_id|SecretID|client_token|wrapping_token|root_token|unseal_key_b64|Initial Root Token"
         r"|Unseal Key \d+)(?::[ \t]+|[ \t]{2,})(\S+)[ \t]*$",
         keywords=("secret_id", "secretid", "client_token", "wrapping_token", "root_token", "unseal key"), group=2, key_group=1,
         validator="context", category="context", reason="a secret printed by a CLI (Vault, Consul)",
         examples=(("Key                  Value\nsecret_id            3f1c2d3e-9a1b-4c5d-8e9f-a01b22c34d55\n",
                    "3f1c2d3e-9a1b-4c5d-8e9f-a01b22c34d55"),
                   ("AccessorID:       9c1d2e3f-0a1b-4c5d-8e9f-001122334455\nSecretID:         e1f2a3b4-c5d6-4e7f-8a9b-0c1d2e3f4a5b\n",
                    "e1f2a3b4-c5d6-4e7f-8a9b-0c1d2e3f4a5b"),
                   ("Unseal Key 1: q8Vd93kdLx7Qp4Rt6Vz8Nc1Df3Gj5Km7Hs9Bw2Eyab\n", "q8Vd93kdLx7Qp4Rt6Vz8Nc1Df3Gj5Km7Hs9Bw2Eyab")),
         negatives=("secret_id_accessor   84896a0c-1347-aa90-a4f6-aca8b7558780",)),
    Rule("nested-key",
         r"(?im)^[ \t]*[\"']?((?:[A-Za-z0-9_-]*[_-])?(?:encryption|signing|secret|jwt|hmac|cipher|crypto|master|session|cookie))"
         r"[\"']?[ \t]*:[ \t]*\{?[ \t]*\n(?:[ \t]+[A-Za-z_]+[ \t]*:[^\n]*\n){0,3}[ \t]+[\"']?(?:key|secret)[\"']?[ \t]*:[ \t]*"
         r"(\"[^\"\n]+\"|'[^'\n]+'|[^\s\"'#]+)",
         keywords=("encryption", "signing", "secret", "jwt", "hmac", "cipher", "crypto", "master", "session", "cookie"),
         group=2, key_group=1, validator="literal", category="context",
         reason="a key one level under a section that says what it is for (encryption:, jwt:, session:)",
         examples=(("encryption:\n  key: 1445d0b5f5a811bcdb5a9f313a93f046190be815e85be4299dc8c1cc9ac99b76\n  timeout: 30\n",
                    "1445d0b5f5a811bcdb5a9f313a93f046190be815e85be4299dc8c1cc9ac99b76"),
                   ("jwt:\n  issuer: acme\n  secret: Jwt-Nested-Sec-4\n", "Jwt-Nested-Sec-4")),
         negatives=("session:\n  key: user_id\n", "encryption:\n  key: ${ENCRYPTION_KEY}\n",
                    "cookie:\n  key: sid\n  secure: true\n", "session:\n  key: _acme_session\n",
                    "jwt:\n  issuer: acme\n  key: /etc/keys/jwt.pem\n", "signing:\n  key: kms://projects/p/cryptoKeys/k\n")),
    Rule("yaml-argv-flag",
         r"(?im)^[ \t]*-[ \t]+[\"']?(--?[a-z0-9-]*(?:password|passwd|passphrase|token|secret|api-key|apikey|access-key"
         r"|private-key|requirepass|masterauth)|--(?:[a-z0-9]+-)*(?:pass|pw|pwd))[\"']?[ \t]*\n[ \t]*-[ \t]+"
         r"(\"[^\"\n]+\"|'[^'\n]+'|[^\s\"'#-][^\s#]*)",
         keywords=("pass", "pwd", "token", "secret", "key"), group=2, key_group=1, validator="context", category="context",
         reason="a secret flag and its value as two items of a YAML list (container args)",
         examples=(("args:\n  - --token\n  - K8s-Arg-Tok-5x\n", "K8s-Arg-Tok-5x"),
                   ('command:\n  - redis-server\n  - "--requirepass"\n  - "Cmp-List-Pw-6"\n', "Cmp-List-Pw-6")),
         negatives=("args:\n  - --token-file\n  - /var/run/token\n", "args:\n  - --password\n  - $(DB_PASSWORD)\n")),
    Rule("server-header-directive",
         r"(?i)\b(?:proxy_set_header|grpc_set_header|add_header|more_set_headers|RequestHeader\s+(?:set|add|append)"
         r"|Header\s+(?:always\s+)?(?:set|add))\s+[\"']?((?:x-)?[a-z0-9-]{0,30}(?:key|token|secret)[a-z0-9-]{0,20}|api-key|apikey)"
         r":?[\"']?\s+[\"']?([^\s\"';]{8,})",
         keywords=("proxy_set_header", "grpc_set_header", "add_header", "more_set_headers", "requestheader", "header"),
         group=2, key_group=1, validator="context", category="context",
         reason="a web server setting a secret header (nginx, Apache)",
         examples=(('proxy_set_header X-Api-Key "Ngx-Hdr-Key-3x";', "Ngx-Hdr-Key-3x"),
                   ("RequestHeader set X-Auth-Token Apache-Tok-44x", "Apache-Tok-44x")),
         negatives=("proxy_set_header X-Api-Key $http_x_api_key;", "add_header X-Frame-Options DENY;")),
    Rule("yaml-block-value",
         r"(?im)^[ \t]*(?:-[ \t]+)?[\"']?(" + _KEY_NAME + r")[\"']?[ \t]*:[ \t]*[|>][-+]?[0-9]?[ \t]*\n[ \t]+([^\s#][^\n]*?)[ \t]*$",
         keywords=_KEY_NAME_KEYWORDS, group=2, key_group=1, validator="context", category="context",
         reason="YAML block scalar under a secret key",
         examples=(("db:\n  password: >-\n    Yaml-Fold-Pw-7\n", "Yaml-Fold-Pw-7"),
                   ("token: |\n  Yaml-Lit-Tok-8\n", "Yaml-Lit-Tok-8")),
         negatives=("password: |\n  {{ .Values.password }}\n", "tls.key: |\n  -----BEGIN CERTIFICATE-----\n")),
    Rule("secret-word-value",
         r"(?im)(?:^[ \t]*(?:#+|//|--|;)?[ \t]*(password|passwd|passphrase|pwd|secret|token|api[ _-]?key)[ \t]+[\"']?"
         r"|\b(password|passphrase|pwd|secret|token|api[ _-]?key)[ \t]+(?:is|was)[ \t]+[\"']?)"
         r"([^\s\"':=][^\s\"']{5,})[\"']?[ \t]*\.?[ \t]*$",
         keywords=("pass", "pwd", "secret", "token", "api"), group=3, validator="password-like", category="context",
         reason="a secret word and its value, with no sign between (a directive, a note)",
         examples=(("password CwQ00s=tFYH_eCS3\n", "CwQ00s=tFYH_eCS3"),
                   ("the password is QjgkO-4_+q*URKrxX\n", "QjgkO-4_+q*URKrxX"),
                   ("credentials {\n    username 'deploy'\n    password 'Grdl-Dsl-Pw-7'\n}\n", "Grdl-Dsl-Pw-7")),
         negatives=("password required\n", "token refreshed\n", "the password is incorrect\n", "Password reset\n",
                    "secret store\n", "the token is valid\n", "password protected\n", "token   token-based\n",
                    "password VARCHAR(255)\n")),
    Rule("config-set-secret",
         r"(?i)\bconfig\s+(?:set\s+)?(?:--?[a-z-]+\s+)*[\"']?(" + _KEY_NAME + r")[\"']?\s+"
         r"(\"[^\"\n]+\"|'[^'\n]+'|[^\s\"'|;&<>=-][^\s|;&<>]*)",
         keywords=_KEY_NAME_KEYWORDS, group=2, key_group=1, validator="context", category="context",
         reason="command line: a tool's config set KEY VALUE (yarn, npm, git, poetry, composer, wp)",
         examples=(("yarn config set npmAuthToken Yrn-Cfg-Tok-3", "Yrn-Cfg-Tok-3"),
                   ("poetry config pypi-token.pypi Poe-Tok-4x9", "Poe-Tok-4x9"),
                   ("git config --global github.token Git-Cfg-Tok-5", "Git-Cfg-Tok-5"),
                   ("wp config set DB_PASSWORD Wp-Cfg-Pw-6", "Wp-Cfg-Pw-6")),
         negatives=("git config --global credential.helper store", "git config --global user.signingkey 3AA5C34371567BD2", "npm config set _authToken $NPM_TOKEN",
                    "yarn config get npmAuthToken", "config set password_min_length 12")),
    Rule("url-token-userinfo",
         r"\b(?:https?|git\+https|git\+ssh|ssh)://([A-Za-z0-9_-]{20,})@[A-Za-z0-9.-]+",
         keywords=("://",), group=1, validator="url-token-user", category="context",
         reason="URL: a token given as the user name",
         examples=(("git clone https://3f9c1d2e7a8b4c5d6e0f1a2b3c4d5e6f7a8b9c0d@github.com/acme/app.git",
                    "3f9c1d2e7a8b4c5d6e0f1a2b3c4d5e6f7a8b9c0d"),),
         negatives=("git clone https://deploy-bot-readonly-user@git.acme.io/r.git",
                    "ssh://git@github.com/acme/app.git",
                    'Sentry.init({ dsn: "https://7e3b9a1f04c6d82e5b7a90f13c4d6e8f@o12345.ingest.sentry.io/123" })')),
    Rule("ipsec-secret",
         r"(?im)^[^\n#]*:[ \t]*(PSK|XAUTH|EAP)[ \t]+(\"[^\"\n]+\"|0s[A-Za-z0-9+/=]{8,}|0x[0-9A-Fa-f]{8,})",
         keywords=("psk", "xauth", "eap"), group=2, key_group=1, validator="context", category="context",
         reason="ipsec.secrets entry",
         examples=(('%any 203.0.113.5 : PSK "Ipsec-Psk-Val-7"', "Ipsec-Psk-Val-7"),
                   ('alice : XAUTH "Ipsec-Xauth-8"', "Ipsec-Xauth-8")),
         negatives=(": RSA server.key",)),
    Rule("password-call",
         r"\b([A-Za-z_]*(?i:password|passwd)[A-Za-z_]*)\s*\(\s*(?:[\"'][^\"'\n]+[\"']\s*,\s*)?[\"'][^\"'\n]*[\"']\s*,\s*"
         r"[\"']([^\"'\n]+)[\"']\s*\)",
         keywords=("password", "passwd"), group=2, key_group=1, validator="call", category="context",
         reason="code: a user and a password given to a password call",
         examples=(("db.changeUserPassword('app', 'Mongo-Chg-Pw-7')", "Mongo-Chg-Pw-7"),
                   ('keyring.set_password("acme-api", "ci", "Kr-Set-Pw-8")', "Kr-Set-Pw-8")),
         negatives=('keyring.get_password("acme-api", "ci")', 'user.check_password("pbkdf2_sha256$x", "candidate")',
                    'hash_password("salt", "Input-Pw-1")')),
    Rule("cli-auth-userpass",
         r"(?:\s-{1,2}(?:[a-z]+-)*auth|\bab\b[^\n|;&]*\s-A|(?i:\bbasic_?auth)\s*[=:])(?:=|\s+)?[\"']?[^\s:\"'$]+:([^\s\"']+)",
         keywords=("auth", "-a "), group=1, validator="context", category="context",
         reason="command line: user:password after an auth flag",
         examples=(("app --auth admin:Cli-Auth-Pw-1 --port 80", "Cli-Auth-Pw-1"),
                   ("ab -n 100 -A admin:Ab-Auth-Pw-2 https://x/", "Ab-Auth-Pw-2"),
                   ("k6 run -e BASIC_AUTH=admin:K6-Auth-Pw-3 test.js", "K6-Auth-Pw-3"),
                   ("jenkins-cli -auth admin:Jen-Auth-Pw-9 build job", "Jen-Auth-Pw-9")),
         negatives=("jenkins-cli -auth @token-file build x", "app --auth $USER:$PASS", "ssh -o PubkeyAuthentication=no h")),
    Rule("bundler-credentials",
         r"(?:\bBUNDLE_[A-Z0-9_]+__[A-Z0-9_]+[\"']?\s*[:=]\s*[\"']?"
         r"|\bbundle\s+config\s+(?:set\s+)?(?:--[a-z]+\s+)*[a-z0-9-]+(?:\.[a-z0-9-]+)+\s+[\"']?)"
         r"[^\s:\"'$]+:([^\s\"']+)",
         keywords=("bundle",), group=1, validator="context", category="context",
         reason="Bundler source credentials (user:password for a gem server)",
         examples=(("export BUNDLE_GEMS__CONTRIBSYS__COM=acme:Bnd-Env-Pw-6", "Bnd-Env-Pw-6"),
                   ("bundle config set --global gems.contribsys.com acme:Bnd-Cfg-Pw-7", "Bnd-Cfg-Pw-7")),
         negatives=("BUNDLE_GEMS__CONTRIBSYS__COM=acme:${SIDEKIQ_PRO}", "BUNDLE_PATH__SYSTEM=true")),
    Rule("cookie-session",
         r"(?i)(?:\bcookie\s*[:=]|\bset-cookie\s*:|\s(?:-b|--cookie)\s+[\"']?|\bdocument\.cookie\s*=\s*[\"'`])"
         r"(?:[^\n]*?[\s;\"'])?[A-Za-z0-9_.-]*(?:sess|sid|auth|token|jwt|remember|login)[A-Za-z0-9_.-]*=([^;\s\"',]{16,})",
         keywords=("cookie", " -b "), group=1, validator="session-id", category="context",
         repeat=r"(?i)[^\n]*?[\s;][A-Za-z0-9_.-]*(?:sess|sid|auth|token|jwt|remember|login)[A-Za-z0-9_.-]*=([^;\s\"',]{16,})",
         reason="HTTP cookie: a session id",
         examples=(("Cookie: theme=dark; sessionid=q7k2m9x4v1n8b3c6z5l0p2r7t4w9y1a3", "q7k2m9x4v1n8b3c6z5l0p2r7t4w9y1a3"),
                   ("Cookie: JSESSIONID=9A7C3E1B5D2F4A6C8E0B1D3F5A7C9E2B; Path=/", "9A7C3E1B5D2F4A6C8E0B1D3F5A7C9E2B"),
                   ("curl -b 'PHPSESSID=k3j9f8d7s6a5g4h3j2k1l0q9w8' https://shop.acme.io", "k3j9f8d7s6a5g4h3j2k1l0q9w8")),
         negatives=("Set-Cookie: theme=dark; Path=/; SameSite=Lax", "Cookie: sessionid=deleted; Max-Age=0",
                    "Cookie: _ga=GA1.2.1234567890.1700000000; session_state=xxxxxxxxxxxxxxxxxxxx",
                    "Cookie: auth_redirect=https%3A%2F%2Facme.io%2Fdashboard")),
    Rule("webhook-url-token",
         r"(?i)\bhttps?://[^\s/\"'<>]+/(?:[^\s\"'<>?#]*/)?(?:hooks?|webhooks?)/(?:[A-Za-z0-9_-]+/){0,3}"
         r"([A-Za-z0-9_-]{20,})(?:[/?#\s\"'<>]|$)",
         keywords=("hook",), group=1, validator="webhook-token", category="context",
         reason="a webhook URL's secret path part",
         examples=(("MATTERMOST_HOOK=https://chat.acme.io/hooks/5ulriyskiu4atwno1ynpcfs8iq", "5ulriyskiu4atwno1ynpcfs8iq"),
                   ("curl -X POST https://hooks.zapier.com/hooks/catch/1234567/b7x2k9q4m1z8v3n6p0w5r2t7/",
                    "b7x2k9q4m1z8v3n6p0w5r2t7")),
         negatives=("https://api.github.com/repos/acme/api/hooks/123456789012345678901",
                    "https://docs.acme.io/webhooks/configuring-webhooks-in-the-dashboard",
                    "https://api.acme.io/v1/webhooks/3f1c2d3e-9a1b-4c5d-8e9f-a01b22c34d55/deliveries")),
    Rule("env-generated-value",
         r"(?m)^(?:export\s+)?([A-Z][A-Z0-9_]{1,60})=[\"']?([A-Za-z0-9+/_.~-]{20,}={0,2})[\"']?\s*$",
         group=2, key_group=1, validator="generated", category="context", reason="env file: a generated value",
         examples=(("export LICENSE_BLOB=Vq8Lm2Zx9Pw4Rt6Yb1Nc3Df5Gh7Jk0", "Vq8Lm2Zx9Pw4Rt6Yb1Nc3Df5Gh7Jk0"),),
         negatives=("COMMIT_SHA=3f4e5d6c7b8a99887766554433221100ffeeddcc", "BUILD_ID=6f1c2d3e-0a1b-4c5d-8e9f-001122334455",
                    "PYTHONPATH=/usr/lib/python3/dist-packages")),
)

_PII_RULES: tuple[Rule, ...] = (
    Rule("email", r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}\b",
         action="hash", category="pii", keywords=("@",), validator="email",
         examples=(("git config user.email alice.smith@acme-corp.com", "alice.smith@acme-corp.com"),),
         negatives=("@property", "pkg@1.2.3", "git@github.com:org/repo.git", "https://deploy@example.com/x")),
    Rule("credit-card", r"\b\d{4}(?:[ -]?\d{2,7}){2,4}\b",
         validator="card", category="pii", reason="personal data: payment card (issuer prefix, length, Luhn)",
         examples=(("card 4111 1111 1111 1111 exp 12/30", "4111 1111 1111 1111"),
                   ("charge(5555555555554444)", "5555555555554444"), ("amex 3782 822463 10005", "3782 822463 10005"),
                   ("diners 3056-930902-5904", "3056-930902-5904")),
         negatives=("ts=1700000000123456789", "4111111111111112", "id 2024 0115 1200 00", "1234 5678 9012 3456")),
    Rule("iban", r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
         validator="iban", category="pii", reason="personal data: IBAN (country length, mod-97)",
         examples=(("pay to DE89 3704 0044 0532 0130 00 today", "DE89 3704 0044 0532 0130 00"),
                   ("iban=GB82WEST12345698765432", "GB82WEST12345698765432")),
         negatives=("DE89 3704 0044 0532 0130 01", "AB12 CDEF GHIJ")),
    Rule("us-ssn", r"\b\d{3}-\d{2}-\d{4}\b|\b\d{3} \d{2} \d{4}\b|(?i:ssn|social security|ss#)[^\n\d]{0,20}(\d{9})\b",
         validator="ssn", category="pii", reason="personal data: US SSN (area, group, serial)",
         examples=(("SSN 536-22-1456 on file", "536-22-1456"), ("ssn: 536221456", "536221456")),
         negatives=("000-12-3456", "666-12-3456", "call 555-0132", "order 123456789")),
    Rule("phone-number",
         r"(?:\+|\b00)\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,8}(?:[ .-]\d{1,8}){0,4}\b"
         r"|(?:\b1[-. ])?(?:\(\d{3}\)\s?|\b\d{3}[-. ])\d{3}[-. ]\d{4}\b"
         r"|(?:\(0\d{1,4}\)|\b0\d{1,4})[ -]\d{3,4}[ -]?\d{3,4}\b"
         r"|\b\d{10,11}\b",
         validator="phone", category="pii", policy_flag="phone_numbers",
         reason="personal data: phone number valid by libphonenumber",
         examples=(("call +1 415-555-0132 now", "415-555-0132"), ("Tel: (020) 7946 0958", "7946 0958"),
                   ("+44 20 7946 0958", "+44 20 7946 0958"), ("Ruf mich an: +49 30 901820", "+49 30 901820"),
                   ("phone 4155550132", "4155550132"), ("toll free 1-800-555-0199", "1-800-555-0199")),
         negatives=("2024-01-15 12:30:45", "v1.2.3", "port 5432", "555-0132", "order 4155550132", "1.23.456.7890")),
    Rule("ip-address", r"\b(?:\d{1,3}\.){3}\d{1,3}\b", action="hash", validator="ipv4", category="pii",
         policy_flag="ip_addresses",
         examples=(("ssh deploy@81.2.69.160 -p 22", "81.2.69.160"),),
         negatives=("listen 127.0.0.1:8000", "IPv4Network('192.0.2.0/25')", "0.0.0.0", "mask 255.255.255.0", "version 1.2.3", "999.1.1.1")),
)


# The tables in their own modules need `Rule`, defined above.
from redaction.catalogue import CATALOGUE_RULES, DECODE_RULES, TRUNCATED_RULE  # noqa: E402
from redaction.cli_secrets import CLI_RULES  # noqa: E402

# Table order is priority: when two rules' spans overlap, the merged span is attributed to the
# rule that comes first (admin rules come before all of these).
# Format rows without a check of their own are judged by `known-token` (no `xxxx`, `EXAMPLE`, runs
# or repeated units in the token); key blocks are exempt (their bodies hold runs of `A`).
_KEY_BLOCKS = ("private-key", "putty-private-key")
# Context rules that see any key: the more specific ones (a tool's flag, a URL parameter, an XML
# pair) come first, so `--explain` names them when both see the same secret.
_GENERIC = ("secret-assignment", "high-entropy-near-keyword", "env-generated-value")
BUILTIN_RULES: tuple[Rule, ...] = tuple(
    dataclasses.replace(r, validator="known-token")
    if r.category == "known" and r.validator is None and r.name not in _KEY_BLOCKS else r
    for r in (_KNOWN_RULES + CATALOGUE_RULES + DECODE_RULES + (TRUNCATED_RULE,) + CLI_RULES
              + tuple(r for r in _CONTEXT_RULES if r.name not in _GENERIC)
              + tuple(r for r in _CONTEXT_RULES if r.name in _GENERIC) + _PII_RULES))


def _check_row(row: dict, where: str) -> None:
    if not isinstance(row, dict):
        raise RuleError(f"{where} must be a table with name and pattern, not {type(row).__name__}")
    name = row.get("name")
    if not isinstance(name, str) or not name:
        raise RuleError(f"{where} has no name; give every rule a name such as 'acme-token'")
    unknown = set(row) - {"name", "pattern", "action", "keywords", "entropy", "group", "replacement"}
    if unknown:
        raise RuleError(f"redaction rule '{name}' has unknown key(s) {', '.join(sorted(unknown))}; "
                        f"allowed: name, pattern, action, keywords, entropy, group, replacement")
    if not isinstance(row.get("pattern"), str) or not row["pattern"]:
        raise RuleError(f"redaction rule '{name}' has no pattern; add a pattern string")
    if row.get("action", "replace") not in ACTIONS:
        raise RuleError(f"redaction rule '{name}' has action {row.get('action')!r}; "
                        f"use one of {', '.join(ACTIONS)}")


def quiet_options() -> "re2.Options":
    """RE2 options that report errors by exception only, not by logging to stderr."""
    opts = re2.Options()
    opts.log_errors = False
    return opts


def compile_rule(rule: Rule, pattern: str | None = None) -> "re2._Regexp":
    """The compiled pattern of `rule` (or `pattern`, another of its patterns); `RuleError` names the
    rule when RE2 rejects it."""
    try:
        compiled = re2.compile(pattern or rule.pattern, quiet_options())
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "unknown error"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise RuleError(f"redaction rule '{rule.name}' has a pattern RE2 cannot compile ({reason}); "
                        f"RE2 has no lookarounds or backreferences") from None
    if pattern is not None:
        return compiled
    if not 0 <= rule.group <= compiled.groups:
        raise RuleError(f"redaction rule '{rule.name}' uses group {rule.group} but its pattern has "
                        f"{compiled.groups} group(s)")
    if rule.validator is not None and rule.validator not in VALIDATORS:
        raise RuleError(f"redaction rule '{rule.name}' names unknown check '{rule.validator}'")
    return compiled


def compile_admin_rules(rules: list[dict]) -> list[Rule]:
    """Policy `redaction.rules` items as `Rule`s, each pattern checked with RE2 now."""
    out = []
    seen = set()
    for i, row in enumerate(rules or []):
        _check_row(row, f"redaction rule #{i + 1}")
        name = row["name"]
        if name in seen:
            raise RuleError(f"redaction rule '{name}' is defined twice; give each rule its own name")
        seen.add(name)
        keywords = row.get("keywords") or ()
        if isinstance(keywords, str) or not all(isinstance(k, str) and k for k in keywords):
            raise RuleError(f"redaction rule '{name}' has keywords that are not a list of non-empty strings")
        entropy = row.get("entropy")
        group = row.get("group", 0)
        if not isinstance(group, int) or isinstance(group, bool) or group < 0:
            raise RuleError(f"redaction rule '{name}' has group {group!r}; use a capture group number >= 0")
        rule = Rule(name=name, pattern=row["pattern"], action=row.get("action", "replace"),
                    keywords=tuple(k.lower() for k in keywords),
                    entropy=float(entropy) if entropy is not None else None, group=group,
                    replacement=row.get("replacement"), category="admin")
        compile_rule(rule)
        out.append(rule)
    return out
