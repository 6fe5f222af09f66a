"""The blind set (tests/redaction_blind): secrets in real places, look-alikes that must stay.

Written apart from the detectors, so these figures say how the engine does on material it was not
tuned to. Thresholds: at least 95% of the secrets gone from the output (at least 90% in every
category) and at most 8% of the look-alikes changed.
"""
from tests.redaction_blind.score import engine_redact, report, score


def test_blind_set_meets_thresholds():
    sc = score(engine_redact())
    text = report(sc, misses=True)
    assert sc.recall >= 0.95, text
    for cat, total in sc.total.items():
        assert sc.found[cat] / total >= 0.90, f"{cat}: {sc.found[cat]} of {total}\n{text}"
    assert sc.changed_rate <= 0.08, text


def test_blind_set_is_the_same_on_every_run():
    from tests.redaction_blind.generate import look_alikes, secret_samples

    assert secret_samples() == secret_samples()
    assert look_alikes() == look_alikes()
    assert all(secret in s.text for s in secret_samples() for secret in s.secrets)
