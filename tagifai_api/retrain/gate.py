"""The gate: the rules a candidate must pass to replace the default, each reported with its numbers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: float noise: a difference of exactly the margin passes
_EPS = 1e-9


@dataclass(frozen=True)
class Gate:
    """The thresholds (``TAGIFAI_GATE_*`` and ``TAGIFAI_SHADOW_MIN_TEXTS``; see the README)."""

    margin: float = 0.01
    tolerance: float = 0.01
    min_held_out: int = 50
    min_shadow_texts: int = 500

    @classmethod
    def from_settings(cls, values: Mapping[str, object], **overrides) -> Gate:
        """The settings' thresholds, with any override that is not None."""
        gate = cls(margin=float(values["GATE_MARGIN"]), tolerance=float(values["GATE_TOLERANCE"]),
                   min_held_out=int(values["GATE_MIN_HELD_OUT"]), min_shadow_texts=int(values["SHADOW_MIN_TEXTS"]))
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{**gate.__dict__, **given})


def _rule(name: str, passed: bool, value, needed, detail: str) -> dict:
    return {"rule": name, "passed": bool(passed), "value": value, "needed": needed, "detail": detail}


def offline_rules(gate: Gate, evaluations: Mapping[str, dict]) -> list[dict]:
    """The rules a candidate's evaluations must pass: enough held-out feedback, a held-out F1 above the
    default's by the margin, a test-split F1 not below the default's by more than the tolerance.

    ``evaluations``: ``{"held_out": {"texts", "candidate", "default"}, "test": {...}}`` (weighted F1s).
    """
    held, test = evaluations["held_out"], evaluations["test"]
    n = held["texts"]
    gain = round(held["candidate"] - held["default"], 6)
    change = round(test["candidate"] - test["default"], 6)
    return [
        _rule("min_held_out", n >= gate.min_held_out, n, gate.min_held_out,
              f"{n} held-out feedback texts judged the two (at least {gate.min_held_out} needed)"),
        _rule("margin", n > 0 and gain >= gate.margin - _EPS, gain, gate.margin,
              f"weighted F1 on the held-out feedback {held['candidate']:.4f} against the default's "
              f"{held['default']:.4f}: {gain:+.4f} (at least {gate.margin:+.4f} needed)"),
        _rule("test_tolerance", change >= -gate.tolerance - _EPS, change, -gate.tolerance,
              f"weighted F1 on the test split ({test['texts']} projects) {test['candidate']:.4f} against the "
              f"default's {test['default']:.4f}: {change:+.4f} (no lower than {-gate.tolerance:+.4f} allowed)"),
    ]


def shadow_rule(gate: Gate, scored: int, agreed: int) -> dict:
    """Enough live texts scored by the shadow; its agreement with the default is reported beside."""
    rate = round(agreed / scored, 4) if scored else None
    agreement = f", agreeing with the default on {rate:.1%} of them" if rate is not None else ""
    return _rule("min_shadow_texts", scored >= gate.min_shadow_texts, scored, gate.min_shadow_texts,
                 f"the shadow scored {scored} live texts (at least {gate.min_shadow_texts} needed){agreement}")


def parent_rule(parent: str | None, default: str | None) -> dict:
    """The candidate was judged against the version that is still the default."""
    same = parent == default
    detail = (f"it was judged against {parent}, still the default" if same else
              f"it was judged against {parent}, but the default is {default} now: retrain to judge it again")
    return _rule("parent_is_default", same, default, parent, detail)


def verdict(rules: list[dict]) -> dict:
    """``{"passed", "failed": [rule names], "rules", "summary"}``: the summary is one sentence naming
    what failed with its numbers, or everything that passed."""
    failed = [r for r in rules if not r["passed"]]
    shown = failed or rules
    summary = ("gate failed: " if failed else "gate passed: ") + "; ".join(r["detail"] for r in shown)
    return {"passed": not failed, "failed": [r["rule"] for r in failed], "rules": rules, "summary": summary}
