"""tracecap's redaction: every string the agent captures passes through here before any disk.

Takes the policy's [redaction] table and an HMAC key; gives `Redactor` (text and event redaction,
never-capture path checks, counters), `Finding`, `RedactionResult`, `RuleError` and
`compile_admin_rules`. Imports nothing of the agent. See `redaction.engine` for the promises.
"""
from redaction.engine import FAILED_MARKER, Finding, RedactionResult, RedactionStats, Redactor
from redaction.rules import BUILTIN_RULES, Rule, RuleError, compile_admin_rules

__all__ = ["BUILTIN_RULES", "FAILED_MARKER", "Finding", "RedactionResult", "RedactionStats", "Redactor",
           "Rule", "RuleError", "compile_admin_rules"]
