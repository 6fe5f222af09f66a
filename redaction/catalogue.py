"""More token formats, from the providers' own descriptions of their tokens: a fixed prefix, an
alphabet and a length, and a checksum where one is documented (GitHub's CRC32 tail).

Takes nothing; gives `CATALOGUE_RULES` (rows like `rules.BUILTIN_RULES`, each with an example made
here from a fixed seed, so no real credential is in the repository), `TRUNCATED_RULE` (a known
prefix followed by an ellipsis, as pytest shortens long strings) and `DECODE_RULES` (base64 that
decodes to a private key, to `user:password`, or to JSON holding a secret). Promise: every format
row is judged by `known-token` (no `xxxx`, `EXAMPLE`, runs of one character or a repeated short
unit), so look-alikes with the right prefix stay.
"""
from __future__ import annotations

import random
import string

from redaction.rules import Rule

_ALNUM = string.ascii_letters + string.digits
_HEX = "0123456789abcdef"
_B64URL = _ALNUM + "-_"
_LOWER_ALNUM = string.ascii_lowercase + string.digits
_UPPER_ALNUM = string.ascii_uppercase + string.digits


def _tok(seed: str, alphabet: str, n: int) -> str:
    """A reproducible random string: the body of an example token."""
    rng = random.Random(seed)
    return "".join(rng.choice(alphabet) for _ in range(n))


def _fmt(name: str, pattern: str, keywords: tuple[str, ...], token: str, reason: str,
         place: str = "export VALUE={t}", negatives: tuple[str, ...] = ()) -> Rule:
    return Rule(name, pattern, keywords=keywords, validator="known-token", reason=f"format: {reason}",
                examples=((place.format(t=token), token),), negatives=negatives)


