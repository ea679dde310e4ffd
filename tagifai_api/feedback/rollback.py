"""The automatic rollback: after a promotion, the new default's live accuracy is compared with the
previous default's, and a new default worse with 95 % confidence is rolled back by itself.

The check runs wherever feedback is recorded (any worker of any replica), right after the
corrections are stored: the store holds everything it needs (the last change of the default in the
audit log, the corrections per version), and the rollback is conditional on the promoted version
still being the default, so several workers deciding at once roll back once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from tagifai_api.feedback.quality import wilson
from tagifai_api.store.database import ConflictError, Store

log = logging.getLogger(__name__)

#: the normal quantile of a one-sided 95 % test
_Z95_ONE_SIDED = 1.6448536269514722


def worse(new: tuple[int, int], old: tuple[int, int]) -> tuple[bool, float]:
    """``(worse, z)``: whether the accuracy ``right / n`` of ``new = (n, right)`` is below ``old``'s with
    95 % confidence, by a one-sided two-proportion z-test (pooled standard error)."""
    (n1, r1), (n2, r2) = new, old
    pooled = (r1 + r2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:  # both perfect or both always wrong: no difference to find
        return False, 0.0
    z = (r1 / n1 - r2 / n2) / se
    return z < -_Z95_ONE_SIDED, z


def _described(version: str, n: int, right: int) -> str:
    low, high = wilson(right, n)
    return f"{version} {right / n:.3f} [{low:.3f}, {high:.3f}] on {n} corrections"


def watch(store: Store, rollback: Callable[[str, str], tuple[str | None, str]], min_feedback: int) -> dict | None:
    """Roll back a promoted default that live feedback shows worse than the one it replaced.

    Args:
        store: the audit log and the feedback.
        rollback: ``rollback(promoted_version, reason)`` rolls back while that version is the default;
            ``(previous, new)`` defaults.
        min_feedback: corrections each version needs before they are compared.

    Returns:
        ``{"from", "to", "reason"}`` when it rolled back, else None.
    """
    change = store.last_default_change()
    if change is None or change["action"] != "promoted" or change["from"] is None:
        return None
    new, old = change["to"], change["from"]
    counts = store.feedback_summary()
    n_new, right_new = counts.get(new, (0, 0))
    n_old, right_old = counts.get(old, (0, 0))
    if n_new < min_feedback or n_old < min_feedback:
        return None
    is_worse, z = worse((n_new, right_new), (n_old, right_old))
    if not is_worse:
        return None
    reason = (f"live accuracy {_described(new, n_new, right_new)} against {_described(old, n_old, right_old)}: "
              f"worse with 95 % confidence (one-sided z = {z:.2f})")
    try:
        _, target = rollback(new, reason)
    except ConflictError:  # another worker rolled it back first, or the default changed meanwhile
        return None
    log.warning("automatic rollback from %s to %s: %s", new, target, reason,
                extra={"event": "auto_rollback", "model_version": target})
    return {"from": new, "to": target, "reason": reason}
