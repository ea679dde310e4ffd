"""Every rule of the gate, passing and failing, with the numbers it reports."""

from __future__ import annotations

import pytest

from tagifai_api import settings
from tagifai_api.retrain import gate as gates
from tagifai_api.retrain.gate import Gate

GATE = Gate(margin=0.01, tolerance=0.01, min_held_out=50, min_shadow_texts=500)


def evaluations(held=(60, 0.80, 0.78), test=(115, 0.90, 0.905)) -> dict:
    return {"held_out": dict(zip(("texts", "candidate", "default"), held, strict=True)),
            "test": dict(zip(("texts", "candidate", "default"), test, strict=True))}


def by_name(rules: list[dict]) -> dict:
    return {r["rule"]: r for r in rules}


def test_a_candidate_that_beats_the_default_by_the_margin_passes_every_rule():
    verdict = gates.verdict(gates.offline_rules(GATE, evaluations()))
    assert verdict["passed"] and verdict["failed"] == []
    rules = by_name(verdict["rules"])
    assert rules["margin"]["value"] == 0.02 and rules["margin"]["needed"] == 0.01
    assert rules["test_tolerance"]["value"] == -0.005 and rules["test_tolerance"]["needed"] == -0.01
    assert verdict["summary"].startswith("gate passed: 60 held-out feedback texts")


@pytest.mark.parametrize(("held", "test", "failed", "numbers"), [
    ((49, 0.80, 0.70, ), (115, 0.9, 0.9), ["min_held_out"], "49 held-out feedback texts judged the two (at least 50"),
    ((60, 0.785, 0.78), (115, 0.9, 0.9), ["margin"], "0.7850 against the default's 0.7800: +0.0050 (at least +0.0100"),
    ((60, 0.78, 0.80), (115, 0.9, 0.9), ["margin"], "-0.0200"),
    ((60, 0.85, 0.78), (115, 0.885, 0.90), ["test_tolerance"],
     "(115 projects) 0.8850 against the default's 0.9000: -0.0150 (no lower than -0.0100"),
    ((0, 0.0, 0.0), (115, 0.9, 0.9), ["min_held_out", "margin"], "0 held-out feedback texts"),
])
def test_each_rule_fails_alone_and_says_why_with_its_numbers(held, test, failed, numbers):
    verdict = gates.verdict(gates.offline_rules(GATE, evaluations(held, test)))
    assert not verdict["passed"] and verdict["failed"] == failed
    assert verdict["summary"].startswith("gate failed: ") and numbers in verdict["summary"]
    # the summary names only what failed
    assert all(r["detail"] in verdict["summary"] for r in verdict["rules"] if not r["passed"])
    assert not any(r["detail"] in verdict["summary"] for r in verdict["rules"] if r["passed"])


def test_the_edges_pass_exactly_at_the_margin_and_the_tolerance():
    rules = by_name(gates.offline_rules(GATE, evaluations((50, 0.81, 0.80), (115, 0.89, 0.90))))
    assert rules["min_held_out"]["passed"] and rules["margin"]["passed"] and rules["test_tolerance"]["passed"]


def test_the_shadow_needs_enough_live_texts_and_its_agreement_is_reported():
    passed = gates.shadow_rule(GATE, 612, 570)
    assert passed["passed"] and "612 live texts (at least 500 needed), agreeing with the default on 93.1%" in \
        passed["detail"]
    failed = gates.shadow_rule(GATE, 499, 499)
    assert not failed["passed"] and failed["value"] == 499
    assert "agreeing" not in gates.shadow_rule(GATE, 0, 0)["detail"]


def test_a_candidate_is_judged_against_the_default_it_was_trained_from():
    assert gates.parent_rule("v1", "v1")["passed"]
    moved = gates.parent_rule("v1", "v2")
    assert not moved["passed"] and "the default is v2 now" in moved["detail"]


def test_the_thresholds_come_from_the_settings_unless_overridden():
    values = settings.resolve({"GATE_MARGIN": 0.05, "GATE_MIN_HELD_OUT": 10})
    assert Gate.from_settings(values) == Gate(margin=0.05, tolerance=0.01, min_held_out=10, min_shadow_texts=500)
    assert Gate.from_settings(values, margin=None, tolerance=0.2).tolerance == 0.2
    assert Gate() == Gate.from_settings(settings.DEFAULTS)  # the documented defaults