CATALOGUE_RULES: tuple[Rule, ...] = (
    # ---- cloud ----
    _fmt("aws-session-token", r"\b(?:FwoGZXIvYXdzE|IQoJb3JpZ2luX2Vj)[A-Za-z0-9/+=]{100,}",
         ("fwogzxivyxdze", "iqojb3jpz2lux2vj"), "IQoJb3JpZ2luX2Vj" + _tok("aws-st", _ALNUM + "/+", 300),
         "AWS STS session token"),
    _fmt("azure-ad-client-secret", r"(?:^|[^A-Za-z0-9_~.-])([A-Za-z0-9_~.-]{3}\dQ~[A-Za-z0-9_~.-]{31,34})(?:$|[^A-Za-z0-9_~.-])",
         ("q~",), _tok("aad1", _ALNUM, 3) + "8Q~" + _tok("aad2", _ALNUM + "_~.-", 34),
         "Microsoft Entra ID client secret (the Q~ marker)"),
    _fmt("azure-identifiable-key",
         r"\b[A-Za-z0-9+/]{33,76}(?:\+ASt|AzSe|ACDb|\+ASb|\+AEh|AzFu|APIM|AIoT|\+ACR|\+ARm|AzCa|\+AMC)[A-Za-z0-9+/]{5,10}={0,2}",
         ("+ast", "azse", "acdb", "+asb", "+aeh", "azfu", "apim", "aiot", "+acr", "+arm", "azca", "+amc"),
         _tok("azk", _ALNUM + "+/", 76) + "+ASt" + _tok("azk2", _ALNUM, 6) + "==",
         "Azure identifiable key (service signature inside)"),
    _fmt("google-refresh-token", r"\b1//0[A-Za-z0-9_-]{40,}", ("1//0",), "1//0" + _tok("g1", _B64URL, 100),
         "Google OAuth refresh token"),
    _fmt("yandex-cloud-token", r"\b(?:y[0-3]_[A-Za-z0-9_-]{40,}|t1\.9euel[A-Za-z0-9_.=-]{50,}|AQVN[A-Za-z0-9_-]{34,40}\b)",
         ("y0_", "y1_", "y2_", "y3_", "t1.9euel", "aqvn"), "y0_AgAAAA" + _tok("ya", _B64URL, 50),
         "Yandex OAuth token, IAM token or API key"),
    _fmt("aws-bedrock-api-key", r"\bABSK[A-Za-z0-9+/]{40,}={0,2}", ("absk",),
         "ABSKQmVkcm9ja0FQSUtleS" + _tok("ab", _ALNUM + "+/", 100), "Amazon Bedrock API key"),
    _fmt("intercom-token", r"\bdG9rOj[A-Za-z0-9+/]{40,}={0,2}", ("dg9roj",), "dG9rOj" + _tok("ic", _ALNUM, 54) + "=",
         "Intercom access token (base64 of tok:…)"),
    _fmt("alibaba-access-key-id", r"\bLTAI[A-Za-z0-9]{12,20}\b", ("ltai",), "LTAI" + _tok("ali", _ALNUM, 20),
         "Alibaba Cloud AccessKey ID"),
    _fmt("tencent-secret-id", r"\bAKID[A-Za-z0-9]{32}\b", ("akid",), "AKID" + _tok("tc", _ALNUM, 32),
         "Tencent Cloud SecretId"),
    _fmt("heroku-key", r"\bHRKU-[A-Za-z0-9_-]{60}", ("hrku-",), "HRKU-AA" + _tok("hk", _B64URL, 58),
         "Heroku API key"),
    _fmt("flyio-token", r"\b(?:fo1_[A-Za-z0-9_-]{43}|fm[12][ar]?_[A-Za-z0-9+/=_-]{100,})",
         ("fo1_", "fm1_", "fm2_", "fm1a_", "fm2a_", "fm1r_", "fm2r_"), "fo1_" + _tok("fly", _B64URL, 43), "Fly.io token"),
    _fmt("netlify-token", r"\bnfp_[A-Za-z0-9]{36}\b", ("nfp_",), "nfp_" + _tok("nf", _ALNUM, 36), "Netlify token"),
    _fmt("supabase-token", r"\b(?:sbp_[a-f0-9]{40}|sb_secret_[A-Za-z0-9_-]{31,})", ("sbp_", "sb_secret_"),
         "sbp_" + _tok("sb", _HEX, 40), "Supabase access or secret key"),
    _fmt("planetscale-token", r"\bpscale_(?:tkn|pw|oauth)_[A-Za-z0-9_.-]{32,64}", ("pscale_",),
         "pscale_pw_" + _tok("ps", _ALNUM, 43), "PlanetScale token or password"),
    _fmt("scaleway-key", r"\bSCW[A-Z0-9]{17}\b", ("scw",), "SCW" + _tok("scw", _UPPER_ALNUM, 17), "Scaleway access key"),
    _fmt("cloudflare-origin-ca-key", r"\bv1\.0-[a-f0-9]{24}-[a-f0-9]{146}\b", ("v1.0-",),
         "v1.0-" + _tok("cf1", _HEX, 24) + "-" + _tok("cf2", _HEX, 146), "Cloudflare Origin CA key"),
    # ---- version control, CI, infrastructure ----
    _fmt("gitlab-runner-registration", r"\bGR1348941[A-Za-z0-9_-]{20}\b", ("gr1348941",),
         "GR1348941" + _tok("glr", _B64URL, 20), "GitLab runner registration token"),
    _fmt("atlassian-token", r"\b(?:ATATT|ATCTT|ATBB)[A-Za-z0-9_=.-]{28,}", ("atatt", "atctt", "atbb"),
         "ATATT3xFfGF0" + _tok("atl", _B64URL, 180) + "=" + _tok("atl2", _HEX.upper(), 8),
         "Atlassian API token / Bitbucket app password"),
    _fmt("circleci-token", r"\bCCIP(?:AT|RJ)_[A-Za-z0-9]{22}_[a-f0-9]{40}\b", ("ccipat_", "cciprj_"),
         "CCIPAT_" + _tok("cci", _ALNUM, 22) + "_" + _tok("cci2", _HEX, 40), "CircleCI token"),
    _fmt("buildkite-token", r"\bbkua_[a-f0-9]{40}\b", ("bkua_",), "bkua_" + _tok("bk", _HEX, 40), "Buildkite token"),
    _fmt("terraform-cloud-token", r"\b[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_=-]{60,70}", (".atlasv1.",),
         _tok("tf1", _ALNUM, 14) + ".atlasv1." + _tok("tf2", _B64URL, 67), "Terraform Cloud / HCP token"),
    _fmt("pulumi-token", r"\bpul-[a-f0-9]{40}\b", ("pul-",), "pul-" + _tok("pu", _HEX, 40), "Pulumi access token"),
    _fmt("vault-token", r"\bhv[sbr]\.[A-Za-z0-9_-]{24,}", ("hvs.", "hvb.", "hvr."), "hvs." + _tok("hv", _B64URL, 90),
         "HashiCorp Vault token"),
    _fmt("doppler-token", r"\bdp\.(?:pt|st|sa|ct|scim|audit)\.(?:[a-z0-9_-]{1,40}\.)?[A-Za-z0-9]{40,44}\b",
         ("dp.pt.", "dp.st.", "dp.sa.", "dp.ct.", "dp.scim.", "dp.audit."), "dp.st." + _tok("dp", _ALNUM, 43),
         "Doppler token"),
    _fmt("onepassword-service-token", r"\bops_eyJ[A-Za-z0-9+/=_-]{100,}", ("ops_eyj",),
         "ops_eyJ" + _tok("op", _B64URL, 250), "1Password service account token"),
    _fmt("sonarqube-token", r"\bsq[pua]_[a-f0-9]{40}\b", ("sqp_", "squ_", "sqa_"), "sqp_" + _tok("sq", _HEX, 40),
         "SonarQube token"),
    _fmt("tailscale-key", r"\btskey-(?:auth|api|client|scim|webhook)-[A-Za-z0-9]{6,}-[A-Za-z0-9]{10,}",
         ("tskey-",), "tskey-auth-" + _tok("ts", _ALNUM, 13) + "-" + _tok("ts2", _ALNUM, 33), "Tailscale key"),
    _fmt("akamai-edgegrid", r"\bakab-[a-z0-9]{16}-[a-z0-9]{16}\b", ("akab-",),
         "akab-" + _tok("ak", _LOWER_ALNUM, 16) + "-" + _tok("ak2", _LOWER_ALNUM, 16), "Akamai EdgeGrid client token"),
    # ---- package registries ----
    _fmt("docker-swarm-join-token", r"\bSWMTKN-1-[0-9a-z]{50}-[0-9a-z]{25}\b", ("swmtkn-1-",),
         "SWMTKN-1-" + _tok("sw", string.digits + string.ascii_lowercase, 50) + "-" + _tok("sw2", string.digits + string.ascii_lowercase, 25),
         "Docker Swarm join token", place="docker swarm join --token {t} 10.0.0.1:2377"),
    _fmt("openvpn-static-key", r"-----BEGIN OpenVPN Static key V1-----\s*([0-9a-fA-F\s]{64,}?)\s*-----END OpenVPN Static key V1-----",
         ("openvpn static key",), "\n".join(_tok("ov" + str(i), _HEX, 32) for i in range(4)),
         "OpenVPN static key (tls-auth, tls-crypt)",
         place="<tls-auth>\n-----BEGIN OpenVPN Static key V1-----\n{t}\n-----END OpenVPN Static key V1-----\n</tls-auth>"),
    _fmt("dockerhub-token", r"\bdckr_(?:pat|oat)_[A-Za-z0-9_-]{27,}", ("dckr_pat_", "dckr_oat_"),
         "dckr_pat_" + _tok("dh", _B64URL, 27), "Docker Hub access token"),
    _fmt("rubygems-key", r"\brubygems_[a-f0-9]{48}\b", ("rubygems_",), "rubygems_" + _tok("rg", _HEX, 48),
         "RubyGems API key"),
    _fmt("nuget-key", r"\boy2[a-z0-9]{43}\b", ("oy2",), "oy2" + _tok("ng", _LOWER_ALNUM, 43), "NuGet API key"),
    _fmt("crates-io-token", r"\bcio[A-Za-z0-9]{32}\b", ("cio",), "cio" + _tok("cr", _ALNUM, 32), "crates.io token"),
    _fmt("clojars-token", r"\bCLOJARS_[a-z0-9]{60}\b", ("clojars_",), "CLOJARS_" + _tok("cj", _LOWER_ALNUM, 60),
         "Clojars deploy token"),
    _fmt("jfrog-token", r"\b(?:AKCp[A-Za-z0-9]{69}|cmVmdGtu[A-Za-z0-9]{56})\b", ("akcp", "cmvmdgtu"),
         "AKCp" + _tok("jf", _ALNUM, 69), "JFrog API key / reference token"),
    # ---- chat and collaboration ----
    _fmt("slack-config-token", r"\bxoxe\.xox[bp]-\d-[A-Za-z0-9]{100,}", ("xoxe.xox",),
         "xoxe.xoxp-1-" + _tok("slc", _ALNUM, 150), "Slack configuration token"),
    _fmt("teams-webhook", r"https://[a-z0-9-]+\.webhook\.office\.com/webhookb2/[A-Za-z0-9@/_-]{40,}",
         ("webhook.office.com",), "https://acme.webhook.office.com/webhookb2/" + _tok("tm", _HEX, 36) + "@"
         + _tok("tm2", _HEX, 36) + "/IncomingWebhook/" + _tok("tm3", _HEX, 32) + "/" + _tok("tm4", _HEX, 36),
         "Microsoft Teams incoming webhook"),
    _fmt("discord-bot-token", r"\b[MNO][A-Za-z0-9_-]{23,25}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,38}", (),
         "M" + _tok("dc", _ALNUM, 25) + "." + _tok("dc2", _B64URL, 6) + "." + _tok("dc3", _B64URL, 38), "Discord bot token"),
    _fmt("hubspot-token", r"\bpat-(?:na|eu)\d-[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}\b",
         ("pat-na", "pat-eu"), "pat-na1-" + "-".join(_tok("hs" + str(n), _HEX, n) for n in (8, 4, 4, 4, 12)),
         "HubSpot private app token"),
    _fmt("fcm-server-key", r"\bAAAA[A-Za-z0-9_-]{7}:APA91b[A-Za-z0-9_-]{130,}", ("apa91b",),
         "AAAA" + _tok("fc", _B64URL, 7) + ":APA91b" + _tok("fc2", _B64URL, 134), "Firebase Cloud Messaging server key"),
    _fmt("figma-token", r"\bfigd_[A-Za-z0-9_-]{40,}", ("figd_",), "figd_" + _tok("fg", _B64URL, 40), "Figma token"),
    _fmt("notion-token", r"\b(?:secret_[A-Za-z0-9]{43}|ntn_[A-Za-z0-9]{46})\b", ("secret_", "ntn_"),
         "ntn_" + _tok("nt", _ALNUM, 46), "Notion integration token"),
    _fmt("airtable-token", r"\bpat[A-Za-z0-9]{14}\.[a-f0-9]{64}\b", ("pat",),
         "pat" + _tok("at", _ALNUM, 14) + "." + _tok("at2", _HEX, 64), "Airtable personal access token"),
    _fmt("contentful-token", r"\bCFPAT-[A-Za-z0-9_-]{43}", ("cfpat-",), "CFPAT-" + _tok("cf", _B64URL, 43),
         "Contentful personal access token"),
    _fmt("dropbox-token", r"\bsl\.[A-Za-z0-9_.-]{130,}", ("sl.",), "sl." + _tok("db", _B64URL, 140), "Dropbox access token"),
    _fmt("mapbox-secret-token", r"\bsk\.eyJ[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{20,}", ("sk.eyj",),
         "sk.eyJ1Ijoi" + _tok("mb", _B64URL, 60) + "." + _tok("mb2", _B64URL, 22), "Mapbox secret token"),
    _fmt("postman-key", r"\bPMAK-[a-f0-9]{24}-[a-f0-9]{34}\b", ("pmak-",),
         "PMAK-" + _tok("pm", _HEX, 24) + "-" + _tok("pm2", _HEX, 34), "Postman API key"),
    _fmt("typeform-token", r"\btfp_[A-Za-z0-9_-]{44}_[A-Za-z0-9_-]{14}", ("tfp_",),
         "tfp_" + _tok("tp", _ALNUM, 44) + "_" + _tok("tp2", _ALNUM, 14), "Typeform token"),
    _fmt("facebook-token", r"\bEAA[BCDGIJKMOPQRSTUVWXYZ][A-Za-z0-9]{80,}", ("eaa",),
         "EAAB" + _tok("fb", _ALNUM, 120), "Facebook / Meta access token"),
    _fmt("brevo-key", r"\bxkeysib-[a-f0-9]{64}-[A-Za-z0-9]{16}\b", ("xkeysib-",),
         "xkeysib-" + _tok("bv", _HEX, 64) + "-" + _tok("bv2", _ALNUM, 16), "Brevo (Sendinblue) API key"),
    _fmt("okta-token", r"(?i:\bSSWS)\s+(00[A-Za-z0-9_-]{40})", ("ssws",), "00" + _tok("ok", _B64URL, 40),
         "Okta API token (SSWS scheme)", place="curl -H 'Authorization: SSWS {t}' https://acme.okta.com/api/v1/users"),
    _fmt("launchdarkly-key", r"\b(?:sdk|api)-[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}\b",
         ("sdk-", "api-"), "sdk-" + "-".join(_tok("ld" + str(n), _HEX, n) for n in (8, 4, 4, 4, 12)),
         "LaunchDarkly SDK key / API access token"),
    _fmt("adafruit-io-key", r"\baio_[A-Za-z0-9]{28}\b", ("aio_",), "aio_" + _tok("aio", _ALNUM, 28), "Adafruit IO key"),
    _fmt("infracost-key", r"\bico-[A-Za-z0-9]{32}\b", ("ico-",), "ico-" + _tok("ico", _ALNUM, 32), "Infracost API key"),
    _fmt("prefect-key", r"\bpnu_[A-Za-z0-9]{36}\b", ("pnu_",), "pnu_" + _tok("pnu", _ALNUM, 36), "Prefect API key"),
    _fmt("readme-key", r"\brdme_[a-z0-9]{70}\b", ("rdme_",), "rdme_" + _tok("rdm", _LOWER_ALNUM, 70), "ReadMe API key"),
    _fmt("scalingo-token", r"\btk-us-[A-Za-z0-9_-]{48}", ("tk-us-",), "tk-us-" + _tok("scl", _B64URL, 48),
         "Scalingo API token"),
    _fmt("mailgun-private-key", r"\b[a-f0-9]{32}-[a-f0-9]{8}-[a-f0-9]{8}\b", (),
         _tok("mg1", _HEX, 32) + "-" + _tok("mg2", _HEX, 8) + "-" + _tok("mg3", _HEX, 8), "Mailgun private API key"),
    # ---- payments ----
    _fmt("shippo-token", r"\bshippo_(?:live|test)_[a-f0-9]{40}\b", ("shippo_live_", "shippo_test_"),
         "shippo_live_" + _tok("shp", _HEX, 40), "Shippo API token"),
    _fmt("easypost-key", r"\bEZ[AT]K[A-Za-z0-9]{54}\b", ("ezak", "eztk"), "EZAK" + _tok("ezp", _ALNUM, 54),
         "EasyPost API key"),
    _fmt("square-token", r"\b(?:sq0(?:atp|csp)-[A-Za-z0-9_-]{22,43}|EAAA[A-Za-z0-9_-]{60})", ("sq0atp-", "sq0csp-", "eaaa"),
         "EAAA" + _tok("sq", _B64URL, 60), "Square access token"),
    _fmt("braintree-token", r"\baccess_token\$production\$[a-z0-9]{16}\$[a-f0-9]{32}\b", ("access_token$production$",),
         "access_token$production$" + _tok("bt", _LOWER_ALNUM, 16) + "$" + _tok("bt2", _HEX, 32), "Braintree access token"),
    _fmt("razorpay-key", r"\brzp_(?:live|test)_[A-Za-z0-9]{14}\b", ("rzp_live_", "rzp_test_"),
         "rzp_live_" + _tok("rz", _ALNUM, 14), "Razorpay key id"),
    _fmt("flutterwave-key", r"\bFLW(?:SECK|PUBK)(?:_TEST)?-[a-f0-9]{32}-X\b", ("flwseck", "flwpubk"),
         "FLWSECK-" + _tok("fw", _HEX, 32) + "-X", "Flutterwave secret key"),
    _fmt("plaid-token", r"\baccess-(?:sandbox|development|production)-[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}\b",
         ("access-sandbox-", "access-development-", "access-production-"),
         "access-production-" + "-".join(_tok("pl" + str(n), _HEX, n) for n in (8, 4, 4, 4, 12)), "Plaid access token"),
    # ---- observability ----
    _fmt("grafana-token", r"\b(?:glc_[A-Za-z0-9+/=_-]{32,}|glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8})", ("glc_", "glsa_"),
         "glsa_" + _tok("gf", _ALNUM, 32) + "_" + _tok("gf2", _HEX, 8), "Grafana service account / cloud token"),
    _fmt("newrelic-key", r"\b(?:NRAK-[A-Z0-9]{27}|NRII-[A-Za-z0-9_-]{32}|NRJS-[a-f0-9]{19}|[a-f0-9]{36}NRAL)\b",
         ("nrak-", "nrii-", "nrjs-", "nral"),
         "NRAK-" + _tok("nr", _UPPER_ALNUM, 27), "New Relic key"),
    _fmt("sentry-token", r"\b(?:sntrys_eyJ[A-Za-z0-9+/=_-]{60,}|sntryu_[a-f0-9]{64})", ("sntrys_", "sntryu_"),
         "sntryu_" + _tok("st", _HEX, 64), "Sentry auth token"),
    _fmt("dynatrace-token", r"\bdt0c01\.[A-Z0-9]{24}\.[A-Z0-9]{64}\b", ("dt0c01.",),
         "dt0c01." + _tok("dt", _UPPER_ALNUM, 24) + "." + _tok("dt2", _UPPER_ALNUM, 64), "Dynatrace token"),
    # ---- AI providers ----
    _fmt("sk-hex-key", r"\bsk-[a-f0-9]{32}\b", ("sk-",), "sk-" + _tok("skh", _HEX, 32),
         "sk- and 32 hex digits (DeepSeek and others)"),
    _fmt("groq-key", r"\bgsk_[A-Za-z0-9]{52}\b", ("gsk_",), "gsk_" + _tok("gq", _ALNUM, 52), "Groq API key"),
    _fmt("replicate-token", r"\br8_[A-Za-z0-9]{37}\b", ("r8_",), "r8_" + _tok("r8", _ALNUM, 37), "Replicate token"),
    _fmt("tavily-key", r"\btvly-(?:dev-|prod-)?[A-Za-z0-9]{24,}\b", ("tvly-",), "tvly-" + _tok("tv", _ALNUM, 32),
         "Tavily API key"),
    _fmt("langfuse-secret-key", r"\bsk-lf-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", ("sk-lf-",),
         "sk-lf-7e3b9a1f-04c6-4d82-9b7a-90f13c4d6e8f", "Langfuse secret key (pk-lf- is public)"),
    _fmt("perplexity-key", r"\bpplx-[A-Za-z0-9]{48}\b", ("pplx-",), "pplx-" + _tok("px", _ALNUM, 48), "Perplexity API key"),
    _fmt("xai-key", r"\bxai-[A-Za-z0-9]{80}\b", ("xai-",), "xai-" + _tok("xa", _ALNUM, 80), "xAI API key"),
    _fmt("openrouter-key", r"\bsk-or-v1-[a-f0-9]{64}\b", ("sk-or-v1-",), "sk-or-v1-" + _tok("or", _HEX, 64),
         "OpenRouter API key"),
    _fmt("langsmith-key", r"\blsv2_(?:pt|sk)_[a-f0-9]{32}_[a-f0-9]{10}\b", ("lsv2_pt_", "lsv2_sk_"),
         "lsv2_pt_" + _tok("ls", _HEX, 32) + "_" + _tok("ls2", _HEX, 10), "LangSmith API key"),
    _fmt("pinecone-key", r"\bpcsk_[A-Za-z0-9_]{40,}", ("pcsk_",), "pcsk_" + _tok("pc", _ALNUM, 70), "Pinecone API key"),
    _fmt("fireworks-key", r"\bfw_[A-Za-z0-9]{24}\b", ("fw_",), "fw_" + _tok("fk", _ALNUM, 24), "Fireworks AI key"),
    Rule("x-bearer-token", r"\bAAAAAAAAAAAAAAAAAAAAA[A-Za-z0-9%]{30,}", keywords=("aaaaaaaaaaaaaaaaaaaaa",),
         validator="not-reference", reason="format: X (Twitter) app bearer token",
         examples=(("X_BEARER=AAAAAAAAAAAAAAAAAAAAA" + _tok("tw", _ALNUM, 20) + "%3D" + _tok("tw2", _ALNUM, 50),
                    "AAAAAAAAAAAAAAAAAAAAA" + _tok("tw", _ALNUM, 20) + "%3D" + _tok("tw2", _ALNUM, 50)),)),
    # ---- key files ----
    Rule("putty-private-key", r"PuTTY-User-Key-File-\d:[^\n]*\n(?s:.{0,1000}?)Private-Lines:\s*\d+\s*\n((?:[A-Za-z0-9+/=]+\r?\n?){1,60})",
         keywords=("putty-user-key-file",), group=1, reason="format: PuTTY private key",
         examples=(("PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\nComment: k\nPublic-Lines: 2\nAAAAC3Nz\nAAAA\n"
                    "Private-Lines: 1\n" + _tok("pt", _ALNUM, 44) + "\nPrivate-MAC: 00\n", _tok("pt", _ALNUM, 44)),)),
)

