"""Every built-in rule's own examples and negatives, and admin-rule compilation errors."""
from __future__ import annotations

import pytest

from redaction import BUILTIN_RULES, Redactor, RuleError, compile_admin_rules
from redaction.rules import CATEGORIES, compile_rule

KEY = b"k" * 32
EXAMPLES = [(r, text, secret) for r in BUILTIN_RULES for text, secret in r.examples]
NEGATIVES = [(r, text) for r in BUILTIN_RULES for text in r.negatives]


@pytest.fixture(scope="module")
def full():
    return Redactor.from_policy({"ip_addresses": True}, hmac_key=KEY, home="/home/alice", username="alice")


def test_every_rule_has_examples_and_a_known_category():
    names = [r.name for r in BUILTIN_RULES]
    assert len(names) == len(set(names))
    for r in BUILTIN_RULES:
        assert r.examples, f"{r.name} has no true-positive examples"
        assert r.category in CATEGORIES
        compile_rule(r)


@pytest.mark.parametrize("rule,text,secret", EXAMPLES, ids=lambda v: getattr(v, "name", None))
def test_rule_finds_its_example_alone_and_in_the_full_set(rule, text, secret, full):
    solo = Redactor([rule], hmac_key=KEY).redact_text(text)
    assert rule.name in {f.rule for f in solo.findings}
    assert secret not in solo.text
    assert secret not in full.redact_text(text).text
    if rule.keywords:  # the prefilter only runs a rule when a keyword occurs
        assert any(k in text.lower() for k in rule.keywords)


@pytest.mark.parametrize("rule,text", NEGATIVES, ids=lambda v: getattr(v, "name", None))
def test_rule_leaves_its_negatives_alone(rule, text):
    result = Redactor([rule], hmac_key=KEY).redact_text(text)
    assert result.findings == [] and result.text == text


@pytest.mark.parametrize("rows,message", [
    ([{"name": "bad-re", "pattern": "(?<=x)y"}], "redaction rule 'bad-re' has a pattern RE2 cannot compile"),
    ([{"name": "backref", "pattern": r"(a)\1"}], "redaction rule 'backref' has a pattern RE2 cannot compile"),
    ([{"name": "grp", "pattern": "a(b)", "group": 2}], "redaction rule 'grp' uses group 2"),
    ([{"name": "act", "pattern": "a", "action": "shred"}], "redaction rule 'act' has action 'shred'"),
    ([{"name": "x", "pattern": "a"}, {"name": "x", "pattern": "b"}], "redaction rule 'x' is defined twice"),
    ([{"pattern": "a"}], "redaction rule #1 has no name"),
    ([{"name": "typo", "pattern": "a", "keyword": ["a"]}], "redaction rule 'typo' has unknown key(s) keyword"),
])
def test_admin_rule_errors_name_the_rule_in_one_sentence(rows, message):
    with pytest.raises(RuleError) as exc:
        compile_admin_rules(rows)
    text = str(exc.value)
    assert text.startswith(message) and "\n" not in text


def test_admin_rule_applies_and_replaces_a_builtin_of_the_same_name():
    red = Redactor.from_policy({"rules": [
        {"name": "acme-token", "pattern": "ACME-[0-9a-f]{32}", "keywords": ["acme-"]},
        {"name": "email", "pattern": r"\S+@corp\.example", "action": "replace", "replacement": "<mail>"},
    ]}, hmac_key=KEY)
    out = red.redact_text("use ACME-" + "ab" * 16 + " and bob@corp.example, not carol@other.org")
    assert out.text == "use [REDACTED:acme-token] and <mail>, not carol@other.org"


def test_policy_flags_turn_pii_rules_off():
    text = "call +1 415-555-0132 from 81.2.69.160"
    off = Redactor.from_policy({"ip_addresses": False, "phone_numbers": False}, hmac_key=KEY)
    assert off.redact_text(text).text == text
    on = Redactor.from_policy({"ip_addresses": True, "phone_numbers": True}, hmac_key=KEY)
    assert {f.rule for f in on.redact_text(text).findings} == {"phone-number", "ip-address"}
