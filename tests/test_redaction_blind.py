"""The blind sets (tests/redaction_blind): secrets in real places, look-alikes that must stay.

Written apart from the detectors, so these figures say how the engine does on material it was not
written from. Thresholds, for the first and second sets: at least 95% of the secrets gone from the
output (at least 90% in every category) and at most 8% of the look-alikes changed. The third set
(Kubernetes, Helm, Terraform, package-manager files, .NET and Spring config, SQL, client command
lines, headers, key armours, webhooks, encoded values) is held just under what it scores, so a
regression fails: at least 99% of its secrets (93% in every category) and at most 1% of its
look-alikes changed.
"""
import pytest

from tests.redaction_blind.score import SETS, engine_redact, report, score

# set: (secrets removed, in every category, look-alikes changed at most)
THRESHOLDS = {"first": (0.95, 0.90, 0.08), "second": (0.95, 0.90, 0.08), "third": (0.99, 0.93, 0.01)}


@pytest.fixture(scope="module")
def redact():
    return engine_redact()


@pytest.mark.parametrize("which", sorted(SETS))
def test_blind_set_meets_thresholds(redact, which):
    recall, per_category, changed = THRESHOLDS[which]
    sc = score(redact, which)
    text = report(sc, misses=True)
    assert sc.recall >= recall, text
    for cat, total in sc.total.items():
        assert sc.found[cat] / total >= per_category, f"{cat}: {sc.found[cat]} of {total}\n{text}"
    assert sc.changed_rate <= changed, text


@pytest.mark.parametrize("which", sorted(SETS))
def test_blind_set_is_the_same_on_every_run(which):
    module = SETS[which]
    assert module.secret_samples() == module.secret_samples()
    assert module.look_alikes() == module.look_alikes()
    assert all(secret in s.text for s in module.secret_samples() for secret in s.secrets)