# A known prefix, part of the token, an ellipsis: pytest shortens long strings in assertion messages
# to their ends, and what shows is still most of the secret.
_TRUNCATED_PREFIXES = (
    "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-", "gldt-", "glrt-", "xoxb-", "xoxp-", "xoxa-",
    "xoxe-", "xapp-", "sk_live_", "rk_live_", "sk_test_", "whsec_", "sk-proj-", "sk-ant-", "sk-svcacct-", "npm_",
    "pypi-", "hf_", "AKIA", "ASIA", "AIza", "GOCSPX-", "ya29.", "dop_v1_", "shpat_", "dckr_pat_", "hvs.", "glsa_",
    "gsk_", "r8_", "pplx-", "xai-", "lin_api_", "SG.", "dapi",
)
TRUNCATED_RULE = Rule(
    "truncated-token",
    r"(?:^|[^A-Za-z0-9_])((?:" + "|".join(p.replace(".", r"\.") for p in _TRUNCATED_PREFIXES)
    + r")[A-Za-z0-9_+/-]{4,}?(?:\.\.\.|\x{2026})[A-Za-z0-9_+/=-]*)",
    keywords=("...", "\u2026"), group=1, validator="truncated", reason="format: a known prefix, shortened with an ellipsis",
    examples=(("E   AssertionError: assert 'ghp_HQ5GKq3M...RRus2PaErS4kF' == 'x'", "ghp_HQ5GKq3M...RRus2PaErS4kF"),
              ("token sk_live_4eC39Hq\u2026dp7dc expired", "sk_live_4eC39Hq\u2026dp7dc")),
    negatives=("export GH=ghu_xxxx...", "set it to glpat-XXXXXXXX... in CI", "see hf_hub_download... docs",
               "the ghp_... prefix"),
)

DECODE_RULES: tuple[Rule, ...] = (
    Rule("base64-private-key", r"\bLS0tLS1CRUdJT[A-Za-z0-9+/]{20,}={0,2}", keywords=("ls0tls1crudjt",),
         validator="decoded-private-key", reason="decoded: base64 of a PEM private key",
         examples=(("    client-key-data: LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQpNSUlFcEFJQkFBS0NBUUVBM1R6Mm1yN1Na"
                    "aUFNZlF5dXZCak0KLS0tLS1FTkQgUlNBIFBSSVZBVEUgS0VZLS0tLS0K",
                    "LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQpNSUlFcEFJQkFBS0NBUUVBM1R6Mm1yN1NaaUFNZlF5dXZCak0KLS0tLS1F"
                    "TkQgUlNBIFBSSVZBVEUgS0VZLS0tLS0K"),),
         negatives=("    client-certificate-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJrVENCK3dJSkFPCi0tLS0tRU5E"
                    "IENFUlRJRklDQVRFLS0tLS0K",)),
    Rule("base64-credentials",
         r"(?i)(?:\bauth|\bbasic|credentials?|user_?pass|\bcreds|\bproxy-auth)[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9+/]{8,}={0,2})",
         keywords=("auth", "basic", "credential", "userpass", "user_pass", "creds"), group=1,
         validator="decoded-credentials", category="context", reason="decoded: base64 of user:password",
         examples=(('{"auths": {"registry.acme.io": {"auth": "Ym90OlJlZy1QdXNoLTc3eA=="}}}', "Ym90OlJlZy1QdXNoLTc3eA=="),),
         negatives=('"auth": "b2F1dGgy"', '{"auth": "dXNlcjo="}')),
    Rule("base64-url-credentials",
         r"\b(?:cG9zdGdyZ|bXlzcWw6Ly|bW9uZ29kYi|cmVkaXM6Ly|cmVkaXNzOi8v|YW1xcD|aHR0cHM6Ly|aHR0cDovL|bWFyaWFkYjovL"
         r"|bXNzcWw6Ly|c3Fsc2VydmVyOi8v|ZnRwOi8v|c2Z0cDovL|c210cDovL|bGRhcDovL|bmF0czovL)[A-Za-z0-9+/]{12,}={0,2}",
         keywords=("cg9zdgdyz", "bxlzcww6ly", "bw9uz29kyi", "cmvkaxm6ly", "cmvkaxnzoi8v", "yw1xcd", "ahr0chm6ly",
                   "ahr0cdovl", "bwfyawfkyjovl", "bxnzcww6ly", "c3fsc2vydmvyoi8v", "znrwoi8v", "c2z0cdovl", "c210cdovl",
                   "bgrhcdovl", "bmf0czovl"),
         validator="decoded-url-credentials", category="context",
         reason="decoded: base64 of a URL with user and password (a Kubernetes Secret's DATABASE_URL)",
         examples=(("  DATABASE_URL: cG9zdGdyZXM6Ly9hcHA6UGcta3ViZS1Edy03QGRiOjU0MzIvYXBw",
                    "cG9zdGdyZXM6Ly9hcHA6UGcta3ViZS1Edy03QGRiOjU0MzIvYXBw"),),
         negatives=("  url: aHR0cHM6Ly9hcGkuYWNtZS5pby92MS9pdGVtcw==",
                    "  DATABASE_URL: cG9zdGdyZXM6Ly9hcHA6JHtEQl9QQVNTV09SRH1AZGIvYXBw")),
    Rule("base64-json", r"\be(?:yJ|wog|wogI)[A-Za-z0-9+/_-]{30,}={0,2}", keywords=("eyj", "ewog"), validator="decoded-json",
         reason="decoded: base64 of JSON holding a secret",
         examples=(("kubectl apply -f - <<< '.dockerconfigjson: eyJhdXRocyI6eyJyZWcuYWNtZS5pbyI6eyJwYXNzd29yZCI6Ik"
                    "t0OFJlZy1UMGtlbi14In19fQ=='",
                    "eyJhdXRocyI6eyJyZWcuYWNtZS5pbyI6eyJwYXNzd29yZCI6Ikt0OFJlZy1UMGtlbi14In19fQ=="),),
         negatives=("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9",)),
)
